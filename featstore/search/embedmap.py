"""2-D map of pooled embeddings coloured by label (t-SNE or PCA), saved as a PNG.

Like the embedding figure of the ReFNet paper: one point per sample, one colour per label, a legend.
``embed_2d`` is the computation (no I/O), ``plot_embedding_map`` draws and saves it with matplotlib's
Agg backend (no display needed).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import FeatstoreError
from .index import check_vectors

METHODS = ("tsne", "pca")


def embed_2d(vectors, method: str = "tsne", seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """Project ``vectors [N, D]`` to ``[N, 2]`` float64 with scikit-learn's ``TSNE`` or ``PCA``.

    t-SNE uses PCA initialisation and ``perplexity = min(perplexity, (N - 1) / 3)`` so small sets work.
    """
    if method not in METHODS:
        raise FeatstoreError(f"unknown embedding map method {method!r}; choose one of: {', '.join(METHODS)}")
    x = check_vectors(vectors).astype(np.float64)
    n = x.shape[0]
    if n < 3:
        raise FeatstoreError(f"an embedding map needs at least 3 vectors, got {n}; select more samples")
    if method == "pca":
        from sklearn.decomposition import PCA

        if x.shape[1] < 2:
            raise FeatstoreError("PCA to 2-D needs vectors with at least 2 dimensions; got 1")
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    perp = float(min(perplexity, (n - 1) / 3.0))
    init = "pca" if x.shape[1] >= 2 else "random"
    return TSNE(n_components=2, perplexity=perp, init=init, random_state=seed).fit_transform(x)


def plot_embedding_map(vectors, labels: Sequence[Any], out_png, method: str = "tsne", seed: int = 0, *,
                       title: Optional[str] = None, point_size: float = 12.0, dpi: int = 100,
                       legend_title: str = "label") -> np.ndarray:
    """Save a scatter plot of ``vectors [N, D]`` projected to 2-D, one colour per distinct label
    (matplotlib ``tab10``/``tab20`` order of the sorted labels), with a legend titled ``legend_title``. Returns
    the ``[N, 2]`` coordinates that were plotted. The PNG is written under a temporary name and renamed."""
    labels = list(labels)
    x = check_vectors(vectors)
    if len(labels) != x.shape[0]:
        raise FeatstoreError(f"{len(labels)} labels for {x.shape[0]} vectors; pass one label per vector")
    out_png = os.fspath(out_png)
    parent = os.path.dirname(os.path.abspath(out_png))
    if not os.path.isdir(parent):
        raise FeatstoreError(f"cannot write {out_png!r}: folder {parent!r} does not exist; create it first")
    coords = embed_2d(x, method=method, seed=seed)

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = sorted({str(lab) for lab in labels})
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    str_labels = np.asarray([str(lab) for lab in labels])
    fig = Figure(figsize=(6.4, 5.6), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for c, name in enumerate(classes):
        sel = str_labels == name
        ax.scatter(coords[sel, 0], coords[sel, 1], s=point_size, color=cmap(c % cmap.N), label=name,
                   linewidths=0)
    ax.legend(title=legend_title, loc="best", markerscale=1.5, fontsize=8)
    ax.set_title(title or f"{method.upper()} of {x.shape[0]} embeddings ({x.shape[1]}-d)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    from .outputs import AtomicOutputs

    with AtomicOutputs() as files:
        fig.savefig(files.path(out_png), format="png")
    return coords
