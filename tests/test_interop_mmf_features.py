"""An LMDB laid out exactly as MMF's ``tools/scripts/features/lmdb_conversion.py`` writes it (``convert`` mode:
default-protocol ``pickle.dumps`` of a dict per key holding ``feature_path``, ``features``, ``image_height``,
``image_width``, ``num_boxes``, ``objects``, ``cls_prob``, ``bbox``; ``b"keys"`` = pickled list of byte keys),
with records of 10 to 100 rows of which only the first ``num_boxes`` have non-zero confidence (what
``extract_features_vmb.py`` stores). It is written here with plain ``lmdb`` + ``pickle`` (not featstore's
writer), imported with default options, exported, and the export read back with plain ``lmdb`` + ``pickle``.
"""
from __future__ import annotations

import pickle

import h5py
import lmdb
import numpy as np
import pytest

from cli.featstore_cli import main as featstore
from cli_helpers import invoke
from featstore.store import open_store

CLASSES, DIM = 9, 24
ROWS = [10, 37, 100, 12, 64, 100, 55]  # the first record is the smallest: the region axis must not come from it


def mmf_records(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    recs = {}
    for i, rows in enumerate(ROWS):
        key = f"{i * 1013 + 42:05d}"
        boxes = rng.integers(0, rows + 1) if i % 2 else rows  # odd records: rows past num_boxes (zero confidence)
        probs = rng.dirichlet(np.ones(CLASSES), rows).astype(np.float32)
        recs[key] = {
            "feature_path": key,
            "features": rng.standard_normal((rows, DIM)).astype(np.float32),
            "image_height": int(rng.integers(200, 900)),
            "image_width": int(rng.integers(200, 900)),
            "num_boxes": int(boxes),
            "objects": probs.argmax(1).astype(np.int64),
            "cls_prob": probs,
            "bbox": rng.uniform(0, 500, (rows, 4)).astype(np.float32),
        }
    return recs


def write_like_mmf(path, recs: dict) -> None:
    """The convert() loop of lmdb_conversion.py: one write transaction, keys as encoded relative paths."""
    env = lmdb.open(str(path), map_size=1 << 28)
    id_list = []
    with env.begin(write=True) as txn:
        for key, item in recs.items():
            id_list.append(key.encode())
            txn.put(key.encode(), pickle.dumps(item))
        txn.put(b"keys", pickle.dumps(id_list))
    env.close()


def read_like_mmf(path) -> dict:
    """The extract() side of lmdb_conversion.py (and LMDBFeatureReader): plain pickle on our own export."""
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)
    with env.begin(write=False) as txn:
        ids = pickle.loads(txn.get(b"keys"))
        out = {k.decode("utf-8"): pickle.loads(txn.get(k)) for k in ids}
    env.close()
    assert all(isinstance(k, bytes) for k in ids)
    return out


def assert_same(got, want, name):
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name  # bit for bit
    else:
        assert got == want and type(got) is type(want), name


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mmf")
    recs = mmf_records()
    write_like_mmf(tmp / "detectron.lmdb", recs)
    report = invoke(featstore, ["import", tmp / "detectron.lmdb", "--store", tmp / "store", "--format", "mmf-lmdb",
                                "--name", "det"])
    return tmp, recs, report, open_store(tmp / "store").open("det")


def test_default_import_sizes_regions_from_the_largest_record_and_keeps_every_row(imported):
    tmp, recs, report, fsv = imported
    assert f"regions [{len(ROWS)}, 100, {DIM}] float32; boxes: yes, image sizes: yes, class ids: yes" in report
    assert "also cls_prob, num_boxes;" in report and "not imported: feature_path" in report
    assert fsv.spec("regions").shape == (100, DIM) and fsv.spec("cls_prob").shape == (100, CLASSES)
    data = fsv.select(list(recs), ["regions", "boxes", "class_ids", "cls_prob", "num_boxes", "image_size", "pooled"])
    for i, (k, r) in enumerate(recs.items()):
        rows = r["features"].shape[0]
        assert data["count"][i] == rows and data["num_boxes"][i] == r["num_boxes"]  # every stored row, MMF's mask
        for store_name, field in (("regions", "features"), ("boxes", "bbox"), ("class_ids", "objects"),
                                  ("cls_prob", "cls_prob")):
            assert data[store_name].dtype == r[field].dtype, store_name
            np.testing.assert_array_equal(data[store_name][i, :rows], r[field], err_msg=store_name)
            assert not data[store_name][i, rows:].any(), store_name  # padding only past the stored rows
        assert tuple(data["image_size"][i]) == (r["image_width"], r["image_height"])
        np.testing.assert_array_equal(data["pooled"][i], r["features"].astype(np.float64).mean(0).astype(np.float32))
    assert any(r["num_boxes"] < r["features"].shape[0] for r in recs.values())  # the case the issue is about


