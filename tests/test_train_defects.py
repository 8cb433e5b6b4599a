"""Issue 10's smaller defects: the printed summary's metric keys, TrainConfig.device, the --amp default,
BaseConfig's tuple coercion and best_epoch when the monitored metric is NaN."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import pytest
import torch

from featstore.errors import FeatstoreError
from featstore.extractors.base import BaseConfig
from heads.data import TrainData
from heads.losses import build_losses
from heads.metrics import METRIC_NAMES, default_metric
from heads.spec import Task, TaskSpec
from heads.train import TrainConfig, evaluate, train

BINARY = TaskSpec([Task("label", "binary", 2, ["0", "1"])])


def tiny_data(n=40, val_one_class=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    feats = {"img_pooled": torch.randn(n, 6, generator=g) + y[:, None], "txt_pooled": torch.randn(n, 5, generator=g)}
    val = torch.arange(24, 32)
    if val_one_class:
        val = val[y[val] == 1]
    splits = {"train": torch.arange(0, 24), "dev": val, "test": torch.arange(32, n)}
    return TrainData(feats, [f"s{i}" for i in range(n)], {"label": y.long()}, splits, BINARY)


def test_printed_summary_shows_each_kinds_monitored_metric():
    from heads.experiment import HEADLINE, summary_lines

    for kind in ("binary", "multiclass", "multilabel"):
        assert default_metric(Task("t", kind, 3)) in HEADLINE, kind  # the metric a run is monitored on
        assert set(METRIC_NAMES[kind]) & set(HEADLINE), kind
    summary = {"summary": {"test": {"genres/macro_f1": {"mean": 0.5, "std": 0.1},
                                    "genres/micro_auroc": {"mean": 0.8, "std": 0.0}}}}
    assert summary_lines(summary) == ["  test        genres/macro_f1=0.5000+-0.1000  genres/micro_auroc=0.8000+-0.0000"]


def test_train_device_is_read_and_recorded():
    data = tiny_data()
    res = train(TrainConfig(head="concat", epochs=1, threads=1), data, progress=False)
    assert res.config.device == "cpu"  # "auto" resolved to where the data is, as config.json records it
    with pytest.raises(FeatstoreError) as e:
        train(TrainConfig(head="concat", epochs=1, threads=1, device="cuda:0"), data, progress=False)
    assert str(e.value) == ("train device='cuda:0' but the training data is on cpu; load the data with "
                            "device='cuda:0' (--device) or pass device='auto'")
    with pytest.raises(FeatstoreError) as e:
        train(TrainConfig(head="concat", epochs=1, threads=1, device="gpu0"), data, progress=False)
    assert str(e.value) == "train device='gpu0' is not a device; pass auto, cpu or cuda[:N]"


def test_amp_default_is_the_same_in_cli_and_library():
    from cli.heads_cli import main as heads

    amp = next(p for p in heads.commands["train"].params if p.name == "amp")
    assert amp.default is TrainConfig().amp is False


@dataclass
class _TupleConfig(BaseConfig):
    layers: tuple[int, ...] = (1,)
    pair: Tuple[int, int] = (0, 0)
    maybe: Optional[tuple[int, ...]] = None
    plain: Optional[list] = None


def test_base_config_coerces_lists_for_every_tuple_annotation():
    cfg = _TupleConfig(layers=[2, 3], pair=[4, 5], maybe=[6], plain=[7])
    assert cfg.layers == (2, 3) and cfg.pair == (4, 5) and cfg.maybe == (6,)
    assert cfg.plain == [7]  # a list field stays a list


def test_best_epoch_is_the_kept_epoch_when_the_monitor_is_nan():
    data = tiny_data(val_one_class=True)  # AUROC on a one-class split is NaN every epoch
    cfg = TrainConfig(head="concat", epochs=3, patience=0, lr=0.05, threads=1, head_cfg={"dropout": 0.0})
    res = train(cfg, data, progress=False)
    assert all(math.isnan(r["val_label/auroc"]) for r in res.history)
    assert res.best_epoch == 1
    losses = build_losses(BINARY, cfg.loss_config(), data.targets_numpy(data.splits["train"]), data.device)
    metrics, _, _ = evaluate(res.model, data, data.splits["dev"], losses)
    np.testing.assert_allclose(metrics["loss"], res.history[0]["val_loss"], rtol=1e-6)  # the kept state is epoch 1
    assert not np.isclose(res.history[0]["val_loss"], res.history[-1]["val_loss"])
