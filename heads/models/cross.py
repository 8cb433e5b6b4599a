"""``cross``: the Hate-CLIPper head (Kumar & Nandakumar, 2022; gokulkarthik/hateclipper ``engine.py``).

Forward, for pooled image ``x_i [B, Di]`` and pooled text ``x_t [B, Dt]`` (Hate-CLIPper feeds CLIP's
pre-projection ``pooler_output``: pass ``--image-pool pooler --text-pool pooler``)::

    p_i = normalize(Dropout(p0)(Linear(Di, n)(x_i)))        # the reference's image_map, then F.normalize
    p_t = normalize(Dropout(p0)(Linear(Dt, n)(x_t)))        # (mapping_layers > 1 adds ReLU, Linear(n, n), Dropout)
    f   = cross:  flatten(p_i p_t^T)   [B, n*n]   (the feature interaction matrix, F[b, j, k] = p_i[b, j] p_t[b, k])
          align:  p_i * p_t            [B, n]
          concat: [p_i; p_t]           [B, 2n]
          cross_nd: cross with the diagonal F[b, j, j] set to 0;  align_concat: [p_i * p_t; p_i; p_t]  [B, 3n]
    h   = Dropout(p1)(f), then pre_output_layers x (Linear(., m), ReLU, Dropout(p2))
    z   = Linear(m, 1)(h)              # the reference's one output unit, trained with BCEWithLogits
    logits = [0, z]                    # binary_logits=1 (default); h is the head's "fused" embedding

``normalize`` is the L2 norm over features (``norm="l2"``, as published; ``none``/``layernorm`` are offered
for ablations). Defaults are the reference's ``main.py``: ``map_dim`` n = 768, one mapping layer, one
pre-output layer of width ``m = n``, ``drop_probs`` 0.1 / 0.4 / 0.2. ``main.py``'s own ``--fusion`` default
(``clip``) is not among its choices, so the fusion default here is the head's name, ``cross``. At those
defaults the flattened matrix has 768 x 768 = 589,824 entries and the pre-output Linear 453 M parameters,
as the reference's would (GPU-sized; ``heads list`` says so). The published rows are
``HATECLIPPER_SETTINGS`` below and the presets ``hateclipper-align`` (the paper's n = m = 1024 align row,
about 5 M parameters) and ``hateclipper-cross`` (run.sh's n = 32 cross row, which trains in seconds on a CPU).

A binary task's output is the reference's: one Linear unit ``z`` (``binary_logits=1``,
``heads.outputs.PredictionLayers``), shown as the logits ``[0, z]``, on which the softmax cross-entropy every head
here trains with is exactly ``BCEWithLogits(z)`` and ``softmax[:, 1] = sigmoid(z)``, so the parameters, their
PyTorch initialisation, the AdamW steps and the gradient-norm clip are the reference's (two free logits,
``--set binary_logits=2``, would be the same model family but not the same training: AdamW moves ``w_1 - w_0``
about twice as fast). Runs saved before run format 3 had two logits and reopen so. Other tasks (multiclass,
multilabel) keep one logit per class.

``--init-checkpoint`` reads the reference's own checkpoint whole (``heads.hateclipper_checkpoint``: the output
unit copies as it is; into a ``binary_logits=2`` head it becomes the rows ``[0, w]`` / ``[0, b]``).

Outputs besides ``logits`` / ``fused``: ``img_proj`` / ``txt_proj`` (``p_i``, ``p_t``), ``interaction``
(``[B, n, n]``, cross and cross_nd fusion only) and ``embed``: the last pre-output Linear's output before its ReLU (the
embedding RGCL retrieves with, ``mlp[:-2]`` in JingbiaoMei/RGCL's ``classifier_hateClipper``; ``f`` itself
when there are no pre-output layers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featstore.errors import FeatstoreError

from ..outputs import PredictionLayers
from .base import Head, activation, pooled_image, pooled_text, register_head

NORMS = ("none", "l2", "layernorm")
FUSIONS = ("cross", "align", "concat", "cross_nd", "align_concat")  # main.py's choices but attention_m

# AdamW (every run here), constant learning rate (no warmup), best epoch kept, no early stop
_PAPER_TRAIN = {"lr": 1e-4, "weight_decay": 1e-4, "grad_clip": 0.1, "batch_size": 64, "epochs": 20,
                "warmup_ratio": 0.0, "schedule": "constant", "patience": 0}
# The published settings, for presets and the README. "train" keys are heads.train.TrainConfig fields.
HATECLIPPER_SETTINGS = {
    "align": {  # the paper's best row: 0.858 test_seen AUROC, frozen CLIP ViT-L/14 at 224 px, ~5 M parameters
        "source": "Kumar & Nandakumar 2022, Hate-CLIPper (arXiv 2210.05916): align fusion, n = m = 1024, "
                  "3 pre-output layers, "
                  "AdamW lr 1e-4, weight decay 1e-4, gradient clip 0.1, batch 64, up to 20 epochs",
        "head_cfg": {"fusion": "align", "proj_dim": 1024, "pre_output_layers": 3, "proj_dropout": 0.1,
                     "fusion_dropout": 0.4, "dropout": 0.2},
        "train": {**_PAPER_TRAIN, "monitor": "batch_auroc", "auroc_batch": 64},  # engine.py's logged val/auroc
    },
    "cross-run.sh": {  # what the repository's run.sh trains (differs from the paper's best row)
        "source": "gokulkarthik/hateclipper run.sh: --map_dim 32 --fusion cross --num_pre_output_layers 1 "
                  "--drop_probs 0.2 0.4 0.1 --batch_size 16 --lr 0.0001 --max_epochs 20",
        "head_cfg": {"fusion": "cross", "proj_dim": 32, "pre_output_layers": 1, "proj_dropout": 0.2,
                     "fusion_dropout": 0.4, "dropout": 0.1},
        "train": {**_PAPER_TRAIN, "batch_size": 16, "monitor": "batch_auroc", "auroc_batch": 16},
    },
}


@dataclass
class CrossConfig:
    fusion: str = "cross"  # cross (n*n interaction matrix) | align (product) | concat | cross_nd | align_concat
    proj_dim: int = 768  # n: the reference's map_dim (main.py default 768)
    pre_output_layers: int = 1  # the reference's num_pre_output_layers
    pre_output_dim: Optional[int] = None  # m, width of every pre-output layer; None = proj_dim (the reference)
    hidden: Optional[List[int]] = None  # explicit pre-output widths instead of pre_output_layers x pre_output_dim
    mapping_layers: int = 1  # the reference's num_mapping_layers
    proj_dropout: float = 0.1  # drop_probs[0], after each mapping Linear
    fusion_dropout: float = 0.4  # drop_probs[1], on the fused vector
    dropout: float = 0.2  # drop_probs[2], after each pre-output ReLU
    norm: str = "l2"  # normalisation of the projections: l2 (published), none or layernorm
    activation: str = "relu"
    out_hidden: int = 0
    out_dropout: float = 0.0
    binary_logits: int = 1  # 1: the reference's one BCE logit (as logits [0, z]); 2: two softmax logits
    # "own": in training, ``embed`` comes from a pass of the pre-output layers of its own, before the logits'
    # pass, so their dropout is drawn apart, as RGCL's classifier.py (``embed = self.mlp[:-2](x)``, then
    # ``self.output_layer(self.mlp(x))``); "shared": one pass gives both (eval mode: the same either way)
    embed_pass: str = "shared"

    def validate(self) -> None:
        if self.embed_pass not in ("shared", "own"):
            raise FeatstoreError(f"cross embed_pass={self.embed_pass!r} is invalid; use shared or own (RGCL's "
                                 "separate pass)")
        if self.binary_logits not in (1, 2):
            raise FeatstoreError(f"cross binary_logits={self.binary_logits!r} is invalid; use 1 (Hate-CLIPper's one "
                                 "BCE logit) or 2 (two softmax logits)")
        if self.fusion not in FUSIONS:
            raise FeatstoreError(f"cross fusion={self.fusion!r} is not known; use one of: {', '.join(FUSIONS)}")
        if self.norm not in NORMS:
            raise FeatstoreError(f"cross norm={self.norm!r} is not known; use one of: {', '.join(NORMS)}")
        if self.proj_dim <= 0:
            raise FeatstoreError(f"cross proj_dim={self.proj_dim} must be positive; use e.g. proj_dim=768")
        if self.pre_output_layers < 0 or self.mapping_layers < 1:
            raise FeatstoreError(f"cross pre_output_layers={self.pre_output_layers} must be >= 0 and "
                                 f"mapping_layers={self.mapping_layers} >= 1; use e.g. pre_output_layers=1")
        if self.hidden is not None and any(int(h) <= 0 for h in self.hidden):
            raise FeatstoreError(f"cross hidden={self.hidden} has a non-positive width; use e.g. hidden=[512]")

    def widths(self) -> List[int]:
        """The pre-output layer widths: ``hidden`` when given, else ``pre_output_layers`` x ``m``."""
        if self.hidden is not None:
            return [int(h) for h in self.hidden]
        return [int(self.pre_output_dim or self.proj_dim)] * self.pre_output_layers

    def fused_in(self) -> int:
        """Width of the fused vector ``f``."""
        return fused_width(self.fusion, self.proj_dim)


def fused_width(fusion: str, n: int) -> int:
    """Width of ``fusion``'s fused vector at projection width ``n``."""
    return {"cross": n * n, "cross_nd": n * n, "align": n, "concat": 2 * n, "align_concat": 3 * n}[fusion]


