"""Losses, metrics, schedule, task derivation and splits against independent references."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from torchvision.ops import sigmoid_focal_loss

from featstore.errors import FeatstoreError
from heads.data import dataset_splits
from heads.losses import LossConfig, auto_class_weights, build_losses, build_task_loss, multitask_loss
from heads.metrics import compute_metrics, format_mean_std, mean_std, task_metrics
from heads.schedule import build_scheduler
from heads.spec import Task, TaskSpec
from heads.tasks import derive_task_spec, encode_targets

BIN = Task("label", "binary", 2, ["0", "1"])
MC = Task("A", "multiclass", 3, ["negative", "neutral", "positive"])
ML = Task("genres", "multilabel", 3, ["a", "b", "c"])
ML2 = Task("B", "multilabel", 2, ["humour", "sarcasm"])


# ------------------------------------------------------------------------------------------------ metrics

def test_binary_metrics_hand_computed():
    y = np.array([0, 0, 1, 1, -1])
    p1 = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    m, w = task_metrics(BIN, y, np.stack([1 - p1, p1], 1))
    # pairs (pos, neg): (0.4,0.1) ok, (0.4,0.6) wrong, (0.8,*) ok -> 3/4; preds [0,1,0,1] -> acc 0.5
    assert m["n"] == 4 and m["auroc"] == 0.75 and m["accuracy"] == 0.5 and m["f1"] == 0.5 and not w


def test_multilabel_metrics_hand_computed():
    y = np.array([[1, 0, 1], [0, 1, 1], [np.nan] * 3])
    p = np.array([[0.9, 0.2, 0.4], [0.3, 0.7, 0.8], [0.5, 0.5, 0.5]])
    m, _ = task_metrics(ML, y, p)
    # decisions [[1,0,0],[0,1,1]]: tp=3, fp=0, fn=1 -> micro F1 = 6/7
    assert m["micro_f1"] == pytest.approx(6 / 7) and m["subset_accuracy"] == 0.5


@pytest.mark.parametrize("task", [BIN, MC, ML])
def test_metrics_equal_sklearn_on_random_predictions(task):
    g = np.random.default_rng(3)
    n = 60
    if task.kind == "multilabel":
        y = g.integers(0, 2, size=(n, 3)).astype(float)
        p = g.uniform(size=(n, 3))
        m, _ = task_metrics(task, y, p)
        d = (p > 0.5).astype(int)
        assert m["micro_auroc"] == pytest.approx(roc_auc_score(y.ravel(), p.ravel()))
        assert m["macro_auroc"] == pytest.approx(roc_auc_score(y, p, average="macro"))
        for avg in ("micro", "macro", "weighted", "samples"):
            assert m[f"{avg}_f1"] == pytest.approx(f1_score(y, d, average=avg))
        return
    y = g.integers(0, task.num_outputs, size=n)
    p = g.dirichlet(np.ones(task.num_outputs), size=n)
    m, _ = task_metrics(task, y, p)
    d = p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, d))
    for avg in ("macro", "micro", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(f1_score(y, d, average=avg))
    ref = roc_auc_score(y, p[:, 1]) if task.kind == "binary" else roc_auc_score(y, p, multi_class="ovr")
    assert m["auroc"] == pytest.approx(ref)


def _f1(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def test_multilabel_decisions_are_above_one_half_as_mmf_rounds_them():
    from heads.metrics import predictions

    p = np.array([[0.5, 0.5000001, 0.4999999, 0.0, 1.0]])
    mmf = torch.round(torch.tensor(p)).long().numpy()  # MMF's multilabel decision: round half to even, 0.5 -> 0
    np.testing.assert_array_equal(predictions(ML, p), mmf)
    np.testing.assert_array_equal(mmf, [[0, 1, 0, 0, 1]])


def test_memotion_task_b_and_mmimdb_samples_f1_hand_computed():
    """Memotion's Task B scores each emotion as a two-class task (F1 of "not x" and of "x"), macro (Memotion 1)
    or weighted by support (Memotion 2.0) over the two, then averages the emotions; MM-IMDB's samples F1
    averages each row's F1 of its predicted genres against its true ones. Counted by hand here."""
    y = np.array([[1, 0], [1, 1], [0, 1], [1, 0], [0, 0]], dtype=float)
    p = np.array([[0.9, 0.6], [0.2, 0.7], [0.4, 0.8], [0.8, 0.1], [0.6, 0.3]])  # decisions [1,1] [0,1] [0,1] [1,0] [1,0]
    m, _ = task_metrics(ML2, y, p)
    # label 0: y 1 1 0 1 0, d 1 0 0 1 1 -> class 1: tp 2 fp 1 fn 1; class 0: tp 1 fp 1 fn 1
    # label 1: y 0 1 1 0 0, d 1 1 1 0 0 -> class 1: tp 2 fp 1 fn 0; class 0: tp 2 fp 0 fn 1
    f = {(0, 1): _f1(2, 1, 1), (0, 0): _f1(1, 1, 1), (1, 1): _f1(2, 1, 0), (1, 0): _f1(2, 0, 1)}
    support = {(0, 1): 3, (0, 0): 2, (1, 1): 2, (1, 0): 3}
    macro = np.mean([(f[(c, 0)] + f[(c, 1)]) / 2 for c in (0, 1)])
    weighted = np.mean([(support[(c, 0)] * f[(c, 0)] + support[(c, 1)] * f[(c, 1)]) / 5 for c in (0, 1)])
    assert m["labelwise_macro_f1"] == pytest.approx(macro) and m["labelwise_weighted_f1"] == pytest.approx(weighted)
    assert m["macro_f1"] == pytest.approx((f[(0, 1)] + f[(1, 1)]) / 2) != pytest.approx(macro)  # positive classes only
    # rows: {0}vs{0,1}: 2/3, {0,1}vs{1}: 2/3, {1}vs{1}: 1, {0}vs{0}: 1, {}vs{0}: 0
    assert m["samples_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1 + 0) / 5)
    # a label never true nor predicted has one class, "not x", scored perfectly (F1 1), not 0.5 for a missing "x"
    y1 = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=float)
    m1, _ = task_metrics(ML2, y1, np.where(y1 > 0, 0.9, 0.1))
    assert m1["labelwise_macro_f1"] == 1.0 and m1["labelwise_weighted_f1"] == 1.0


