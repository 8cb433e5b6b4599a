"""The batched box layouts equal, bit for bit, a per-image float64 transcription of their formulas.

References (written here from the docstrings, python floats): a grid cell (i, j) of a ``W x H`` window at
(x0, y0) is ``[x0 + j*(W/cols), y0 + i*(H/rows), x0 + (j+1)*(W/cols), y0 + (i+1)*(H/rows)]`` (the cell rounded
to float32 before the offset is added, as the stores have always held it); an adaptive-pool bin covers map rows
``[floor(i*h/rows), ceil((i+1)*h/rows))``, i.e. ``[a*H/h, b*H/h)`` of the image.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from featstore.extractors.geometry import adaptive_bin_boxes_batch, grid_cell_boxes_batch
from featstore.extractors.patch_regions import region_boxes


def _sizes(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(1, 2000, n), rng.integers(1, 2000, n)], 1)


def _f32(x: float) -> float:
    return float(np.float32(x))


def _grid_ref(w, h, rows, cols):
    return [[j * (w / cols), i * (h / rows), (j + 1) * (w / cols), (i + 1) * (h / rows)]
            for i in range(rows) for j in range(cols)]


@pytest.mark.parametrize("rows,cols", [(6, 6), (2, 3), (1, 1), (16, 16)])
def test_grid_cells_of_many_sizes_equal_the_per_image_formula(rows, cols):
    sizes = _sizes()
    got = grid_cell_boxes_batch(torch.as_tensor(sizes), rows, cols).numpy()
    want = np.array([_grid_ref(float(w), float(h), rows, cols) for w, h in sizes], dtype=np.float64).astype(np.float32)
    assert got.dtype == np.float32 and got.shape == (len(sizes), rows * cols, 4)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("map_hw,g", [((7, 7), 6), ((19, 25), 6), ((4, 6), 3), ((1, 1), 2)])
def test_adaptive_bins_of_many_sizes_equal_the_per_image_formula(map_hw, g):
    mh, mw = map_hw
    sizes = _sizes(seed=1)
    got = adaptive_bin_boxes_batch(torch.as_tensor(sizes), map_hw, g, g).numpy()
    for n, (w, h) in enumerate(sizes.tolist()):
        ys = [(math.floor(i * mh / g), math.ceil((i + 1) * mh / g)) for i in range(g)]
        xs = [(math.floor(j * mw / g), math.ceil((j + 1) * mw / g)) for j in range(g)]
        want = [[a * w / mw, c * h / mh, b * w / mw, d * h / mh] for c, d in ys for a, b in xs]
        np.testing.assert_array_equal(got[n], np.array(want, dtype=np.float64).astype(np.float32))


def test_region_boxes_offset_windows_and_picked_cells():
    windows = torch.tensor([[10.5, 3.0, 110.5, 53.0], [0.0, 0.0, 37.0, 91.0]], dtype=torch.float32)
    idx = torch.tensor([[0, 5, 15], [3, 3, 12]])
    got = region_boxes(windows, 4, 3, idx).numpy()
    for n, (x0, y0, x1, y1) in enumerate(windows.tolist()):
        cells = _grid_ref(x1 - x0, y1 - y0, 4, 4)
        for k, c in enumerate(idx[n].tolist()):
            want = [_f32(_f32(v) + o) for v, o in zip(cells[c], (x0, y0, x0, y0))]
            assert got[n, k].tolist() == want
    # interp: 4 -> 3 antialiased, a triangle of half-width 4/3: region (1, 1), centred at 2.0, reads patches 1..2
    # (centres 1.5, 2.5) on both axes, region 0 (centre 2/3) patches 0..1; x0 + lo * (W / 4), rounded once
    interp = region_boxes(windows, 4, 9).numpy()
    assert interp.shape == (2, 9, 4)
    assert interp[0, 4].tolist() == [_f32(10.5 + 25.0), _f32(3.0 + 12.5), _f32(10.5 + 3 * 25.0), _f32(3.0 + 3 * 12.5)]
    assert interp[0, 0].tolist() == [_f32(10.5), _f32(3.0), _f32(10.5 + 2 * 25.0), _f32(3.0 + 2 * 12.5)]