class _Projection(nn.Module):
    """``[B, D] -> [B, n]``: Linear, Dropout (and ReLU, Linear, Dropout per extra layer), then the norm."""

    def __init__(self, in_dim: int, n: int, layers: int, norm: str, dropout: float):
        super().__init__()
        blocks: List[nn.Module] = [nn.Linear(in_dim, n), nn.Dropout(dropout)]
        for _ in range(1, layers):
            blocks += [nn.ReLU(), nn.Linear(n, n), nn.Dropout(dropout)]
        self.map = nn.Sequential(*blocks)
        self.norm_kind = norm
        self.norm = nn.LayerNorm(n) if norm == "layernorm" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.map(x))
        return F.normalize(x, p=2, dim=-1) if self.norm_kind == "l2" else x


class _PreOutput(nn.Module):
    """``Dropout(p1)`` then per width ``Linear, activation, Dropout(p2)``; returns (output, pre-activation)."""

    def __init__(self, in_dim: int, widths: List[int], act: str, fusion_dropout: float, dropout: float):
        super().__init__()
        self.fusion_dropout = nn.Dropout(fusion_dropout)
        self.linears = nn.ModuleList()
        d = in_dim
        for w in widths:
            self.linears.append(nn.Linear(d, w))
            d = w
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = d

    def forward(self, f: Tensor, embed_only: bool = False):
        """-> (output, the last Linear's pre-activation ``embed``); ``embed_only``: stop at ``embed`` (no last
        activation and dropout, as RGCL's ``mlp[:-2]``), output None."""
        h = self.fusion_dropout(f)
        embed = f
        for i, lin in enumerate(self.linears):
            embed = lin(h)
            if embed_only and i == len(self.linears) - 1:
                return None, embed
            h = self.dropout(self.act(embed))
        return h, embed


