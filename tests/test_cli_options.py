"""CLI options generated from config dataclasses (cli.common.options_from_dataclass): same defaults, same flags."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Union

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.common import LazyOptionsCommand, options_from_dataclass
from featstore.errors import FeatstoreError
from cli.heads_cli import main as heads
from featstore.config_types import cli_field
from heads.train import TrainConfig

# written from the README / earlier CLI, not read from TrainConfig: the `heads train` flags of TrainConfig fields
TRAIN_FLAGS = {
    "lr": "--lr", "weight_decay": "--weight-decay", "optimizer": "--optimizer", "warmup_ratio": "--warmup",
    "schedule": "--schedule", "schedule_steps": "--schedule-steps",
    "batch_size": "--batch-size", "epochs": "--epochs", "grad_clip": "--grad-clip", "patience": "--patience",
    "monitor": "--monitor", "loss": "--loss", "focal_alpha": "--focal-alpha", "focal_gamma": "--focal-gamma",
    "label_smoothing": "--label-smoothing", "class_weights": "--class-weights", "amp": "--amp",
    "pretrain_epochs": "--pretrain-epochs", "label_fraction": "--label-fraction",
    "init_checkpoint": "--init-checkpoint", "trust_checkpoint": "--trust-checkpoint", "trim": "--trim",
    "bucket": "--bucket", "threads": "--threads", "predict": "--predict", "select_on": "--select-on",
    "auroc_batch": "--auroc-batch", "val_split": "--val-split", "eval_every": "--eval-every",
}


def train_params():
    cmd = heads.commands["train"]
    ctx = click.Context(cmd)
    return ctx, {p.name: p for p in cmd.get_params(ctx)}


def test_every_train_field_option_has_the_dataclass_default():
    ctx, params = train_params()
    defaults = TrainConfig()
    for name, flag in TRAIN_FLAGS.items():
        p = params[name]
        assert flag in p.opts, (name, p.opts)
        assert p.get_default(ctx) == getattr(defaults, name), name
    assert params["amp"].secondary_opts == ["--no-amp"] and params["trim"].secondary_opts == ["--no-trim"]
    assert params["trust_checkpoint"].is_flag and not params["trust_checkpoint"].secondary_opts
    assert params["init_checkpoint"].opts == ["--init-checkpoint", "--vilbert-checkpoint"]  # the old name: an alias
    # every other TrainConfig field stays off the command line (set by --head, --set, --seeds, --rgcl; --device is
    # the data option, which TrainConfig.device follows)
    on_cli = {f.name for f in dataclasses.fields(TrainConfig) if f.name in params}
    assert on_cli == set(TRAIN_FLAGS) | {"device"}


def test_train_help_lists_every_train_flag():
    out = CliRunner().invoke(heads, ["train", "--help"])
    assert out.exit_code == 0, out.output
    for flag in TRAIN_FLAGS.values():
        assert f"  {flag} " in out.output or f"  {flag}, " in out.output, flag
    assert "--no-amp" in out.output and "[default: no-amp]" in out.output


def test_offered_choices_are_the_ones_the_library_accepts():
    from heads.losses import LossConfig, build_losses
    from heads.schedule import build_scheduler
    from heads.spec import Task, TaskSpec

    _, params = train_params()
    assert list(params["schedule"].type.choices) == ["linear", "cosine", "constant"]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for kind in params["schedule"].type.choices:
        build_scheduler(opt, 10, 0.1, kind)
    for predict in params["predict"].type.choices:
        TrainConfig(predict=predict).validate()
    assert list(params["optimizer"].type.choices) == ["adamw", "adamw-mmf"]
    for kind in params["optimizer"].type.choices:
        TrainConfig(optimizer=kind).validate()
    assert list(params["select_on"].type.choices) == ["predict", "classifier"]
    for select in params["select_on"].type.choices:
        TrainConfig(select_on=select, predict="knn", rgcl={}).validate()
    with pytest.raises(FeatstoreError) as e:
        TrainConfig(select_on="best").validate()
    assert str(e.value) == "select_on 'best' is unknown; pass predict or classifier"
    spec = TaskSpec([Task("label", "binary", 2, ["0", "1"])])
    for loss in params["loss"].type.choices:
        build_losses(spec, LossConfig(loss=loss), {"label": np.array([0, 1, 1])})


def test_a_generated_option_reaches_the_library_before_any_data_is_read(tmp_path):
    out = CliRunner().invoke(heads, ["train", "--store", str(tmp_path), "--dataset", str(tmp_path / "none.jsonl"),
                                     "--head", "concat", "--out", str(tmp_path / "run"), "--threads", "lots"])
    assert out.exit_code == 2
    assert out.output.strip() == ("error: threads='lots' is neither 'auto' nor a positive count; pass --threads auto "
                                  "or e.g. --threads 1")
    out = CliRunner().invoke(heads, ["train", "--store", str(tmp_path), "--dataset", "x", "--out", "y",
                                     "--schedule", "step"])
    assert out.exit_code == 2 and "'step' is not one of 'linear', 'cosine', 'constant'" in out.output


@dataclass
class Small:
    keep: int = 0
    size: int = cli_field(3, "Size.")
    scale: Optional[float] = cli_field(None, "Scale.", flag="--factor")
    mode: str = cli_field("a", "Mode.", choices=("a", "b"))
    fast: bool = cli_field(True, "Fast.")
    sure: bool = cli_field(False, "Sure.", flag="--yes")
    spec: Union[str, int] = cli_field("auto", "Spec.", metavar="N")
    tags: dict = field(default_factory=dict)


def test_options_from_dataclass_types_flags_and_skip():
    got = {}

    @click.command(cls=LazyOptionsCommand, lazy_options=lambda: options_from_dataclass(Small, skip=("spec",)))
    def cmd(**kw):
        got.update(kw)

    runner = CliRunner()
    assert runner.invoke(cmd, []).exit_code == 0
    assert got == {"size": 3, "scale": None, "mode": "a", "fast": True, "sure": False}
    assert runner.invoke(cmd, ["--size", "5", "--factor", "0.5", "--mode", "b", "--no-fast", "--yes"]).exit_code == 0
    assert got == {"size": 5, "scale": 0.5, "mode": "b", "fast": False, "sure": True}
    assert runner.invoke(cmd, ["--size", "x"]).exit_code == 2
    assert runner.invoke(cmd, ["--spec", "4"]).exit_code == 2  # skipped
    opts = {o.name: o for o in options_from_dataclass(Small)}
    assert opts["spec"].type == click.STRING and opts["spec"].metavar == "N" and opts["spec"].default == "auto"
    assert set(opts) == {"size", "scale", "mode", "fast", "sure", "spec"}


# written from the README / earlier CLI: the `featstore extract` flags of ExtractOptions fields
EXTRACT_FLAGS = {"batch_size": "--batch-size", "num_workers": "--workers", "device": "--device", "amp": "--amp",
                 "chunk_rows": "--chunk-rows", "on_error": "--on-error", "backend": "--backend",
                 "compression": "--compression", "image_cache": "--image-cache"}


def test_every_extract_option_has_the_dataclass_default():
    from cli.featstore_cli import main as featstore
    from featstore.runner import ExtractOptions

    cmd = featstore.commands["extract"]
    ctx = click.Context(cmd)
    params = {p.name: p for p in cmd.get_params(ctx)}
    defaults = ExtractOptions()
    for name, flag in EXTRACT_FLAGS.items():
        assert params[name].opts == [flag], name
        assert params[name].get_default(ctx) == getattr(defaults, name), name
    assert {f.name for f in dataclasses.fields(ExtractOptions) if f.name in params} == set(EXTRACT_FLAGS)
    assert list(params["backend"].type.choices) == ["zarr", "lmdb"]
    for backend in params["backend"].type.choices:  # every offered backend passes the library's check
        ExtractOptions(backend=backend).validate()
    for compression in params["compression"].type.choices:
        ExtractOptions(compression=compression).validate()
    out = CliRunner().invoke(featstore, ["extract", "--help"])
    assert out.exit_code == 0 and all(f"  {flag} " in out.output for flag in EXTRACT_FLAGS.values())
