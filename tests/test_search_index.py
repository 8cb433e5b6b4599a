"""FAISS index building, search against float64 numpy brute force, persistence, caching, errors."""
import numpy as np
import pytest

from featstore.errors import CorruptDataError, FeatstoreError
from featstore.search.index import (VectorIndex, build_index, cached_index, choose_kind, gpu_available)


def _unit64(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exact_cosine(base, queries, k):
    sims = _unit64(queries) @ _unit64(base).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def _clustered(n, d, n_clusters, seed):
    """Gaussian clusters: realistic neighbour structure (pure noise has no meaningful neighbours)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d)) * 3
    return (centers[rng.integers(0, n_clusters, n)] + rng.standard_normal((n, d))).astype(np.float32)


def test_flat_cosine_matches_float64_bruteforce():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((500, 48)).astype(np.float32) * rng.uniform(0.1, 10, (500, 1)).astype(np.float32)
    queries = rng.standard_normal((40, 48)).astype(np.float32)
    index = build_index(base)
    assert (index.kind, index.metric, index.ntotal, index.dim) == ("flat", "cosine", 500, 48)
    sims, idx = index.search(queries, 7)
    ref_sims, ref_idx = _exact_cosine(base, queries, 7)
    assert sims.shape == idx.shape == (40, 7) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_l2_metric_returns_squared_distances():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((200, 16)).astype(np.float32)
    queries = rng.standard_normal((10, 16)).astype(np.float32)
    index = build_index(base, metric="l2")
    dist, idx = index.search(queries, 5)
    ref = ((queries[:, None, :].astype(np.float64) - base[None].astype(np.float64)) ** 2).sum(-1)
    ref_idx = np.argsort(ref, axis=1)[:, :5]
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, np.take_along_axis(ref, ref_idx, 1), rtol=1e-4)


def test_k_larger_than_n_is_clipped():
    base = np.eye(3, dtype=np.float32)
    sims, idx = build_index(base).search(base, 10)
    assert idx.shape == (3, 3)
    np.testing.assert_array_equal(idx[:, 0], [0, 1, 2])
    np.testing.assert_allclose(sims[:, 0], 1.0)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_and_bytes_round_trip(tmp_path, kind):
    base = _clustered(1200, 32, 12, seed=2)
    queries = _clustered(30, 32, 12, seed=3)
    index = build_index(base, kind=kind)
    assert index.kind == kind
    before = index.search(queries, 10)
    path = tmp_path / "vectors.faiss"
    index.save(path)
    loaded = VectorIndex.load(path)
    from_bytes = VectorIndex.from_bytes(index.to_bytes())
    for other in (loaded, from_bytes):
        assert (other.kind, other.metric, other.ntotal, other.dim) == (kind, "cosine", 1200, 32)
        after = other.search(queries, 10)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[0], before[0])
    if kind == "ivf":
        assert loaded.nprobe == index.nprobe


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_at_10(kind):
    base = _clustered(6000, 32, 40, seed=4)
    queries = _clustered(200, 32, 40, seed=5)
    index = build_index(base, kind=kind)
    _, idx = index.search(queries, 10)
    _, ref = _exact_cosine(base, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ref)])
    assert recall >= 0.9, f"{kind} recall@10 = {recall:.3f}"
    if kind == "ivf":
        # nlist = 4 sqrt(N) capped at N / 39, nprobe = clip(nlist // 32, 8, 64)
        assert index.index.nlist == min(round(4 * np.sqrt(6000)), 6000 // 39) == 153
        assert index.nprobe == 8
        index.set_nprobe(index.index.nlist)  # scanning every cell is exact
        _, idx_all = index.search(queries, 10)
        np.testing.assert_array_equal(idx_all, ref)


def test_auto_rule_by_size_and_memory():
    assert choose_kind(200_000, 512) == "flat"
    hnsw_bytes = 300_000 * (4 * 512 + 2 * 32 * 4)
    assert choose_kind(300_000, 512, memory_budget=hnsw_bytes) == "hnsw"
    assert choose_kind(300_000, 512, memory_budget=hnsw_bytes - 1) == "ivf"
    assert choose_kind(6_000_000, 64, memory_budget=1 << 50) == "ivf"
    base = _clustered(800, 8, 4, seed=6)
    assert build_index(base, exact_max=1000).kind == "flat"
    assert build_index(base, exact_max=100, memory_budget=1 << 40).kind == "hnsw"
    assert build_index(base, exact_max=100, memory_budget=1000).kind == "ivf"


def test_gpu_path_is_guarded():
    base = np.random.default_rng(7).standard_normal((50, 8)).astype(np.float32)
    assert build_index(base, use_gpu="auto").on_gpu == gpu_available()
    assert build_index(base, use_gpu=False).on_gpu is False
    if not gpu_available():
        with pytest.raises(FeatstoreError, match="faiss-gpu"):
            build_index(base, use_gpu=True)
    with pytest.raises(FeatstoreError, match="use_gpu"):
        build_index(base, use_gpu="yes")


def test_cached_index_builds_once_and_reuses():
    base = _clustered(400, 16, 5, seed=8)
    store, puts = {}, []

    def put(name, data):
        puts.append(name)
        store[name] = data

    first = cached_index(base, store.get, put, key="clip-vit/3f2a")
    assert first.from_cache is False and puts == ["clip-vit/3f2a.cosine.auto.faiss"]
    second = cached_index(base, store.get, put, key="clip-vit/3f2a")
    assert second.from_cache is True and len(puts) == 1  # not rebuilt, not re-stored
    q = base[:5]
    np.testing.assert_array_equal(first.search(q, 4)[1], second.search(q, 4)[1])
    # other options -> another cache entry
    cached_index(base, store.get, put, key="clip-vit/3f2a", kind="hnsw")
    assert puts[-1] == "clip-vit/3f2a.cosine.hnsw.faiss" and len(puts) == 2
    # a stale entry (other vectors under the same key) is rebuilt and overwritten
    stale = cached_index(base[:100], store.get, put, key="clip-vit/3f2a")
    assert stale.from_cache is False and stale.ntotal == 100 and len(puts) == 3
    assert VectorIndex.from_bytes(store["clip-vit/3f2a.cosine.auto.faiss"]).ntotal == 100


def test_cached_index_corrupt_bytes():
    base = np.eye(4, dtype=np.float32)
    with pytest.raises(CorruptDataError, match="cached index 'k.cosine.auto.faiss' is not a faiss index"):
        cached_index(base, lambda name: b"not an index", lambda n, d: None, key="k")
    with pytest.raises(FeatstoreError, match="cache key"):
        cached_index(base, lambda name: None, lambda n, d: None, key="")


@pytest.mark.parametrize("vectors,match", [
    (np.zeros((4, 3, 8), np.float32), r"\[4, 3, 8\].*pooled.*`cls`.*`mean`.*pool"),
    (np.zeros(8, np.float32), "must be a 2-D array"),
    (np.zeros((0, 8), np.float32), "empty"),
    (np.zeros((3, 0), np.float32), "0 columns"),
    (np.array([[1.0, np.nan], [1.0, 2.0]]), r"1 row\(s\) with NaN/inf \(first rows: 0\)"),
    (np.zeros((3, 2)), r"^vectors: all 3 rows are all-zero; cosine similarity is undefined for them: re-extract "
                       r"the features$"),
    (np.array([["a", "b"]]), "dtype"),
])
def test_bad_vectors(vectors, match):
    with pytest.raises(FeatstoreError, match=match) as err:
        build_index(vectors)
    assert "\n" not in str(err.value)


def test_bad_arguments(tmp_path):
    base = np.eye(5, dtype=np.float32)
    with pytest.raises(FeatstoreError, match="unknown metric 'dot'; choose one of: cosine, l2"):
        build_index(base, metric="dot")
    with pytest.raises(FeatstoreError, match="unknown index kind 'lsh'"):
        build_index(base, kind="lsh")
    with pytest.raises(FeatstoreError, match="nprobe applies only to kind='ivf'"):
        build_index(base, kind="flat", nprobe=4)
    with pytest.raises(FeatstoreError, match="nprobe must be a positive integer"):
        build_index(base, kind="ivf", nprobe=0)
    with pytest.raises(FeatstoreError, match="nlist must be between 1 and the number of vectors"):
        build_index(base, kind="ivf", nlist=50)
    index = build_index(base)
    with pytest.raises(FeatstoreError, match="k must be a positive integer"):
        index.search(base, 0)
    with pytest.raises(FeatstoreError, match="queries have dimension 3 but the index holds 5-d"):
        index.search(np.ones((2, 3), np.float32), 1)
    with pytest.raises(FeatstoreError, match="nprobe applies to an IVF index"):
        index.set_nprobe(3)
    with pytest.raises(FeatstoreError, match="does not exist; build it and save it first"):
        VectorIndex.load(tmp_path / "missing.faiss")
    with pytest.raises(FeatstoreError, match="folder .* does not exist"):
        index.save(tmp_path / "no" / "dir.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"garbage bytes")
    with pytest.raises(CorruptDataError, match="is not a faiss index"):
        VectorIndex.load(bad)


def test_zero_rows_never_match_and_a_zero_query_is_one_line(tmp_path):
    """All-zero rows of a cosine index are never returned; the other rows rank as a float64 brute force over
    the non-zero rows alone; ntotal still counts every row; a zero query row is refused."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    zero = [3, 17, 18]
    x[zero] = 0
    live = [i for i in range(40) if i not in zero]
    for kind in ("flat", "hnsw"):
        index = build_index(x, kind=kind)
        assert (index.ntotal, index.indexed) == (40, 37)
        sims, idx = index.search(x[[0, 5]], 10)
        ref_sims, ref = _exact_cosine(x[live], x[[0, 5]], 10)
        np.testing.assert_array_equal(idx, np.asarray(live)[ref])
        np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    sims, idx = build_index(x, kind="flat").search(x[:1], 40)  # more than the non-zero rows: padded
    assert idx.shape == (1, 40) and set(idx[0, :37]) == set(live) and (idx[0, 37:] == -1).all()
    assert np.isneginf(sims[0, 37:]).all()
    with pytest.raises(FeatstoreError) as err:
        build_index(x).search(x[[1, 3]], 2)
    assert str(err.value) == ("queries has 1 all-zero row(s) (first rows: 1); cosine similarity is undefined for "
                              "them, so they have no neighbours: query with the other rows")
    with pytest.raises(FeatstoreError, match=r"leaves out 3 all-zero row\(s\), whose positions a faiss file cannot"):
        build_index(x).save(tmp_path / "z.faiss")
    with pytest.raises(FeatstoreError, match=r"leaves out 3 all-zero row\(s\), whose positions faiss's bytes cannot"):
        build_index(x).to_bytes()  # read back, ids past a zero row would shift by one
    store = {}
    first = cached_index(x, store.get, store.__setitem__, key="z")
    again = cached_index(x, store.get, store.__setitem__, key="z")
    assert again.from_cache and (again.ntotal, again.indexed) == (40, 37)
    for a, b in zip(first.search(x[:3], 5), again.search(x[:3], 5)):
        np.testing.assert_array_equal(a, b)
    assert build_index(x, metric="l2").indexed == 40  # squared distances are defined for zero rows


def test_ties_are_ordered_by_row():
    """Equal similarities come back lower row first (faiss's heap gives them in reverse); a flat search keeps the
    lowest of the rows tied at the k-th place."""
    x = np.zeros((30, 4), np.float32)
    x[:, 0] = 1.0
    x[[4, 9], 1] = 0.5  # two rows a little further away, tied with each other
    sims, idx = build_index(x, kind="flat").search(x[:1], 5)
    assert idx.tolist() == [[0, 1, 2, 3, 5]]
    _, idx = build_index(x, kind="flat").search(x[4:5], 30)
    assert idx[0, :2].tolist() == [4, 9] and idx[0, 2:].tolist() == [i for i in range(30) if i not in (4, 9)]
    _, idx = build_index(x, metric="l2", kind="flat").search(x[:1], 30)
    assert idx[0, 28:].tolist() == [4, 9] and idx[0, :28].tolist() == [i for i in range(30) if i not in (4, 9)]
