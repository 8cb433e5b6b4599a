"""Memotion 1 and Memotion 2.0 as they ship: hand-made CSVs with the real headers and level spellings, and a
tiny real image (PIL) per row, in the real folder layouts; ``check_images`` stays on."""
from __future__ import annotations

import numpy as np
import pytest
from conftest_data import make_image, write_csv, write_jsonl

from featstore.datasets import detect_format, load_dataset
from featstore.datasets.memotion import detect_header, split_of
from featstore.errors import FeatstoreError

# Memotion 2.0's train/val header and its unlabelled test header (memotion_test.csv)
M2_HEADER = ["Id", "Image url", "ocr_text", "humour", "sarcastic", "offensive", "motivational",
             "overall_sentiment", "classification_based_on"]
M2_TEST_HEADER = ["Id", "Image url", "ocr_text"]
# Memotion 1's labels.csv (first column an unnamed index)
M1_HEADER = ["", "image_name", "text_ocr", "text_corrected", "humour", "sarcasm", "offensive", "motivational",
             "overall_sentiment"]
M2_SARCASM = ["not_sarcastic", "little_sarcastic", "very_sarcastic", "extremely_sarcastic"]
M1_SARCASM = ["not_sarcastic", "general", "twisted_meaning", "very_twisted"]


def url(i):
    return f"https://i.example.com/meme_{i}.jpg"


def memotion2_folder(root, test_in_subfolder=False):
    """memotion2/{Memotion2/memotion_{train,val}.csv, memotion_test.csv, image folder/{train,val}_images/,
    Test_Images/} (or Memotion2_test/memotion_test.csv with 'Test images/')."""
    for i, suffix in ((11, "jpg"), (12, "jpg"), (13, "png")):
        make_image(root / "image folder" / "train_images" / f"{i}.{suffix}", (i, 0, 0))
    make_image(root / "image folder" / "val_images" / "21.jpg", (0, 21, 0))
    write_csv(root / "Memotion2" / "memotion_train.csv", M2_HEADER, [
        ["11", url(11), "when the code runs", "hilarious", "little_sarcastic", "not_offensive", "motivational",
         "positive", "text"],
        ["12", url(12), "monday again", "not_funny", "extremely_sarcastic", "very_offensive", "not_motivational",
         "negative", "image"],
        ["13", url(13), "ok", "funny", "not_sarcastic", "slight", "not_motivational", "neutral", "text"],
    ])
    write_csv(root / "Memotion2" / "memotion_val.csv", M2_HEADER, [
        ["21", url(21), "val meme", "very_funny", "very_sarcastic", "hateful_offensive", "not_motivational",
         "neutral", "image"],
    ])
    if test_in_subfolder:
        make_image(root / "Test images" / "31.jpg", (0, 0, 31))
        write_csv(root / "Memotion2_test" / "memotion_test.csv", M2_TEST_HEADER, [["31", url(31), "test meme"]])
    else:
        make_image(root / "Test_Images" / "31.jpg", (0, 0, 31))
        write_csv(root / "memotion_test.csv", M2_TEST_HEADER, [["31", url(31), "test meme"]])
    return root


