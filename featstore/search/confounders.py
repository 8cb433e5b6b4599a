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

Label flip (``FLIP_DEFINITION``): a pair whose two samples have different labels (of one task: ``--task``),
counted over every pair found, not only the pairs a page shows. A pair with an unlabelled side has no flip
(``label_flip`` None): it is neither counted as one nor as "same label", and the count line says how many such
pairs there are.

Saturation cap: each modality's k-NN search widens ``k`` (doubling) for the samples whose k-th neighbour is still
above the threshold, but never beyond ``k_max`` neighbours per sample (``K_MAX`` = 256 by default, or ``k`` when
larger). Samples still above the threshold at ``k_max`` are counted (``ConfounderSummary.capped``) and a hint
(``capped_hint``) says that the search stopped there and that the threshold does not single out copies: raise
it. ``search_confounders(on_hint=...)`` receives that hint as soon as the modality's search ends.

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
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

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
                   "of that kind, not only the pairs shown; a pair with an unlabelled side has none")
K_MAX = 256  # neighbours per sample a saturated k-NN search widens to at most (search_confounders' k_max)


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


SHORT_TEXT_HINT = " or pass --text-pool mean (CLS vectors of short texts are all alike)"

def _check_threshold(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not -1.0 <= value <= 1.0:
        raise FeatstoreError(f"{name} must be a cosine similarity between -1 and 1, got {value!r}")
    return float(value)


def _knn_pairs(x: np.ndarray, threshold: float, k: int, kind: str, use_gpu, chunk: int = 65536,
               k_max: int = K_MAX) -> Tuple[np.ndarray, int]:
    """``(pairs, capped)``: all pairs ``(i, j), i < j`` with cosine ``>= threshold`` found by k-NN over the rows
    of ``x``, and how many rows still had ``max(k, k_max)`` neighbours above the threshold when the search stopped.

    A row whose k-th neighbour is still above the threshold may have more: it is searched again with
    twice the k until its last neighbour falls below the threshold, k covers every row, or k reaches
    ``max(k, k_max)`` (those rows are ``capped``: their pairs beyond that many neighbours are not listed).
    """
    n = x.shape[0]
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64), 0
    if kind == "auto":  # exact when small, or when the GPU search is torch's exact one (faiss-gpu absent)
        exact_on_gpu = gpu_backend(use_gpu, "flat") == TORCH_SEARCH
        kind = "flat" if n <= EXACT_PAIRS_MAX or exact_on_gpu else "ivf"
    ivf = CONFOUNDER_IVF if kind == "ivf" else {}
    index = build_index(x, metric="cosine", kind=kind, use_gpu=use_gpu, **ivf)
    found: List[np.ndarray] = []
    rows = np.arange(n)
    cap = min(max(k, k_max) + 1, n)  # + 1: the row itself
    kk, capped = min(k + 1, cap), 0
    while rows.size:
        again = []
        for s in range(0, rows.size, chunk):  # bounded query copies for large N
            r = rows[s:s + chunk]
            sims, idx = index.search(x[r], kk)
            hit = (sims >= threshold) & (idx >= 0) & (idx != r[:, None])
            qi, col = np.nonzero(hit)
            found.append(np.stack([r[qi], idx[qi, col]], axis=1))
            again.append(r[(sims[:, -1] >= threshold) & (idx[:, -1] >= 0)])
        rows = np.concatenate(again)
        if kk >= n:
            break
        if kk >= cap:
            capped = int(rows.size)
            break
        kk = min(2 * kk, cap)
    pairs = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
    return np.sort(pairs, axis=1), capped


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
    task: Optional[str] = None  # the label task whose labels flip, when known
    unlabelled: Optional[Dict[str, int]] = None  # {kind: pairs with an unlabelled side}, with labels
    capped: Dict[str, int] = field(default_factory=dict)  # {"image" | "text": samples capped at k_max}
    k_max: int = K_MAX


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


def label_flip(a: Any, b: Any) -> Optional[bool]:
    """Whether two samples' labels differ; None when either is unlabelled (no flip either way)."""
    return None if a is None or b is None else bool(a != b)


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
            flip = label_flip(la, lb)
        out.append(ConfounderPair(kind, sample_ids[i], sample_ids[j], i, j, si, st, sk, score, contrast, la, lb, flip))
    return out