def test_memotion_task_c_is_scored_as_a_group_and_score_counts_each_label_key_once():
    """derive_task_spec names C's per-emotion tasks a group; C/macro_f1 and C/weighted_f1 are the plain means of
    the emotions' sklearn macro / weighted F1 (Memotion's Task C score), and ``score`` averages A, B and C once
    each. A run saved before groups (no "groups" key) still reads."""
    g = np.random.default_rng(5)
    h = ["not_funny", "funny", "very_funny", "hilarious"]
    rows = [S(i, {"A": ["negative", "neutral", "positive"][i % 3], "B": {"humour": int(i % 4 > 0), "sarcasm": i % 2},
                  "C": {"humour": h[i % 4], "sarcasm": ["general", "twisted"][i % 2]}}) for i in range(40)]
    spec = derive_task_spec(rows, "all")
    assert spec.groups == {"C": ["C_humour", "C_sarcasm"]}
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    assert TaskSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "groups"}).groups is None
    y = encode_targets(rows, spec)
    probs = {t.name: (g.uniform(size=(40, t.num_classes)) if t.kind == "multilabel"
                      else g.dirichlet(np.ones(t.num_outputs), 40)) for t in spec.tasks}
    flat, _ = compute_metrics(spec, y, probs)
    emotions = [f1_score(y[n], probs[n].argmax(1), average=avg) for avg in ("macro", "weighted")
                for n in ("C_humour", "C_sarcasm")]
    assert flat["C/macro_f1"] == pytest.approx(np.mean(emotions[:2]))
    assert flat["C/weighted_f1"] == pytest.approx(np.mean(emotions[2:]))
    assert flat["score"] == pytest.approx(np.mean([flat["A/macro_f1"], flat["B/macro_f1"], flat["C/macro_f1"]]))
    from heads.metrics import metric_keys
    assert {"C/macro_f1", "C/weighted_f1", "B/labelwise_macro_f1"} <= set(metric_keys(spec))
    from heads.experiment import headline_keys
    shown = headline_keys(flat)
    assert {"C/macro_f1", "B/micro_f1", "B/macro_f1", "B/labelwise_macro_f1", "A/macro_f1", "score"} <= set(shown)
    assert "A/micro_f1" not in shown and "score" not in headline_keys(["label/auroc", "score"])
    # a split where one emotion has no labelled row: the group averages the other
    y2 = {k: v.copy() for k, v in y.items()}
    y2["C_sarcasm"][:] = -1
    flat2, _ = compute_metrics(spec, y2, probs)
    assert flat2["C/macro_f1"] == pytest.approx(emotions[0]) and "C_sarcasm/macro_f1" not in flat2


