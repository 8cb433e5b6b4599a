"""`featstore extract` when rows fail: every row failing commits nothing and fails in one line (so the fixed
command extracts for real), some rows failing commits the rest and says how to retry them, and the join that
`heads train` runs says what would actually help. Real MM-IMDB jsonl files and Hateful-Memes folders of real
images, the real grid extractor (ResNet-18 at 64 px, cli_helpers' tiny config), the real store on disk.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.featstore_cli import main as featstore
from cli_helpers import GRID_CFG, extract_args, invoke, make_hm_folder, make_image, one_line_error, table_rows
from featstore.datasets import load_dataset
from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor, load_image
from featstore.runner import ExtractOptions, run_extraction
from featstore.runner.extract import _recipe
from featstore.store import open_store, preflight

N = 5


def mmimdb_jsonl(root: Path) -> Path:
    """``root/data/dev.jsonl`` (MM-IMDB, MMF's jsonl) whose posters ``posters/000000i.jpeg`` lie in
    ``root/images`` (real JPEGs), not beside the data file: without ``--image-root images`` none is found."""
    data = root / "data" / "dev.jsonl"
    data.parent.mkdir(parents=True)
    rows = []
    for i in range(N):
        make_image(root / "images" / "posters" / f"{i:07d}.jpeg", i)
        rows.append({"id": f"{i:07d}", "plot": [f"plot number {i}"], "genres": ["Drama"],
                     "poster": f"posters/{i:07d}.jpeg"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def missing_message(root: Path) -> str:
    return (f"error: all {N} images failed, so no version of grid was committed (first: 0000000: image "
            f"'{root}/data/posters/0000000.jpeg': file not found); check the dataset's image paths, or pass "
            f"--image-root DIR (the folder they are relative to), then run the same command again")


def arrays(fsv) -> dict:
    keys = sorted(fsv.keys.tolist())
    return {"keys": keys, **fsv.select(keys)}


def test_all_failed_commits_nothing_and_the_fixed_rerun_extracts(tmp_path):
    data, store = mmimdb_jsonl(tmp_path), tmp_path / "store"
    assert one_line_error(featstore, extract_args(data, store, "grid")) == missing_message(tmp_path)
    assert invoke(featstore, ["ls", "--store", store]) == f"{store}: no feature sets\n"
    assert invoke(featstore, ["ls", "--all", "--store", store]) == f"{store}: no feature sets\n"
    assert invoke(featstore, ["verify", "--store", store]) == ""  # no unrecorded version left behind either
    # the same command again extracts again (and fails the same way): it never says "already complete"
    assert one_line_error(featstore, extract_args(data, store, "grid")) == missing_message(tmp_path)
    fixed_out = invoke(featstore, extract_args(data, store, "grid", "--image-root", tmp_path / "images"))
    fixed = open_store(store).open("grid")
    assert fixed_out.splitlines()[0].startswith(f"feature set grid@{fixed.version}: {N} rows, 0 failed, 1 chunks")
    assert [r[-1] for r in table_rows(invoke(featstore, ["ls", "--store", store]))] == ["complete"]
    # a clean run: the posters beside the data file, another store; same image bytes, so the same version id
    shutil.copytree(tmp_path / "images" / "posters", tmp_path / "data" / "posters")
    invoke(featstore, extract_args(data, tmp_path / "clean", "grid"))
    clean = open_store(tmp_path / "clean").open("grid")
    assert fixed.version == clean.version and len(fixed) == N and fixed.failures == {}
    got, want = arrays(open_store(store).open("grid")), arrays(clean)
    assert got["keys"] == want["keys"] == [f"{i:07d}" for i in range(N)]
    for name in ("regions", "pooled", "boxes", "image_size", "count", "mask"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_all_failed_for_another_reason_names_that_reason_and_its_fix(tmp_path):
    data, store = mmimdb_jsonl(tmp_path), tmp_path / "store"
    for i in range(N):
        (tmp_path / "images" / "posters" / f"{i:07d}.jpeg").write_bytes(b"")
    line = one_line_error(featstore, extract_args(data, store, "grid", "--image-root", tmp_path / "images"))
    assert line == (f"error: all {N} images failed, so no version of grid was committed (first: 0000000: image "
                    f"'{tmp_path}/images/posters/0000000.jpeg': empty file (0 bytes)); re-download or re-export "
                    f"the image, then run the same command again")
    assert not (store / "sets" / "grid").exists()


def failed_rows(data: Path):
    """What `featstore extract data --extractor grid` (tiny config, no --image-root) would write: the manifest,
    the run's recipe and schema, zero-row arrays and each image's real load_image failure."""
    ds = load_dataset(data, check_images=False)
    ext = create_extractor("grid", **GRID_CFG)
    failures = {}
    for s in ds.samples:
        with pytest.raises(FeatstoreError) as e:
            load_image(s.image_path)
        failures[s.image_key] = str(e.value)
    schema = ext.schema()
    empty = {n: np.zeros((0,) + tuple(sp.shape), sp.dtype) for n, sp in schema.items()}
    return ds, _recipe(ext, "grid", ds, torch.float32), schema, {**empty, "count": np.zeros(0, np.int32)}, failures


def test_a_killed_all_failed_run_is_not_committed_by_the_rerun(tmp_path):
    """A run killed after its chunks were written, before the commit: the rerun has no rows left to extract,
    reads the chunk markers, removes the version and fails as the run would have."""
    data, store = mmimdb_jsonl(tmp_path), tmp_path / "store"
    ds, recipe, schema, empty, failures = failed_rows(data)
    w = open_store(store, create=True).writer("grid", recipe, ds.image_keys(), schema, key_kind="image_key",
                                              modality="image")
    w.write_chunk(0, empty, failures)
    assert w.pending_chunks() == [] and not w.complete
    assert one_line_error(featstore, extract_args(data, store, "grid")) == missing_message(tmp_path)
    assert invoke(featstore, ["ls", "--all", "--store", store]) == f"{store}: no feature sets\n"


def test_an_all_failed_version_an_earlier_featstore_committed_is_named_not_called_complete(tmp_path):
    """Stores written before this fix hold such versions: the rerun fails in one line naming it and `rm`,
    keeps it (nothing already written is removed), and the join's hint does not say "rerun extract"."""
    data, store = mmimdb_jsonl(tmp_path), tmp_path / "store"
    ds, recipe, schema, empty, failures = failed_rows(data)
    old = open_store(store, create=True).write("grid", recipe, ds.image_keys(), empty, key_kind="image_key",
                                               modality="image", schema=schema, failures=failures)
    line = one_line_error(featstore, extract_args(data, store, "grid"))
    assert line == (f"error: grid@{old.version} holds no rows: all {N} images failed at extraction (first: 0000000: "
                    f"image '{tmp_path}/data/posters/0000000.jpeg': file not found); check the dataset's image paths, "
                    f"or pass --image-root DIR (the folder they are relative to), then run the same command again; "
                    f"remove the empty version with `featstore rm grid@{old.version}`")
    assert [v.version for v in open_store(store).versions("grid")] == [old.version]
    with pytest.raises(FeatstoreError) as e:
        preflight(ds.samples, image=open_store(store).open("grid")).raise_if_missing()
    few = "'0000000', '0000001', '0000002', '0000003', '0000004'"
    assert str(e.value) == (
        f"feature sets do not cover the dataset: grid@{old.version} (image_key): {N} needed, {N} missing [{few}], "
        f"{N} failed at extraction [{few}], 0 extra; rows that failed at extraction stay failed in grid@{old.version} "
        f"(rerunning the same extraction does nothing; `featstore info grid@{old.version}` says why each failed): "
        f"fix those inputs (or pass --image-root when files were not found) and run featstore extract again, which "
        f"extracts a new version because the dataset fingerprint covers the texts and image bytes, or filter them "
        f"out of the dataset")
    invoke(featstore, ["rm", f"grid@{old.version}", "--store", store])
    assert one_line_error(featstore, extract_args(data, store, "grid")) == missing_message(tmp_path)


def retry_line(ref: str) -> str:
    return (f"  to retry the failed rows: fix those inputs and run the same command again (the version id covers "
            f"the texts and image bytes, so it extracts a new version); if they were fine (a passing read error), "
            f"`featstore rm {ref}` first")


def test_some_failed_commits_the_rest_and_every_retry_the_hints_name_works(tmp_path):
    data, store = make_hm_folder(tmp_path / "data"), tmp_path / "store"
    (data / "img" / "00003.png").unlink()
    out = invoke(featstore, extract_args(data, store, "grid", "--chunk-rows", 4))
    first = open_store(store).open("grid")
    ref = first.ref
    lines = out.splitlines()
    assert lines[0].startswith(f"feature set {ref}: 5 rows, 1 failed, 2 chunks written in ")
    assert lines[-3:] == ["  failures (first 5 of 1; all in `featstore info grid`):",
                          f"    00003: image '{data}/img/00003.png': file not found; check the manifest's image path "
                          f"and the images folder", retry_line(ref)]
    assert table_rows(invoke(featstore, ["ls", "--store", store])) == [
        ["grid", first.version, "grid", "image", "5", "1", first.record["created"], "complete"]]
    again = invoke(featstore, extract_args(data, store, "grid", "--chunk-rows", 4)).splitlines()
    assert again[0] == (f"feature set {ref}: 5 rows, 1 failed (already complete: nothing to do; `featstore verify` "
                        f"re-reads its chunks)") and again[-1] == retry_line(ref)
    # the join heads train runs: the failed row stays failed here, and the hint says what helps
    ds = load_dataset(data, check_images=False)
    with pytest.raises(FeatstoreError) as e:
        preflight(ds.samples, image=first).raise_if_missing()
    assert str(e.value) == (
        f"feature sets do not cover the dataset: {ref} (image_key): 6 needed, 1 missing ['00003'], 1 failed at "
        f"extraction ['00003'], 0 extra; rows that failed at extraction stay failed in {ref} (rerunning the same "
        f"extraction does nothing; `featstore info {ref}` says why each failed): fix those inputs (or pass "
        f"--image-root when files were not found) and run featstore extract again, which extracts a new version "
        f"because the dataset fingerprint covers the texts and image bytes, or filter them out of the dataset")
    # `featstore rm` then the same command: extracts the version again (the inputs are as they were)
    invoke(featstore, ["rm", ref, "--store", store])
    redo = invoke(featstore, extract_args(data, store, "grid", "--chunk-rows", 4))
    assert redo.startswith(f"feature set {ref}: 5 rows, 1 failed, 2 chunks written in ")
    # the input fixed: the same command extracts a new version with every row, which the join accepts
    make_image(data / "img" / "00003.png", 3)
    fixed_out = invoke(featstore, extract_args(data, store, "grid", "--chunk-rows", 4))
    fixed = open_store(store).open("grid")
    assert fixed.version != first.version and fixed_out.startswith(f"feature set {fixed.ref}: 6 rows, 0 failed, ")
    assert "to retry" not in fixed_out
    preflight(load_dataset(data).samples, image=fixed).raise_if_missing()
    np.testing.assert_array_equal(fixed.select(["00000"])["regions"], first.select(["00000"])["regions"])


def test_a_resumed_run_whose_rows_all_fail_commits_when_an_earlier_chunk_has_rows(tmp_path):
    """Resume: the rows this run extracts all fail, an earlier run's chunk holds rows; the version commits."""
    data, store = make_hm_folder(tmp_path / "data"), tmp_path / "store"
    ds = load_dataset(data, check_images=False)
    st = open_store(store, create=True)
    opts = dict(batch_size=4, num_workers=0, chunk_rows=4, progress=False)
    first = run_extraction(st, ds, "grid", extractor_config=GRID_CFG, options=ExtractOptions(**opts))
    chunk1 = Path(store) / "sets" / "grid" / first.version
    # reopen the committed version as unfinished with chunk 1 to redo, and its images gone
    (chunk1 / "version.json").unlink()
    (chunk1 / "chunks" / "1.json").unlink()
    for k in ("00004", "00005"):
        (data / "img" / f"{k}.png").rename(tmp_path / f"{k}.png")
    again = run_extraction(st, ds, "grid", extractor_config=GRID_CFG, options=ExtractOptions(**opts))
    assert again.version == first.version and sorted(again.failures) == ["00004", "00005"]
    assert len(st.open("grid")) == 4


@pytest.mark.slow  # two torchrun ranks: over 30 s on two loaded cores; CI runs it, `-m "not slow"` skips it
def test_torchrun_all_failed_every_rank_fails_in_one_line_and_commits_nothing(tmp_path):
    data, store = mmimdb_jsonl(tmp_path), tmp_path / "store"
    exe = shutil.which("featstore") or str(Path(sys.executable).parent / "featstore")
    args = [str(a) for a in extract_args(data, store, "grid", "--chunk-rows", 2)]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          exe, *args], capture_output=True, text=True, timeout=300, env={**os.environ,
                          "OMP_NUM_THREADS": "1"})
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [missing_message(tmp_path)] * 2, res.stderr[-3000:]
    # the only traceback is torchrun's own report of a rank's non-zero exit, no frame of featstore's
    frames = [line for line in res.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [f for f in frames if "/featstore/" in f or "/cli/" in f], res.stderr[-3000:]
    assert invoke(featstore, ["ls", "--all", "--store", store]) == f"{store}: no feature sets\n"
