"""MM-IMDB reader: the release folder (split.json + dataset/<id>.json + <id>.jpeg), MMBT's JSONL
(id, text, image/img, label) and MMF's annotations (plot, genres, image_name/...), on real files in tmp_path."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest_data import make_image, write_jsonl

from featstore.datasets import detect_format, load_dataset
from featstore.datasets import mmimdb
from featstore.errors import FeatstoreError

# gmu-mmimdb make_dataset.py: the n_classes=23 most frequent genres of the release, most frequent first
PAPER_GENRES = ("Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Documentary",
                "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music", "Animation",
                "Musical", "Western", "Sport", "Short", "Film-Noir")

MOVIES = {  # id -> (plot, genres), as in the release's dataset/<id>.json
    "0000008": (["Short one.", "A much longer plot outline.", "Equal length plot outline."], ["Short", "Documentary"]),
    "0000010": (["Workers leave the factory."], ["News", "Documentary", "Short"]),
    "0000012": ("A train arrives.", ["Talk-Show", "Reality-TV"]),  # no genre of the 23 left
    "0000014": (["One.", "Two two."], ["Sci-Fi", "Comedy", "Adult", "Comedy"]),
    "0000016": (["Same len A", "Same len B"], ["Film-Noir", "Drama"]),
}
SPLITS = {"train": ["0000008", "0000010", "0000012"], "dev": ["0000014"], "test": ["0000016"]}


def release_folder(root):
    (root / "dataset").mkdir(parents=True)
    for i, (mid, (plot, genres)) in enumerate(MOVIES.items()):
        meta = {"title": f"Movie {mid}", "plot": plot, "genres": genres, "year": 1895, "kind": "movie",
                "cover url": f"http://example.invalid/{mid}.jpg"}
        (root / "dataset" / f"{mid}.json").write_text(json.dumps(meta, indent=4), encoding="utf-8")
        make_image(root / "dataset" / f"{mid}.jpeg", (10 * i, 20, 30), size=(16, 24))
    (root / "split.json").write_text(json.dumps(SPLITS), encoding="utf-8")
    return root


def test_genre_list_is_the_papers_23_in_frequency_order():
    assert mmimdb.GENRES == PAPER_GENRES and len(set(mmimdb.GENRES)) == 23
    assert not set(mmimdb.DROPPED_GENRES) & set(mmimdb.GENRES)
    assert mmimdb.keep_genres(["comedy", "News", "Drama", "Comedy", " sci-fi ", "Adult"]) == ["Drama", "Comedy",
                                                                                              "Sci-Fi"]


def test_release_folder_tasks_labels_plots_splits(tmp_path):
    root = release_folder(tmp_path / "mmimdb")
    m = load_dataset(root)
    assert m.format == "mmimdb"
    assert m.tasks["genres"].to_dict() == {"name": "genres", "kind": "multilabel", "num_classes": 23,
                                             "class_names": list(PAPER_GENRES)}
    assert [(s.id, s.image_key, s.text, s.labels, s.split, s.row, s.file) for s in m] == [
        ("0000008", "0000008", "A much longer plot outline.", {"genres": ["Documentary", "Short"]}, "train", 1,
         "split.json:train"),
        ("0000010", "0000010", "Workers leave the factory.", {"genres": ["Documentary", "Short"]}, "train", 2,
         "split.json:train"),
        ("0000014", "0000014", "Two two.", {"genres": ["Comedy", "Sci-Fi"]}, "dev", 1, "split.json:dev"),
        ("0000016", "0000016", "Same len A", {"genres": ["Drama", "Film-Noir"]}, "test", 1, "split.json:test")]
    assert m.splits == ["train", "dev", "test"]
    assert [len(m.split(s)) for s in m.splits] == [2, 1, 1]  # 0000012 (Talk-Show, Reality-TV only) left out
    assert m.samples[0].image_path == str((root / "dataset" / "0000008.jpeg").resolve())
    y, has = m.targets("genres")
    assert y.shape == (4, 23) and has.all()
    np.testing.assert_array_equal(np.nonzero(y[2])[0], [1, 10])  # Comedy, Sci-Fi
    np.testing.assert_array_equal(np.nonzero(y[3])[0], [0, 22])  # Drama, Film-Noir


def test_release_folder_one_split_keeps_the_class_list(tmp_path):
    root = release_folder(tmp_path / "mmimdb")
    for split, n in (("train", 2), ("dev", 1), ("test", 1)):
        m = load_dataset(root, split=split)
        assert m.splits == [split] and len(m) == n
        assert m.tasks["genres"].class_names == PAPER_GENRES
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root, split="val")
    assert str(e.value) == (f"dataset {root}: split.json has no split 'val'; choose --dataset-split from: "
                            f"train, dev, test")


def test_release_folder_bad_movies_reported_together(tmp_path):
    root = release_folder(tmp_path / "mmimdb")
    (root / "dataset" / "0000010.json").write_text(json.dumps({"title": "x", "genres": ["Drama"]}))
    (root / "dataset" / "0000014.json").write_text(json.dumps({"plot": [1, 2], "genres": "Drama"}))
    (root / "dataset" / "0000016.jpeg").unlink()
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root)
    assert str(e.value) == (
        f"dataset {root}: 4 problems: split.json:train row 2: dataset/0000010.json: missing field 'plot'; "
        f"split.json:dev row 1: dataset/0000014.json: field 'plot' must be a list of strings or a string, got list; "
        f"split.json:dev row 1: dataset/0000014.json: field 'genres' must be a list of strings; "
        f"split.json:test row 1: image 0000016.jpeg not found (fix the rows or load with check_images=False)")


def mmbt_files(root, image_field="image"):
    """MMBT's format_mmimdb_dataset output: <root>/<split>.jsonl with images under <root>/mmimdb/dataset/."""
    for split, ids in SPLITS.items():
        rows = []
        for mid in ids:
            plot, genres = MOVIES[mid]
            make_image(root / "mmimdb" / "dataset" / f"{mid}.jpeg", size=(12, 18))
            rows.append({"id": mid, "text": plot if isinstance(plot, str) else max(plot, key=len),
                         image_field: f"mmimdb/dataset/{mid}.jpeg", "label": genres})
        write_jsonl(root / f"{split}.jsonl", rows)
    return root


