"""Resized uint8 pixels: what an image extractor's input is before normalisation, and the one batched op
that normalises them on the device.

The CNN and ViT extractors (``grid``, ``roi``, ``dinov2``, ``dinov2-multilayer``) resize the decoded image to
their input geometry, then normalise ``(x / 255 - mean) / std``. The resize is the per-image CPU work; the
normalisation is elementwise and batches. So an extractor with a ``resize_recipe()`` also takes a
``ResizedImage`` (``ResizeRecipe.apply(load_image(path))``, or a resized entry of the decoded-image cache)
in ``preprocess``, which then returns ``image`` as uint8 ``[h, w, 3]`` pixels; ``normalize_pixels`` turns a
collated ``[N, H, W, 3]`` batch into the float32 ``[N, 3, H, W]`` input on the device (the uint8 copy is 4x
smaller than float32, pinned and non-blocking on CUDA) with exactly the numbers of the per-image path
(``TF.to_tensor`` then ``TF.normalize``: the same float32 operations in the same order, so bit-equal).

The resize itself is torchvision's ``TF.resize`` on the PIL image (Pillow's antialiased filter), the call
the per-image path makes, so cached pixels equal freshly resized ones byte for byte. ``ResizeRecipe.key()``
names everything that determines the pixels (mode, sizes, filter, torchvision and Pillow versions): the
cache keys resized entries by it, so another size or extractor never reads a wrong entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import FeatstoreError
from .geometry import resize_keep_aspect
from .images import DECODES, FEATSTORE_DECODE, require_pil

_FILTERS = ("bilinear", "bicubic")
_MODES = ("square", "keep_aspect")


@dataclass(frozen=True)
class ResizeRecipe:
    """``square``: to ``size x size``; ``keep_aspect``: shorter side to ``size`` unless the longer would pass
    ``max_side`` (``geometry.resize_keep_aspect``). ``interpolation``: bilinear | bicubic (antialiased).
    ``decode``: how the file is decoded before the resize (``images.load_image``'s ``decode``)."""

    mode: str
    size: int
    interpolation: str
    max_side: int = 0
    decode: str = FEATSTORE_DECODE

    def __post_init__(self):
        if (self.mode not in _MODES or self.interpolation not in _FILTERS or self.size < 1
                or self.decode not in DECODES):
            raise FeatstoreError(f"resize recipe {self!r} is invalid; mode in {_MODES}, interpolation in "
                                 f"{_FILTERS}, size >= 1, decode in {DECODES}")

    def target(self, width: int, height: int) -> Tuple[int, int]:
        """(width, height) an image of that size is resized to."""
        if self.mode == "square":
            return self.size, self.size
        return resize_keep_aspect(width, height, self.size, self.max_side)

    def key(self) -> str:
        """Everything that determines the resized pixels (the image cache's key for them)."""
        import PIL
        import torchvision

        decoded = "" if self.decode == FEATSTORE_DECODE else f" decode={self.decode}"  # default: the key as before
        return (f"resize/1 {self.mode} {self.size} {self.max_side} {self.interpolation}-antialias "
                f"torchvision={torchvision.__version__} Pillow={PIL.__version__}{decoded}")

    def apply(self, img) -> "ResizedImage":
        """A decoded RGB ``PIL.Image`` resized as the per-image path resizes it (``TF.resize``)."""
        import torchvision.transforms.functional as TF

        w, h = require_pil(img).size
        img = img.convert("RGB") if img.mode != "RGB" else img
        tw, th = self.target(w, h)
        mode = TF.InterpolationMode.BILINEAR if self.interpolation == "bilinear" else TF.InterpolationMode.BICUBIC
        out = TF.resize(img, [th, tw], interpolation=mode, antialias=True)
        return ResizedImage(np.array(out, dtype=np.uint8), (w, h))


@dataclass
class ResizedImage:
    """``pixels``: uint8 ``[h, w, 3]`` resized RGB; ``size``: the decoded image's (width, height) before."""

    pixels: np.ndarray
    size: Tuple[int, int]

    def tensor_for(self, recipe: ResizeRecipe) -> torch.Tensor:
        """The pixels as a uint8 ``[h, w, 3]`` tensor (no copy), refused when ``recipe`` would not make them."""
        want = recipe.target(*self.size)
        got = (self.pixels.shape[1], self.pixels.shape[0])
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 3 or self.pixels.shape[2] != 3 or got != want:
            raise FeatstoreError(f"resized image {got[0]}x{got[1]} (from {self.size[0]}x{self.size[1]}) was not made "
                                 f"by this extractor's resize ({want[0]}x{want[1]}); pass the decoded PIL image")
        return torch.from_numpy(self.pixels)


def normalize_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device,
                     channels_last: bool, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 pixels ``[N, H, W, 3]`` -> float32 ``[N, 3, H, W]`` ``(x / 255 - mean) / std`` on ``device``.

    ``channels_last``: the result in that memory format (the pixels' own layout, no transpose), else
    contiguous (the uint8 transposed, 4x cheaper than the float). ``valid`` int ``[N, 2]`` (w, h): positions
    at or past them are 0.0, as zero padding after normalisation (``roi``'s canvases).
    """
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise FeatstoreError(f"normalize_pixels takes uint8 [N, H, W, 3] pixels, got {x.dtype} {list(x.shape)}")
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2)
    if not channels_last:
        x = x.contiguous()
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device, non_blocking=True)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device, non_blocking=True)
    y = x.to(torch.float32).div_(255).sub_(m).div_(s)  # TF.to_tensor's div(255), then TF.normalize's sub_/div_
    if valid is not None:
        v = valid.to(device, non_blocking=True)
        rows = torch.arange(y.shape[2], device=device).view(1, -1, 1) < v[:, 1].view(-1, 1, 1)
        cols = torch.arange(y.shape[3], device=device).view(1, 1, -1) < v[:, 0].view(-1, 1, 1)
        y = y.masked_fill_(~(rows & cols).unsqueeze(1), 0.0)
    return y