def test_single_class_auroc_is_nan_with_warning():
    m, w = task_metrics(BIN, np.array([1, 1, 1]), np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]))
    assert math.isnan(m["auroc"]) and "undefined" in w[0] and m["accuracy"] == pytest.approx(1 / 3)
    m, w = task_metrics(MC, np.array([0, 1, 1]), np.full((3, 3), 1 / 3))
    assert math.isnan(m["auroc"]) and w
    flat, w = compute_metrics(TaskSpec([BIN]), {"label": np.array([0, 0])}, {"label": np.full((2, 2), 0.5)})
    assert math.isnan(flat["score"]) and w


# ------------------------------------------------------------------------------------------------ losses

def _f64_focal(logits, y, gamma, alpha):
    p = torch.softmax(logits.double(), -1)
    out = []
    for i, c in enumerate(y.tolist()):
        pt = p[i, c].item()
        a = alpha if c == 1 else 1 - alpha
        out.append(-a * (1 - pt) ** gamma * math.log(pt))
    return sum(out) / len(out)


def test_binary_focal_equals_float64_and_torchvision():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 2, generator=g) * 2
    y = torch.randint(0, 2, (12,), generator=g)
    y[3] = -1
    fn = build_task_loss(BIN, LossConfig("focal", focal_alpha=0.25, focal_gamma=2.0))
    keep = y >= 0
    got = fn(logits, y).item()
    assert got == pytest.approx(_f64_focal(logits[keep], y[keep], 2.0, 0.25), rel=1e-5)
    # 2-logit softmax focal == sigmoid focal on the logit difference
    tv = sigmoid_focal_loss(logits[keep, 1] - logits[keep, 0], y[keep].float(), alpha=0.25, gamma=2.0, reduction="mean")
    assert got == pytest.approx(tv.item(), rel=1e-5)


def test_multilabel_focal_equals_torchvision_and_float64():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, generator=g)
    y = torch.randint(0, 2, (6, 3), generator=g).float()
    y[2] = float("nan")
    fn = build_task_loss(ML, LossConfig("focal", focal_alpha=0.3, focal_gamma=1.5))
    keep = ~torch.isnan(y).any(1)
    got = fn(logits, y).item()
    ref = sigmoid_focal_loss(logits[keep], y[keep], alpha=0.3, gamma=1.5, reduction="mean").item()
    x, t = logits[keep].double().numpy(), y[keep].double().numpy()
    p = 1 / (1 + np.exp(-x))
    pt = np.where(t == 1, p, 1 - p)
    at = np.where(t == 1, 0.3, 0.7)
    hand = float(np.mean(-at * (1 - pt) ** 1.5 * np.log(pt)))
    assert got == pytest.approx(ref, rel=1e-6) and got == pytest.approx(hand, rel=1e-5)


