"""Training loop, run folders and TrainData on a synthetic task whose answer needs both modalities."""
from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from featstore.errors import FeatstoreError
from heads.data import TrainData, normalise_boxes
from heads.experiment import evaluate_run, predict_run, train_run, train_seeds
from heads.runs import load_run
from heads.spec import Task, TaskSpec
from heads.train import TrainConfig, resolve_monitor, train

BINARY = TaskSpec([Task("label", "binary", 2, ["0", "1"])])


def xor_data(seed=0, n_img=8, n_txt=8, reps=5, dim=16, regions=4, tokens=5, noise=0.3, spec=BINARY, extra=None):
    """Images i (bit a = i % 2) paired with text clusters j (bit b = j % 2); label = a XOR b.

    Every image is seen with texts of both labels, so neither modality alone predicts the label. Rows
    (fresh noise per row) are split at random 60/20/20 into train/dev/test: dev/test pairs are held out.
    """
    g = np.random.default_rng(seed)
    img_c = g.normal(size=(n_img, dim)) * 1.5
    txt_c = g.normal(size=(n_txt, dim)) * 1.5
    rows = [(i, j, r) for i in range(n_img) for j in range(n_txt) for r in range(reps)]
    n = len(rows)
    ii = np.array([r[0] for r in rows])
    jj = np.array([r[1] for r in rows])
    y = (ii % 2) ^ (jj % 2)
    reg = img_c[ii][:, None, :] + noise * g.normal(size=(n, regions, dim))
    tok = txt_c[jj][:, None, :] + noise * g.normal(size=(n, tokens, dim))
    img_mask = np.ones((n, regions), bool)
    img_mask[::3, -1] = False
    txt_mask = np.arange(tokens)[None, :] < g.integers(2, tokens + 1, size=n)[:, None]
    boxes = np.sort(g.uniform(0, 1, size=(n, regions, 2, 2)), axis=2).reshape(n, regions, 4)[..., [0, 2, 1, 3]]
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    features = {"img_regions": f(reg), "img_mask": torch.tensor(img_mask), "img_pooled": f(reg.mean(1)),
                "txt_tokens": f(tok), "txt_mask": torch.tensor(txt_mask), "txt_pooled": f(tok.mean(1)),
                "img_boxes": f(np.concatenate([boxes, (boxes[..., 2:3] - boxes[..., 0:1]) *
                                               (boxes[..., 3:4] - boxes[..., 1:2])], -1))}
    u = g.permutation(n)
    split_names = np.where(u < 0.6 * n, "train", np.where(u < 0.8 * n, "dev", "test"))
    splits = {s: torch.tensor(np.where(split_names == s)[0]) for s in ("train", "dev", "test")}
    targets = {"label": torch.tensor(y, dtype=torch.long)}
    if extra:
        targets.update(extra(ii, jj))
    return TrainData(features, [f"s{k:04d}" for k in range(n)], targets, splits, spec,
                     meta={"features": {"image": {"name": "img", "version": "v1"}, "text": {"name": "txt", "version": "v2"}},
                           "dataset_fingerprint": "abc"})


FAST = dict(lr=3e-3, epochs=30, batch_size=32, warmup_ratio=0.05, patience=0, weight_decay=0.0, grad_clip=1.0)
TINY_BERT = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2, text_start_layer=0,
                 v_hidden_size=32, v_num_attention_heads=2, v_intermediate_size=64, v_num_hidden_layers=1,
                 bi_hidden_size=32, bi_num_attention_heads=2, v_biattention_id=[0], t_biattention_id=[1],
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, v_hidden_dropout_prob=0.0,
                 v_attention_probs_dropout_prob=0.0)
FUSION = {
    "concat": dict(hidden=[32], dropout=0.0),
    "cross": dict(proj_dim=8, hidden=[32], dropout=0.0, proj_dropout=0.0),
    "gnn": dict(hidden=32, num_layers=2, dropout=0.0),
    "vilbert": TINY_BERT,
    "singlestream": dict(hidden=32, heads=2, layers=2, ffn=64, dropout=0.0),
    "refnet": dict(base="concat", base_cfg=dict(hidden=[32], dropout=0.0), refiner_hidden=[16]),
}


