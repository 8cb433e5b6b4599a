"""A ViT's g x g patch grid reduced to R region vectors with boxes (shared by ``dinov2`` and ``clip-image``).

``reduce``:
  * ``"interp"``: bilinear resampling of the grid to r x r (R = r*r must be a square; align_corners=False;
    ``antialias=True`` by default, so every patch contributes, as in a triangle-filter downscale); regions
    row-major; boxes the area of the patches that contribute to each region (nonzero weight), read off the
    resampling itself (``interp_support``): with antialias a triangle filter whose support reaches about half
    a cell past the region's r x r cell on each side (at 37 -> 6, region 0 spans patches 0..8 of 37, not
    0..6); without it the (at most) 2 patches nearest the region's centre per axis, usually narrower than its cell;
  * ``"attention"``: the R patches with the highest CLS attention in the model's last layer (averaged over
    heads), in decreasing attention order; boxes those patches' cells.

Boxes are in original-image pixels: ``window`` is the part of the original image the patch grid covers
(the whole image for a plain resize, the centre crop's area for CLIP's processor).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import FeatstoreError
from .geometry import grid_cell_boxes_batch

REDUCTIONS = ("interp", "attention")
SUPPORT_EPS = 1e-6  # a patch counts in an interp region's box when its weight (of 1 in all) is above this


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


def _interpolate(fmap: torch.Tensor, r: int, antialias: bool) -> torch.Tensor:
    """The one resampling ``interp`` does ([N, C, g, g] -> [N, C, r, r]); ``interp_support`` reads its weights."""
    return F.interpolate(fmap, size=(r, r), mode="bilinear", align_corners=False, antialias=antialias)


def reduce_patches(patches: torch.Tensor, grid: int, num_regions: int, antialias: bool,
                   idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``patches`` [N, g*g, D] (row-major) -> regions [N, R, D] (interp, or gathered at ``idx`` [N, R])."""
    patches = patches.float()
    if idx is not None:
        return torch.gather(patches, 1, idx[..., None].expand(-1, -1, patches.shape[-1]))
    n, r = patches.shape[0], math.isqrt(num_regions)
    fmap = patches.reshape(n, grid, grid, -1).permute(0, 3, 1, 2)
    return _interpolate(fmap, r, antialias).flatten(2).transpose(1, 2)


@lru_cache(maxsize=32)
def _interp_support(grid: int, r: int, antialias: bool) -> torch.Tensor:
    g = grid
    basis = torch.zeros(1, 2 * g, g, g)  # channel i: patch row i all ones; channel g + i: patch column i
    ar = torch.arange(g)
    basis[0, ar, ar, :] = 1.0
    basis[0, g + ar, :, ar] = 1.0
    # a weight above rounding noise: a patch on the filter's edge has weight 0, which float arithmetic may give
    # as +-1e-16 (float64) or exactly 0 (float32) depending on the grid (14 -> 6 at CLIP ViT-B/16's 224 px)
    hit = _interpolate(basis, r, antialias)[0].reshape(2, g, r * r) > SUPPORT_EPS  # [axis, patch row / col, region]
    pos = torch.arange(g)[None, :, None].expand(2, g, r * r)
    lo = torch.where(hit, pos, g).amin(dim=1)  # [axis (y, x), region]
    hi = torch.where(hit, pos, -1).amax(dim=1) + 1
    if bool((hi <= lo).any()):  # cannot happen for bilinear; kept as a guard for a changed kernel
        raise FeatstoreError(f"a {r}x{r} region of the {g}x{g} grid has no contributing patch")
    return torch.stack([lo[1], lo[0], hi[1], hi[0]], dim=-1)  # [R, 4] x1, y1, x2, y2 in patch units


def interp_support(grid: int, num_regions: int, antialias: bool) -> torch.Tensor:
    """int64 [R, 4]: per interp region (row-major) the patches with nonzero weight in it, as the half-open
    patch range ``[x_lo, y_lo, x_hi + 1, y_hi + 1]`` (patch units of the g x g grid).

    Read off ``reduce_patches``' own resampling (same ``F.interpolate`` call: bilinear, align_corners=False,
    ``antialias``), not from a formula: a channel with patch row i all ones resamples to the sum of row i's
    weights in each region, above ``SUPPORT_EPS`` exactly when some patch of row i contributes (bilinear and
    triangle weights are never negative, so nothing cancels); likewise for columns."""
    return _interp_support(int(grid), math.isqrt(num_regions), bool(antialias)).clone()


def region_boxes(windows, grid: int, num_regions: int, idx: Optional[torch.Tensor] = None,
                 antialias: bool = True) -> torch.Tensor:
    """Boxes [N, R, 4] (float32, original pixels) per image's ``window`` (x1, y1, x2, y2; ``[N, 4]``; the area
    the g x g grid covers), all images at once.

    interp (``idx`` None): each region's ``interp_support`` (``antialias`` as in ``reduce_patches``) scaled
    to the window, ``x1 + lo * (width / g)`` in float64, so a box is the area of exactly the patches that
    contribute to its vector; ``idx`` [N, R]: the g x g patch cells picked (attention)."""
    win = torch.as_tensor(windows, dtype=torch.float64).reshape(-1, 4)
    if idx is None:
        support = interp_support(grid, num_regions, antialias).double()  # [R, 4]
        step = (win[:, 2:] - win[:, :2]) / grid  # [N, 2] one patch in pixels (x, y)
        return (win[:, None, [0, 1, 0, 1]] + support[None] * step[:, None, [0, 1, 0, 1]]).float()
    cells = grid_cell_boxes_batch(win[:, 2:] - win[:, :2], grid, grid).double() + win[:, None, [0, 1, 0, 1]]
    return torch.gather(cells, 1, idx.cpu()[..., None].expand(-1, -1, 4)).float()
