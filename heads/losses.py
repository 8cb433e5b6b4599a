"""Per-task losses and their weighted multi-task sum.

Shapes: ``logits`` [B, task.num_outputs]; targets are class indices int64 [B] (-1 = missing) for
binary/multiclass tasks and multi-hot float [B, C] (NaN row = missing) for multilabel tasks. Missing
rows are excluded; a batch with no labelled row for a task contributes exactly 0 for it.

* ``ce``: cross-entropy (torch) with optional ``label_smoothing`` (epsilon) and class weights, using
  torch's semantics (weighted mean over the batch: sum_i w_{y_i} l_i / sum_i w_{y_i}).
* ``focal``: softmax focal loss for binary/multiclass, -alpha_t (1 - p_t)^gamma log p_t averaged over
  rows, where alpha_t = alpha for the positive class and 1 - alpha for the negative one (binary), alpha for
  every class (multiclass; class weights multiply it); alpha=None disables it. With 2 logits this equals
  torchvision's ``sigmoid_focal_loss`` on the logit difference. Multilabel focal is torchvision's
  ``sigmoid_focal_loss`` averaged over labelled elements.
* multilabel ``ce`` is BCE-with-logits, with ``pos_weight`` as class weights and label smoothing
  y -> y (1 - eps) + eps / 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torchvision.ops import sigmoid_focal_loss

from featstore.errors import FeatstoreError

from .spec import Task, TaskSpec

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: Optional[float] = 0.25,
               weight: Optional[torch.Tensor] = None, binary: bool = True) -> torch.Tensor:
    """Softmax focal loss, mean over rows. logits [B, C], target int64 [B] (all labelled)."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    if alpha is not None:
        loss = loss * (torch.where(target == 1, alpha, 1 - alpha) if binary else alpha)
    if weight is not None:
        loss = loss * weight[target]
    return loss.mean()


def multilabel_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
                          alpha: Optional[float] = 0.25) -> torch.Tensor:
    """torchvision sigmoid focal loss averaged over all elements. logits, target [B, C] (all labelled)."""
    return sigmoid_focal_loss(logits.float(), target.float(), alpha=-1 if alpha is None else alpha,
                              gamma=gamma, reduction="mean")


def auto_class_weights(task: Task, target: np.ndarray) -> np.ndarray:
    """"Balanced" weights from the training labels: sklearn's n / (C * count_c) for single-label tasks,
    ``pos_weight`` = negatives / positives per class for multilabel tasks. Returns float [num_outputs]."""
    if task.kind == "multilabel":
        y = target[~np.isnan(target).any(axis=1)]
        pos = y.sum(0)
        if (pos == 0).any():
            missing = [task.class_names[i] if i < len(task.class_names) else str(i) for i in np.where(pos == 0)[0]]
            raise FeatstoreError(f"class_weights=auto: task {task.name!r} has no positive training label for "
                                 f"{', '.join(missing[:5])}; pass class_weights=none or give explicit weights")
        return ((len(y) - pos) / pos).astype(np.float32)
    y = target[target >= 0]
    classes = np.arange(task.num_outputs)
    absent = np.setdiff1d(classes, y)
    if len(absent):
        raise FeatstoreError(f"class_weights=auto: task {task.name!r} has no training label of class(es) "
                             f"{absent.tolist()}; pass class_weights=none or give explicit weights")
    return compute_class_weight("balanced", classes=classes, y=y).astype(np.float32)


@dataclass
class LossConfig:
    loss: str = "ce"  # "ce" | "focal"
    focal_alpha: Optional[float] = 0.25
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    class_weights: Union[str, Sequence[float], None] = "none"  # "auto" | "none" | list (single task)


