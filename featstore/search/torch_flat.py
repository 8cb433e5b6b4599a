"""Exact (flat) nearest-neighbour search with torch on a CUDA device: the GPU path when faiss has none.

faiss-gpu's wheels are built for CUDA 12 and bring CUDA 12's cuBLAS; on a machine with another CUDA (the
CUDA 13 images) or no faiss-gpu at all, ``build_index(..., kind="flat", use_gpu=...)`` puts the vectors in a
``TorchFlatIndex`` on the GPU instead. It computes what ``faiss.IndexFlatIP`` / ``IndexFlatL2`` compute:

* inner product: ``sims = Q @ X^T`` (cosine when both are L2-normalised, as ``build_index`` makes them),
  the k largest, best first;
* L2: squared distances ``|q|^2 + |x|^2 - 2 q.x`` (faiss's own expansion, clamped at 0), the k smallest.

Tensor contract: ``search(q [Q, D] float32 numpy, k) -> (D [Q, k] float32, I [Q, k] int64)`` numpy arrays,
like a faiss index's ``search``; ``d``, ``ntotal`` and ``metric_type`` as faiss names them. Matrix products
run in full float32 (TF32 off for the call, whatever the process set), queries in blocks so one block's
``[block, N]`` scores stay under ``SCORE_BYTES``. ``to_faiss()`` gives the CPU ``IndexFlat`` of the same
vectors, which is what ``save`` / ``to_bytes`` write, so a saved index loads anywhere.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Tuple

import faiss
import numpy as np
import torch

from .ties import TIE_DECIMALS

SCORE_BYTES = 1 << 30  # one query block's [block, N] float32 scores at most


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class TorchFlatIndex:
    """Exact search over ``vectors [N, D]`` (float32, already normalised for cosine) on ``device``."""

    def __init__(self, vectors: np.ndarray, metric_type: int, device):
        if metric_type not in (faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2):
            raise ValueError(f"metric_type {metric_type} is neither faiss.METRIC_INNER_PRODUCT nor METRIC_L2")
        self.device = torch.device(device)
        self.metric_type = metric_type
        self.x = torch.as_tensor(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device)
        self.sq_norms = (self.x * self.x).sum(dim=1) if metric_type == faiss.METRIC_L2 else None

    @classmethod
    def from_faiss(cls, index: "faiss.IndexFlat", device) -> "TorchFlatIndex":
        """The vectors of a CPU ``IndexFlatIP`` / ``IndexFlatL2`` moved to ``device``."""
        vectors = faiss.vector_to_array(index.codes).view(np.float32).reshape(index.ntotal, index.d)  # a copy
        return cls(vectors, index.metric_type, device)

    @property
    def d(self) -> int:
        return int(self.x.shape[1])

    @property
    def ntotal(self) -> int:
        return int(self.x.shape[0])

    def to_faiss(self) -> "faiss.IndexFlat":
        index = faiss.IndexFlatIP(self.d) if self.metric_type == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(self.d)
        index.add(self.x.cpu().numpy())
        return index

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        q = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        k = int(min(k, self.ntotal))
        block = max(1, SCORE_BYTES // (4 * max(self.ntotal, 1)))
        sims, idx = [], []
        with _full_float32():
            for s in range(0, q.shape[0], block):
                v, i = self._block(q[s:s + block], k)
                sims.append(v.cpu())
                idx.append(i.cpu())
        return torch.cat(sims).numpy(), torch.cat(idx).numpy().astype(np.int64, copy=False)

    def _block(self, q: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The k best of each query row, ties (scores equal to ``TIE_DECIMALS`` places: duplicated images differ
        by float rounding, 1.0 vs 0.99999994) kept and ordered by row, lower first, as the CPU path orders them;
        ``torch.topk`` would keep arbitrary rows among ties."""
        scores = q @ self.x.T
        largest = self.metric_type == faiss.METRIC_INNER_PRODUCT
        if not largest:
            scores = ((q * q).sum(dim=1, keepdim=True) + self.sq_norms[None, :] - 2 * scores).clamp_(min=0)
        key = torch.round(scores, decimals=TIE_DECIMALS)
        order = torch.sort(key, dim=1, descending=largest, stable=True).indices[:, :k]
        return torch.gather(scores, 1, order), order
