"""MM-IMDB (Arevalo et al., 2017): movie plots, posters and genres.

Two layouts:

* the release folder (``mmimdb/``): ``split.json`` (``{"train": [ids], "dev": [...], "test": [...]}``) and,
  per id, ``dataset/<id>.json`` (keys ``plot``: list of str or a str; ``genres``: list of str) and the poster
  ``dataset/<id>.jpeg`` (or ``image_root/<id>.jpeg``). Every split is read (in the order of split.json)
  unless ``split=`` names one. Rows are numbered by position in the split list and reported as
  ``split.json:<split> row N``.
* a JSONL file, one movie per line, in the field names of the references:

  - text: ``plot`` (list or str; MMF's annotations, featstore's own) or ``text`` (str; MMBT's
    ``format_mmimdb_dataset`` output and the HuggingFace MMBT example);
  - genres: ``genres`` (MMF) or ``label`` (MMBT), a list of str;
  - poster: the first of ``IMAGE_FIELDS`` present: ``image`` (MMBT's script), ``img`` (MMBT's and
    HuggingFace's readers), ``image_path`` / ``image_name`` / ``image_id`` (MMF's ``ImageDatabase``
    lookup order), ``poster`` (earlier featstore files). A value without a suffix (``"0000008"``) is
    tried with the common image suffixes, as MMF does. It resolves against ``image_root``,
    else, for MMF's layout (the file in ``annotations/`` beside ``images/mmimdb/dataset/``) that folder,
    else the JSONL's folder (MMBT writes ``mmimdb/dataset/<id>.jpeg`` relative to its JSONL);
  - ``id`` (optional: the poster's file stem, which is the IMDb id in the release, when absent);
  - ``split`` (optional; else ``split=``, else the file stem when it is train/dev/test).

Plot text: the longest entry of a ``plot`` list (the first of equally long ones), as the dataset's
own script does (johnarevalo/gmu-mmimdb ``make_dataset.py``: ``argmax`` of the plot lengths) and
MMBT's ``scripts/mmimdb.py``; MMF's ``MMIMDbImageDataset`` takes ``plot[0]`` instead. A str is used as is.

Task ``genres``: multilabel over ``GENRES``, the 23 genres of the paper and of every published result,
in the dataset script's class order (``make_dataset.py`` keeps the ``n_classes: 23`` most frequent
genres, most frequent first; that order is the HDF5 ``genres`` columns' order). The class list is the
same whatever split is read. A sample's genres are matched to it case-insensitively (MMF lowercases
them) and kept in class order; the release's other genres (``DROPPED_GENRES``: ``News``, ``Adult``,
``Talk-Show``, ``Reality-TV``) are dropped from the labels, and a movie left with no genre is left out of the
manifest, as ``make_dataset.py`` leaves it out of every split (both counted in the manifest's ``notes``, which
the CLI prints). Any other genre name (a misspelling such as ``Sci Fi``) is a row error naming
the movie and the genre. (MMBT's script instead drops every movie tagged ``News`` and every dev/test movie
with a genre unseen in train.) A split of ``split.json`` with no ids is an error naming it.

Sample id: the id as written; image_key: the poster's file stem (leading zeros kept).
"""
from __future__ import annotations

import difflib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import FeatstoreError
from .manifest import Sample, TaskInfo
from .options import FormatResult, LoadOptions
from .problems import Problems
from .readers import get_id, read_jsonl, resolve_image

STEM_SPLITS = ("train", "dev", "test")
GENRES: Tuple[str, ...] = (
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Documentary",
    "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music", "Animation", "Musical",
    "Western", "Sport", "Short", "Film-Noir")
DROPPED_GENRES = ("News", "Adult", "Talk-Show", "Reality-TV")  # the release's other genres (left out of GENRES)
TEXT_FIELDS = ("plot", "text")
LABEL_FIELDS = ("genres", "label")
IMAGE_FIELDS = ("image", "img", "image_path", "image_name", "image_id", "poster")
_CANONICAL = {g.lower(): g for g in GENRES}
_RANK = {g: i for i, g in enumerate(GENRES)}
_KNOWN = {g.lower(): g for g in GENRES + DROPPED_GENRES}
_DROPPED = {g.lower() for g in DROPPED_GENRES}
GENRE_HINT = (f"write each genre as one of the {len(GENRES)} MM-IMDB genres ({', '.join(GENRES)}; any case) or "
              f"one of the {len(DROPPED_GENRES)} the release also has and make_dataset.py drops "
              f"({', '.join(DROPPED_GENRES)})")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "split.json").is_file() and (path / "dataset").is_dir()


def detect_jsonl(first: Dict[str, Any]) -> bool:
    """Whether a JSONL's first object is an MM-IMDB row: ``plot`` and ``genres`` (MMF, featstore), or a
    non-empty list ``label`` of MM-IMDB genre names with ``text`` and a poster field (MMBT). Another
    multi-label JSONL stays generic, so no label of it is dropped as a genre outside the 23."""
    if "plot" in first and "genres" in first:
        return True
    label = first.get("label")
    known = set(_CANONICAL) | {g.lower() for g in DROPPED_GENRES}
    return (isinstance(label, list) and bool(label) and all(isinstance(g, str) and g.strip().lower() in known
                                                            for g in label)
            and "text" in first and any(k in first for k in IMAGE_FIELDS))