def test_ce_with_label_smoothing_and_weights_equals_float64():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(10, 3, generator=g)
    y = torch.randint(0, 3, (10,), generator=g)
    y[0] = -1
    w = [1.0, 2.0, 0.5]
    eps = 0.1
    got = build_task_loss(MC, LossConfig("ce", label_smoothing=eps, class_weights=w))(logits, y).item()
    keep = y >= 0
    lp = torch.log_softmax(logits[keep].double(), -1).numpy()
    yy = y[keep].numpy()
    wt = np.array(w)
    # torch semantics: (1-eps) * sum_i w_yi nll_i / sum_i w_yi + eps/C * sum_i sum_c w_c (-lp_ic) / sum_i w_yi
    den = wt[yy].sum()
    nll = -(wt[yy] * lp[np.arange(len(yy)), yy]).sum() / den
    smooth = -(lp * wt[None, :]).sum() / den / 3
    assert got == pytest.approx((1 - eps) * nll + eps * smooth, rel=1e-5)
    assert got == pytest.approx(F.cross_entropy(logits[keep], y[keep], weight=torch.tensor(w), label_smoothing=eps).item())


def test_multilabel_bce_and_auto_weights():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32)
    pw = auto_class_weights(ML, y)
    np.testing.assert_allclose(pw, [1 / 3, 3.0, 3.0])
    logits = torch.randn(4, 3)
    fn = build_task_loss(ML, LossConfig("ce", class_weights="auto", label_smoothing=0.2), y)
    t = torch.tensor(y) * 0.8 + 0.1
    x = logits.double()
    hand = -(torch.tensor(pw, dtype=torch.float64) * t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x)).mean()
    assert fn(logits, torch.tensor(y)).item() == pytest.approx(hand.item(), rel=1e-5)
    bw = auto_class_weights(MC, np.array([0, 0, 1, 2, -1]))
    np.testing.assert_allclose(bw, [4 / 6, 4 / 3, 4 / 3], rtol=1e-6)  # n / (C * count)


def test_multitask_loss_is_weighted_sum_and_skips_missing():
    spec = TaskSpec([Task("label", "binary", 2, [], 0.4), Task("A", "multiclass", 3, [], 0.6)])
    losses = build_losses(spec, LossConfig(), {})
    logits = {"label": torch.randn(4, 2), "A": torch.randn(4, 3)}
    targets = {"label": torch.tensor([0, 1, -1, 1]), "A": torch.full((4,), -1)}
    total, parts = multitask_loss(spec, losses, logits, targets)
    ref = F.cross_entropy(logits["label"][[0, 1, 3]], targets["label"][[0, 1, 3]])
    assert parts["A"].item() == 0.0 and total.item() == pytest.approx(0.4 * ref.item())


def test_bad_loss_configs():
    for cfg, msg in [(LossConfig("hinge"), "--loss ce"), (LossConfig(label_smoothing=1.2), "out of range"),
                     (LossConfig("focal", label_smoothing=0.1), "--loss ce only"),
                     (LossConfig(class_weights=[1.0]), "exactly 3"), (LossConfig(class_weights="balanced"), "not understood"),
                     (LossConfig(class_weights=[1, -1, 1]), "non-negative"), (LossConfig(focal_gamma=-1), "negative")]:
        with pytest.raises(FeatstoreError, match=msg):
            build_task_loss(MC, cfg, np.array([0, 1, 2]))
    with pytest.raises(FeatstoreError, match="no training label"):
        build_task_loss(MC, LossConfig(class_weights="auto"), np.array([0, 0, 1]))
    with pytest.raises(FeatstoreError, match="no positive"):
        auto_class_weights(ML, np.array([[1, 0, 0]], dtype=np.float32))
    with pytest.raises(FeatstoreError, match="ambiguous"):
        build_losses(TaskSpec([BIN, MC]), LossConfig(class_weights=[1, 1]), {})


# ---------------------------------------------------------------------------------------------- schedule

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_matches_hand_computed(kind):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sch = build_scheduler(opt, total_steps=10, warmup_ratio=0.2, kind=kind)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    if kind == "linear":
        ref = [0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    else:
        ref = [0, 0.5] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 10)]
    assert seen == pytest.approx(ref)


