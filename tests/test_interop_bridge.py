"""`featstore export` / `featstore import` and the bridge behind them (featstore.interop.bridge) on a real
ResNet-18 grid set: exported files are reopened with the format's own library (lmdb + pickle, h5py, numpy)
and compared with the store; imports are compared key by key with the original set. Hostile or
inconsistent input must fail with one line and leave the store untouched.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest

from cli.featstore_cli import main as featstore
from cli_helpers import build_world, invoke, one_line_error, tree
from featstore.errors import FeatstoreError
from featstore.interop import write_mmf_lmdb
from featstore.interop.bridge import export_features, import_features
from featstore.store import open_store

REGION_ARRAYS = ("regions", "boxes", "image_size", "count")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("bridge"))


@pytest.fixture(scope="module")
def grid(world):
    fsv = open_store(world["store"]).open("grid")
    return fsv, fsv.load(list(REGION_ARRAYS[:3]) + ["pooled"])


def read_export(path: Path, fmt: str) -> dict:
    """key -> record, read with the format's own library (not featstore's readers)."""
    out = {}
    if fmt == "mmf-lmdb":
        env = lmdb.open(str(path), readonly=True, lock=False)
        with env.begin() as txn:
            for k in pickle.loads(txn.get(b"keys")):  # our own file: plain pickle is fine here
                out[k.decode()] = pickle.loads(txn.get(k))
        env.close()
    elif fmt == "hdf5":
        with h5py.File(path, "r") as f:
            keys = [k.decode() if isinstance(k, bytes) else str(k) for k in f["keys"][()]]
            for i, k in enumerate(keys):
                n = int(f["num_boxes"][i])
                out[k] = {"features": f["features"][i, :n], "bbox": f["bbox"][i, :n], "num_boxes": n,
                          "image_width": int(f["image_width"][i]), "image_height": int(f["image_height"][i])}
    else:
        for p in sorted(Path(path).glob("*.npy")):
            if p.name.endswith("_info.npy"):
                continue
            info = np.load(p.with_name(p.stem + "_info.npy"), allow_pickle=True).item()
            out[p.stem] = {"features": np.load(p), **info}
    return out


@pytest.mark.parametrize("fmt", ["mmf-lmdb", "hdf5", "npy"])
def test_export_then_import_round_trips_by_key(world, grid, tmp_path, fmt):
    fsv, data = grid
    out = tmp_path / f"export.{fmt}"
    msg = invoke(featstore, ["export", "grid", "--store", world["store"], "--format", fmt, "--out", out])
    note = (f"note: {fsv.ref} holds 4 regions per image, not MMF's default max_features 100: run MMF with "
            "dataset_config.<dataset>.max_features=4 (bbox is padded to 4 rows and MMF pads the features to "
            "max_features; they must agree)")
    assert sorted(msg.splitlines()) == [f"exported 6 rows of {fsv.ref} to {out} ({fmt})"] + ([note] if fmt == "mmf-lmdb"
                                                                                            else [])
    # the file itself holds the store's rows, by key
    recs = read_export(out, fmt)
    keys = [str(k) for k in fsv.keys]
    assert sorted(recs) == sorted(keys)
    for i, k in enumerate(keys):
        n = int(data["count"][i])
        assert recs[k]["num_boxes"] == n == 4
        np.testing.assert_array_equal(recs[k]["features"], data["regions"][i, :n])
        np.testing.assert_array_equal(recs[k]["bbox"], data["boxes"][i, :n])
        assert (recs[k]["image_width"], recs[k]["image_height"]) == (56, 48) == tuple(data["image_size"][i])
    # exports never overwrite: one line, the file is untouched
    snap = tree(out) if out.is_dir() else {out.name: out.stat().st_mtime_ns}
    assert "already exists" in one_line_error(featstore, ["export", "grid", "--store", world["store"], "--format", fmt,
                                                          "--out", out])
    assert snap == (tree(out) if out.is_dir() else {out.name: out.stat().st_mtime_ns})
    # import into a new store, keys matched to the dataset's image keys
    store2 = tmp_path / "s2"
    report = invoke(featstore, ["import", out, "--store", store2, "--format", fmt, "--name", "imp", "--dataset",
                                world["data"]])
    assert "key matching: 6 image keys matched, 0 without features" in report
    imp = open_store(store2).open("imp")
    assert report.strip().endswith(f"imported 6 rows into {imp.ref}")
    assert imp.key_kind == "image_key" and imp.modality == "image"
    assert sorted(imp.keys) == sorted(keys)
    x, y = fsv.select(keys), imp.select(keys)
    for name in REGION_ARRAYS:
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    # pooled of an import = float64 mean of the real regions, stored as float32
    ref_pooled = np.stack([data["regions"][i, :int(data["count"][i])].astype(np.float64).mean(0)
                           for i in range(len(keys))]).astype(np.float32)
    np.testing.assert_array_equal(y["pooled"], ref_pooled)
    assert imp.record["recipe"]["manifest_fingerprint"] == world["ds"].fingerprint
    # the same import again names the same version and writes nothing new
    again = invoke(featstore, ["import", out, "--store", store2, "--format", fmt, "--name", "imp", "--dataset",
                               world["data"]])
    assert "already imported" in again and imp.ref in again
    assert [v.version for v in open_store(store2).versions("imp")] == [imp.version]


def test_import_without_dataset_keeps_file_stems_and_float16(world, grid, tmp_path):
    fsv, data = grid
    export_features(fsv, str(tmp_path / "feats"), "npy")
    st = open_store(tmp_path / "s", create=True)
    imp, report = import_features(st, tmp_path / "feats", "npy", "half", dtype="float16", backend="lmdb")
    assert sorted(imp.keys) == sorted(str(k) for k in fsv.keys)
    assert imp.spec("regions").dtype == "float16" and imp.record["backend"] == "lmdb"
    got = imp.select(list(fsv.keys), ["regions"])["regions"]
    np.testing.assert_array_equal(got, data["regions"].astype(np.float16))
    assert "regions [6, 4, 512] float16; boxes: yes, image sizes: yes, class ids: no; also num_boxes" in report


def test_mmf_lmdb_keys_without_leading_zeros_or_with_windows_paths_are_matched(world, grid, tmp_path):
    fsv, data = grid
    names = {"00000": "0", "00001": "img\\00001.png", "00002": "img/2.png", "00003": "00003.npy", "00004": "4",
             "00005": "img\\5.png"}
    recs = []
    for i, k in enumerate(fsv.keys):
        n = int(data["count"][i])
        recs.append((names[str(k)], {"features": data["regions"][i, :n], "bbox": data["boxes"][i, :n],
                                     "num_boxes": n, "image_width": int(data["image_size"][i, 0]),
                                     "image_height": int(data["image_size"][i, 1])}))
    write_mmf_lmdb(tmp_path / "mmf.lmdb", recs)
    out = invoke(featstore, ["import", tmp_path / "mmf.lmdb", "--store", tmp_path / "s2", "--format", "mmf-lmdb",
                             "--name", "mmf", "--dataset", world["data"]])
    assert "6 image keys matched, 0 without features, 0 source keys unused" in out
    imp = open_store(tmp_path / "s2").open("mmf")
    assert sorted(imp.keys) == sorted(names)  # stored under the dataset's image keys, leading zeros kept
    got = imp.select(list(fsv.keys))
    for name in REGION_ARRAYS:
        np.testing.assert_array_equal(got[name], fsv.select(list(fsv.keys))[name], err_msg=name)
    # without --dataset the stems are kept as they are ("0", "00001", "2", ...)
    st3 = open_store(tmp_path / "s3", create=True)
    bare, _ = import_features(st3, tmp_path / "mmf.lmdb", "mmf-lmdb", "bare")
    assert sorted(bare.keys) == sorted(["0", "00001", "2", "00003", "4", "5"])


def _records_without_sizes(fsv, data):
    return [(str(k), {"features": data["regions"][i, :int(data["count"][i])],
                      "bbox": data["boxes"][i, :int(data["count"][i])]}) for i, k in enumerate(fsv.keys)]


def test_records_without_image_sizes_take_them_from_the_dataset_images_or_say_so(world, grid, tmp_path):
    from PIL import Image

    from featstore.interop.bridge import NO_SIZES
    from heads.data import build_train_data

    fsv, data = grid
    data = fsv.select(list(fsv.keys))
    write_mmf_lmdb(tmp_path / "nosize.lmdb", _records_without_sizes(fsv, data))
    out = invoke(featstore, ["import", tmp_path / "nosize.lmdb", "--store", tmp_path / "s", "--format", "mmf-lmdb",
                             "--name", "sized", "--dataset", world["data"]])
    assert "image sizes read from the dataset's 6 image files (the source has no image_width / image_height)" in out
    imp = open_store(tmp_path / "s").open("sized")
    assert imp.recipe.config["image_size"] == "dataset image files"
    got = imp.select(list(fsv.keys), ["image_size"])["image_size"]
    paths = world["ds"].image_paths()
    for i, k in enumerate(fsv.keys):  # the files' own sizes, as PIL reads them, = the grid extractor's record
        with Image.open(paths[str(k)]) as img:
            assert tuple(got[i]) == img.size == tuple(data["image_size"][i])
    # without the dataset the set has boxes and no sizes: the import says so, and so does heads' loader
    st = open_store(tmp_path / "s2", create=True)
    bare, report = import_features(st, tmp_path / "nosize.lmdb", "mmf-lmdb", "bare")
    assert NO_SIZES in report and "image_size" not in bare.array_names and "image_size" not in bare.recipe.config
    td = build_train_data(st, world["ds"], "bare", None, "label")
    assert "img_boxes" not in td.features
    assert [w for w in td.meta["warnings"] if "has boxes but no image_size, so heads get no box locations" in w]
    assert not build_train_data(open_store(tmp_path / "s"), world["ds"], "sized", None, "label").meta["warnings"]


def test_displayed_size_applies_the_exif_orientation(tmp_path):
    from PIL import Image, ImageOps

    from featstore.interop.bridge import _displayed_size

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: displayed height x width
    Image.new("RGB", (40, 24), (9, 9, 9)).save(tmp_path / "r.jpg", exif=exif)
    with Image.open(tmp_path / "r.jpg") as img:
        assert _displayed_size(str(tmp_path / "r.jpg")) == ImageOps.exif_transpose(img).size == (24, 40)
    assert _displayed_size(str(tmp_path / "missing.jpg")) is None and _displayed_size(None) is None


def test_max_regions_too_small_names_the_key_and_commits_nothing(world, tmp_path):
    out = tmp_path / "e.lmdb"
    invoke(featstore, ["export", "grid", "--store", world["store"], "--format", "mmf-lmdb", "--out", out])
    line = one_line_error(featstore, ["import", out, "--store", tmp_path / "s", "--format", "mmf-lmdb", "--name",
                                      "cut", "--max-regions", "2"])
    assert "[00000] has 4 regions but the set keeps 2; pass --max-regions 4" in line
    assert open_store(tmp_path / "s").versions("cut") == []


@pytest.mark.parametrize("fmt", ["mmf-lmdb", "hdf5", "npy"])
def test_export_makes_missing_folders_or_says_why_not(world, grid, tmp_path, fmt):
    fsv, data = grid
    out = tmp_path / "new" / "deeper" / f"grid.{fmt}"
    invoke(featstore, ["export", "grid", "--store", world["store"], "--format", fmt, "--out", out])
    recs = read_export(out, fmt)
    assert sorted(recs) == sorted(str(k) for k in fsv.keys)
    (tmp_path / "afile").write_text("x")
    line = one_line_error(featstore, ["export", "grid", "--store", world["store"], "--format", fmt, "--out",
                                      tmp_path / "afile" / "sub" / f"grid.{fmt}"])
    assert line == (f"error: {tmp_path / 'afile' / 'sub' / f'grid.{fmt}'}: its folder {tmp_path / 'afile' / 'sub'} "
                    "cannot be made (Not a directory); choose another --out")


def test_export_of_a_text_set_errors_and_writes_nothing(world, tmp_path):
    for fmt in ("mmf-lmdb", "hdf5", "npy"):
        out = tmp_path / f"bert.{fmt}"
        line = one_line_error(featstore, ["export", "bert", "--store", world["store"], "--format", fmt, "--out", out])
        assert "has no region features" in line and "bert@" in line
        assert not out.exists()


def test_import_errors_are_one_line(world, tmp_path):
    assert "does not exist" in one_line_error(featstore, ["import", tmp_path / "nothing", "--store", tmp_path / "s",
                                                          "--format", "hdf5", "--name", "x"])
    # two source keys naming the same image ("2" and "00002") without --dataset to match them
    fsv = open_store(world["store"]).open("grid")
    rec = {"features": np.ones((2, 3), np.float32)}
    write_mmf_lmdb(tmp_path / "dup.lmdb", [("2", rec), ("img/2.png", rec)])
    assert "both name image '2'" in one_line_error(featstore, ["import", tmp_path / "dup.lmdb", "--store",
                                                               tmp_path / "s", "--format", "mmf-lmdb", "--name", "d"])
    # keys that match no image of the dataset
    write_mmf_lmdb(tmp_path / "foreign.lmdb", [("99999", rec)])
    assert "no key of" in one_line_error(featstore, ["import", tmp_path / "foreign.lmdb", "--store", tmp_path / "s",
                                                     "--format", "mmf-lmdb", "--name", "f", "--dataset", world["data"]])
    with pytest.raises(FeatstoreError, match="format 'zip' is unknown"):
        export_features(fsv, str(tmp_path / "x.zip"), "zip")
    assert open_store(tmp_path / "s").feature_sets() == []


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_malicious_pickle_in_mmf_lmdb_is_refused_and_nothing_is_written(tmp_path):
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    env = lmdb.open(str(tmp_path / "evil.lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"keys", pickle.dumps([b"00000"]))
        txn.put(b"00000", pickle.dumps({"features": _Evil()}))
    env.close()
    line = one_line_error(featstore, ["import", tmp_path / "evil.lmdb", "--store", tmp_path / "s", "--format",
                                      "mmf-lmdb", "--name", "evil"])
    assert "refused to unpickle global" in line and "system" in line
    assert not marker.exists()
    st = open_store(tmp_path / "s")
    assert st.feature_sets() == []
    assert not (tmp_path / "s" / "sets" / "evil").exists()