def task_info() -> Dict[str, TaskInfo]:
    return {"genres": TaskInfo("genres", "multilabel", GENRES)}


def keep_genres(genres: Sequence[str]) -> List[str]:
    """The genres of ``GENRES`` among ``genres`` (matched case-insensitively), once each, in class order."""
    kept = {_CANONICAL[g.strip().lower()] for g in genres if g.strip().lower() in _CANONICAL}
    return sorted(kept, key=_RANK.__getitem__)


def unknown_genres(genres: Sequence[str]) -> Optional[str]:
    """The error for the genres neither in ``GENRES`` nor in ``DROPPED_GENRES`` (a misspelling such as ``Sci Fi``,
    or a genre MM-IMDB has not), with the nearest known name when one is close; ``None`` when all are known."""
    unknown = list(dict.fromkeys(g for g in genres if g.strip().lower() not in _KNOWN))
    if not unknown:
        return None
    named = []
    for g in unknown:
        close = difflib.get_close_matches(g.strip().lower(), list(_KNOWN), n=1, cutoff=0.75)
        named.append(f"{g!r} (did you mean {_KNOWN[close[0]]!r}?)" if close else repr(g))
    return f"unknown genre{'s' if len(named) > 1 else ''} {', '.join(named)}"


def _pick(obj: Dict[str, Any], names: Sequence[str]) -> Tuple[str, Any]:
    """The first of ``names`` present (not null) in ``obj`` and its value; ``(names[0], None)`` if none."""
    for n in names:
        if obj.get(n) is not None:
            return n, obj[n]
    return names[0], None


def _missing(names: Sequence[str], role: str) -> str:
    if len(names) == 1:
        return f"missing field {names[0]!r}"
    return f"missing the {role} field (accepted: {', '.join(names)})"


def _text(obj: Dict[str, Any], names: Sequence[str]) -> Tuple[Optional[str], Optional[str]]:
    """(text, error): a str, or the longest string of a list (the first of equally long ones; ``""`` if empty)."""
    name, plot = _pick(obj, names)
    if plot is None:
        return None, _missing(names, "text")
    if isinstance(plot, list) and all(isinstance(p, str) for p in plot):
        return (max(plot, key=len) if plot else ""), None
    if isinstance(plot, str):
        return plot, None
    return None, f"field {name!r} must be a list of strings or a string, got {type(plot).__name__}"


def _genres(obj: Dict[str, Any], names: Sequence[str]) -> Tuple[Optional[List[str]], Optional[str]]:
    """(the genres as written, error): a list of strings."""
    name, genres = _pick(obj, names)
    if genres is None:
        return None, _missing(names, "genres")
    if not (isinstance(genres, list) and all(isinstance(g, str) for g in genres)):
        return None, f"field {name!r} must be a list of strings"
    return list(genres), None


class Drops:
    """What a read leaves out as ``make_dataset.py`` does (``DROPPED_GENRES`` occurrences, movies left with no
    genre), as the manifest's notes."""

    def __init__(self):
        self.genres: Counter = Counter()
        self.movies = 0

    def add(self, raw: Sequence[str], kept: Sequence[str]) -> None:
        self.genres.update(_KNOWN[g.strip().lower()] for g in raw if g.strip().lower() in _DROPPED)
        self.movies += not kept

    def notes(self) -> List[str]:
        out = []
        if self.genres:
            out.append("genres dropped from the labels, as gmu-mmimdb's make_dataset.py drops them: "
                       + ", ".join(f"{g} ({n})" for g, n in self.genres.most_common()))
        if self.movies:
            out.append(f"{self.movies} movie{'s' if self.movies > 1 else ''} left out: no genre among the "
                       f"{len(GENRES)} (make_dataset.py leaves such a movie out of every split)")
        return out


def _known_genres(raw: List[str], where: str, row: int, file: str, problems: Problems) -> Optional[List[str]]:
    """``keep_genres(raw)``, or ``None`` after recording ``raw``'s unknown genres (at ``where``: the movie)."""
    err = unknown_genres(raw)
    if err:
        problems.add(row, f"{where}: {err}", file, hint=GENRE_HINT)
        return None
    return keep_genres(raw)


def _poster(obj: Dict[str, Any]) -> Tuple[Optional[str], Optional[str]]:
    name, value = _pick(obj, IMAGE_FIELDS)
    if value is None:
        return None, _missing(IMAGE_FIELDS, "image")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        return None, f"field {name!r} must be an image path string"
    return value, None


