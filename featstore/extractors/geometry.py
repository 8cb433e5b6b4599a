"""Box layouts and resize arithmetic shared by the image extractors (pure functions, no models).

All boxes are ``float32 [M, 4]`` as x1, y1, x2, y2 in pixels of the image they are computed for.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch


def grid_cell_boxes(width: float, height: float, rows: int, cols: int) -> torch.Tensor:
    """The ``rows x cols`` equal cells covering a ``width x height`` image, row-major (top-left first).

    Returns ``float32 [rows * cols, 4]``; cell (i, j) is ``[j*W/cols, i*H/rows, (j+1)*W/cols, (i+1)*H/rows]``.
    """
    return grid_cell_boxes_batch(torch.tensor([[width, height]], dtype=torch.float64), rows, cols)[0]


def grid_cell_boxes_batch(sizes: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``grid_cell_boxes`` of every image at once: ``sizes`` ``[N, 2]`` (width, height) -> ``float32
    [N, rows * cols, 4]``, computed in float64 with the same operations (so equal bit for bit)."""
    wh = sizes.to(torch.float64).reshape(-1, 2)
    xs = torch.arange(cols + 1, dtype=torch.float64)[None] * (wh[:, :1] / cols)  # [N, cols + 1]
    ys = torch.arange(rows + 1, dtype=torch.float64)[None] * (wh[:, 1:] / rows)  # [N, rows + 1]
    n = wh.shape[0]
    x1, x2 = (xs[:, None, :-1].expand(n, rows, cols), xs[:, None, 1:].expand(n, rows, cols))
    y1, y2 = (ys[:, :-1, None].expand(n, rows, cols), ys[:, 1:, None].expand(n, rows, cols))
    return torch.stack([x1, y1, x2, y2], dim=-1).reshape(n, rows * cols, 4).float()


