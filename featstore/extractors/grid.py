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

``preprocess="mmf-hateful-memes"`` is instead MMF's Hateful Memes image processor
(mmf/configs/datasets/hateful_memes/defaults.yaml, the ResNet-152 baselines' input): Resize to 256 x 256
(bilinear, antialiased: torchvision's ``Resize`` on a PIL image), CenterCrop 224 (rows and columns 16-239,
torchvision's ``int(round((256 - 224) / 2))``), ToTensor, Normalize with Hateful Memes' own mean / std
(``MMF_HM_MEAN`` / ``MMF_HM_STD``, not ImageNet's). It needs image_size 224. Then ``pooled`` is the res5c
map's global average (MMF's ``ResNet152ImageEncoder``: ``AdaptiveAvgPool2d((1, 1))``) at any grid_size, and
``boxes`` are the pooled bins inside the crop window, in original-image pixels. Files are decoded as MMF's
loader decodes them, ``Image.open(path).convert("RGB")`` (``images.load_image(decode="convert-rgb")``:
alpha dropped, EXIF orientation ignored; featstore's own decode composites alpha on white and applies it), in
the run loop and the image cache through the resize recipe's ``decode``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from ..errors import FeatstoreError
from .base import BaseConfig, register_extractor
from .images import CONVERT_RGB, require_pil
from .cnn import CNNExtractor
from .geometry import adaptive_bin_boxes_batch
from .pixels import ResizeRecipe
from .weights import DEMO, DEMO_IMAGE_BACKBONE


WHOLE, MMF_HM = "whole", "mmf-hateful-memes"
PREPROCESS = (WHOLE, MMF_HM)
MMF_HM_MEAN = (0.46777044, 0.44531429, 0.40661017)  # mmf/configs/datasets/hateful_memes/defaults.yaml Normalize
MMF_HM_STD = (0.12221994, 0.12145835, 0.14380469)
MMF_HM_RESIZE, MMF_HM_CROP = 256, 224


@dataclass
class GridConfig(BaseConfig):
    """backbone: torchvision ResNet name or timm model; weights='demo' selects tf_efficientnet_lite0.
    preprocess: ``whole`` (the whole image resized to image_size, the backbone's mean / std) or
    ``mmf-hateful-memes`` (MMF's Resize 256, CenterCrop 224, Hateful Memes mean / std; module docstring)."""

    backbone: str = "resnet152"
    image_size: int = 224
    grid_size: int = 6
    preprocess: str = WHOLE

    def __post_init__(self):
        super().__post_init__()
        if self.weights == DEMO and self.backbone == "resnet152":
            self.backbone = DEMO_IMAGE_BACKBONE
        if self.image_size < 32 or self.grid_size < 1:
            raise FeatstoreError(f"image_size={self.image_size} / grid_size={self.grid_size} are invalid; "
                                 "use image_size >= 32 and grid_size >= 1")
        if self.preprocess not in PREPROCESS:
            raise FeatstoreError(f"preprocess={self.preprocess!r} is not known; use one of {', '.join(PREPROCESS)}")
        if self.preprocess == MMF_HM and self.image_size != MMF_HM_CROP:
            raise FeatstoreError(f"preprocess={MMF_HM!r} is MMF's Resize {MMF_HM_RESIZE} + CenterCrop {MMF_HM_CROP}; "
                                 f"it needs image_size={MMF_HM_CROP} (got {self.image_size}): drop --set image_size")

    def resize_recipe(self) -> ResizeRecipe:
        if self.preprocess == MMF_HM:
            return ResizeRecipe("square", MMF_HM_RESIZE, "bilinear", decode=CONVERT_RGB)
        return ResizeRecipe("square", self.image_size, "bilinear")

    def crop(self) -> Optional[Tuple[int, int]]:
        """(offset, size) of the square centre crop taken after the resize (torchvision's CenterCrop
        offset), None for ``whole``."""
        if self.preprocess != MMF_HM:
            return None
        return int(round((MMF_HM_RESIZE - MMF_HM_CROP) / 2.0)), MMF_HM_CROP


def pil_to_normalized(img: Image.Image, size_wh, mean, std) -> torch.Tensor:
    """PIL RGB -> resized (bilinear, antialiased) float32 [3, h, w] normalised with mean/std."""
    require_pil(img)
    w, h = size_wh
    img = img.convert("RGB") if img.mode != "RGB" else img
    x = TF.resize(img, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.normalize(TF.to_tensor(x), list(mean), list(std))


@register_extractor("grid", GridConfig, help="CNN last stage pooled to a GxG grid (ResNet-152 default, 36x2048)")
class GridExtractor(CNNExtractor):
    def __init__(self, config: GridConfig, name: str):
        super().__init__(config, name)
        mmf = config.preprocess == MMF_HM
        self.mean = MMF_HM_MEAN if mmf else self.backbone.mean
        self.std = MMF_HM_STD if mmf else self.backbone.std

    @property
    def num_regions(self) -> int:
        return self.config.grid_size ** 2

    def schema(self):
        r, d = self.num_regions, self.backbone.channels
        return {**self.region_schema(r, d), "pooled": self.fspec(d)}

    def preprocessing(self) -> Dict[str, Any]:
        recipe, crop = self.config.resize_recipe(), self.config.crop()
        s = recipe.size
        out = {"resize": [s, s], "crop": None, "interpolation": "bilinear-antialias",
               "mean": list(self.mean), "std": list(self.std), "boxes": "adaptive_bin_boxes"}
        if crop is not None:
            out.update(crop={"center": [crop[1], crop[1]], "offset": [crop[0], crop[0]]},
                       pooled="global_average", recipe=MMF_HM, decode=recipe.decode)
        return out

    def preprocess(self, item) -> Dict[str, torch.Tensor]:
        """A PIL image -> ``image`` normalised float32 [3, s, s]; a ``ResizedImage`` (``resize_recipe()``)
        -> ``image`` its uint8 [s, s, 3] pixels, normalised in ``forward`` (same numbers). With a centre
        crop (``mmf-hateful-memes``) either is cropped after the resize: the crop commutes with the
        per-pixel normalisation, so both paths still give the same numbers."""
        resized = self.resized_item(item)
        if resized is not None:
            resized["image"] = self._crop(resized["image"], channels_first=False)
            return resized
        s = self.config.resize_recipe().size
        x = pil_to_normalized(item, (s, s), self.mean, self.std)
        return {"image": self._crop(x, channels_first=True), "size": torch.tensor(item.size, dtype=torch.int64)}

    def _crop(self, x: torch.Tensor, channels_first: bool) -> torch.Tensor:
        crop = self.config.crop()
        if crop is None:
            return x
        lo, hi = crop[0], crop[0] + crop[1]
        return (x[:, lo:hi, lo:hi] if channels_first else x[lo:hi, lo:hi]).contiguous()

    def _window(self) -> Optional[Tuple[float, float, float, float]]:
        """The crop as fractions of the image side (the part the feature map tiles); None: the whole image."""
        crop = self.config.crop()
        if crop is None:
            return None
        side = float(self.config.resize_recipe().size)
        lo, hi = crop[0] / side, (crop[0] + crop[1]) / side
        return lo, lo, hi, hi

    @torch.inference_mode()
    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        g = self.config.grid_size
        with self.autocast():
            fmap = self.backbone(self.image_input(batch["image"], self.mean, self.std))
        pooled_map = F.adaptive_avg_pool2d(fmap.float(), (g, g))  # [N, D, g, g]
        regions = pooled_map.flatten(2).transpose(1, 2)  # [N, g*g, D], row-major cells
        sizes = batch["size"]
        hw = tuple(fmap.shape[-2:])
        boxes = adaptive_bin_boxes_batch(sizes.cpu(), hw, g, g, window=self._window())
        # MMF's pooled vector is the map's global average; ``whole`` keeps the mean of the cells it always stored
        pooled = fmap.float().mean(dim=(2, 3)) if self.config.crop() is not None else regions.mean(dim=1)
        n = regions.shape[0]
        return {"regions": self.out(regions), "count": np.full(n, g * g, dtype=np.int32),
                "boxes": boxes.numpy(), "image_size": self.out_int(sizes), "pooled": self.out(pooled)}
