"""Dataset manifests: real JSONL/CSV/JSON files and PIL-made images in tmp_path."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from conftest_data import make_image, write_csv, write_jsonl

from featstore.datasets import DATASET_FORMATS, detect_format, load_dataset
from featstore.errors import FeatstoreError


# ---------------------------------------------------------------- Hateful Memes
def hm_folder(root):
    for stem, color in (("02345", (1, 2, 3)), ("42953", (4, 5, 6)), ("00007", (7, 8, 9)), ("10001", (9, 9, 9))):
        make_image(root / "img" / f"{stem}.png", color)
    write_jsonl(root / "train.jsonl", [
        {"id": 2345, "img": "img/02345.png", "label": 1, "text": "first meme"},
        {"id": 42953, "img": "img/42953.png", "label": 0, "text": "second meme"},
    ])
    shared = {"id": 7, "img": "img/00007.png", "label": 0, "text": "shared dev meme"}
    write_jsonl(root / "dev_seen.jsonl", [shared])
    write_jsonl(root / "dev_unseen.jsonl", [shared, {"id": 10001, "img": "img/10001.png", "label": 1, "text": "x y"}])
    write_jsonl(root / "test_unseen.jsonl", [{"id": 10001, "img": "img/10001.png", "text": "x y"}])
    return root


def test_hateful_memes_folder_ids_keys_labels_splits(tmp_path):
    root = hm_folder(tmp_path / "hm")
    m = load_dataset(root)
    assert m.format == "hateful_memes"
    got = [(s.id, s.image_key, s.split, s.labels, s.row, s.file) for s in m.samples]
    assert got == [
        ("2345", "02345", "train", {"label": 1}, 1, "train.jsonl"),
        ("42953", "42953", "train", {"label": 0}, 2, "train.jsonl"),
        ("7", "00007", "dev_seen", {"label": 0}, 1, "dev_seen.jsonl"),
        ("7", "00007", "dev_unseen", {"label": 0}, 1, "dev_unseen.jsonl"),
        ("10001", "10001", "dev_unseen", {"label": 1}, 2, "dev_unseen.jsonl"),
        ("10001", "10001", "test_unseen", {}, 1, "test_unseen.jsonl"),
    ]
    assert m.samples[0].image_path == str((root / "img" / "02345.png").resolve())
    assert m.samples[0].text == "first meme"
    assert m.ids == ["2345", "42953", "7", "10001"]
    assert m.image_keys() == ["02345", "42953", "00007", "10001"]
    assert m.splits == ["train", "dev_seen", "dev_unseen", "test_unseen"]
    assert [s.id for s in m.split("dev_unseen")] == ["7", "10001"]
    assert m.tasks["label"].to_dict() == {"name": "label", "kind": "binary", "num_classes": 2,
                                            "class_names": ["not_hateful", "hateful"]}
    values, has = m.targets("label")
    np.testing.assert_array_equal(values, [1, 0, 0, 0, 1, -1])
    np.testing.assert_array_equal(has, [True, True, True, True, True, False])


def test_hateful_memes_single_file_and_split_choice(tmp_path):
    root = hm_folder(tmp_path / "hm")
    m = load_dataset(root / "dev_unseen.jsonl")
    assert m.format == "hateful_memes" and m.splits == ["dev_unseen"] and len(m) == 2
    assert m.samples[0].file == str(root / "dev_unseen.jsonl")
    assert [s.split for s in load_dataset(root / "train.jsonl", split="mine")] == ["mine", "mine"]
    only = load_dataset(root, split="test_unseen")
    assert [(s.id, s.labels) for s in only] == [("10001", {})]
    with pytest.raises(FeatstoreError, match=r"no split file dev\.jsonl; choose --dataset-split from: train, dev_seen"):
        load_dataset(root, split="dev")
    with pytest.raises(FeatstoreError, match=r"no split 'nope'; choose one of: train, dev_seen"):
        load_dataset(root).split("nope")


def test_hateful_memes_problems_reported_together_with_rows(tmp_path):
    make_image(tmp_path / "img" / "00001.png")
    make_image(tmp_path / "img" / "00042.png")
    write_jsonl(tmp_path / "train.jsonl", [
        {"id": 42, "img": "img/00042.png", "label": 0, "text": "a"},
        {"id": 1, "img": "img/00001.png", "label": 1, "text": "b"},
        {"id": 3, "img": "img/00001.png", "label": 2, "text": "c"},
        {"id": 42, "img": "img/00042.png", "label": 0, "text": "a"},
        {"id": [5], "img": "img/00001.png", "text": "d"},
        {"img": "img/00001.png", "text": "d"},
        {"id": 7, "img": "img/00007.png", "label": 0, "text": "e"},
        {"id": 8, "img": "img/00001.png", "label": 0, "text": 5},
        {"id": 9, "img": "img/00001.png", "label": 0, "text": "  "},
    ], raw_lines=['{"id": 10, "img": ', '[1, 2]'])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(tmp_path / "train.jsonl")
    assert str(e.value) == (
        f"dataset {tmp_path / 'train.jsonl'}: 9 problems: "
        "row 3: field 'label' must be 0 or 1, got 2; "
        "row 5: field 'id' must be an integer or a string, got list; "
        "row 6: missing field 'id'; "
        "row 8: field 'text' must be a string, got int; "
        "row 10: invalid JSON (Expecting value at column 19); "
        "row 11: expected a JSON object, got list; "
        "row 4: duplicate id '42' (first at row 1); "
        "row 7: image img/00007.png not found; "
        "row 9: empty text "
        "(fix the rows or load with check_images=False or pass --allow-empty-text)")


def test_empty_text_and_missing_images_can_be_allowed(tmp_path):
    make_image(tmp_path / "img" / "00001.png")
    write_jsonl(tmp_path / "train.jsonl", [
        {"id": 1, "img": "img/00001.png", "label": 1, "text": ""},
        {"id": 2, "img": "img/00002.png", "label": 0, "text": "b"},
    ])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(tmp_path / "train.jsonl")
    assert str(e.value) == (f"dataset {tmp_path / 'train.jsonl'}: 2 problems: row 1: empty text; "
                            f"row 2: image img/00002.png not found "
                            f"(fix the rows or pass --allow-empty-text or load with check_images=False)")
    m = load_dataset(tmp_path / "train.jsonl", allow_empty_text=True, check_images=False)
    assert [s.text for s in m] == ["", "b"]
    assert len(m.fingerprint) == 64  # a missing file hashes as null instead of failing


def test_problem_listing_is_capped(tmp_path):
    make_image(tmp_path / "img" / "1.png")
    write_jsonl(tmp_path / "train.jsonl", [{"id": 1, "img": "img/1.png", "label": 0, "text": "t"}] * 14)
    with pytest.raises(FeatstoreError) as e:
        load_dataset(tmp_path / "train.jsonl")
    msg = str(e.value)
    assert msg.startswith(f"dataset {tmp_path / 'train.jsonl'}: 13 problems: row 2: duplicate id '1' (first at row 1);")
    assert "row 11: duplicate id '1'" in msg and "row 12:" not in msg
    assert msg.endswith("; ... and 3 more (fix the rows)")


def test_folder_problems_name_their_file_and_conflicting_ids(tmp_path):
    root = hm_folder(tmp_path / "hm")
    write_jsonl(root / "dev_seen.jsonl", [{"id": 7, "img": "img/00007.png", "label": 1, "text": "shared dev meme"}])
    make_image(root / "other" / "02345.jpg")
    write_jsonl(root / "test_seen.jsonl", [{"id": 99, "img": "other/02345.jpg", "text": "same stem"}])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root)
    assert str(e.value) == (
        f"dataset {root}: 2 problems: dev_unseen.jsonl row 1: id '7' is also at dev_seen.jsonl row 1 "
        f"(split dev_seen) with a different image, text or labels; test_seen.jsonl row 1: image key '02345' of "
        f"other/02345.jpg is also the key of {(root / 'img' / '02345.png').resolve()} (image file stems must be "
        f"unique) (fix the rows)")


# ---------------------------------------------------------------- fingerprint
def reference_fingerprint(samples, image_files):
    """The documented recipe, written out independently."""
    h = hashlib.sha256(b"featstore.datasets fingerprint v1\n")
    for sid, key, text, labels, split in samples:
        h.update(json.dumps([sid, key, text, labels, split], ensure_ascii=False, sort_keys=True,
                            separators=(",", ":")).encode() + b"\n")
    h.update(b"images\n")
    for key, path in image_files:
        h.update(json.dumps([key, hashlib.sha256(path.read_bytes()).hexdigest()], separators=(",", ":")).encode() + b"\n")
    return h.hexdigest()


def test_fingerprint_matches_recipe_and_tracks_text_and_image_bytes(tmp_path):
    root = hm_folder(tmp_path / "hm")
    m = load_dataset(root / "dev_unseen.jsonl")
    want = reference_fingerprint(
        [("7", "00007", "shared dev meme", {"label": 0}, "dev_unseen"),
         ("10001", "10001", "x y", {"label": 1}, "dev_unseen")],
        [("00007", root / "img" / "00007.png"), ("10001", root / "img" / "10001.png")])
    assert m.fingerprint == want
    assert load_dataset(root / "dev_unseen.jsonl").fingerprint == want  # stable on reload
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert load_dataset(moved / "dev_unseen.jsonl").fingerprint == want  # paths are not hashed
    # one image byte changes -> new fingerprint
    img = moved / "img" / "10001.png"
    data = bytearray(img.read_bytes())
    data[-1] ^= 1
    img.write_bytes(bytes(data))
    assert load_dataset(moved / "dev_unseen.jsonl").fingerprint != want
    # one text changes -> new fingerprint
    text_path = root / "dev_unseen.jsonl"
    text_path.write_text(text_path.read_text().replace("x y", "x z"))
    assert load_dataset(text_path).fingerprint != want


# ---------------------------------------------------------------- Memotion
MEMOTION_HEADER = ["Id", "Image_name", "OCR_text", "Humour", "Sarcastic", "Offensive", "Motivational",
                   "Overall_Sentiment"]


def test_memotion_tasks_a_b_c(tmp_path):
    for name in ("image_1.jpg", "image_2.png", "0003.jpg"):
        make_image(tmp_path / "images" / name)
    path = write_csv(tmp_path / "train.csv", MEMOTION_HEADER, [
        ["1", "image_1.jpg", "when the code runs", "hilarious", "general", "not_offensive", "motivational",
         "very_positive"],
        ["2", "image_2.png", "monday again", "not_funny", "not_sarcastic", "very offensive", "not_motivational",
         "Very_Negative"],
        ["3", "0003.jpg", "ok", "funny", "twisted_meaning", "slight", "not_motivational", "neutral"],
    ])
    m = load_dataset(path, image_root=tmp_path / "images")
    assert m.format == "memotion"
    assert [(s.id, s.image_key, s.text, s.split, s.row) for s in m] == [
        ("1", "image_1", "when the code runs", "train", 2), ("2", "image_2", "monday again", "train", 3),
        ("3", "0003", "ok", "train", 4)]
    assert m.samples[0].labels == {"A": "positive", "B": ["humour", "sarcasm", "motivation"],
                                   "C": {"humour": "hilarious", "sarcasm": "general", "offense": "not_offensive",
                                         "motivation": "motivational"}}
    assert m.samples[1].labels == {"A": "negative", "B": ["offense"],
                                   "C": {"humour": "not_funny", "sarcasm": "not_sarcastic",
                                         "offense": "very_offensive", "motivation": "not_motivational"}}
    assert m.samples[2].labels["A"] == "neutral" and m.samples[2].labels["B"] == ["humour", "sarcasm", "offense"]
    assert {n: (t.kind, t.num_classes) for n, t in m.tasks.items()} == {
        "A": ("multiclass", 3), "B": ("multilabel", 4), "C_humour": ("multiclass", 4),
        "C_sarcasm": ("multiclass", 4), "C_offense": ("multiclass", 4), "C_motivation": ("binary", 2)}
    a, _ = m.targets("A")
    np.testing.assert_array_equal(a, [2, 0, 1])
    b, _ = m.targets("B")
    np.testing.assert_array_equal(b, [[1, 1, 0, 1], [0, 0, 1, 0], [1, 1, 1, 0]])
    c, _ = m.targets("C_offense")
    np.testing.assert_array_equal(c, [0, 2, 1])
    motivation, has = m.targets("C_motivation")
    np.testing.assert_array_equal(motivation, [1, 0, 0])
    assert has.all()


def test_memotion_test_file_id_as_image_and_errors(tmp_path):
    make_image(tmp_path / "77.jpg")
    test_csv = write_csv(tmp_path / "test.csv", ["id", "ocr_text"], [["77", "no labels here"]])
    m = load_dataset(test_csv, format="memotion")
    assert [(s.id, s.image_key, s.labels) for s in m] == [("77", "77", {})]
    assert m.samples[0].image_path == str((tmp_path / "77.jpg").resolve())
    bad = write_csv(tmp_path / "val.csv", ["image_name", "text", "humour", "sarcastic", "offensive"],
                    [["77.jpg", "t", "funny", "general", "slight"]])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(bad)
    assert str(e.value) == (f"dataset {bad}: 1 problem: missing columns 'motivational' (or 'motivation'), "
                            f"'overall_sentiment' (or 'sentiment') (found: image_name, text, humour, sarcastic, "
                            f"offensive) (fix the file or rename the column back in the CSV (Memotion reads each "
                            f"label only under the names listed; --label-cols does not apply), or read it as a "
                            f"generic CSV (--format generic --label-cols COLS --text-col COL --image-col COL: one "
                            f"task per column, not Memotion's A, B and C))")
    levels = write_csv(tmp_path / "dev.csv", MEMOTION_HEADER, [
        ["1", "77.jpg", "t", "funny", "general", "slight", "motivational", "positive"],
        ["2", "77.jpg", "t", "lol", "general", "slight", "motivational", "great"],
    ])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(levels)
    assert str(e.value) == (f"dataset {levels}: 2 problems: row 3: Humour 'lol' is not one of not_funny, funny, "
                            f"very_funny, hilarious; row 3: Overall_Sentiment 'great' is not one of very_negative, "
                            f"negative, neutral, positive, very_positive (fix the rows)")


# ---------------------------------------------------------------- MM-IMDB
def mmimdb_folder(root):
    (root / "dataset").mkdir(parents=True)
    movies = {"0000008": (["A plot.", "Second plot."], ["Drama", "Comedy"]),
              "0000010": ("Plain string plot.", ["Action"]),
              "0000012": (["Third."], ["Comedy", "Action", "Comedy"])}
    for mid, (plot, genres) in movies.items():
        (root / "dataset" / f"{mid}.json").write_text(json.dumps({"plot": plot, "genres": genres, "title": mid}))
        make_image(root / "dataset" / f"{mid}.jpeg")
    (root / "split.json").write_text(json.dumps({"train": ["0000008", "0000010"], "test": ["0000012"]}))
    return root


def test_mmimdb_folder(tmp_path):
    root = mmimdb_folder(tmp_path / "mmimdb")
    m = load_dataset(root)
    assert m.format == "mmimdb"
    assert [(s.id, s.image_key, s.text, s.labels, s.split, s.row) for s in m] == [
        ("0000008", "0000008", "Second plot.", {"genres": ["Drama", "Comedy"]}, "train", 1),  # longest plot
        ("0000010", "0000010", "Plain string plot.", {"genres": ["Action"]}, "train", 2),
        ("0000012", "0000012", "Third.", {"genres": ["Comedy", "Action"]}, "test", 1)]
    names = m.tasks["genres"].class_names
    assert len(names) == 23 and names[:2] == ("Drama", "Comedy") and names.index("Action") == 5
    y, has = m.targets("genres")
    np.testing.assert_array_equal(y[:, [0, 1, 5]], np.array([[1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=np.float32))
    assert y.sum() == 5
    assert has.all()
    assert [s.id for s in load_dataset(root, split="test")] == ["0000012"]
    (root / "dataset" / "0000010.json").unlink()
    (root / "dataset" / "0000012.json").write_text(json.dumps({"plot": ["x"]}))
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root)
    assert str(e.value) == (f"dataset {root}: 2 problems: split.json:train row 2: dataset/0000010.json not found; "
                            f"split.json:test row 1: dataset/0000012.json: missing field 'genres' (fix the rows)")


def test_mmimdb_jsonl(tmp_path):
    make_image(tmp_path / "posters" / "0042.jpeg")
    path = write_jsonl(tmp_path / "dev.jsonl", [{"id": "0042", "plot": ["P."], "genres": ["Sci-Fi"],
                                                  "poster": "posters\\0042.jpeg"}])
    assert detect_format(path) == "mmimdb"
    m = load_dataset(path)
    assert [(s.id, s.image_key, s.text, s.labels, s.split) for s in m] == [
        ("0042", "0042", "P.", {"genres": ["Sci-Fi"]}, "dev")]
    write_jsonl(path, [{"id": "0042", "plot": 3, "genres": "Drama", "poster": "posters/0042.jpeg"}])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(path, format="mmimdb")
    assert str(e.value) == (f"dataset {path}: 2 problems: row 1: field 'plot' must be a list of strings or a "
                            f"string, got int; row 1: field 'genres' must be a list of strings (fix the rows)")


# ---------------------------------------------------------------- generic
def test_generic_csv_several_label_columns(tmp_path):
    make_image(tmp_path / "a" / "001.png")
    make_image(tmp_path / "a" / "002.png")
    path = write_csv(tmp_path / "data.csv", ["ID", "Image", "Text", "toxic", "topic", "split"], [
        ["x1", "a/001.png", "hello", "1", "sports", "train"],
        ["x2", "a/002.png", "world", "0", "politics", "train"],
        ["x3", "a/001.png", "again", "", "10", "test"],
    ])
    assert detect_format(path) == "generic"
    m = load_dataset(path, label_cols=["toxic", "topic"])
    assert [(s.id, s.image_key, s.labels, s.split) for s in m] == [
        ("x1", "001", {"toxic": 1, "topic": "sports"}, "train"),
        ("x2", "002", {"toxic": 0, "topic": "politics"}, "train"),
        ("x3", "001", {"topic": "10"}, "test")]
    assert m.image_keys() == ["001", "002"]  # one image serves two samples
    assert m.tasks["toxic"].kind == "binary"
    assert m.tasks["topic"].class_names == ("10", "politics", "sports")
    v, has = m.targets("toxic")
    np.testing.assert_array_equal(v, [1, 0, -1])
    np.testing.assert_array_equal(has, [True, True, False])
    assert [s.id for s in load_dataset(path, label_cols=["toxic"], split="test")] == ["x3"]
    with pytest.raises(FeatstoreError) as e:
        load_dataset(path, label_cols=["severity"], text_col="caption")
    assert str(e.value) == (f"dataset {path}: 1 problem: missing columns 'caption', 'severity' (found: ID, "
                            f"Image, Text, toxic, topic, split) (fix the file or name the columns with "
                            f"--id-col/--image-col/--text-col/--label-cols)")


def test_generic_jsonl_multilabel_custom_columns_and_bad_rows(tmp_path):
    make_image(tmp_path / "p.jpg")
    path = write_jsonl(tmp_path / "items.jsonl", [
        {"uid": 5, "pic": "p.jpg", "caption": "c1", "tags": ["b", "a"]},
        {"uid": 6, "pic": "p.jpg", "caption": "c2", "tags": []},
    ])
    m = load_dataset(path, id_col="uid", image_col="pic", text_col="caption", label_cols=["tags"])
    assert [(s.id, s.labels) for s in m] == [("5", {"tags": ["a", "b"]}), ("6", {"tags": []})]
    assert m.tasks["tags"].kind == "multilabel" and m.splits == []
    write_jsonl(path, [{"uid": 5, "pic": "p.jpg", "caption": "c1", "tags": 0.5}])
    with pytest.raises(FeatstoreError, match=r"row 1: label 'tags' must be an integer, a string or a list of strings, "
                                             r"got float"):
        load_dataset(path, id_col="uid", image_col="pic", text_col="caption", label_cols=["tags"])
    csv_path = tmp_path / "short.csv"
    csv_path.write_text("id,image,text\n1,p.jpg,ok\n2,p.jpg\n3,p.jpg,\"multi\nline\"\n4,p.jpg,x,y\n")
    with pytest.raises(FeatstoreError) as e:
        load_dataset(csv_path)
    assert str(e.value) == (f"dataset {csv_path}: 2 problems: row 3: expected 3 fields, got 2; "
                            f"row 6: expected 3 fields, got 4 (fix the rows)")


def test_to_jsonl_writes_every_sample(tmp_path):
    root = hm_folder(tmp_path / "hm")
    m = load_dataset(root / "train.jsonl")
    out = tmp_path / "manifest.jsonl"
    m.to_jsonl(out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["image_key"], r["text"], r["labels"], r["split"]) for r in rows] == [
        (s.id, s.image_key, s.text, s.labels, s.split) for s in m]


# ---------------------------------------------------------------- paths and formats
def test_path_and_format_errors(tmp_path):
    with pytest.raises(FeatstoreError, match=r"no such file or folder; check the path"):
        load_dataset(tmp_path / "missing.jsonl")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FeatstoreError, match=r"unknown file type '\.txt'"):
        load_dataset(tmp_path / "notes.txt")
    with pytest.raises(FeatstoreError, match=r"cannot tell the format of this folder"):
        load_dataset(tmp_path)
    root = hm_folder(tmp_path / "hm")
    with pytest.raises(FeatstoreError, match=r"unknown format 'coco'; choose one of: auto, generic, hateful_memes, "
                                             r"memotion, mmimdb"):
        load_dataset(root, format="coco")
    with pytest.raises(FeatstoreError, match=r"the generic format reads a file, not a folder"):
        load_dataset(root, format="generic")
    with pytest.raises(FeatstoreError, match=r"image root .* is not a folder"):
        load_dataset(root, image_root=tmp_path / "nope")
    (tmp_path / "latin.jsonl").write_bytes(b'{"id": 0, "img": "b.png", "text": "ok"}\n'
                                           b'{"id": 1, "img": "a.png", "text": "caf\xe9"}\n')
    with pytest.raises(FeatstoreError, match=r"latin\.jsonl: 1 problem: row 2: not UTF-8 text \(invalid continuation byte, byte 0xe9\); re-save the file as UTF-8 \(fix the rows\)$"):
        load_dataset(tmp_path / "latin.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(FeatstoreError, match=r"no samples found"):
        load_dataset(tmp_path / "empty.jsonl", format="hateful_memes")
    assert DATASET_FORMATS.names() == ["generic", "hateful_memes", "memotion", "mmimdb"]


def test_directory_and_symlink_loop_images_become_failed_rows_not_a_crash(tmp_path):
    """A directory named like an image and a symlink loop: the fingerprint skips them and the extraction
    stores two failed rows with the reasons load_image gives (it used to die in the fingerprint)."""
    import os

    from cli.featstore_cli import main as featstore
    from cli_helpers import extract_args, invoke, make_hm_folder
    from featstore.store import open_store

    data = make_hm_folder(tmp_path / "data")
    os.remove(data / "img" / "00001.png")
    os.mkdir(data / "img" / "00001.png")
    os.remove(data / "img" / "00002.png")
    os.symlink(data / "img" / "00002.png", data / "img" / "00002.png")
    out = invoke(featstore, extract_args(data, tmp_path / "store", "grid"))
    assert "4 rows, 2 failed" in out
    fsv = open_store(tmp_path / "store").open("grid")
    assert fsv.failures == {
        "00001": f"image '{data / 'img' / '00001.png'}': is a directory; point the manifest at an image file",
        "00002": f"image '{data / 'img' / '00002.png'}': file not found; check the manifest's image path and the "
                 f"images folder"}


def test_csv_with_an_unclosed_quote_names_the_row_instead_of_losing_rows(tmp_path):
    rows = [[str(i), f"img/{i}.png", f"caption {i}", str(i % 2)] for i in range(20)]
    lines = ["id,img,text,label"] + [",".join(r) for r in rows]
    lines[6] = '5,img/5.png,"caption 5 with an open quote,1'  # row 7 (the header is row 1)
    lines[12] = '11,img/11.png,"a, quoted caption",0'  # where csv would close it, 6 rows later
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    for i in range(20):
        make_image(tmp_path / "img" / f"{i}.png")
    with pytest.raises(FeatstoreError) as e:
        load_dataset(tmp_path / "m.csv", format="generic")
    msg = str(e.value)
    assert "\n" not in msg and "1 problem: row 7: not valid CSV from this row on" in msg, msg
    assert "a quote opened in this row is not closed" in msg
