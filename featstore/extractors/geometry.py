"""Box layouts and resize arithmetic shared by the image extractors (pure functions, no models).

All boxes are ``float32 [M, 4]`` as x1, y1, x2, y2 in pixels of the image they are computed for.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch


def grid_cell_boxes(width: float, height: float, rows: int, cols: int) -> torch.Tensor:
    """The ``rows x cols`` equal cells covering a ``width x height`` image, row-major (top-left first).

    Returns ``float32 [rows * cols, 4]``; cell (i, j) is ``[j*W/cols, i*H/rows, (j+1)*W/cols, (i+1)*H/rows]``.
    """
    xs = torch.arange(cols + 1, dtype=torch.float64) * (width / cols)
    ys = torch.arange(rows + 1, dtype=torch.float64) * (height / rows)
    y1, x1 = torch.meshgrid(ys[:-1], xs[:-1], indexing="ij")
    y2, x2 = torch.meshgrid(ys[1:], xs[1:], indexing="ij")
    return torch.stack([x1, y1, x2, y2], dim=-1).reshape(-1, 4).float()


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


def resize_keep_aspect(width: int, height: int, shorter: int, max_side: int) -> Tuple[int, int]:
    """Scale so the shorter side is ``shorter`` unless the longer side would exceed ``max_side``
    (then the longer side is ``max_side``), as Faster R-CNN / bottom-up-attention do. Returns (w, h)."""
    scale = min(shorter / min(width, height), max_side / max(width, height))
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))