def test_memotion2_folder_reads_every_split_from_its_image_folder(tmp_path):
    root = memotion2_folder(tmp_path / "memotion2")
    assert detect_format(root) == "memotion"
    m = load_dataset(root)
    assert m.format == "memotion"
    assert [(s.id, s.image_key, s.text, s.split, s.row, s.file) for s in m] == [
        ("11", "11", "when the code runs", "train", 2, "Memotion2/memotion_train.csv"),
        ("12", "12", "monday again", "train", 3, "Memotion2/memotion_train.csv"),
        ("13", "13", "ok", "train", 4, "Memotion2/memotion_train.csv"),
        ("21", "21", "val meme", "val", 2, "Memotion2/memotion_val.csv"),
        ("31", "31", "test meme", "test", 2, "memotion_test.csv")]
    assert m.splits == ["train", "val", "test"]
    assert [s.image_path for s in m] == [str((root / p).resolve()) for p in (
        "image folder/train_images/11.jpg", "image folder/train_images/12.jpg", "image folder/train_images/13.png",
        "image folder/val_images/21.jpg", "Test_Images/31.jpg")]
    assert m.samples[0].labels == {"A": "positive", "B": ["humour", "sarcasm", "motivation"],
                                   "C": {"humour": "hilarious", "sarcasm": "little_sarcastic",
                                         "offense": "not_offensive", "motivation": "motivational"}}
    assert m.samples[1].labels == {"A": "negative", "B": ["sarcasm", "offense"],
                                   "C": {"humour": "not_funny", "sarcasm": "extremely_sarcastic",
                                         "offense": "very_offensive", "motivation": "not_motivational"}}
    assert m.samples[3].labels["B"] == ["humour", "sarcasm", "offense"]
    assert m.samples[4].labels == {}
    assert {n: list(t.class_names) for n, t in m.tasks.items()} == {
        "A": ["negative", "neutral", "positive"], "B": ["humour", "sarcasm", "offense", "motivation"],
        "C_humour": ["not_funny", "funny", "very_funny", "hilarious"], "C_sarcasm": M2_SARCASM,
        "C_offense": ["not_offensive", "slight", "very_offensive", "hateful_offensive"],
        "C_motivation": ["not_motivational", "motivational"]}
    assert m.tasks["C_motivation"].kind == "binary" and m.tasks["C_sarcasm"].kind == "multiclass"
    sarcasm, has = m.targets("C_sarcasm")
    np.testing.assert_array_equal(sarcasm, [1, 3, 0, 2, -1])  # index = intensity
    np.testing.assert_array_equal(has, [True, True, True, True, False])
    a, _ = m.targets("A")
    np.testing.assert_array_equal(a, [2, 0, 1, 1, -1])
    b, _ = m.targets("B")
    np.testing.assert_array_equal(b, [[1, 1, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]])


def test_memotion2_test_csv_in_its_subfolder_with_test_images(tmp_path):
    root = memotion2_folder(tmp_path / "memotion2", test_in_subfolder=True)
    m = load_dataset(root)
    test = m.split("test").samples
    assert [(s.id, s.file, s.labels) for s in test] == [("31", "Memotion2_test/memotion_test.csv", {})]
    assert test[0].image_path == str((root / "Test images" / "31.jpg").resolve())
    one = load_dataset(root / "Memotion2_test" / "memotion_test.csv")  # auto-detected, no emotion columns
    assert one.format == "memotion" and one.splits == ["test"]
    assert one.samples[0].image_path == test[0].image_path
    assert list(one.tasks["C_sarcasm"].class_names) == M2_SARCASM  # told by the header (Image url)


def test_memotion2_single_files_get_split_names_and_their_image_folders(tmp_path):
    root = memotion2_folder(tmp_path / "memotion2")
    train = load_dataset(root / "Memotion2" / "memotion_train.csv")
    assert train.format == "memotion" and train.splits == ["train"]
    assert train.samples[2].image_path == str((root / "image folder" / "train_images" / "13.png").resolve())
    assert train.samples[0].file == str(root / "Memotion2" / "memotion_train.csv")
    assert list(train.tasks["C_sarcasm"].class_names) == M2_SARCASM
    val = load_dataset(root / "Memotion2" / "memotion_val.csv")
    assert val.splits == ["val"]
    assert val.samples[0].image_path == str((root / "image folder" / "val_images" / "21.jpg").resolve())
    test = load_dataset(root / "memotion_test.csv")
    assert test.format == "memotion" and test.splits == ["test"] and test.samples[0].labels == {}
    assert test.samples[0].image_path == str((root / "Test_Images" / "31.jpg").resolve())
    named = load_dataset(root / "Memotion2" / "memotion_val.csv", split="dev")
    assert named.splits == ["dev"]  # one file: split= names its split as given


def test_memotion2_split_choice_and_image_root_override(tmp_path):
    root = memotion2_folder(tmp_path / "memotion2")
    assert load_dataset(root, split="val").splits == ["val"]
    assert load_dataset(root, split="dev").splits == ["val"]
    assert load_dataset(root, split="validation").splits == ["val"]
    flat = tmp_path / "cleaned"
    for i in (11, 12):
        make_image(flat / f"{i}.jpg", (1, 1, i))
    make_image(flat / "13.png")
    m = load_dataset(root, split="train", image_root=flat)
    assert [s.image_path for s in m] == [str((flat / n).resolve()) for n in ("11.jpg", "12.jpg", "13.png")]
    (root / "memotion_test.csv").unlink()
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root, split="test")
    assert str(e.value) == f"dataset {root}: no test split file; choose --dataset-split from: train, val"