@pytest.fixture(scope="module")
def data():
    return xor_data()


@pytest.mark.parametrize("head", sorted(FUSION))
def test_fusion_heads_learn_xor(data, head):
    cfg = TrainConfig(head=head, head_cfg=FUSION[head], **FAST)
    res = train(cfg, data, progress=False)
    idx = data.splits["test"]
    assert res.metrics["test"]["label/auroc"] > 0.9, (head, res.metrics["test"])
    # the reported metric is the AUROC of the restored best model's own outputs
    from heads.train import predict_logits
    p = torch.softmax(predict_logits(res.model, data, idx)["label"], -1)[:, 1].numpy()
    assert res.metrics["test"]["label/auroc"] == pytest.approx(roc_auc_score(data.targets["label"][idx].numpy(), p))


@pytest.mark.parametrize("head", ["text-only", "image-only"])
def test_unimodal_heads_stay_near_chance(data, head):
    res = train(TrainConfig(head=head, head_cfg=dict(hidden=[32], dropout=0.0), **FAST), data, progress=False)
    assert res.metrics["test"]["label/auroc"] < 0.65


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_same_numbers_other_seed_differs(data):
    cfg = TrainConfig(head="concat", head_cfg=dict(hidden=[16], dropout=0.2), **{**FAST, "epochs": 4})
    a, b = train(cfg, data, progress=False), train(cfg, data, progress=False)
    c = train(dataclasses.replace(cfg, seed=1), data, progress=False)
    assert a.metrics == b.metrics and a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    wa, wb, wc = _weights(a.model), _weights(b.model), _weights(c.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_early_stopping_restores_best(data):
    cfg = TrainConfig(head="concat", head_cfg=dict(hidden=[16], dropout=0.0), monitor="loss",
                      **{**FAST, "epochs": 40, "patience": 2, "lr": 0.05, "warmup_ratio": 0.0})
    res = train(cfg, data, progress=False)
    losses = [r["val_loss"] for r in res.history]
    assert res.monitor == "loss" and res.best_epoch == int(np.argmin(losses)) + 1
    assert len(res.history) == res.best_epoch + 2 or len(res.history) == 40
    assert res.metrics["dev"]["label/auroc"] == pytest.approx(res.history[res.best_epoch - 1]["val_label/auroc"])


def test_run_folder_reopens(tmp_path, data):
    cfg = TrainConfig(head="concat", head_cfg=dict(hidden=[16], dropout=0.0), **{**FAST, "epochs": 5})
    res = train_run(cfg, data, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["features"]["text"] == {"name": "txt", "version": "v2"} and config["dataset_fingerprint"] == "abc"
    assert config["train"]["lr"] == cfg.lr and config["head_config"]["hidden"] == [16]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["seed"] == 0 and set(metrics) >= {"train", "dev", "test"}
    assert metrics["test"]["label/auroc"] == pytest.approx(res.metrics["test"]["label/auroc"])
    with open(run / "history.csv") as f:
        hist = list(csv.DictReader(f))
    assert len(hist) == 5 and float(hist[2]["train_loss"]) == pytest.approx(res.history[2]["train_loss"])
    assert json.loads((run / "history.json").read_text())[4]["lr"] == pytest.approx(res.history[4]["lr"])
    # predictions CSV = the model's outputs, by id, in the challenge layout
    with open(run / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "proba", "label"]
    idx = data.splits["test"]
    with torch.no_grad():
        p = torch.softmax(res.model(data.batch(idx))["logits"]["label"], -1)[:, 1].numpy()
    by_id = {r["id"]: (float(r["proba"]), int(r["label"])) for r in rows}
    for k, i in enumerate(idx.tolist()):
        assert by_id[data.ids[i]][0] == pytest.approx(p[k], abs=1e-6)
        assert by_id[data.ids[i]][1] == int(p[k] > 0.5)
    # weights reload into an equal model
    model, cfg2 = load_run(run)
    sd = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(sd[k], v) for k, v in res.model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(model(data.batch(idx))["logits"]["label"], res.model(data.batch(idx))["logits"]["label"])
    for png in ("roc_test.png", "roc_dev.png", "learning_curve.png"):
        with Image.open(run / png) as im:
            im.load()
            assert im.width > 200 and im.height > 200 and len(np.unique(np.asarray(im.convert("L")))) > 10
    assert evaluate_run(run, data, "test")["label/auroc"] == pytest.approx(res.metrics["test"]["label/auroc"])
    out = predict_run(run, data, tmp_path / "all.csv")
    with open(out) as f:
        assert [r["id"] for r in csv.DictReader(f)] == data.ids


def test_multitask_run_with_multilabel_and_multiclass(tmp_path):
    def extra(ii, jj):
        ml = np.stack([ii % 2, jj % 2, (ii + jj) % 2], 1).astype(np.float32)
        ml[::7] = np.nan  # missing rows
        mc = torch.tensor(((ii % 2) * 2 + (jj % 2)), dtype=torch.long)
        mc[::5] = -1
        return {"genres": torch.tensor(ml), "level": mc}

    spec = TaskSpec([Task("label", "binary", 2, ["0", "1"], 0.4), Task("genres", "multilabel", 3, ["a", "b", "c"], 0.3),
                     Task("level", "multiclass", 4, ["w", "x", "y", "z"], 0.3)])
    d = xor_data(spec=spec, extra=extra)
    cfg = TrainConfig(head="concat", head_cfg=dict(hidden=[32], dropout=0.0), class_weights="auto", **FAST)
    res = train_run(cfg, d, tmp_path, progress=False)
    assert res.monitor == "score"
    m = res.metrics["test"]
    assert m["genres/micro_f1"] > 0.8 and m["level/macro_f1"] > 0.6
    assert m["score"] == pytest.approx(np.mean([m["label/auroc"], m["genres/macro_f1"], m["level/macro_f1"]]))
    assert {"train_loss_label", "train_loss_genres", "train_loss_level"} <= set(res.history[0])
    with open(tmp_path / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["id", "label:0", "label:1", "label", "genres:a"]
    probs = res.probs["test"]["level"]
    assert rows[3]["level"] == "wxyz"[int(probs[3].argmax())]
    assert float(rows[3]["genres:b"]) == pytest.approx(float(res.probs["test"]["genres"][3, 1]))


def test_refnet_pretrain_and_label_fraction(data):
    cfg = TrainConfig(head="refnet", head_cfg=FUSION["refnet"], pretrain_epochs=2, label_fraction=0.2,
                      **{**FAST, "epochs": 2})
    res = train(cfg, data, progress=False)
    assert "train_loss_refiner" in res.history[0] and "train_loss_ms" in res.history[0]
    assert {"train", "dev", "test"} <= set(res.metrics)
    # the run learns from a seeded, stratified 20 % of the labelled train rows (each class within one row of 20 %)
    from heads.train import labelled_train_rows

    full = labelled_train_rows(TrainConfig(head="concat"), data).cpu().numpy()
    rows = labelled_train_rows(cfg, data).cpu().numpy()
    assert set(rows) < set(full) and len(rows) == int(0.2 * len(full))
    y = data.targets[data.task_spec.tasks[0].name].cpu().numpy()
    for c in np.unique(y[full]):
        assert abs((y[rows] == c).sum() - 0.2 * (y[full] == c).sum()) <= 1, c
    assert np.array_equal(rows, labelled_train_rows(cfg, data).cpu().numpy())
    assert not np.array_equal(rows, labelled_train_rows(dataclasses.replace(cfg, seed=1), data).cpu().numpy())


def test_label_fraction_trains_on_exactly_the_chosen_rows(data):
    """A run with label_fraction learns what a run whose train split holds only the chosen rows learns: the same
    weights bit for bit; a split with one chosen row swapped for an unchosen one learns something else."""
    from heads.train import labelled_train_rows

    cfg = TrainConfig(head="concat", head_cfg=dict(hidden=[16], dropout=0.0), label_fraction=0.3, seed=2, threads=1,
                      **{**FAST, "epochs": 2})
    chosen = labelled_train_rows(cfg, data)
    unchosen = sorted(set(data.split("train").tolist()) - set(chosen.tolist()))

    def weights(train_rows, fraction):
        on = data if train_rows is None else dataclasses.replace(data, splits={**data.splits, "train": train_rows})
        return train(dataclasses.replace(cfg, label_fraction=fraction), on, progress=False).model.state_dict()

    got = weights(None, 0.3)
    want = weights(chosen, None)
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in got)
    swapped = chosen.clone()
    swapped[0] = unchosen[0]
    other = weights(swapped, None)
    assert any(not torch.equal(got[k], other[k]) for k in got)


def test_train_seeds_summary(tmp_path, data):
    cfg = TrainConfig(head="concat", head_cfg=dict(hidden=[8], dropout=0.0), **{**FAST, "epochs": 2})
    summary = train_seeds(cfg, data, [0, 3], tmp_path)
    vals = [json.loads((tmp_path / f"seed_{s}" / "metrics.json").read_text())["test"]["label/auroc"] for s in (0, 3)]
    st = summary["summary"]["test"]["label/auroc"]
    assert st["mean"] == pytest.approx(np.mean(vals)) and st["std"] == pytest.approx(np.std(vals, ddof=1))
    assert json.loads((tmp_path / "summary.json").read_text())["seeds"] == [0, 3]


def test_normalise_boxes_hand_computed():
    b = normalise_boxes(torch.tensor([[[10.0, 20.0, 50.0, 60.0]]]), torch.tensor([[100, 200]]))
    torch.testing.assert_close(b, torch.tensor([[[0.1, 0.1, 0.5, 0.3, 1600 / 20000]]]))
    # an inverted box (x2 < x1) keeps its negative area, as MMF's TransformerBboxProcessor computes it
    b = normalise_boxes(torch.tensor([[[50.0, 20.0, 10.0, 60.0]]]), torch.tensor([[100, 200]]))
    torch.testing.assert_close(b, torch.tensor([[[0.5, 0.1, 0.1, 0.3, -1600 / 20000]]]))


def test_batch_and_input_spec(data):
    idx = torch.tensor([5, 0, 5])
    b = data.batch(idx)
    assert torch.equal(b["img_regions"][0], data.features["img_regions"][5]) and b["txt_mask"].shape == (3, 5)
    s = data.input_spec()
    assert (s.img_dim, s.txt_dim, s.img_regions, s.txt_tokens, s.img_boxes) == (16, 16, 4, 5, True)


# ------------------------------------------------------------------------------------------ bad input

def test_bad_train_inputs(data, tmp_path):
    no_dev = dataclasses.replace(data, splits={"train": data.splits["train"]})
    with pytest.raises(FeatstoreError, match="--val-fraction"):
        train(TrainConfig(epochs=1), no_dev, progress=False)
    with pytest.raises(FeatstoreError, match="not a metric"):
        resolve_monitor(TrainConfig(monitor="bleu"), BINARY)
    with pytest.raises(FeatstoreError, match="pretrain_epochs=0"):
        train(TrainConfig(head="concat", head_cfg=dict(hidden=[8]), pretrain_epochs=1, epochs=1), data, progress=False)
    with pytest.raises(FeatstoreError, match="label_fraction"):
        train(TrainConfig(label_fraction=1.5), data, progress=False)
    with pytest.raises(FeatstoreError, match="lr="):
        train(TrainConfig(lr=0), data, progress=False)
    with pytest.raises(FeatstoreError, match="unknown head"):
        train(TrainConfig(head="nope", epochs=1), data, progress=False)
    with pytest.raises(FeatstoreError, match="schedule"):
        train(TrainConfig(head_cfg=dict(hidden=[8]), schedule="step", epochs=1), data, progress=False)
    with pytest.raises(FeatstoreError, match="is unknown"):
        TrainConfig.from_dict({"learning_rate": 1})
    unlabelled = dataclasses.replace(data, targets={"label": torch.full_like(data.targets["label"], -1)})
    with pytest.raises(FeatstoreError, match="no labelled validation"):
        train(TrainConfig(epochs=1), unlabelled, progress=False)


def test_bad_train_data(data):
    f = data.features
    with pytest.raises(FeatstoreError, match="rows for"):
        TrainData({**f, "img_pooled": f["img_pooled"][:3]}, data.ids, data.targets, data.splits, BINARY)
    with pytest.raises(FeatstoreError, match="split 'train' lists sample id 'a' twice"):
        TrainData(f, ["a"] * len(data.ids), data.targets, data.splits, BINARY)
    with pytest.raises(FeatstoreError, match="not a batch key"):
        TrainData({**f, "pixels": f["img_pooled"]}, data.ids, data.targets, data.splits, BINARY)
    with pytest.raises(FeatstoreError, match="pass both"):
        TrainData({k: v for k, v in f.items() if k != "img_mask"}, data.ids, data.targets, data.splits, BINARY)
    with pytest.raises(FeatstoreError, match="no targets"):
        TrainData(f, data.ids, {}, data.splits, BINARY)
    with pytest.raises(FeatstoreError, match="outside"):
        TrainData(f, data.ids, data.targets, {"train": torch.tensor([10 ** 6])}, BINARY)
    with pytest.raises(FeatstoreError, match="is empty"):
        dataclasses.replace(data, splits={**data.splits, "dev": torch.tensor([], dtype=torch.long)}).split("dev")
    with pytest.raises(FeatstoreError, match="does not exist"):
        data.split("holdout")


def test_bad_run_folders(tmp_path, data):
    with pytest.raises(FeatstoreError, match="does not exist"):
        load_run(tmp_path / "missing")
    cfg = TrainConfig(head="concat", head_cfg=dict(hidden=[8], dropout=0.0), **{**FAST, "epochs": 1})
    train_run(cfg, data, tmp_path / "r", progress=False)
    pooled_only = dataclasses.replace(data, features={k: data.features[k] for k in ("img_pooled", "txt_pooled")})
    with pytest.raises(FeatstoreError, match="does not match run"):
        evaluate_run(tmp_path / "r", pooled_only, "test")
    with pytest.raises(FeatstoreError, match="does not exist"):
        evaluate_run(tmp_path / "r", data, "holdout")
    (tmp_path / "r" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(FeatstoreError, match="does not fit"):
        load_run(tmp_path / "r")
    (tmp_path / "r" / "model.safetensors").unlink()
    with pytest.raises(FeatstoreError, match="did not finish"):
        load_run(tmp_path / "r")
    (tmp_path / "r" / "config.json").write_text("{not json")
    with pytest.raises(FeatstoreError, match="not valid JSON"):
        load_run(tmp_path / "r")
    with pytest.raises(FeatstoreError, match="no seeds"):
        train_seeds(cfg, data, [], tmp_path / "s")
    with pytest.raises(FeatstoreError, match="repeat"):
        train_seeds(cfg, data, [1, 1], tmp_path / "s")


# ---------------------------------------------------------------------------------------- from a store

def test_build_train_data_joins_by_key(tmp_path):
    from types import SimpleNamespace

    from featstore.store import Recipe, open_store
    from heads.data import build_train_data

    store = open_store(str(tmp_path / "store"), create=True)
    g = np.random.default_rng(0)
    samples = [SimpleNamespace(id=str(k), image_key=f"{k // 2:05d}", text=f"t{k}", labels={"label": k % 2},
                               split="train" if k < 8 else "dev") for k in range(12)]
    img_keys = [f"{i:05d}" for i in range(6)][::-1]  # stored in another order than the manifest
    regions = g.normal(size=(6, 3, 4)).astype(np.float32)
    boxes = np.tile(np.array([0, 0, 50, 20], np.float32), (6, 3, 1))
    sizes = np.tile(np.array([100, 40], np.int32), (6, 1))
    store.write("img", Recipe("test-img"), img_keys, {"regions": regions, "boxes": boxes, "image_size": sizes,
                "pooled": regions.mean(1), "count": np.array([3, 2, 3, 1, 3, 3], np.int32)},
                key_kind="image_key", modality="image", per_item=("regions", "boxes"))
    cls = g.normal(size=(12, 5)).astype(np.float32)
    txt_ids = [str(k) for k in range(12)][::-1]
    store.write("txt", Recipe("test-txt"), txt_ids, {"cls": cls}, key_kind="sample_id", modality="text")
    ds = SimpleNamespace(samples=samples, fingerprint="fp")
    d = build_train_data(store, ds, "img", "txt", "label", device="cpu", dtype=torch.float32)
    for r, s in enumerate(samples):
        i = img_keys.index(s.image_key)
        np.testing.assert_array_equal(d.features["img_regions"][r].numpy()[d.features["img_mask"][r].numpy()],
                                      regions[i][:[3, 2, 3, 1, 3, 3][i]])
        np.testing.assert_array_equal(d.features["txt_pooled"][r].numpy(), cls[txt_ids.index(s.id)])
    torch.testing.assert_close(d.features["img_boxes"][0, 0], torch.tensor([0, 0, 0.5, 0.5, 0.25]))
    assert d.targets["label"].tolist() == [k % 2 for k in range(12)] and d.splits["dev"].tolist() == [8, 9, 10, 11]
    assert d.meta["features"]["image"]["name"] == "img" and d.meta["dataset_fingerprint"] == "fp"
    with pytest.raises(FeatstoreError, match="swap"):
        build_train_data(store, ds, "txt", "img", "label")
    more = SimpleNamespace(samples=samples + [SimpleNamespace(id="99", image_key="00099", text="", labels={"label": 0},
                                                              split="train")])
    with pytest.raises(FeatstoreError, match="00099"):
        build_train_data(store, more, "img", "txt", "label")
    with pytest.raises(FeatstoreError, match="no feature set"):
        build_train_data(store, ds, None, None, "label")


def test_a_gpu_sized_head_on_a_cpu_says_so_before_training(data, tmp_path):
    """cross at the reference's defaults (n = 768: a 768^2 x 768 pre-output Linear) is GPU-sized; train_heads
    says so right after its start line, before any weight is allocated (the generator is closed there)."""
    from heads.experiment import train_heads

    lines = train_heads(TrainConfig(head="cross"), data, tmp_path / "run", [0], progress=False)
    start, note = next(lines), next(lines)
    lines.close()
    n = (16 * 768 + 768) * 2 + (768 * 768 + 1) * 768 + 769 * 2  # both maps, the pre-output Linear, the output
    assert start.startswith("training head cross on 320 samples")
    assert note == (f"note: cross has {n / 1e6:.1f} M parameters at these options: GPU-sized, hours a seed on a "
                    "CPU; --preset hateclipper-cross trains in minutes here")
    small = train_heads(TrainConfig(head="cross", head_cfg=FUSION["cross"]), data, tmp_path / "small", [0],
                        progress=False)
    next(small)
    assert not next(small).startswith("note:")  # the next line is the threads line, after the first seed
    small.close()
    rgcl = train_heads(TrainConfig(head="cross", head_cfg=FUSION["cross"], rgcl={}), data, tmp_path / "rgcl", [0],
                       progress=False)
    assert next(rgcl) == (f"training head cross with RGCL's retrieval-guided contrastive loss on 320 samples, seeds 0 "
                          f"-> {tmp_path / 'rgcl'}")
    rgcl.close()


def test_batchnorm_head_with_a_last_batch_of_one_row_is_refused_before_training(data, tmp_path):
    """image-only with batch_norm (MMF's MLPClassifer) cannot train on a batch of one row: refused before --out
    is written, with a batch size that works."""
    from heads.experiment import train_heads
    from heads.train import labelled_train_rows

    n = len(labelled_train_rows(TrainConfig(head="image-only"), data))
    cfg = TrainConfig(head="image-only", head_cfg={"hidden": [8], "batch_norm": True}, batch_size=n - 1, epochs=1)
    with pytest.raises(FeatstoreError) as e:
        next(train_heads(cfg, data, tmp_path / "run", [0], progress=False))
    assert str(e.value) == (f"head 'image-only' has BatchNorm layers and its {n} train rows at --batch-size {n - 1} "
                            f"leave a last batch of one row, which BatchNorm cannot train on; pass --batch-size {n}")
    assert not (tmp_path / "run").exists()
    list(train_heads(dataclasses.replace(cfg, batch_size=n), data, tmp_path / "ok", [0], progress=False))
    assert (tmp_path / "ok" / "seed_0" / "config.json").exists()  # the suggested size trains to the end
