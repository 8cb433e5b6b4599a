"""``image-region``: the Hateful Memes paper's Image-Region baseline as MMF computes it
(projects/others/unimodal/configs/hateful_memes/with_features.yaml over image.yaml; mmf/configs/models/unimodal/
with_features.yaml; mmf/models/unimodal.py ``UnimodalModal`` with ``direct_features_input: true``).

Forward (B rows, N = ``num_regions`` = 100, Di = 2048 region width, F = ``fc7_dim`` = 2048):

* regions: ``img_regions [B, R, Di]`` with ``img_mask [B, R]``, as MMF's ``image_feature_0``: the masked positions
  zeroed and the batch zero-padded back to ``[B, N, Di]`` (MMF's ``PaddedFasterRCNNFeatureReader`` zero-pads to
  ``max_features`` 100, so padded boxes are zeros).
* ``UnimodalModal.forward``: ``torch.mean(image_feature_0, dim=1)`` ``[B, Di]`` - the mean over all N slots,
  zero padding included (sum of the real regions / N), computed here as exactly that.
* ``UnimodalBase``: the modal encoder ``finetune_faster_rcnn_fpn_fc7`` (``heads.fc7.Fc7``: ``relu(lc(x))``,
  ``fc7.lc`` Linear(Di, F)) -> ``[B, F]``, flattened (``num_output_features`` 1: already ``[B, F]``).
* classifier ``mlp`` MLPClassifer(in_dim F, hidden_dim 768, num_layers 2; dropout 0.5, relu, batch_norm):
  ``heads.models.unimodal.hidden_blocks`` -> ``fused [B, 768]`` -> ``PredictionLayers`` -> ``logits [B, K]``.

Note: mmf/models/unimodal.py before MMF's Hateful Memes config update (#118) hard-coded ``num_features = 100``
and classified the flattened ``[B, 100 * F]`` fc7 outputs; the released configs (``num_output_features: 1``)
and the current model average the regions first, which is what is built here.

Initialisation: ``fc7.lc`` is Detectron's fc7 (``fc7_weights``: the unpacked vmb_weights folder), copied at
training start by ``load_init_files`` (``heads.train._build_head``), not at construction, so ``heads predict``
rebuilds the run without the pickles; the MLP keeps PyTorch's default init, as MMF's. ``--init-checkpoint`` takes
MMF's own fine-tuned Image-Region ``model.pth`` (``heads.mmf_checkpoint``: fc7 and the classifier whole). MMF fine-tunes fc7 with
the classifier (one AdamW group, weight decay 0), as heads train does.

What differs from MMF: nothing in the forward; the regions are whatever image set is fed (MMF's are
detectron.lmdb's, imported with ``featstore import detectron.lmdb --format mmf-lmdb``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from torch import Tensor

from ..fc7 import Fc7, check_fc7_options, check_region_count, fc7_to_copy, load_fc7_init, padded_regions
from ..outputs import PredictionLayers
from .base import Head, register_head
from .unimodal import UnimodalConfig, check_mlp_options, hidden_blocks, refuse_single_row


@dataclass
class ImageRegionConfig(UnimodalConfig):
    """MMF's Image-Region defaults: MLPClassifer(hidden_dim 768, num_layers 2, dropout 0.5, batch_norm)."""

    hidden: List[int] = field(default_factory=lambda: [768, 768])
    dropout: float = 0.5
    batch_norm: bool = True
    num_regions: int = 100  # MMF's max_features: regions per image, zero-padded
    fc7_dim: int = 2048  # fc7's output width (Detectron's: 2048; the pickles' bias length)
    fc7_weights: str = ""  # folder of Detectron's fc7_w.pkl / fc7_b.pkl (unpacked vmb_weights.tar.gz); "" = random

    def validate(self) -> None:
        check_mlp_options(self)
        check_fc7_options(self)


@register_head("image-region", ImageRegionConfig,
               help="MMF's Image-Region: mean of 100 zero-padded regions -> Detectron fc7 + ReLU -> MLPClassifer")
class ImageRegionHead(Head):
    """fused = MLP(fc7(mean of the N zero-padded regions)) : ``[B, R, Di] -> [B, hidden[-1]]``."""

    needs = frozenset({"img_regions"})

    def __init__(self, inputs, task, config: ImageRegionConfig):
        super().__init__(inputs, task, config)
        check_region_count(self.head_name, inputs, config.num_regions)
        self.fc7 = Fc7(inputs.img_dim, config.fc7_dim)
        self.mlp = hidden_blocks(config.fc7_dim, config)
        self.outputs = PredictionLayers(task, self.mlp.out_dim, config.out_hidden, config.out_dropout)

    def load_init_files(self, report):
        """Detectron's fc7 from ``fc7_weights`` (``heads.fc7.load_fc7_init``) -> the LoadReport."""
        return load_fc7_init(self, self.config.fc7_weights, report)

    def check_init_files(self, report) -> None:
        """``load_init_files``' one-line refusals, nothing copied (``heads.fc7.fc7_to_copy``)."""
        fc7_to_copy(self, self.config.fc7_weights, report)

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        regions = padded_regions(batch, self.config.num_regions)  # [B, N, Di]
        x = self.fc7(regions.mean(dim=1))  # UnimodalModal: mean over the N slots, then the encoder
        refuse_single_row(self, x)
        fused = self.mlp(x)
        return {"logits": self.outputs(fused), "fused": fused}