def test_memotion1_folder_labels_csv_and_images(tmp_path):
    root = tmp_path / "memotion_dataset_7k"
    for name in ("image_1.jpg", "image_2.png", "image_3.JPG"):
        make_image(root / "images" / name)
    write_csv(root / "labels.csv", M1_HEADER, [
        ["0", "image_1.jpg", "LOOK THERE MY FRIEND", "look there my friend", "hilarious", "general",
         "not_offensive", "not_motivational", "very_positive"],
        ["1", "image_2.png", "monday", "monday", "not_funny", "very_twisted", "hateful_offensive", "motivational",
         "very_negative"],
        ["2", "image_3.JPG", "ok", "ok", "funny", "twisted_meaning", "slight", "not_motivational", "neutral"],
    ])
    write_csv(root / "reference.csv", ["image_name", "image_url"], [["image_1.jpg", url(1)]])  # not a split
    assert detect_format(root) == "memotion"
    m = load_dataset(root)
    assert [(s.id, s.image_key, s.text, s.split, s.file) for s in m] == [
        ("image_1.jpg", "image_1", "look there my friend", "train", "labels.csv"),
        ("image_2.png", "image_2", "monday", "train", "labels.csv"),
        ("image_3.JPG", "image_3", "ok", "train", "labels.csv")]
    assert m.samples[1].image_path == str((root / "images" / "image_2.png").resolve())
    assert list(m.tasks["C_sarcasm"].class_names) == M1_SARCASM
    assert m.samples[0].labels == {"A": "positive", "B": ["humour", "sarcasm"],
                                   "C": {"humour": "hilarious", "sarcasm": "general", "offense": "not_offensive",
                                         "motivation": "not_motivational"}}
    sarcasm, _ = m.targets("C_sarcasm")
    np.testing.assert_array_equal(sarcasm, [1, 3, 2])
    single = load_dataset(root / "labels.csv")
    assert single.splits == ["train"] and single.samples[0].image_path == m.samples[0].image_path


def test_mixed_vocabularies_and_unknown_levels_are_row_errors(tmp_path):
    for i in range(1, 5):
        make_image(tmp_path / "train_images" / f"{i}.jpg")
    rows = [["1", url(1), "a", "funny", "little_sarcastic", "slight", "not_motivational", "neutral", "text"],
            ["2", url(2), "b", "funny", "very_sarcastic", "slight", "not_motivational", "neutral", "text"],
            ["3", url(3), "c", "funny", "general", "slight", "not_motivational", "neutral", "text"],
            ["4", url(4), "d", "funny", "kinda", "slightly", "not_motivational", "neutral", "text"]]
    path = write_csv(tmp_path / "memotion_train.csv", M2_HEADER, rows)
    with pytest.raises(FeatstoreError) as e:
        load_dataset(path)
    assert str(e.value) == (
        f"dataset {path}: 3 problems: row 4: sarcastic 'general' is a Memotion 1 level but this file uses Memotion "
        f"2.0's (not_sarcastic, little_sarcastic, very_sarcastic, extremely_sarcastic); row 5: sarcastic 'kinda' "
        f"is not one of not_sarcastic, little_sarcastic, very_sarcastic, extremely_sarcastic; row 5: offensive "
        f"'slightly' is not one of not_offensive, slight, very_offensive, hateful_offensive (fix the rows)")
    # the majority of edition-specific rows decides: two Memotion 1 rows against one Memotion 2.0 row
    m1 = write_csv(tmp_path / "labels.csv", M1_HEADER, [
        ["0", "1.jpg", "a", "a", "funny", "Twisted Meaning", "slight", "not_motivational", "neutral"],
        ["1", "2.jpg", "b", "b", "funny", "little_sarcastic", "slight", "not_motivational", "neutral"],
        ["2", "3.jpg", "c", "c", "funny", "very_twisted", "slight", "not_motivational", "neutral"]])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(m1, image_root=tmp_path / "train_images")
    assert str(e.value) == (
        f"dataset {m1}: 1 problem: row 3: sarcasm 'little_sarcastic' is a Memotion 2.0 level but this file uses "
        f"Memotion 1's (not_sarcastic, general, twisted_meaning, very_twisted) (fix the rows)")


