"""FAISS vector indexes for cosine / L2 nearest-neighbour search over pooled feature vectors.

``build_index(vectors [N, D] float32) -> VectorIndex``. The kind of index is chosen by this rule
(``kind="auto"``):

* ``N <= exact_max`` (default 200_000): ``IndexFlatIP`` / ``IndexFlatL2``, exact brute force.
* larger: an approximate index.

  - ``"hnsw"`` (``IndexHNSWFlat``, M=32, efConstruction=80, efSearch=128) when its memory,
    ``N * (4 * D + 2 * M * 4)`` bytes (vectors + level-0 graph links), fits in ``memory_budget``
    (default: half of the physical RAM) and ``N <= 5_000_000``: no training, best recall per query.
  - ``"ivf"`` (``IndexIVFFlat``) otherwise: only ``N * (4 * D + 8)`` bytes. ``nlist = 4 * sqrt(N)``
    (at most ``N / 39`` so k-means has the 39 points per centroid faiss asks for), k-means (10
    iterations) trained on a random sample of at most ``64 * nlist`` vectors;
    ``nprobe = clip(nlist // 32, 8, 64)`` unless given.

Cosine similarity is inner product on L2-normalised vectors: vectors and queries are normalised and
the index stores inner products, so ``search`` returns cosine similarities in [-1, 1]. For
``metric="l2"`` ``search`` returns squared Euclidean distances (smaller is closer).

All-zero rows (cosine): cosine similarity is undefined for them, so they never match: the index holds the
other rows only (``VectorIndex.rows`` maps its positions back to the input rows; ``ntotal`` still counts every
input row) and ``search`` never returns a zero row. A zero *query* row is an error (``normalize_rows``).
Such an index has no faiss file of its own (``save`` refuses it); ``cached_index`` rebuilds the row map from
the vectors it is given.

Ties: each result row is ordered by similarity (distance for l2), then by row, lower first. A flat CPU search
also keeps the lowest rows when several tie at the k-th place; approximate (IVF / HNSW) and GPU searches may
keep other rows among those tied at the k-th place (the order within the results is still by row).

GPU (``gpu_backend``): with ``use_gpu="auto"`` or ``True`` a flat or IVF index is moved to the GPU
(``faiss.StandardGpuResources`` + ``faiss.index_cpu_to_gpu``) when the installed faiss has GPU support (the
``faiss-gpu`` package) and sees a CUDA device; HNSW has no GPU implementation and stays on the CPU. Without
faiss-gpu (its wheels are built for CUDA 12 only), a flat index goes to torch's exact search on the GPU
(``torch_flat.TorchFlatIndex``: the same inner products / squared distances, the same results) when torch
sees a CUDA device; IVF then stays on the CPU with ``"auto"`` and is refused with ``True``. torch is only
imported for that check when it already is, when ``use_gpu=True``, or when the NVIDIA driver's device files
(``/dev/nvidia0``...) exist, so a CPU machine's search does not pay torch's import. ``save``/``to_bytes``
always write the CPU form, so a saved index loads anywhere.
"""
from __future__ import annotations

import glob
import math
import os
import sys
from typing import Callable, Optional, Tuple

import faiss
import numpy as np

from ..errors import CorruptDataError, FeatstoreError
from .ties import order_ties_by_row

