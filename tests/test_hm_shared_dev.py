"""Hateful Memes as it ships: dev_unseen lists 400 of dev_seen's memes again (the same id, image, text and
label), so 12,540 rows hold 12,140 samples. A text set holds one row per sample, training keeps a row per split
(both dev splits are scored on all their rows), and the searches count a shared meme once.

The fixture is ``cli_helpers.make_hm_folder`` plus a ``dev_unseen.jsonl`` that copies eight dev_seen rows
verbatim and adds three memes of its own, and a ``test_unseen.jsonl`` whose unlabelled rows repeat two labelled
dev_seen ones.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tests.cli_helpers import extract_args, invoke, make_hm_folder

SHARED = 8  # dev_seen rows copied into dev_unseen


def _rows(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from cli.featstore_cli import main as featstore

    root = tmp_path_factory.mktemp("hm_shared")
    data = make_hm_folder(root / "data")
    dev = _rows(data / "dev_seen.jsonl")
    own = [dict(r, id=9000 + i, text=r["text"] + " unseen") for i, r in enumerate(dev[:3])]
    _write(data / "dev_unseen.jsonl", dev[:SHARED] + own)
    _write(data / "test_unseen.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in dev[:2]])
    store = root / "store"
    invoke(featstore, extract_args(data, store, "grid"))
    invoke(featstore, extract_args(data, store, "bert"))
    return {"root": root, "data": data, "store": store, "dev": dev, "own": own}


def _read_predictions(path: Path) -> dict:
    with open(path) as f:
        return {r["id"]: float(r["proba"]) for r in csv.DictReader(f)}


def test_distinct_samples_one_per_id_with_the_labelled_rows_labels(world):
    from featstore.datasets import load_dataset

    ds = load_dataset(world["data"])
    distinct = ds.distinct_samples()
    assert len(ds.samples) == 24 + 12 + 12 + SHARED + 3 + 2
    assert [s.id for s in distinct] == ds.ids and len(distinct) == 24 + 12 + 12 + 3
    by_id = {s.id: s for s in distinct}
    dev = world["dev"]
    for r in dev[:SHARED]:  # listed in dev_seen first: that row, with its label
        s = by_id[str(r["id"])]
        assert (s.split, s.text, s.labels) == ("dev_seen", r["text"], {"label": r["label"]})
    assert all(not s.labels for s in ds.samples if s.split == "test_unseen")  # the rows stay as the files say


def test_distinct_samples_takes_labels_from_a_later_labelled_row():
    from featstore.datasets.manifest import DatasetManifest, Sample

    rows = [Sample("1", "00001", None, "a", {}, "test", 1), Sample("2", "00002", None, "b", {"y": 0}, "train", 1),
            Sample("1", "00001", None, "a", {"y": 1}, "train", 2)]
    got = DatasetManifest(rows).distinct_samples()
    assert [(s.id, s.split, s.labels) for s in got] == [("1", "test", {"y": 1}), ("2", "train", {"y": 0})]
    assert rows[0].labels == {}  # the manifest's rows are not changed


def test_text_set_holds_one_row_per_sample(world):
    from featstore.datasets import load_dataset
    from featstore.store import open_store

    ds = load_dataset(world["data"])
    fs = open_store(world["store"]).open("bert")
    assert [str(k) for k in fs.keys] == ds.ids  # 51 rows for 61 dataset rows, in first-seen order
    own = fs.select([str(r["id"]) for r in world["own"]], ["cls"])["cls"]
    shared = fs.select([str(r["id"]) for r in world["dev"][:3]], ["cls"])["cls"]
    assert not np.allclose(own, shared)  # the unseen memes' own texts, " unseen" appended, are their own rows


def test_train_scores_both_dev_splits_on_all_their_rows(world, tmp_path):
    from cli.heads_cli import main as heads

    out = tmp_path / "run"
    said = invoke(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--image", "grid", "--text",
                          "bert", "--head", "concat", "--epochs", 2, "--quiet", "--out", out])
    # dev[:2] are in dev_seen, dev_unseen and test_unseen: 51 samples in 51 + 8 + 2 rows, 8 of them shared
    assert f"on {51 + SHARED + 2} rows (51 samples, {SHARED} of them in more than one split)" in said.splitlines()[0]
    run = out / "seed_0"
    dev, unseen = _read_predictions(run / "predictions_dev.csv"), _read_predictions(run / "predictions_dev_unseen.csv")
    want_unseen = [str(r["id"]) for r in world["dev"][:SHARED] + world["own"]]
    assert list(unseen) == want_unseen and len(dev) == 12
    for r in world["dev"][:SHARED]:  # the same sample, the same features: the same probability in both files
        assert unseen[str(r["id"])] == dev[str(r["id"])]
    labels = {str(r["id"]): r["label"] for r in world["dev"][:SHARED] + world["own"]}
    metrics = json.loads((run / "metrics.json").read_text())
    y = [labels[i] for i in want_unseen]
    assert metrics["dev_unseen"]["label/n"] == SHARED + 3
    assert metrics["dev_unseen"]["label/auroc"] == pytest.approx(roc_auc_score(y, [unseen[i] for i in want_unseen]),
                                                                 abs=1e-6)
    assert sorted(_read_predictions(run / "predictions_test_unseen.csv")) == sorted(str(r["id"]) for r in world["dev"][:2])


def test_a_split_listing_one_id_twice_is_refused(world):
    from heads.data import build_train_data
    from featstore.datasets import load_dataset
    from featstore.errors import FeatstoreError
    from featstore.store import open_store

    data = build_train_data(open_store(world["store"]), load_dataset(world["data"]), "grid", "bert")
    splits = dict(data.splits)
    dup = torch.cat([splits["dev"], splits["dev"][:1]])
    with pytest.raises(FeatstoreError) as err:
        type(data)(features=data.features, ids=data.ids, targets=data.targets, task_spec=data.task_spec,
                   splits=dict(splits, dev=dup))
    first = data.ids[int(splits["dev"][0])]
    assert str(err.value) == (f"split 'dev' lists sample id {first!r} twice; give every sample of a split a unique id")


def test_fused_set_and_confounders_count_a_shared_meme_once(world, tmp_path):
    from cli.featstore_cli import main as featstore
    from cli.heads_cli import main as heads
    from featstore.datasets import load_dataset
    from featstore.store import open_store

    ds = load_dataset(world["data"])
    invoke(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--image", "grid", "--text",
                   "bert", "--head", "concat", "--epochs", 1, "--quiet", "--out", tmp_path / "run",
                   "--save-fused", "fused"])
    fused = open_store(world["store"]).open("fused")
    assert [str(k) for k in fused.keys] == ds.ids
    invoke(featstore, ["confounders", "--store", world["store"], "--dataset", world["data"], "--image", "grid",
                       "--text", "bert", "--out", tmp_path / "rep"])
    with open(tmp_path / "rep" / "confounders.csv") as f:
        pairs = list(csv.DictReader(f))
    assert pairs
    ids = [(p["id_a"], p["id_b"]) for p in pairs]
    assert all(a != b for a, b in ids)  # no meme paired with its own second listing
    assert len(set(map(frozenset, ids))) == len(ids)  # and no pair twice


# ------------------------------------------------------------------------------- --val-split (TrainConfig.val_split)

def _train(world, out, *extra) -> str:
    from cli.heads_cli import main as heads

    return invoke(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--image", "grid", "--text",
                          "bert", "--head", "concat", "--epochs", 3, "--patience", 0, "--quiet", "--out", out, *extra])


def test_val_split_names_the_split_that_chooses_the_epoch(world, tmp_path):
    """auto keeps dev (dev_seen); ``--val-split dev_unseen`` (MMF's phase-2 yaml) picks the epoch by dev_unseen:
    the restored model's dev_unseen metric is the history's best ``val_`` value, which is dev_unseen's."""
    out = _train(world, tmp_path / "auto")
    assert "seed 0: best epoch " in out and ", dev label/auroc=" in out
    out = _train(world, tmp_path / "unseen", "--val-split", "dev_unseen")
    assert ", dev_unseen label/auroc=" in out
    run = tmp_path / "unseen" / "seed_0"
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert (config["val_split"], config["train"]["val_split"]) == ("dev_unseen", "dev_unseen")
    history = json.loads((run / "history.json").read_text())
    assert {row["val_label/n"] for row in history} == {SHARED + 3}  # dev_unseen's 11 rows, not dev's 12
    vals = [row["val_label/auroc"] for row in history]
    best = metrics["best_epoch"]
    assert vals[best - 1] == max(vals)
    assert vals[best - 1] == pytest.approx(metrics["dev_unseen"]["label/auroc"], abs=1e-6)
    out = _train(world, tmp_path / "seen", "--val-split", "dev_seen")  # the file's name: the split dev
    assert ", dev label/auroc=" in out


@pytest.mark.parametrize("name, message", [
    ("train", "error: val_split 'train': training rows cannot choose the epoch; pass auto or one of: dev, "
              "dev_unseen, test, test_unseen"),
    ("dev_unsen", "error: val_split 'dev_unsen': the dataset has no such split; pass auto or one of: dev, "
                  "dev_unseen, test, test_unseen"),
    ("test_unseen", "error: val_split 'test_unseen' has no labelled rows; pass a labelled split or auto"),
])
def test_val_split_bad_names_are_one_line(world, tmp_path, name, message):
    from cli.heads_cli import main as heads
    from tests.cli_helpers import one_line_error

    line = one_line_error(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--image", "grid",
                                  "--text", "bert", "--head", "concat", "--epochs", 1, "--quiet", "--out",
                                  tmp_path / "r", "--val-split", name])
    assert line == message
    assert not (tmp_path / "r").exists()
