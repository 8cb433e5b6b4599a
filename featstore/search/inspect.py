"""Store-level inspection jobs behind `featstore neighbors`, `featstore confounders` and `featstore map`:
they read pooled vectors from feature set versions, join them to a dataset by key and call the search
library. The FAISS index of a version is built once and cached beside it in the store (``aux/``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import FeatstoreError
from .confounders import ConfounderSearch, load_predictions, overlay_predictions, search_confounders, to_csv
from .embedmap import plot_embedding_map
from .index import cached_index
from .neighbors import neighbors
from .report import write_html_report

POOLED_NAMES = ("pooled", "cls", "mean")


def pooled_array(fsv, array: Optional[str] = None, flag: str = "--array") -> str:
    """The name of the version's pooled vector array (``array`` if given; ``flag`` names the option in errors)."""
    if array:
        if array not in fsv.array_names:
            raise FeatstoreError(f"{fsv.ref} has no array {array!r} (it has {', '.join(fsv.array_names)}); pass {flag} "
                                 f"with one of {', '.join(_pooled(fsv)) or '(none)'}")
        spec = fsv.spec(array)
        if spec.per_item or len(spec.shape) != 1:
            raise FeatstoreError(f"array {array!r} of {fsv.ref} is not a pooled vector ([N, D]) but {list(spec.shape)} "
                                 f"per row; pass {flag} with one of {', '.join(_pooled(fsv)) or '(none)'}")
        return array
    names = _pooled(fsv)
    if not names:
        raise FeatstoreError(f"{fsv.ref} has no pooled vectors ({', '.join(fsv.array_names)}); extract with an "
                             f"extractor that stores pooled/cls/mean, or pass --array NAME of an [N, D] array")
    return names[0]


def _pooled(fsv) -> List[str]:
    return [n for n in POOLED_NAMES if n in fsv.array_names and not fsv.spec(n).per_item and len(fsv.spec(n).shape) == 1]


def version_index(fsv, array: str, vectors: np.ndarray):
    """The cosine index of one array of a version, cached in the store beside it."""
    return cached_index(vectors, fsv.read_aux, fsv.write_aux, key=f"{array}")


def _labels_of(sample) -> Optional[object]:
    labels = getattr(sample, "labels", None) or {}
    return labels.get("label", next(iter(labels.values()), None)) if labels else None


def nearest(fsv, query: str, k: int = 10, *, array: Optional[str] = None, dataset=None) -> List[dict]:
    """The ``k`` nearest rows of ``query`` in ``fsv`` by cosine, with texts and labels when ``dataset`` is given.

    ``query`` is a key of the version; for an image set a sample id of ``dataset`` also works (its image).
    """
    name = pooled_array(fsv, array)
    keys = [str(k_) for k_ in fsv.keys]
    if not keys:
        raise FeatstoreError(f"{fsv.ref} is empty; nothing to search")
    by_key: Dict[str, List] = {}
    if dataset is not None:
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
        samples = by_key.get(r.neighbor, [])
        out.append({"rank": r.rank, "key": r.neighbor, "cosine": float(r.similarity),
                    "text": " | ".join(s.text for s in samples[:3]) if samples else "",
                    "label": ",".join(str(_labels_of(s)) for s in samples[:3]) if samples else ""})
    return out


def per_sample_vectors(fsv, samples: Sequence, array: Optional[str] = None, flag: str = "--array") -> np.ndarray:
    """Rows of a pooled array for each sample (by image key or sample id, as the set is keyed)."""
    name = pooled_array(fsv, array, flag)
    keys = [s.image_key if fsv.key_kind == "image_key" else s.id for s in samples]
    return np.asarray(fsv.select(keys, [name])[name], dtype=np.float32)


def confounder_report(store, dataset, image_ref: str, text_ref: str, out_dir, *, predictions: Optional[str] = None,
                      image_array: Optional[str] = None, text_array: Optional[str] = None, max_pairs: int = 500,
                      **thresholds) -> Tuple[ConfounderSearch, Dict[str, str]]:
    """Find confounder pairs among the dataset's samples; write ``confounders.csv`` (every pair) and
    ``confounders.html`` (a section per kind, ``max_pairs`` each). ``text_array`` picks the text set's pooled
    vector (``cls`` or ``mean``; default the first of pooled/cls/mean). Returns the search (pairs + summary)
    and the two paths."""
    from ..store import preflight

    img, txt = store.open(image_ref), store.open(text_ref)
    samples = dataset.distinct_samples()  # a sample two splits list is one sample here
    preflight(samples, img, txt).raise_if_missing()
    image_vecs = per_sample_vectors(img, samples, image_array)
    text_name = pooled_array(txt, text_array, "--text-pool")
    text_vecs = per_sample_vectors(txt, samples, text_name)
    labels = [_labels_of(s) for s in samples]
    has_labels = any(l is not None for l in labels)
    found = search_confounders([s.id for s in samples], [s.image_key for s in samples], image_vecs, text_vecs,
                               labels if has_labels else None, text_vector=text_name, **thresholds)
    preds = load_predictions(predictions) if predictions else None
    if preds is not None:
        found = ConfounderSearch(overlay_predictions(found.pairs, preds), found.summary)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {s.id: s.text for s in samples}
    to_csv(found.pairs, out / "confounders.csv", texts=texts, predictions=preds)
    paths = {s.id: s.image_path for s in samples}
    write_html_report(found.pairs, out / "confounders.html", texts=texts,
                      labels={s.id: l for s, l in zip(samples, labels)} if has_labels else None, image_paths=paths,
                      predictions=preds, max_pairs=max_pairs, summary=found.summary)
    return found, {"csv": str(out / "confounders.csv"), "html": str(out / "confounders.html")}


def embedding_map(fsv, out_png, *, dataset=None, method: str = "tsne", array: Optional[str] = None, seed: int = 0):
    """A 2-D map of a version's pooled vectors coloured by label (per sample when ``dataset`` is given)."""
    name = pooled_array(fsv, array)
    if dataset is not None:
        samples = dataset.distinct_samples()
        vectors = per_sample_vectors(fsv, samples, name)
        labels = [_labels_of(s) for s in samples]
    else:
        vectors = fsv.read(name).astype(np.float32)
        labels = ["all"] * len(vectors)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    plot_embedding_map(vectors, ["none" if l is None else l for l in labels], out_png, method=method, seed=seed,
                       title=f"{fsv.ref} ({name}, {method})")
    return len(vectors)
