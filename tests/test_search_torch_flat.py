"""torch's exact search (``featstore.search.torch_flat``), the GPU path without faiss-gpu, checked on the CPU
against faiss's own flat indexes and float64 brute force; its dispatch on CUDA is tests/test_cuda_paths.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import faiss
from featstore.errors import FeatstoreError
from featstore.search import index as index_mod
from featstore.search import torch_flat
from featstore.search.index import VectorIndex, build_index, gpu_available, gpu_backend, normalize_rows
from featstore.search.torch_flat import TorchFlatIndex


def _data(n=700, d=24, q=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x, x[:q] + 0.2 * rng.standard_normal((q, d)).astype(np.float32)


def _brute(x, q, metric, k):
    """float64 brute force: cosine similarities (largest first) or squared L2 distances (smallest first)."""
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        s = (q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).T
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    else:
        s = ((q64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
        order = np.argsort(s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, 1)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_search_equals_faiss_flat_and_float64(metric):
    x, q = _data()
    cpu = build_index(x, metric=metric, kind="flat", use_gpu=False)
    mine = VectorIndex(TorchFlatIndex.from_faiss(cpu.index, "cpu"), metric, gpu_resources="torch")
    s, i = mine.search(q, 7)
    fs, fi = cpu.search(q, 7)
    want, wsims = _brute(x, q, metric, 7)
    assert i.dtype == np.int64 and s.dtype == np.float32 and s.shape == (40, 7)
    assert np.array_equal(i, fi) and np.array_equal(i, want)
    np.testing.assert_allclose(s, fs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s, wsims, rtol=1e-5, atol=1e-4)


def test_query_blocks_give_the_one_block_result(monkeypatch):
    x, q = _data(n=300, q=37)
    idx = TorchFlatIndex(normalize_rows(x), faiss.METRIC_INNER_PRODUCT, "cpu")
    whole = idx.search(normalize_rows(q), 5)
    monkeypatch.setattr(torch_flat, "SCORE_BYTES", 4 * 300 * 4)  # 4 queries a block: 10 blocks, the last of 1
    blocked = idx.search(normalize_rows(q), 5)
    assert np.array_equal(whole[1], blocked[1])
    np.testing.assert_allclose(whole[0], blocked[0], rtol=1e-6, atol=1e-6)  # a GEMM's rounding depends on its shape


def test_k_is_clipped_and_the_process_precision_restored():
    x, q = _data(n=6, q=3)
    idx = TorchFlatIndex(x, faiss.METRIC_L2, "cpu")
    torch.set_float32_matmul_precision("medium")
    try:
        s, i = idx.search(q, 50)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert s.shape == i.shape == (3, 6) and sorted(i[0]) == list(range(6))
    assert np.all(np.diff(s, axis=1) >= 0)  # nearest first


def test_saved_form_is_the_cpu_faiss_index_with_the_same_results(tmp_path):
    x, q = _data()
    cpu = build_index(x, kind="flat", use_gpu=False)
    mine = VectorIndex(TorchFlatIndex.from_faiss(cpu.index, "cpu"), "cosine", gpu_resources="torch")
    assert (mine.kind, mine.search_backend, mine.on_gpu, mine.ntotal, mine.dim) == ("flat", "torch-cuda", True, 700, 24)
    cpu.index.reset()  # from_faiss copied the vectors: emptying the faiss index changes nothing
    back = VectorIndex.from_bytes(mine.to_bytes(), use_gpu=False)
    mine.save(tmp_path / "i.faiss")
    loaded = VectorIndex.load(tmp_path / "i.faiss", use_gpu=False)
    for other in (back, loaded):
        assert isinstance(other.index, faiss.IndexFlatIP) and other.search_backend == "faiss-cpu"
        assert np.array_equal(other.search(q, 5)[1], mine.search(q, 5)[1])


def test_rejects_an_unknown_metric():
    with pytest.raises(ValueError, match="METRIC_INNER_PRODUCT"):
        TorchFlatIndex(np.zeros((2, 2), np.float32), 7, "cpu")


@pytest.mark.skipif(torch.cuda.is_available() or gpu_available(), reason="checks the CPU machine's answers")
def test_backend_choice_without_a_gpu(monkeypatch):
    assert gpu_backend("auto") is None and gpu_backend(True) is None and gpu_backend(False) is None
    x, _ = _data(n=50)
    with pytest.raises(FeatstoreError) as err:
        build_index(x, kind="flat", use_gpu=True)
    assert str(err.value) == (
        "use_gpu=True but no GPU search is available for a flat index: faiss has no GPU support and torch sees "
        "no CUDA device; install `faiss-gpu` (pip install 'featstore-heads[gpu]') on a CUDA machine or pass "
        "use_gpu='auto'")
    monkeypatch.setattr(index_mod, "torch_gpu_available", lambda force_import=False: True)  # a CUDA machine's
    assert gpu_backend("auto", "flat") == "torch" and gpu_backend("auto", "ivf") is None  # answer, no faiss-gpu
    assert gpu_backend(True, "hnsw") is None and gpu_backend(False, "flat") is None
    many = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32)
    for kind in ("ivf", "hnsw"):
        with pytest.raises(FeatstoreError, match=f"for a {kind} index: .*covers flat indexes only; pass kind='flat'"):
            build_index(many, kind=kind, nlist=4, use_gpu=True) if kind == "ivf" else build_index(
                many, kind=kind, use_gpu=True)
    with pytest.raises(FeatstoreError, match="use_gpu must be 'auto', True or False"):
        gpu_backend("yes")


def test_no_torch_import_for_a_cpu_search_without_nvidia_devices(tmp_path):
    """A CPU machine's auto search does not import torch just to ask torch whether CUDA is there."""
    import glob
    import subprocess
    import sys

    if glob.glob("/dev/nvidia[0-9]*"):
        pytest.skip("this machine has NVIDIA device files: the import is then wanted")
    code = ("import sys, numpy as np; from featstore.search import build_index; "
            "build_index(np.eye(4, dtype=np.float32), use_gpu='auto'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ties_among_duplicates_come_back_by_row_as_on_the_cpu():
    """40 copies of one vector (their cosines 1.0 or 0.99999994 by float rounding) and 10 others: the torch path
    keeps and orders the tied rows as faiss's CPU path does, lower row first (topk kept arbitrary ones)."""
    rng = np.random.default_rng(3)
    x = np.concatenate([np.repeat(rng.standard_normal((1, 16)), 40, 0),
                        rng.standard_normal((10, 16))]).astype(np.float32)
    x = np.concatenate([x[40:45], x[:40], x[45:]])  # the copies at rows 5..44
    for metric in ("cosine", "l2"):
        cpu = build_index(x, metric=metric, kind="flat", use_gpu=False)
        mine = VectorIndex(TorchFlatIndex.from_faiss(cpu.index, "cpu"), metric, gpu_resources="torch")
        _, i = mine.search(x[[7]], 8)
        _, fi = cpu.search(x[[7]], 8)
        assert i.tolist() == fi.tolist() == [list(range(5, 13))]
