"""Train a head on a ``TrainData``: AdamW (torch's, or MMF's ``adam_w``: ``heads.optimizers``) over the head's
``optimizer_groups`` (``build_optimizer``; vilbert: MMF's BERT groups), warmup + linear/cosine decay per step,
gradient clipping, early stopping on a validation metric, best state restored.

Determinism: ``seed`` seeds python/numpy/torch and a dedicated ``torch.Generator`` draws the batch order,
so the same seed on the same device gives identical numbers.
Loss per step: sum_t weight_t * loss_t (``heads.losses``) plus every term of the head's
``extra_losses(outputs, batch, targets)`` when it has one (each logged in the history). With ``rgcl`` options
the step's loss is ``(1 - ce_weight) * L_rgcl + ce_weight * that`` (``heads.rgcl``, logged as ``loss_rgcl``);
``predict="knn"`` reports (and early-stops on) a vote of the nearest train rows instead of the classifier;
``select_on="classifier"`` chooses the epoch on the classifier's validation metrics even then (RGCL's
``run_rac.py`` with ``--hybrid_loss``: the best classifier dev accuracy), logged as ``val_classifier_<key>``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from featstore.config_types import build_dataclass, cli_field
from featstore.devices import check_device
from featstore.errors import FeatstoreError

from .batching import bucketed_batches, length_key, length_sorted
from .data import TrainData, validation_split
from .losses import LossConfig, build_losses, multitask_loss
from .metrics import compute_metrics, metric_keys
from .optimizers import OPTIMIZERS, check_optimizer, make_optimizer
from .outputs import probabilities
from .schedule import SCHEDULES, build_scheduler
from .spec import TaskSpec
from .threads import check_threads, cpu_threads

SELECT_ON = ("predict", "classifier")  # TrainConfig.select_on


@dataclass
class TrainConfig:
    """One training run's settings. Fields made with ``cli_field`` are also ``heads train`` options (flag, help,
    choices in the field's metadata; the option's default is the field's: ``cli.common.options_from_dataclass``)."""

    head: str = "concat"
    head_cfg: Dict[str, Any] = field(default_factory=dict)
    lr: float = cli_field(1e-3, "Peak learning rate (AdamW).")
    weight_decay: float = cli_field(0.01, "AdamW weight decay.")
    optimizer: str = cli_field("adamw", "adamw: torch.optim.AdamW; adamw-mmf: MMF's adam_w, transformers 3's AdamW "
                               "(eps on the uncorrected sqrt(v), decay after the step; heads.optimizers).",
                               choices=OPTIMIZERS)
    warmup_ratio: float = cli_field(0.1, "Warmup fraction of steps.", flag="--warmup")
    schedule: str = cli_field("linear", "Learning-rate decay after the warmup (heads.schedule).", choices=SCHEDULES)
    schedule_steps: int = cli_field(0, "Steps the warmup and decay are laid over (0: the run's own steps; more: the "
                                       "decay stops short of 0, as MMF's num_training_steps above max_updates).")
    batch_size: int = cli_field(64, "Training batch size.")
    epochs: int = cli_field(20, "Training epochs (at most: early stopping may end sooner); 0 evaluates the "
                            "--init-checkpoint as loaded.")
    grad_clip: float = cli_field(1.0, "Max global gradient norm (0: off).")
    patience: int = cli_field(5, "Early-stopping patience (0: off).")  # epochs without improvement before stopping
    monitor: str = cli_field("auto", "Validation metric for early stopping.")  # "auto" (AUROC for one binary task,
    #   macro F1 for one other, "score" for several), a metric name ("auroc"), a flat key ("label/auroc"), "score", "loss"
    mode: str = "auto"  # max | min | auto (min for loss)
    loss: str = cli_field("ce", "Task loss.", choices=("ce", "focal"))
    focal_alpha: Optional[float] = cli_field(0.25, "Focal loss alpha.")
    focal_gamma: float = cli_field(2.0, "Focal loss gamma.")
    label_smoothing: float = cli_field(0.0, "Label smoothing of the ce loss.")
    class_weights: Union[str, List[float], None] = cli_field("none", "none, auto or comma-separated weights.")
    seed: int = 0
    device: str = "auto"  # where the data lives: "auto" = the TrainData's device; another value must match it
    amp: bool = cli_field(False, "bf16 autocast on CUDA (ignored on CPU).")
    pretrain_epochs: int = cli_field(0, "ReFNet refiner pretraining epochs.")  # the head's pretrain_loss, all train rows
    label_fraction: Optional[float] = cli_field(None, "Train on this fraction of the labels (0.05..1).")  # stratified
    eval_batch_size: int = 512
    init_checkpoint: Optional[str] = cli_field(  # loaded into the head before training, with a report
        None, "Checkpoint to initialise the head from: vilbert / visualbert (Facebook / MMF / HF files, or a BERT), "
        "the MMF baselines (a BERT, or MMF's own model.pth), cross (Hate-CLIPper's .ckpt, RGCL's .pt), any head "
        "(a heads run of it); none: start random (over a preset's).",
        flag=("--init-checkpoint", "--vilbert-checkpoint"))
    trust_checkpoint: bool = cli_field(False, "Allow a checkpoint that needs full unpickling (only files you trust).",
                                       flag="--trust-checkpoint")
    trim: bool = cli_field(True, "Cut each batch to its longest real token/region run (same outputs, less work).")
    bucket: int = cli_field(0, "Sort train batches by length within windows of this many batches (0: off).")
    threads: Union[str, int] = cli_field("auto", "CPU intra-op threads: auto (times a few steps at 1 and at every "
                                         "core) or a count.")  # heads.threads
    rgcl: Optional[Dict[str, Any]] = None  # RGCL objective options (heads.rgcl.RGCLConfig); None = off, {} = defaults
    predict: str = cli_field("classifier", "Report the classifier's predictions, or a vote of the nearest train "
                             "samples (knn).", choices=("classifier", "knn"))  # heads.rgcl.knn_probs
    auroc_batch: int = cli_field(0, "Also report each binary task's batch_auroc: the AUROC of every run of this "
                                 "many rows in split order, size-weighted (Hate-CLIPper's logged val/auroc); 0: off.")
    eval_every: int = cli_field(0, "Evaluate the validation split every this many updates and keep the best of "
                                "those (MMF's evaluation_interval, 1,000 in its Hateful Memes runs); 0: after every "
                                "epoch. Patience counts evaluations.")
    val_split: str = cli_field("auto", "Split that early stopping and the best epoch read: auto (val, else dev = "
                               "dev_seen, else dev_unseen) or a split name, e.g. dev_unseen (MMF's phase-2 yaml).")
    select_on: str = cli_field("predict", "Predictions that choose the best epoch: predict (the reported ones) or "
                               "classifier (with --predict knn, as RGCL's run_rac.py --hybrid_loss).",
                               choices=SELECT_ON)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return build_dataclass(cls, d, "train", unknown_message="{what} option {first} is unknown; options are: {known}")

    def validate(self) -> None:
        for name in ("lr", "batch_size", "eval_batch_size"):
            if not getattr(self, name) > 0:
                raise FeatstoreError(f"{name}={getattr(self, name)} must be > 0; pass a positive value")
        check_epochs(self.epochs, self.checkpoint, self.pretrain_epochs)
        for name in ("weight_decay", "grad_clip", "patience", "pretrain_epochs", "schedule_steps"):
            if getattr(self, name) < 0:
                raise FeatstoreError(f"{name}={getattr(self, name)} must be >= 0")
        if self.mode not in ("auto", "max", "min"):
            raise FeatstoreError(f"mode {self.mode!r} is unknown; pass max, min or auto")
        if self.label_fraction is not None and not 0.0 < self.label_fraction <= 1.0:
            raise FeatstoreError(f"label_fraction {self.label_fraction} is out of range; pass e.g. 0.05, 0.1 or 0.2")
        if self.eval_every < 0:
            raise FeatstoreError(f"eval_every={self.eval_every} must be >= 0 (0 = after every epoch); pass e.g. 1000")
        if self.bucket < 0:
            raise FeatstoreError(f"bucket={self.bucket} must be >= 0 (0 = no length bucketing); pass e.g. 20")
        check_threads(self.threads)
        check_optimizer(self.optimizer)
        if self.predict not in ("classifier", "knn"):
            raise FeatstoreError(f"predict {self.predict!r} is unknown; pass classifier or knn")
        if self.auroc_batch < 0:
            raise FeatstoreError(f"auroc_batch={self.auroc_batch} must be >= 0 (0 = off); pass e.g. --auroc-batch 64")
        if self.auroc_batch == 0 and self.monitor.endswith("batch_auroc"):
            raise FeatstoreError(f"monitor {self.monitor!r} needs --auroc-batch N > 0, the batch size batch_auroc "
                                 "averages over; pass e.g. --auroc-batch 64")
        if self.select_on not in SELECT_ON:
            raise FeatstoreError(f"select_on {self.select_on!r} is unknown; pass {' or '.join(SELECT_ON)}")
        if self.rgcl is not None or self.predict == "knn":
            from .rgcl import RGCLConfig

            RGCLConfig.from_dict(self.rgcl)

    @property
    def checkpoint(self) -> Optional[str]:
        """``init_checkpoint``, or None for none given or ``"none"`` (``start_checkpoint``)."""
        return start_checkpoint(self.init_checkpoint)

    def loss_config(self) -> LossConfig:
        return LossConfig(self.loss, self.focal_alpha, self.focal_gamma, self.label_smoothing, self.class_weights)