def test_export_round_trips_every_array_bit_for_bit(imported):
    tmp, recs, _, fsv = imported
    out = tmp / "export.lmdb"
    invoke(featstore, ["export", "det", "--store", tmp / "store", "--format", "mmf-lmdb", "--out", out])
    got = read_like_mmf(out)
    assert list(got) == list(recs)
    for k, r in recs.items():
        want = {n: v for n, v in r.items() if n != "feature_path"}
        assert set(got[k]) == set(want), k
        rows = r["features"].shape[0]
        bbox = got[k].pop("bbox")  # zero rows up to the set's 100, as MMF's reader pads the features
        assert bbox.shape == (100, 4) and bbox.dtype == r["bbox"].dtype and not bbox[rows:].any(), k
        assert_same(bbox[:rows], r["bbox"], f"{k}.bbox")
        for name, v in want.items():
            if name != "bbox":
                assert_same(got[k][name], v, f"{k}.{name}")
    # and the export imports again to the same arrays (the same round trip on the store side)
    invoke(featstore, ["import", out, "--store", tmp / "store2", "--format", "mmf-lmdb", "--name", "again"])
    again = open_store(tmp / "store2").open("again")
    names = ["regions", "boxes", "class_ids", "cls_prob", "num_boxes", "image_size", "pooled"]
    a, b = fsv.select(list(recs), names), again.select(list(recs), names)
    for name in names + ["count"]:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize("fmt", ["hdf5", "npy"])
def test_other_formats_keep_rows_past_num_boxes_and_cls_prob(imported, fmt):
    tmp, recs, _, fsv = imported
    out = tmp / f"export.{fmt}"
    invoke(featstore, ["export", "det", "--store", tmp / "store", "--format", fmt, "--out", out])
    if fmt == "hdf5":
        with h5py.File(out, "r") as f:
            assert list(f["num_rows"][()]) == ROWS and f["cls_prob"].shape == (len(ROWS), 100, CLASSES)
    invoke(featstore, ["import", out, "--store", tmp / f"s-{fmt}", "--format", fmt, "--name", "x"])
    back = open_store(tmp / f"s-{fmt}").open("x")
    names = ["regions", "boxes", "class_ids", "cls_prob", "num_boxes", "image_size"]
    a, b = fsv.select(list(recs), names), back.select(list(recs), names)
    for name in names + ["count"]:
        assert a[name].tobytes() == b[name].tobytes(), name


def test_heads_train_monitors_dev_unseen_with_mmfs_split_files(tmp_path):
    """A Hateful Memes folder with train + dev_unseen and no dev_seen (MMF's phase-2 yaml reads only train,
    dev_unseen and test_unseen of its five files): training monitors dev_unseen and says so; with dev_seen
    present it stays the monitored split (``--val-split``: tests/test_hm_shared_dev.py)."""
    import shutil

    from cli.heads_cli import main as heads
    from cli_helpers import build_world

    w = build_world(tmp_path / "w")
    mmf = tmp_path / "mmf_data"
    shutil.copytree(w["data"], mmf)
    (mmf / "dev_seen.jsonl").rename(mmf / "dev_unseen.jsonl")
    (mmf / "test_seen.jsonl").unlink()
    base = ["train", "--store", w["store"], "--image", "grid", "--text", "bert", "--head", "concat", "--epochs", 1,
            "--quiet", "--device", "cpu"]
    out = invoke(heads, base + ["--dataset", mmf, "--out", tmp_path / "run"])
    assert "seed 0: best epoch 1, dev_unseen " in out
    out = invoke(heads, base + ["--dataset", w["data"], "--out", tmp_path / "run2"])
    assert "seed 0: best epoch 1, dev " in out


def test_truncated_mmf_lmdb_import_is_one_line_not_sigbus(tmp_path):
    import subprocess
    import sys

    write_like_mmf(tmp_path / "detectron.lmdb", mmf_records())
    data = tmp_path / "detectron.lmdb" / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    got = subprocess.run([sys.executable, "-c", "from cli.featstore_cli import main; main()", "import",
                          str(tmp_path / "detectron.lmdb"), "--store", str(tmp_path / "s"), "--format", "mmf-lmdb",
                          "--name", "det"], capture_output=True, text=True, timeout=120)
    assert got.returncode == 2 and "Traceback" not in got.stderr, (got.returncode, got.stderr)  # not -7 (SIGBUS)
    assert f"LMDB {data} is truncated (" in got.stderr + got.stdout