def test_a_folder_whose_files_use_different_editions_is_an_error(tmp_path):
    root = memotion2_folder(tmp_path / "memotion2")
    write_csv(root / "Memotion2" / "memotion_val.csv", M2_HEADER, [
        ["21", url(21), "val meme", "very_funny", "twisted_meaning", "slight", "not_motivational", "neutral",
         "image"]])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root)
    assert str(e.value) == (
        f"dataset {root}: 1 problem: Memotion2/memotion_train.csv uses Memotion 2.0 "
        f"sarcasm levels but Memotion2/memotion_val.csv uses Memotion 1's; load the editions separately "
        f"(fix the file)")


def test_folder_problems_name_the_file_and_missing_images(tmp_path):
    root = memotion2_folder(tmp_path / "memotion2")
    (root / "image folder" / "train_images" / "12.jpg").unlink()
    with pytest.raises(FeatstoreError, match=r"^dataset .*memotion2: 1 problem: Memotion2/memotion_train\.csv row 3: "
                                             r"image image folder/train_images/12 not found \(fix the rows or "):
        load_dataset(root)
    assert len(load_dataset(root, check_images=False)) == 5


def test_two_files_of_one_split_in_a_folder_are_an_error(tmp_path):
    root = memotion2_folder(tmp_path / "memotion2")
    write_csv(root / "Memotion2_test" / "memotion_test.csv", M2_TEST_HEADER, [["31", url(31), "test meme"]])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root)
    assert str(e.value) == (f"dataset {root}: two test files, Memotion2_test/memotion_test.csv and "
                            f"memotion_test.csv; remove one, or point at the file to read")


def test_header_detection_and_split_names(tmp_path):
    assert detect_header(M2_HEADER) and detect_header(M1_HEADER) and detect_header(M2_TEST_HEADER)
    assert detect_header(["Id", "Image url", "ocr_text", "classification_based_on"])
    for generic in (["id", "image", "text", "label"], ["id", "img", "text"], ["id", "image_url", "caption"],
                    ["image_url", "ocr_text"], ["id", "ocr_text", "label"]):
        assert not detect_header(generic), generic
    make_image(tmp_path / "a.png")
    plain = write_csv(tmp_path / "memotion_train.csv", ["id", "image", "text", "label"], [["1", "a.png", "x", "1"]])
    assert detect_format(plain) == "generic"  # a Memotion-like name alone does not make it Memotion
    assert [split_of(s) for s in ("memotion_train", "memotion_val", "memotion_validation", "dev", "memotion_test",
                                  "labels", "Train", "other")] == [
        "train", "val", "val", "val", "test", "train", "train", "other"]


def test_folder_detection_keeps_hateful_memes_first_and_explains_an_unknown_folder(tmp_path):
    hm = tmp_path / "hm"
    make_image(hm / "img" / "00001.png")
    write_jsonl(hm / "train.jsonl", [{"id": 1, "img": "img/00001.png", "label": 0, "text": "t"}])
    write_csv(hm / "memotion_test.csv", M2_TEST_HEADER, [["1", url(1), "t"]])
    assert detect_format(hm) == "hateful_memes"
    other = tmp_path / "other"
    write_csv(other / "memotion_train.csv", ["id", "image", "text", "label"], [["1", "a.png", "x", "1"]])
    with pytest.raises(FeatstoreError, match=r"cannot tell the format of this folder \(expected Hateful Memes split "
                                             r"files like train\.jsonl, MM-IMDB's split\.json and dataset/, or "
                                             r"Memotion CSVs like memotion_train\.csv or labels\.csv\)"):
        load_dataset(other)
    with pytest.raises(FeatstoreError) as e:
        load_dataset(other, format="memotion")
    assert str(e.value) == (f"dataset {other}: no Memotion CSV in this folder or its subfolders (expected e.g. "
                            f"memotion_train.csv, memotion_val.csv, memotion_test.csv or labels.csv); point at the "
                            f".csv file")


