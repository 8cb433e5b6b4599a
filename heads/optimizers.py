"""The optimisers ``heads train`` can build (``TrainConfig.optimizer``, ``--optimizer``): ``make_optimizer``.

``"adamw"`` is ``torch.optim.AdamW`` with torch's defaults (eps 1e-8), what ``heads train`` has always used.
``"adamw-mmf"`` is :class:`MMFAdamW`, the update of MMF's ``adam_w``: facebookresearch/mmf
``mmf/modules/optimizers.py`` registers ``transformers.optimization.AdamW`` (transformers 3's class, with
``correct_bias=True``) under that name and ``mmf/utils/build.py`` ``build_optimizer`` builds it over the
model's parameter groups with the yaml's ``optimizer.params`` (the Hateful Memes projects: ``lr``, ``eps 1e-8``).
The two differ in where eps and the weight decay enter the step (see :class:`MMFAdamW`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from featstore.errors import FeatstoreError

OPTIMIZERS = ("adamw", "adamw-mmf")
MMF_EPS = 1e-8  # what MMF's Hateful Memes yaml passes to adam_w; transformers' own AdamW default is 1e-6


class MMFAdamW(torch.optim.Optimizer):
    """AdamW as transformers 3's ``AdamW`` (``correct_bias=True``), the optimiser behind MMF's ``adam_w``.

    Per parameter with a gradient g at its own step t (a parameter whose ``grad`` is None is skipped: its
    moments and its t stay as they were, and it is not decayed), with the group's lr as the scheduler set it::

        m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
        p = p - lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
        p = p - lr * weight_decay * p          (after the Adam step, on the updated p)

    ``torch.optim.AdamW`` instead decays first (``p *= 1 - lr * weight_decay``) and divides by
    ``sqrt(v) / sqrt(1 - beta2^t) + eps``: here eps is added to the uncorrected sqrt(v), so it weighs
    ``1 / sqrt(1 - beta2^t)`` times more (about 31 x at t = 1), which matters while gradients are tiny.

    Defaults: betas (0.9, 0.999), weight_decay 0.0 as transformers'; eps 1e-8 (``MMF_EPS``) as MMF's Hateful
    Memes configs pass it, where transformers' own AdamW default is eps 1e-6. Sparse gradients are refused.
    ``foreach`` (default): the tensors of a group that share a device, dtype and step count are updated by one
    ``torch._foreach_*`` call per operation (as torch's AdamW does on a GPU) instead of one per tensor; the
    numbers are the per-tensor loop's (``foreach=False``; bit for bit on the CPU, tests/test_optimizers.py).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = MMF_EPS, weight_decay: float = 0.0, correct_bias: bool = True,
                 foreach: Optional[bool] = None):
        for name, value, ok in (("lr", lr, lr >= 0.0), ("eps", eps, eps >= 0.0),
                                ("weight_decay", weight_decay, weight_decay >= 0.0),
                                ("betas", betas, all(0.0 <= b < 1.0 for b in betas))):
            if not ok:
                raise FeatstoreError(f"MMFAdamW {name}={value!r} is out of range; pass lr, eps, weight_decay >= 0 "
                                     "and betas in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      correct_bias=correct_bias, foreach=True if foreach is None else foreach))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            live = [p for p in group["params"] if p.grad is not None]
            for p in live:
                self._check_and_init(p)
            for bucket in (self._buckets(live) if group["foreach"] else [[p] for p in live]):
                self._update_many(bucket, group)
        return loss

    def _buckets(self, params: List[torch.Tensor]) -> List[List[torch.Tensor]]:
        """``params`` by (device, dtype, their step count): one foreach call each."""
        out: Dict[tuple, List[torch.Tensor]] = {}
        for p in params:
            out.setdefault((p.device, p.dtype, self.state[p]["step"]), []).append(p)
        return list(out.values())

    def _check_and_init(self, p: torch.Tensor) -> None:
        if p.grad.is_sparse:
            raise FeatstoreError("MMFAdamW does not take sparse gradients; use dense ones (e.g. nn.Embedding with "
                                 "sparse=False) or --optimizer adamw")
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update_many(self, params: List[torch.Tensor], group: Dict[str, Any]) -> None:
        """The update of the class docstring for ``params``, which share a step count (foreach ops)."""
        for p in params:
            self.state[p]["step"] += 1
        beta1, beta2 = group["betas"]
        t, lr = self.state[params[0]]["step"], group["lr"]
        grads = [p.grad for p in params]
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, group["eps"])
        step_size = lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t) if group["correct_bias"] else lr
        torch._foreach_addcdiv_(params, m, denom, value=-step_size)
        if group["weight_decay"] > 0.0:
            torch._foreach_add_(params, params, alpha=-lr * group["weight_decay"])


def check_optimizer(kind: str) -> None:
    """A one-line FeatstoreError unless ``kind`` is one of ``OPTIMIZERS``."""
    if kind not in OPTIMIZERS:
        raise FeatstoreError(f"optimizer {kind!r} is unknown; pass --optimizer {' or '.join(OPTIMIZERS)}")


def make_optimizer(kind: str, groups: List[Dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """The ``kind`` optimiser (``OPTIMIZERS``) at ``lr`` over parameter ``groups`` (each with its own
    ``weight_decay``): ``"adamw"`` torch.optim.AdamW with torch's defaults (eps 1e-8), ``"adamw-mmf"``
    :class:`MMFAdamW` with eps 1e-8 as MMF's Hateful Memes configs (transformers' own default: 1e-6)."""
    check_optimizer(kind)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return MMFAdamW(groups, lr=lr, eps=MMF_EPS)
