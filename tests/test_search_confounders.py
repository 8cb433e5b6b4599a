"""find_confounders on planted confounders, checked against an independent float64 all-pairs search."""
import csv

import numpy as np
import pytest

from featstore.errors import FeatstoreError
from featstore.search import find_confounders, load_predictions, overlay_predictions, to_csv
from featstore.search.confounders import EXACT_PAIRS_MAX


def _noisy(v, rng, scale):
    return v + scale * rng.standard_normal(v.shape).astype(np.float32)


def planted(n=300, d=64, seed=0):
    """Random samples plus planted pairs; returns ids, keys, img, txt, labels, expected {(a, b): kind}."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n, d)).astype(np.float32)
    txt = rng.standard_normal((n, d)).astype(np.float32)
    keys = [f"{i:05d}" for i in range(n)]
    labels = list(rng.integers(0, 2, n))
    img[200] = _noisy(img[10], rng, 0.05)  # same photo re-saved, different text
    labels[10], labels[200] = 0, 1
    keys[21] = keys[20]  # same image file, identical vector, different text
    img[21] = img[20]
    labels[20], labels[21] = 1, 1
    txt[150] = _noisy(txt[30], rng, 0.05)  # same text on a different image
    labels[30], labels[150] = 1, 0
    img[41], txt[41] = _noisy(img[40], rng, 0.02), _noisy(txt[40], rng, 0.02)  # duplicate: not a confounder
    img[51] = img[50] + 0.35 * np.linalg.norm(img[50]) / np.sqrt(d) * rng.standard_normal(d)  # sim ~0.94
    ids = [f"id{i}" for i in range(n)]
    expected = {("id10", "id200"): "similar_image", ("id20", "id21"): "same_image", ("id30", "id150"): "same_text"}
    return ids, keys, img, txt, labels, expected


def brute_force(ids, keys, img, txt, it=0.95, tt=0.95, tdiff=0.9, idiff=0.9):
    """Independent reference: every pair i < j, float64 cosines, the documented rules."""
    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    xi, xt = unit(img), unit(txt)
    si, st = xi @ xi.T, xt @ xt.T
    k = np.asarray(keys)
    same_file = k[:, None] == k[None, :]
    upper = np.triu(np.ones_like(same_file), k=1)
    rules = {"same_image": same_file & (st < tdiff), "similar_image": ~same_file & (si >= it) & (st < tdiff),
             "same_text": ~same_file & (st >= tt) & (si < idiff)}
    out = {}
    for kind, m in rules.items():
        for i, j in np.argwhere(upper & m):
            out[(ids[i], ids[j])] = kind
    return out


def test_planted_pairs_found_ranked_and_nothing_else():
    ids, keys, img, txt, labels, expected = planted()
    pairs = find_confounders(ids, keys, img, txt, labels)
    got = {(p.id_a, p.id_b): p.kind for p in pairs}
    assert got == expected == brute_force(ids, keys, img, txt)
    by = {(p.id_a, p.id_b): p for p in pairs}
    assert by[("id10", "id200")].label_flip is True
    assert by[("id20", "id21")].label_flip is False and by[("id20", "id21")].same_image_key
    assert by[("id30", "id150")].label_flip is True
    # grouped by kind (same file, similar-looking, same text); the same-file pair scores 1.0
    assert [p.kind for p in pairs] == ["same_image", "similar_image", "same_text"]
    assert (pairs[0].id_a, pairs[0].id_b) == ("id20", "id21") and pairs[0].score == 1.0
    # similarities are the float64 cosines of the rows
    p = by[("id10", "id200")]
    ref = img[10].astype(np.float64) @ img[200] / np.linalg.norm(img[10]) / np.linalg.norm(img[200])
    assert p.image_sim == pytest.approx(ref, abs=1e-6) and p.score == p.image_sim
    assert p.contrast == pytest.approx(1 - p.text_sim)
    assert (p.row_a, p.row_b, p.label_a, p.label_b) == (10, 200, 0, 1)


def test_ranking_ties_broken_by_contrast():
    rng = np.random.default_rng(3)
    img = rng.standard_normal((6, 16)).astype(np.float32)
    txt = rng.standard_normal((6, 16)).astype(np.float32)
    img[1] = img[0]
    img[3] = img[2]
    txt[1] = -txt[0]  # texts as different as can be: contrast 2
    txt[3] = txt[2] + 0.5 * rng.standard_normal(16).astype(np.float32)  # somewhat similar texts
    keys = list("abcdef")
    pairs = find_confounders(list("012345"), keys, img, txt)
    assert [(p.id_a, p.id_b) for p in pairs] == [("0", "1"), ("2", "3")]
    assert pairs[0].score == pytest.approx(pairs[1].score) and pairs[0].contrast == pytest.approx(2.0)
    assert all(p.label_flip is None for p in pairs)


def test_many_copies_of_one_image_exceed_k():
    """30 samples share an image but k=5: the search widens k until all 435 pairs are found."""
    ids, keys, img, txt, labels, _ = planted(n=300, seed=1)
    rng = np.random.default_rng(5)
    for r in range(100, 130):
        img[r] = _noisy(img[99], rng, 0.01)
    img[99] = _noisy(img[99], rng, 0.01)
    pairs = find_confounders(ids, keys, img, txt, labels, k=5)
    got = {(p.id_a, p.id_b): p.kind for p in pairs}
    ref = brute_force(ids, keys, img, txt)
    assert got == ref
    assert sum(1 for a, b in ref if a in {f"id{r}" for r in range(99, 130)}) == 31 * 30 // 2


def test_ivf_path_for_larger_sets_finds_every_planted_pair():
    n = EXACT_PAIRS_MAX + 1000
    rng = np.random.default_rng(7)
    ids, keys, img, txt, labels, _ = planted(n=n, d=32, seed=7)
    src = rng.choice(np.arange(300, n), size=120, replace=False)
    for a, b in zip(src[:30], src[30:60]):
        img[b] = _noisy(img[a], rng, 0.05)
    for a, b in zip(src[60:90], src[90:120]):
        txt[b] = _noisy(txt[a], rng, 0.05)
    pairs = find_confounders(ids, keys, img, txt, labels)
    ref = brute_force(ids, keys, img, txt)
    assert len(ref) >= 63
    assert {(p.id_a, p.id_b): p.kind for p in pairs} == ref


def test_to_csv_and_predictions_overlay(tmp_path):
    ids, keys, img, txt, labels, _ = planted()
    pairs = find_confounders(ids, keys, img, txt, labels)
    pred_csv = tmp_path / "predictions.csv"
    pred_csv.write_text("id,proba,label\nid10,0.8,1\nid200,0.9,1\nid30,0.2,0\nid150,0.3,0\nid20,,1\n")
    preds = load_predictions(pred_csv)
    assert preds["id10"].proba == 0.8 and preds["id20"].proba is None and preds["id20"].label == "1"
    texts = {i: f"text of {i}, with \"quotes\"" for i in ids}
    out = tmp_path / "pairs.csv"
    to_csv(pairs, out, texts=texts, predictions=preds)
    with open(out, newline="") as fh:
        rows = {(r["id_a"], r["id_b"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {(p.id_a, p.id_b) for p in pairs}
    a = rows[("id10", "id200")]
    assert (a["kind"], a["label_a"], a["label_b"], a["label_flip"]) == ("similar_image", "0", "1", "True")
    assert (a["pred_a"], a["pred_b"], a["wrong_a"], a["wrong_b"]) == ("1", "1", "True", "False")
    assert a["text_a"] == 'text of id10, with "quotes"'
    assert float(a["image_sim"]) == pytest.approx(pairs[[(p.id_a, p.id_b) for p in pairs].index(("id10", "id200"))].image_sim, abs=1e-6)
    c = rows[("id30", "id150")]  # true 1, 0; predicted 0, 0
    assert (c["wrong_a"], c["wrong_b"]) == ("True", "False")
    s = rows[("id20", "id21")]  # id20 predicted label "1" (no proba), true 1; id21 has no prediction
    assert (s["pred_a"], s["wrong_a"], s["pred_b"], s["wrong_b"]) == ("1", "False", "", "")
    # a plain dict of probabilities works too
    over = overlay_predictions(pairs, {"id10": 0.1, "id200": 0.4})
    p = next(q for q in over if q.id_a == "id10")
    assert (p.pred_a, p.wrong_a, p.pred_b, p.wrong_b) == (0, False, 0, True)


def test_no_pairs_in_random_data_and_tiny_sets():
    rng = np.random.default_rng(11)
    img, txt = rng.standard_normal((50, 64)), rng.standard_normal((50, 64))
    assert find_confounders([str(i) for i in range(50)], [str(i) for i in range(50)], img, txt) == []
    assert find_confounders(["a"], ["k"], img[:1], txt[:1]) == []


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.update(sample_ids=[]), "no samples given"),
    (lambda a: a.update(image_keys=a["image_keys"][:-1]), "image_keys has 9 rows but there are 10 sample ids"),
    (lambda a: a.update(text_vecs=a["text_vecs"][:8]), "text_vecs has 8 rows"),
    (lambda a: a.update(labels=[0] * 3), "labels has 3 rows"),
    (lambda a: a.update(sample_ids=["x"] * 10), "duplicated id"),
    (lambda a: a.update(image_vecs=np.zeros((10, 4, 8))), r"pooled vectors \[N, D\]"),
    (lambda a: a.update(image_threshold=1.5), "image_threshold must be a cosine similarity between -1 and 1"),
    (lambda a: a.update(text_diff_max="0.9"), "text_diff_max must be"),
    (lambda a: a.update(k=0), "k must be a positive integer"),
    (lambda a: a.update(index_kind="annoy"), "unknown index_kind 'annoy'"),
])
def test_errors(mutate, match):
    rng = np.random.default_rng(0)
    args = dict(sample_ids=[str(i) for i in range(10)], image_keys=[str(i) for i in range(10)],
                image_vecs=rng.standard_normal((10, 8)), text_vecs=rng.standard_normal((10, 8)), labels=None)
    mutate(args)
    with pytest.raises(FeatstoreError, match=match) as err:
        find_confounders(**args)
    assert "\n" not in str(err.value)


def test_prediction_file_errors(tmp_path):
    with pytest.raises(FeatstoreError, match="does not exist"):
        load_predictions(tmp_path / "nope.csv")
    bad_cols = tmp_path / "cols.csv"
    bad_cols.write_text("sample,score\na,0.3\n")
    with pytest.raises(FeatstoreError, match=r"has columns \['sample', 'score'\]; it needs `id`"):
        load_predictions(bad_cols)
    bad_proba = tmp_path / "proba.csv"
    bad_proba.write_text("id,proba\na,0.3\nb,1.7\n")
    with pytest.raises(FeatstoreError, match="line 3: proba '1.7' is not a probability"):
        load_predictions(bad_proba)
    with pytest.raises(FeatstoreError, match="folder .* does not exist"):
        to_csv([], tmp_path / "missing" / "x.csv")


def test_zero_vectors_named_by_sample():
    rng = np.random.default_rng(2)
    img, txt = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    txt[4] = 0
    with pytest.raises(FeatstoreError, match=r"text_vecs has 1 all-zero row\(s\) \(first samples: 's4'\)"):
        find_confounders([f"s{i}" for i in range(6)], list("abcdef"), img, txt)


def test_chunked_and_widened_knn_equals_bruteforce():
    from featstore.search.confounders import _knn_pairs

    ids, keys, img, txt, labels, _ = planted(n=300, seed=4)
    for r in range(60, 75):
        img[r] = img[59] + 0.01 * np.random.default_rng(r).standard_normal(64)
    got, capped = _knn_pairs(img.astype(np.float32), 0.95, k=2, kind="flat", use_gpu=False, chunk=7)
    assert capped == 0  # 16 copies: widened to k = 16 < K_MAX
    x = img / np.linalg.norm(img, axis=1, keepdims=True)
    ref = {tuple(p) for p in np.argwhere(np.triu(x @ x.T >= 0.95, k=1)).tolist()}
    # 16 copies of one image (120 pairs) + the planted 10/200, 20/21 and 40/41 image pairs
    assert {tuple(p) for p in got.tolist()} == ref and len(ref) == 16 * 15 // 2 + 3


# -- summary: counts per kind, left-out near-duplicates, thresholds and hints ---------------------------------------
def summary_case(seed=0, n=200, d=64):
    """Random samples with planted pairs of known counts:

    * same image file: 3 pairs with different texts (2 label flips) + 4 whose texts are near-identical (left out);
    * similar-looking image (another file): 1 pair with different texts (no flip);
    * same text: none (no two texts are alike; different image files with similar texts are absent)."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n, d)).astype(np.float32)
    txt = rng.standard_normal((n, d)).astype(np.float32)
    keys = [f"k{i}" for i in range(n)]
    labels = [0] * n
    for a, b, la, lb in ((0, 1, 0, 1), (2, 3, 1, 0), (4, 5, 1, 1)):  # same file, different text
        keys[b], img[b] = keys[a], img[a]
        labels[a], labels[b] = la, lb
    for a, b in ((6, 7), (8, 9), (10, 11), (12, 13)):  # same file, near-identical text: duplicates
        keys[b], img[b], txt[b] = keys[a], img[a], _noisy(txt[a], rng, 0.05)
    img[15] = _noisy(img[14], rng, 0.05)  # a look-alike scan of another file, different text
    return [f"s{i}" for i in range(n)], keys, img, txt, labels


