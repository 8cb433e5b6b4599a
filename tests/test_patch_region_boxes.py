"""Interp region boxes are the area of the patches that contribute to each region vector.

Reference (float64, plain python / numpy, from the filters' definitions, not from torch): resampling g patches
to r outputs along one axis with scale s = g / r, output j centred at c_j = (j + 0.5) * s;
  * antialias (triangle filter): patch i (centre i + 0.5) weighs max(0, 1 - |i + 0.5 - c_j| / s), each row
    normalised to sum 1;
  * plain bilinear (align_corners=False): source position max(c_j - 0.5, 0), its floor i0 and i0 + 1 (clamped
    to the last patch) weighted 1 - frac, frac.
The 2-d resampling of the g x g grid is that 1-d one on rows and on columns; region (j, k)'s box is
``[x1 + lo_x * w / g, y1 + lo_y * h / g, x1 + (hi_x + 1) * w / g, y1 + (hi_y + 1) * h / g]`` for the first /
last patch with nonzero reference weight along each axis, in the window (x1, y1, x2, y2) of w x h.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
from test_extractors_dinov2 import tiny_dino  # noqa: F401  (the module fixture: a 4 x 4 grid at 56 px)

from featstore.extractors import create_extractor
from featstore.extractors.cnn import IMAGENET_MEAN, IMAGENET_STD
from featstore.extractors.patch_regions import interp_support, reduce_patches, region_boxes
from featstore.store.spec import Recipe


ZERO = 1e-9  # a float64 weight at or below this is a 0 of exact arithmetic (a patch on the triangle's edge, 14 -> 6)

def _weights(g: int, r: int, antialias: bool) -> np.ndarray:
    """[r, g] float64 resampling weights, from the definitions above."""
    s = g / r
    w = np.zeros((r, g))
    for j in range(r):
        c = (j + 0.5) * s
        if antialias:
            for i in range(g):
                w[j, i] = max(0.0, 1.0 - abs(i + 0.5 - c) / s)
            w[j] /= w[j].sum()
        else:
            src = max(c - 0.5, 0.0)
            i0 = int(math.floor(src))
            i1 = min(i0 + 1, g - 1)
            w[j, i0] += 1.0 - (src - i0)
            w[j, i1] += src - i0
    return w


def _ref_boxes(window, g: int, r: int, antialias: bool) -> np.ndarray:
    """[r*r, 4] float64: per region (row-major) the extent of its nonzero-weight patches, in window pixels."""
    x1, y1, x2, y2 = (float(v) for v in window)
    pw, ph = (x2 - x1) / g, (y2 - y1) / g
    w = _weights(g, r, antialias)
    spans = [(int(np.flatnonzero(row > ZERO)[0]), int(np.flatnonzero(row > ZERO)[-1])) for row in w]
    return np.array([[x1 + spans[k][0] * pw, y1 + spans[j][0] * ph, x1 + (spans[k][1] + 1) * pw,
                      y1 + (spans[j][1] + 1) * ph] for j in range(r) for k in range(r)])


# (g, r): DINOv2 at 518 px, CLIP at 224 / 336 px, the tests' 4 x 4 grid, an odd scale (18 / 6 = 3, where the
# triangle's ends fall exactly on patch centres and plain bilinear picks one patch), r == g (identity), and
# 14 -> 6 (CLIP ViT-B/16 at 224 px), where a patch on the triangle's edge weighs 0 up to rounding
GEOMETRIES = [(37, 6), (16, 6), (24, 6), (4, 2), (18, 6), (5, 5), (14, 6)]
# non-square original images: CLIP's centre crop of a 350 x 200 and a 150 x 450 image at 224 px (offset
# windows: 350 x 200 -> 392 x 224, crop left 84, x 84 * 350 / 392 = 75 .. 275; 150 x 450 -> 224 x 672, crop
# top 224, y 150 .. 300), a plain resize of 70 x 40 (window = the whole image) and a non-square offset window
WINDOWS = [(75.0, 0.0, 275.0, 200.0), (0.0, 150.0, 150.0, 300.0), (0.0, 0.0, 70.0, 40.0), (10.5, 3.0, 110.5, 53.0)]


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("g,r", GEOMETRIES)
def test_reduce_patches_is_the_reference_weighted_sum(g, r, antialias):
    """Proves the weight reference is torch's resampling: regions = W grid W^T, for a random grid."""
    grid = np.random.default_rng(g * 10 + r).normal(size=(2, g, g, 3))
    got = reduce_patches(torch.tensor(grid.reshape(2, g * g, 3), dtype=torch.float32), g, r * r, antialias)
    w = _weights(g, r, antialias)
    want = np.einsum("ja,kb,nabd->njkd", w, w, grid).reshape(2, r * r, 3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("g,r", GEOMETRIES)
def test_boxes_are_the_extent_of_the_contributing_patches(g, r, antialias):
    got = region_boxes(torch.tensor(WINDOWS), g, r * r, antialias=antialias).numpy()
    assert got.dtype == np.float32 and got.shape == (len(WINDOWS), r * r, 4)
    w = _weights(g, r, antialias)
    for n, win in enumerate(WINDOWS):
        np.testing.assert_allclose(got[n], _ref_boxes(win, g, r, antialias), rtol=1e-6, atol=1e-4)
        x1, y1, x2, y2 = win
        pw, ph = (x2 - x1) / g, (y2 - y1) / g
        eps = 1e-3
        assert (got[n, :, :2] >= np.array([x1, y1]) - eps).all() and (got[n, :, 2:] <= np.array([x2, y2]) + eps).all()
        for j in range(r):
            for k in range(r):
                box = got[n, j * r + k]
                for a, b in zip(*np.nonzero(np.outer(w[j], w[k]) > ZERO)):  # patch row a, column b contributes
                    assert box[0] <= x1 + b * pw + eps and x1 + (b + 1) * pw <= box[2] + eps
                    assert box[1] <= y1 + a * ph + eps and y1 + (a + 1) * ph <= box[3] + eps
    if r == g:  # the identity resampling: every region is its own patch, boxes the patch cells
        cells = region_boxes(torch.tensor(WINDOWS), g, r * r, torch.arange(g * g).repeat(len(WINDOWS), 1)).numpy()
        np.testing.assert_allclose(got, cells, rtol=1e-6, atol=1e-4)


def test_dinov2_geometry_reaches_past_the_cells():
    """37 -> 6 with antialias: region 0 reads patches 0..8 (the r x r cell 0 is 0..6.17), region 1 patches 3..14;
    without antialias the 2 nearest patches (2, 3) and (8, 9)."""
    aa, plain = interp_support(37, 36, True), interp_support(37, 36, False)
    assert aa[0].tolist() == [0, 0, 9, 9] and aa[1].tolist() == [3, 0, 15, 9] and aa[35].tolist() == [28, 28, 37, 37]
    assert plain[0].tolist() == [2, 2, 4, 4] and plain[7].tolist() == [8, 8, 10, 10]
    boxes = region_boxes(torch.tensor([[0.0, 0.0, 518.0, 518.0]]), 37, 36)[0]
    assert boxes[0].tolist() == [0.0, 0.0, 126.0, 126.0]  # 9 patches of 14 px, not the 86.33 px cell


def test_dinov2_extractor_boxes_and_version(tiny_dino):  # noqa: F811
    imgs = [Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)) for w, h in [(70, 40), (30, 90)]]
    before = {"resize": [56, 56], "crop": None, "interpolation": "bicubic-antialias", "mean": list(IMAGENET_MEAN),
              "std": list(IMAGENET_STD), "patch_size": 14, "grid": 4}  # preprocessing() before interp support boxes
    for antialias in (True, False):
        ex = create_extractor("dinov2", weights=str(tiny_dino), image_size=56, num_regions=4, dtype="float32",
                              antialias=antialias)
        out = ex.forward(ex.collate([ex.preprocess(i) for i in imgs]))
        for n, im in enumerate(imgs):
            np.testing.assert_allclose(out["boxes"][n], _ref_boxes((0, 0, *im.size), 4, 2, antialias), rtol=1e-6)
        assert ex.preprocessing() == {**before, "region_boxes": "interp support"}
        cfg = dataclasses.asdict(ex.config)
        assert Recipe("dinov2", cfg, preprocessing=ex.preprocessing()).version_id != \
            Recipe("dinov2", cfg, preprocessing=before).version_id
    att = create_extractor("dinov2", weights=str(tiny_dino), image_size=56, num_regions=3, reduce="attention")
    assert att.preprocessing() == before  # attention boxes (the picked patch cells) are unchanged: same id


def test_clip_image_extractor_boxes_in_the_crop_window(tmp_path):
    torch.manual_seed(0)
    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    CLIPModel(CLIPConfig(text_config=dict(vocab_size=32, max_position_embeddings=20, **tiny), projection_dim=12,
                         vision_config=dict(image_size=224, patch_size=14, **tiny))).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(tmp_path)
    d = tmp_path
    imgs = [Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)) for w, h in [(350, 200), (150, 450)]]
    ex = create_extractor("clip-image", weights=str(d), dtype="float32")
    out = ex.forward(ex.collate([ex.preprocess(i) for i in imgs]))
    for n, win in enumerate(WINDOWS[:2]):  # the 224 px centre crops of these images, by hand (above)
        np.testing.assert_allclose(out["boxes"][n], _ref_boxes(win, 16, 6, True), rtol=1e-6, atol=1e-4)
    assert ex.preprocessing()["boxes"] == "crop_window interp support"
    for cfg in (dict(num_regions=3, reduce="attention"), dict(num_regions=0)):  # unchanged, as before
        assert create_extractor("clip-image", weights=str(d), **cfg).preprocessing()["boxes"] == "crop_window cells"
