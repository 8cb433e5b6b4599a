"""benchmarks/_clip_loop.py: clip-retrieval's loop and the pipeline timed each in a fresh process.

The real pair runs both children (a tiny ResNet-18 grid over 8 synthetic images) and checks what they
report against what their processes could only know by running: the image count of the dataset; the
failure paths run a real child that fails and check the one-line message."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def clip_loop(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _clip_loop

    return _clip_loop


@pytest.fixture()
def images(tmp_path, clip_loop):
    import extract_throughput as et

    return et.make_images(tmp_path / "data", 8, 4)


def _spec(clip_loop, tmp_path, manifest, **config):
    import torch

    cfg = dict(backbone="resnet18", image_size=64, weights=None, dtype="float32", **config)
    return clip_loop.pair_spec("grid", cfg, str(manifest), 4, 0, torch.device("cpu"), 4, tmp_path)


def test_a_fresh_pair_times_both_runs_over_every_image(clip_loop, images, tmp_path):
    pipe, loop = clip_loop.fresh_pair(0, _spec(clip_loop, tmp_path, images))
    assert np.isfinite(pipe) and pipe > 0 and np.isfinite(loop) and loop > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # each child removed its store and arrays


def test_the_child_reports_the_dataset_s_image_count_and_writes_the_loop_s_arrays(clip_loop, images, tmp_path):
    import torch
    from featstore.datasets import load_dataset
    from featstore.extractors import create_extractor

    got = clip_loop.child_main("clip", _spec(clip_loop, tmp_path, images))
    assert got["n"] == 8 and got["ips"] == pytest.approx(8 / got["seconds"])
    ext = create_extractor("grid", backbone="resnet18", image_size=64, weights=None, dtype="float32")
    paths = [s.image_path for s in load_dataset(images).samples]
    clip_loop.clip_retrieval_loop(ext, paths, tmp_path / "loop", 4, 0, torch.device("cpu"))
    saved = sorted(p.name for p in (tmp_path / "loop").iterdir())
    assert [n for n in saved if n.endswith("_regions.npy")] == ["00000_regions.npy", "00001_regions.npy"]
    assert np.load(tmp_path / "loop" / "00001_regions.npy").shape[0] == 4


def test_pairs_alternate_which_run_goes_first(clip_loop, monkeypatch):
    ran = []
    monkeypatch.setattr(clip_loop, "_run_child", lambda kind, spec: ran.append(kind) or {"pipeline": 2.0, "clip": 1.0}[kind])
    assert clip_loop.fresh_pair(0, {}) == (2.0, 1.0) and clip_loop.fresh_pair(1, {}) == (2.0, 1.0)
    assert ran == ["pipeline", "clip", "clip", "pipeline"]


def test_a_failing_child_is_one_line_naming_the_run_and_its_error(clip_loop, images, tmp_path):
    spec = _spec(clip_loop, tmp_path, images)
    spec["config"]["backbone"] = "resnet7"
    with pytest.raises(Exception) as err:
        clip_loop._run_child("pipeline", spec)
    msg = str(err.value)
    assert msg.startswith("the fresh pipeline process for grid failed (exit 1): error: ") and "resnet7" in msg
    assert "\n" not in msg


def test_a_spec_the_child_cannot_read_is_refused(clip_loop, tmp_path, images):
    from featstore.errors import FeatstoreError

    spec = _spec(clip_loop, tmp_path, images)
    with pytest.raises(FeatstoreError, match="child 'both': expected one of pipeline, clip and a spec with keys"):
        clip_loop.child_main("both", spec)
    with pytest.raises(FeatstoreError, match="expected one of pipeline, clip and a spec with keys extractor, config"):
        clip_loop.child_main("clip", {k: v for k, v in spec.items() if k != "n_warm"})
    with pytest.raises(FeatstoreError, match=r"grid's config cannot go to a fresh process as JSON \(.*set"):
        clip_loop.pair_spec("grid", {"layers": {1, 2}}, str(images), 4, 0, "cpu", 4, tmp_path)


def test_the_child_s_command_line_without_a_spec_prints_its_usage(clip_loop):
    import subprocess

    proc = subprocess.run([sys.executable, clip_loop.__file__], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "usage: python _clip_loop.py {pipeline|clip} SPEC_JSON (started by fresh_pair)")
    bad = subprocess.run([sys.executable, clip_loop.__file__, "clip", "{not json"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
