"""TrainConfig.eval_every: the validation split evaluated every N updates counted over the run (MMF's
evaluation_interval), the best evaluation restored. Checked against the per-epoch run of the same seed: the
training trajectory does not depend on when it is evaluated, so an evaluation after update k*S (S updates an
epoch) must give epoch k's validation metrics, and the restored model the best evaluation's metrics."""
from __future__ import annotations

import dataclasses
import math

import pytest

from featstore.errors import FeatstoreError
from heads.train import TrainConfig, train
from tests.test_heads_train import xor_data

# 192 train rows at batch 32: S = 6 updates an epoch, 5 epochs = 30 updates
BASE = TrainConfig(head="concat", head_cfg=dict(hidden=[32], dropout=0.3), lr=3e-3, epochs=5, batch_size=32,
                   warmup_ratio=0.1, patience=0, weight_decay=0.01, grad_clip=1.0, threads=1)
S = 6


@pytest.fixture(scope="module")
def data():
    d = xor_data()
    assert math.ceil(d.splits["train"].numel() / 32) == S
    return d


@pytest.fixture(scope="module")
def per_epoch(data):
    return train(BASE, data, progress=False)


def _val(row):
    return {k: v for k, v in row.items() if k.startswith("val_")}


def test_an_evaluation_after_update_k_times_s_is_epoch_ks(data, per_epoch):
    res = train(dataclasses.replace(BASE, eval_every=4), data, progress=False)
    steps = [r["step"] for r in res.history]
    assert steps == [4, 8, 12, 16, 20, 24, 28]  # update 30 ends the run between evaluations: not evaluated (MMF)
    assert [r["epoch"] for r in res.history] == [1, 2, 2, 3, 4, 4, 5]  # the epoch each update fell in
    for row in res.history:
        if row["step"] % S == 0:  # 12 and 24: the parameters epoch 2 and epoch 4 ended with
            assert _val(row) == _val(per_epoch.history[row["step"] // S - 1])
    best = max(range(len(res.history)), key=lambda i: (res.history[i]["val_label/auroc"], -i))
    assert (res.best_epoch, res.best_step) == (res.history[best]["epoch"], res.history[best]["step"])
    assert res.metrics["dev"]["label/auroc"] == pytest.approx(res.history[best]["val_label/auroc"], abs=1e-12)
    assert res.metrics["dev"]["label/accuracy"] == pytest.approx(res.history[best]["val_label/accuracy"], abs=1e-12)


def test_eval_every_one_epoch_is_the_per_epoch_run(data, per_epoch):
    res = train(dataclasses.replace(BASE, eval_every=S), data, progress=False)
    assert [_val(r) for r in res.history] == [_val(r) for r in per_epoch.history]
    assert [r["train_loss"] for r in res.history] == pytest.approx([r["train_loss"] for r in per_epoch.history],
                                                                   rel=1e-12)
    assert res.best_epoch == per_epoch.best_epoch and per_epoch.best_step is None
    assert res.metrics == per_epoch.metrics


def test_patience_counts_evaluations_and_a_short_run_is_evaluated_once(data):
    res = train(dataclasses.replace(BASE, eval_every=2, patience=1), data, progress=False)
    vals = [r["val_label/auroc"] for r in res.history]
    stop = next(i for i in range(1, len(vals)) if vals[i] <= max(vals[:i]))  # the first evaluation not better
    assert len(res.history) == stop + 1 and res.history[-1]["step"] == 2 * (stop + 1)
    once = train(dataclasses.replace(BASE, eval_every=1000), data, progress=False)
    assert [(r["epoch"], r["step"]) for r in once.history] == [(5, 30)]  # fewer updates than one interval


def test_bad_eval_every_is_one_line():
    with pytest.raises(FeatstoreError) as err:
        dataclasses.replace(BASE, eval_every=-1).validate()
    assert str(err.value) == "eval_every=-1 must be >= 0 (0 = after every epoch); pass e.g. 1000"
