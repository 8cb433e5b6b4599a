"""MMF feature LMDBs in every form MMF's own scripts leave them, and our exports, checked against an independent
transcription of MMF's reading path (below, ``MMF reference``: it imports nothing from featstore or heads):

- ``mmf/datasets/databases/readers/feature_readers.py`` ``LMDBFeatureReader._init_db`` / ``_load`` (key lookup:
  ``str(int(name))`` first, then the name) and ``PaddedFasterRCNNFeatureReader.read`` (``reshape(-1, D)``, the
  first ``max_features`` rows zero-padded to ``max_features``, ``max_features`` = the stored row count);
- ``mmf/datasets/processors/processors.py`` ``TransformerBboxProcessor``; ``mmf/common/sample.py`` ``SampleList``'s
  size check (the collate); ``mmf/models/vilbert.py``'s mask ``arange(R) < max_features``;
- ``tools/scripts/features/lmdb_conversion.py`` ``extract`` (the fields it reads from every record).

Records as ``frcnn/extract_features_frcnn.py`` (cls_prob [N], num_boxes = --num_features > N) and
``extract_features_vinvl.py`` (bbox [N, 6], None fields) write them, more rows than max_features, >2-D features,
both key spellings ('1235' and '01235'), keys without leading zeros, and exports of sets with varying counts, of
width other than 100 and without class ids or image sizes.
"""
from __future__ import annotations

import json
import os
import pickle

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from cli.featstore_cli import main as featstore
from cli_helpers import invoke, one_line_error

# ------------------------------------------------------------------------------------------ MMF reference
class LMDBFeatureReaderRef:
    def __init__(self, max_loc, base_path):
        self.max_loc, self.db_path, self.env = max_loc, str(base_path), None

    def _init_db(self):
        self.env = lmdb.open(self.db_path, subdir=os.path.isdir(self.db_path), readonly=True, lock=False,
                             readahead=False, meminit=False)
        with self.env.begin(write=False, buffers=True) as txn:
            self.image_ids = pickle.loads(txn.get(b"keys"))
            self.image_id_indices = {self.image_ids[i]: i for i in range(0, len(self.image_ids))}

    def _load(self, image_file_path):
        if self.env is None:
            self._init_db()
        split = os.path.relpath(image_file_path, self.db_path).split(".npy")[0]
        try:
            image_id = int(split.split("_")[-1])
            img_id_idx = self.image_id_indices[str(image_id).encode()]
        except (ValueError, KeyError):
            image_id = str(split).encode()
            img_id_idx = self.image_id_indices[image_id]
        with self.env.begin(write=False, buffers=True) as txn:
            image_info = pickle.loads(txn.get(self.image_ids[img_id_idx]))
        return image_info, bytes(self.image_ids[img_id_idx])

    def read(self, image_feat_path):
        image_info, used_key = self._load(image_feat_path)
        image_feature = image_info["features"]
        if len(image_feature.shape) > 2:
            shape = image_feature.shape
            image_feature = image_feature.reshape(-1, shape[-1])
        image_loc, image_dim = image_feature.shape
        tmp_image_feat = np.zeros((self.max_loc, image_dim), dtype=np.float32)
        tmp_image_feat[0:image_loc] = image_feature[: self.max_loc, :]
        image_feature = torch.from_numpy(tmp_image_feat)
        del image_info["features"]
        image_info["max_features"] = torch.tensor(image_loc, dtype=torch.long)
        return image_feature, image_info, used_key


def transformer_bbox(item):
    bbox, image_w, image_h = item["bbox"], item["image_width"], item["image_height"]
    image_location = torch.zeros((bbox.shape[0], 5), dtype=torch.float)
    image_location[:, :4] = torch.from_numpy(bbox[:, :4])
    image_location[:, 4] = (
        (image_location[:, 3] - image_location[:, 1]) * (image_location[:, 2] - image_location[:, 0])
        / (image_w * image_h))
    image_location[:, 0] = image_location[:, 0] / image_w
    image_location[:, 1] = image_location[:, 1] / image_h
    image_location[:, 2] = image_location[:, 2] / image_w
    image_location[:, 3] = image_location[:, 3] / image_h
    item["bbox"] = image_location
    return item