def test_summary_counts_per_kind_and_hints_on_a_planted_case():
    from featstore.search.confounders import search_confounders, summary_lines

    ids, keys, img, txt, labels = summary_case()
    res = search_confounders(ids, keys, img, txt, labels, text_vector="cls")
    got = {(p.id_a, p.id_b): p.kind for p in res.pairs}
    assert got == {("s0", "s1"): "same_image", ("s2", "s3"): "same_image", ("s4", "s5"): "same_image",
                   ("s14", "s15"): "similar_image"} == brute_force(ids, keys, img, txt)
    s = res.summary
    assert s.n_samples == 200
    assert s.found == {"same_image": 3, "similar_image": 1, "same_text": 0}
    assert s.flips == {"same_image": 2, "similar_image": 0, "same_text": 0}
    assert s.left_out == {"same_image": 4, "similar_image": 0, "same_text": 0}
    assert summary_lines(s, shown={"same_image": 2, "similar_image": 1, "same_text": 0}) == [
        "same image file, different text: 3 pairs, 2 with a label flip (showing the first 2)",
        "similar-looking image (another file), different text: 1 pair, 0 with a label flip",
        "same text, different image: 0 pairs, 0 with a label flip",
        "label flip = the two samples of a pair have different labels; counted over every pair found of that kind, "
        "not only the pairs shown; a pair with an unlabelled side has none",
        "thresholds: same image = same image key; similar image = image cosine >= 0.95; same text = text cosine "
        ">= 0.95 (cls vectors); the other side must differ: text cosine < 0.9, image cosine < 0.9",
        "hint: same image file, different text: 4 more pairs were left out as near-duplicates (text cosine >= 0.9); "
        "raise --text-differ-below (e.g. 0.99) or pass --text-pool mean (texts that differ by a word keep close "
        "CLS vectors)",
        "hint: same text, different image: none found; no two texts reach text cosine >= 0.95; lower "
        "--text-threshold (e.g. 0.9) to look further",
    ]
    # raising the text "differs" bound brings the near-identical texts back as same-image pairs
    loose = search_confounders(ids, keys, img, txt, labels, text_diff_max=0.9999).summary
    assert loose.found["same_image"] == 7 and loose.left_out["same_image"] == 0


def test_summary_saturated_and_unlabelled():
    from featstore.search.confounders import search_confounders, summary_hints, summary_lines

    rng = np.random.default_rng(1)
    n = 20
    img = rng.standard_normal((n, 32)).astype(np.float32)
    txt = _noisy(np.tile(rng.standard_normal((1, 32)).astype(np.float32), (n, 1)), rng, 0.01)  # texts all alike
    res = search_confounders([str(i) for i in range(n)], [str(i) for i in range(n)], img, txt)
    s = res.summary
    assert s.found == {"same_image": 0, "similar_image": 0, "same_text": n * (n - 1) // 2}
    assert s.flips == {"same_image": None, "similar_image": None, "same_text": None}
    assert summary_lines(s)[2] == "same text, different image: 190 pairs"
    assert ("hint: same text, different image: 190 pairs for 20 samples (more than one per sample): text cosine "
            ">= 0.95 does not single out copies; raise --text-threshold or pass --text-pool mean (CLS vectors of "
            "short texts are all alike)") in summary_hints(s)
    assert "hint: same image file, different text: none found; no two samples share an image key" in summary_hints(s)