EXACT_MAX = 200_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
HNSW_MAX = 5_000_000
METRICS = ("cosine", "l2")
KINDS = ("auto", "flat", "ivf", "hnsw")


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def check_vectors(vectors, what: str = "vectors") -> np.ndarray:
    """Validate a ``[N, D]`` matrix of finite numbers and return it as C-contiguous float32."""
    arr = np.asarray(vectors)
    if arr.ndim == 3:
        raise FeatstoreError(
            f"{what} has shape {list(arr.shape)} (one [R, D] array per item); pass a feature set's pooled "
            "vectors [N, D] (e.g. the `pooled`, `cls` or `mean` array) or pool the items first"
        )
    if arr.ndim != 2:
        raise FeatstoreError(f"{what} must be a 2-D array [N, D], got shape {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise FeatstoreError(f"{what} is empty (0 rows); select at least one item with features")
    if arr.shape[1] == 0:
        raise FeatstoreError(f"{what} has 0 columns; pass vectors with at least one dimension")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise FeatstoreError(f"{what} has dtype {arr.dtype}; pass real-valued (float) vectors")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise FeatstoreError(
            f"{what} has {rows.size} row(s) with NaN/inf (first rows: {', '.join(map(str, rows[:5]))}); "
            "re-extract those items or drop them"
        )
    return arr


def normalize_rows(arr: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Return an L2-normalised float32 copy of ``arr [N, D]``; all-zero rows are an error."""
    out = np.array(arr, dtype=np.float32, copy=True, order="C")
    zero = np.flatnonzero(~out.any(axis=1))
    if zero.size:
        raise FeatstoreError(
            f"{what} has {zero.size} all-zero row(s) (first rows: {', '.join(map(str, zero[:5]))}); cosine "
            "similarity is undefined for them, so they have no neighbours: query with the other rows"
        )
    faiss.normalize_L2(out)
    return out


def nonzero_rows(x: np.ndarray) -> np.ndarray:
    """Positions of the rows of ``x [N, D]`` that are not all zero (the rows a cosine index holds)."""
    return np.flatnonzero(x.any(axis=1))


def gpu_available() -> bool:
    """True when the installed faiss was built with GPU support and sees at least one CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def torch_gpu_available(force_import: bool = False) -> bool:
    """True when torch sees a CUDA device. Without ``force_import``, torch is imported for the check only
    when it already is or the NVIDIA driver's device files exist (CUDA cannot run without them)."""
    if not force_import and "torch" not in sys.modules and not glob.glob("/dev/nvidia[0-9]*"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def gpu_backend(use_gpu="auto", kind: str = "flat") -> Optional[str]:
    """Where ``build_index(kind=kind, use_gpu=use_gpu)`` searches on a GPU: ``"faiss"`` (faiss-gpu),
    ``"torch"`` (torch's exact search, flat indexes only) or None (the CPU)."""
    if use_gpu not in ("auto", True, False):
        raise FeatstoreError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
    if use_gpu is False or kind == "hnsw":
        return None
    if gpu_available():
        return "faiss"
    if kind == "flat" and torch_gpu_available(force_import=use_gpu is True):
        return TORCH_SEARCH
    return None


def _ivf_nlist(n: int) -> int:
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def _default_nprobe(nlist: int) -> int:
    return int(min(nlist, max(8, min(64, nlist // 32))))


def choose_kind(n: int, dim: int, memory_budget: Optional[int] = None, exact_max: int = EXACT_MAX) -> str:
    """The ``kind="auto"`` rule of this module's docstring: ``"flat"``, ``"hnsw"`` or ``"ivf"``."""
    if n <= exact_max:
        return "flat"
    budget = _physical_memory() // 2 if memory_budget is None else memory_budget
    hnsw_bytes = n * (4 * dim + 2 * HNSW_M * 4)
    return "hnsw" if (hnsw_bytes <= budget and n <= HNSW_MAX) else "ivf"


TORCH_SEARCH = "torch"  # gpu_backend's name for torch's exact search, and VectorIndex's marker of it


class VectorIndex:
    """A FAISS index over ``ntotal`` vectors of dimension ``dim``, row ``i`` = position ``i`` of the input.

    ``metric``: ``"cosine"`` (search returns cosine similarities, larger is closer) or ``"l2"``
    (squared distances, smaller is closer). ``kind``: ``"flat"``, ``"ivf"`` or ``"hnsw"``.
    """

    def __init__(self, index: "faiss.Index", metric: str, *, from_cache: bool = False,
                 gpu_resources=None, rows: Optional[np.ndarray] = None, n_rows: Optional[int] = None):
        self.index = index
        self.metric = metric
        self.from_cache = from_cache  # True when cached_index reused stored bytes instead of building
        self._gpu_resources = gpu_resources  # StandardGpuResources kept alive with a faiss GPU index; TORCH_SEARCH
        # rows: input row of each indexed position when all-zero rows were left out (None: every row, in order)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self._n_rows = int(index.ntotal) if rows is None else int(n_rows)

    # -- properties -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        """Input rows the index was built over, all-zero rows (never returned) included."""
        return self._n_rows

    @property
    def indexed(self) -> int:
        """Rows the index holds and can return (``ntotal`` less the all-zero rows of a cosine index)."""
        return int(self.index.ntotal)

    @property
    def _torch_search(self) -> bool:  # a TorchFlatIndex (torch's exact search) rather than a faiss index
        return self._gpu_resources == TORCH_SEARCH

    @property
    def on_gpu(self) -> bool:
        return self._gpu_resources is not None

    @property
    def search_backend(self) -> str:
        """``"faiss-gpu"``, ``"torch-cuda"`` (torch's exact search) or ``"faiss-cpu"``."""
        if self._gpu_resources is None:
            return "faiss-cpu"
        return "torch-cuda" if self._torch_search else "faiss-gpu"

    @property
    def kind(self) -> str:
        return "flat" if self._torch_search else _kind_of(self._cpu_index())

    @property
    def nprobe(self) -> Optional[int]:
        return int(self.index.nprobe) if hasattr(self.index, "nprobe") else None

    def set_nprobe(self, nprobe: int) -> None:
        """IVF only: how many of the ``nlist`` cells each query scans (more = better recall, slower)."""
        if self.kind != "ivf":
            raise FeatstoreError(f"nprobe applies to an IVF index; this index is {self.kind!r}")
        if nprobe < 1:
            raise FeatstoreError(f"nprobe must be >= 1, got {nprobe}")
        self.index.nprobe = int(nprobe)

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self.kind!r}, metric={self.metric!r}, ntotal={self.ntotal}, dim={self.dim})"

    # -- search ---------------------------------------------------------------------------------
    def search(self, queries, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Nearest neighbours of ``queries [Q, D]``.

        Returns ``(sims, idx)``, both ``[Q, k']`` with ``k' = min(k, ntotal)``: ``idx`` int64 row
        positions (best first; -1 where an approximate index found fewer), ``sims`` float32 cosine
        similarities (or squared L2 distances for ``metric="l2"``).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise FeatstoreError(f"k must be a positive integer, got {k!r}")
        q = check_vectors(queries, "queries")
        if q.shape[1] != self.dim:
            raise FeatstoreError(
                f"queries have dimension {q.shape[1]} but the index holds {self.dim}-d vectors; "
                "query with vectors from the same feature set"
            )
        if self.metric == "cosine":
            q = normalize_rows(q, "queries")
        kk = int(min(k, self.ntotal))
        sims, idx = self.index.search(q, min(kk, self.indexed))
        idx = idx.astype(np.int64, copy=False)
        if self.rows is not None:  # back to input rows; pad where the zero rows left fewer than kk
            idx = np.where(idx >= 0, self.rows[np.clip(idx, 0, None)], -1)
            pad = kk - idx.shape[1]
            if pad:
                fill = -np.inf if self.metric == "cosine" else np.inf
                sims = np.concatenate([sims, np.full((sims.shape[0], pad), fill, sims.dtype)], axis=1)
                idx = np.concatenate([idx, np.full((idx.shape[0], pad), -1, np.int64)], axis=1)
        return order_ties_by_row(sims, idx, self.metric)

    # -- persistence ----------------------------------------------------------------------------
    def _cpu_index(self) -> "faiss.Index":
        if self._torch_search:
            return self.index.to_faiss()
        return faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index

    def to_bytes(self) -> bytes:
        """The index in faiss's own serialisation (``faiss.serialize_index``), CPU form. An index that leaves out
        all-zero rows is refused as ``save`` refuses it: the bytes cannot record their positions, so ids read back
        would shift (``cached_index`` keeps such an index with ``_faiss_bytes`` and rebuilds the row map)."""
        if self.rows is not None:
            raise FeatstoreError(f"cannot serialise the index: it leaves out {self.ntotal - self.indexed} all-zero "
                                 "row(s), whose positions faiss's bytes cannot record; drop those rows before "
                                 "build_index, or use cached_index")
        return self._faiss_bytes()

    def _faiss_bytes(self) -> bytes:
        return faiss.serialize_index(self._cpu_index()).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, *, use_gpu="auto", what: str = "index bytes") -> "VectorIndex":
        """Inverse of ``to_bytes`` (an index built without all-zero rows: see ``cached_index``); undecodable
        bytes raise ``CorruptDataError``."""
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (RuntimeError, TypeError, ValueError) as err:
            raise CorruptDataError(
                f"{what} is not a faiss index ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                "delete it and rebuild the index"
            ) from None
        return cls._wrap_loaded(index, use_gpu)

    def save(self, path) -> None:
        """Write the index with ``faiss.write_index`` (CPU form)."""
        path = os.fspath(path)
        if self.rows is not None:
            raise FeatstoreError(
                f"cannot save index to {path!r}: it leaves out {self.ntotal - self.indexed} all-zero row(s), whose "
                "positions a faiss file cannot record; drop those rows before build_index, or use cached_index")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FeatstoreError(f"cannot save index to {path!r}: folder {parent!r} does not exist; create it first")
        faiss.write_index(self._cpu_index(), path)

    @classmethod
    def load(cls, path, *, use_gpu="auto") -> "VectorIndex":
        """Read an index written by ``save``."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FeatstoreError(f"index file {path!r} does not exist; build it and save it first")
        try:
            index = faiss.read_index(path)
        except RuntimeError as err:
            raise CorruptDataError(
                f"index file {path!r} is not a faiss index ({str(err).splitlines()[0]}); delete it and rebuild"
            ) from None
        return cls._wrap_loaded(index, use_gpu)

    @classmethod
    def _wrap_loaded(cls, index, use_gpu) -> "VectorIndex":
        metric = "cosine" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        index, res = _maybe_to_gpu(index, use_gpu)
        return cls(index, metric, gpu_resources=res)


def _kind_of(index) -> str:
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    return "ivf" if isinstance(index, faiss.IndexIVF) else "flat"


def _maybe_to_gpu(index, use_gpu):
    """Move ``index`` to GPU 0 when asked/possible (``gpu_backend``); returns ``(index, resources or None)``."""
    kind = _kind_of(index)
    backend = gpu_backend(use_gpu, kind)
    if backend == "faiss":
        res = faiss.StandardGpuResources()  # pragma: no cover - needs faiss-gpu and CUDA
        return faiss.index_cpu_to_gpu(res, 0, index), res  # pragma: no cover
    if backend == TORCH_SEARCH:
        from .torch_flat import TorchFlatIndex

        return TorchFlatIndex.from_faiss(index, "cuda"), TORCH_SEARCH
    if use_gpu is True and not (kind == "hnsw" and gpu_available()):  # faiss-gpu has no HNSW: it stays on the CPU
        raise FeatstoreError(
            f"use_gpu=True but no GPU search is available for a {kind} index: faiss has no GPU support "
            + ("(torch's exact search on the GPU covers flat indexes only; pass kind='flat')"
               if torch_gpu_available(True) else "and torch sees no CUDA device")
            + "; install `faiss-gpu` (pip install 'featstore-heads[gpu]') on a CUDA machine or pass use_gpu='auto'"
        )
    return index, None


def _cosine_rows(x: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(normalised non-zero rows, their input rows or None when none is zero)``: zero rows never match."""
    keep = nonzero_rows(x)
    if keep.size == 0:
        raise FeatstoreError(f"vectors: all {x.shape[0]} rows are all-zero; cosine similarity is undefined for "
                             "them: re-extract the features")
    if keep.size == x.shape[0]:
        return normalize_rows(x), None
    return normalize_rows(x[keep]), keep


def build_index(vectors, *, metric: str = "cosine", kind: str = "auto", use_gpu="auto",
                nprobe: Optional[int] = None, nlist: Optional[int] = None,
                memory_budget: Optional[int] = None, exact_max: int = EXACT_MAX,
                train_points_per_list: int = 64, train_iters: int = 10, seed: int = 0) -> VectorIndex:
    """Index ``vectors [N, D]`` (row ``i`` gets id ``i``); see the module docstring for the kind rule.

    ``nlist``/``nprobe`` tune IVF (defaults ``4*sqrt(N)`` capped at ``N/39`` and
    ``clip(nlist//32, 8, 64)``); the IVF k-means runs ``train_iters`` iterations on a random sample of
    ``train_points_per_list * nlist`` vectors (all of them if fewer); ``seed`` fixes sample and
    initialisation.
    """
    if metric not in METRICS:
        raise FeatstoreError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if kind not in KINDS:
        raise FeatstoreError(f"unknown index kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if nprobe is not None and (isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1):
        raise FeatstoreError(f"nprobe must be a positive integer, got {nprobe!r}")
    x = check_vectors(vectors)
    n_rows, rows = x.shape[0], None
    if metric == "cosine":
        x, rows = _cosine_rows(x)
    n, d = x.shape
    if kind == "auto":
        kind = choose_kind(n, d, memory_budget, exact_max)
    if kind != "ivf" and nprobe is not None:
        raise FeatstoreError(f"nprobe applies only to kind='ivf', but the index kind is {kind!r}")
    fmetric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2

    if kind == "flat":
        index = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
        index.add(x)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, fmetric)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        index.add(x)
    else:  # ivf
        nl = _ivf_nlist(n) if nlist is None else int(nlist)
        if nl < 1 or nl > n:
            raise FeatstoreError(f"nlist must be between 1 and the number of vectors ({n}), got {nl}")
        quantizer = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nl, fmetric)
        if train_points_per_list < 1 or train_iters < 1:
            raise FeatstoreError("train_points_per_list and train_iters must be >= 1; use the defaults (64, 10)")
        index.cp.seed = seed
        index.cp.niter = int(train_iters)
        index.cp.min_points_per_centroid = 1  # small samples are intended; no faiss warning on stderr
        index.cp.max_points_per_centroid = max(int(train_points_per_list), 1)
        rng = np.random.default_rng(seed)
        sample_n = min(n, int(train_points_per_list) * nl)
        train = x if sample_n == n else x[np.sort(rng.choice(n, sample_n, replace=False))]
        index.train(train)
        index.add(x)
        index.nprobe = _default_nprobe(nl) if nprobe is None else int(nprobe)
    index, res = _maybe_to_gpu(index, use_gpu)
    return VectorIndex(index, metric, gpu_resources=res, rows=rows, n_rows=n_rows)


def cached_index(vectors, cache_get: Callable[[str], Optional[bytes]], cache_put: Callable[[str, bytes], None],
                 key: str, **kw) -> VectorIndex:
    """Build the index of ``vectors`` once and keep its bytes in a caller-provided cache.

    ``cache_get(name) -> bytes | None`` and ``cache_put(name, bytes)`` are e.g. a feature set version's
    side files; ``name`` is ``f"{key}.{metric}.{kind}.faiss"``, so different build options do not
    collide. A cached index whose size or dimension does not match ``vectors`` (a stale entry) is rebuilt
    and overwritten. ``kw`` goes to ``build_index``. The returned index has ``from_cache=True`` when it
    was loaded instead of built. A cosine index of vectors with all-zero rows stores the other rows; their
    positions come back from ``vectors``.
    """
    if not isinstance(key, str) or not key:
        raise FeatstoreError(f"cache key must be a non-empty string, got {key!r}; use e.g. the feature set version")
    x = check_vectors(vectors)
    metric = kw.get("metric", "cosine")
    name = f"{key}.{metric}.{kw.get('kind', 'auto')}.faiss"
    data = cache_get(name)
    if data is not None:
        cached = VectorIndex.from_bytes(bytes(data), use_gpu=kw.get("use_gpu", "auto"), what=f"cached index {name!r}")
        keep = nonzero_rows(x) if metric == "cosine" else np.arange(x.shape[0])
        if cached.indexed == keep.size and cached.dim == x.shape[1]:
            if keep.size < x.shape[0]:
                cached.rows, cached._n_rows = keep, x.shape[0]
            if kw.get("nprobe") is not None:
                cached.set_nprobe(kw["nprobe"])
            cached.from_cache = True
            return cached
    built = build_index(x, **kw)
    cache_put(name, built._faiss_bytes())  # the row map of left-out zero rows is rebuilt from the vectors
    return built
