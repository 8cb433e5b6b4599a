"""dinov2 / dinov2-multilayer against Dinov2Model's own hidden states, reductions done in float64 by hand."""
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Dinov2Config, Dinov2Model

from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=56)
    d = tmp_path_factory.mktemp("dino")
    Dinov2Model(cfg).eval().save_pretrained(d)
    return d


def _imgs():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(70, 40), (30, 90)]]


def _bilinear_aa(grid, r):
    """float64 triangle-filter (antialiased bilinear) downscale of [g, g, D] to [r, r, D]."""
    g = grid.shape[0]
    scale = g / r
    w = np.zeros((r, g))
    for i in range(r):
        c = (i + 0.5) * scale
        for j in range(g):
            w[i, j] = max(0.0, 1 - abs(j + 0.5 - c) / scale)
        w[i] /= w[i].sum()
    return np.einsum("ij,kl,jld->ikd", w, w, grid)


def _bilinear(grid, r):
    """float64 plain bilinear (align_corners=False) resampling of [g, g, D] to [r, r, D]."""
    g = grid.shape[0]
    w = np.zeros((r, g))
    for i in range(r):
        s = max((i + 0.5) * g / r - 0.5, 0.0)
        j0 = int(np.floor(s))
        j1 = min(j0 + 1, g - 1)
        w[i, j0] += 1 - (s - j0)
        w[i, j1] += s - j0
    return np.einsum("ij,kl,jld->ikd", w, w, grid)


def _hf(d, x, attn="sdpa"):
    m = Dinov2Model.from_pretrained(str(d), attn_implementation=attn).eval()
    with torch.no_grad():
        return m, m(pixel_values=x, output_hidden_states=True, output_attentions=attn == "eager")


@pytest.mark.parametrize("antialias", [True, False])
def test_multilayer_interp_against_hidden_states(tiny_dino, antialias):
    ex = create_extractor("dinov2-multilayer", weights=str(tiny_dino), image_size=56, num_regions=4,
                          layers=[2, 4], dtype="float32", antialias=antialias)
    items = [ex.preprocess(i) for i in _imgs()]
    assert items[0]["image"].shape == (3, 56, 56)
    out = ex.forward(ex.collate(items))
    m, o = _hf(tiny_dino, torch.stack([it["image"] for it in items]))
    with torch.no_grad():
        assert torch.allclose(m.layernorm(o.hidden_states[4]), o.last_hidden_state, atol=1e-5)
    ref_fn = _bilinear_aa if antialias else _bilinear
    for n in range(2):
        parts, cls = [], []
        for k in (2, 4):
            h = m.layernorm(o.hidden_states[k])[n].detach().double().numpy()
            parts.append(ref_fn(h[1:].reshape(4, 4, -1), 2).reshape(4, -1))
            cls.append(h[0])
        np.testing.assert_allclose(out["regions"][n], np.concatenate(parts, -1), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["pooled"][n], np.concatenate(cls), rtol=1e-4, atol=1e-5)
    assert out["regions"].shape == (2, 4, 64) and ex.schema()["regions"].shape == (4, 64)
    # boxes: the patches contributing to each region (30 x 90 image, 7.5 x 22.5 px patches): with antialias the
    # triangle of 4 -> 2 reaches patches 0..2 / 1..3, without it the 2 nearest patches 0..1 / 2..3 (the cells)
    want = ([[0, 0, 22.5, 67.5], [7.5, 0, 30, 67.5], [0, 22.5, 22.5, 90], [7.5, 22.5, 30, 90]] if antialias else
            [[0, 0, 15, 45], [15, 0, 30, 45], [0, 45, 15, 90], [15, 45, 30, 90]])
    np.testing.assert_allclose(out["boxes"][1], want)
    assert ex.preprocessing()["region_boxes"] == "interp support"


def test_multilayer_without_layernorm_uses_raw_hidden_states(tiny_dino):
    ex = create_extractor("dinov2-multilayer", weights=str(tiny_dino), image_size=56, num_regions=16,
                          layers=[1], apply_layernorm=False, dtype="float32")
    items = [ex.preprocess(i) for i in _imgs()]
    out = ex.forward(ex.collate(items))
    _, o = _hf(tiny_dino, torch.stack([it["image"] for it in items]))
    # r == g: resampling 4x4 -> 4x4 is the identity
    np.testing.assert_allclose(out["regions"], o.hidden_states[1][:, 1:].numpy(), rtol=1e-4, atol=1e-5)


def test_dinov2_attention_topk(tiny_dino):
    ex = create_extractor("dinov2", weights=str(tiny_dino), image_size=56, num_regions=3, reduce="attention",
                          dtype="float32")
    imgs = _imgs()
    items = [ex.preprocess(i) for i in imgs]
    out = ex.forward(ex.collate(items))
    m, o = _hf(tiny_dino, torch.stack([it["image"] for it in items]), attn="eager")
    att = o.attentions[-1].double().mean(1)[:, 0, 1:].numpy()
    last = o.last_hidden_state.double().numpy()
    for n, img in enumerate(imgs):
        top = np.argsort(-att[n])[:3]
        np.testing.assert_allclose(out["regions"][n], last[n, 1 + top], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["pooled"][n], last[n, 0], rtol=1e-4, atol=1e-5)
        w, h = img.size
        rows, cols = top // 4, top % 4
        np.testing.assert_allclose(out["boxes"][n], np.stack([cols * w / 4, rows * h / 4, (cols + 1) * w / 4,
                                                              (rows + 1) * h / 4], 1), rtol=1e-5)
    assert out["count"].tolist() == [3, 3]


def test_dinov2_bad_config(tiny_dino):
    for cfg in [dict(num_regions=5), dict(reduce="max"), dict(image_size=50), dict(num_regions=25),
                dict(weights="demo")]:
        with pytest.raises(FeatstoreError):
            create_extractor("dinov2", **{"weights": str(tiny_dino), "image_size": 56, **cfg})
    with pytest.raises(FeatstoreError, match="layers"):
        create_extractor("dinov2-multilayer", weights=str(tiny_dino), image_size=56, num_regions=4, layers=[6])
    with pytest.raises(FeatstoreError, match="huggingface-cli download"):
        create_extractor("dinov2", weights="nobody/no-such-dinov2-model")