def kind_counts(pairs: Sequence[ConfounderPair], labelled: Optional[bool] = None
                ) -> Tuple[Dict[str, int], Dict[str, Optional[int]]]:
    """``({kind: pairs}, {kind: label flips, None without labels})`` - the one count the CLI and the HTML page
    both show (``FLIP_DEFINITION``). ``labelled``: whether labels were given (default: some pair has one)."""
    found = {k: sum(p.kind == k for p in pairs) for k in KINDS}
    if labelled is None:
        labelled = any(p.label_a is not None or p.label_b is not None for p in pairs)
    flips = {k: (sum(p.label_flip is True for p in pairs if p.kind == k) if labelled else None) for k in KINDS}
    return found, flips


def unlabelled_counts(pairs: Sequence[ConfounderPair]) -> Dict[str, int]:
    """{kind: pairs with an unlabelled side} (they have no label flip)."""
    return {k: sum(p.kind == k and (p.label_a is None or p.label_b is None) for p in pairs) for k in KINDS}


def search_confounders(sample_ids: Sequence[str], image_keys: Sequence[str], image_vecs, text_vecs,
                       labels: Optional[Sequence[Any]] = None, *, image_threshold: float = 0.95,
                       text_threshold: float = 0.95, text_diff_max: float = 0.9, image_diff_max: float = 0.9,
                       k: int = 20, k_max: int = K_MAX, index_kind: str = "auto", use_gpu="auto",
                       text_vector: Optional[str] = None, task: Optional[str] = None,
                       on_hint: Optional[Callable[[str], None]] = None) -> ConfounderSearch:
    """Confounder pairs among ``N`` samples (see the module docstring for kinds and ranking) and their summary.

    Inputs are per sample: ``image_vecs [N, Di]`` and ``text_vecs [N, Dt]`` (pooled vectors) are row
    ``i`` = sample ``sample_ids[i]`` with image ``image_keys[i]``; ``labels`` (optional, ``[N]``, None for an
    unlabelled sample) marks ``label_flip``. Each modality gets one cosine FAISS index searched for the ``k``
    nearest of every sample (k grows for rows whose neighbours are all above the threshold, up to
    ``max(k, k_max)``: the module docstring's saturation cap; ``on_hint(line)`` gets its hint as soon as it is
    known). ``index_kind="auto"``: exact for ``N <= 5000`` or when the GPU search is torch's exact one
    (``index.gpu_backend``: a CUDA device and no faiss-gpu), IVF (``CONFOUNDER_IVF``: nprobe 6, rough k-means)
    above. ``text_vector`` and ``task`` only name the text array and the label task in the summary.
    """
    sample_ids = [str(s) for s in sample_ids]
    th = dict(image_threshold=image_threshold, text_threshold=text_threshold, text_diff_max=text_diff_max,
              image_diff_max=image_diff_max)
    img, txt, th = _check_inputs(sample_ids, image_keys, image_vecs, text_vecs, labels, th, k, index_kind)
    if isinstance(k_max, bool) or not isinstance(k_max, (int, np.integer)) or k_max < 1:
        raise FeatstoreError(f"k_max must be a positive integer, got {k_max!r}")
    found_pairs, capped = [_key_pairs(image_keys)], {}
    for modality, x in (("image", img), ("text", txt)):
        pairs_m, capped[modality] = _knn_pairs(x, th[f"{modality}_threshold"], k, index_kind, use_gpu,
                                               k_max=k_max)
        found_pairs.append(pairs_m)
        if capped[modality] and on_hint is not None:
            on_hint(capped_hint(modality, capped[modality], max(k, k_max), th[f"{modality}_threshold"]))
    cand = np.unique(np.concatenate(found_pairs), axis=0)
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
    found, flips = kind_counts(pairs, labelled=labels is not None)
    summary = ConfounderSummary(len(sample_ids), th, found, flips, {kd: int(m.sum()) for kd, m in dropped.items()},
                                text_vector, task, unlabelled_counts(pairs) if labels is not None else None,
                                {m: c for m, c in capped.items() if c}, max(k, k_max))
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
    return (count_lines(summary.found, summary.flips, shown, summary.unlabelled, summary.task)
            + [threshold_line(summary)] + summary_hints(summary))


