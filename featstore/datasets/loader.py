"""``load_dataset``: pick the format (or sniff it), read, validate, build a ``DatasetManifest``.

Formats live in ``DATASET_FORMATS`` (a ``featstore.registry.Registry``); each is one module with a
``read(path, opts, problems) -> FormatResult`` function. ``format="auto"`` decides by:

* a folder with ``split.json`` and ``dataset/`` -> ``mmimdb``; a folder with a Hateful Memes split file
  (``train.jsonl``, ``dev_seen.jsonl``, ...) -> ``hateful_memes``; a folder holding, directly or one
  subfolder down, a Memotion split CSV (``memotion_train.csv``, ``memotion_val.csv``, ``memotion_test.csv``,
  ``labels.csv``, ... with a Memotion header) -> ``memotion``;
* a ``.jsonl`` whose first object is an MM-IMDB row (``plot`` and ``genres``, or MMBT's ``text``, poster and
  a ``label`` list of MM-IMDB genres: ``mmimdb.detect_jsonl``) -> ``mmimdb``, else one with ``img`` ->
  ``hateful_memes``, else ``generic``;
* a ``.csv`` whose header is Memotion's (two emotion columns, or Memotion 2.0's unlabelled test header
  ``Id, Image url, ocr_text``; see ``memotion.detect_header``) -> ``memotion``, else ``generic``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import FeatstoreError
from ..registry import Registry
from . import generic, hateful_memes, memotion, mmimdb
from .manifest import DatasetManifest
from .options import LoadOptions
from .problems import Problems
from .readers import read_csv
from .validate import check_samples

DATASET_FORMATS = Registry("dataset format")
DATASET_FORMATS.register("hateful_memes", help="Hateful Memes JSONL split files or their folder")(hateful_memes.read)
DATASET_FORMATS.register("memotion", help="Memotion / Memotion 2.0 CSV or their folder (tasks A, B, C)")(
    memotion.read)
DATASET_FORMATS.register("mmimdb", help="MM-IMDB folder (split.json + dataset/) or JSONL")(mmimdb.read)
DATASET_FORMATS.register("generic", help="CSV or JSONL with id/image/text/label columns")(generic.read)


def _first_object(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line in f:
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError:
                        return {}
                    return obj if isinstance(obj, dict) else {}
    except UnicodeDecodeError:
        return {}
    return {}


def detect_format(path: Path) -> str:
    """The format name ``format="auto"`` picks for ``path`` (see the module docstring)."""
    if path.is_dir():
        if mmimdb.detect(path):
            return "mmimdb"
        if hateful_memes.detect(path):
            return "hateful_memes"
        if memotion.detect(path):
            return "memotion"
        raise FeatstoreError(f"dataset {path}: cannot tell the format of this folder (expected Hateful Memes "
                             f"split files like train.jsonl, MM-IMDB's split.json and dataset/, or Memotion CSVs "
                             f"like memotion_train.csv or labels.csv); pass --format or point at a data file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        first = _first_object(path)
        if mmimdb.detect_jsonl(first):
            return "mmimdb"
        if "img" in first:
            return "hateful_memes"
        return "generic"
    if suffix == ".csv":
        header, _ = read_csv(path, Problems(str(path)), str(path))
        return "memotion" if memotion.detect_header(header) else "generic"
    raise FeatstoreError(f"dataset {path}: unknown file type {suffix or '(no suffix)'!r}; use a .jsonl or .csv "
                         f"file or a dataset folder, or pass --format")


def load_dataset(path: Union[str, Path], format: str = "auto", *, image_root: Optional[Union[str, Path]] = None,
                 id_col: Optional[str] = None, image_col: Optional[str] = None, text_col: Optional[str] = None,
                 label_cols: Optional[Sequence[str]] = None, split: Optional[str] = None,
                 check_images: bool = True, allow_empty_text: bool = False) -> DatasetManifest:
    """Read a dataset into a validated ``DatasetManifest``.

    path: a data file (.jsonl/.csv) or a dataset folder. format: ``"auto"`` or a name in
    ``DATASET_FORMATS``. image_root: folder images resolve against (default: the data file's folder;
    MM-IMDB: ``dataset/``; Memotion: each split's image folder, e.g. ``image folder/train_images/``).
    id_col/image_col/text_col/label_cols: column names (generic and Memotion).
    split: for a folder, the only split to read; for a file, the split name given to its rows.
    check_images: require every image file to exist. allow_empty_text: accept rows with empty text.

    Every unreadable or invalid row is collected; if any, one ``FeatstoreError`` lists them with their
    1-based row numbers.
    """
    p = Path(path)
    if not p.exists():
        raise FeatstoreError(f"dataset {path}: no such file or folder; check the path")
    if image_root is not None and not Path(image_root).is_dir():
        raise FeatstoreError(f"dataset {path}: image root {image_root} is not a folder; check --image-root")
    if label_cols is not None and isinstance(label_cols, str):
        label_cols = [label_cols]
    fmt = detect_format(p) if format == "auto" else format
    if fmt not in DATASET_FORMATS:
        raise FeatstoreError(f"dataset {path}: unknown format {format!r}; choose one of: auto, "
                             f"{', '.join(DATASET_FORMATS.names())}")
    if p.is_dir() and fmt == "generic":
        raise FeatstoreError(f"dataset {path}: the {fmt} format reads a file, not a folder; point at the "
                             f".csv/.jsonl file")
    opts = LoadOptions(Path(image_root) if image_root is not None else None, id_col, image_col, text_col,
                       tuple(label_cols) if label_cols else None, split, check_images, allow_empty_text)
    problems = Problems(str(path), multi_file=p.is_dir())
    result = DATASET_FORMATS.create(fmt, p, opts, problems)
    check_samples(result.samples, problems, check_images=check_images, allow_empty_text=allow_empty_text,
                  image_root=result.image_root)
    problems.raise_if_any()
    if not result.samples:
        raise FeatstoreError(f"dataset {path}: no samples found; check the file (and --dataset-split)")
    return DatasetManifest(result.samples, result.tasks, str(path), fmt, list(result.notes))
