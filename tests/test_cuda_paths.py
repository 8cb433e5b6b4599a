"""The CUDA paths (marked ``cuda``; ``benchmarks/gpu_check.py`` runs them with FEATSTORE_CUDA_TESTS=cuda,
and its ``--dry-run`` with FEATSTORE_CUDA_TESTS=cpu so they cannot rot): bf16 autocast with pinned memory,
non-blocking copies and channels_last through ``run_extraction`` against float32 on the CPU; ``compile=True``
against eager on the device; a head trained on the device with trimmed batches; the vector search on the GPU
(faiss-gpu, or torch's exact search without it).
Without a GPU and without that variable they are skipped (the CPU suite covers the CPU paths)."""
from __future__ import annotations

import os
from pathlib import Path

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


def test_gpu_search_finds_the_exact_neighbours():
    """build_index on the GPU, whichever backend the machine has (faiss-gpu, else torch's exact search):
    the float64 brute-force neighbours, cosine and L2; IVF on the GPU only with faiss-gpu, refused without."""
    if DEVICE == "cpu":  # without a GPU both indexes would be the CPU one: nothing to compare
        pytest.skip("the CPU index is tests/test_search_index.py and torch's search tests/test_search_torch_flat.py")
    from featstore.errors import FeatstoreError
    from featstore.search import VectorIndex, build_index, gpu_available, gpu_backend

    backend = gpu_backend("auto", "flat")
    assert backend in ("faiss", "torch"), "no GPU search: torch sees no CUDA device and faiss has no GPU support"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 64)).astype(np.float32)
    q = x[:50] + 0.1 * rng.standard_normal((50, 64)).astype(np.float32)
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    cos = (q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).T
    l2 = (q64 ** 2).sum(1)[:, None] + (x64 ** 2).sum(1)[None, :] - 2 * q64 @ x64.T
    cases = [(build_index(x, kind="flat", use_gpu=True), cos, -1), (build_index(x, kind="flat", use_gpu="auto"), cos, -1),
             (build_index(x, metric="l2", kind="flat", use_gpu=True), l2, 1)]
    if gpu_available():
        cases.append((build_index(x, kind="ivf", nlist=16, nprobe=16, use_gpu=True), cos, -1))  # every list: exact
    else:
        with pytest.raises(FeatstoreError, match="faiss-gpu"):
            build_index(x, kind="ivf", nlist=16, use_gpu=True)
        assert not build_index(x, kind="ivf", nlist=16, use_gpu="auto").on_gpu
    for index, ref, sign in cases:
        assert index.on_gpu and index.search_backend == {"faiss": "faiss-gpu", "torch": "torch-cuda"}[backend], index
        want = np.argsort(sign * ref, axis=1, kind="stable")[:, :5]
        s, i = index.search(q, 5)
        assert np.array_equal(np.asarray(i), want), index
        np.testing.assert_allclose(np.asarray(s), np.take_along_axis(ref, want, 1), rtol=1e-4, atol=1e-3)
    back = VectorIndex.from_bytes(cases[0][0].to_bytes(), use_gpu=False)  # the GPU index saved in its CPU form
    assert not back.on_gpu and np.array_equal(np.asarray(back.search(q, 5)[1]), np.argsort(-cos, axis=1)[:, :5])


def test_confounder_search_on_the_gpu_equals_the_cpus_exact_one(monkeypatch):
    """Above 5,000 samples: on the GPU (torch's exact search, or faiss-gpu's IVF) the pairs the CPU's exact
    search finds, with the same kinds and cosines."""
    if DEVICE == "cpu":
        pytest.skip("on the CPU both searches would be the CPU one: tests/test_search_confounders.py")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import confounders as cb
    from featstore.search import find_confounders, gpu_backend

    img, txt, labels, planted = cb.make_data(6000, 64, 0.02)
    ids = [str(i) for i in range(6000)]
    gpu = {(p.row_a, p.row_b): p for p in find_confounders(ids, ids, img, txt, labels, use_gpu=True)}
    cpu = {(p.row_a, p.row_b): p for p in find_confounders(ids, ids, img, txt, labels, use_gpu=False,
                                                           index_kind="flat")}
    assert len(planted & set(cpu)) >= 0.95 * len(planted)  # the data: near-duplicates planted near the threshold
    if gpu_backend("auto", "flat") == "torch":  # exact on the GPU too: the very same pairs
        assert set(gpu) == set(cpu)
    else:  # faiss-gpu's IVF: approximate, so a subset, nearly all of it
        assert set(gpu) <= set(cpu) and len(set(gpu)) >= 0.95 * len(cpu)
    for key in set(gpu) & set(cpu):
        assert gpu[key].kind == cpu[key].kind
        np.testing.assert_allclose([gpu[key].image_sim, gpu[key].text_sim], [cpu[key].image_sim, cpu[key].text_sim],
                                   atol=1e-5)
