"""The embedded demo: its dataset is built the way Hateful Memes is (confounders), and the README's main job
runs end to end on the real demo backbones."""
from __future__ import annotations

import json
from collections import defaultdict

from featstore.datasets import load_dataset
from featstore.demo import build_demo_dataset, captions
from featstore.demo.job import run_demo
from featstore.store import open_store


def test_demo_dataset_is_made_of_confounders(tmp_path):
    folder = build_demo_dataset(tmp_path / "d")
    ds = load_dataset(folder)
    caps = captions()
    assert len(ds.samples) == 6 * len(caps)
    assert {s.split for s in ds.samples} == {"train", "dev_seen", "test_seen"}
    assert all(len(s.image_key) == 5 and s.image_key.isdigit() for s in ds.samples)  # leading zeros kept
    by_text, by_image = defaultdict(list), defaultdict(list)
    for s in ds.samples:
        by_text[s.text].append(s.labels["label"])
        by_image[s.image_key].append(s.labels["label"])
    assert all(sorted(v) == [0, 1] for v in by_text.values())  # every caption: once right, once wrong
    assert all(sorted(v) == [0, 0, 0, 1, 1, 1] for v in by_image.values())  # every photo: both labels
    # test texts are paraphrases never seen in training
    train_texts = {s.text for s in ds.samples if s.split == "train"}
    assert not train_texts & {s.text for s in ds.samples if s.split == "test_seen"}
    # rebuilding is idempotent (same files, same fingerprint)
    assert load_dataset(build_demo_dataset(tmp_path / "d")).fingerprint == ds.fingerprint
    rows = [json.loads(l) for l in (folder / "train.jsonl").read_text().splitlines()]
    assert all(isinstance(r["id"], int) for r in rows)


def test_main_job_extracts_and_trains_fusion_above_unimodal(tmp_path):
    lines = list(run_demo(str(tmp_path / "store"), str(tmp_path / "data"), progress=False))
    text = "\n".join(lines)
    st = open_store(tmp_path / "store")
    for name in ("demo-grid", "demo-minilm"):
        assert f"{name}@{st.open(name).version}" in text
    table = {l.split()[0]: [float(x) for x in l.split()[1:]] for l in lines[-3:]}
    header = lines[-4].split()
    auroc = header.index("auroc") - 1
    assert table["concat"][auroc] > 0.8  # only the fused head can tell a fitting caption from a foreign one
    assert table["text-only"][auroc] < 0.7 and table["image-only"][auroc] < 0.7