def build_task_loss(task: Task, cfg: LossConfig, train_target: Optional[np.ndarray] = None,
                    device: Union[str, torch.device] = "cpu") -> LossFn:
    """The loss of one task as ``fn(logits [B, K], target) -> scalar`` skipping missing labels."""
    if cfg.loss not in ("ce", "focal"):
        raise FeatstoreError(f"loss {cfg.loss!r} is unknown; pass --loss ce or --loss focal")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise FeatstoreError(f"label_smoothing {cfg.label_smoothing} is out of range; pass a value in [0, 1)")
    if cfg.loss == "focal" and cfg.label_smoothing:
        raise FeatstoreError("label_smoothing applies to --loss ce only; pass label_smoothing=0 with --loss focal")
    if cfg.focal_gamma < 0:
        raise FeatstoreError(f"focal_gamma {cfg.focal_gamma} is negative; pass a value >= 0")
    weight = None
    cw = cfg.class_weights
    if isinstance(cw, str) and cw.lower() == "auto":
        if train_target is None:
            raise FeatstoreError("class_weights=auto needs the training labels")
        weight = torch.as_tensor(auto_class_weights(task, train_target), device=device)
    elif cw is not None and not (isinstance(cw, str) and cw.lower() == "none"):
        if isinstance(cw, str):
            raise FeatstoreError(f"class_weights {cw!r} is not understood; pass auto, none or a list of numbers")
        if len(cw) != task.num_outputs:
            raise FeatstoreError(f"class_weights has {len(cw)} values but task {task.name!r} has "
                                 f"{task.num_outputs} classes; pass exactly {task.num_outputs} weights")
        weight = torch.as_tensor([float(x) for x in cw], dtype=torch.float32, device=device)
        if (weight < 0).any():
            raise FeatstoreError("class_weights must be >= 0; pass non-negative numbers")

    if task.kind == "multilabel":
        def multilabel(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            keep = ~torch.isnan(target).any(dim=1)
            if not keep.any():
                return logits.sum() * 0.0
            lg, y = logits[keep].float(), target[keep].float()
            if cfg.loss == "focal":
                return multilabel_focal_loss(lg, y, cfg.focal_gamma, cfg.focal_alpha)
            y = y * (1 - cfg.label_smoothing) + cfg.label_smoothing / 2
            return F.binary_cross_entropy_with_logits(lg, y, pos_weight=weight)
        return multilabel

    def single(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target >= 0
        if not keep.any():
            return logits.sum() * 0.0
        lg, y = logits[keep].float(), target[keep]
        if cfg.loss == "focal":
            return focal_loss(lg, y, cfg.focal_gamma, cfg.focal_alpha, weight, binary=task.kind == "binary")
        return F.cross_entropy(lg, y, weight=weight, label_smoothing=cfg.label_smoothing)
    return single


def build_losses(spec: TaskSpec, cfg: LossConfig, train_targets: Dict[str, np.ndarray],
                 device: Union[str, torch.device] = "cpu") -> Dict[str, LossFn]:
    """One loss per task. A list of class weights is only accepted for a single-task spec."""
    if len(spec.tasks) > 1 and isinstance(cfg.class_weights, (list, tuple)):
        raise FeatstoreError("a list of class_weights is ambiguous with several tasks; pass class_weights=auto or none")
    return {t.name: build_task_loss(t, cfg, train_targets.get(t.name), device) for t in spec.tasks}


def multitask_loss(spec: TaskSpec, losses: Dict[str, LossFn], logits: Dict[str, torch.Tensor],
                   targets: Dict[str, torch.Tensor]) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """sum_t task.weight * loss_t -> (total scalar, {task name: unweighted loss})."""
    parts = {t.name: losses[t.name](logits[t.name], targets[t.name]) for t in spec.tasks}
    total = sum(t.weight * parts[t.name] for t in spec.tasks)
    return total, parts


def multi_similarity_loss(emb: torch.Tensor, labels: torch.Tensor, alpha: float = 50.0, beta: float = 2.0,
                          base: float = 0.5, epsilon: Optional[float] = 0.1) -> torch.Tensor:
    """Multi-similarity loss (Wang et al., CVPR 2019) in ReFNet's naming: ``alpha`` weights negatives, ``beta``
    positives (the reverse of Wang et al.'s and pytorch-metric-learning's names; ReFNet's alpha=50, beta=2 is
    their alpha=2, beta=50). ``emb`` [B, D] (cosine similarity S of the L2-normalised rows), ``labels`` int [B],
    or multi-hot [B, C] (MM-IMDB's genres): then rows sharing at least one label are positives and rows sharing
    none negatives, the rule of MMF's ``MSLoss(is_multilabel=True)``, which ReFNet's authors wrote (it compares
    every anchor with the batch's first row's labels, ``targets[0]``; here each anchor with its own).

    With P_i = same-label rows j != i and N_i = other-label rows, mined when ``epsilon`` is not None as in
    Wang et al. (n in N_i kept if S_in + epsilon > min_P S_ip; p in P_i kept if S_ip - epsilon < max_N S_in):
    ``L = 1/B sum_i [1/beta log(1 + sum_P exp(-beta (S_ip - base))) + 1/alpha log(1 + sum_N exp(alpha (S_in - base)))]``;
    an anchor without a positive or without a negative adds 0 (before mining), as in the authors' MMF MSLoss.
    A row whose cosine with the anchor is 1 - 1e-5 or more is no positive (MMF's ``pos_pair_ < 1 - 1e-5``
    "remove itself", which also drops a near-duplicate of the anchor). Computed in float32 (float64 for a
    float64 ``emb``), autocast off: under bf16 a cosine of 0.998 rounds to 1 and that rule would drop the pair.
    """
    if len(labels) == 0:
        return emb.sum() * 0.0
    with torch.autocast(emb.device.type, enabled=False):
        e = F.normalize(emb.to(torch.promote_types(emb.dtype, torch.float32)), dim=-1)
        s = e @ e.T
    if labels.dim() == 2:
        y = labels.float()
        same = (y @ y.T) > 0
    else:
        same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=emb.device) & (s < 1 - 1e-5)
    neg = ~same
    usable = (pos.any(1) & neg.any(1))[:, None]
    if epsilon is not None:
        min_pos = s.masked_fill(~pos, float("inf")).amin(1, keepdim=True)
        max_neg = s.masked_fill(~neg, float("-inf")).amax(1, keepdim=True)
        pos, neg = pos & (s - epsilon < max_neg), neg & (s + epsilon > min_pos)
    return (_log1p_sum_exp(-beta * (s - base), pos & usable) / beta
            + _log1p_sum_exp(alpha * (s - base), neg & usable) / alpha).sum() / len(labels)


def _log1p_sum_exp(z: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``log(1 + sum_j exp(z_ij))`` over the kept j of each row i, computed stably (0 for a row with none)."""
    z = torch.cat([z.new_zeros(len(z), 1), z.masked_fill(~keep, float("-inf"))], dim=1)
    return torch.logsumexp(z, dim=1)
