"""The in-memory manifest of a dataset: ``Sample`` rows, ``TaskInfo`` targets and ``DatasetManifest``.

Label values inside ``Sample.labels`` follow one convention for every format, so they are readable,
independent of the vocabulary order and stable under the fingerprint:

* ``binary`` task: ``int`` 0 or 1 (``class_names[1]`` is the positive class), or the class name;
* ``multiclass`` task: ``str``, one of ``TaskInfo.class_names``;
* ``multilabel`` task: ``list[str]``, a subset of ``class_names`` in class order;
* a group of per-name tasks (Memotion's intensities): ``labels["C"] = {"humour": "funny", ...}`` holds
  the tasks ``C_humour``, ... (``<key>_<name>``), each binary or multiclass as above.

These are the shapes ``heads.tasks`` reads. A sample without a label for a task (e.g. a test split)
simply lacks that key. ``targets(task)`` turns the labels into arrays for training.

Fingerprint (``DatasetManifest.fingerprint``, sha256 hex), version ``v1``: the hash is fed with

1. the line ``featstore.datasets fingerprint v1\\n``;
2. for every sample in manifest order, the compact JSON (keys sorted, UTF-8, no ASCII escaping) of
   ``[id, image_key, text, labels, split]`` followed by ``\\n``;
3. the line ``images\\n`` and then, for every distinct image file in first-seen order, the JSON of
   ``[image_key, sha256-hex-of-the-file-bytes]`` plus ``\\n`` (``null`` instead of the digest for a
   file that does not exist, which only happens with ``check_images=False``).

Files are streamed in 1 MiB blocks and each file is hashed once, however many samples use it. Absolute
paths are not hashed, so moving the dataset folder keeps the fingerprint. The value is computed on
first access and cached.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import FeatstoreError

TASK_KINDS = ("binary", "multiclass", "multilabel")


@dataclass(frozen=True)
class Sample:
    """One dataset row.

    id: sample id as written in the source (``str(42953)`` for an integer id).
    image_key: stem of the image file name with leading zeros kept (``img/02345.png`` -> ``"02345"``).
    image_path: resolved path of the image file (``None`` when the format has no image).
    text: the sample's text (may be ``""`` only when loaded with ``allow_empty_text=True``).
    labels: task name -> label value (see the module docstring for the value convention).
    split: split name (``"train"``, ``"dev_seen"``, ...) or ``None``.
    row: 1-based row number in ``file`` (a JSONL line; a CSV line, the header being line 1; an
         entry of the split list for the MM-IMDB folder).
    file: the file the row came from, relative to the dataset path given to ``load_dataset``.
    """

    id: str
    image_key: str
    image_path: Optional[str]
    text: str
    labels: Dict[str, Any]
    split: Optional[str]
    row: int
    file: Optional[str] = None


@dataclass(frozen=True)
class TaskInfo:
    """A prediction target found in the dataset; ``to_dict()`` matches ``heads.spec.Task``'s fields."""

    name: str
    kind: str
    class_names: Tuple[str, ...]

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task kind {self.kind!r} not one of {TASK_KINDS}")
        if self.kind == "binary" and len(self.class_names) != 2:
            raise ValueError(f"binary task {self.name!r} needs exactly 2 class names")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "num_classes": self.num_classes,
                "class_names": list(self.class_names)}


def label_value(labels: Dict[str, Any], task: str) -> Any:
    """The label of ``task`` in a sample's labels (``None`` if absent); ``<key>_<name>`` tasks are read
    from ``labels[key][name]`` when ``labels[key]`` is a dict."""
    if task in labels:
        return labels[task]
    key, _, sub = task.rpartition("_")
    group = labels.get(key) if key else None
    return group.get(sub) if isinstance(group, dict) else None