def test_bad_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(FeatstoreError, match="--schedule"):
        build_scheduler(opt, 10, 0.1, "step")
    with pytest.raises(FeatstoreError, match="warmup_ratio"):
        build_scheduler(opt, 10, 1.5, "linear")


# ---------------------------------------------------------------------------------------- tasks / splits

def S(i, labels, split="train"):
    return SimpleNamespace(id=str(i), labels=labels, split=split)


MEMOTION = [S(0, {"A": "positive", "B": {"humour": 1, "sarcasm": 0}, "C": {"humour": "funny", "sarcasm": "general"}}),
            S(1, {"A": "negative", "B": {"humour": 0, "sarcasm": 1}, "C": {"humour": "hilarious", "sarcasm": "twisted"}}),
            S(2, {"A": "neutral", "B": {"humour": 1, "sarcasm": 1}, "C": {"humour": "funny", "sarcasm": "general"}}),
            S(3, {}, "test")]


def test_memotion_tasks_and_targets():
    spec = derive_task_spec(MEMOTION, "all")
    names = [t.name for t in spec.tasks]
    assert names == ["A", "B", "C_humour", "C_sarcasm"]
    assert [t.weight for t in spec.tasks] == pytest.approx([0.4, 0.3, 0.15, 0.15])
    assert spec.tasks[0].kind == "multiclass" and spec.tasks[1].kind == "multilabel"
    assert spec.tasks[2].kind == "binary" and spec.tasks[2].class_names == ["funny", "hilarious"]
    y = encode_targets(MEMOTION, spec)
    assert y["A"].tolist() == [2, 0, 1, -1]
    np.testing.assert_array_equal(y["B"][:3], [[1, 0], [0, 1], [1, 1]])
    assert np.isnan(y["B"][3]).all() and y["C_sarcasm"].tolist() == [0, 1, 0, -1]


def test_tasks_take_the_formats_class_order():
    """With the format's TaskInfo (levels typed here from the Memotion task definition, lowest first) classes
    follow it: C_motivation's class 1 is motivational (the binary f1's positive class), C_humour rises with
    intensity; a level never seen has no class; an emotion with one level seen has no task and C's 0.3 is
    shared by the others. Without it (or when it misses a value) classes stay sorted."""
    from featstore.datasets.manifest import TaskInfo

    known = {"A": TaskInfo("A", "multiclass", ("negative", "neutral", "positive")),
             "B": TaskInfo("B", "multilabel", ("humour", "sarcasm", "offense", "motivation")),
             "C_humour": TaskInfo("C_humour", "multiclass", ("not_funny", "funny", "very_funny", "hilarious")),
             "C_motivation": TaskInfo("C_motivation", "binary", ("not_motivational", "motivational")),
             "C_offense": TaskInfo("C_offense", "multiclass", ("not_offensive", "slight", "very_offensive"))}
    levels = [("very_funny", "motivational", "slight"), ("not_funny", "not_motivational", "slight"),
              ("hilarious", "motivational", "slight"), ("funny", "not_motivational", "slight")]
    rows = [S(i, {"B": ["humour", "motivation"][: 1 + i % 2] if i % 3 else ["sarcasm", "offense"],
                  "C": {"humour": h, "motivation": m, "offense": o}}) for i, (h, m, o) in enumerate(levels)]
    spec = derive_task_spec(rows, "B,C", [0.3, 0.3], known)
    got = {t.name: (t.kind, t.class_names, t.weight) for t in spec.tasks}
    assert got == {"B": ("multilabel", ["humour", "sarcasm", "offense", "motivation"], 0.3),
                   "C_humour": ("multiclass", ["not_funny", "funny", "very_funny", "hilarious"], 0.15),
                   "C_motivation": ("binary", ["not_motivational", "motivational"], 0.15)}
    y = encode_targets(rows, spec)
    assert y["C_humour"].tolist() == [2, 0, 3, 1] and y["C_motivation"].tolist() == [1, 0, 1, 0]
    assert derive_task_spec(rows, "C").tasks[0].class_names == ["funny", "hilarious", "not_funny", "very_funny"]  # sorted
    unknown = [S(0, {"C": {"humour": "meh"}}), S(1, {"C": {"humour": "funny"}})]
    assert derive_task_spec(unknown, "C", None, known).tasks[0].class_names == ["funny", "meh"]


