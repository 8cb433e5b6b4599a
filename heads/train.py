"""Train a head on a ``TrainData``: AdamW, warmup + linear/cosine decay per step, gradient clipping,
early stopping on a validation metric, best state restored.

Determinism: ``seed`` seeds python/numpy/torch and a dedicated ``torch.Generator`` draws the batch order,
so the same seed on the same device gives identical numbers.
Loss per step: sum_t weight_t * loss_t (``heads.losses``) plus every term of the head's
``extra_losses(outputs, batch, targets)`` when it has one (each logged in the history). With ``rgcl`` options
the step's loss is ``(1 - ce_weight) * L_rgcl + ce_weight * that`` (``heads.rgcl``, logged as ``loss_rgcl``);
``predict="knn"`` reports (and early-stops on) a vote of the nearest train rows instead of the classifier.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from featstore.config_types import build_dataclass
from featstore.devices import check_device
from featstore.errors import FeatstoreError

from .batching import bucketed_batches, length_key, length_sorted
from .data import TrainData, validation_split
from .losses import LossConfig, build_losses, multitask_loss
from .metrics import compute_metrics, logits_to_probs, metric_keys
from .schedule import build_scheduler
from .spec import TaskSpec
from .threads import check_threads, cpu_threads


@dataclass
class TrainConfig:
    head: str = "concat"
    head_cfg: Dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: str = "linear"  # linear | cosine
    batch_size: int = 64
    epochs: int = 20
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    patience: int = 5  # epochs without improvement before stopping; 0 = never stop early
    monitor: str = "auto"  # "auto" (AUROC for one binary task, macro F1 for one other, "score" for several),
    #                         a metric name ("auroc"), a flat key ("label/auroc"), "score" or "loss"
    mode: str = "auto"  # max | min | auto (min for loss)
    loss: str = "ce"  # ce | focal
    focal_alpha: Optional[float] = 0.25
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    class_weights: Union[str, List[float], None] = "none"  # auto | none | list
    seed: int = 0
    device: str = "auto"  # where the data lives: "auto" = the TrainData's device; another value must match it
    amp: bool = False  # bf16 autocast, CUDA only (ignored on CPU)
    pretrain_epochs: int = 0  # refnet: epochs of the head's pretrain_loss on all train rows first
    label_fraction: Optional[float] = None  # train on a stratified fraction of the train labels
    eval_batch_size: int = 512
    init_checkpoint: Optional[str] = None  # a Facebook/MMF ViLBERT checkpoint loaded into the head before training
    trust_checkpoint: bool = False  # allow a checkpoint that needs full unpickling (only files you trust)
    trim: bool = True  # cut each batch to its longest real token / region run (heads.batching); same outputs
    bucket: int = 0  # sort the shuffled train order by length within windows of this many batches (0 = off)
    threads: Union[str, int] = "auto"  # CPU intra-op threads: "auto" (measured, heads.threads) or a count
    rgcl: Optional[Dict[str, Any]] = None  # RGCL objective options (heads.rgcl.RGCLConfig); None = off, {} = defaults
    predict: str = "classifier"  # classifier | knn (vote of the nearest train rows, heads.rgcl.knn_probs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return build_dataclass(cls, d, "train", unknown_message="{what} option {first} is unknown; options are: {known}")

    def validate(self) -> None:
        for name in ("lr", "batch_size", "epochs", "eval_batch_size"):
            if not getattr(self, name) > 0:
                raise FeatstoreError(f"{name}={getattr(self, name)} must be > 0; pass a positive value")
        for name in ("weight_decay", "grad_clip", "patience", "pretrain_epochs"):
            if getattr(self, name) < 0:
                raise FeatstoreError(f"{name}={getattr(self, name)} must be >= 0")
        if self.mode not in ("auto", "max", "min"):
            raise FeatstoreError(f"mode {self.mode!r} is unknown; pass max, min or auto")
        if self.label_fraction is not None and not 0.0 < self.label_fraction <= 1.0:
            raise FeatstoreError(f"label_fraction {self.label_fraction} is out of range; pass e.g. 0.05, 0.1 or 0.2")
        if self.bucket < 0:
            raise FeatstoreError(f"bucket={self.bucket} must be >= 0 (0 = no length bucketing); pass e.g. 20")
        check_threads(self.threads)
        if self.predict not in ("classifier", "knn"):
            raise FeatstoreError(f"predict {self.predict!r} is unknown; pass classifier or knn")
        if self.rgcl is not None or self.predict == "knn":
            from .rgcl import RGCLConfig

            RGCLConfig.from_dict(self.rgcl)

    def loss_config(self) -> LossConfig:
        return LossConfig(self.loss, self.focal_alpha, self.focal_gamma, self.label_smoothing, self.class_weights)


@dataclass
class TrainResult:
    model: torch.nn.Module  # best checkpoint restored, eval mode
    config: TrainConfig
    task_spec: TaskSpec
    history: List[Dict[str, float]]  # one row per epoch
    best_epoch: int
    monitor: str  # the flat metric key monitored on ``val_split``
    val_split: str
    metrics: Dict[str, Dict[str, float]]  # {split: flat metrics} for every split with labels
    warnings: Dict[str, List[str]]  # {split: metric warnings}
    probs: Dict[str, Dict[str, np.ndarray]]  # {split: {task: [n, K] probabilities}} of the best model
    threads: Any = None  # heads.threads.ThreadChoice: the CPU intra-op threads used and why
    load_report: Optional[Dict[str, Any]] = None  # heads.vilbert_checkpoint.LoadReport.to_dict() of init_checkpoint


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
             trim: bool = True):
    """(flat metrics incl. "loss" when ``losses`` given, warnings, {task: probs numpy}) on rows ``idx``."""
    spec = data.task_spec
    logits = predict_logits(model, data, idx, batch_size, amp, trim)
    probs = {t.name: logits_to_probs(t, logits[t.name]).cpu().numpy() for t in spec.tasks}
    metrics, warnings = compute_metrics(spec, data.targets_numpy(idx), probs)
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


def evaluate_as(cfg: TrainConfig, model, data: TrainData, train_idx: torch.Tensor, idx: torch.Tensor, losses=None):
    """``evaluate`` with ``cfg.predict``'s predictor: the classifier, or ``knn`` (``heads.rgcl.knn_probs``: a
    vote of the nearest rows of ``train_idx``; "loss" stays the classifier's)."""
    metrics, warnings, probs = evaluate(model, data, idx, losses, cfg.eval_batch_size, cfg.amp, cfg.trim)
    if cfg.predict == "knn":
        probs = knn_predictions(cfg, model, data, train_idx, idx)
        knn, warnings = compute_metrics(data.task_spec, data.targets_numpy(idx), probs)
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