def flip_definition(task: Optional[str] = None) -> str:
    """``FLIP_DEFINITION``, naming the label task when known."""
    if task is None:
        return FLIP_DEFINITION
    return FLIP_DEFINITION.replace("different labels;", f"different labels of task {task!r};", 1)


def count_lines(found: Mapping[str, int], flips: Mapping[str, Optional[int]],
                shown: Optional[Mapping[str, int]] = None, unlabelled: Optional[Mapping[str, int]] = None,
                task: Optional[str] = None) -> List[str]:
    """One line per kind ("<kind>: N pairs, F with a label flip[, U with an unlabelled side]") and the
    flip definition line."""
    lines = []
    for kind in KINDS:
        n, f, u = found[kind], flips[kind], (unlabelled or {}).get(kind, 0)
        line = f"{KIND_TITLES[kind]}: {n} pair{'' if n == 1 else 's'}" + (
            f", {f} with a label flip" if f is not None else "") + (
            f", {u} with an unlabelled side" if f is not None and u else "")
        if shown is not None and shown.get(kind, 0) < n:
            line += f" (showing the first {shown.get(kind, 0)})"
        lines.append(line)
    return lines + [flip_definition(task)]


def threshold_line(summary: ConfounderSummary) -> str:
    th = summary.thresholds
    vec = f" ({summary.text_vector} vectors)" if summary.text_vector else ""
    return (f"thresholds: same image = same image key; similar image = image cosine >= {th['image_threshold']:g}; "
            f"same text = text cosine >= {th['text_threshold']:g}{vec}; the other side must differ: "
            f"text cosine < {th['text_diff_max']:g}, image cosine < {th['image_diff_max']:g}")


def capped_hint(modality: str, rows: int, k_max: int, threshold: float) -> str:
    """The hint of a k-NN search that stopped at ``k_max`` neighbours (the module docstring's saturation cap)."""
    more = SHORT_TEXT_HINT if modality == "text" else ""
    return (f"hint: the {modality} search stopped at {k_max} neighbours per sample (k_max): {rows} sample"
            f"{'' if rows == 1 else 's'} still had {k_max} neighbours at {modality} cosine >= {threshold:g}, so "
            f"their pairs beyond the {k_max} nearest are not listed; raise --{modality}-threshold (e.g. 0.99) until "
            f"it singles out copies{more}")


def summary_hints(summary: ConfounderSummary) -> List[str]:
    """A ``hint:`` line for each modality whose search stopped at ``k_max`` (``capped_hint``), and for each kind
    that came out empty, mostly left out as near-duplicates, or saturated (more pairs than samples: the
    threshold does not single out copies)."""
    th = summary.thresholds
    out = [capped_hint(m, summary.capped[m], summary.k_max, th[f"{m}_threshold"])
           for m in ("image", "text") if summary.capped.get(m)]
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
            more = SHORT_TEXT_HINT if shared == "text" else ""
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


def load_predictions(path, task: Optional[str] = None) -> Dict[str, Prediction]:
    """Read a heads run's predictions CSV: columns ``id`` and ``proba`` and/or ``label`` (one binary task called
    ``label``), or ``id`` and a column named ``task`` (the predicted class name; heads writes one per task of a
    multi-task run, e.g. Memotion's ``A``).

    ``proba`` (the binary positive-class probability) wins when present: the predicted label is
    ``proba >= 0.5``; otherwise the ``label`` column is the predicted label.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FeatstoreError(f"predictions file {path!r} does not exist; pass a heads run's predictions CSV")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "id" in cols and task not in (None, "label") and task in cols:
            return {str(row["id"]): Prediction(label=row[task] if row.get(task) not in ("", None) else None)
                    for row in reader}
        if "id" not in cols or not ({"proba", "label"} & set(cols)):
            raise FeatstoreError(
                f"predictions file {path!r} has columns {cols}; it needs `id` and `proba` and/or `label`"
                + (f" (or `id` and `{task}`, as heads writes for task {task!r})" if task not in (None, "label")
                   else "")
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


def _label_key(value: Any) -> str:
    """A predicted or true label as comparable text: ``1``, ``1.0`` and ``"1"`` alike."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _class_forms(labels: Sequence[Any], class_names: Sequence[str]) -> Dict[str, Any]:
    """{text of a class (its name, index or a true label): that class as the dataset's labels write it}."""
    seen = [v for v in labels if v is not None]
    as_index = bool(seen) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in seen)
    forms: Dict[str, Any] = {}
    for i, name in enumerate(class_names):
        forms[str(i)] = forms[str(name)] = i if as_index else name
    forms.update({_label_key(v): v for v in seen})
    return forms


