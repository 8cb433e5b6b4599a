"""Confounder pairs: the same image with a different text, or the same text on a different image.

Hateful Memes is built from such pairs (the label flips between the two sides). ``find_confounders``
finds them from per-sample pooled vectors with FAISS nearest-neighbour search (never a dense N x N
matrix), ``search_confounders`` also returns a ``ConfounderSummary`` (counts per kind, the thresholds,
the pairs left out as near-duplicates) whose ``summary_lines`` the CLI prints and the HTML page shows,
``to_csv`` writes the pairs, ``load_predictions`` + ``overlay_predictions`` mark where a model got a side wrong.

Pair kinds (cosine similarities of the two samples' vectors), each reported on its own:

* ``same_image``: the same ``image_key`` (the same image file) and ``text_sim < text_diff_max``.
* ``similar_image``: different ``image_key`` but ``image_sim >= image_threshold`` (a look-alike: a re-saved
  copy, or just a similar picture) and ``text_sim < text_diff_max``.
* ``same_text``: ``text_sim >= text_threshold``, ``image_sim < image_diff_max`` and different
  ``image_key`` (the images differ).

A pair similar in both modalities is a near-duplicate, not a confounder: it is not reported, but counted
per kind (``ConfounderSummary.left_out``) so a hint can say when the "differs" threshold ate most pairs.

Label flip (``FLIP_DEFINITION``): a pair whose two samples have different labels, counted over every pair
found, not only the pairs a page shows.

Score and ranking: ``score`` is the similarity of the shared modality (``image_sim`` for the image kinds,
``text_sim`` for ``same_text``; a shared ``image_key`` counts as 1.0) and ``contrast = 1 - similarity of the
other modality``. Pairs are grouped by kind (``KINDS`` order), then sorted by ``score`` descending, then
``contrast`` descending (most different other side first), then ids; similarities are float64
cosines of the input vectors, and the sort compares them rounded to 9 decimals.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import FeatstoreError
from .index import TORCH_SEARCH, build_index, check_vectors, gpu_backend
from .neighbors import id_positions

EXACT_PAIRS_MAX = 5_000  # above this many samples the all-pairs search uses an IVF index
# near-duplicates (cosine >= 0.9) fall in the same or a neighbouring cell, so a rough partition is
# enough: 6 probes, k-means with 3 iterations on 16 points per list keep recall ~1 against brute force
# (benchmarks/confounders.py measures it on pairs planted down to cosine ~0.95)
CONFOUNDER_IVF = dict(nprobe=6, train_points_per_list=16, train_iters=3)
KINDS = ("same_image", "similar_image", "same_text")
KIND_TITLES = {"same_image": "same image file, different text",
               "similar_image": "similar-looking image (another file), different text",
               "same_text": "same text, different image"}
FLIP_DEFINITION = ("label flip = the two samples of a pair have different labels; counted over every pair found "
                   "of that kind, not only the pairs shown")


@dataclass(frozen=True)
class Prediction:
    """A model's output for one sample: ``proba`` (binary positive-class probability) and/or ``label``."""

    proba: Optional[float] = None
    label: Any = None

    def predicted_label(self, threshold: float = 0.5) -> Any:
        if self.proba is not None:
            return int(self.proba >= threshold)
        return self.label


@dataclass(frozen=True)
class ConfounderPair:
    """Samples ``id_a`` (row ``row_a``) and ``id_b`` (``row_b > row_a``) forming a confounder pair."""

    kind: str  # "same_image" | "similar_image" | "same_text"
    id_a: str
    id_b: str
    row_a: int
    row_b: int
    image_sim: float
    text_sim: float
    same_image_key: bool
    score: float
    contrast: float
    label_a: Any = None
    label_b: Any = None
    label_flip: Optional[bool] = None  # None without labels
    pred_a: Any = None  # predicted label of side a (after overlay_predictions)
    pred_b: Any = None
    wrong_a: Optional[bool] = None  # the model got side a wrong (None: no prediction or no label)
    wrong_b: Optional[bool] = None


