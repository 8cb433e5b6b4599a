"""Hateful Memes (Facebook AI, 2020) JSONL files.

Each line: ``{"id": 42953, "img": "img/42953.png", "label": 0, "text": "..."}``; the test splits have
no ``label`` (their samples get ``labels = {}``). ``path`` is one ``<split>.jsonl`` (its stem is the
split unless ``split=`` names one) or the dataset folder, from which every present split file is read
in the order of ``SPLITS`` (or only ``split=``).

* sample id: ``str(id)`` as written (the integer drops the image name's leading zeros: ``img/02345.png``
  has id ``2345``); image_key: the image file stem with its zeros (``"02345"``).
* images resolve against the JSONL's folder (or ``image_root``).
* task ``label``: binary, ``class_names = ("not_hateful", "hateful")``, label value 0 or 1 (the name
  ``heads`` uses for the challenge's ``id,proba,label`` prediction files).
"""
from __future__ import annotations

from pathlib import Path
from typing import List

from ..errors import FeatstoreError
from .manifest import Sample, TaskInfo
from .options import FormatResult, LoadOptions
from .problems import Problems
from .readers import get_id, get_str, read_jsonl, resolve_image

SPLITS = ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen", "dev", "test")
TASK = TaskInfo("label", "binary", ("not_hateful", "hateful"))


def detect(path: Path) -> bool:
    if path.is_dir():
        return any((path / f"{s}.jsonl").is_file() for s in SPLITS)
    return False  # single files are recognised by their fields (see loader.sniff_jsonl)


def split_files(path: Path, split) -> List[Path]:
    if not path.is_dir():
        return [path]
    if split is not None:
        f = path / f"{split}.jsonl"
        if not f.is_file():
            present = [s for s in SPLITS if (path / f"{s}.jsonl").is_file()]
            raise FeatstoreError(f"dataset {path}: no split file {split}.jsonl; choose --dataset-split from: "
                                 f"{', '.join(present) or '(none)'}")
        return [f]
    return [path / f"{s}.jsonl" for s in SPLITS if (path / f"{s}.jsonl").is_file()]


def read(path: Path, opts: LoadOptions, problems: Problems) -> FormatResult:
    samples: List[Sample] = []
    files = split_files(path, opts.split)
    base = path if path.is_dir() else path.parent
    root = opts.image_root or base
    for f in files:
        name = f.name if path.is_dir() else str(path)
        split = f.stem if path.is_dir() or opts.split is None else opts.split
        for row, obj in read_jsonl(f, problems, name):
            errors = []
            sid, err = get_id(obj, "id")
            errors.append(err)
            img, err = get_str(obj, "img")
            errors.append(err)
            text, err = get_str(obj, "text")
            errors.append(err)
            labels = {}
            if obj.get("label") is not None:
                lab = obj["label"]
                if isinstance(lab, bool) or lab not in (0, 1):
                    errors.append(f"field 'label' must be 0 or 1, got {lab!r}")
                else:
                    labels["label"] = int(lab)
            errors = [e for e in errors if e]
            if errors:
                for e in errors:
                    problems.add(row, e, name)
                continue
            image_path, key = resolve_image(root, img)
            samples.append(Sample(sid, key, image_path, text, labels, split, row, name))
    return FormatResult(samples, {"label": TASK}, str(root))
