"""A ViT's g x g patch grid reduced to R region vectors with boxes (shared by ``dinov2`` and ``clip-image``).

``reduce``:
  * ``"interp"``: bilinear resampling of the grid to r x r (R = r*r must be a square; align_corners=False;
    ``antialias=True`` by default, so every patch contributes, as in a triangle-filter downscale); regions
    row-major; boxes the r x r cells of the area the grid sees;
  * ``"attention"``: the R patches with the highest CLS attention in the model's last layer (averaged over
    heads), in decreasing attention order; boxes those patches' cells.

Boxes are in original-image pixels: ``window`` is the part of the original image the patch grid covers
(the whole image for a plain resize, the centre crop's area for CLIP's processor).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import FeatstoreError
from .geometry import grid_cell_boxes_batch

REDUCTIONS = ("interp", "attention")


def check_region_options(num_regions: int, reduce: str) -> None:
    """One-line errors for an unknown ``reduce``, a non-positive count or a non-square count under interp."""
    if reduce not in REDUCTIONS:
        raise FeatstoreError(f"reduce={reduce!r} is unknown; use one of {', '.join(REDUCTIONS)}")
    if num_regions < 1:
        raise FeatstoreError(f"num_regions={num_regions} is invalid; use a positive number")
    if reduce == "interp" and math.isqrt(num_regions) ** 2 != num_regions:
        raise FeatstoreError(f"num_regions={num_regions} is not a square; reduce='interp' needs r*r regions "
                             "(e.g. 36, 49) or use reduce='attention'")


def check_fits_grid(num_regions: int, grid: int) -> None:
    if num_regions > grid * grid:
        raise FeatstoreError(f"num_regions={num_regions} exceeds the {grid}x{grid} patch grid; "
                             "use fewer regions or a larger image_size")


def attention_indices(attn: torch.Tensor, grid: int, num_regions: int) -> torch.Tensor:
    """``attn`` [N, heads, S, S] (last layer; token 0 = CLS, tokens 1..g*g = patches) -> [N, R] patch indices,
    sorted by decreasing CLS attention averaged over heads."""
    cls_attn = attn.float().mean(dim=1)[:, 0, 1:1 + grid * grid]
    return torch.topk(cls_attn, num_regions, dim=1).indices


def reduce_patches(patches: torch.Tensor, grid: int, num_regions: int, antialias: bool,
                   idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``patches`` [N, g*g, D] (row-major) -> regions [N, R, D] (interp, or gathered at ``idx`` [N, R])."""
    patches = patches.float()
    if idx is not None:
        return torch.gather(patches, 1, idx[..., None].expand(-1, -1, patches.shape[-1]))
    n, r = patches.shape[0], math.isqrt(num_regions)
    fmap = patches.reshape(n, grid, grid, -1).permute(0, 3, 1, 2)
    small = F.interpolate(fmap, size=(r, r), mode="bilinear", align_corners=False, antialias=antialias)
    return small.flatten(2).transpose(1, 2)


def region_boxes(windows, grid: int, num_regions: int, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Boxes [N, R, 4] (float32, original pixels): per image its ``window`` (x1, y1, x2, y2; ``[N, 4]``) cut
    into r x r cells (interp) or into the g x g patch cells picked by ``idx``; all images at once."""
    win = torch.as_tensor(windows, dtype=torch.float64).reshape(-1, 4)
    side = grid if idx is not None else math.isqrt(num_regions)
    cells = grid_cell_boxes_batch(win[:, 2:] - win[:, :2], side, side).double() + win[:, None, [0, 1, 0, 1]]
    if idx is not None:
        cells = torch.gather(cells, 1, idx.cpu()[..., None].expand(-1, -1, 4))
    return cells.float()