@dataclass
class TrainResult:
    model: torch.nn.Module  # best checkpoint restored, eval mode
    config: TrainConfig
    task_spec: TaskSpec
    history: List[Dict[str, float]]  # one row per evaluation: per epoch, or every cfg.eval_every updates
    best_epoch: int
    monitor: str  # the flat metric key monitored on ``val_split``
    val_split: str
    metrics: Dict[str, Dict[str, float]]  # {split: flat metrics} for every split with labels
    warnings: Dict[str, List[str]]  # {split: metric warnings}
    probs: Dict[str, Dict[str, np.ndarray]]  # {split: {task: [n, K] probabilities}} of the best model
    threads: Any = None  # heads.threads.ThreadChoice: the CPU intra-op threads used and why
    load_report: Optional[Dict[str, Any]] = None  # heads.vilbert_checkpoint.LoadReport.to_dict() of init_checkpoint
    best_step: Optional[int] = None  # the update count of the best evaluation, with cfg.eval_every


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for the batch order."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_monitor(cfg: TrainConfig, spec: TaskSpec) -> tuple[str, str]:
    """(flat metric key, "max"|"min") to monitor on the validation split."""
    m = cfg.monitor
    if m == "auto":
        if len(spec.tasks) == 1:
            t = spec.tasks[0]
            m = f"{t.name}/{'auroc' if t.kind == 'binary' else 'macro_f1'}"
        else:
            m = "score"
    elif "/" not in m and m not in ("score", "loss"):
        if len(spec.tasks) != 1:
            raise FeatstoreError(f"monitor {m!r} is ambiguous with several tasks; pass TASK/{m} or score")
        m = f"{spec.tasks[0].name}/{m}"
    if m not in metric_keys(spec):
        raise FeatstoreError(f"monitor {cfg.monitor!r} is not a metric of these tasks; choose one of "
                             f"{', '.join(metric_keys(spec))}")
    mode = cfg.mode if cfg.mode != "auto" else ("min" if m == "loss" else "max")
    return m, mode


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: TrainData, idx: torch.Tensor, batch_size: int = 512,
                   amp: bool = False, trim: bool = True) -> Dict[str, torch.Tensor]:
    """Eval-mode logits for rows ``idx`` -> {task: float32 [len(idx), K]} (and "fused": [len(idx), H]).

    ``trim``: rows are batched in length order and each batch cut to its real tokens/regions
    (``heads.batching``); the outputs come back in ``idx``'s order."""
    model.eval()
    out: Dict[str, List[torch.Tensor]] = {}
    cfg = TrainConfig(amp=amp)
    order, inverse = length_sorted(idx, length_key(data.sequence_lengths())) if trim else (idx, None)
    for s in range(0, order.shape[0], batch_size):
        b = order[s:s + batch_size]
        with _autocast(cfg, data.device):
            o = model(data.batch(b, trim=trim))
        for k, v in o["logits"].items():
            out.setdefault(k, []).append(v.float())
        out.setdefault("fused", []).append(o["fused"].float())
    return {k: torch.cat(v) if inverse is None else torch.cat(v)[inverse] for k, v in out.items()}