@pytest.mark.parametrize("image_field", ["image", "img"])
def test_mmbt_jsonl(tmp_path, image_field):
    root = mmbt_files(tmp_path / "data", image_field)
    first = json.loads((root / "train.jsonl").read_text().splitlines()[0])
    assert mmimdb.detect_jsonl(first)
    m = load_dataset(root / "train.jsonl", format="mmimdb")
    assert [(s.id, s.image_key, s.text, s.labels, s.split, s.row) for s in m] == [
        ("0000008", "0000008", "A much longer plot outline.", {"genres": ["Documentary", "Short"]}, "train", 1),
        ("0000010", "0000010", "Workers leave the factory.", {"genres": ["Documentary", "Short"]}, "train", 2)]
    assert m.samples[1].image_path == str((root / "mmimdb" / "dataset" / "0000010.jpeg").resolve())
    assert m.tasks["genres"].class_names == PAPER_GENRES
    dev = load_dataset(root / "dev.jsonl", format="mmimdb")
    assert [(s.id, s.split, s.labels) for s in dev] == [("0000014", "dev", {"genres": ["Comedy", "Sci-Fi"]})]
    assert load_dataset(root / "test.jsonl", format="mmimdb", split="mine").splits == ["mine"]


def test_mmf_annotations_layout(tmp_path):
    """MMF: <defaults>/annotations/<split>.jsonl with plot/genres; images under images/mmimdb/dataset/."""
    defaults = tmp_path / "mmimdb" / "defaults"
    for mid in ("0000008", "0000014", "0000016"):
        make_image(defaults / "images" / "mmimdb" / "dataset" / f"{mid}.jpeg")
    path = write_jsonl(defaults / "annotations" / "dev.jsonl", [
        {"id": "0000008", "plot": list(MOVIES["0000008"][0]), "genres": ["short", "documentary"],
         "image_name": "0000008"},
        {"plot": "Plain plot.", "genres": ["sci-fi", "comedy", "news"], "image_path": "0000014.jpeg"},
        {"id": 16, "plot": ["x", "yy"], "genres": ["Drama"], "image_id": "0000016"},
    ])
    assert detect_format(path) == "mmimdb"
    m = load_dataset(path)
    images = defaults / "images" / "mmimdb" / "dataset"
    assert [(s.id, s.image_key, s.text, s.labels, s.split) for s in m] == [
        ("0000008", "0000008", "A much longer plot outline.", {"genres": ["Documentary", "Short"]}, "dev"),
        ("0000014", "0000014", "Plain plot.", {"genres": ["Comedy", "Sci-Fi"]}, "dev"),
        ("16", "0000016", "yy", {"genres": ["Drama"]}, "dev")]
    assert [s.image_path for s in m] == [str((images / f"{k}.jpeg").resolve())
                                         for k in ("0000008", "0000014", "0000016")]
    other = tmp_path / "posters"
    make_image(other / "0000008.jpeg")
    m = load_dataset(path, image_root=other, check_images=False)
    assert m.samples[0].image_path == str((other / "0000008.jpeg").resolve())


