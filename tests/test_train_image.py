"""``--train-image``: the train split's samples read another image set's rows (RGCL: train memes squashed to
224 px on the 336 tower, dev and test at 336), checked on real stores reopened: each row's features are the
set's own for its split; a run records the set and eval / predict read it again; bad input is one line."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from cli.heads_cli import main as heads
from cli_helpers import hm_store_world, invoke, one_line_error
from featstore.errors import FeatstoreError
from featstore.store import Recipe
from heads.data import build_train_data


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = hm_store_world(tmp_path_factory.mktemp("train_image"))
    st, keys, ids, g = w["st"], w["keys"], w["ids"], np.random.default_rng(0)
    for name, width in (("clip336", 6), ("clip224", 6), ("narrow", 5)):
        st.write(name, Recipe("clip-image", config={"squash_size": 224 if name == "clip224" else 0}), keys,
                 {"pooler": g.normal(size=(len(keys), width)).astype(np.float32)}, key_kind="image_key",
                 modality="image")
    st.write("half", Recipe("clip-image"), keys[:3], {"pooler": g.normal(size=(3, 6)).astype(np.float32)},
             key_kind="image_key", modality="image")
    st.write("txt", Recipe("clip-text"), ids, {"pooler": g.normal(size=(len(ids), 4)).astype(np.float32)},
             key_kind="sample_id", modality="text")
    return w


def test_train_rows_come_from_the_train_set_and_the_rest_from_image(world):
    st, ds = world["st"], world["ds"]
    d = build_train_data(st, ds, "clip336", "txt", "label", image_pool="pooler", text_pool="pooler",
                         train_image_ref="clip224")
    for name in ("clip336", "clip224"):
        stored = dict(zip(st.open(name).keys, st.open(name).read("pooler")))
        rows = [i for i, s in enumerate(ds.samples) if (s.split == "train") == (name == "clip224")]
        want = np.stack([stored[ds.samples[i].image_key] for i in rows])
        np.testing.assert_array_equal(d.features["img_pooled"][rows].numpy(), want)
    ref = d.meta["features"]["train_image"]
    assert (ref["name"], ref["pool"], ref["config"]) == ("clip224", "pooler", {"squash_size": 224})
    assert ref["version"] == st.open("clip224").version
    plain = build_train_data(st, ds, "clip336", "txt", "label", image_pool="pooler", text_pool="pooler")
    assert "train_image" not in plain.meta["features"]
    shared = [i for i, s in enumerate(ds.samples) if s.split != "train"]  # the same image keys, other splits
    assert torch.equal(plain.features["img_pooled"][shared], d.features["img_pooled"][shared])


@pytest.mark.parametrize("ref, image, message", [
    ("narrow", "clip336", "--train-image narrow gives img_pooled of shape (5,) per row where --image gives (6,); "
                          "pass a set of the same extractor and options (and --max-regions when their region "
                          "counts differ)"),
    ("clip224", None, "--train-image clip224 replaces the train split's rows of --image, but no --image is given; "
                      "pass --image NAME too"),
    ("txt", "clip336", "feature set 'txt' passed as --image holds text features; swap --image and --text (or pass "
                       "a image feature set)"),
])
def test_bad_train_image_sets_are_one_line(world, ref, image, message):
    with pytest.raises(FeatstoreError) as e:
        build_train_data(world["st"], world["ds"], image, "txt", "label", image_pool="pooler", text_pool="pooler",
                         train_image_ref=ref)
    assert str(e.value) == message


def test_a_train_set_missing_train_images_names_them(world):
    with pytest.raises(FeatstoreError) as e:
        build_train_data(world["st"], world["ds"], "clip336", "txt", "label", image_pool="pooler",
                         text_pool="pooler", train_image_ref="half")
    assert "half" in str(e.value) and "missing" in str(e.value) and "\n" not in str(e.value)


def test_a_dataset_without_a_train_split_is_refused(world, tmp_path):
    from featstore.datasets import load_dataset as load

    only_dev = load(world["data"] / "dev_seen.jsonl")
    with pytest.raises(FeatstoreError) as e:
        build_train_data(world["st"], only_dev, "clip336", "txt", "label", image_pool="pooler", text_pool="pooler",
                         train_image_ref="clip224", val_fraction=0.5)
    assert str(e.value) == ("--train-image clip224: the dataset has no 'train' split samples to read it for; leave "
                            "--train-image out")


def test_a_run_records_the_train_set_and_eval_predict_read_it_again(world, tmp_path):
    base = ["--store", world["store"], "--dataset", world["data"], "--device", "cpu"]
    out = tmp_path / "run"
    invoke(heads, ["train", *base, "--image", "clip336", "--text", "txt", "--image-pool", "pooler", "--text-pool",
                   "pooler", "--train-image", "clip224", "--head", "concat", "--epochs", "2", "--quiet",
                   "--threads", "1", "--out", out])
    config = json.loads((out / "seed_0" / "config.json").read_text())
    assert config["features"]["train_image"]["name"] == "clip224"
    ev = json.loads(invoke(heads, ["eval", out, *base]))
    saved = json.loads((out / "seed_0" / "metrics.json").read_text())["test"]
    assert ev["metrics"] == pytest.approx(saved, abs=1e-6, nan_ok=True)
    invoke(heads, ["predict", out, *base, "--split", "train", "--out", tmp_path / "train.csv"])
    assert (tmp_path / "train.csv").read_text() == (out / "seed_0" / "predictions_train.csv").read_text()
    invoke(heads, ["predict", out, *base, "--split", "train", "--train-image", "clip336", "--out",
                   tmp_path / "other.csv"])  # another train set given: other features, other probabilities
    with open(tmp_path / "other.csv", newline="") as f, open(tmp_path / "train.csv", newline="") as g:
        assert [r[1] for r in csv.reader(f)] != [r[1] for r in csv.reader(g)]
    # a file without train rows (what a test set alone is): the run's train image set has nothing to replace
    invoke(heads, ["predict", out, "--store", world["store"], "--dataset", world["data"] / "dev_seen.jsonl",
                   "--image-root", world["data"], "--device", "cpu", "--out", tmp_path / "dev.csv"])
    assert (tmp_path / "dev.csv").read_text() == (out / "seed_0" / "predictions_dev.csv").read_text()


def test_a_sweep_refuses_a_train_image(world, tmp_path):
    line = one_line_error(heads, ["sweep", "--store", world["store"], "--dataset", world["data"], "--image",
                                  "clip336", "--text", "txt", "--train-image", "clip224", "--head", "concat",
                                  "--seeds", "0", "--device", "cpu", "--out", tmp_path / "s"])
    assert line == ("error: --train-image is for heads train / eval / predict (one image set); a sweep over "
                    "several image sets takes none: train that row with heads train")
    assert not (tmp_path / "s").exists()