def test_splits_numbering_their_memes_alike_get_split_prefixed_ids_and_keys(tmp_path):
    """Two splits with the same image name (val's 11.jpg is another picture than train's): every id and key
    takes its split as a prefix, so the two memes keep their own rows; a folder without such a repeat keeps
    the ids as written (the test above)."""
    root = memotion2_folder(tmp_path / "memotion2")
    make_image(root / "image folder" / "val_images" / "11.jpg", (0, 99, 0))
    write_csv(root / "Memotion2" / "memotion_val.csv", M2_HEADER, [
        ["21", url(21), "val meme", "very_funny", "very_sarcastic", "hateful_offensive", "not_motivational",
         "neutral", "image"],
        ["11", url(11), "another meme", "funny", "not_sarcastic", "slight", "motivational", "positive", "text"]])
    m = load_dataset(root)
    assert [(s.id, s.image_key) for s in m] == [
        ("train-11", "train-11"), ("train-12", "train-12"), ("train-13", "train-13"), ("val-21", "val-21"),
        ("val-11", "val-11"), ("test-31", "test-31")]
    paths = {s.image_key: s.image_path for s in m}
    assert paths["val-11"] == str((root / "image folder" / "val_images" / "11.jpg").resolve())
    assert paths["train-11"] == str((root / "image folder" / "train_images" / "11.jpg").resolve())
    assert m.image_keys() == [s.image_key for s in m]  # six memes, six images


def memotion2_flat(root):
    """memotion_{train,val,test}.csv side by side with train_images/, val_images/, test_images/."""
    for split, ids in (("train", (11, 12)), ("val", (21,)), ("test", (31,))):
        for i in ids:
            make_image(root / f"{split}_images" / f"{i}.jpg", (i, i, 0))
    write_csv(root / "memotion_train.csv", M2_HEADER, [
        ["11", url(11), "a", "funny", "little_sarcastic", "slight", "motivational", "positive", "text"],
        ["12", url(12), "b", "not_funny", "not_sarcastic", "not_offensive", "not_motivational", "negative", "text"]])
    write_csv(root / "memotion_val.csv", M2_HEADER, [
        ["21", url(21), "c", "very_funny", "very_sarcastic", "slight", "not_motivational", "neutral", "image"]])
    write_csv(root / "memotion_test.csv", M2_TEST_HEADER, [["31", url(31), "test meme"]])
    return root


def _layout(tmp_path, layout, collide):
    """A Memotion 2.0 folder as shipped (test CSV at the top or in Memotion2_test/) or flat; with ``collide`` the
    test split also numbers a meme 11, another picture than train's 11.jpg. Returns (folder, its split CSVs)."""
    if layout == "flat":
        root = memotion2_flat(tmp_path / "memotion2")
        csvs = {s: root / f"memotion_{s}.csv" for s in ("train", "val", "test")}
        test_images = root / "test_images"
    else:
        root = memotion2_folder(tmp_path / "memotion2", test_in_subfolder=layout == "subfolder")
        test_dir = root / "Memotion2_test" if layout == "subfolder" else root
        csvs = {"train": root / "Memotion2" / "memotion_train.csv", "val": root / "Memotion2" / "memotion_val.csv",
                "test": test_dir / "memotion_test.csv"}
        test_images = root / ("Test images" if layout == "subfolder" else "Test_Images")
    if collide:
        make_image(test_images / "11.jpg", (0, 0, 99))
        write_csv(csvs["test"], M2_TEST_HEADER, [["31", url(31), "test meme"], ["11", url(11), "another"]])
    return root, csvs


@pytest.mark.parametrize("collide", [False, True])
@pytest.mark.parametrize("layout", ["top", "subfolder", "flat"])
def test_ids_and_keys_are_the_folder_loads_whichever_part_is_read(tmp_path, monkeypatch, layout, collide):
    """Features extracted from the folder join with a run on one split file: the folder load, each split CSV
    alone and each --dataset-split give the same (id, image_key) for the same rows."""
    root, csvs = _layout(tmp_path, layout, collide)
    whole = {((root / s.file).resolve(), s.row): (s.id, s.image_key) for s in load_dataset(root)}
    assert len(whole) == len(set(whole.values()))
    test_ids = [(s.id, s.image_key) for s in load_dataset(csvs["test"])]
    assert test_ids == ([("test-31", "test-31"), ("test-11", "test-11")] if collide else [("31", "31")])
    for split, csv_path in csvs.items():
        alone = load_dataset(csv_path)
        assert [(s.id, s.image_key) for s in alone] == [whole[(csv_path.resolve(), s.row)] for s in alone]
        part = load_dataset(root, split=split)
        assert [(s.id, s.image_key) for s in part] == [whole[((root / s.file).resolve(), s.row)] for s in part]
        assert len(alone) == len(part) > 0
    named = load_dataset(csvs["val"], split="dev")  # one file, its split renamed: the ids stay the folder's
    assert named.splits == ["dev"]
    assert [(s.id, s.image_key) for s in named] == [whole[(csvs["val"].resolve(), s.row)] for s in named]
    monkeypatch.chdir(csvs["train"].parent)  # a relative path still sees the folder around it
    relative = load_dataset(csvs["train"].name)
    assert [(s.id, s.image_key) for s in relative] == [whole[(csvs["train"].resolve(), s.row)] for s in relative]