def test_jsonl_rows_without_the_23_genres_are_left_out(tmp_path):
    make_image(tmp_path / "a.jpeg")
    make_image(tmp_path / "b.jpeg")
    path = write_jsonl(tmp_path / "test.jsonl", [
        {"id": "a", "plot": ["A."], "genres": ["Talk-Show"], "image": "a.jpeg"},
        {"id": "b", "plot": ["B."], "genres": ["Reality-TV", "Western"], "image": "b.jpeg"},
        {"id": "c", "plot": ["C."], "genres": [], "image": "c.jpeg"},
    ])
    m = load_dataset(path)
    assert [(s.id, s.labels, s.split) for s in m] == [("b", {"genres": ["Western"]}, "test")]
    write_jsonl(path, [{"id": "a", "plot": ["A."], "genres": ["News"], "image": "a.jpeg"}])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(path)
    assert str(e.value) == f"dataset {path}: no samples found; check the file (and --dataset-split)"


def test_a_split_read_from_a_combined_jsonl_judges_only_its_own_rows(tmp_path):
    make_image(tmp_path / "a.jpeg")
    path = write_jsonl(tmp_path / "all.jsonl", [
        {"id": "a", "plot": ["A."], "genres": ["Drama"], "image": "a.jpeg", "split": "train"},
        {"id": "b", "plot": ["B."], "genres": ["Sci Fi"], "image": "a.jpeg", "split": "test"}])
    assert [s.id for s in load_dataset(path, format="mmimdb", split="train")] == ["a"]
    with pytest.raises(FeatstoreError, match="unknown genre 'Sci Fi'"):
        load_dataset(path, format="mmimdb", split="test")


def test_what_make_dataset_drops_is_counted_in_the_notes_and_printed(tmp_path):
    """MOVIES by hand: News once (0000010), Talk-Show and Reality-TV once (0000012, left with no genre), Adult
    once (0000014): four dropped genres and one movie left out. A split read alone counts only its own."""
    from click.testing import CliRunner

    from cli.featstore_cli import main as featstore

    root = release_folder(tmp_path / "mmimdb")
    notes = load_dataset(root).notes
    assert notes == ["genres dropped from the labels, as gmu-mmimdb's make_dataset.py drops them: News (1), "
                     "Talk-Show (1), Reality-TV (1), Adult (1)",
                     "1 movie left out: no genre among the 23 (make_dataset.py leaves such a movie out of every split)"]
    assert load_dataset(root, split="test").notes == []
    assert load_dataset(root, split="dev").notes == ["genres dropped from the labels, as gmu-mmimdb's "
                                                     "make_dataset.py drops them: Adult (1)"]
    path = write_jsonl(tmp_path / "test.jsonl", [
        {"id": "a", "plot": ["A."], "genres": ["Talk-Show"], "image": "a.jpeg"},
        {"id": "b", "plot": ["B."], "genres": ["Drama"], "image": "a.jpeg"}])
    make_image(tmp_path / "a.jpeg")
    assert load_dataset(path).notes[1].startswith("1 movie left out")
    from featstore.store import open_store

    open_store(tmp_path / "st", create=True)
    res = CliRunner().invoke(featstore, ["preflight", "--dataset", str(root), "--store", str(tmp_path / "st")])
    assert f"note: dataset {root}: 1 movie left out: no genre among the 23" in res.output, res.output


def test_jsonl_missing_and_bad_fields_name_the_accepted_names(tmp_path):
    make_image(tmp_path / "p.jpeg")
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "1", "plot": ["P."], "genres": ["Drama"], "poster_file": "p.jpeg"},
        {"id": "2", "genres": ["Drama"], "image": "p.jpeg"},
        {"id": "3", "text": "T.", "image": "p.jpeg"},
        {"id": "4", "text": 5, "label": "Drama", "img": 1.5},
        {"id": True, "plot": "P.", "genres": ["Drama"], "image": "p.jpeg", "split": 2},
    ])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(path, format="mmimdb")
    assert str(e.value) == (
        f"dataset {path}: 8 problems: "
        f"row 1: missing the image field (accepted: image, img, image_path, image_name, image_id, poster); "
        f"row 2: missing the text field (accepted: plot, text); "
        f"row 3: missing the genres field (accepted: genres, label); "
        f"row 4: field 'text' must be a list of strings or a string, got int; "
        f"row 4: field 'label' must be a list of strings; "
        f"row 4: field 'img' must be an image path string; "
        f"row 5: field 'id' must be an integer or a string, got bool; "
        f"row 5: field 'split' must be a string, got int (fix the rows)")