def check_predictions(predictions: Mapping[str, Prediction], path, sample_ids: Sequence[str],
                      labels: Optional[Sequence[Any]] = None, task: Optional[str] = None,
                      class_names: Sequence[str] = (), binary: bool = True) -> Dict[str, Any]:
    """{sample id: predicted label} of the samples the file covers, each label written as the dataset writes that
    class. A file none of whose ids is a sample, a ``proba`` for a task of more than two classes, or a predicted
    label that is not one of the task's classes (``class_names`` / the true ``labels``) is a one-line error."""
    path = os.fspath(path)
    ids = [i for i in dict.fromkeys(str(s) for s in sample_ids) if i in predictions]
    if not ids:
        first = ", ".join(repr(i) for i in list(predictions)[:3]) or "none"
        raise FeatstoreError(f"predictions file {path!r}: none of its {len(predictions)} ids is a sample of the "
                             f"dataset (its first: {first}); pass the predictions of a run on this dataset")
    preds = {i: _as_prediction(predictions[i]) for i in ids}
    if task is None:
        return {i: p.predicted_label() for i, p in preds.items()}
    if not binary and any(p.proba is not None for p in preds.values()):
        raise FeatstoreError(f"predictions file {path!r} gives `proba` (one binary probability) but task {task!r} "
                             f"has {len(class_names)} classes ({', '.join(class_names)}); pass a predictions file "
                             f"with a `{task}` column (heads predict writes one per task)")
    forms = _class_forms(labels or [], class_names)
    out = {i: p.predicted_label() for i, p in preds.items()}
    bad = list(dict.fromkeys(str(v) for v in out.values() if v is not None and _label_key(v) not in forms))
    if bad:
        raise FeatstoreError(
            f"predictions file {path!r}: predicted label{'s' if len(bad) > 1 else ''} "
            f"{', '.join(map(repr, bad[:5]))} {'are' if len(bad) > 1 else 'is'} not a class of task {task!r} "
            f"({', '.join(map(str, class_names)) or 'no classes'}); pass the predictions of a run on this dataset "
            "and task")
    return {i: None if v is None else forms[_label_key(v)] for i, v in out.items()}


def prediction_line(pairs: Sequence[ConfounderPair], covered: int, n_samples: int) -> str:
    """How many pair sides had a prediction, and how many samples the file covers."""
    sides = sum((p.pred_a is not None) + (p.pred_b is not None) for p in pairs)
    return (f"predictions: {sides} of {2 * len(pairs)} pair sides have a prediction; the file covers {covered} of "
            f"the {n_samples} samples")


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
    ``predictions`` is as for ``overlay_predictions``. Empty cells mean "not known". Written under a temporary
    name and renamed, so a failure leaves no half-written file."""
    from .outputs import AtomicOutputs

    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FeatstoreError(f"cannot write {path!r}: folder {parent!r} does not exist; create it first")
    if predictions is not None:
        pairs = overlay_predictions(pairs, predictions)
    with AtomicOutputs() as out:
        write_csv_rows(pairs, out.path(path), texts)


def write_csv_rows(pairs: Sequence[ConfounderPair], path, texts: Optional[Mapping[str, str]] = None) -> None:
    """``to_csv``'s file, written straight to ``path`` (pairs as they are)."""
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
