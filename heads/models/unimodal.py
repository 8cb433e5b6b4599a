"""``text-only`` and ``image-only``: an MLP on one modality's pooled vector (baselines).

When the feature set has only regions/tokens, the pooled vector is their masked mean.

``forward(batch) -> {"logits": {task: [B, task.num_outputs]}, "fused": [B, hidden[-1]]}``: the pooled vector
``[B, D]`` through the hidden blocks, then ``heads.outputs.PredictionLayers`` (``out_hidden`` 0: one Linear per
task). A hidden block is Linear, activation, Dropout; with ``batch_norm=true`` it is Linear, BatchNorm1d,
activation, Dropout, the order of MMF's ``MLPClassifer`` (mmf/modules/layers.py). The default layout
(``mlp.0`` Linear, ``mlp.3`` Linear, ...) is ``heads.models.base.MLP``'s, so runs saved before the option
reopen unchanged.

MMF's Hateful Memes baselines (Kiela et al. 2020, projects/others/unimodal/configs/hateful_memes/):

* Image-Grid (``image.yaml``, MMF's ``unimodal_image``) is ``--preset image-grid-hm``: the ImageNet ResNet-152
  res5c map average-pooled to one 2048-d vector, then ``MLPClassifer(num_layers=2, hidden_dim=768)``, i.e.
  ``hidden=[768, 768], batch_norm=true, dropout=0.5`` and the 768 -> 2 prediction Linear. What differs: MMF
  fine-tunes the ResNet with the classifier; here the pooled vector is cached (``featstore extract
  --extractor grid``) and frozen, so only the MLP trains.
* Image-Region (``with_features.yaml``) is the ``image-region`` head (``heads.models.image_region``,
  ``--preset image-region-hm``): detectron.lmdb's regions averaged over 100 zero-padded slots, Detectron's fc7
  + ReLU, then the same MLPClassifer.
* Text BERT (``bert.yaml``, MMF's ``unimodal_text``) fine-tunes all of BERT and classifies its pooler output:
  that is the ``text-bert`` head (``heads.models.text_bert``, ``--preset text-bert-hm``), not ``text-only``,
  whose cached, frozen BERT states make a different system.
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
    batch_norm: bool = False  # BatchNorm1d after each hidden Linear (MMF's MLPClassifer); needs hidden
    out_hidden: int = 0
    out_dropout: float = 0.0

    def validate(self) -> None:
        check_mlp_options(self)


def check_mlp_options(c) -> None:
    """One-line refusals of ``c.hidden`` / ``c.batch_norm`` (any config ``hidden_blocks`` builds from)."""
    if any(int(h) <= 0 for h in c.hidden):
        raise FeatstoreError(f"hidden={c.hidden} has a non-positive width; use e.g. hidden=[512]")
    if not isinstance(c.batch_norm, bool):
        raise FeatstoreError(f"batch_norm={c.batch_norm!r} must be true or false; e.g. --set batch_norm=true")
    if c.batch_norm and not c.hidden:
        raise FeatstoreError("batch_norm=true normalises the hidden layers but hidden=[] has none; "
                             "pass e.g. --set hidden='[768, 768]' or --set batch_norm=false")


def hidden_blocks(in_dim: int, config: UnimodalConfig) -> MLP:
    """The hidden blocks of ``config`` on ``[B, in_dim]`` inputs (``MLP``, with BatchNorm1d when
    ``batch_norm``; its ``out_dim`` attribute is the fused width)."""
    return MLP(in_dim, config.hidden, config.activation, config.dropout, batch_norm=config.batch_norm)


def refuse_single_row(head: Head, x: Tensor) -> None:
    """BatchNorm1d cannot train on one row: a one-line error instead of torch's ValueError."""
    if head.config.batch_norm and head.training and x.shape[0] < 2:
        raise FeatstoreError(
            f"head {head.head_name!r} with batch_norm=true got a training batch of {x.shape[0]} row; "
            "BatchNorm1d needs at least 2 in train mode: pass a --batch-size that leaves no single row "
            "over (train rows % batch size != 1)")


class _Unimodal(Head):
    modality = ""

    def __init__(self, inputs, task, config: UnimodalConfig):
        super().__init__(inputs, task, config)
        dim = inputs.img_pooled_width if self.modality == "image" else inputs.txt_pooled_width
        self.mlp = hidden_blocks(dim, config)
        self.outputs = PredictionLayers(task, self.mlp.out_dim, config.out_hidden, config.out_dropout)

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        x = pooled_image(batch) if self.modality == "image" else pooled_text(batch)
        refuse_single_row(self, x)
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