def test_jsonl_detection_mmbt_genres_but_not_any_multilabel_file(tmp_path):
    """MMBT's rows (text, poster, a label list of MM-IMDB genres) are MM-IMDB; a JSONL whose list labels are
    other names stays generic (its labels would otherwise be dropped as genres outside the 23)."""
    mmbt = tmp_path / "mmbt.jsonl"
    write_jsonl(mmbt, [{"id": "1", "text": "a plot", "image": "1.jpeg", "label": ["Drama", "News"]}])
    assert detect_format(mmbt) == "mmimdb"
    other = tmp_path / "tags.jsonl"
    write_jsonl(other, [{"id": "1", "text": "a meme", "image": "1.png", "label": ["cats", "drama"]}])
    assert detect_format(other) == "generic"
    hm = tmp_path / "hm.jsonl"
    write_jsonl(hm, [{"id": 1, "img": "img/00001.png", "label": 1, "text": "x"}])
    assert detect_format(hm) == "hateful_memes"


GENRE_HINT = ("write each genre as one of the 23 MM-IMDB genres (" + ", ".join(PAPER_GENRES) + "; any case) or one "
              "of the 4 the release also has and make_dataset.py drops (News, Adult, Talk-Show, Reality-TV)")


def test_release_folder_unknown_genres_are_errors_naming_movie_and_genre(tmp_path):
    root = release_folder(tmp_path / "mmimdb")
    for mid, genres in (("0000014", ["Sci Fi", "Comedy"]), ("0000016", ["Romantic comedy", "Drama", "film noir"])):
        (root / "dataset" / f"{mid}.json").write_text(json.dumps({"plot": ["P."], "genres": genres}))
    with pytest.raises(FeatstoreError) as e:
        load_dataset(root)
    assert str(e.value) == (
        f"dataset {root}: 2 problems: split.json:dev row 1: dataset/0000014.json: unknown genre 'Sci Fi' (did you "
        f"mean 'Sci-Fi'?); split.json:test row 1: dataset/0000016.json: unknown genres 'Romantic comedy', "
        f"'film noir' (did you mean 'Film-Noir'?) (fix the rows or {GENRE_HINT})")
    assert [s.id for s in load_dataset(root, split="train")] == ["0000008", "0000010"]  # known drops still dropped


def test_jsonl_unknown_genre_names_the_movie_by_id_or_poster(tmp_path):
    make_image(tmp_path / "0000021.jpeg")
    make_image(tmp_path / "b.jpeg")
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "a", "plot": ["A."], "genres": ["Drama", "Reality TV"], "image": "b.jpeg"},
        {"plot": "B.", "genres": ["Thriller", "Cartoon"], "image_name": "0000021"},
        {"id": "c", "plot": ["C."], "genres": ["News", "western"], "image": "b.jpeg"},
    ])
    with pytest.raises(FeatstoreError) as e:
        load_dataset(path)
    assert str(e.value) == (
        f"dataset {path}: 2 problems: row 1: movie a: unknown genre 'Reality TV' (did you mean 'Reality-TV'?); "
        f"row 2: movie 0000021: unknown genre 'Cartoon' (fix the rows or {GENRE_HINT})")
    write_jsonl(path, [{"id": "c", "plot": ["C."], "genres": ["News", "western"], "image": "b.jpeg"}])
    assert [(s.id, s.labels) for s in load_dataset(path)] == [("c", {"genres": ["Western"]})]


@pytest.mark.parametrize("empty", ["train", "dev"])
def test_release_folder_split_list_without_ids_is_named(tmp_path, empty):
    root = release_folder(tmp_path / "mmimdb")
    (root / "split.json").write_text(json.dumps({**SPLITS, empty: []}), encoding="utf-8")
    message = (f"dataset {root}: split.json's {empty!r} list has no rows (no movie ids); re-download split.json "
               f"from the release, or leave the split out (read another with --dataset-split, or remove {empty!r} "
               f"from split.json)")
    for split in (None, empty):
        with pytest.raises(FeatstoreError) as e:
            load_dataset(root, split=split)
        assert str(e.value) == message
    assert [s.id for s in load_dataset(root, split="test")] == ["0000016"]
