"""``singlestream``: a single-stream transformer over cached ``[text token states; regions]``.

A light single-stream fusion in the spirit of VisualBERT, for any cached token states (BERT, DistilBERT,
CLIP text). It is not VisualBERT: that model (``visualbert``, ``heads.models.visualbert``) embeds the
token ids itself and runs BERT over both modalities from its embedding layer; this head instead starts
from the cached states, with its own small transformer. (Runs saved before format_version 2 as
"visualbert" were this head; ``heads.runs.load_run`` reopens them as ``singlestream``.)

Embeddings: text ``Linear(txt_dim, hidden)``; regions ``Linear(img_dim, hidden) + Linear(5, hidden)(box)``
(zero boxes when the batch has none); plus a segment embedding (0 = text, 1 = image) and, for text, a
learned position embedding; LayerNorm, dropout. ``nn.TransformerEncoder`` (post-norm, GELU) with the
padding masks as ``src_key_padding_mask``. Pooled on the first token (text token 0, the [CLS] state) by a
BERT pooler (Linear + tanh) -> fused ``[B, hidden]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
from torch import Tensor, nn

from featstore.errors import FeatstoreError

from ..outputs import PredictionLayers
from .base import Head, image_boxes, image_mask, register_head, text_mask


@dataclass
class SingleStreamConfig:
    hidden: int = 768
    heads: int = 12
    layers: int = 4
    ffn: int = 3072
    dropout: float = 0.1
    max_text_len: int = 512  # size of the text position table
    out_hidden: int = 0
    out_dropout: float = 0.0

    def validate(self) -> None:
        if self.heads <= 0 or self.hidden % self.heads:
            raise FeatstoreError(f"singlestream hidden={self.hidden} is not a multiple of heads={self.heads}; "
                                 "change one of them")
        if self.layers < 1:
            raise FeatstoreError(f"singlestream layers={self.layers}; use at least 1")


@register_head("singlestream", SingleStreamConfig,
               help="small single-stream transformer over cached [token states; regions], first-token pool")
class SingleStreamHead(Head):
    needs = frozenset({"img_regions", "txt_tokens"})

    def __init__(self, inputs, task, config: SingleStreamConfig):
        super().__init__(inputs, task, config)
        c = config
        if inputs.txt_tokens > c.max_text_len:
            raise FeatstoreError(f"singlestream max_text_len={c.max_text_len} is shorter than the {inputs.txt_tokens} "
                                 f"cached text tokens; pass max_text_len={inputs.txt_tokens}")
        self.txt_proj = nn.Linear(inputs.txt_dim, c.hidden)
        self.img_proj = nn.Linear(inputs.img_dim, c.hidden)
        self.box_proj = nn.Linear(5, c.hidden)
        self.segment = nn.Embedding(2, c.hidden)
        self.position = nn.Embedding(c.max_text_len, c.hidden)
        self.norm = nn.LayerNorm(c.hidden, eps=1e-12)
        self.drop = nn.Dropout(c.dropout)
        layer = nn.TransformerEncoderLayer(c.hidden, c.heads, c.ffn, c.dropout, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.pooler = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.Tanh())
        self.outputs = PredictionLayers(task, c.hidden, c.out_hidden, c.out_dropout)

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        tokens, regions = batch["txt_tokens"], batch["img_regions"]
        t_mask, r_mask = text_mask(batch), image_mask(batch)
        T = tokens.shape[1]
        if T > self.position.num_embeddings:
            raise FeatstoreError(f"batch has {T} text tokens but singlestream max_text_len="
                                 f"{self.position.num_embeddings}; rebuild the head with max_text_len={T}")
        pos = torch.arange(T, device=tokens.device)
        t = self.txt_proj(tokens) + self.position(pos) + self.segment.weight[0]
        v = self.img_proj(regions) + self.box_proj(image_boxes(batch)) + self.segment.weight[1]
        x = self.drop(self.norm(torch.cat([t, v], dim=1)))
        pad = ~torch.cat([t_mask, r_mask], dim=1)
        h = self.encoder(x, src_key_padding_mask=pad)
        fused = self.pooler(h[:, 0])
        return {"logits": self.outputs(fused), "fused": fused}
