"""``concat``: pooled image and pooled text concatenated, then an MLP -> fused embedding."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch
from torch import Tensor

from featstore.errors import FeatstoreError

from ..outputs import PredictionLayers
from .base import MLP, Head, pooled_image, pooled_text, register_head


@dataclass
class ConcatConfig:
    hidden: List[int] = field(default_factory=lambda: [512])  # MLP widths; the last is the fused size
    activation: str = "relu"
    dropout: float = 0.1
    out_hidden: int = 0  # hidden width of the prediction layers (0 = one Linear per task)
    out_dropout: float = 0.0

    def validate(self) -> None:
        if any(int(h) <= 0 for h in self.hidden):
            raise FeatstoreError(f"concat hidden={self.hidden} has a non-positive width; use e.g. hidden=[512]")


@register_head("concat", ConcatConfig, help="pooled image + pooled text concatenated, MLP")
class ConcatHead(Head):
    """fused = MLP([img_pooled; txt_pooled]) : ``[B, Di + Dt] -> [B, hidden[-1]]``."""

    needs = frozenset({"img_pooled", "txt_pooled"})

    def __init__(self, inputs, task, config: ConcatConfig):
        super().__init__(inputs, task, config)
        self.mlp = MLP(inputs.img_pooled_width + inputs.txt_pooled_width, config.hidden, config.activation,
                       config.dropout)
        self.outputs = PredictionLayers(task, self.mlp.out_dim, config.out_hidden, config.out_dropout)

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        fused = self.mlp(torch.cat([pooled_image(batch), pooled_text(batch)], dim=-1))
        return {"logits": self.outputs(fused), "fused": fused}
