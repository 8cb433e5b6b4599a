"""How the numbers are computed: the autocast dtype is part of the version id (bf16 autocast runs on CPU
too, fp16 is refused there), and ``compile=True`` (torch.compile, inductor on CPU) gives the eager numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli.featstore_cli import main as featstore
from cli_helpers import invoke, one_line_error
from featstore.datasets import load_dataset
from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor, load_image
from featstore.runner import ExtractOptions, run_extraction
from featstore.store import open_store

GRID = dict(backbone="resnet18", image_size=64, grid_size=2, dtype="float32")


def _dataset(root: Path, n: int = 5) -> Path:
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 256, (40 + 2 * i, 50, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "img" / f"{i:05d}.png")
        rows.append({"id": i + 1, "img": f"img/{i:05d}.png", "label": i % 2, "text": f"caption {i}"})
    with open(root / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return root / "train.jsonl"


def _run(store, ds, amp: str):
    opts = ExtractOptions(batch_size=8, num_workers=0, amp=amp, progress=False)
    return run_extraction(store, ds, "grid", extractor_config=GRID, options=opts)


def test_bf16_autocast_on_cpu_is_its_own_version_and_close_to_float32(tmp_path):
    ds = load_dataset(_dataset(tmp_path / "data"), check_images=False)
    st = open_store(tmp_path / "store", create=True)
    fp32, bf16 = _run(st, ds, "none"), _run(st, ds, "bf16")
    assert fp32.version != bf16.version  # same extractor, config and data: only the autocast dtype differs
    assert st.open("grid", fp32.version).recipe.compute == {"autocast": "none"}
    assert st.open("grid", bf16.version).recipe.compute == {"autocast": "bf16"}
    a = st.open("grid", fp32.version).read("regions").astype(np.float64)
    b = st.open("grid", bf16.version).read("regions").astype(np.float64)
    rel = np.abs(a - b).max() / np.abs(a).max()
    assert 1e-5 < rel < 5e-2  # autocast took effect (not bit-equal) at bf16's precision (8 mantissa bits)
    # float32 (no autocast) against the torchvision backbone run by hand in float64 on the same pixels
    ext = create_extractor("grid", **GRID)
    paths = {s.image_key: s.image_path for s in ds.samples}
    x = torch.stack([ext.preprocess(load_image(paths[k]))["image"] for k in st.open("grid", fp32.version).keys])
    m = ext.backbone.double().eval()
    with torch.no_grad():
        ref = torch.nn.functional.adaptive_avg_pool2d(m(x.double()), 2).flatten(2).transpose(1, 2).numpy()
    np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-5)


def test_auto_on_cpu_is_float32_and_fp16_on_cpu_is_refused_before_anything_is_written(tmp_path):
    ds = load_dataset(_dataset(tmp_path / "data"), check_images=False)
    st = open_store(tmp_path / "store", create=True)
    auto = _run(st, ds, "auto")
    assert st.open("grid", auto.version).recipe.compute == {"autocast": "none"}
    assert _run(st, ds, "none").already_complete  # auto on CPU is exactly --amp none
    with pytest.raises(FeatstoreError, match="--amp fp16 needs a CUDA device"):
        _run(st, ds, "fp16")
    assert [v.version for v in st.versions("grid")] == [auto.version]
    line = one_line_error(featstore, ["extract", "--dataset", tmp_path / "data" / "train.jsonl", "--extractor", "grid",
                                      "--store", tmp_path / "store", "--amp", "fp16", "--quiet", "--device", "cpu",
                                      "--set", "backbone=resnet18", "--set", "image_size=64"])
    assert "--amp fp16 needs a CUDA device" in line
    assert "compute        {\"autocast\": \"none\"}" in invoke(featstore, ["info", "grid", "--store", tmp_path / "store"])


@pytest.mark.slow  # over 30 s on two loaded cores; CI runs it, `-m "not slow"` skips it
def test_compile_on_cpu_gives_the_eager_numbers(tmp_path):
    imgs = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40 + i, 50, 3), dtype=np.uint8))
            for i in range(3)]
    eager = create_extractor("grid", **GRID).to("cpu")
    compiled = create_extractor("grid", compile=True, **GRID).to("cpu")
    assert hasattr(compiled.backbone, "_orig_mod") and not hasattr(eager.backbone, "_orig_mod")
    assert compiled.weights_fingerprint() == eager.weights_fingerprint()
    batch = eager.collate([eager.preprocess(im) for im in imgs])
    want, got = eager.forward(batch), compiled.forward(batch)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_default_workers_follow_the_cores_per_rank_and_negative_is_refused(tmp_path, monkeypatch):
    from featstore.runner import extract as ex

    monkeypatch.setattr(ex.os, "sched_getaffinity", lambda pid: set(range(24)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert ex._resolve_workers(None) == 16  # capped
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert ex._resolve_workers(None) == 6  # 24 cores shared by 4 ranks
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert ex._resolve_workers(None) == 1
    assert ex._resolve_workers(0) == 0 and ex._resolve_workers(3) == 3
    with pytest.raises(FeatstoreError, match="--workers -1 is invalid"):
        ex._resolve_workers(-1)
    monkeypatch.undo()
    _dataset(tmp_path / "data")
    line = one_line_error(featstore, ["extract", "--dataset", tmp_path / "data" / "train.jsonl", "--extractor", "grid",
                                      "--store", tmp_path / "store", "--workers", "-1", "--quiet",
                                      "--set", "backbone=resnet18", "--set", "image_size=64"])
    assert "--workers -1 is invalid" in line
    assert not (tmp_path / "store" / "sets").exists() or not list((tmp_path / "store" / "sets").iterdir())


def test_summary_says_where_the_loop_time_went_and_what_to_change(tmp_path):
    from featstore.runner import ExtractSummary

    ds = load_dataset(_dataset(tmp_path / "data"), check_images=False)
    summary = _run(open_store(tmp_path / "store", create=True), ds, "none")
    t = summary.timing
    assert set(t) == {"inputs", "forward", "writer"} and min(t.values()) >= 0 and t["forward"] > 0
    assert sum(t.values()) <= summary.seconds
    text = "\n".join(summary.lines())
    assert "time: forward " in text and "waiting for inputs " in text
    decode_bound = ExtractSummary("g", "v", 512, 512, {}, 4.0, {},
                                  timing={"inputs": 3.0, "forward": 0.9, "writer": 0.1})
    assert decode_bound.timing_lines() == [
        "  time: forward 22%, waiting for inputs 75%, waiting for the writer 2%",
        "  the device waited on decoding: raise --workers, or decode once with --image-cache (featstore "
        "cache-images) when several extractors read the same images"]
    busy = ExtractSummary("g", "v", 512, 512, {}, 4.0, {}, timing={"inputs": 0.2, "forward": 3.7, "writer": 0.1})
    assert len(busy.timing_lines()) == 1
    small = ExtractSummary("g", "v", 25, 25, {}, 4.0, {}, timing={"inputs": 3.0, "forward": 0.9, "writer": 0.1})
    assert len(small.timing_lines()) == 1  # start-up dominates a small run: no advice
    text = ExtractSummary("t", "v", 512, 512, {}, 4.0, {}, timing={"inputs": 3.0, "forward": 0.9, "writer": 0.1},
                          modality="text")
    assert text.timing_lines()[1] == "  the device waited on tokenisation: raise --workers"
    assert ExtractSummary("g", "v", 4, 0, {}, 0.1, {}, already_complete=True).timing_lines() == []


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_forward_threads_give_the_workers_their_cores_only_when_decoding_is_the_bottleneck(monkeypatch, two_threads):
    from featstore.runner import threads as th

    monkeypatch.setattr(th.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    cpu = torch.device("cpu")
    input_bound = th.ForwardThreads(cpu, workers=2)
    input_bound.observe(30.0, 0.1)  # worker start-up: not part of the window
    for _ in range(th.WINDOW_BATCHES - 1):
        input_bound.observe(1.0, 1.0)
        assert input_bound.lowered_to is None and torch.get_num_threads() == 2  # still measuring
    input_bound.observe(1.0, 1.0)  # 50% of the window waiting for inputs
    assert input_bound.lowered_to == 1 and torch.get_num_threads() == 1
    input_bound.observe(100.0, 0.0)  # one decision per run
    assert torch.get_num_threads() == 1
    input_bound.close()
    assert torch.get_num_threads() == 2

    forward_bound = th.ForwardThreads(cpu, workers=2)
    for _ in range(th.SKIP_BATCHES + th.WINDOW_BATCHES + 3):
        forward_bound.observe(0.1, 1.0)
    assert forward_bound.lowered_to is None and torch.get_num_threads() == 2
    for device, workers in ((torch.device("cuda"), 2), (cpu, 0)):  # GPU hosts and no workers: never touched
        t = th.ForwardThreads(device, workers)
        for _ in range(8):
            t.observe(10.0, 0.1)
        assert t.lowered_to is None and torch.get_num_threads() == 2


def test_extraction_restores_the_callers_threads(tmp_path, two_threads):
    ds = load_dataset(_dataset(tmp_path / "data", n=12), check_images=False)
    opts = ExtractOptions(batch_size=2, num_workers=1, progress=False)
    summary = run_extraction(open_store(tmp_path / "s", create=True), ds, "grid", extractor_config=GRID, options=opts)
    assert torch.get_num_threads() == 2 and summary.n_written == 12
    note = " (forward threads lowered to 1: the decoding workers needed the cores)"
    assert summary.forward_threads in (None, 1)
    assert summary.timing_lines()[0].endswith(note) == (summary.forward_threads == 1)
