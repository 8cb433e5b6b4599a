"""Confounder inspection: FAISS indexes, neighbours, confounder pairs, an HTML report, embedding maps.

* ``index``: ``build_index`` / ``VectorIndex`` / ``cached_index`` (FAISS, cosine or L2, flat/IVF/HNSW; on a GPU
  faiss-gpu, or torch's exact search without it).
* ``neighbors``: ``neighbors(query_ids, ids, vectors, k)`` -> ``NeighborRow`` list.
* ``confounders``: ``find_confounders`` -> ``ConfounderPair`` list, ``to_csv``, predictions overlay.
* ``report``: ``write_html_report`` (one self-contained HTML file).
* ``embedmap``: ``plot_embedding_map`` (t-SNE / PCA scatter PNG).
* ``tasks``: ``resolve_task`` (which label key the search commands show: ``--task``).
* ``outputs``: ``--out`` checks and ``AtomicOutputs`` (temporary names renamed at the end).
* ``inspect``: the store-level jobs behind `featstore neighbors`, `confounders` and `map`.
"""
from .confounders import (ConfounderPair, Prediction, find_confounders, load_predictions,
                          overlay_predictions, to_csv)
from .embedmap import embed_2d, plot_embedding_map
from .index import VectorIndex, build_index, cached_index, choose_kind, gpu_available, gpu_backend
from .neighbors import NeighborRow, neighbors
from .report import thumbnail_data_uri, write_html_report

__all__ = [
    "ConfounderPair", "NeighborRow", "Prediction", "VectorIndex", "build_index", "cached_index",
    "choose_kind", "embed_2d", "find_confounders", "gpu_available", "gpu_backend", "load_predictions",
    "neighbors", "overlay_predictions", "plot_embedding_map", "thumbnail_data_uri", "to_csv", "write_html_report",
]
