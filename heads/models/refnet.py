"""``refnet``: ReFNet (Sankaran, Yang & Lim, "Multimodal Fusion Refiner Networks", 2021) refiners on top of any
fusion head that exposes ``fused``.

For each modality ``i`` (image, text) a refiner MLP decodes the fused embedding back to that modality:
``R_i = refiner_i(fused)``, compared with the target ``H_i(F_i)``: the pooled modality input ``F_i``
(``img_pooled`` / ``txt_pooled``, or the masked mean of regions/tokens), through a learned
``Linear(dim_i, target_dim)`` when ``target_dim > 0`` (identity otherwise; note a learned target can shrink
the loss by itself, so the default is the identity).

``extra_losses`` = ``{"refiner": sum_i gamma_i * (1 - cos(R_i, H_i(F_i))).mean(),
"ms": zeta * heads.losses.multi_similarity_loss(fused, labels, alpha, beta, base, epsilon)}``, the labels being
the first task's class indices (binary/multiclass; rows with a negative label are left out), or for a multi-label
first task (MM-IMDB's genres) its multi-hot rows: a pair sharing a genre is positive, one sharing none negative,
as MMF's ``MSLoss(is_multilabel=True)`` (which ReFNet's authors wrote) pairs them.
``pretrain_loss(outputs, batch)`` is the refiner term alone, for refiner pretraining on unlabeled samples.

Defaults are the paper's Hateful Memes settings: gamma = 0.1 for each modality, zeta = 0.25 (MM-IMDB: zeta = 0.1,
fused width 512), alpha = 50, beta = 2, base (lambda) = 0.5, pair mining with epsilon = 0.1. **Which is alpha:**
ReFNet's alpha = 50 / beta = 2 follow the authors' reference code (facebookresearch/mmf ``MSLoss``, the paper's
MS term: ``1/beta log(1 + sum_P exp(-beta (S - base))) + 1/alpha log(1 + sum_N exp(alpha (S - base)))``), where
alpha weights the *negative* pairs and beta the positives. Wang et al. (2019) and pytorch-metric-learning name
them the other way round (alpha for positives = 2, beta for negatives = 50), so the paper's setting is the same
loss as pytorch-metric-learning's ``MultiSimilarityLoss(alpha=2, beta=50, base=0.5)`` with its
``MultiSimilarityMiner(epsilon=0.1)``; passing (50, 2) to pytorch-metric-learning would be a different loss.
``ms_alpha`` / ``ms_beta`` here use ReFNet's naming. ``ms_epsilon=None`` turns the pair mining off.

Where this differs from MMF's transformer ``refiner`` head: there the refiner is one ``Linear(h, h)`` + ReLU +
LayerNorm + dropout block and its targets are the mean of the fused transformer's own output tokens of each
modality; here the refiner is ``refiner_hidden`` + a Linear and the targets are the pooled unimodal inputs
(the paper's ``H_i(F_i)``), so it works over any base head that exposes ``fused``. MMF's code is not a
reference to copy here: its ``Refiner`` keeps the decoders in a plain ``dict``, so they are never registered,
never in the optimizer and never trained (random MLPs the gradient passes through); the Hateful Memes yaml
(``projects/mmf_transformer/configs/hateful_memes/hateful_with_refiner.yaml``) sets ``loss_type: ms``
(``RefinerMSLoss``: a multi-similarity term between each decoded vector and the batch's targets, with no
per-modality weight) instead of the paper's cosine term.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featstore.errors import FeatstoreError

from ..losses import multi_similarity_loss
from .base import HEADS, Head, activation, create_head, pooled_image, pooled_text, register_head


@dataclass
class RefnetConfig:
    base: str = "concat"  # the fusion head underneath (any registered head except refnet)
    base_cfg: Dict[str, Any] = field(default_factory=dict)  # its options
    refiner_hidden: List[int] = field(default_factory=lambda: [256])  # refiner MLP hidden widths
    activation: str = "relu"
    target_dim: int = 0  # 0: refine to the raw pooled input; >0: to a learned Linear projection of it
    gamma_img: float = 0.1  # refiner weight per modality (paper: 0.1 each)
    gamma_txt: float = 0.1
    zeta: float = 0.25  # weight of the multi-similarity term (paper: 0.25 Hateful Memes, 0.1 MM-IMDB; 0 = off)
    ms_alpha: float = 50.0  # ReFNet's naming: weight of the negative pairs (= pytorch-metric-learning's beta)
    ms_beta: float = 2.0  # weight of the positive pairs (= pytorch-metric-learning's alpha)
    ms_base: float = 0.5  # lambda, the similarity margin
    ms_epsilon: Optional[float] = 0.1  # pair-mining margin (None: every pair)

    def validate(self) -> None:
        if self.base == "refnet":
            raise FeatstoreError("refnet base='refnet' would nest refiners; choose a fusion head, e.g. base='vilbert'")
        if self.base not in HEADS:
            raise FeatstoreError(f"refnet base={self.base!r} is not a head; choose one of: {', '.join(HEADS.names())}")
        for name in ("ms_alpha", "ms_beta"):
            if not getattr(self, name) > 0:
                raise FeatstoreError(f"refnet {name}={getattr(self, name)} must be > 0; the paper uses ms_alpha=50 ms_beta=2")
        if self.ms_epsilon is not None and not self.ms_epsilon >= 0:
            raise FeatstoreError(f"refnet ms_epsilon={self.ms_epsilon} must be >= 0, or null to mine no pairs; "
                                 "the paper uses 0.1")


def _refiner(in_dim: int, hidden: List[int], out_dim: int, act: str) -> nn.Sequential:
    layers: List[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, int(h)), activation(act)]
        d = int(h)
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def _ms_labels(task, y: Tensor):
    """(labels for ``multi_similarity_loss``, labelled rows): class indices, or a multi-label task's multi-hot."""
    if task.kind == "multilabel":
        return y.float(), ~torch.isnan(y.float()).any(dim=-1)
    y = (y.argmax(dim=-1) if y.dim() == 2 else y).long()
    return y, y >= 0