def evaluate(model, data: TrainData, idx: torch.Tensor, losses=None, batch_size: int = 512, amp: bool = False,
             trim: bool = True, auroc_batch: int = 0):
    """(flat metrics incl. "loss" when ``losses`` given, warnings, {task: probs numpy}) on rows ``idx``
    (``auroc_batch``: ``heads.metrics.compute_metrics``'s)."""
    spec = data.task_spec
    logits = predict_logits(model, data, idx, batch_size, amp, trim)
    probs = probabilities(spec, logits)
    metrics, warnings = compute_metrics(spec, data.targets_numpy(idx), probs, auroc_batch)
    if losses is not None:
        total, _ = multitask_loss(spec, losses, {t.name: logits[t.name] for t in spec.tasks}, data.batch_targets(idx))
        metrics["loss"] = float(total)
    return metrics, warnings, probs


def knn_predictions(cfg: TrainConfig, model, data: TrainData, train_idx: torch.Tensor,
                    idx: torch.Tensor) -> Dict[str, np.ndarray]:
    """``{task: [len(idx), 2]}``: the vote of each row's ``cfg.rgcl`` ``knn_k`` nearest rows of ``train_idx``."""
    from .rgcl import RGCLConfig, knn_probs

    return {data.task_spec.tasks[0].name: knn_probs(model, data, train_idx, idx, RGCLConfig.from_dict(cfg.rgcl),
                                                    cfg.eval_batch_size, cfg.trim)}


def evaluate_as(cfg: TrainConfig, model, data: TrainData, train_idx: torch.Tensor, idx: torch.Tensor, losses=None,
                classifier: Optional[Dict[str, float]] = None):
    """``evaluate`` with ``cfg.predict``'s predictor: the classifier, or ``knn`` (``heads.rgcl.knn_probs``: a
    vote of the nearest rows of ``train_idx``; "loss" stays the classifier's). ``classifier``, when given, is
    filled with the classifier's own metrics."""
    metrics, warnings, probs = evaluate(model, data, idx, losses, cfg.eval_batch_size, cfg.amp, cfg.trim,
                                        cfg.auroc_batch)
    if classifier is not None:
        classifier.update(metrics)
    if cfg.predict == "knn":
        probs = knn_predictions(cfg, model, data, train_idx, idx)
        knn, warnings = compute_metrics(data.task_spec, data.targets_numpy(idx), probs, cfg.auroc_batch)
        metrics = {**knn, **({"loss": metrics["loss"]} if "loss" in metrics else {})}
    return metrics, warnings, probs


