"""Interop file formats: safe unpickling, MMF LMDB, HDF5, MMF .npy folders (real files in tmp_path)."""
from __future__ import annotations

import collections
import os
import pickle
import pickletools
import re

import h5py
import lmdb
import numpy as np
import pytest
from conftest_data import assert_records_equal, make_record
from numpy.lib import format as npy_format

from featstore.errors import FeatstoreError
from featstore.interop import (check_record, iter_hdf5_records, match_keys, normalize_key, read_hdf5, read_mmf_lmdb,
                               read_npy_folder, safe_loads, write_hdf5, write_mmf_lmdb, write_npy_folder)


class Evil:
    """Unpickling this runs ``touch <marker>`` through os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def as_numpy1(data: bytes) -> bytes:
    """Rewrite a numpy-2 pickle so it names numpy.core.* like numpy 1 did (GLOBAL and
    SHORT_BINUNICODE strings), re-framed with pickletools.optimize for protocol 4+."""
    out = data.replace(b"cnumpy._core.", b"cnumpy.core.")  # protocol 0-2 GLOBAL lines
    for mod in (b"numpy._core.multiarray", b"numpy._core.numeric"):
        old = b"\x8c" + bytes([len(mod)]) + mod
        new_mod = mod.replace(b"._core", b".core")
        out = out.replace(old, b"\x8c" + bytes([len(new_mod)]) + new_mod)
    return pickletools.optimize(out) if data[1] >= 4 else out


# ---------------------------------------------------------------- safe_pickle
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_loads_real_numpy_pickles(protocol):
    rng = np.random.default_rng(0)
    obj = {"features": rng.standard_normal((3, 7)).astype(np.float32), "num_boxes": np.int64(3), "name": b"x\xff",
           "fortran": np.asfortranarray(rng.standard_normal((2, 3))), "tags": {"a", "b"},
           "ordered": collections.OrderedDict(z=1), "nested": [1, 2.5, None, ("t", np.float16(1.5))],
           "strings": np.array(["ab", "c"]), "objects": np.array([{"k": 1}], dtype=object)}
    got = safe_loads(pickle.dumps(obj, protocol=protocol), source="mem")
    assert got.keys() == obj.keys()
    for k in ("features", "fortran", "strings"):
        assert got[k].dtype == obj[k].dtype
        np.testing.assert_array_equal(got[k], obj[k])
    assert got["fortran"].flags.f_contiguous
    assert got["num_boxes"] == 3 and type(got["num_boxes"]) is np.int64
    assert (got["name"], got["tags"], got["ordered"], got["nested"]) == (b"x\xff", {"a", "b"}, {"z": 1},
                                                                          [1, 2.5, None, ("t", 1.5)])
    assert got["objects"][0] == {"k": 1}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_loads_numpy1_module_names(protocol):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    data = as_numpy1(pickle.dumps({"a": arr, "s": np.float32(2.5)}, protocol=protocol))
    names = [str(arg) for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "SHORT_BINUNICODE")]
    assert any(n.startswith("numpy.core.") for n in names) and not any("numpy._core" in n for n in names)
    got = safe_loads(data, source="old.pkl")
    np.testing.assert_array_equal(got["a"], arr)
    assert got["s"] == np.float32(2.5)


def test_safe_loads_python2_numpy_pickle():
    """A protocol-2 pickle as Python 2 + numpy 1 wrote it: array bytes as a py2 str (SHORT_BINSTRING)."""
    data = np.array([1.5, -2.0, 3.25], dtype="<f4").tobytes()
    py2 = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03"
           b"(K\x01K\x03\x85cnumpy\ndtype\nq\x04U\x02f4K\x00K\x01\x87Rq\x05(K\x03U\x01<NNNJ\xff\xff\xff\xff"
           b"J\xff\xff\xff\xffK\x00tb\x89U" + bytes([len(data)]) + data + b"tb.")
    got = safe_loads(py2, source="py2.pkl")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [1.5, -2.0, 3.25])


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"features": Evil(marker)}, protocol=4)
    pickle.loads(payload)  # the payload is live: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(FeatstoreError) as e:
        safe_loads(payload, source="feats.pkl")
    assert re.match(r"feats\.pkl: refused to unpickle global (posix|nt)\.system \(only numpy arrays", str(e.value))
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("subprocess", "Popen"),
                                         ("torch._utils", "_rebuild_tensor_v2"), ("numpy", "load"),
                                         ("copy_reg", "_reconstructor")])
def test_other_globals_are_refused(module, name):
    data = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R."
    with pytest.raises(FeatstoreError, match=rf"^x\.pkl: refused to unpickle global .*{name} "):
        safe_loads(data, source="x.pkl")


def test_garbage_and_odd_codecs_are_refused():
    with pytest.raises(FeatstoreError, match=r"^bad\.pkl: not a readable pickle"):
        safe_loads(pickle.dumps([1, 2, 3])[:-3], source="bad.pkl")
    rot = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(FeatstoreError, match=r"^c\.pkl: not a readable pickle .*rot13"):
        safe_loads(rot, source="c.pkl")


# ---------------------------------------------------------------- keys
@pytest.mark.parametrize("raw,want", [("02345", "02345"), ("2345", "2345"), ("img/02345.png", "02345"),
                                      ("img\\02345.png", "02345"), ("02345.npy", "02345"), (b"02345", "02345"),
                                      ("train2014/COCO_train2014_000000000009.jpg.npy",
                                       "COCO_train2014_000000000009"), ("a.b", "a.b")])
def test_normalize_key(raw, want):
    assert normalize_key(raw) == want


def test_match_keys_zeros_separators_and_counts():
    lmdb_keys = [b"2345", "img\\00007.png", "42953.npy", "img/extra.png", "0099"]
    m = match_keys(lmdb_keys, ["02345", "00007", "42953", "00001", "99"])
    assert dict(m) == {"02345": b"2345", "00007": "img\\00007.png", "42953": "42953.npy", "99": "0099"}
    assert m.missing == ["00001"] and m.unused == ["img/extra.png"]
    assert m.summary() == "4 image keys matched, 1 without features, 1 source keys unused"
    # an exact stem wins over an integer match, unless the integer one is the plain number MMF's reader takes
    assert dict(match_keys(["0007", "007"], ["007"])) == {"007": "007"}
    assert dict(match_keys(["7", "img/0008.png"], ["0007", "0008"])) == {"0007": "7", "0008": "img/0008.png"}
    with pytest.raises(FeatstoreError, match=r"^feature keys are ambiguous: '0007' <- '7', '007' \(MMF's reader takes "
                                             r"'7', the number without leading zeros\); several LMDB keys name the "
                                             r"same image, remove the duplicates from the feature file$"):
        match_keys(["7", "007"], ["0007"])
    with pytest.raises(FeatstoreError, match=r"^feature keys are ambiguous: '007' <- '7', '007' \(MMF's reader takes "
                                             r"'7', the number without leading zeros\); several"):
        match_keys(["7", "007"], ["007"])
    with pytest.raises(FeatstoreError, match=r"^feature keys are ambiguous: '0007' <- '07', '007'; several LMDB"):
        match_keys(["07", "007"], ["0007"])


# ---------------------------------------------------------------- MMF LMDB
def test_mmf_lmdb_round_trip_and_raw_layout(tmp_path):
    rng = np.random.default_rng(1)
    records = [("02345", make_record(rng, 3)), ("img_7", make_record(rng, 1))]
    path = tmp_path / "feats.lmdb"
    assert write_mmf_lmdb(path, records, map_size=1 << 16) == ["02345", "img_7"]  # the map grows as needed
    # what MMF's LMDBFeatureReader does, with plain lmdb + pickle
    env = lmdb.open(str(path), subdir=True, readonly=True, lock=False)
    with env.begin() as txn:
        assert pickle.loads(txn.get(b"keys")) == [b"02345", b"img_7"]
        assert_records_equal(pickle.loads(txn.get(b"02345")), records[0][1])
    env.close()
    with read_mmf_lmdb(path) as reader:
        assert reader.keys == ["02345", "img_7"] and len(reader) == 2
        assert "img_7" in reader and b"02345" in reader and "2345" not in reader
        for (k, rec), (want_k, want) in zip(reader, records):
            assert k == want_k
            assert_records_equal(rec, want)
        assert_records_equal(reader.get(b"img_7"), records[1][1])
        with pytest.raises(FeatstoreError, match=r"has no key '2345' \(2 keys, e\.g\. \['02345', 'img_7'\]\); map image"):
            reader.get("2345")


def test_mmf_lmdb_written_by_hand_with_str_keys_and_aliases(tmp_path):
    path = tmp_path / "old.mdb"
    env = lmdb.open(str(path), subdir=False, map_size=1 << 22)
    feats = np.ones((2, 2048), np.float32)
    with env.begin(write=True) as txn:
        txn.put(b"keys", pickle.dumps(["img/00001.png"], protocol=2))
        txn.put(b"img/00001.png", pickle.dumps({"features": feats, "boxes": np.zeros((2, 4), np.float32),
                                                "image_w": np.int32(10), "image_h": 8, "num_boxes": 2}, protocol=2))
    env.close()
    reader = read_mmf_lmdb(path)
    rec = reader.get("img/00001.png")
    assert set(rec) == {"features", "bbox", "image_width", "image_height", "num_boxes"}
    assert rec["image_width"] == 10 and type(rec["image_width"]) is int
    np.testing.assert_array_equal(rec["features"], feats)
    assert dict(match_keys(reader.keys, ["00001"])) == {"00001": "img/00001.png"}
    reader.close()


def test_mmf_lmdb_errors(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.lmdb"
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"keys", pickle.dumps([b"a", b"b"]))
        txn.put(b"a", pickle.dumps({"features": Evil(marker)}))
    env.close()
    reader = read_mmf_lmdb(path)
    with pytest.raises(FeatstoreError, match=r"evil\.lmdb\[a\]: refused to unpickle global (posix|nt)\.system"):
        reader.get("a")
    assert not marker.exists()
    with pytest.raises(FeatstoreError, match=r"key 'b' is listed in b'keys' but has no record"):
        reader.get("b")
    reader.close()
    with pytest.raises(FeatstoreError, match=r"MMF LMDB .*nothing does not exist; check the path"):
        read_mmf_lmdb(tmp_path / "nothing")
    env = lmdb.open(str(tmp_path / "nokeys"), map_size=1 << 20)
    env.close()
    with pytest.raises(FeatstoreError, match=r"has no b'keys' entry; it is not an MMF feature LMDB"):
        read_mmf_lmdb(tmp_path / "nokeys")
    (tmp_path / "plain.txt").write_text("not an lmdb")
    with pytest.raises(FeatstoreError, match=r"plain\.txt cannot be opened"):
        read_mmf_lmdb(tmp_path / "plain.txt")
    rng = np.random.default_rng(2)
    with pytest.raises(FeatstoreError, match=r"already exists; remove it"):
        write_mmf_lmdb(path, [("x", make_record(rng, 1))])
    with pytest.raises(FeatstoreError, match=r"key 'x' is given twice"):
        write_mmf_lmdb(tmp_path / "dup", [("x", make_record(rng, 1)), ("x", make_record(rng, 1))])
    with pytest.raises(FeatstoreError, match=r"key 'keys' is reserved"):
        write_mmf_lmdb(tmp_path / "res", [("keys", make_record(rng, 1))])
    bad = make_record(rng, 2)
    bad["bbox"] = bad["bbox"][:1]
    with pytest.raises(FeatstoreError, match=r"record 'y' .*'bbox' must have shape \[2, 4\] to match 'features' "
                                             r"\(more rows are padding, more columns extra values\), got \(1, 4\)"):
        write_mmf_lmdb(tmp_path / "bad", [("y", bad)])


def test_check_record_errors():
    rng = np.random.default_rng(3)
    with pytest.raises(FeatstoreError, match=r"^s: expected a dict of arrays, got list"):
        check_record([1], source="s")
    with pytest.raises(FeatstoreError, match=r"^s: 'features' must be an array \[N, D\] \(more dims are read as "
                                             r"\[-1, D\]\), got nothing; re-extract the features$"):
        check_record({"bbox": np.zeros((1, 4))}, source="s")
    with pytest.raises(FeatstoreError, match=r"^s: 'features' must be an array \[N, D\] .*, got shape \(5,\); re-"):
        check_record({"features": np.zeros(5)}, source="s")
    tail = r"; the record is inconsistent$"
    bbox = r"^s: 'bbox' must have shape \[2, 4\] to match 'features' \(more rows are padding, more columns extra "
    bbox += r"values\), "
    probs = r"^s: 'cls_prob' must have shape \[2, \.\.\.\] to match 'features', "
    for field, value, pattern in [
            ("num_boxes", -1, r"^s: 'num_boxes' = -1 is out of range \(>= 0 for num_boxes, >= 1 for sizes\)" + tail),
            ("image_width", 0, r"^s: 'image_width' = 0 is out of range \(>= 0 for num_boxes"),
            ("num_boxes", 1.5, r"^s: 'num_boxes' must be an integer, got 1\.5" + tail),
            ("objects", np.zeros(3), r"^s: 'objects' must have shape \[2\] to match 'features', got \(3,\)" + tail),
            ("objects", np.zeros((2, 1)), r"^s: 'objects' must have shape \[2\] .*got \(2, 1\)"),
            ("cls_prob", np.zeros((3,)), probs + r"got \(3,\)" + tail),
            ("cls_prob", np.float32(1), probs + r"got \(\)" + tail),
            ("bbox", np.zeros((1, 4)), bbox + r"got \(1, 4\)" + tail),
            ("bbox", np.zeros((2, 3)), bbox + r"got \(2, 3\)" + tail),
            ("bbox", np.zeros(8), bbox + r"got \(8,\)" + tail)]:
        rec = make_record(rng, 2, dim=4)
        rec[field] = value
        with pytest.raises(FeatstoreError, match=pattern):
            check_record(rec, source="s")


def test_check_record_accepts_what_mmf_reads():
    """frcnn's cls_prob [N] and num_boxes > N, VinVL's bbox [N, 6] and None fields, our exports' zero-padded bbox,
    grids [H, W, D] (MMF's reader: reshape(-1, D))."""
    rng = np.random.default_rng(4)
    rec = make_record(rng, 3, dim=4)
    rec.update(cls_prob=np.ones(3, np.float32), num_boxes=100, objects=None)
    got = check_record(rec, source="s")
    assert got["num_boxes"] == 100 and got["cls_prob"].shape == (3,) and got["objects"] is None
    padded = np.concatenate([rec["bbox"], np.zeros((2, 4), rec["bbox"].dtype)])
    assert check_record(dict(rec, bbox=padded), source="s")["bbox"].tobytes() == rec["bbox"].tobytes()
    assert check_record(dict(rec, bbox=padded), source="s", keep_bbox_rows=True)["bbox"] is padded
    assert check_record(dict(rec, bbox=np.zeros((3, 6))), source="s")["bbox"].shape == (3, 6)
    grid = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    got = check_record({"features": grid, "bbox": np.zeros((6, 4))}, source="s")
    np.testing.assert_array_equal(got["features"], grid.reshape(-1, 5))


# ---------------------------------------------------------------- HDF5
@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_hdf5_table_round_trip(tmp_path, compression):
    rng = np.random.default_rng(4)
    keys = ["00001", "00002", "00300"]
    arrays = {"features": rng.standard_normal((3, 5, 16)).astype(np.float32),
              "bbox": rng.uniform(0, 9, (3, 5, 4)).astype(np.float32),
              "num_boxes": np.array([5, 2, 0], np.int32), "image_size": np.array([[8, 6]] * 3, np.int64)}
    attrs = {"extractor": "vinvl", "dim": 16, "scale": 0.5, "exact": True, "mean": np.arange(3.0),
             "recipe": {"a": [1, 2], "b": None}, "none": None}
    path = tmp_path / "f.h5"
    write_hdf5(path, keys, arrays, attrs, compression=compression, chunk_rows=2)
    keys2, arrays2, attrs2, layout = read_hdf5(path)
    assert (keys2, layout) == (keys, "table")
    assert arrays2.keys() == arrays.keys()
    for k in arrays:
        assert arrays2[k].dtype == arrays[k].dtype
        np.testing.assert_array_equal(arrays2[k], arrays[k])
    np.testing.assert_array_equal(attrs2.pop("mean"), attrs.pop("mean"))
    assert attrs2 == attrs
    with h5py.File(path, "r") as f:  # the layout as other tools see it
        assert [k.decode() for k in f["keys"][()]] == keys
        assert f["features"].chunks == (2, 5, 16) and f["features"].compression == compression
    recs = list(iter_hdf5_records(path, block_rows=2))
    assert [k for k, _ in recs] == keys
    # a table pads every row to the widest: records are cut to num_boxes (or num_rows, when written)
    for i, n in enumerate([5, 2, 0]):
        np.testing.assert_array_equal(recs[i][1]["features"], arrays["features"][i, :n])
        np.testing.assert_array_equal(recs[i][1]["bbox"], arrays["bbox"][i, :n])
    assert recs[1][1]["num_boxes"] == 2
    write_hdf5(tmp_path / "rows.h5", keys, {**arrays, "num_rows": np.array([5, 3, 1], np.int32)})
    recs = list(iter_hdf5_records(tmp_path / "rows.h5"))
    assert [r["features"].shape[0] for _, r in recs] == [5, 3, 1] and "num_rows" not in recs[0][1]


def test_hdf5_groups_layout_and_integer_keys(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "groups.h5"
    want = {"00007": make_record(rng, 2, dim=8), "00100": make_record(rng, 4, dim=8)}
    with h5py.File(path, "w") as f:
        f.attrs["model"] = "butd"
        for key, rec in want.items():
            g = f.create_group(key)
            for name in ("features", "bbox", "objects", "cls_prob"):
                g.create_dataset(name, data=rec[name])
            g.attrs["num_boxes"], g.attrs["image_width"], g.attrs["image_height"] = rec["num_boxes"], 64, 48
    keys, arrays, attrs, layout = read_hdf5(path)
    assert (keys, layout, attrs) == (["00007", "00100"], "groups", {"model": "butd"})
    np.testing.assert_array_equal(arrays["features"][1], want["00100"]["features"])
    assert arrays["num_boxes"] == [2, 4]
    for key, rec in iter_hdf5_records(path):
        assert_records_equal(rec, want[key])
    ids = tmp_path / "ids.h5"
    with h5py.File(ids, "w") as f:
        f["image_id"] = np.array([42, 7])
        f["features"] = np.zeros((2, 3, 4), np.float32)
    assert read_hdf5(ids, keys_name="image_id").keys == ["42", "7"]


def test_hdf5_errors(tmp_path):
    path = tmp_path / "f.h5"
    with pytest.raises(FeatstoreError, match=r"array 'features' has 1 rows but there are 2 keys"):
        write_hdf5(path, ["a", "b"], {"features": np.zeros((1, 3))}, {})
    with pytest.raises(FeatstoreError, match=r"key 'a' is given twice"):
        write_hdf5(path, ["a", "a"], {}, {})
    with pytest.raises(FeatstoreError, match=r"unknown compression 'zstd'"):
        write_hdf5(path, ["a"], {"x": np.zeros(1)}, {}, compression="zstd")
    with pytest.raises(FeatstoreError, match=r"array name 'keys' is not allowed"):
        write_hdf5(path, ["a"], {"keys": np.zeros(1)}, {})
    with pytest.raises(FeatstoreError, match=r"attribute 'obj' of type object cannot be stored"):
        write_hdf5(path, ["a"], {"x": np.zeros(1)}, {"obj": object()})
    write_hdf5(path, ["a"], {"x": np.zeros(1)}, {})
    with pytest.raises(FeatstoreError, match=r"cannot be created .*remove the file or choose another path"):
        write_hdf5(path, ["a"], {"x": np.zeros(1)}, {})
    with pytest.raises(FeatstoreError, match=r"does not exist"):
        read_hdf5(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(FeatstoreError, match=r"cannot be read .*it is not an HDF5 file"):
        read_hdf5(tmp_path / "text.h5")
    with h5py.File(tmp_path / "mixed.h5", "w") as f:
        f["features"] = np.zeros((2, 3))
    with pytest.raises(FeatstoreError, match=r"no 'keys' dataset and not one group per key \(found: features\)"):
        read_hdf5(tmp_path / "mixed.h5")
    with h5py.File(tmp_path / "ragged.h5", "w") as f:
        f["keys"] = np.array([b"a", b"b"])
        f["features"] = np.zeros((3, 4))
    with pytest.raises(FeatstoreError, match=r"dataset 'features' has shape \(3, 4\) but there are 2 keys"):
        read_hdf5(tmp_path / "ragged.h5")
    with h5py.File(tmp_path / "uneven.h5", "w") as f:
        f["a/features"] = np.zeros((2, 4))
        f["a/bbox"] = np.zeros((2, 4))
        f["b/features"] = np.zeros((1, 4))
    with pytest.raises(FeatstoreError, match=r"group 'b' lacks bbox that other groups hold"):
        read_hdf5(tmp_path / "uneven.h5")


# ---------------------------------------------------------------- MMF .npy folders
def test_npy_folder_round_trip_and_mmf_layout(tmp_path):
    rng = np.random.default_rng(6)
    records = [("02345", make_record(rng, 3)), ("train/00001", make_record(rng, 2))]
    out = tmp_path / "feats"
    assert write_npy_folder(out, records) == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == [
        "02345.npy", "02345_info.npy", "train/00001.npy", "train/00001_info.npy"]
    # the files are what MMF writes: np.load gives the features and (with pickle) the info dict
    np.testing.assert_array_equal(np.load(out / "02345.npy"), records[0][1]["features"])
    info = np.load(out / "02345_info.npy", allow_pickle=True).item()
    assert_records_equal({**info, "features": records[0][1]["features"]}, records[0][1])
    got = list(read_npy_folder(out))
    assert [k for k, _ in got] == ["02345", "train/00001"]
    for (_, rec), (_, want) in zip(got, records):
        assert_records_equal(rec, want)
    # a folder written by hand, MMF style (np.save of a dict; a features-only key)
    hand = tmp_path / "hand"
    hand.mkdir()
    np.save(hand / "7.npy", np.ones((1, 2048), np.float32))
    np.save(hand / "7_info.npy", {"bbox": np.zeros((1, 4), np.float32), "num_boxes": 1, "image_width": 5,
                                  "image_height": 4})
    np.save(hand / "8.npy", np.zeros((2, 2048), np.float32))
    recs = dict(read_npy_folder(hand))
    assert set(recs["7"]) == {"features", "bbox", "num_boxes", "image_width", "image_height"}
    assert set(recs["8"]) == {"features"}


def test_npy_folder_refuses_malicious_info(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "feats"
    folder.mkdir()
    np.save(folder / "1.npy", np.zeros((1, 4), np.float32))
    with open(folder / "1_info.npy", "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(Evil(marker), f, protocol=2)
    with pytest.raises(FeatstoreError, match=r"1_info\.npy: refused to unpickle global (posix|nt)\.system"):
        list(read_npy_folder(folder))
    assert not marker.exists()


def test_npy_folder_errors(tmp_path):
    with pytest.raises(FeatstoreError, match=r"does not exist"):
        read_npy_folder(tmp_path / "none")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeatstoreError, match=r"holds no \.npy files"):
        read_npy_folder(empty)
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    np.save(orphan / "3_info.npy", {"num_boxes": 1})
    with pytest.raises(FeatstoreError, match=r"1 info files have no feature file \(e\.g\. 3_info\.npy\)"):
        read_npy_folder(orphan)
    odd = tmp_path / "odd"
    odd.mkdir()
    np.save(odd / "4.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(FeatstoreError, match=r"4\.npy: not a plain numeric \.npy array"):
        list(read_npy_folder(odd))
    np.save(odd / "4.npy", np.zeros((1, 3), np.float32))
    np.save(odd / "4_info.npy", np.zeros(3))
    with pytest.raises(FeatstoreError, match=r"4_info\.npy: expected a dict saved with np\.save"):
        list(read_npy_folder(odd))
    (odd / "4_info.npy").write_bytes(b"garbage")
    with pytest.raises(FeatstoreError, match=r"4_info\.npy is not a \.npy file"):
        list(read_npy_folder(odd))
    rng = np.random.default_rng(7)
    for key in ("../up", "a//b", "x_info"):
        with pytest.raises(FeatstoreError, match=r"is not a safe relative name"):
            write_npy_folder(tmp_path / "w", [(key, make_record(rng, 1))])
    write_npy_folder(tmp_path / "w", [("k", make_record(rng, 1))])
    with pytest.raises(FeatstoreError, match=r"k\.npy already exists"):
        write_npy_folder(tmp_path / "w", [("k", make_record(rng, 1))])