@register_head("refnet", RefnetConfig, help="ReFNet: modality refiners + multi-similarity loss over a base head")
class RefnetHead(Head):
    """Wraps ``self.base``; ``forward`` returns the base outputs plus ``"refined"`` and ``"refine_target"``
    (dicts ``{"img": [B, d_img], "txt": [B, d_txt]}``)."""

    needs = frozenset({"img_pooled", "txt_pooled"})

    def __init__(self, inputs, task, config: RefnetConfig):
        super().__init__(inputs, task, config)
        c = config
        self.base = create_head(c.base, inputs, task, **c.base_cfg)
        with torch.no_grad():
            probe = self._probe_dim(inputs)
        dims = {"img": inputs.img_pooled_width, "txt": inputs.txt_pooled_width}
        self.target_proj = nn.ModuleDict({
            m: (nn.Linear(d, c.target_dim) if c.target_dim > 0 else nn.Identity()) for m, d in dims.items()})
        self.refiners = nn.ModuleDict({
            m: _refiner(probe, c.refiner_hidden, c.target_dim or d, c.activation) for m, d in dims.items()})
        self.gammas = {"img": c.gamma_img, "txt": c.gamma_txt}

    def _probe_dim(self, inputs) -> int:
        """Width of the base head's ``fused``, found by one forward pass on a dummy batch of 2."""
        b: Dict[str, Tensor] = {}
        if inputs.img_regions:
            b["img_regions"] = torch.zeros(2, inputs.img_regions, inputs.img_dim)
            b["img_mask"] = torch.ones(2, inputs.img_regions, dtype=torch.bool)
        if inputs.img_pooled:
            b["img_pooled"] = torch.zeros(2, inputs.img_pooled_width)
        if inputs.img_boxes and inputs.img_regions:
            b["img_boxes"] = torch.zeros(2, inputs.img_regions, 5)
        if inputs.txt_tokens:
            b["txt_tokens"] = torch.zeros(2, inputs.txt_tokens, inputs.txt_dim)
            b["txt_mask"] = torch.ones(2, inputs.txt_tokens, dtype=torch.bool)
        if inputs.txt_pooled:
            b["txt_pooled"] = torch.zeros(2, inputs.txt_pooled_width)
        was = self.base.training
        self.base.eval()
        dim = self.base(b)["fused"].shape[-1]
        self.base.train(was)
        return dim

    def check_data(self, features, text_meta=None) -> None:
        """The base head's ``check_data``."""
        self.base.check_data(features, text_meta)

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        out = dict(self.base(batch))
        fused = out["fused"]
        feats = {"img": pooled_image(batch), "txt": pooled_text(batch)}
        out["refined"] = {m: self.refiners[m](fused) for m in feats}
        out["refine_target"] = {m: self.target_proj[m](feats[m]) for m in feats}
        return out

    def refiner_loss(self, outputs: dict) -> Tensor:
        """``sum_i gamma_i * mean_b (1 - cos(R_i[b], H_i(F_i)[b]))``, a scalar."""
        total = 0.0
        for m, g in self.gammas.items():
            cos = F.cosine_similarity(outputs["refined"][m], outputs["refine_target"][m], dim=-1)
            total = total + g * (1.0 - cos).mean()
        return total

    def pretrain_loss(self, outputs: dict, batch: Dict[str, Tensor]) -> Tensor:
        """The refiner term alone (no labels needed), for refiner pretraining on unlabeled samples."""
        return self.refiner_loss(outputs)

    def extra_losses(self, outputs: dict, batch: Dict[str, Tensor], targets: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """``{"refiner": ..., "ms": ...}`` (scalars) for the trainer to add to the task loss.

        ``targets[first_task]`` holds class indices ``[B]`` (a one-hot/probability ``[B, C]`` is reduced by
        argmax), or for a multi-label first task its multi-hot ``[B, C]`` (pairs sharing a label are positives);
        negative labels (NaN rows) mark unlabeled rows and are left out of the MS term.
        """
        res = {"refiner": self.refiner_loss(outputs)}
        fused = outputs["fused"]
        if self.config.zeta > 0:
            name = self.task.tasks[0].name
            if name not in targets:
                raise FeatstoreError(f"refnet needs labels of task {name!r} for its multi-similarity term; "
                                     "pass them in targets or set zeta=0")
            y, keep = _ms_labels(self.task.tasks[0], targets[name].to(fused.device))
            c = self.config
            res["ms"] = c.zeta * multi_similarity_loss(fused[keep], y[keep], c.ms_alpha, c.ms_beta, c.ms_base,
                                                       c.ms_epsilon)
        else:
            res["ms"] = fused.new_zeros(())
        return res