def _read_splits(path: Path, opts: LoadOptions) -> Dict[str, list]:
    try:
        splits = json.loads((path / "split.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FeatstoreError(f"dataset {path}: split.json is not valid JSON ({e}); restore it from the release")
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise FeatstoreError(f"dataset {path}: split.json must map split names to lists of ids "
                             f"(e.g. {{\"train\": [\"0000008\"]}})")
    if opts.split is not None:
        if opts.split not in splits:
            raise FeatstoreError(f"dataset {path}: split.json has no split {opts.split!r}; choose --dataset-split "
                                 f"from: {', '.join(splits)}")
        splits = {opts.split: splits[opts.split]}
    empty = [name for name, ids in splits.items() if not ids]
    if empty:
        raise FeatstoreError(f"dataset {path}: split.json's {empty[0]!r} list has no rows (no movie ids); "
                             f"re-download split.json from the release, or leave the split out (read another "
                             f"with --dataset-split, or remove {empty[0]!r} from split.json)")
    return splits


def _read_movie(path: Path, sid: str) -> Tuple[Optional[str], Optional[List[str]], List[str]]:
    """(plot, genres as written, errors) of ``dataset/<sid>.json``."""
    meta = path / "dataset" / f"{sid}.json"
    try:
        obj = json.loads(meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None, [f"dataset/{sid}.json not found"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, None, [f"dataset/{sid}.json is not valid JSON ({e})"]
    if not isinstance(obj, dict):
        return None, None, [f"dataset/{sid}.json must hold a JSON object"]
    plot, plot_err = _text(obj, TEXT_FIELDS[:1])
    genres, genre_err = _genres(obj, LABEL_FIELDS[:1])
    return plot, genres, [f"dataset/{sid}.json: {e}" for e in (plot_err, genre_err) if e]


def _read_folder(path: Path, opts: LoadOptions, problems: Problems) -> FormatResult:
    root = opts.image_root or path / "dataset"
    samples: List[Sample] = []
    drops = Drops()
    for split, ids in _read_splits(path, opts).items():
        file = f"split.json:{split}"
        for row, raw in enumerate(ids, start=1):
            sid, err = get_id({"id": raw}, "id")
            if err:
                problems.add(row, f"id {raw!r}: {err}", file)
                continue
            plot, written, errors = _read_movie(path, sid)
            for e in errors:
                problems.add(row, e, file)
            genres = None if errors else _known_genres(written, f"dataset/{sid}.json", row, file, problems)
            if genres is not None:
                drops.add(written, genres)
            if not genres:  # no genre of GENRES left: out of every split, as in make_dataset.py
                continue
            image_path, key = resolve_image(root, f"{sid}.jpeg")
            samples.append(Sample(sid, key, image_path, plot, {"genres": genres}, split, row, file))
    return FormatResult(samples, task_info(), str(root), drops.notes())


def _jsonl_root(path: Path, opts: LoadOptions) -> Path:
    """Where posters resolve: ``image_root``, MMF's ``images/mmimdb/dataset`` beside ``annotations/``, or the
    JSONL's folder."""
    if opts.image_root is not None:
        return opts.image_root
    mmf_images = path.parent.parent / "images" / "mmimdb" / "dataset"
    if path.parent.name == "annotations" and mmf_images.is_dir():
        return mmf_images
    return path.parent


def _read_jsonl(path: Path, opts: LoadOptions, problems: Problems) -> FormatResult:
    name = str(path)
    root = _jsonl_root(path, opts)
    default_split = opts.split if opts.split is not None else (path.stem if path.stem in STEM_SPLITS else None)
    samples: List[Sample] = []
    drops = Drops()
    for row, obj in read_jsonl(path, problems, name):
        sid, id_err = get_id(obj, "id") if "id" in obj else (None, None)
        plot, plot_err = _text(obj, TEXT_FIELDS)
        written, genre_err = _genres(obj, LABEL_FIELDS)
        poster, poster_err = _poster(obj)
        split = obj.get("split", default_split)
        split_err = (f"field 'split' must be a string, got {type(split).__name__}"
                     if split is not None and not isinstance(split, str) else None)
        errors = [e for e in (id_err, plot_err, genre_err, poster_err, split_err) if e]
        for e in errors:
            problems.add(row, e, name)
        if errors:
            continue
        image_path, key = resolve_image(root, poster)
        if opts.split is not None and split != opts.split:  # another split's rows are not read, nor judged
            continue
        genres = _known_genres(written, f"movie {sid or key}", row, name, problems)
        if genres is None:
            continue
        drops.add(written, genres)
        if genres:
            samples.append(Sample(sid or key, key, image_path, plot, {"genres": genres}, split, row, name))
    return FormatResult(samples, task_info(), str(root), drops.notes())


def read(path: Path, opts: LoadOptions, problems: Problems) -> FormatResult:
    if path.is_dir():
        if not detect(path):
            raise FeatstoreError(f"dataset {path}: not an MM-IMDB folder (expected split.json and dataset/); "
                                 f"point --dataset at the folder holding them")
        return _read_folder(path, opts, problems)
    return _read_jsonl(path, opts, problems)
