"""The CUDA paths (marked ``cuda``; ``benchmarks/gpu_check.py`` runs them with FEATSTORE_CUDA_TESTS=cuda,
and its ``--dry-run`` with FEATSTORE_CUDA_TESTS=cpu so they cannot rot): bf16 autocast with pinned memory,
non-blocking copies and channels_last through ``run_extraction`` against float32 on the CPU; ``compile=True``
against eager on the device; a head trained on the device with trimmed batches; the FAISS index on the GPU.
Without a GPU and without that variable they are skipped (the CPU suite covers the CPU paths)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from featstore.datasets import load_dataset
from featstore.extractors import create_extractor
from featstore.runner import ExtractOptions, run_extraction
from featstore.store import open_store
from test_extract_compute import GRID, _dataset

DEVICE = os.environ.get("FEATSTORE_CUDA_TESTS") or ("cuda" if torch.cuda.is_available() else "")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not DEVICE, reason="no GPU; benchmarks/gpu_check.py runs these "
                                                   "(FEATSTORE_CUDA_TESTS=cpu runs them on the CPU)")]
def test_extraction_on_the_device_with_bf16_pinned_channels_last_matches_float32_cpu(tmp_path):
    ds = load_dataset(_dataset(tmp_path / "data", 12), check_images=False)
    st = open_store(tmp_path / "store", create=True)
    ref = run_extraction(st, ds, "grid", name="cpu", extractor_config=GRID,
                         options=ExtractOptions(batch_size=4, num_workers=0, device="cpu", amp="none", progress=False))
    got = run_extraction(st, ds, "grid", name="dev", extractor_config=GRID,
                         options=ExtractOptions(batch_size=4, num_workers=2, device=DEVICE, amp="bf16", progress=False))
    assert got.n_written == ref.n_written == 12 and not got.failures
    assert st.open("dev").recipe.compute == {"autocast": "bf16"}
    a, b = st.open("cpu").read("regions").astype(np.float64), st.open("dev").read("regions").astype(np.float64)
    rel = np.abs(a - b).max() / np.abs(a).max()
    assert 1e-5 < rel < 5e-2  # bf16 took effect, at bf16's precision
    assert create_extractor("grid", **GRID).channels_last  # the CNN runs channels_last (cuDNN NHWC on CUDA)


def test_compile_on_the_device_gives_the_eager_numbers():
    if DEVICE == "cpu":
        pytest.skip("compile on the CPU is tests/test_extract_compute.py::test_compile_on_cpu_gives_the_eager_numbers")
    imgs = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40 + i, 50, 3), dtype=np.uint8))
            for i in range(4)]
    eager = create_extractor("grid", **GRID).to(DEVICE, torch.float32)
    compiled = create_extractor("grid", compile=True, **GRID).to(DEVICE, torch.float32)
    batch = eager.collate([eager.preprocess(im) for im in imgs])
    want, got = eager.forward(batch), compiled.forward(batch)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-3, atol=2e-4, err_msg=name)


def test_head_trains_on_the_device_with_trimmed_batches_like_the_untrimmed_forward():
    from heads.train import TrainConfig, predict_logits, train
    from test_trim import CONFIGS, _data

    data = _data()
    data.features = {k: v.to(DEVICE) for k, v in data.features.items()}
    data.targets = {k: v.to(DEVICE) for k, v in data.targets.items()}
    data.splits = {k: v.to(DEVICE) for k, v in data.splits.items()}
    res = train(TrainConfig(head="vilbert", head_cfg=CONFIGS["vilbert"][1], epochs=2, batch_size=4, patience=0,
                            device=DEVICE, amp=True, threads=1), data, progress=False)
    assert all(np.isfinite(row["train_loss"]) for row in res.history)
    idx = torch.arange(len(data), device=DEVICE)
    a = predict_logits(res.model, data, idx, trim=True)["label"]
    b = predict_logits(res.model, data, idx, trim=False)["label"]
    assert a.device.type == torch.device(DEVICE).type
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_faiss_index_on_the_gpu_finds_the_exact_neighbours():
    if DEVICE == "cpu":  # without a GPU both indexes would be the CPU one: nothing to compare
        pytest.skip("the CPU index is tests/test_search_index.py; this test needs faiss-gpu on a CUDA device")
    from featstore.search import VectorIndex, build_index, gpu_available

    assert gpu_available(), "the installed faiss has no GPU support: pip install -e '.[gpu]' (faiss-gpu)"
    x = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)
    q = x[:50] + 0.1 * np.random.default_rng(1).standard_normal((50, 64)).astype(np.float32)
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ unit.T  # float64 cosine, brute force
    want = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    for index in (build_index(x, kind="flat", use_gpu=True), build_index(x, kind="flat", use_gpu="auto"),
                  build_index(x, kind="ivf", nlist=16, nprobe=16, use_gpu=True)):  # every list probed: exact
        assert index.on_gpu, index
        s, i = index.search(q, 5)
        assert np.array_equal(np.asarray(i), want), index
        np.testing.assert_allclose(np.asarray(s), np.take_along_axis(sims, want, 1), atol=1e-4)
    back = VectorIndex.from_bytes(index.to_bytes(), use_gpu=False)  # the GPU index saved in its CPU form
    assert not back.on_gpu and np.array_equal(np.asarray(back.search(q, 5)[1]), want)