def adaptive_bins(size: int, out: int) -> list:
    """The ``[start, end)`` index ranges ``adaptive_avg_pool`` averages: bin i of ``out`` over ``size`` cells is
    ``[floor(i*size/out), ceil((i+1)*size/out))`` (bins overlap when ``out`` does not divide ``size``)."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def adaptive_bin_boxes(width: float, height: float, map_hw: Tuple[int, int], rows: int, cols: int) -> torch.Tensor:
    """The image area each cell of ``adaptive_avg_pool2d(fmap, (rows, cols))`` actually averages.

    ``map_hw`` is the feature map's (h, w); its cell (k, l) is taken to span ``[l*W/w, (l+1)*W/w) x
    [k*H/h, (k+1)*H/h)`` of the ``width x height`` image (the map tiles the image evenly). Pooled cell (i, j)
    averages map rows / columns ``adaptive_bins``, so its box is the union of those cells; row-major,
    ``float32 [rows * cols, 4]``. When ``rows`` / ``cols`` divide the map this is ``grid_cell_boxes``.
    """
    return adaptive_bin_boxes_batch(torch.tensor([[width, height]], dtype=torch.float64), map_hw, rows, cols)[0]


def adaptive_bin_boxes_batch(sizes: torch.Tensor, map_hw: Tuple[int, int], rows: int, cols: int,
                             window: Optional[Tuple[float, float, float, float]] = None) -> torch.Tensor:
    """``adaptive_bin_boxes`` of every image at once: ``sizes`` ``[N, 2]`` (width, height) -> ``float32
    [N, rows * cols, 4]`` (float64 arithmetic ``bin * extent / map cells``, as for one image).

    ``window``: the part of each image the map tiles, as fractions ``(x1, y1, x2, y2)`` of its sides (a
    centre crop's window); None is the whole image (the same arithmetic as before the option, bit for bit).
    """
    mh, mw = int(map_hw[0]), int(map_hw[1])
    wh = sizes.to(torch.float64).reshape(-1, 2)
    by = torch.tensor(adaptive_bins(mh, rows), dtype=torch.float64)  # [rows, 2] map-row ranges
    bx = torch.tensor(adaptive_bins(mw, cols), dtype=torch.float64)  # [cols, 2]
    if window is None:
        ys = by[None] * wh[:, 1, None, None] / mh  # [N, rows, 2]
        xs = bx[None] * wh[:, 0, None, None] / mw  # [N, cols, 2]
    else:
        x1, y1, x2, y2 = (float(v) for v in window)
        ys = (y1 + by[None] / mh * (y2 - y1)) * wh[:, 1, None, None]
        xs = (x1 + bx[None] / mw * (x2 - x1)) * wh[:, 0, None, None]
    n = wh.shape[0]
    x = xs[:, None].expand(n, rows, cols, 2)
    y = ys[:, :, None].expand(n, rows, cols, 2)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1).reshape(n, rows * cols, 4).float()


def _starts(extent: float, box: float) -> list:
    """Tile starts along one axis: 0, box/2, box, ... while the box fits; plus one box flush with the far
    edge when the last regular tile leaves a gap (so the whole extent is covered)."""
    stride = box / 2.0
    n = int(math.floor((extent - box) / stride + 1e-6)) + 1
    starts = [i * stride for i in range(max(n, 1))]
    if starts[-1] + box < extent - 1e-6 * max(extent, 1.0):
        starts.append(extent - box)
    return starts


def multiscale_tiles(width: float, height: float, scales: Sequence[float]) -> torch.Tensor:
    """Overlapping multi-scale grid proposals for a ``width x height`` image.

    For each scale ``s`` in the given order: boxes of ``s*W x s*H``, stride half a box in each direction
    (50% overlap), starting at the top-left corner; along an axis where the half-box steps do not end exactly
    at the image edge, one extra box is placed flush with the edge. Within a scale the boxes are row-major.
    With scales (1.0, 0.75, 0.5, 0.25) that is 1 + 2x2 + 3x3 + 7x7 = 63 boxes. Returns ``float32 [M, 4]``.
    """
    out = []
    for s in scales:
        if not 0 < s <= 1:
            raise ValueError(f"scale {s} must be in (0, 1]")
        bw, bh = s * width, s * height
        xs, ys = _starts(width, bw), _starts(height, bh)
        for y in ys:
            for x in xs:
                out.append([x, y, x + bw, y + bh])
    return torch.tensor(out, dtype=torch.float64).float()


def _cover(n: int) -> list:
    """Start indices whose tiles abut and reach the far edge: every second one (stride = half a box) + the last."""
    idx = list(range(0, n, 2))
    return idx if idx[-1] == n - 1 else idx + [n - 1]


def _spread(items: list, k: int) -> list:
    """``k`` of ``items`` evenly spaced through the list (the middle one for k = 1)."""
    if k >= len(items):
        return list(items)
    if k == 1:
        return [items[len(items) // 2]]
    return [items[int(math.floor(i * (len(items) - 1) / (k - 1) + 0.5))] for i in range(k)]


def balanced_subset(ny: int, nx: int, budget: int) -> list:
    """Which of an ``ny x nx`` tiling's tiles to keep (``(row, col)`` pairs, row-major) when only ``budget`` fit.

    All of them when they fit. Otherwise first the covering tiles (``_cover`` on both axes: abutting tiles
    that cover the whole image), then the tiles centred on the covering tiles' shared corners (a non-covering
    index on both axes), evenly spaced, then the other tiles, evenly spaced. Raises ``ValueError`` when
    ``0 < budget <`` the covering tiles."""
    every = [(i, j) for i in range(ny) for j in range(nx)]
    if budget >= len(every) or budget <= 0:
        return every[:max(budget, 0)]
    cy, cx = _cover(ny), _cover(nx)
    cover = [(i, j) for i in cy for j in cx]
    if len(cover) > budget:
        raise ValueError(f"covering the image takes {len(cover)} tiles, only {budget} left")
    corners = [(i, j) for i, j in every if i not in cy and j not in cx]
    keep = cover + _spread(corners, budget - len(cover))
    rest = [t for t in every if t not in keep]
    return sorted(keep + _spread(rest, budget - len(keep)))


def balanced_tiles(width: float, height: float, scales: Sequence[float], count: int) -> torch.Tensor:
    """``count`` of the ``multiscale_tiles`` proposals such that every kept scale covers the whole image.

    Scales are taken in the given order (coarse first), each whole while the budget lasts; the first scale
    that does not fit gets the rest of the budget through ``balanced_subset`` and later scales get none.
    Within a scale the kept boxes stay row-major. Default scales (1.0, 0.75, 0.5, 0.25) and 36: the whole
    image, the 2x2 and 3x3 tilings, and 22 of the 7x7 quarter-size tiles: the 4x4 abutting tiling (tile
    starts 0, 1/4, 1/2, 3/4 of each side) + 6 tiles centred on its inner corners (centres x in {1/4, 3/4},
    y in {1/4, 1/2, 3/4}). Raises ``ValueError`` when a scale's covering tiles do not fit the budget left."""
    out, left = [], int(count)
    for s in scales:
        bw, bh = s * width, s * height
        xs, ys = _starts(width, bw), _starts(height, bh)
        try:
            keep = balanced_subset(len(ys), len(xs), left)
        except ValueError as e:
            raise ValueError(f"scale {s}: {e}") from None
        out += [[xs[j], ys[i], xs[j] + bw, ys[i] + bh] for i, j in keep]
        left -= len(keep)
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 4).float()


def balanced_counts(scales: Sequence[float]) -> list:
    """The ``count`` values ``balanced_tiles`` accepts, as inclusive ``(lo, hi)`` ranges."""
    ranges, before = [], 0
    for s in scales:
        n = len(_starts(1.0, s))
        full, cover = n * n, len(_cover(n)) ** 2
        ranges.append((before + cover, before + full))
        before += full
    merged: list = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def resize_keep_aspect(width: int, height: int, shorter: int, max_side: int) -> Tuple[int, int]:
    """Scale so the shorter side is ``shorter`` unless the longer side would exceed ``max_side``
    (then the longer side is ``max_side``), as Faster R-CNN / bottom-up-attention do. Returns (w, h)."""
    scale = min(shorter / min(width, height), max_side / max(width, height))
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))
