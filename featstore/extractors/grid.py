"""``grid``: a CNN's last feature map average-pooled to a G x G grid of region vectors.

Preprocessing: the WHOLE image is resized (bilinear, antialiased) to ``image_size x image_size`` - no
crop - then the backbone's mean/std normalisation. The last map (h x w; 7x7 for ResNet at 224 px) is
``adaptive_avg_pool2d``-ed to G x G: pooled cell i averages map rows ``[floor(i*h/G), ceil((i+1)*h/G))``,
which overlap when G does not divide h (7 -> 6: cell 0 averages map rows 0-1, i.e. [0, 2/7] of the image
side, not [0, 1/6]). ``boxes`` are exactly those areas (``geometry.adaptive_bin_boxes``, the map taken to
tile the image evenly) in original-image pixels, row-major; they equal the G x G equal cells only when G
divides the map (e.g. grid_size 7 at 224 px, or image_size 192 / 384 for G = 6).

Output (R = grid_size**2, D = backbone channels, 2048 for ResNet-152, 320 for tf_efficientnet_lite0):
``regions [N, R, D]`` per item, ``count`` int32 [N] (= R), ``boxes [N, R, 4]``, ``image_size`` int32 [N, 2]
(width, height of the original), ``pooled [N, D]``; boxes are always float32 (mean of the regions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from ..errors import FeatstoreError
from .base import BaseConfig, register_extractor
from .images import require_pil
from .cnn import CNNExtractor
from .geometry import adaptive_bin_boxes_batch
from .pixels import ResizeRecipe
from .weights import DEMO, DEMO_IMAGE_BACKBONE


@dataclass
class GridConfig(BaseConfig):
    """backbone: torchvision ResNet name or timm model; weights='demo' selects tf_efficientnet_lite0."""

    backbone: str = "resnet152"
    image_size: int = 224
    grid_size: int = 6

    def __post_init__(self):
        super().__post_init__()
        if self.weights == DEMO and self.backbone == "resnet152":
            self.backbone = DEMO_IMAGE_BACKBONE
        if self.image_size < 32 or self.grid_size < 1:
            raise FeatstoreError(f"image_size={self.image_size} / grid_size={self.grid_size} are invalid; "
                                 "use image_size >= 32 and grid_size >= 1")

    def resize_recipe(self) -> ResizeRecipe:
        return ResizeRecipe("square", self.image_size, "bilinear")


def pil_to_normalized(img: Image.Image, size_wh, mean, std) -> torch.Tensor:
    """PIL RGB -> resized (bilinear, antialiased) float32 [3, h, w] normalised with mean/std."""
    require_pil(img)
    w, h = size_wh
    img = img.convert("RGB") if img.mode != "RGB" else img
    x = TF.resize(img, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.normalize(TF.to_tensor(x), list(mean), list(std))


@register_extractor("grid", GridConfig, help="CNN last stage pooled to a GxG grid (ResNet-152 default, 36x2048)")
class GridExtractor(CNNExtractor):
    @property
    def num_regions(self) -> int:
        return self.config.grid_size ** 2

    def schema(self):
        r, d = self.num_regions, self.backbone.channels
        return {**self.region_schema(r, d), "pooled": self.fspec(d)}

    def preprocessing(self) -> Dict[str, Any]:
        s = self.config.image_size
        return {"resize": [s, s], "crop": None, "interpolation": "bilinear-antialias",
                "mean": list(self.backbone.mean), "std": list(self.backbone.std), "boxes": "adaptive_bin_boxes"}

    def preprocess(self, item) -> Dict[str, torch.Tensor]:
        """A PIL image -> ``image`` normalised float32 [3, s, s]; a ``ResizedImage`` (``resize_recipe()``)
        -> ``image`` its uint8 [s, s, 3] pixels, normalised in ``forward`` (same numbers)."""
        resized = self.resized_item(item)
        if resized is not None:
            return resized
        s = self.config.image_size
        x = pil_to_normalized(item, (s, s), self.backbone.mean, self.backbone.std)
        return {"image": x, "size": torch.tensor(item.size, dtype=torch.int64)}

    @torch.inference_mode()
    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        g = self.config.grid_size
        with self.autocast():
            fmap = self.backbone(self.image_input(batch["image"], self.backbone.mean, self.backbone.std))
        pooled_map = F.adaptive_avg_pool2d(fmap.float(), (g, g))  # [N, D, g, g]
        regions = pooled_map.flatten(2).transpose(1, 2)  # [N, g*g, D], row-major cells
        sizes = batch["size"]
        hw = tuple(fmap.shape[-2:])
        boxes = adaptive_bin_boxes_batch(sizes.cpu(), hw, g, g)
        n = regions.shape[0]
        return {"regions": self.out(regions), "count": np.full(n, g * g, dtype=np.int32),
                "boxes": boxes.numpy(), "image_size": self.out_int(sizes),
                "pooled": self.out(regions.mean(dim=1))}