def fuse(kind: str, pi: Tensor, pt: Tensor) -> Tensor:
    """The fused vector of Hate-CLIPper's ``fusion`` (module docstring) from ``p_i``, ``p_t`` ``[B, n]``."""
    if kind == "align":
        return pi * pt
    if kind == "concat":
        return torch.cat([pi, pt], dim=-1)
    if kind == "align_concat":
        return torch.cat([pi * pt, pi, pt], dim=-1)
    f = torch.bmm(pi.unsqueeze(2), pt.unsqueeze(1))
    if kind == "cross_nd":  # the interaction matrix without its diagonal p_i[j] p_t[j]
        f = f * (1 - torch.eye(f.shape[1], dtype=f.dtype, device=f.device))
    return f.flatten(1)


@register_head("cross", CrossConfig,
               help="Hate-CLIPper: projected, L2-normalised image/text; cross (outer product), align or concat fusion")
class CrossHead(Head):
    needs = frozenset({"img_pooled", "txt_pooled"})

    def __init__(self, inputs, task, config: CrossConfig):
        super().__init__(inputs, task, config)
        n = config.proj_dim
        self.img_proj = _Projection(inputs.img_pooled_width, n, config.mapping_layers, config.norm, config.proj_dropout)
        self.txt_proj = _Projection(inputs.txt_pooled_width, n, config.mapping_layers, config.norm, config.proj_dropout)
        self.pre_output = _PreOutput(config.fused_in(), config.widths(), config.activation,
                                     config.fusion_dropout, config.dropout)
        self.outputs = PredictionLayers(task, self.pre_output.out_dim, config.out_hidden, config.out_dropout,
                                        config.binary_logits)

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        pi = self.img_proj(pooled_image(batch))
        pt = self.txt_proj(pooled_text(batch))
        f = fuse(self.config.fusion, pi, pt)
        own = self.training and self.config.embed_pass == "own"
        embed = self.pre_output(f, embed_only=True)[1] if own else None
        fused, shared = self.pre_output(f)
        embed = shared if embed is None else embed
        out = {"logits": self.outputs(fused), "fused": fused, "embed": embed, "img_proj": pi, "txt_proj": pt}
        if self.config.fusion in ("cross", "cross_nd"):
            out["interaction"] = f.view(f.shape[0], pi.shape[1], pt.shape[1])
        return out
