"""MM-IMDB (Arevalo et al., 2017): movie plots, posters and genres.

Two layouts:

* the release folder: ``split.json`` (``{"train": [ids], "dev": [...], "test": [...]}``) and, per id,
  ``dataset/<id>.json`` (keys ``plot``: list of str, the first one is the text, or a str; ``genres``:
  list of str) and the poster ``dataset/<id>.jpeg`` (or ``image_root/<id>.jpeg``). Every split is read
  (in the order of split.json) unless ``split=`` names one. Rows are numbered by position in the split
  list and reported as ``split.json:<split> row N``.
* a JSONL file with fields ``id``, ``plot`` (list or str), ``genres`` (list), ``poster`` (image path
  relative to the JSONL's folder or ``image_root``) and optional ``split`` (else ``split=``, else the
  file stem when it is train/dev/test).

Sample id: the id as written; image_key: the poster's file stem (leading zeros kept).
Task ``genres``: multilabel over the sorted set of genres seen among the loaded samples.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import FeatstoreError
from .manifest import Sample, TaskInfo
from .options import FormatResult, LoadOptions
from .problems import Problems
from .readers import get_id, read_jsonl, resolve_image

STEM_SPLITS = ("train", "dev", "test")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "split.json").is_file() and (path / "dataset").is_dir()


def _plot_and_genres(obj: Dict[str, Any]) -> Tuple[Optional[str], Optional[List[str]], List[str]]:
    errors = []
    plot = obj.get("plot")
    if isinstance(plot, list):
        plot = plot[0] if plot else ""
    if not isinstance(plot, str):
        errors.append("missing field 'plot'" if plot is None else
                      f"field 'plot' must be a list of strings or a string, got {type(plot).__name__}")
    genres = obj.get("genres")
    if not (isinstance(genres, list) and all(isinstance(g, str) for g in genres)):
        errors.append("missing field 'genres'" if genres is None else "field 'genres' must be a list of strings")
    return plot, genres, errors


def _finish(samples: List[Sample]) -> Dict[str, TaskInfo]:
    vocab = sorted({g for s in samples for g in s.labels.get("genres", ())})
    return {"genres": TaskInfo("genres", "multilabel", tuple(vocab))}


def _read_folder(path: Path, opts: LoadOptions, problems: Problems) -> FormatResult:
    root = opts.image_root or path / "dataset"
    try:
        splits = json.loads((path / "split.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FeatstoreError(f"dataset {path}: split.json is not valid JSON ({e}); restore it from the release")
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise FeatstoreError(f"dataset {path}: split.json must map split names to lists of ids "
                             f"(e.g. {{\"train\": [\"0000008\"]}})")
    if opts.split is not None:
        if opts.split not in splits:
            raise FeatstoreError(f"dataset {path}: split.json has no split {opts.split!r}; choose --split "
                                 f"from: {', '.join(splits)}")
        splits = {opts.split: splits[opts.split]}
    samples: List[Sample] = []
    for split, ids in splits.items():
        file = f"split.json:{split}"
        for row, raw in enumerate(ids, start=1):
            sid, err = get_id({"id": raw}, "id")
            if err:
                problems.add(row, f"id {raw!r}: {err}", file)
                continue
            meta = path / "dataset" / f"{sid}.json"
            try:
                obj = json.loads(meta.read_text(encoding="utf-8"))
            except FileNotFoundError:
                problems.add(row, f"dataset/{sid}.json not found", file)
                continue
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                problems.add(row, f"dataset/{sid}.json is not valid JSON ({e})", file)
                continue
            if not isinstance(obj, dict):
                problems.add(row, f"dataset/{sid}.json must hold a JSON object", file)
                continue
            plot, genres, errors = _plot_and_genres(obj)
            if errors:
                for e in errors:
                    problems.add(row, f"dataset/{sid}.json: {e}", file)
                continue
            image_path, key = resolve_image(root, f"{sid}.jpeg")
            samples.append(Sample(sid, key, image_path, plot, {"genres": sorted(set(genres))}, split, row, file))
    return FormatResult(samples, _finish(samples), str(root))


def _read_jsonl(path: Path, opts: LoadOptions, problems: Problems) -> FormatResult:
    name = str(path)
    root = opts.image_root or path.parent
    default_split = opts.split if opts.split is not None else (path.stem if path.stem in STEM_SPLITS else None)
    samples: List[Sample] = []
    for row, obj in read_jsonl(path, problems, name):
        sid, err = get_id(obj, "id")
        plot, genres, errors = _plot_and_genres(obj)
        poster = obj.get("poster")
        if not isinstance(poster, str) or not poster.strip():
            errors.append("missing field 'poster'" if poster is None else "field 'poster' must be a path string")
        split = obj.get("split", default_split)
        if split is not None and not isinstance(split, str):
            errors.append(f"field 'split' must be a string, got {type(split).__name__}")
        for e in ([err] if err else []) + errors:
            problems.add(row, e, name)
        if err or errors:
            continue
        if opts.split is not None and split != opts.split:
            continue
        image_path, key = resolve_image(root, poster)
        samples.append(Sample(sid, key, image_path, plot, {"genres": sorted(set(genres))}, split, row, name))
    return FormatResult(samples, _finish(samples), str(root))


def read(path: Path, opts: LoadOptions, problems: Problems) -> FormatResult:
    if path.is_dir():
        if not detect(path):
            raise FeatstoreError(f"dataset {path}: not an MM-IMDB folder (expected split.json and dataset/); "
                                 f"point --dataset at the folder holding them")
        return _read_folder(path, opts, problems)
    return _read_jsonl(path, opts, problems)