def test_hateful_memes_and_mmimdb_tasks():
    hm = [S(0, {"label": 0}), S(1, {"label": 1}, "dev_seen"), S(2, {"label": 1}, "test_seen"), S(3, {}, "test_unseen")]
    spec = derive_task_spec(hm)
    assert spec.tasks[0].kind == "binary" and spec.tasks[0].class_names == ["0", "1"]
    splits = dataset_splits(hm, encode_targets(hm, spec), spec)
    assert {k: v.tolist() for k, v in splits.items()} == {"train": [0], "dev": [1], "test": [2], "test_unseen": [3]}
    mm = [S(0, {"genres": ["Drama", "Comedy"]}), S(1, {"genres": ["Horror"]})]
    spec = derive_task_spec(mm, "genres")
    assert spec.tasks[0].kind == "multilabel" and spec.tasks[0].class_names == ["Comedy", "Drama", "Horror"]
    np.testing.assert_array_equal(encode_targets(mm, spec)["genres"], [[1, 1, 0], [0, 0, 1]])


def test_stratified_val_fraction_is_seeded():
    samples = [S(i, {"label": int(i % 4 == 0)}) for i in range(40)]
    spec = derive_task_spec(samples)
    y = encode_targets(samples, spec)
    a = dataset_splits(samples, y, spec, val_fraction=0.5, seed=1)
    b = dataset_splits(samples, y, spec, val_fraction=0.5, seed=1)
    c = dataset_splits(samples, y, spec, val_fraction=0.5, seed=2)
    assert a["val"].tolist() == b["val"].tolist() != c["val"].tolist()
    assert len(a["val"]) == 20 and y["label"][a["val"]].sum() == 5  # stratified: 10 of 40 positive -> 5 of 20
    assert sorted(a["train"].tolist() + a["val"].tolist()) == list(range(40))


def test_a_levels_key_without_a_task_names_no_group():
    from heads.metrics import metric_keys

    rows = [S(i, {"A": ["negative", "positive"][i % 2], "C": {"humour": "funny"}}) for i in range(4)]
    spec = derive_task_spec(rows, "all")
    assert [t.name for t in spec.tasks] == ["A"] and spec.groups is None
    assert "C/macro_f1" not in metric_keys(spec)


def test_val_split_picks_a_carved_val_over_the_datasets_dev():
    from heads.data import validation_split

    splits = {"train": [0], "val": [1], "dev": [2], "dev_unseen": [3]}
    assert validation_split(splits, "val") == "val" and validation_split(splits, "auto") == "val"
    assert validation_split(splits, "dev_seen") == "dev" and validation_split({"train": [0], "dev": [2]}, "val") == "dev"


def test_bad_task_inputs():
    with pytest.raises(FeatstoreError, match="no labels"):
        derive_task_spec([S(0, {})])
    with pytest.raises(FeatstoreError, match="pass --task"):
        derive_task_spec(MEMOTION)
    with pytest.raises(FeatstoreError, match="no label 'D'"):
        derive_task_spec(MEMOTION, "D")
    with pytest.raises(FeatstoreError, match="one weight per task"):
        derive_task_spec(MEMOTION, "A,B", [1.0])
    with pytest.raises(FeatstoreError, match="single class"):
        derive_task_spec([S(0, {"label": 1}), S(1, {"label": 1})])
    with pytest.raises(FeatstoreError, match="mixes value kinds"):
        derive_task_spec([S(0, {"label": 1}), S(1, {"label": ["x"]})])
    with pytest.raises(FeatstoreError, match="unsupported kind"):
        derive_task_spec([S(0, {"label": 0.5})])
    spec = derive_task_spec([S(0, {"label": 0}), S(1, {"label": 1})])
    with pytest.raises(FeatstoreError, match="not one of"):
        encode_targets([S(2, {"label": 7})], spec)
    with pytest.raises(FeatstoreError, match="expected one class"):
        encode_targets([S(2, {"label": [1]})], spec)
    with pytest.raises(FeatstoreError, match="no train split"):
        dataset_splits([S(0, {"label": 0}, "dev")], {"label": np.array([0])}, spec)
    with pytest.raises(FeatstoreError, match="val_fraction"):
        dataset_splits([S(0, {"label": 0})], {"label": np.array([0])}, spec, val_fraction=1.5)


