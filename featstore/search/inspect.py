"""Store-level inspection jobs behind `featstore neighbors`, `featstore confounders` and `featstore map`:
they read pooled vectors from feature set versions, join them to a dataset by key and call the search
library. The FAISS index of a version is built once and cached beside it in the store (``aux/``).

Labels come from one task of the dataset (``tasks.resolve_task``: ``--task``); a feature set extracted from
another version of the dataset's manifest gets a warning line (``featstore.store.manifest_mismatch_warnings``,
the check `heads train` makes), given to ``warn`` before the search runs. Every argument (``--out``, the arrays,
the task, a predictions file) is checked before the search, and the files are written under temporary names and
renamed at the end (``outputs``): a command that fails leaves no new file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import FeatstoreError
from ..store import manifest_mismatch_warnings
from .confounders import (ConfounderSearch, check_predictions, load_predictions, overlay_predictions,
                          prediction_line, search_confounders, write_csv_rows)
from .embedmap import plot_embedding_map
from .index import cached_index
from .neighbors import neighbors
from .outputs import AtomicOutputs, check_out_dir, check_out_file
from .report import check_page_args, render_html_report
from .tasks import resolve_task, sample_labels

POOLED_NAMES = ("pooled", "cls", "mean")
Warn = Optional[Callable[[str], None]]


def _is_vector(spec) -> bool:
    return not spec.per_item and len(spec.shape) == 1 and np.issubdtype(np.dtype(spec.dtype), np.floating)


def pooled_array(fsv, array: Optional[str] = None, flag: str = "--array") -> str:
    """The name of the version's pooled vector array (``array`` if given; ``flag`` names the option in errors):
    one float vector per row (``[N, D]``); a per-item array, a scalar or an integer array is refused."""
    choices = ", ".join(_pooled(fsv)) or "(none)"
    if array:
        if array not in fsv.array_names:
            raise FeatstoreError(f"{fsv.ref} has no array {array!r} (it has {', '.join(fsv.array_names)}); pass {flag} "
                                 f"with one of {choices}")
        spec = fsv.spec(array)
        if not _is_vector(spec):
            raise FeatstoreError(f"array {array!r} of {fsv.ref} is not a pooled vector ([N, D] floats) but "
                                 f"{spec.dtype} {list(spec.shape)} per {'item of a ' if spec.per_item else ''}row; "
                                 f"pass {flag} with one of {choices}")
        return array
    names = _pooled(fsv)
    if not names:
        others = [n for n in fsv.array_names if _is_vector(fsv.spec(n))]
        raise FeatstoreError(f"{fsv.ref} has no pooled vectors ({', '.join(fsv.array_names)}); extract with an "
                             f"extractor that stores pooled/cls/mean, or pass {flag} NAME of an [N, D] float array"
                             + (f" (it has {', '.join(others)})" if others else ""))
    return names[0]


def _pooled(fsv) -> List[str]:
    return [n for n in POOLED_NAMES if n in fsv.array_names and _is_vector(fsv.spec(n))]


def version_index(fsv, array: str, vectors: np.ndarray):
    """The cosine index of one array of a version, cached in the store beside it."""
    return cached_index(vectors, fsv.read_aux, fsv.write_aux, key=f"{array}")


def _warn(warn: Warn, dataset, sets: Dict[str, object]) -> None:
    for line in manifest_mismatch_warnings(dataset, sets):
        if warn is not None:
            warn(line)


def _label_text(values) -> str:
    return "" if all(v is None for v in values) else ",".join("-" if v is None else str(v) for v in values)


def nearest(fsv, query: str, k: int = 10, *, array: Optional[str] = None, dataset=None, task: Optional[str] = None,
            warn: Warn = None) -> Tuple[List[dict], Optional[str]]:
    """``(rows, task)``: the ``k`` nearest rows of ``query`` in ``fsv`` by cosine, with texts and labels (of
    ``task``, as ``resolve_task`` resolves it: returned too; "-" for an unlabelled sample) when ``dataset`` is
    given.

    ``query`` is a key of the version; for an image set a sample id of ``dataset`` also works (its image).
    All-zero rows are never neighbours; an all-zero query row is a one-line error naming its key.
    """
    name = pooled_array(fsv, array)
    task = resolve_task(dataset, task)
    keys = [str(k_) for k_ in fsv.keys]
    if not keys:
        raise FeatstoreError(f"{fsv.ref} is empty; nothing to search")
    by_key: Dict[str, List] = {}
    if dataset is not None:
        _warn(warn, dataset, {fsv.modality: fsv})
        for s in dataset.distinct_samples():
            by_key.setdefault(s.image_key if fsv.key_kind == "image_key" else s.id, []).append(s)
        if query not in set(keys) and fsv.key_kind == "image_key":
            hits = [s.image_key for s in dataset.samples if s.id == query]
            query = hits[0] if hits else query
    vectors = fsv.read(name).astype(np.float32)
    index = version_index(fsv, name, vectors)
    rows = neighbors([query], keys, vectors, k=k, index=index)
    out = []
    for r in rows:
        samples = by_key.get(r.neighbor, [])[:3]
        out.append({"rank": r.rank, "key": r.neighbor, "cosine": float(r.similarity),
                    "text": " | ".join(s.text for s in samples), "label": _label_text(sample_labels(samples, task))})
    return out, task


def per_sample_vectors(fsv, samples: Sequence, array: Optional[str] = None, flag: str = "--array") -> np.ndarray:
    """Rows of a pooled array for each sample (by image key or sample id, as the set is keyed)."""
    name = pooled_array(fsv, array, flag)
    keys = [s.image_key if fsv.key_kind == "image_key" else s.id for s in samples]
    return np.asarray(fsv.select(keys, [name])[name], dtype=np.float32)


@dataclass
class ConfounderReport:
    """What ``confounder_report`` found and wrote: the search, the two files, and the lines to print about the
    predictions file (empty without one)."""

    found: ConfounderSearch
    csv: str
    html: str
    prediction_lines: List[str] = field(default_factory=list)


def _predictions(path, task, dataset, samples, labels) -> Optional[Dict[str, object]]:
    """The predictions file read and checked against the dataset and task, before any search."""
    if not path:
        return None
    info = dataset.tasks.get(task) if task is not None else None
    return check_predictions(load_predictions(path, task), path, [s.id for s in samples],
                             labels if task is not None else None, task,
                             tuple(info.class_names) if info is not None else (),
                             binary=info is None or info.kind == "binary")


def _report_inputs(store, dataset, image_ref, text_ref, image_array, text_array, text_flag, warn):
    """(samples, image vectors, text vectors, text array name), joined and checked."""
    from ..store import preflight

    img, txt = store.open(image_ref), store.open(text_ref)
    samples = dataset.distinct_samples()  # a sample two splits list is one sample here
    preflight(samples, img, txt).raise_if_missing()
    image_name = pooled_array(img, image_array, "--image-array")
    text_name = pooled_array(txt, text_array, text_flag)
    _warn(warn, dataset, {"image": img, "text": txt})
    return samples, per_sample_vectors(img, samples, image_name), per_sample_vectors(txt, samples, text_name), \
        text_name


def confounder_report(store, dataset, image_ref: str, text_ref: str, out_dir, *, predictions: Optional[str] = None,
                      image_array: Optional[str] = None, text_array: Optional[str] = None,
                      text_flag: str = "--text-array", max_pairs: int = 500, thumb_px: int = 160,
                      task: Optional[str] = None, warn: Warn = None, on_hint: Warn = None,
                      **thresholds) -> ConfounderReport:
    """Find confounder pairs among the dataset's samples; write ``confounders.csv`` (every pair) and
    ``confounders.html`` (a section per kind, ``max_pairs`` each) into ``out_dir``. ``image_array`` /
    ``text_array`` pick the sets' pooled vectors (default the first of pooled/cls/mean; ``text_flag`` names the
    text option in errors); ``task`` the labels (``resolve_task``). Everything is checked before the search,
    every thumbnail read before a file is written, and both files are renamed into place at the end."""
    check_page_args(thumb_px, max_pairs, "--max-pairs")
    out = check_out_dir(out_dir, holds="confounders.csv and confounders.html")
    task = resolve_task(dataset, task)
    samples, image_vecs, text_vecs, text_name = _report_inputs(store, dataset, image_ref, text_ref, image_array,
                                                               text_array, text_flag, warn)
    labels = sample_labels(samples, task)
    has_labels = task is not None and any(v is not None for v in labels)
    preds = _predictions(predictions, task, dataset, samples, labels)
    found = search_confounders([s.id for s in samples], [s.image_key for s in samples], image_vecs, text_vecs,
                               labels if has_labels else None, text_vector=text_name, task=task, on_hint=on_hint,
                               **thresholds)
    lines = []
    if preds is not None:
        found = ConfounderSearch(overlay_predictions(found.pairs, preds), found.summary)
        lines.append(prediction_line(found.pairs, len(preds), len(samples)))
    texts = {s.id: s.text for s in samples}
    page, _ = render_html_report(found.pairs, texts=texts,
                                 labels={s.id: v for s, v in zip(samples, labels)} if has_labels else None,
                                 image_paths={s.id: s.image_path for s in samples}, predictions=preds,
                                 thumb_px=thumb_px, max_pairs=max_pairs, summary=found.summary)
    csv_path, html_path = out / "confounders.csv", out / "confounders.html"
    with AtomicOutputs() as files:
        write_csv_rows(found.pairs, files.path(csv_path), texts)
        with open(files.path(html_path), "w", encoding="utf-8") as fh:
            fh.write(page)
    return ConfounderReport(found, str(csv_path), str(html_path), lines)


SEVERAL = "several labels"  # an image whose samples carry different labels (a Hateful Memes confounder image)


def image_points(fsv, samples: Sequence, array: str, task: Optional[str]) -> Tuple[np.ndarray, List[str]]:
    """One point per image of an image set (its vector once, not once per sample drawn on top of each other):
    the images in first-seen order, each labelled by its samples' label of ``task``: the one they share,
    ``SEVERAL`` when they differ, ``"unlabelled"`` when none has one (``"all"`` without a task)."""
    by_image: Dict[str, set] = {}
    for s, label in zip(samples, sample_labels(samples, task)):
        by_image.setdefault(s.image_key, set()).update([] if label is None else [str(label)])
    keys = list(by_image)
    vectors = np.asarray(fsv.select(keys, [array])[array], dtype=np.float32)
    if task is None:
        return vectors, ["all"] * len(keys)
    return vectors, [next(iter(v)) if len(v) == 1 else SEVERAL if v else "unlabelled" for v in by_image.values()]


def embedding_map(fsv, out_png, *, dataset=None, method: str = "tsne", array: Optional[str] = None, seed: int = 0,
                  task: Optional[str] = None, warn: Warn = None) -> Tuple[int, Optional[str]]:
    """A 2-D map of a version's pooled vectors coloured by the labels of ``task`` (``resolve_task``; with
    ``dataset``: one point per sample of a text set, one per image of an image set, ``image_points``), written to
    ``out_png`` under a temporary name and renamed. Returns ``(points, task)``."""
    out = check_out_file(out_png)
    name = pooled_array(fsv, array)
    task = resolve_task(dataset, task)
    if dataset is not None:
        _warn(warn, dataset, {fsv.modality: fsv})
        samples = dataset.distinct_samples()
        if fsv.key_kind == "image_key":  # an image set: one point per image
            vectors, labels = image_points(fsv, samples, name, task)
        else:
            vectors = per_sample_vectors(fsv, samples, name)
            labels = ["unlabelled" if v is None else v for v in sample_labels(samples, task)] if task is not None \
                else ["all"] * len(samples)
    else:
        vectors = fsv.read(name).astype(np.float32)
        labels = ["all"] * len(vectors)
    with AtomicOutputs() as files:
        plot_embedding_map(vectors, labels, files.path(out), method=method, seed=seed, legend_title=task or "label",
                           title=f"{fsv.ref} ({name}, {method}" + (f", task {task})" if task else ")"))
    return len(vectors), task