def labelled_train_rows(cfg: TrainConfig, data: TrainData) -> torch.Tensor:
    """The labelled train rows a run learns from: ``cfg.label_fraction``'s stratified subset (seeded by
    ``cfg.seed``) when set; also the bank a ``predict="knn"`` run votes with, at training and on reload."""
    train_idx = data.labelled(data.split("train"))
    if train_idx.numel() == 0:
        raise FeatstoreError("the train split has no labels for the chosen task(s); pass another --task")
    if cfg.label_fraction is not None:
        train_idx = _label_subset(data, train_idx, cfg.label_fraction, cfg.seed)
    return train_idx


def _label_subset(data: TrainData, idx: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    from sklearn.model_selection import train_test_split

    if fraction >= 1.0:
        return idx
    t = data.task_spec.tasks[0]
    y = data.targets[t.name].index_select(0, idx).cpu().numpy()
    strat = y if t.kind != "multilabel" and np.bincount(y).min() >= 2 else None
    try:
        keep, _ = train_test_split(np.arange(len(idx)), train_size=fraction, random_state=seed, stratify=strat)
    except ValueError as err:
        raise FeatstoreError(f"label_fraction {fraction} of {len(idx)} train labels is too small ({err}); "
                             "pass a larger fraction") from None
    return idx[torch.as_tensor(np.sort(keep), device=idx.device)]


def resolve_device(cfg: TrainConfig, data: TrainData) -> TrainConfig:
    """``cfg`` with ``device`` set to the data's device (what the run used, for ``config.json``); a
    ``cfg.device`` naming another device is a one-line error (the features are loaded onto one device)."""
    have = data.device
    if cfg.device != "auto":
        checked = check_device(cfg.device, "train device={device!r} is not a device; pass auto, cpu or cuda[:N]")
        want = torch.device(checked)
        if want.type != have.type or (want.index is not None and have.index is not None and want.index != have.index):
            raise FeatstoreError(f"train device={cfg.device!r} but the training data is on {have}; load the data "
                                 f"with device={cfg.device!r} (--device) or pass device='auto'")
    return dataclasses.replace(cfg, device=str(have))


def _is_better(value: float, best: float, mode: str) -> bool:
    if math.isnan(value):
        return False
    return math.isnan(best) or (value > best if mode == "max" else value < best)


@dataclass
class EarlyStopping:
    """Early stopping on one validation value per epoch. ``update(value, epoch)`` is True when ``value`` is the
    new best: the first epoch's always is (NaN included), later ones must be strictly better in ``mode``
    ("max" | "min"; a tie or NaN is not). ``should_stop`` once ``patience`` epochs in a row were not
    (``patience`` 0: never)."""

    mode: str
    patience: int
    best: float = math.nan
    best_epoch: Optional[int] = None  # None until the first update
    stale: int = 0  # epochs since the best

    def update(self, value: float, epoch: int) -> bool:
        if self.best_epoch is not None and not _is_better(value, self.best, self.mode):
            self.stale += 1
            return False
        self.best, self.best_epoch, self.stale = value, epoch, 0
        return True

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.stale >= self.patience


def train(cfg: TrainConfig, data: TrainData, *, progress: bool = True, on_epoch=None) -> TrainResult:
    """``_train`` with the CPU intra-op threads of ``cfg.threads`` (``heads.threads.cpu_threads``: "auto"
    measures; the caller's setting is restored afterwards); ``result.threads`` says what was used.
    Nothing is written: ``heads.experiment.train_run`` also saves the run folder (``heads.runs.save_run``)."""
    cfg.validate()
    with cpu_threads(cfg, data) as choice:
        result = _train(cfg, data, progress, on_epoch)
    result.threads = choice
    return result


@dataclass
class _Fit:
    """What one training run works with (``_prepare``); ``gen`` draws the batch orders."""
    cfg: TrainConfig
    data: TrainData
    gen: torch.Generator
    val_split: str
    monitor: str
    mode: str
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    model: torch.nn.Module
    losses: Any
    load_report: Any  # heads.vilbert_checkpoint.LoadReport of cfg.init_checkpoint, or None
    key: Optional[torch.Tensor]  # heads.batching.length_key for cfg.bucket, or None
    select: str = ""  # the history key (less "val_") that chooses the best epoch: monitor, or classifier_<monitor>


def check_epochs(epochs: int, checkpoint: Optional[str], pretrain_epochs: int) -> None:
    """``epochs`` >= 1, or 0 with an init checkpoint (its model evaluated as loaded: ``evaluate_only``)."""
    if epochs < 0 or (epochs == 0 and not checkpoint):
        raise FeatstoreError(f"epochs={epochs} must be > 0 (0 evaluates an --init-checkpoint as loaded, and none "
                             "is given); pass a positive value")
    if epochs == 0 and pretrain_epochs:
        raise FeatstoreError(f"epochs=0 evaluates the --init-checkpoint as loaded, so pretrain_epochs="
                             f"{pretrain_epochs} would change it; pass pretrain_epochs=0 or epochs >= 1")


def evaluate_only(cfg: TrainConfig) -> bool:
    """Whether the run evaluates its init checkpoint as loaded, training nothing (``epochs`` 0)."""
    return cfg.epochs == 0


@dataclass
class _Optimisation:
    optimizer: torch.optim.Optimizer
    scheduler: Any
    objective: Any  # heads.rgcl.RGCLObjective for cfg.rgcl, or None
    total_steps: int = 0  # updates over every epoch
    step: int = 0  # updates so far


def _train(cfg: TrainConfig, data: TrainData, progress: bool = True, on_epoch=None) -> TrainResult:
    """Train ``cfg.head`` on ``data``'s train split, early-stop on ``val`` (or ``dev``), restore the best
    state, evaluate every split with labels.
    ``on_epoch(row, monitor)``, when given, is called with each epoch's history row as it ends."""
    cfg = resolve_device(cfg, data)
    fit = _prepare(cfg, data)
    if cfg.pretrain_epochs:
        _pretrain(fit)
    history: List[Dict[str, float]] = []
    stopping, best_state = EarlyStopping(fit.mode, cfg.patience), None
    if evaluate_only(cfg):  # the checkpoint's model as loaded (no state to restore): epoch 0 is the best
        stopping.best_epoch, opt = 0, None
    else:
        opt = _optimisation(fit)
    bar = tqdm(range(1, cfg.epochs + 1), disable=not progress, desc=f"{cfg.head}", unit="epoch")
    for epoch in bar:
        for row in _epoch(fit, opt, epoch):
            history.append(row)
            if on_epoch is not None:
                on_epoch(row, fit.monitor)
            value = row.get(f"val_{fit.select}", math.nan)
            if stopping.update(value, len(history)):
                best_state = copy.deepcopy(fit.model.state_dict())
            bar.set_postfix({"loss": f"{row['train_loss']:.4f}", f"val_{fit.select}": f"{value:.4f}"})
            if stopping.should_stop:
                break
        if stopping.should_stop:
            break
    metrics, warnings, probs = _final_evaluation(fit, best_state)
    best = history[stopping.best_epoch - 1] if history else {"epoch": stopping.best_epoch}
    result = TrainResult(fit.model, cfg, data.task_spec, history, int(best["epoch"]), fit.monitor, fit.val_split,
                         metrics, warnings, probs, best_step=best.get("step"))
    result.load_report = fit.load_report.to_dict() if fit.load_report is not None else None
    return result


def validation_rows(cfg: TrainConfig, data: TrainData) -> tuple[str, torch.Tensor]:
    """(the split that chooses the epoch, its labelled rows): ``cfg.val_split`` (``heads.data.validation_split``;
    auto: val, else dev = dev_seen, else dev_unseen); a one-line error when it has no labelled row."""
    val_split = validation_split(data.splits, cfg.val_split)
    val_idx = data.labelled(data.splits[val_split]) if val_split in data.splits else None
    if val_idx is None or val_idx.numel() == 0:
        if cfg.val_split != "auto":
            raise FeatstoreError(f"val_split {cfg.val_split!r} has no labelled rows; pass a labelled split or auto")
        raise FeatstoreError("no labelled validation split ('val', 'dev'/'dev_seen' or 'dev_unseen'); pass "
                             "--val-fraction 0.1 to carve one from train")
    return val_split, val_idx


def _prepare(cfg: TrainConfig, data: TrainData) -> _Fit:
    """Seed, pick the validation split and the monitor, the labelled train rows, the head and the losses."""
    gen = seed_everything(cfg.seed)
    val_split, val_idx = validation_rows(cfg, data)
    monitor, mode = resolve_monitor(cfg, data.task_spec)
    train_idx = labelled_train_rows(cfg, data)
    model, load_report = _build_head(cfg, data)
    losses = build_losses(data.task_spec, cfg.loss_config(), data.targets_numpy(train_idx), data.device)
    key = length_key(data.sequence_lengths()) if cfg.trim and cfg.bucket else None
    select = f"classifier_{monitor}" if cfg.select_on == "classifier" and cfg.predict == "knn" else monitor
    return _Fit(cfg, data, gen, val_split, monitor, mode, train_idx, val_idx, model, losses, load_report, key,
                select)


# heads --init-checkpoint loads into
CHECKPOINT_HEADS = ("vilbert", "visualbert", "text-bert", "concat-bert", "late-fusion", "mmbt", "mmbt-region",
                    "image-region", "cross", "image-only")
# image-region: MMF's own Image-Region model.pth; cross: Hate-CLIPper's; image-only: MMF's Image-Grid model.pth
REFNET_CHECKPOINT_BASES = ("vilbert", "visualbert")  # ... and these as refnet's base


def start_checkpoint(init_checkpoint: Optional[str]) -> Optional[str]:
    """The checkpoint a run starts from: None for none given or ``"none"`` (a random start over a preset's)."""
    c = init_checkpoint
    return None if c is None or str(c).strip().lower() in ("", "none") else str(c)


def checkpoint_target(head: str, head_cfg: Dict[str, Any]) -> Optional[str]:
    """The head an init checkpoint loads into: ``head`` itself, or refnet's ``base``."""
    return head_cfg.get("base") if head == "refnet" else head


def loads_checkpoint(head: str, head_cfg: Dict[str, Any]) -> bool:
    """Whether ``--init-checkpoint`` can initialise ``head`` (with ``head_cfg``)."""
    target = checkpoint_target(head, head_cfg)
    return target in CHECKPOINT_HEADS and (head != "refnet" or target in REFNET_CHECKPOINT_BASES)


PRETRAINED_FROM = {"vilbert": "MMF's model.pth (vilbert.pretrained.cc_original) or bert-base-uncased",
                   "visualbert": "MMF's model.pth (visual_bert.pretrained.coco) or bert-base-uncased",
                   "text-bert": "bert-base-uncased (MMF's unimodal_text loads it whole, pooler included)",
                   "concat-bert": "bert-base-uncased (MMF's concat_bert loads it whole, pooler included)",
                   "late-fusion": "bert-base-uncased (MMF's late_fusion loads it whole, pooler included)",
                   "mmbt": "bert-base-uncased (MMF's mmbt loads it whole, pooler included)",
                   "mmbt-region": "bert-base-uncased (MMF's mmbt loads it whole, pooler included)"}
BERT_START_PRESETS = {"vilbert": "vilbert-hm-direct", "visualbert": "visualbert-hm-direct", "text-bert": "text-bert-hm",
                      "concat-bert": "concat-bert-hm", "late-fusion": "late-fusion-hm", "mmbt": "mmbt-grid-hm",
                      "mmbt-region": "mmbt-region-hm"}  # the preset of each that starts from bert-base-uncased


def random_start_note(cfg: TrainConfig) -> Optional[str]:
    """A one-line note when a head that the published rows start from pretrained weights starts random."""
    target = checkpoint_target(cfg.head, cfg.head_cfg)
    if not loads_checkpoint(cfg.head, cfg.head_cfg) or cfg.checkpoint or target not in PRETRAINED_FROM:
        return None  # image-region starts from Detectron's fc7 (heads.fc7's note), cross from scratch (as Hate-CLIPper)
    return (f"note: {target} starts from random weights; the published {target} rows start from "
            f"{PRETRAINED_FROM[target]}: pass --init-checkpoint PATH or a cached model id (--preset "
            f"{BERT_START_PRESETS[target]} starts from bert-base-uncased)")


def _head_from_checkpoint(cfg: TrainConfig, data: TrainData):
    """(head, LoadReport) from ``cfg.init_checkpoint`` by the reader of the head it initialises (a heads run,
    for any head: ``heads.run_checkpoint``)."""
    from .run_checkpoint import head_from_run, run_folder

    if run_folder(cfg.checkpoint) is not None:
        return head_from_run(cfg.head, data.input_spec(), data.task_spec, cfg.head_cfg, cfg.checkpoint)
    target = checkpoint_target(cfg.head, cfg.head_cfg)
    if not loads_checkpoint(cfg.head, cfg.head_cfg):
        raise FeatstoreError(f"--init-checkpoint initialises a {', '.join(CHECKPOINT_HEADS)} head, not {cfg.head!r}"
                             f"{' with base ' + repr(target) if cfg.head == 'refnet' else ''}; pass --head "
                             f"{' / '.join(CHECKPOINT_HEADS)} (or --head refnet --set base=vilbert)")
    extra: Dict[str, Any] = {}
    if target == "visualbert":
        from .visualbert_checkpoint import head_from_checkpoint
    elif target == "vilbert":
        from .vilbert_checkpoint import head_from_checkpoint
    elif target == "image-region":
        from .mmf_checkpoint import head_from_checkpoint
    elif target == "image-only":  # MMF's Image-Grid model.pth, on an image set extracted from that file
        from .mmf_checkpoint import image_grid_head_from_checkpoint as head_from_checkpoint
        extra = {"features": data.meta.get("features")}
    elif target == "cross":  # checked against the CLIP the cached features came from
        from .hateclipper_checkpoint import head_from_checkpoint
        extra = {"features": data.meta.get("features")}
    else:  # an MMF file's fine-tuned ResNet-152: checked against the image sets the run reads
        from .text_bert_checkpoint import head_from_checkpoint
        extra = {"features": data.meta.get("features")}
    return head_from_checkpoint(cfg.head, data.input_spec(), data.task_spec, cfg.head_cfg, cfg.checkpoint,
                                trust_pickle=cfg.trust_checkpoint, **extra)


def head_on_meta(cfg: TrainConfig, data: TrainData) -> torch.nn.Module:
    """``cfg.head`` for ``data`` built on the meta device (no memory, no time) as ``_build_head`` builds it: with
    the sizes ``cfg.init_checkpoint`` implies and its reader's one-line refusals (its tensors are read, not
    copied), and the head's ``check_init_files(report)`` where it has one, so a bad checkpoint or init file fails
    before a run folder is made and the parameter count is the run's."""
    import warnings

    from .models import create_head

    from .checkpoints import LoadReport

    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")  # the no-op load
        if cfg.checkpoint:
            model, report = _head_from_checkpoint(cfg, data)
        else:
            model, report = create_head(cfg.head, data.input_spec(), data.task_spec, **cfg.head_cfg), LoadReport()
        if hasattr(model, "check_init_files"):  # load_init_files' refusals (e.g. heads.fc7's), nothing copied
            model.check_init_files(report)
    check_head_data(model, data)
    return model


def check_head_data(model: torch.nn.Module, data: TrainData) -> None:
    """The head's one-line refusals of data its shapes fit but it cannot read: cached text states of another
    layer (``heads.models.vilbert.check_text_layer``) and the head's own ``check_data`` (token ids)."""
    from .models.vilbert import check_text_layer

    text_meta = data.meta.get("features", {}).get("text")
    check_text_layer(model, text_meta)
    model.check_data(data.features, text_meta)


def _build_head(cfg: TrainConfig, data: TrainData):
    """``cfg.head`` for ``data`` on its device -> (model, LoadReport or None): from ``cfg.init_checkpoint`` when
    set (sizes read from the checkpoint where head_cfg gives none; the report printed), then the head's own
    ``load_init_files(report) -> report`` when it has one (files it starts from, read at training start only:
    ``heads predict`` never calls it; e.g. ``heads.fc7``; given the checkpoint's report or an empty one, kept
    when it used something), checked against the data (``check_head_data``)."""
    from .models import create_head

    load_report = None
    if cfg.checkpoint:
        model, load_report = _head_from_checkpoint(cfg, data)
    else:
        model = create_head(cfg.head, data.input_spec(), data.task_spec, **cfg.head_cfg)
    check_head_data(model, data)
    if hasattr(model, "load_init_files"):  # files a head starts from besides --init-checkpoint (e.g. fc7)
        from .checkpoints import LoadReport

        report = model.load_init_files(load_report if load_report is not None else LoadReport())
        load_report = report if report.used_keys else load_report  # a new report that read nothing: none
    if load_report is not None:
        _source_notes(cfg, data, load_report)
        print("\n".join(load_report.lines()), file=sys.stderr)
    return model.to(data.device), load_report


def _source_notes(cfg: TrainConfig, data: TrainData, load_report) -> None:
    """The note on whether vilbert's cached text states come from a checkpoint file's (not a heads run's, whose
    inputs are its own sets) own lower layers."""
    from .run_checkpoint import run_folder

    if checkpoint_target(cfg.head, cfg.head_cfg) != "vilbert" or run_folder(cfg.checkpoint) is not None:
        return
    from .vilbert_checkpoint import text_source_note

    note = text_source_note(load_report, (data.meta.get("features") or {}).get("text"), cfg.checkpoint)
    if note:
        load_report.note(note)


def _pretrain(fit: _Fit) -> None:
    """``cfg.pretrain_epochs`` epochs of the head's ``pretrain_loss`` (refnet) on every train row, labelled or
    not, with an AdamW of their own."""
    cfg, data, model = fit.cfg, fit.data, fit.model
    if not hasattr(model, "pretrain_loss"):
        raise FeatstoreError(f"pretrain_epochs needs a head with pretrain_loss (refnet); head {cfg.head!r} "
                             "has none - pass pretrain_epochs=0")
    all_train = data.split("train")
    opt = build_optimizer(model, cfg)
    for _ in range(cfg.pretrain_epochs):
        model.train()
        order = all_train[torch.randperm(all_train.numel(), generator=fit.gen).to(data.device)]
        for b in bucketed_batches(order, fit.key, cfg.batch_size, cfg.bucket, fit.gen):
            batch = data.batch(b, trim=cfg.trim)
            with _autocast(cfg, data.device):
                loss = model.pretrain_loss(model(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (``heads.optimizers.make_optimizer``: torch's AdamW, or MMF's adam_w for "adamw-mmf"; eps
    1e-8 either way) at ``cfg.lr`` over the head's ``optimizer_groups(cfg.weight_decay)`` (vilbert: MMF's BERT
    groups, no decay on biases and LayerNorms; every other head: one group)."""
    groups = model.optimizer_groups(cfg.weight_decay) if hasattr(model, "optimizer_groups") else \
        [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
    return make_optimizer(cfg.optimizer, [g for g in groups if g["params"]], cfg.lr)


def schedule_steps(cfg: TrainConfig, train_rows: int) -> int:
    """The steps the schedule is laid over: ``cfg.schedule_steps``, or the run's own updates when 0; fewer than
    the run's updates is a one-line error (the decay would reach 0 before the end, or cosine climb back up)."""
    per_epoch = math.ceil(train_rows / cfg.batch_size)
    steps = per_epoch * cfg.epochs
    if 0 < cfg.schedule_steps < steps:
        raise FeatstoreError(f"schedule_steps={cfg.schedule_steps} is fewer than the run's {steps} updates "
                             f"({cfg.epochs} epochs of {per_epoch}); pass at least {steps}, or 0 for the run's own")
    return cfg.schedule_steps or steps


def _optimisation(fit: _Fit) -> _Optimisation:
    """AdamW, the per-step warmup + decay schedule over every epoch, and the RGCL term when ``cfg.rgcl``."""
    cfg = fit.cfg
    optimizer = build_optimizer(fit.model, cfg)
    steps_per_epoch = math.ceil(fit.train_idx.numel() / cfg.batch_size)
    scheduler = build_scheduler(optimizer, schedule_steps(cfg, fit.train_idx.numel()), cfg.warmup_ratio,
                                cfg.schedule)
    objective = None
    if cfg.rgcl is not None:  # retrieval-guided contrastive term (heads.rgcl)
        from .rgcl import RGCLConfig, RGCLObjective

        objective = RGCLObjective(RGCLConfig.from_dict(cfg.rgcl), fit.data, fit.train_idx, cfg.eval_batch_size,
                                  cfg.trim)
    return _Optimisation(optimizer, scheduler, objective, steps_per_epoch * cfg.epochs)


@dataclass
class _Window:
    """The train losses and time since the last evaluation (``_epoch``)."""
    lr: float
    t0: float = field(default_factory=time.perf_counter)
    rows: int = 0
    sums: Dict[str, float] = field(default_factory=dict)

    def add(self, loss: torch.Tensor, logged: Dict[str, torch.Tensor], n: int) -> None:
        self.rows += n
        self.sums["train_loss"] = self.sums.get("train_loss", 0.0) + float(loss.detach()) * n
        for k, v in logged.items():
            self.sums[f"train_{k}"] = self.sums.get(f"train_{k}", 0.0) + float(v.detach()) * n


def _epoch(fit: _Fit, opt: _Optimisation, epoch: int) -> Iterator[Dict[str, float]]:
    """One pass over the shuffled labelled train rows, yielding a history row at each evaluation: at the end
    (``eval_every`` 0), or after every ``eval_every``-th update counted over the whole run (as MMF validates
    every ``evaluation_interval`` updates; the last update is evaluated too when the run has not been yet).
    A row: epoch, step (with ``eval_every``), lr, mean train losses since the last evaluation (``train_loss``,
    ``train_loss_<term>``), ``val_<metric>``, time_s."""
    cfg, data, every = fit.cfg, fit.data, fit.cfg.eval_every
    fit.model.train()
    order = fit.train_idx[torch.randperm(fit.train_idx.numel(), generator=fit.gen).to(data.device)]
    window = _Window(opt.optimizer.param_groups[0]["lr"])
    if opt.objective is not None:
        opt.objective.start_epoch()
    for b in bucketed_batches(order, fit.key, cfg.batch_size, cfg.bucket, fit.gen):
        loss, logged = _step(fit, opt, b)
        window.add(loss, logged, b.numel())
        opt.step += 1
        last_unevaluated = opt.step == opt.total_steps and opt.step < every
        if every and (opt.step % every == 0 or last_unevaluated):
            yield _evaluation_row(fit, epoch, window, opt.step)
            window = _Window(opt.optimizer.param_groups[0]["lr"])
            fit.model.train()
    if not every:
        yield _evaluation_row(fit, epoch, window)


def _evaluation_row(fit: _Fit, epoch: int, window: _Window, step: Optional[int] = None) -> Dict[str, float]:
    """The validation metrics now, with the window's train losses -> a history row."""
    row: Dict[str, float] = {"epoch": epoch, **({"step": step} if step is not None else {}), "lr": window.lr}
    row.update({k: v / max(window.rows, 1) for k, v in window.sums.items()})
    classifier: Dict[str, float] = {}
    val_metrics, _, _ = evaluate_as(fit.cfg, fit.model, fit.data, fit.train_idx, fit.val_idx, fit.losses,
                                    classifier)
    row.update({f"val_{k}": v for k, v in val_metrics.items()})
    if fit.select != fit.monitor:  # the classifier's metrics choose the epoch (select_on="classifier")
        row.update({f"val_classifier_{k}": v for k, v in classifier.items()})
    row["time_s"] = time.perf_counter() - window.t0
    return row


def _step(fit: _Fit, opt: _Optimisation, b: torch.Tensor):
    """One optimiser step on train rows ``b`` -> (the step's loss, {"loss_<term>": logged loss term})."""
    cfg, data, model = fit.cfg, fit.data, fit.model
    batch, targets = data.batch(b, trim=cfg.trim), data.batch_targets(b)
    with _autocast(cfg, data.device):
        out = model(batch)
    loss, parts = multitask_loss(data.task_spec, fit.losses, out["logits"], targets)
    logged = {f"loss_{k}": v for k, v in parts.items()} if len(parts) > 1 else {}
    if hasattr(model, "extra_losses"):
        for k, v in model.extra_losses(out, batch, targets).items():
            loss = loss + v.float()
            logged[f"loss_{k}"] = v
    if opt.objective is not None:
        loss, extra = opt.objective.loss(model, out, b, loss)
        logged.update({f"loss_{k}": v for k, v in extra.items()})
    opt.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.optimizer.step()
    opt.scheduler.step()
    return loss, logged


def _final_evaluation(fit: _Fit, best_state: Optional[dict]):
    """Restore ``best_state`` (None: the model as it is, ``evaluate_only``), eval mode, then ({split: metrics},
    {split: warnings}, {split: probs}) for every non-empty split (metrics and warnings only for the splits with
    labels)."""
    if best_state is not None:
        fit.model.load_state_dict(best_state)
    fit.model.eval()
    metrics, warnings, probs = {}, {}, {}
    for split, idx in fit.data.splits.items():
        if idx.numel() == 0:
            continue
        m, w, p = evaluate_as(fit.cfg, fit.model, fit.data, fit.train_idx, idx)
        probs[split] = p
        if m:
            metrics[split], warnings[split] = m, w
    return metrics, warnings, probs