def test_format_mean_std_is_four_decimals_or_the_missing_text():
    mean, std, n = mean_std([0.5, 0.75, None, math.nan, 1.0])
    assert n == 3 and format_mean_std(mean, std) == "0.7500 +- 0.2500"  # sample std (ddof=1) of 0.5, 0.75, 1
    assert format_mean_std(*mean_std([0.123456])[:2]) == "0.1235 +- 0.0000"
    assert format_mean_std(None, None) == "" and format_mean_std(None, None, missing="n/a") == "n/a"


def test_batch_auroc_is_the_size_weighted_mean_of_per_batch_aurocs():
    """Hate-CLIPper's logged AUROC: sklearn's AUROC on each run of B labelled rows in order (the last shorter),
    averaged weighted by size; unlabelled rows go first, a one-class batch is left out with a warning."""
    from sklearn.metrics import roc_auc_score as sk_auroc

    from heads.metrics import batch_auroc, compute_metrics
    from heads.spec import Task, TaskSpec

    task = Task("label", "binary", 2, ["0", "1"])
    rng = np.random.default_rng(5)
    y = np.array([0, 1, 1, 0, -1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1])
    p1 = rng.random(len(y))
    probs = np.stack([1 - p1, p1], 1)
    kept_y, kept_p = y[y >= 0], p1[y >= 0]  # 14 labelled rows: batches of 4, 4, 4, 2
    batches = [(kept_y[i:i + 4], kept_p[i:i + 4]) for i in range(0, 14, 4)]
    assert len(np.unique(batches[2][0])) == 1  # rows 8..11 are all 0: no AUROC there
    want = sum(sk_auroc(a, b) * len(a) for a, b in batches if len(np.unique(a)) == 2) / (4 + 4 + 2)
    got, warn = batch_auroc(task, y, probs, 4)
    assert got == pytest.approx(want, abs=1e-12)
    assert warn == ["task 'label' batch AUROC: 1 batch(es) of 4 rows with one class left out"]
    assert got != pytest.approx(sk_auroc(kept_y, kept_p), abs=1e-3)  # not the whole split's
    flat, warnings = compute_metrics(TaskSpec([task]), {"label": y}, {"label": probs}, auroc_batch=4)
    assert flat["label/batch_auroc"] == got and warn[0] in warnings
    assert "label/batch_auroc" not in compute_metrics(TaskSpec([task]), {"label": y}, {"label": probs})[0]


def test_batch_auroc_needs_a_batch_size():
    from featstore.errors import FeatstoreError
    from heads.train import TrainConfig

    with pytest.raises(FeatstoreError) as e:
        TrainConfig(monitor="batch_auroc").validate()
    assert str(e.value) == ("monitor 'batch_auroc' needs --auroc-batch N > 0, the batch size batch_auroc averages "
                            "over; pass e.g. --auroc-batch 64")
    with pytest.raises(FeatstoreError) as e:
        TrainConfig(auroc_batch=-2).validate()
    assert str(e.value) == "auroc_batch=-2 must be >= 0 (0 = off); pass e.g. --auroc-batch 64"
    TrainConfig(monitor="batch_auroc", auroc_batch=16).validate()
