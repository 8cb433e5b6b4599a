"""The embedded demo: its dataset is laid out and built like Hateful Memes (confounders, leading-zero image
names, integer ids), and the README's main job extracts both feature sets with the real demo backbones."""
from __future__ import annotations

import json
from collections import defaultdict

import pytest
from PIL import Image

from featstore.datasets import load_dataset
from featstore.demo import build_demo_dataset, captions
from featstore.demo.job import DEMO_IMAGE, DEMO_TEXT, run_demo
from featstore.store import open_store


def test_demo_dataset_is_made_of_confounders(tmp_path):
    folder = build_demo_dataset(tmp_path / "d")
    assert sorted(p.name for p in folder.glob("*.jsonl")) == ["dev_seen.jsonl", "test_seen.jsonl", "train.jsonl"]
    ds = load_dataset(folder)
    caps = captions()
    assert len(ds.samples) == 150 == 6 * len(caps)
    by_split = defaultdict(int)
    for s in ds.samples:
        by_split[s.split] += 1
    assert set(by_split) == {"train", "dev_seen", "test_seen"} and by_split["train"] == 100
    assert by_split["dev_seen"] + by_split["test_seen"] == 50
    # image keys keep the file name's leading zeros; every image is a real, readable picture
    assert sorted(ds.image_keys()) == [f"{i:05d}" for i in range(len(caps))]
    for s in ds.samples[:3]:
        with Image.open(s.image_path) as im:
            im.verify()
    by_text, by_image = defaultdict(list), defaultdict(list)
    for s in ds.samples:
        by_text[s.text].append(s.labels["label"])
        by_image[s.image_key].append(s.labels["label"])
    assert len(by_text) == 75
    assert all(sorted(v) == [0, 1] for v in by_text.values())  # every caption exactly twice, opposite labels
    assert all(0 in v and 1 in v for v in by_image.values())  # every photo with both labels
    train_texts = {s.text for s in ds.samples if s.split == "train"}
    assert not train_texts & {s.text for s in ds.samples if s.split != "train"}  # evaluation texts are unseen
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert all(isinstance(r["id"], int) for r in rows)
    # rebuilding is idempotent (same files, same fingerprint)
    assert load_dataset(build_demo_dataset(tmp_path / "d")).fingerprint == ds.fingerprint


@pytest.mark.slow  # over 30 s on two loaded cores; CI runs it, `-m "not slow"` skips it
def test_main_job_extracts_both_demo_sets_and_only_fusion_solves_the_task(tmp_path):
    """The README's main job as written: extraction, then a fusion head and both unimodal baselines."""
    lines = list(run_demo(str(tmp_path / "store"), str(tmp_path / "data"), progress=False))
    text = "\n".join(lines)
    assert lines[0].startswith("demo dataset: 150 samples, 25 photos in")
    st = open_store(tmp_path / "store")
    assert sorted(st.feature_sets()) == sorted([DEMO_IMAGE["name"], DEMO_TEXT["name"]])
    grid, minilm = st.open(DEMO_IMAGE["name"]), st.open(DEMO_TEXT["name"])
    assert f"feature set {grid.ref}: 25 rows, 0 failed" in text
    assert f"feature set {minilm.ref}: 150 rows, 0 failed" in text
    assert grid.modality == "image" and len(grid) == 25 and "pooled" in grid.array_names
    assert minilm.modality == "text" and len(minilm) == 150 and "layer_3" in minilm.array_names
    header = next(i for i, l in enumerate(lines) if l.split()[:1] == ["head"])
    cols = lines[header].split()[1:]
    table = {l.split()[0]: dict(zip(cols, map(float, l.split()[1:]))) for l in lines[header + 1:header + 4]}
    assert set(table) == {"concat", "text-only", "image-only"}
    # the captions fit their photo or not: only a model that sees both can tell (unimodal is chance by design)
    assert table["concat"]["auroc"] > 0.8
    assert table["text-only"]["auroc"] < 0.7 and table["image-only"]["auroc"] < 0.7


def test_demo_dataset_without_the_bundled_photos_is_one_error(tmp_path, monkeypatch):
    """A broken scikit-image install (its bundled photos gone): one FeatstoreError, nothing written."""
    import pytest
    from cli_helpers import one_line_error

    import featstore.demo as demo
    from cli.featstore_cli import main as featstore
    from featstore.errors import FeatstoreError

    monkeypatch.setattr(demo, "skimage_data_dir", lambda: tmp_path / "empty")
    with pytest.raises(FeatstoreError, match="reinstall scikit-image"):
        build_demo_dataset(tmp_path / "d")
    line = one_line_error(featstore, ["demo", "--store", tmp_path / "s", "--data", tmp_path / "d2", "--no-heads",
                                      "--quiet"])
    assert "scikit-image" in line and not (tmp_path / "s").exists()
    assert not list((tmp_path / "d2").glob("*.jsonl"))