def file_sha256(path: str, block: int = 1 << 20) -> Optional[str]:
    """sha256 hex digest of a file's bytes, streamed; ``None`` if the file does not exist."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(block)
                if not chunk:
                    break
                h.update(chunk)
    except OSError:  # missing, a directory, a symlink loop, unreadable: the image load names the reason
        return None
    return h.hexdigest()


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"


def compute_fingerprint(samples: List[Sample]) -> str:
    """The manifest fingerprint described in the module docstring."""
    h = hashlib.sha256(b"featstore.datasets fingerprint v1\n")
    for s in samples:
        h.update(_line([s.id, s.image_key, s.text, s.labels, s.split]))
    h.update(b"images\n")
    seen = set()
    for s in samples:
        if s.image_path is None or s.image_path in seen:
            continue
        seen.add(s.image_path)
        h.update(_line([s.image_key, file_sha256(s.image_path)]))
    return h.hexdigest()


@dataclass
class DatasetManifest:
    """A validated, ordered list of samples plus the tasks their labels define.

    source: the path given to ``load_dataset``; format: the format name that read it; notes: what the reader
    left out on purpose, one line each (MM-IMDB's dropped genres and genreless movies), for the CLI to print.
    """

    samples: List[Sample]
    tasks: Dict[str, TaskInfo] = field(default_factory=dict)
    source: str = ""
    format: str = ""
    notes: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    @property
    def ids(self) -> List[str]:
        """Distinct sample ids in first-seen order.

        An id repeats in ``samples`` only when the same sample (same image, text and labels) is listed
        in several splits, as Hateful Memes' dev_seen/dev_unseen do; it is listed once here.
        """
        return list(dict.fromkeys(s.id for s in self.samples))

    def distinct_samples(self) -> List[Sample]:
        """One sample per id, in first-seen order: what a text set or a search keyed by sample id holds.

        Hateful Memes lists 400 of dev_unseen's memes in dev_seen too (the same id, image, text and label;
        loading checks that repeats agree); such a sample is listed once here, with the labels of all its
        rows (an unlabelled test row may repeat a labelled one). ``samples`` keeps every row, per split.
        """
        first: Dict[str, Sample] = {}
        for s in self.samples:
            prev = first.get(s.id)
            if prev is None:
                first[s.id] = s
            elif set(s.labels) - set(prev.labels):
                first[s.id] = replace(prev, labels={**s.labels, **prev.labels})
        return list(first.values())

    def image_keys(self) -> List[str]:
        """Distinct image keys in first-seen order."""
        return list(dict.fromkeys(s.image_key for s in self.samples))

    def image_paths(self) -> Dict[str, Optional[str]]:
        """image key -> image file path (one file per key; validated when loading)."""
        return {s.image_key: s.image_path for s in self.samples}

    @property
    def splits(self) -> List[str]:
        """Split names in first-seen order (samples without a split are not listed)."""
        return [s for s in dict.fromkeys(s.split for s in self.samples) if s is not None]

    def split(self, name: str) -> "DatasetManifest":
        """A manifest holding only the samples of split ``name`` (same tasks)."""
        chosen = [s for s in self.samples if s.split == name]
        if not chosen:
            raise FeatstoreError(
                f"dataset {self.source}: no split {name!r}; choose one of: {', '.join(self.splits) or '(none)'}"
            )
        return replace(self, samples=chosen)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex over sample fields and image bytes (see the module docstring)."""
        return compute_fingerprint(self.samples)

    def targets(self, task: str) -> Tuple[np.ndarray, np.ndarray]:
        """Training targets of ``task`` for every sample, in manifest order.

        Returns ``(values, has_label)``: ``has_label`` is bool ``[N]``; ``values`` is int64 ``[N]``
        (class index; -1 where unlabelled) for binary and multiclass tasks, float32 ``[N, C]``
        multi-hot (all zeros where unlabelled) for multilabel tasks.
        """
        if task not in self.tasks:
            raise FeatstoreError(
                f"dataset {self.source}: no task {task!r}; choose one of: {', '.join(self.tasks) or '(none)'}"
            )
        info = self.tasks[task]
        index = {c: i for i, c in enumerate(info.class_names)}
        n = len(self.samples)
        values = [label_value(s.labels, task) for s in self.samples]
        has = np.array([v is not None for v in values], dtype=bool)
        if info.kind == "multilabel":
            out = np.zeros((n, info.num_classes), dtype=np.float32)
            for i, v in enumerate(values):
                for c in v or ():
                    out[i, index[c]] = 1.0
            return out, has
        vals = np.full(n, -1, dtype=np.int64)
        for i, v in enumerate(values):
            if v is not None:
                vals[i] = index[v] if isinstance(v, str) else int(v)
        return vals, has

    def to_jsonl(self, path: str) -> None:
        """Write one JSON object per sample (all ``Sample`` fields) to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            for s in self.samples:
                f.write(json.dumps({"id": s.id, "image_key": s.image_key, "image_path": s.image_path,
                                    "text": s.text, "labels": s.labels, "split": s.split, "row": s.row,
                                    "file": s.file}, ensure_ascii=False) + "\n")
