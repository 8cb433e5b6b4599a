"""``text-only`` and ``image-only``: an MLP on one modality's pooled vector (baselines).

When the feature set has only regions/tokens, the pooled vector is their masked mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from torch import Tensor

from featstore.errors import FeatstoreError

from ..outputs import PredictionLayers
from .base import MLP, Head, pooled_image, pooled_text, register_head


@dataclass
class UnimodalConfig:
    hidden: List[int] = field(default_factory=lambda: [512])  # MLP widths; the last is the fused size
    activation: str = "relu"
    dropout: float = 0.1
    out_hidden: int = 0
    out_dropout: float = 0.0

    def validate(self) -> None:
        if any(int(h) <= 0 for h in self.hidden):
            raise FeatstoreError(f"hidden={self.hidden} has a non-positive width; use e.g. hidden=[512]")


class _Unimodal(Head):
    modality = ""

    def __init__(self, inputs, task, config: UnimodalConfig):
        super().__init__(inputs, task, config)
        dim = inputs.img_dim if self.modality == "image" else inputs.txt_dim
        self.mlp = MLP(dim, config.hidden, config.activation, config.dropout)
        self.outputs = PredictionLayers(task, self.mlp.out_dim, config.out_hidden, config.out_dropout)

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        x = pooled_image(batch) if self.modality == "image" else pooled_text(batch)
        fused = self.mlp(x)
        return {"logits": self.outputs(fused), "fused": fused}


@register_head("text-only", UnimodalConfig, help="MLP on the pooled text vector only (baseline)")
class TextOnlyHead(_Unimodal):
    """fused = MLP(txt_pooled) : ``[B, Dt] -> [B, hidden[-1]]``."""

    needs = frozenset({"txt_pooled"})
    modality = "text"


@register_head("image-only", UnimodalConfig, help="MLP on the pooled image vector only (baseline)")
class ImageOnlyHead(_Unimodal):
    """fused = MLP(img_pooled) : ``[B, Di] -> [B, hidden[-1]]``."""

    needs = frozenset({"img_pooled"})
    modality = "image"