def test_a_lone_split_file_keeps_its_ids(tmp_path):
    """Without sibling split files there is nothing to collide with: ids as written."""
    make_image(tmp_path / "test_images" / "11.jpg")
    path = write_csv(tmp_path / "memotion_test.csv", M2_TEST_HEADER, [["11", url(11), "x"]])
    assert [(s.id, s.image_key, s.split) for s in load_dataset(path)] == [("11", "11", "test")]


def test_a_renamed_label_column_names_the_accepted_names_not_label_cols(tmp_path):
    make_image(tmp_path / "train_images" / "1.jpg")
    header = ["Id", "Image url", "ocr_text", "humour", "sarcasm_level", "offensive", "motivation_level",
              "overall_sentiment", "classification_based_on"]
    path = write_csv(tmp_path / "memotion_train.csv", header, [
        ["1", url(1), "a", "funny", "little_sarcastic", "slight", "motivational", "positive", "text"]])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(path, label_cols=["sarcasm_level", "motivation_level"])
    assert str(e.value) == (
        f"dataset {path}: 1 problem: missing columns 'sarcastic' (or 'sarcasm'), 'motivational' (or "
        f"'motivation') (found: {', '.join(header)}) (fix the file or rename the column back in the CSV (Memotion "
        f"reads each label only under the names listed; --label-cols does not apply), or read it as a generic CSV "
        f"(--format generic --label-cols COLS --text-col COL --image-col COL: one task per column, not Memotion's "
        f"A, B and C))")
    # what the hint says works: the generic reader takes the renamed columns
    m = load_dataset(path, format="generic", image_col="Id", text_col="ocr_text",
                     label_cols=["sarcasm_level", "motivation_level"], image_root=tmp_path / "train_images")
    assert [(s.id, s.labels) for s in m] == [("1", {"sarcasm_level": "little_sarcastic",
                                                    "motivation_level": "motivational"})]


def test_a_missing_text_column_names_the_column_options(tmp_path):
    header = ["Id", "Image url", "caption", "humour", "sarcastic", "offensive", "motivational", "overall_sentiment"]
    path = write_csv(tmp_path / "memotion_train.csv", header, [
        ["1", url(1), "a", "funny", "little_sarcastic", "slight", "motivational", "positive"]])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(path)
    assert str(e.value) == (f"dataset {path}: 1 problem: missing column 'ocr_text' (found: {', '.join(header)}) "
                            f"(fix the file or name the columns with --id-col/--image-col/--text-col)")
    assert load_dataset(path, text_col="caption", check_images=False).samples[0].text == "a"


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_header_only_split_file_of_a_folder_is_named(tmp_path, split):
    root = memotion2_folder(tmp_path / "memotion2")
    name = {"train": "Memotion2/memotion_train.csv", "val": "Memotion2/memotion_val.csv",
            "test": "memotion_test.csv"}[split]
    write_csv(root / name, M2_TEST_HEADER if split == "test" else M2_HEADER, [])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root)
    assert str(e.value) == (f"dataset {root}: {name} has no rows (only a header); re-download it, or leave the "
                            f"file out (move it out of the folder, or read another split with --dataset-split)")
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root, split=split)
    assert str(e.value).startswith(f"dataset {root}: {name} has no rows (only a header); ")
    other = "test" if split != "test" else "train"
    assert load_dataset(root, split=other).splits == [other]  # the empty file left out
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root / name)
    assert str(e.value) == (f"dataset {root / name}: the file has no rows (only a header); re-download it, or "
                            f"leave the file out")


def test_a_header_only_memotion1_labels_file_is_named(tmp_path):
    root = tmp_path / "memotion_dataset_7k"
    (root / "images").mkdir(parents=True)
    path = write_csv(root / "labels.csv", M1_HEADER, [])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root)
    assert str(e.value) == (f"dataset {root}: labels.csv has no rows (only a header); re-download it, or leave the "
                            f"file out (move it out of the folder, or read another split with --dataset-split)")
    with pytest.raises(FeatstoreError) as e:
        load_dataset(path)
    assert str(e.value) == (f"dataset {path}: the file has no rows (only a header); re-download it, or leave the "
                            f"file out")