def mmf_samples(path, image_keys, max_features=100):
    """What a features dataset sample carries for ViLBERT per image key (its feature_path ``<key>.npy``):
    image_feature_0, the record's info, the mask, the LMDB key read. The environment is closed after (lmdb allows
    one open per process)."""
    reader = LMDBFeatureReaderRef(max_features, path)
    out = []
    try:
        for image_key in image_keys:
            feat, info, key = reader.read(os.path.join(reader.db_path, image_key + ".npy"))
            mask = (torch.arange(feat.size(-2)) < info["max_features"]).long()
            out.append({"image_feature_0": feat, "info": info, "image_attention_mask": mask, "key": key})
    finally:
        if reader.env is not None:
            reader.env.close()
    return out


def collate(samples):
    """SampleList's check: every tensor field of one size across the batch."""
    out = {}
    for field in samples[0]:
        if isinstance(samples[0][field], torch.Tensor):
            for s in samples:
                if s[field].dim() != 0 and s[field].size(0) != samples[0][field].size(0):
                    raise AssertionError(f"Fields for all samples must be equally sized. {field} is of different sizes")
            out[field] = torch.stack([s[field] for s in samples])
    return out


def conversion_extract(path):
    """lmdb_conversion.py extract(): the fields it reads from each record (KeyError when one is absent)."""
    env = lmdb.open(str(path), max_readers=1, readonly=True, lock=False, readahead=False, meminit=False)
    out = {}
    with env.begin(write=False) as txn:
        for img_id in pickle.loads(txn.get(b"keys")):
            item = pickle.loads(txn.get(img_id))
            out[img_id.decode("utf-8")] = {f: item[f] for f in ("bbox", "num_boxes", "image_height", "image_width",
                                                                 "objects", "cls_prob")}
    env.close()
    return out


def write_lmdb(path, values: dict, keys=None):
    """key -> record, as lmdb_conversion.py convert() writes them (default pickle protocol)."""
    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for k, v in values.items():
            txn.put(k.encode(), pickle.dumps(v))
        txn.put(b"keys", pickle.dumps(keys if keys is not None else [k.encode() for k in values]))
    env.close()
    return path


# ------------------------------------------------------------------------------------------ helpers (featstore)
def open_set(store, name):
    from featstore.store import open_store

    return open_store(store).open(name)


