"""neighbors(): against a float64 numpy brute force, self excluded, id errors."""
import numpy as np
import pytest

from featstore.errors import FeatstoreError
from featstore.search import NeighborRow, build_index, neighbors


def _data(n=120, d=24, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"s{i:04d}" for i in range(n)]
    return ids, rng.standard_normal((n, d)).astype(np.float32)


def _brute(ids, vectors, query, k):
    x = vectors.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = ids.index(query)
    sims = x @ x[q]
    sims[q] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return [(ids[j], sims[j]) for j in order]


def test_matches_bruteforce_and_excludes_query():
    ids, vecs = _data()
    queries = ["s0003", "s0077", "s0119"]
    rows = neighbors(queries, ids, vecs, k=6)
    assert len(rows) == 18 and all(isinstance(r, NeighborRow) for r in rows)
    for qi, q in enumerate(queries):
        got = rows[qi * 6:(qi + 1) * 6]
        assert [r.query for r in got] == [q] * 6
        assert [r.rank for r in got] == [1, 2, 3, 4, 5, 6]
        ref = _brute(ids, vecs, q, 6)
        assert [r.neighbor for r in got] == [n for n, _ in ref]
        np.testing.assert_allclose([r.similarity for r in got], [s for _, s in ref], atol=1e-5)
        assert q not in [r.neighbor for r in got]


def test_duplicate_vector_is_a_neighbour_but_the_query_is_not():
    ids, vecs = _data(n=10)
    vecs[5] = vecs[2]  # identical vectors: both score 1.0
    rows = neighbors(["s0002"], ids, vecs, k=3)
    assert rows[0].neighbor == "s0005" and rows[0].similarity == pytest.approx(1.0, abs=1e-6)
    assert "s0002" not in [r.neighbor for r in rows]


def test_k_larger_than_set_and_single_string_query():
    ids, vecs = _data(n=5)
    rows = neighbors("s0001", ids, vecs, k=50)
    assert [r.rank for r in rows] == [1, 2, 3, 4]
    assert sorted(r.neighbor for r in rows) == ["s0000", "s0002", "s0003", "s0004"]


def test_prebuilt_index_gives_same_rows():
    ids, vecs = _data()
    assert neighbors(["s0010"], ids, vecs, k=5, index=build_index(vecs, kind="flat")) == \
        neighbors(["s0010"], ids, vecs, k=5)
    with pytest.raises(FeatstoreError, match="was not built over these vectors"):
        neighbors(["s0010"], ids, vecs, k=5, index=build_index(vecs[:50]))
    with pytest.raises(FeatstoreError, match="was not built over these vectors"):
        neighbors(["s0010"], ids, vecs, k=5, index=build_index(vecs, metric="l2"))


def test_unknown_ids_one_line_with_first_few_and_count():
    ids, vecs = _data()
    unknown = [f"zz{i}" for i in range(8)]
    with pytest.raises(FeatstoreError) as err:
        neighbors(["s0001"] + unknown, ids, vecs)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("8 of 9 query ids are not in the feature set (first: 'zz0', 'zz1', 'zz2', 'zz3', 'zz4')")
    assert "zz5" not in msg


@pytest.mark.parametrize("call,match", [
    (lambda ids, v: neighbors([], ids, v), "no query ids given"),
    (lambda ids, v: neighbors(["a"], [], np.zeros((0, 4), np.float32)), "empty"),
    (lambda ids, v: neighbors(["s0000"], ids[:-1], v), "119 ids for 120 vector rows"),
    (lambda ids, v: neighbors(["s0000"], ["x"] * 120, v), r"1 duplicated id\(s\) \(first: 'x'\)"),
    (lambda ids, v: neighbors(["s0000"], ids, v, k=0), "k must be a positive integer"),
    (lambda ids, v: neighbors(["s0000"], ids, np.stack([v, v], 1)),
     r"shape \[120, 2, 24\].*pooled vectors \[N, D\].*`pooled`, `cls` or `mean`.*pool the items first"),
])
def test_errors(call, match):
    ids, vecs = _data()
    with pytest.raises(FeatstoreError, match=match):
        call(ids, vecs)


def test_zero_rows_are_never_neighbours_and_a_zero_query_is_named():
    ids, vecs = _data(n=30)
    vecs[[4, 11]] = 0
    rows = neighbors(["s0000"], ids, vecs, k=29)
    live = [i for i in ids if i not in ("s0004", "s0011")]
    ref = _brute(live, np.stack([vecs[ids.index(i)] for i in live]), "s0000", 27)
    assert [r.neighbor for r in rows] == [n for n, _ in ref]  # 27 others: the two zero rows left out
    np.testing.assert_allclose([r.similarity for r in rows], [s for _, s in ref], atol=1e-5)
    with pytest.raises(FeatstoreError) as err:
        neighbors(["s0001", "s0011"], ids, vecs, k=3)
    assert str(err.value) == ("'s0011' has an all-zero vector: cosine similarity is undefined for it, so there are no "
                              "neighbours to show; re-extract its features or query another key")
