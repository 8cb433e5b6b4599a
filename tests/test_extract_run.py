"""The extraction job end to end: store contents equal the extractor's in-memory output, bad inputs are
recorded (or stop the run), a killed run resumes to the same result, and two torchrun ranks (gloo) write the
same version a single process writes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featstore.datasets import load_dataset
from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor, load_image
from featstore.runner import ExtractOptions, run_extraction
from featstore.store import open_store

REPO = Path(__file__).resolve().parents[1]
GRID = dict(backbone="resnet18", image_size=64, grid_size=2, dtype="float32")


def make_dataset(root: Path, n_images: int = 7, bad: dict | None = None) -> Path:
    """A Hateful-Memes-style folder: n_images PNGs (two samples share image 0), plus named bad files."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        arr = rng.integers(0, 255, (40 + 3 * i, 50, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "img" / f"{i:05d}.png")
        rows.append({"id": i + 1, "img": f"img/{i:05d}.png", "label": i % 2, "text": f"caption number {i}"})
    rows.append({"id": 100, "img": "img/00000.png", "label": 1, "text": "the same image, another text"})
    for j, (kind, payload) in enumerate((bad or {}).items()):
        name = f"img/{90 + j:05d}.png"
        if kind == "missing":
            pass
        elif kind == "empty":
            (root / name).write_bytes(b"")
        elif kind == "truncated":
            good = (root / "img" / "00001.png").read_bytes()
            (root / name).write_bytes(good[: len(good) // 3])
        rows.append({"id": 200 + j, "img": name, "label": 0, "text": f"bad {kind}"})
    with open(root / "train.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return root / "train.jsonl"


def reference_grid(ds, keys):
    """The extractor's own forward pass on each image, one at a time (the in-memory reference)."""
    ext = create_extractor("grid", **GRID).to("cpu")
    path_of = {s.image_key: s.image_path for s in ds.samples}
    out = {}
    for k in keys:
        batch = ext.collate([ext.preprocess(load_image(path_of[k]))])
        with torch.inference_mode():
            res = ext.forward(batch)
        out[k] = {n: v[0] for n, v in res.items()}
    return out


def test_extraction_matches_in_memory_forward_and_records_bad_images(tmp_path):
    manifest = make_dataset(tmp_path / "data", bad={"missing": 1, "empty": 1, "truncated": 1})
    ds = load_dataset(manifest, check_images=False)
    st = open_store(tmp_path / "store", create=True)
    summary = run_extraction(st, ds, "grid", extractor_config=GRID,
                             options=ExtractOptions(batch_size=3, num_workers=0, chunk_rows=4, progress=False))
    fsv = open_store(tmp_path / "store").open("grid")  # reopened from disk
    assert fsv.version == summary.version
    assert sorted(fsv.failures) == ["00090", "00091", "00092"]
    assert "not found" in fsv.failures["00090"] or "missing" in fsv.failures["00090"].lower()
    assert len(summary.failures) == 3 and "3 failed" in summary.lines()[0]
    good = [f"{i:05d}" for i in range(7)]
    assert list(fsv.keys) == good  # one row per image, however many samples share it; failures never returned
    ref = reference_grid(ds, good)
    data = fsv.select(good)
    for i, k in enumerate(good):
        for name in ("regions", "boxes", "pooled", "image_size"):
            np.testing.assert_allclose(data[name][i], ref[k][name], rtol=1e-5, atol=1e-5, err_msg=f"{k}/{name}")
    with pytest.raises(FeatstoreError, match="not found"):
        fsv.select(["00091"])
    # the same command again is a no-op naming the same version
    again = run_extraction(st, ds, "grid", extractor_config=GRID,
                           options=ExtractOptions(batch_size=3, num_workers=0, chunk_rows=4, progress=False))
    assert again.already_complete and again.version == summary.version


def test_on_error_fail_stops_at_first_bad_image(tmp_path):
    manifest = make_dataset(tmp_path / "data", n_images=3, bad={"empty": 1})
    ds = load_dataset(manifest, check_images=False)
    st = open_store(tmp_path / "store", create=True)
    with pytest.raises(FeatstoreError, match=r"00090.*--on-error skip"):
        run_extraction(st, ds, "grid", extractor_config=GRID,
                       options=ExtractOptions(num_workers=0, on_error="fail", progress=False))
    assert st.versions("grid") == []  # nothing half-done is visible


def test_text_extraction_keyed_by_sample_id(tmp_path):
    manifest = make_dataset(tmp_path / "data", n_images=3)
    ds = load_dataset(manifest)
    st = open_store(tmp_path / "store", create=True)
    cfg = dict(weights="demo", max_length=16, dtype="float32")
    run_extraction(st, ds, "bert", extractor_config=cfg, options=ExtractOptions(num_workers=0, progress=False))
    fsv = st.open("bert")
    assert fsv.key_kind == "sample_id" and fsv.modality == "text"
    assert sorted(fsv.keys) == sorted(s.id for s in ds.samples)
    ext = create_extractor("bert", **cfg).to("cpu")
    with torch.inference_mode():
        ref = ext.forward(ext.collate([ext.preprocess(s.text) for s in ds.samples]))
    got = fsv.select([s.id for s in ds.samples])
    np.testing.assert_allclose(got["cls"], ref["cls"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["count"], ref["count"])


RUN_SCRIPT = textwrap.dedent("""
    import os, sys, signal
    from featstore.datasets import load_dataset
    from featstore.runner import ExtractOptions, run_extraction
    from featstore.store import open_store, VersionWriter
    kill_after = int(os.environ.get("KILL_AFTER_CHUNKS", "0"))
    if kill_after:
        original = VersionWriter.write_chunk
        done = []
        def write_then_maybe_die(self, *a, **k):
            original(self, *a, **k)
            done.append(1)
            if len(done) >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        VersionWriter.write_chunk = write_then_maybe_die
    ds = load_dataset(sys.argv[1])
    st = open_store(sys.argv[2], create=True)
    cfg = dict(backbone="resnet18", image_size=64, grid_size=2, dtype="float32")
    s = run_extraction(st, ds, "grid", extractor_config=cfg,
                       options=ExtractOptions(batch_size=2, num_workers=0, chunk_rows=2, progress=False))
    print("VERSION", s.version, s.chunks_written)
""")


def _run(args, env_extra=None, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.slow  # over 30 s on two loaded cores; CI runs it, `-m "not slow"` skips it
def test_killed_run_is_invisible_then_resumes_to_identical_result(tmp_path):
    manifest = make_dataset(tmp_path / "data", n_images=7)
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)
    killed = _run([sys.executable, str(script), str(manifest), str(tmp_path / "a")], {"KILL_AFTER_CHUNKS": "2"})
    assert killed.returncode == -signal.SIGKILL
    st = open_store(tmp_path / "a")
    assert st.versions("grid") == []
    partial = st.versions("grid", include_incomplete=True)
    assert len(partial) == 1 and partial[0].chunks_done == 2 and partial[0].chunks_total == 4
    resumed = _run([sys.executable, str(script), str(manifest), str(tmp_path / "a")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.split()[-1] == "2"  # only the two missing chunks were written
    clean = _run([sys.executable, str(script), str(manifest), str(tmp_path / "b")])
    assert clean.returncode == 0, clean.stderr[-2000:]
    a, b = open_store(tmp_path / "a").open("grid"), open_store(tmp_path / "b").open("grid")
    assert a.version == b.version
    assert [c["checksums"] for c in a.record["chunks"]] == [c["checksums"] for c in b.record["chunks"]]
    for name in a.array_names:
        np.testing.assert_array_equal(a.read(name), b.read(name))


@pytest.mark.slow  # over 30 s on two loaded cores; CI runs it, `-m "not slow"` skips it
def test_torchrun_two_ranks_gloo_equals_single_process(tmp_path):
    manifest = make_dataset(tmp_path / "data", n_images=7)
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)
    single = _run([sys.executable, str(script), str(manifest), str(tmp_path / "single")])
    assert single.returncode == 0, single.stderr[-2000:]
    dist = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 str(script), str(manifest), str(tmp_path / "dist")])
    assert dist.returncode == 0, dist.stderr[-3000:]
    a, b = open_store(tmp_path / "single").open("grid"), open_store(tmp_path / "dist").open("grid")
    assert a.version == b.version
    chunk_pids = {json.loads((Path(tmp_path / "dist/sets/grid") / b.version / "chunks" / f"{c}.json").read_text())["pid"]
                  for c in range(4)}
    assert len(chunk_pids) == 2  # both ranks wrote a share
    for name in a.array_names:
        np.testing.assert_array_equal(a.read(name), b.read(name))