def train(cfg: TrainConfig, data: TrainData, *, progress: bool = True, on_epoch=None) -> TrainResult:
    """``_train`` with the CPU intra-op threads of ``cfg.threads`` (``heads.threads.cpu_threads``: "auto"
    measures; the caller's setting is restored afterwards); ``result.threads`` says what was used.
    Nothing is written: ``heads.experiment.train_run`` also saves the run folder (``heads.runs.save_run``)."""
    cfg.validate()
    with cpu_threads(cfg, data) as choice:
        result = _train(cfg, data, progress, on_epoch)
    result.threads = choice
    return result


def _train(cfg: TrainConfig, data: TrainData, progress: bool = True, on_epoch=None) -> TrainResult:
    """Train ``cfg.head`` on ``data``'s train split, early-stop on ``val`` (or ``dev``), restore the best
    state, evaluate every split with labels.
    ``on_epoch(row, monitor)``, when given, is called with each epoch's history row as it ends."""
    from .models import create_head

    cfg.validate()
    cfg = resolve_device(cfg, data)
    spec = data.task_spec
    device = data.device
    gen = seed_everything(cfg.seed)
    val_split = validation_split(data.splits)  # val, else dev (dev_seen), else dev_unseen; named in the results
    if val_split not in data.splits or data.labelled(data.splits[val_split]).numel() == 0:
        raise FeatstoreError("no labelled validation split ('val', 'dev'/'dev_seen' or 'dev_unseen'); pass "
                             "--val-fraction 0.1 to carve one from train")
    monitor, mode = resolve_monitor(cfg, spec)
    all_train = data.split("train")
    train_idx = labelled_train_rows(cfg, data)
    val_idx = data.labelled(data.splits[val_split])

    load_report = None
    if cfg.init_checkpoint:  # sizes read from the checkpoint where head_cfg gives none; report printed + saved
        from .vilbert_checkpoint import head_from_checkpoint

        model, load_report = head_from_checkpoint(cfg.head, data.input_spec(), spec, cfg.head_cfg,
                                                  cfg.init_checkpoint, trust_pickle=cfg.trust_checkpoint)
    else:
        model = create_head(cfg.head, data.input_spec(), spec, **cfg.head_cfg)
    from .models.vilbert import check_text_layer

    check_text_layer(model, data.meta.get("features", {}).get("text"))
    if load_report is not None:
        print("\n".join(load_report.lines()), file=sys.stderr)
    model = model.to(device)
    losses = build_losses(spec, cfg.loss_config(), data.targets_numpy(train_idx), device)

    key = length_key(data.sequence_lengths()) if cfg.trim and cfg.bucket else None
    if cfg.pretrain_epochs:
        if not hasattr(model, "pretrain_loss"):
            raise FeatstoreError(f"pretrain_epochs needs a head with pretrain_loss (refnet); head {cfg.head!r} "
                                 "has none - pass pretrain_epochs=0")
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        for _ in range(cfg.pretrain_epochs):
            model.train()
            order = all_train[torch.randperm(all_train.numel(), generator=gen).to(device)]
            for b in bucketed_batches(order, key, cfg.batch_size, cfg.bucket, gen):
                batch = data.batch(b, trim=cfg.trim)
                with _autocast(cfg, device):
                    loss = model.pretrain_loss(model(batch), batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(train_idx.numel() / cfg.batch_size)
    scheduler = build_scheduler(optimizer, steps_per_epoch * cfg.epochs, cfg.warmup_ratio, cfg.schedule)

    objective = None
    if cfg.rgcl is not None:  # retrieval-guided contrastive term (heads.rgcl)
        from .rgcl import RGCLConfig, RGCLObjective

        objective = RGCLObjective(RGCLConfig.from_dict(cfg.rgcl), data, train_idx, cfg.eval_batch_size, cfg.trim)
    history: List[Dict[str, float]] = []
    best_value, best_epoch, best_state, stale = math.nan, 0, None, 0
    bar = tqdm(range(1, cfg.epochs + 1), disable=not progress, desc=f"{cfg.head}", unit="epoch")
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        order = train_idx[torch.randperm(train_idx.numel(), generator=gen).to(device)]
        sums: Dict[str, float] = {}
        lr = optimizer.param_groups[0]["lr"]
        if objective is not None:
            objective.start_epoch()
        for b in bucketed_batches(order, key, cfg.batch_size, cfg.bucket, gen):
            batch, targets = data.batch(b, trim=cfg.trim), data.batch_targets(b)
            with _autocast(cfg, device):
                out = model(batch)
            loss, parts = multitask_loss(spec, losses, out["logits"], targets)
            logged = {f"loss_{k}": v for k, v in parts.items()} if len(parts) > 1 else {}
            if hasattr(model, "extra_losses"):
                extra = model.extra_losses(out, batch, targets)
                for k, v in extra.items():
                    loss = loss + v.float()
                    logged[f"loss_{k}"] = v
            if objective is not None:
                loss, extra = objective.loss(model, out, b, loss)
                logged.update({f"loss_{k}": v for k, v in extra.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            n = b.numel()
            sums["train_loss"] = sums.get("train_loss", 0.0) + float(loss.detach()) * n
            for k, v in logged.items():
                sums[f"train_{k}"] = sums.get(f"train_{k}", 0.0) + float(v.detach()) * n
        row: Dict[str, float] = {"epoch": epoch, "lr": lr}
        row.update({k: v / train_idx.numel() for k, v in sums.items()})
        val_metrics, _, _ = evaluate_as(cfg, model, data, train_idx, val_idx, losses)
        row.update({f"val_{k}": v for k, v in val_metrics.items()})
        row["time_s"] = time.perf_counter() - t0
        history.append(row)
        if on_epoch is not None:
            on_epoch(row, monitor)
        value = val_metrics.get(monitor, math.nan)
        if _is_better(value, best_value, mode) or best_state is None:
            if best_state is None or not math.isnan(value):
                best_value, best_epoch, stale = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        bar.set_postfix({"loss": f"{row['train_loss']:.4f}", f"val_{monitor}": f"{value:.4f}"})
        if cfg.patience and stale >= cfg.patience:
            break
    model.load_state_dict(best_state)
    model.eval()

    metrics, warnings, probs = {}, {}, {}
    for split, idx in data.splits.items():
        if idx.numel() == 0:
            continue
        m, w, p = evaluate_as(cfg, model, data, train_idx, idx)
        probs[split] = p
        if m:
            metrics[split], warnings[split] = m, w
    result = TrainResult(model, cfg, spec, history, best_epoch, monitor, val_split, metrics, warnings, probs)
    result.load_report = load_report.to_dict() if load_report is not None else None
    return result
