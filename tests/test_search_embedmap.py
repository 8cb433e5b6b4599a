"""Embedding maps: PCA against a float64 SVD, t-SNE keeps the cluster structure, the PNG shows the classes."""
import matplotlib
import numpy as np
import pytest
from PIL import Image
from sklearn.manifold import trustworthiness

from featstore.errors import FeatstoreError
from featstore.search import embed_2d, plot_embedding_map


def _clusters(n_per=40, d=20, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, d)) * 6
    x = np.concatenate([c + rng.standard_normal((n_per, d)) for c in centers]).astype(np.float32)
    labels = ["not hateful"] * n_per + ["hateful"] * n_per + ["benign confounder"] * n_per
    return x, labels


def test_pca_matches_float64_svd():
    x, _ = _clusters()
    coords = embed_2d(x, method="pca")
    xc = x.astype(np.float64) - x.astype(np.float64).mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    ref = xc @ vt[:2].T
    signs = np.sign((coords * ref).sum(0))  # components are defined up to sign
    np.testing.assert_allclose(coords * signs, ref, atol=1e-3)


def test_tsne_keeps_neighbourhoods_and_is_seeded():
    x, _ = _clusters(n_per=30)
    a = embed_2d(x, method="tsne", seed=1)
    assert a.shape == (90, 2)
    assert trustworthiness(x, a, n_neighbors=5) > 0.9
    np.testing.assert_allclose(embed_2d(x, method="tsne", seed=1), a)
    tiny = embed_2d(x[:5], method="tsne")  # perplexity lowered below N for tiny sets
    assert tiny.shape == (5, 2) and np.isfinite(tiny).all()


def test_png_has_one_colour_per_label(tmp_path):
    x, labels = _clusters()
    out = tmp_path / "map.png"
    coords = plot_embedding_map(x, labels, out, method="pca", title="pooled image vectors")
    assert coords.shape == (120, 2)
    img = np.asarray(Image.open(out).convert("RGB"), dtype=float)
    assert img.shape == (560, 640, 3)
    tab10 = matplotlib.colormaps["tab10"]
    for c, name in enumerate(sorted(set(labels))):  # colours in sorted-label order
        rgb = np.array(tab10(c)[:3]) * 255
        assert (np.abs(img - rgb).max(axis=2) < 12).sum() > 100, f"no points of class {name!r}"
    assert (np.abs(img - np.array(tab10(3)[:3]) * 255).max(axis=2) < 12).sum() < 20  # no 4th class


@pytest.mark.parametrize("args,match", [
    (dict(vectors=np.zeros((5, 3, 4)), labels=[0] * 5), r"pooled vectors \[N, D\]"),
    (dict(vectors=np.ones((5, 4)), labels=[0] * 4), "4 labels for 5 vectors"),
    (dict(vectors=np.ones((2, 4)), labels=[0] * 2), "at least 3 vectors"),
    (dict(vectors=np.ones((5, 4)), labels=[0] * 5, method="umap"), "unknown embedding map method 'umap'"),
])
def test_errors(tmp_path, args, match):
    with pytest.raises(FeatstoreError, match=match):
        plot_embedding_map(out_png=tmp_path / "m.png", **args)
    with pytest.raises(FeatstoreError, match="folder .* does not exist"):
        plot_embedding_map(np.ones((5, 4)), [0] * 5, tmp_path / "no" / "m.png")