def _check_threshold(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not -1.0 <= value <= 1.0:
        raise FeatstoreError(f"{name} must be a cosine similarity between -1 and 1, got {value!r}")
    return float(value)


def _knn_pairs(x: np.ndarray, threshold: float, k: int, kind: str, use_gpu, chunk: int = 65536) -> np.ndarray:
    """All pairs ``(i, j), i < j`` with cosine ``>= threshold`` found by k-NN over the rows of ``x``.

    A row whose k-th neighbour is still above the threshold may have more: it is searched again with
    twice the k until its last neighbour falls below the threshold or k covers every row.
    """
    n = x.shape[0]
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    if kind == "auto":  # exact when small, or when the GPU search is torch's exact one (faiss-gpu absent)
        exact_on_gpu = gpu_backend(use_gpu, "flat") == TORCH_SEARCH
        kind = "flat" if n <= EXACT_PAIRS_MAX or exact_on_gpu else "ivf"
    ivf = CONFOUNDER_IVF if kind == "ivf" else {}
    index = build_index(x, metric="cosine", kind=kind, use_gpu=use_gpu, **ivf)
    found: List[np.ndarray] = []
    rows = np.arange(n)
    kk = min(k + 1, n)
    while rows.size:
        again = []
        for s in range(0, rows.size, chunk):  # bounded query copies for large N
            r = rows[s:s + chunk]
            sims, idx = index.search(x[r], kk)
            hit = (sims >= threshold) & (idx >= 0) & (idx != r[:, None])
            qi, col = np.nonzero(hit)
            found.append(np.stack([r[qi], idx[qi, col]], axis=1))
            again.append(r[(sims[:, -1] >= threshold) & (idx[:, -1] >= 0)])
        if kk >= n:
            break
        rows = np.concatenate(again)
        kk = min(2 * kk, n)
    pairs = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
    return np.sort(pairs, axis=1)


def _pair_cosines(x: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """float64 cosine similarity of rows ``x[a[p]]`` and ``x[b[p]]`` for every pair ``p``."""
    out = np.empty(a.size, dtype=np.float64)
    for s in range(0, a.size, chunk):
        xa = x[a[s:s + chunk]].astype(np.float64)
        xb = x[b[s:s + chunk]].astype(np.float64)
        num = np.einsum("ij,ij->i", xa, xb)
        out[s:s + chunk] = np.clip(num / (np.linalg.norm(xa, axis=1) * np.linalg.norm(xb, axis=1)), -1.0, 1.0)
    return out


def _key_pairs(image_keys: Sequence[str]) -> np.ndarray:
    """All pairs ``(i, j), i < j`` of samples sharing an image key."""
    _, inverse, counts = np.unique(np.asarray([str(k) for k in image_keys]), return_inverse=True,
                                   return_counts=True)
    out = []
    for g in np.flatnonzero(counts > 1):
        members = np.flatnonzero(inverse == g)
        a, b = np.triu_indices(members.size, k=1)
        out.append(np.stack([members[a], members[b]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


@dataclass(frozen=True)
class ConfounderSummary:
    """What a confounder search found, per kind (``KINDS``): ``found`` pairs, ``flips`` among them (None
    without labels), ``left_out`` near-duplicates (the shared modality matched but the other did not differ),
    with the thresholds used and the number of samples searched."""

    n_samples: int
    thresholds: Dict[str, float]
    found: Dict[str, int]
    flips: Dict[str, Optional[int]]
    left_out: Dict[str, int]
    text_vector: Optional[str] = None  # the text array compared (e.g. "cls" or "mean"), when known


@dataclass(frozen=True)
class ConfounderSearch:
    pairs: List[ConfounderPair]
    summary: ConfounderSummary


def _check_inputs(sample_ids, image_keys, image_vecs, text_vecs, labels, thresholds: Dict[str, float], k,
                  index_kind) -> Tuple[np.ndarray, np.ndarray, Dict[str, float]]:
    """Validated ``(image vectors, text vectors, thresholds)``; a one-line FeatstoreError for bad input."""
    n = len(sample_ids)
    if n == 0:
        raise FeatstoreError("no samples given; pass the ids, image keys and vectors of at least two samples")
    id_positions(sample_ids, "sample_ids")
    img = check_vectors(image_vecs, "image_vecs")
    txt = check_vectors(text_vecs, "text_vecs")
    for what, m in (("image_keys", len(image_keys)), ("image_vecs", img.shape[0]), ("text_vecs", txt.shape[0])) + (
            (("labels", len(labels)),) if labels is not None else ()):
        if m != n:
            raise FeatstoreError(f"{what} has {m} rows but there are {n} sample ids; pass one row per sample")
    thresholds = {name: _check_threshold(name, v) for name, v in thresholds.items()}
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise FeatstoreError(f"k must be a positive integer, got {k!r}")
    if index_kind not in ("auto", "flat", "ivf", "hnsw"):
        raise FeatstoreError(f"unknown index_kind {index_kind!r}; choose one of: auto, flat, ivf, hnsw")
    for what, x in (("image_vecs", img), ("text_vecs", txt)):  # zero rows: clear error before indexing
        zero = np.flatnonzero(~x.any(axis=1))
        if zero.size:
            raise FeatstoreError(
                f"{what} has {zero.size} all-zero row(s) (first samples: "
                f"{', '.join(repr(sample_ids[z]) for z in zero[:5])}); cosine similarity is undefined for "
                "them: re-extract those samples or leave them out"
            )
    return img, txt, thresholds


def _kind_masks(isim: np.ndarray, tsim: np.ndarray, same_key: np.ndarray, th: Dict[str, float]):
    """``({kind: candidate is that kind}, {kind: candidate matched the shared side but not the differing one})``."""
    img_match = {"same_image": same_key, "similar_image": (isim >= th["image_threshold"]) & ~same_key}
    shared = dict(img_match, same_text=(tsim >= th["text_threshold"]) & ~same_key)
    differs = {"same_image": tsim < th["text_diff_max"], "similar_image": tsim < th["text_diff_max"],
               "same_text": isim < th["image_diff_max"]}
    return ({k: shared[k] & differs[k] for k in KINDS}, {k: shared[k] & ~differs[k] for k in KINDS})


def _make_pairs(kind: str, sel: np.ndarray, a, b, isim, tsim, same_key, sample_ids, labels) -> List[ConfounderPair]:
    out = []
    for p in np.flatnonzero(sel):
        i, j = int(a[p]), int(b[p])
        si, st, sk = float(isim[p]), float(tsim[p]), bool(same_key[p])
        score = (1.0 if sk else si) if kind != "same_text" else st
        contrast = 1.0 - (st if kind != "same_text" else si)
        la = lb = flip = None
        if labels is not None:
            la, lb = labels[i], labels[j]
            flip = bool(la != lb)
        out.append(ConfounderPair(kind, sample_ids[i], sample_ids[j], i, j, si, st, sk, score, contrast, la, lb, flip))
    return out


def kind_counts(pairs: Sequence[ConfounderPair]) -> Tuple[Dict[str, int], Dict[str, Optional[int]]]:
    """``({kind: pairs}, {kind: label flips, None when no pair has labels})`` - the one count the CLI and
    the HTML page both show (``FLIP_DEFINITION``)."""
    found = {k: sum(p.kind == k for p in pairs) for k in KINDS}
    labelled = any(p.label_flip is not None for p in pairs)
    flips = {k: (sum(bool(p.label_flip) for p in pairs if p.kind == k) if labelled else None) for k in KINDS}
    return found, flips


def search_confounders(sample_ids: Sequence[str], image_keys: Sequence[str], image_vecs, text_vecs,
                       labels: Optional[Sequence[Any]] = None, *, image_threshold: float = 0.95,
                       text_threshold: float = 0.95, text_diff_max: float = 0.9, image_diff_max: float = 0.9,
                       k: int = 20, index_kind: str = "auto", use_gpu="auto",
                       text_vector: Optional[str] = None) -> ConfounderSearch:
    """Confounder pairs among ``N`` samples (see the module docstring for kinds and ranking) and their summary.

    Inputs are per sample: ``image_vecs [N, Di]`` and ``text_vecs [N, Dt]`` (pooled vectors) are row
    ``i`` = sample ``sample_ids[i]`` with image ``image_keys[i]``; ``labels`` (optional, ``[N]``) marks
    ``label_flip``. Each modality gets one cosine FAISS index searched for the ``k`` nearest of every
    sample (k grows for rows whose neighbours are all above the threshold). ``index_kind="auto"``: exact
    for ``N <= 5000`` or when the GPU search is torch's exact one (``index.gpu_backend``: a CUDA device and
    no faiss-gpu), IVF (``CONFOUNDER_IVF``: nprobe 6, rough k-means) above. ``text_vector`` only names
    the text array in the summary.
    """
    sample_ids = [str(s) for s in sample_ids]
    th = dict(image_threshold=image_threshold, text_threshold=text_threshold, text_diff_max=text_diff_max,
              image_diff_max=image_diff_max)
    img, txt, th = _check_inputs(sample_ids, image_keys, image_vecs, text_vecs, labels, th, k, index_kind)
    cand = np.unique(np.concatenate([
        _knn_pairs(img, th["image_threshold"], k, index_kind, use_gpu),
        _key_pairs(image_keys),
        _knn_pairs(txt, th["text_threshold"], k, index_kind, use_gpu),
    ]), axis=0)
    a, b = cand[:, 0], cand[:, 1]
    # exact float64 cosines of the candidates, row-wise (O(pairs * D) memory, not N^2)
    isim, tsim = _pair_cosines(img, a, b), _pair_cosines(txt, a, b)
    keys = np.asarray([str(x) for x in image_keys])
    same_key = keys[a] == keys[b]
    chosen, dropped = _kind_masks(isim, tsim, same_key, th)
    pairs = [q for kind in KINDS for q in _make_pairs(kind, chosen[kind], a, b, isim, tsim, same_key, sample_ids,
                                                      labels)]
    # rounded so float noise (1 - 1e-16 vs 1.0) does not decide the order of equal scores
    pairs.sort(key=lambda q: (KINDS.index(q.kind), -round(q.score, 9), -round(q.contrast, 9), q.id_a, q.id_b))
    found, flips = kind_counts(pairs)
    summary = ConfounderSummary(len(sample_ids), th, found, flips, {kd: int(m.sum()) for kd, m in dropped.items()},
                                text_vector)
    return ConfounderSearch(pairs, summary)


def find_confounders(sample_ids: Sequence[str], image_keys: Sequence[str], image_vecs, text_vecs,
                     labels: Optional[Sequence[Any]] = None, **options) -> List[ConfounderPair]:
    """The pairs of ``search_confounders`` (same arguments)."""
    return search_confounders(sample_ids, image_keys, image_vecs, text_vecs, labels, **options).pairs


# -- summary: the lines the CLI prints and the HTML page shows ------------------------------------------------
_SIDE = {"same_image": ("image", "text"), "similar_image": ("image", "text"), "same_text": ("text", "image")}


def summary_lines(summary: ConfounderSummary, shown: Optional[Mapping[str, int]] = None) -> List[str]:
    """Counts per kind, the label-flip definition, the thresholds and the hints, one string per line.
    ``shown`` ({kind: pairs shown}) adds "showing the first N" where a page shows fewer than found."""
    return count_lines(summary.found, summary.flips, shown) + [threshold_line(summary)] + summary_hints(summary)


def count_lines(found: Mapping[str, int], flips: Mapping[str, Optional[int]],
                shown: Optional[Mapping[str, int]] = None) -> List[str]:
    """One line per kind ("<kind>: N pairs, F with a label flip") and the ``FLIP_DEFINITION`` line."""
    lines = []
    for kind in KINDS:
        n, f = found[kind], flips[kind]
        line = f"{KIND_TITLES[kind]}: {n} pair{'' if n == 1 else 's'}" + (
            f", {f} with a label flip" if f is not None else "")
        if shown is not None and shown.get(kind, 0) < n:
            line += f" (showing the first {shown.get(kind, 0)})"
        lines.append(line)
    return lines + [FLIP_DEFINITION]


def threshold_line(summary: ConfounderSummary) -> str:
    th = summary.thresholds
    vec = f" ({summary.text_vector} vectors)" if summary.text_vector else ""
    return (f"thresholds: same image = same image key; similar image = image cosine >= {th['image_threshold']:g}; "
            f"same text = text cosine >= {th['text_threshold']:g}{vec}; the other side must differ: "
            f"text cosine < {th['text_diff_max']:g}, image cosine < {th['image_diff_max']:g}")


def summary_hints(summary: ConfounderSummary) -> List[str]:
    """A ``hint:`` line for each kind that came out empty, mostly left out as near-duplicates, or saturated
    (more pairs than samples: the threshold does not single out copies)."""
    th, out = summary.thresholds, []
    for kind in KINDS:
        shared, other = _SIDE[kind]
        n, dropped, title = summary.found[kind], summary.left_out[kind], KIND_TITLES[kind]
        differ = th[f"{other}_diff_max"]
        pool = " or pass --text-pool mean (texts that differ by a word keep close CLS vectors)" if other == "text" else ""
        if dropped and dropped >= n:
            out.append(f"hint: {title}: {dropped} more pairs were left out as near-duplicates ({other} cosine >= "
                       f"{differ:g}); raise --{other}-differ-below (e.g. 0.99){pool}")
        elif n == 0:
            out.append(f"hint: {title}: none found; " + (
                "no two samples share an image key" if kind == "same_image" else
                f"no two {'different image files' if kind == 'similar_image' else 'texts'} reach {shared} cosine >= "
                f"{th[f'{shared}_threshold']:g}; lower --{shared}-threshold (e.g. 0.9) to look further"))
        if kind != "same_image" and n > summary.n_samples:
            more = " or pass --text-pool mean (CLS vectors of short texts are all alike)" if shared == "text" else ""
            out.append(f"hint: {title}: {n} pairs for {summary.n_samples} samples (more than one per sample): "
                       f"{shared} cosine >= {th[f'{shared}_threshold']:g} does not single out copies; raise "
                       f"--{shared}-threshold{more}")
    return out


# -- predictions overlay -------------------------------------------------------------------------
def _as_prediction(value: Any) -> Prediction:
    if isinstance(value, Prediction):
        return value
    if isinstance(value, (float, np.floating)) and 0.0 <= float(value) <= 1.0:
        return Prediction(proba=float(value))
    return Prediction(label=value)


def _same_label(pred: Any, true: Any) -> bool:
    try:
        return float(pred) == float(true)
    except (TypeError, ValueError):
        return str(pred) == str(true)


def load_predictions(path) -> Dict[str, Prediction]:
    """Read a heads run's predictions CSV (columns ``id`` and ``proba`` and/or ``label``).

    ``proba`` (the binary positive-class probability) wins when present: the predicted label is
    ``proba >= 0.5``; otherwise the ``label`` column is the predicted label.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FeatstoreError(f"predictions file {path!r} does not exist; pass a heads run's predictions CSV")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "id" not in cols or not ({"proba", "label"} & set(cols)):
            raise FeatstoreError(
                f"predictions file {path!r} has columns {cols}; it needs `id` and `proba` and/or `label`"
            )
        out: Dict[str, Prediction] = {}
        for line, row in enumerate(reader, start=2):
            proba = None
            if "proba" in cols and row.get("proba") not in (None, ""):
                try:
                    proba = float(row["proba"])
                except ValueError:
                    proba = math.nan
                if not 0.0 <= proba <= 1.0:
                    raise FeatstoreError(
                        f"predictions file {path!r} line {line}: proba {row['proba']!r} is not a probability "
                        "in [0, 1]; fix the file or regenerate it with `heads predict`"
                    )
            label = row.get("label") if row.get("label") not in ("", None) else None
            out[str(row["id"])] = Prediction(proba=proba, label=label)
    return out


def overlay_predictions(pairs: Sequence[ConfounderPair], predictions: Mapping[str, Any]) -> List[ConfounderPair]:
    """Copies of ``pairs`` with ``pred_a/pred_b`` and ``wrong_a/wrong_b`` filled in.

    ``predictions`` maps sample id -> ``Prediction``, a probability in [0, 1] (binary; the predicted
    label is ``proba >= 0.5``) or a predicted label. ``wrong_*`` is None for a side without a
    prediction or without a true label.
    """
    out = []
    for p in pairs:
        fields = {}
        for side, sid, true in (("a", p.id_a, p.label_a), ("b", p.id_b, p.label_b)):
            if sid in predictions:
                pred = _as_prediction(predictions[sid]).predicted_label()
                fields[f"pred_{side}"] = pred
                fields[f"wrong_{side}"] = None if true is None or pred is None else not _same_label(pred, true)
        out.append(replace(p, **fields))
    return out


CSV_COLUMNS = ["kind", "id_a", "id_b", "image_sim", "text_sim", "same_image_key", "score", "contrast",
               "label_a", "label_b", "label_flip", "text_a", "text_b", "pred_a", "pred_b", "wrong_a", "wrong_b"]


def to_csv(pairs: Sequence[ConfounderPair], path, texts: Optional[Mapping[str, str]] = None,
           predictions: Optional[Mapping[str, Any]] = None) -> None:
    """Write ``pairs`` (in order) as CSV with ``CSV_COLUMNS``; ``texts`` maps id -> text (optional),
    ``predictions`` is as for ``overlay_predictions``. Empty cells mean "not known"."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FeatstoreError(f"cannot write {path!r}: folder {parent!r} does not exist; create it first")
    if predictions is not None:
        pairs = overlay_predictions(pairs, predictions)
    texts = texts or {}

    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.6f}"
        return v

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for p in pairs:
            w.writerow([cell(v) for v in (
                p.kind, p.id_a, p.id_b, p.image_sim, p.text_sim, p.same_image_key, p.score, p.contrast,
                p.label_a, p.label_b, p.label_flip, texts.get(p.id_a), texts.get(p.id_b),
                p.pred_a, p.pred_b, p.wrong_a, p.wrong_b)])
