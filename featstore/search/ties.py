"""How equal scores are ordered, one rule for the CPU (faiss) and torch search paths: scores equal to
``TIE_DECIMALS`` places are ties (duplicated vectors differ by float rounding, 1.0 vs 0.99999994), and ties come
back by row, lower first."""
from __future__ import annotations

from typing import Tuple

import numpy as np

TIE_DECIMALS = 6


def order_ties_by_row(sims: np.ndarray, idx: np.ndarray, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """Each result row sorted by score (best first: largest cosine, smallest squared L2), then by row (lower
    first); -1 entries last."""
    rounded = np.round(sims.astype(np.float64), TIE_DECIMALS)
    best_first = -rounded if metric == "cosine" else rounded
    order = np.lexsort((np.where(idx < 0, np.iinfo(np.int64).max, idx), best_first), axis=-1)
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(idx, order, axis=1)
