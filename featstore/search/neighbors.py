"""Nearest neighbours of some items, by id, among a set of pooled vectors (cosine similarity)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import FeatstoreError
from .index import VectorIndex, build_index, check_vectors


@dataclass(frozen=True)
class NeighborRow:
    """One result row: ``neighbor`` is the ``rank``-th (1-based) nearest item to ``query``."""

    query: str
    rank: int
    neighbor: str
    similarity: float  # cosine similarity in [-1, 1]


def id_positions(ids: Sequence[str], what: str = "ids") -> Dict[str, int]:
    """Map each id to its row; duplicated ids are an error (rows must be addressable by id)."""
    ids = [str(i) for i in ids]
    pos = {i: n for n, i in enumerate(ids)}
    if len(pos) != len(ids):
        seen, dups = set(), []
        for i in ids:
            if i in seen and i not in dups:
                dups.append(i)
            seen.add(i)
        raise FeatstoreError(
            f"{what} contains {len(dups)} duplicated id(s) (first: {', '.join(map(repr, dups[:5]))}); "
            "each row needs a unique id"
        )
    return pos


def lookup(query_ids: Sequence[str], pos: Dict[str, int], what: str = "query ids") -> np.ndarray:
    """Rows of ``query_ids``; unknown ids raise one error listing the first few and how many."""
    unknown = [q for q in query_ids if str(q) not in pos]
    if unknown:
        raise FeatstoreError(
            f"{len(unknown)} of {len(query_ids)} {what} are not in the feature set "
            f"(first: {', '.join(map(repr, unknown[:5]))}); check the ids (an image set is keyed by image file "
            "stem, e.g. 01235; a text set by sample id) "
            "or extract features for them"
        )
    return np.array([pos[str(q)] for q in query_ids], dtype=np.int64)


def neighbors(query_ids: Sequence[str], ids: Sequence[str], vectors, k: int = 10,
              index: Optional[VectorIndex] = None) -> List[NeighborRow]:
    """The ``k`` nearest items (cosine) of each query id, the query itself excluded.

    ``ids [N]`` names the rows of ``vectors [N, D]`` (pooled vectors; a per-item ``[N, R, D]`` array
    is refused). ``index`` (optional) is a cosine ``VectorIndex`` already built over ``vectors``;
    by default an exact one is built. Returns rows ordered by query (input order), then rank 1..k (equal
    similarities by row, lower first: ``index``'s tie order); fewer than ``k`` per query when the set has fewer
    than ``k + 1`` items. All-zero rows are never neighbours; an all-zero query row is a one-line error naming
    its id.
    """
    if isinstance(query_ids, (str, bytes)):
        query_ids = [query_ids]
    query_ids = list(query_ids)
    ids = [str(i) for i in ids]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise FeatstoreError(f"k must be a positive integer, got {k!r}")
    if not query_ids:
        raise FeatstoreError("no query ids given; pass at least one id to find neighbours for")
    x = check_vectors(vectors, "vectors")
    if not ids:
        raise FeatstoreError("the id list is empty; pass the ids of the rows of the feature set")
    if len(ids) != x.shape[0]:
        raise FeatstoreError(
            f"{len(ids)} ids for {x.shape[0]} vector rows; pass one id per row of vectors"
        )
    pos = id_positions(ids)
    rows = lookup(query_ids, pos)
    zero = [str(q) for q, r in zip(query_ids, rows) if not x[r].any()]
    if zero:
        raise FeatstoreError(
            f"{', '.join(map(repr, zero[:5]))} {'has an' if len(zero) == 1 else 'have'} all-zero vector"
            f"{'' if len(zero) == 1 else 's'}: cosine similarity is undefined for "
            f"{'it' if len(zero) == 1 else 'them'}, so there are no neighbours to show; re-extract "
            f"{'its' if len(zero) == 1 else 'their'} features or query another key")
    if index is None:
        index = build_index(x, metric="cosine", kind="flat")
    elif index.metric != "cosine" or index.ntotal != x.shape[0] or index.dim != x.shape[1]:
        raise FeatstoreError(
            f"the given index ({index!r}) was not built over these vectors ({x.shape[0]} x {x.shape[1]}, cosine); "
            "build it with build_index(vectors) or leave index=None"
        )
    sims, idx = index.search(x[rows], k + 1)
    out: List[NeighborRow] = []
    for qi, row in enumerate(rows):
        keep = (idx[qi] >= 0) & (idx[qi] != row)
        rank = 0
        for j, s in zip(idx[qi][keep], sims[qi][keep]):
            if rank == k:
                break
            rank += 1
            out.append(NeighborRow(str(query_ids[qi]), rank, ids[j], float(s)))
    return out
