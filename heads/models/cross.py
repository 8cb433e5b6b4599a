"""``cross``: Hate-CLIPper cross fusion (Kumar & Nandakumar, 2022).

p_i = norm(Linear(img_pooled)) and p_t = norm(Linear(txt_pooled)), both ``[B, p]``; the feature interaction
matrix ``F = p_i p_t^T`` (``[B, p, p]``, ``F[b, j, k] = p_i[b, j] * p_t[b, k]``) is flattened to
``[B, p*p]`` and an MLP maps it to the fused embedding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featstore.errors import FeatstoreError

from ..outputs import PredictionLayers
from .base import MLP, Head, pooled_image, pooled_text, register_head

NORMS = ("none", "l2", "layernorm")


@dataclass
class CrossConfig:
    proj_dim: int = 64  # p: the interaction matrix is p x p
    norm: str = "l2"  # normalisation of the projections: none, l2 or layernorm
    hidden: List[int] = field(default_factory=lambda: [512])  # MLP widths after the flattened matrix
    activation: str = "relu"
    dropout: float = 0.1
    proj_dropout: float = 0.1
    out_hidden: int = 0
    out_dropout: float = 0.0

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise FeatstoreError(f"cross norm={self.norm!r} is not known; use one of: {', '.join(NORMS)}")
        if self.proj_dim <= 0:
            raise FeatstoreError(f"cross proj_dim={self.proj_dim} must be positive; use e.g. proj_dim=64")


class _Projection(nn.Module):
    """``[B, D] -> [B, p]``: Linear, dropout, then the configured normalisation."""

    def __init__(self, in_dim: int, p: int, norm: str, dropout: float):
        super().__init__()
        self.linear = nn.Linear(in_dim, p)
        self.dropout = nn.Dropout(dropout)
        self.norm_kind = norm
        self.norm = nn.LayerNorm(p) if norm == "layernorm" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.dropout(self.linear(x)))
        return F.normalize(x, dim=-1) if self.norm_kind == "l2" else x


@register_head("cross", CrossConfig, help="Hate-CLIPper cross fusion: outer product of projected image/text")
class CrossHead(Head):
    """Outputs also ``"interaction"``: the ``[B, p, p]`` matrix before flattening."""

    needs = frozenset({"img_pooled", "txt_pooled"})

    def __init__(self, inputs, task, config: CrossConfig):
        super().__init__(inputs, task, config)
        p = config.proj_dim
        self.img_proj = _Projection(inputs.img_dim, p, config.norm, config.proj_dropout)
        self.txt_proj = _Projection(inputs.txt_dim, p, config.norm, config.proj_dropout)
        self.mlp = MLP(p * p, config.hidden, config.activation, config.dropout)
        self.outputs = PredictionLayers(task, self.mlp.out_dim, config.out_hidden, config.out_dropout)

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        pi = self.img_proj(pooled_image(batch))
        pt = self.txt_proj(pooled_text(batch))
        inter = torch.bmm(pi.unsqueeze(2), pt.unsqueeze(1))  # [B, p, p]
        fused = self.mlp(inter.flatten(1))
        return {"logits": self.outputs(fused), "fused": fused, "interaction": inter,
                "img_proj": pi, "txt_proj": pt}