def hm_folder(root, sizes: dict):
    """A Hateful Memes folder: img/<key>.png of the given (width, height), train.jsonl with MMF's fields."""
    (root / "img").mkdir(parents=True)
    lines = []
    for i, (key, size) in enumerate(sizes.items()):
        Image.new("RGB", size, (i * 40, 0, 0)).save(root / "img" / f"{key}.png")
        lines.append(json.dumps({"id": int(key), "img": f"img/{key}.png", "label": i % 2, "text": f"meme {i}"}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root


def train_data(store, data, name, max_regions=None):
    from featstore.datasets import load_dataset
    from featstore.store import open_store
    from heads.data import build_train_data

    return build_train_data(open_store(store), load_dataset(data), name, None, "label", max_regions=max_regions)


def vmb_record(rng, rows, dim=8, size=(100, 80)):
    x = rng.uniform(0, 40, (rows, 2))
    return {"features": rng.standard_normal((rows, dim)).astype(np.float32),
            "bbox": np.concatenate([x, x + rng.uniform(1, 30, (rows, 2))], 1).astype(np.float32),
            "num_boxes": rows, "image_width": size[0], "image_height": size[1]}


def no_sets(store) -> bool:
    from featstore.store import open_store

    return not os.path.exists(store) or open_store(store).feature_sets() == []


# ------------------------------------------------------------------------------------------ 1. past 100 rows
def test_more_rows_than_max_features_read_as_mmf_with_max_regions_100(tmp_path):
    rng = np.random.default_rng(0)
    recs = {"01235": vmb_record(rng, 150), "01236": vmb_record(rng, 40)}
    src = write_lmdb(tmp_path / "rows150.lmdb", recs)
    data = hm_folder(tmp_path / "hm", {"01235": (100, 80), "01236": (100, 80)})
    out = invoke(featstore, ["import", src, "--store", tmp_path / "s", "--format", "mmf-lmdb", "--name", "r",
                             "--dataset", data])
    assert ("records hold up to 150 rows, all stored (count = rows); MMF's reader keeps the first max_features (100 "
            "by default) with the mask all ones: train with --max-regions 100 to read them as MMF does\n") in out
    assert open_set(tmp_path / "s", "r").spec("regions").shape == (150, 8)
    td = train_data(tmp_path / "s", data, "r", max_regions=100)
    for i, m in enumerate(mmf_samples(src, [f"{int(key):05d}" for key in td.ids])):
        torch.testing.assert_close(td.features["img_regions"][i], m["image_feature_0"], rtol=0, atol=0)
        assert td.features["img_mask"][i].long().tolist() == m["image_attention_mask"].tolist()
        boxes = transformer_bbox(dict(m["info"]))["bbox"]
        n = min(len(boxes), 100)
        torch.testing.assert_close(td.features["img_boxes"][i, :n], boxes[:n], rtol=1e-6, atol=1e-7)
    assert td.features["img_mask"][0].all()  # 150 stored rows: MMF's mask is all ones


# ------------------------------------------------------------------------------------------ 2. exports MMF collates
def make_set(store, name, counts, width=100, classes=True, sizes=True):
    from featstore.store import ArraySpec, Recipe, open_store

    rng = np.random.default_rng(len(counts) + width)
    schema = {"regions": ArraySpec((width, 16), "float16", True), "boxes": ArraySpec((width, 4), "float32", True),
              "pooled": ArraySpec((16,), "float16")}
    if sizes:
        schema["image_size"] = ArraySpec((2,), "int32")
    if classes:
        schema["class_ids"] = ArraySpec((width,), "int32", True)
        schema["cls_prob"] = ArraySpec((width, 5), "float32", True)
    keys = [f"{i:05d}" for i in range(len(counts))]
    arrays = {"count": np.array(counts, np.int32)}
    for n, spec in schema.items():
        a = np.zeros((len(keys),) + spec.shape, spec.dtype)
        for i, c in enumerate(counts):
            if n == "boxes":
                x = rng.uniform(0, 200, (c, 2))
                a[i, :c] = np.concatenate([x, x + rng.uniform(1, 100, (c, 2))], 1)
            elif n == "class_ids":
                a[i, :c] = rng.integers(0, 5, c)
            elif spec.per_item:
                a[i, :c] = rng.random((c,) + spec.shape[1:])
            elif n == "image_size":
                a[i] = (400, 300)
        arrays[n] = a
    st = open_store(store, create=True)
    schema["count"] = ArraySpec((), "int32")
    w = st.writer(name, Recipe(extractor="test", config={"n": name}), keys, schema, key_kind="image_key",
                  modality="image")
    for ci in w.pending_chunks():
        sl = w.chunk_slice(ci)
        w.write_chunk(ci, {n: v[sl] for n, v in arrays.items()})
    return w.commit(), arrays


def test_export_of_varying_counts_collates_in_mmf_and_imports_back(tmp_path):
    fsv, arrays = make_set(tmp_path / "s", "vg", [10, 37, 100, 36])
    out = tmp_path / "vg.lmdb"
    msg = invoke(featstore, ["export", "vg", "--store", tmp_path / "s", "--format", "mmf-lmdb", "--out", out])
    assert msg == f"exported 4 rows of {fsv.ref} to {out} (mmf-lmdb)\n"  # width 100: no note
    samples = mmf_samples(out, fsv.keys)
    batch = collate([{"image_feature_0": s["image_feature_0"], "image_attention_mask": s["image_attention_mask"],
                      "bbox": transformer_bbox(dict(s["info"]))["bbox"]} for s in samples])
    assert batch["bbox"].shape == (4, 100, 5) and batch["image_feature_0"].shape == (4, 100, 16)
    for i, s in enumerate(samples):
        c = int(arrays["count"][i])
        assert int(s["info"]["max_features"]) == c and s["image_attention_mask"].sum() == c  # MMF's mask = count
        np.testing.assert_array_equal(s["image_feature_0"].numpy(), arrays["regions"][i].astype(np.float32))
        np.testing.assert_array_equal(s["info"]["bbox"], arrays["boxes"][i])  # padded with zero rows
        assert s["info"]["cls_prob"].shape == (c, 5) and s["info"]["objects"].shape == (c,)
    invoke(featstore, ["import", out, "--store", tmp_path / "s2", "--format", "mmf-lmdb", "--name", "back"])
    back = open_set(tmp_path / "s2", "back").select(list(fsv.keys), ["regions", "boxes", "class_ids", "cls_prob"])
    orig = fsv.select(list(fsv.keys), ["regions", "boxes", "class_ids", "cls_prob"])
    assert back["count"].tolist() == orig["count"].tolist()
    for name in ("boxes", "class_ids", "cls_prob"):
        np.testing.assert_array_equal(back[name], orig[name], err_msg=name)
    np.testing.assert_array_equal(back["regions"], orig["regions"].astype(np.float32))


def test_export_of_another_width_says_max_features_and_collates_with_it(tmp_path):
    fsv, arrays = make_set(tmp_path / "s", "grid", [36, 20, 36], width=36, classes=False)
    out = tmp_path / "grid.lmdb"
    msg = invoke(featstore, ["export", "grid", "--store", tmp_path / "s", "--format", "mmf-lmdb", "--out", out])
    assert sorted(msg.splitlines()) == [
        f"exported 3 rows of {fsv.ref} to {out} (mmf-lmdb)",
        f"note: {fsv.ref} holds 36 regions per image, not MMF's default max_features 100: run MMF with "
        "dataset_config.<dataset>.max_features=36 (bbox is padded to 36 rows and MMF pads the features to "
        "max_features; they must agree)"]
    for max_features, ok in ((36, True), (100, False)):  # what the note says: with 100, 100 features vs 36 boxes
        samples = mmf_samples(out, fsv.keys, max_features)
        locs = [transformer_bbox(dict(s["info"]))["bbox"] for s in samples]
        assert all(loc.shape == (36, 5) for loc in locs)
        assert all(s["image_feature_0"].shape == (max_features, 16) for s in samples)
        assert (locs[0].shape[0] == samples[0]["image_feature_0"].shape[0]) is ok
    # 5. no class ids: lmdb_conversion.py extract reads None for them (no KeyError), and they import back as absent
    got = conversion_extract(out)
    assert all(r["objects"] is None and r["cls_prob"] is None for r in got.values())
    assert [r["num_boxes"] for r in got.values()] == [36, 20, 36]
    report = invoke(featstore, ["import", out, "--store", tmp_path / "s2", "--format", "mmf-lmdb", "--name", "b"])
    assert "regions [3, 36, 16] float32; boxes: yes, image sizes: yes, class ids: no; also num_boxes\n" in report


def test_export_of_boxes_without_image_sizes_warns(tmp_path):
    fsv, _ = make_set(tmp_path / "s", "nosize", [3, 2], width=4, classes=False, sizes=False)
    out = tmp_path / "n.lmdb"
    msg = invoke(featstore, ["export", "nosize", "--store", tmp_path / "s", "--format", "mmf-lmdb", "--out", out])
    warning = (f"warning: {fsv.ref} has boxes but no image_size, so the export has no image_width / image_height, "
               "which MMF's TransformerBboxProcessor needs; re-import the set with --dataset and its images (the "
               "sizes are read from the image files) and export that")
    assert warning in msg.splitlines()
    info = mmf_samples(out, ["00000"])[0]["info"]
    assert info["image_width"] is None and info["image_height"] is None  # what the warning is about
    with pytest.raises(TypeError):
        transformer_bbox(info)
    assert set(conversion_extract(out)) == {"00000", "00001"}  # extract itself runs
    msg = invoke(featstore, ["export", "nosize", "--store", tmp_path / "s", "--format", "npy", "--out",
                             tmp_path / "n.npy"])
    assert warning in msg.splitlines()
    assert "warning" not in invoke(featstore, ["export", "nosize", "--store", tmp_path / "s", "--format", "hdf5",
                                               "--out", tmp_path / "n.h5"])


# ------------------------------------------------------------------------------------------ 3. frcnn records
def frcnn_record(rng, rows=36, num_features=100, dim=8):
    """frcnn/extract_features_frcnn.py: rows = max_detections, num_boxes = --num_features, cls_prob = obj_probs."""
    rec = vmb_record(rng, rows, dim, size=(640, 480))
    rec.update(num_boxes=num_features, objects=rng.integers(0, 1600, rows).astype(np.int64),
               cls_prob=rng.random(rows, dtype=np.float32), feature_path="y")
    return rec


def test_frcnn_records_import_as_mmf_reads_them(tmp_path):
    rng = np.random.default_rng(3)
    recs = {"01235": frcnn_record(rng), "01236": frcnn_record(rng, rows=20, num_features=20)}
    src = write_lmdb(tmp_path / "frcnn.lmdb", recs)
    data = hm_folder(tmp_path / "hm", {"01235": (640, 480), "01236": (640, 480)})
    out = invoke(featstore, ["import", src, "--store", tmp_path / "s", "--format", "mmf-lmdb", "--name", "f",
                             "--dataset", data])
    assert ("num_boxes exceeds the stored rows in 1 records (e.g. '01235': 100 > 36 rows, as MMF's "
            "frcnn/extract_features_frcnn.py writes --num_features): kept as written in num_boxes; count and the "
            "mask follow the stored rows, as in MMF's reader\n") in out
    fs = open_set(tmp_path / "s", "f")
    got = fs.select(["01235", "01236"], ["regions", "num_boxes", "cls_prob", "class_ids"], max_items=100)
    for i, m in enumerate(mmf_samples(src, ["01235", "01236"])):
        np.testing.assert_array_equal(got["regions"][i], m["image_feature_0"].numpy())
        assert got["mask"][i].astype(int).tolist() == m["image_attention_mask"].tolist()
        assert got["num_boxes"][i] == m["info"]["num_boxes"]
        rows = len(m["info"]["cls_prob"])
        np.testing.assert_array_equal(got["cls_prob"][i, :rows], m["info"]["cls_prob"])
        np.testing.assert_array_equal(got["class_ids"][i, :rows], m["info"]["objects"])
    back = tmp_path / "back.lmdb"
    invoke(featstore, ["export", "f", "--store", tmp_path / "s", "--format", "mmf-lmdb", "--out", back])
    ex = conversion_extract(back)
    assert ex["01235"]["num_boxes"] == 100 and ex["01235"]["cls_prob"].shape == (36,)
    assert ex["01235"]["cls_prob"].tobytes() == recs["01235"]["cls_prob"].tobytes()


# ------------------------------------------------------------------------------------------ 4. VinVL, >2-D features
def test_vinvl_bbox_is_its_own_array_and_grids_are_reshaped_as_mmf(tmp_path):
    rng = np.random.default_rng(4)
    vinvl = {k: {"features": rng.standard_normal((n, 14)).astype(np.float32), "feature_path": "z",
                 "bbox": rng.uniform(0, 1, (n, 6)).astype(np.float32), "num_boxes": None, "objects": None,
                 "cls_prob": None, "image_width": 300, "image_height": 300} for k, n in (("01235", 5), ("01236", 3))}
    src = write_lmdb(tmp_path / "vinvl.lmdb", vinvl)
    out = invoke(featstore, ["import", src, "--store", tmp_path / "s", "--format", "mmf-lmdb", "--name", "v"])
    assert ("bbox has 6 columns (VinVL's normalised boxes), not pixel x1 y1 x2 y2: imported as the per-region "
            "array 'bbox', not 'boxes', so heads get no box locations\n") in out
    assert "regions [2, 5, 14] float32; boxes: no, image sizes: yes, class ids: no; also bbox;" in out
    fs = open_set(tmp_path / "s", "v")
    assert "boxes" not in fs.array_names and fs.spec("bbox").shape == (5, 6)
    got = fs.select(["01235", "01236"], ["regions", "bbox"], max_items=100)
    for i, m in enumerate(mmf_samples(src, ["01235", "01236"])):
        np.testing.assert_array_equal(got["regions"][i], m["image_feature_0"].numpy())
        assert got["mask"][i].astype(int).tolist() == m["image_attention_mask"].tolist()
        np.testing.assert_array_equal(got["bbox"][i, :len(m["info"]["bbox"])], m["info"]["bbox"])
    # the export gives VinVL's bbox back under its name, padded as MMF's collate needs
    back = tmp_path / "back.lmdb"
    invoke(featstore, ["export", "v", "--store", tmp_path / "s", "--format", "mmf-lmdb", "--out", back])
    samples = mmf_samples(back, ["01235", "01236"], 5)
    assert [s["info"]["bbox"].shape for s in samples] == [(5, 6), (5, 6)]
    np.testing.assert_array_equal(samples[1]["info"]["bbox"][:3], vinvl["01236"]["bbox"])
    # a ResNet grid [7, 7, D] (and [1, 49, D]): MMF reads it as [49, D]
    grid = {"01235": {"features": rng.standard_normal((7, 7, 6)).astype(np.float32)},
            "01236": {"features": rng.standard_normal((1, 49, 6)).astype(np.float32)}}
    src = write_lmdb(tmp_path / "grid.lmdb", grid)
    out = invoke(featstore, ["import", src, "--store", tmp_path / "s", "--format", "mmf-lmdb", "--name", "g"])
    assert "regions [2, 49, 6] float32; boxes: no" in out
    got = open_set(tmp_path / "s", "g").select(["01235", "01236"], ["regions"], max_items=100)
    for i, m in enumerate(mmf_samples(src, ["01235", "01236"])):
        np.testing.assert_array_equal(got["regions"][i], m["image_feature_0"].numpy())


def test_inconsistent_records_are_one_line_and_write_nothing(tmp_path):
    cases = {
        "rows": ({"features": np.ones((2, 3, 8), np.float32), "bbox": np.ones((5, 4), np.float32)},
                 "'bbox' must have shape [6, 4] to match 'features' (more rows are padding, more columns extra "
                 "values), got (5, 4); the record is inconsistent"),
        "cols": ({"features": np.ones((3, 8), np.float32), "bbox": np.ones((3, 3), np.float32)},
                 "'bbox' must have shape [3, 4] to match 'features' (more rows are padding, more columns extra "
                 "values), got (3, 3); the record is inconsistent"),
        "prob": ({"features": np.ones((3, 8), np.float32), "cls_prob": np.ones((4, 2), np.float32)},
                 "'cls_prob' must have shape [3, ...] to match 'features', got (4, 2); the record is inconsistent"),
        "flat": ({"features": np.ones(8, np.float32)},
                 "'features' must be an array [N, D] (more dims are read as [-1, D]), got shape (8,); re-extract the "
                 "features"),
        "negative": ({"features": np.ones((3, 8), np.float32), "num_boxes": -1},
                     "'num_boxes' = -1 is out of range (>= 0 for num_boxes, >= 1 for sizes); the record is "
                     "inconsistent"),
    }
    for name, (rec, message) in cases.items():
        src = write_lmdb(tmp_path / f"{name}.lmdb", {"01235": rec})
        line = one_line_error(featstore, ["import", src, "--store", tmp_path / "s", "--format", "mmf-lmdb", "--name",
                                          name])
        assert line == f"error: {src}[01235]: {message}", name
    assert no_sets(tmp_path / "s")


# ------------------------------------------------------------------------------------------ 6. both spellings
def test_both_key_spellings_are_refused_as_ambiguous(tmp_path):
    rng = np.random.default_rng(6)
    recs = {"1235": vmb_record(rng, 3), "01235": vmb_record(rng, 4), "01236": vmb_record(rng, 2)}
    src = write_lmdb(tmp_path / "both.lmdb", recs)
    assert mmf_samples(src, ["01235"])[0]["key"] == b"1235"  # MMF reads the unpadded one
    data = hm_folder(tmp_path / "hm", {"01235": (100, 80), "01236": (100, 80)})
    line = one_line_error(featstore, ["import", src, "--store", tmp_path / "s", "--format", "mmf-lmdb", "--name",
                                      "k", "--dataset", data])
    assert line == ("error: feature keys are ambiguous: '01235' <- '1235', '01235' (MMF's reader takes '1235', the "
                    "number without leading zeros); several LMDB keys name the same image, remove the duplicates from "
                    "the feature file")
    line = one_line_error(featstore, ["import", src, "--store", tmp_path / "s", "--format", "mmf-lmdb", "--name",
                                      "k"])
    assert line == ("error: source keys '1235', '01235' all name image number 1235 (MMF's reader takes '1235', the "
                    "number without leading zeros, first); remove the duplicates from the feature file")
    assert no_sets(tmp_path / "s")


# ------------------------------------------------------------------------------------------ 7. keys without zeros
def test_keys_without_leading_zeros_join_with_dataset_and_the_join_error_says_so(tmp_path):
    from featstore.errors import FeatstoreError

    rng = np.random.default_rng(7)
    recs = {"1235": vmb_record(rng, 3), "1236": vmb_record(rng, 5)}
    src = write_lmdb(tmp_path / "nozeros.lmdb", recs)
    data = hm_folder(tmp_path / "hm", {"01235": (100, 80), "01236": (100, 80)})
    invoke(featstore, ["import", src, "--store", tmp_path / "bare", "--format", "mmf-lmdb", "--name", "k"])
    ref = open_set(tmp_path / "bare", "k").ref
    with pytest.raises(FeatstoreError) as e:
        train_data(tmp_path / "bare", data, "k")
    assert str(e.value) == (
        f"feature sets do not cover the dataset: {ref} (image_key): 2 needed, 2 missing ['01235', '01236'], 2 extra "
        f"['1235', '1236']; {ref} holds the missing image keys as numbers without their leading zeros ('1235' for "
        "'01235'): re-import it with --dataset (featstore import ... --dataset DATASET) so its keys are matched to "
        "the dataset's image names, or filter them out of the dataset")
    invoke(featstore, ["import", src, "--store", tmp_path / "s", "--format", "mmf-lmdb", "--name", "k", "--dataset",
                       data])
    td = train_data(tmp_path / "s", data, "k", max_regions=100)
    for i, m in enumerate(mmf_samples(src, [f"{int(sid):05d}" for sid in td.ids])):
        torch.testing.assert_close(td.features["img_regions"][i], m["image_feature_0"], rtol=0, atol=0)
        assert td.features["img_mask"][i].long().tolist() == m["image_attention_mask"].tolist()
        loc = transformer_bbox(dict(m["info"]))["bbox"]
        torch.testing.assert_close(td.features["img_boxes"][i, :len(loc)], loc, rtol=1e-6, atol=1e-7)


def test_join_hint_names_re_import_only_when_every_missing_key_is_an_extra_number():
    from featstore.store.join import JoinReport, SideReport

    def message(side):
        with pytest.raises(Exception) as e:
            JoinReport([side]).raise_if_missing()
        return str(e.value).split("; ", 1)[1]

    zeros = SideReport("k@1", "image_key", 2, ["01235", "01236"], [], ["1236", "1235", "x"])
    assert message(zeros) == ("k@1 holds the missing image keys as numbers without their leading zeros ('1235' for "
                              "'01235'): re-import it with --dataset (featstore import ... --dataset DATASET) so its "
                              "keys are matched to the dataset's image names, or filter them out of the dataset")
    for side in (SideReport("k@1", "image_key", 2, ["01235", "01236"], [], ["1235"]),  # one has no number twin
                 SideReport("t@1", "sample_id", 1, ["01235"], [], ["1235"])):  # text sets are keyed by sample id
        assert message(side) == ("extract the missing samples (run featstore extract on this manifest and use the "
                                 "version it writes), or filter them out of the dataset")
