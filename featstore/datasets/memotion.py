"""Memotion (SemEval-2020 Task 8) and Memotion 2.0 (DE-FACTIFY @ AAAI 2022) CSV files or their folder.

Layouts as shipped:

* Memotion 1 (the 7k release): ``labels.csv`` (``image_name, text_ocr, text_corrected, humour, sarcasm,
  offensive, motivational, overall_sentiment``, first column an unnamed index) next to ``images/``;
* Memotion 2.0: ``Memotion2/memotion_train.csv`` and ``Memotion2/memotion_val.csv`` (``Id, Image url,
  ocr_text, humour, sarcastic, offensive, motivational, overall_sentiment, classification_based_on``), the
  unlabelled ``memotion_test.csv`` (``Id, Image url, ocr_text``; at the top or in ``Memotion2_test/``), and
  the images ``<Id>.jpg`` in ``image folder/train_images/``, ``image folder/val_images/`` and a test folder
  (``Test_Images/``, ``Test images/`` or ``test_images/``). ``Image url`` is a web address and is not read.

``path`` is one CSV or the dataset folder. A folder is read split by split (train, val, test): every CSV in
it or in a subfolder whose header is Memotion's and whose name names a split (``split=`` reads one split;
two files of one split are an error). The split comes from the file name: a name with the word ``train``
(or ``labels.csv``, Memotion 1's training release) is ``train``; ``val``/``valid``/``validation``/``dev``
is ``val``; ``test`` is ``test``; any other name keeps its stem. For one file ``split=`` names its split.

Columns are matched case-insensitively, spaces/hyphens read as underscores:

* id: ``id_col`` or ``Id``/``id`` (optional; the image name is the id when absent);
* image: ``image_col`` or ``image_name``/``image``/``img``/``image_path``; without one the ``Id`` value
  is the image name (a name without suffix is tried with .jpg/.png/...). image_key: the file stem, leading
  zeros kept. Images resolve against ``image_root`` when given, else against the split's image folder (a
  folder named like ``<split>_images``, directly or inside ``image folder/``, next to the CSV or in the
  dataset folder / the CSV's parent folder; ``images/`` next to the CSV), falling back to the CSV's folder
  for a row whose image is not there. When two splits number their memes alike (the same image name in two
  split folders), every id and image key is prefixed with its split (``val-12``, ``split_qualified``). The
  decision is the folder's whichever part of it is read: one split (``split=``) or one split CSV whose folder,
  or the folder above (``Memotion2/memotion_train.csv``), holds the other split files counts their image names
  too (the image column only, no image opened), so its ids and keys are the folder load's;
* text: ``text_col`` or ``ocr_text``/``text_corrected``/``text_ocr``/``text``;
* labels: ``humour``, ``sarcastic`` (or ``sarcasm``), ``offensive`` (``offense``), ``motivational``
  (``motivation``), ``overall_sentiment`` (``sentiment``). A file with none of them is a test file
  (``labels = {}``); a file with only some of them is an error, which lists the names accepted for each missing
  label (``--label-cols`` is not read: rename the column back, or read the file with ``--format generic``).

A split file with a header and no rows is an error naming it (a later "no train split" would not).

A CSV is auto-detected (``loader.detect_format``) by two emotion columns, or, for an unlabelled file, by an
``Image url`` (or ``classification_based_on``) column together with an OCR text column and an id / image
name column.

Label values are lower-cased with spaces/hyphens as underscores before matching the levels. Humour,
offense and motivation levels are the same in both editions; sarcasm differs:

* Memotion 1: ``not_sarcastic, general, twisted_meaning, very_twisted``;
* Memotion 2.0: ``not_sarcastic, little_sarcastic, very_sarcastic, extremely_sarcastic``.

Each file uses one vocabulary, told by its sarcasm values (the majority of the rows that name an
edition-specific level; a file naming none uses Memotion 2.0's when its header has ``Image url`` or
``classification_based_on``, else Memotion 1's); a row with the other edition's level is a row error.
The files of one folder must agree. ``FormatResult.tasks`` gives that vocabulary's levels.

Task mapping (names as produced in ``Sample.labels``):

* ``A`` (multiclass: negative, neutral, positive): overall_sentiment very_negative/negative -> negative,
  neutral -> neutral, positive/very_positive -> positive.
* ``B`` (multilabel: humour, sarcasm, offense, motivation): an emotion is present when its level is not
  the lowest one (humour != not_funny, sarcasm != not_sarcastic, offense != not_offensive,
  motivation == motivational).
* ``C``: the level of every emotion, ``labels["C"] = {"humour": "funny", "sarcasm": "little_sarcastic",
  "offense": "slight", "motivation": "not_motivational"}``, i.e. the tasks ``C_humour`` (multiclass:
  not_funny, funny, very_funny, hilarious), ``C_sarcasm`` (the file's four sarcasm levels above, lowest
  first: class index = intensity), ``C_offense`` (not_offensive, slight, very_offensive, hateful_offensive)
  and ``C_motivation`` (binary: not_motivational, motivational).
"""
from __future__ import annotations

import csv
import re
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import FeatstoreError
from .manifest import Sample, TaskInfo
from .options import FormatResult, LoadOptions
from .problems import Problems
from .readers import find_column, normalise_column, read_csv, resolve_image

MEMOTION1, MEMOTION2 = "Memotion 1", "Memotion 2.0"
SARCASM = {
    MEMOTION1: ("not_sarcastic", "general", "twisted_meaning", "very_twisted"),
    MEMOTION2: ("not_sarcastic", "little_sarcastic", "very_sarcastic", "extremely_sarcastic"),
}
# emotion -> column candidates (label order of task B and of labels["C"])
EMOTION_COLUMNS = {
    "humour": ("humour", "humor"),
    "sarcasm": ("sarcastic", "sarcasm"),
    "offense": ("offensive", "offense"),
    "motivation": ("motivational", "motivation"),
}
SHARED_LEVELS = {
    "humour": ("not_funny", "funny", "very_funny", "hilarious"),
    "offense": ("not_offensive", "slight", "very_offensive", "hateful_offensive"),
    "motivation": ("not_motivational", "motivational"),
}
SENTIMENT_COLUMNS = ("overall_sentiment", "sentiment")
SENTIMENT = {"very_negative": "negative", "negative": "negative", "neutral": "neutral",
             "positive": "positive", "very_positive": "positive"}
ID_COLUMNS = ("id",)
IMAGE_COLUMNS = ("image_name", "image", "img", "image_path")
TEXT_COLUMNS = ("ocr_text", "text_corrected", "text_ocr", "text")
MEMOTION2_MARKERS = ("image_url", "classification_based_on")  # header columns only Memotion 2.0 ships
SPLITS = ("train", "val", "test")
SPLIT_WORDS = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"),
               "test": ("test", "testing")}
IMAGE_FOLDERS = {"train": ("train_images", "training_images"),
                 "val": ("val_images", "valid_images", "validation_images", "dev_images"),
                 "test": ("test_images", "testing_images")}
IMAGE_PARENTS = ("image_folder", "images")  # Memotion 2.0's "image folder/" holding the per-split folders
LABEL_NAMES = ("humour", "sarcastic", "offensive", "motivational", "overall_sentiment")  # as messages name them
NAME_HINT = "name the columns with --id-col/--image-col/--text-col"
LABEL_HINT = ("rename the column back in the CSV (Memotion reads each label only under the names listed; "
              "--label-cols does not apply), or read it as a generic CSV (--format generic --label-cols COLS "
              "--text-col COL --image-col COL: one task per column, not Memotion's A, B and C)")


def levels_of(version: str) -> Dict[str, Tuple[str, ...]]:
    """emotion -> its levels, lowest first, in ``version``'s vocabulary (task B's order)."""
    return {e: SARCASM[version] if e == "sarcasm" else SHARED_LEVELS[e] for e in EMOTION_COLUMNS}


def tasks_for(version: str) -> Dict[str, TaskInfo]:
    """The tasks A, B and C_<emotion> with ``version``'s levels."""
    return {
        "A": TaskInfo("A", "multiclass", ("negative", "neutral", "positive")),
        "B": TaskInfo("B", "multilabel", tuple(EMOTION_COLUMNS)),
        **{f"C_{e}": TaskInfo(f"C_{e}", "binary" if len(lv) == 2 else "multiclass", lv)
           for e, lv in levels_of(version).items()},
    }


TASKS = tasks_for(MEMOTION1)
TASKS_MEMOTION2 = tasks_for(MEMOTION2)
# a sarcasm level only one edition has -> that edition
EDITION_OF_LEVEL = {lv: v for v, levels in SARCASM.items() for lv in levels if lv != "not_sarcastic"}


def detect_header(header: Sequence[str]) -> bool:
    """A Memotion CSV header: two emotion columns, or (an unlabelled file) ``Image url`` or
    ``classification_based_on`` with an OCR text column and an id / image name column."""
    cols = {normalise_column(h) for h in header}
    if sum(any(c in cols for c in cands) for cands in EMOTION_COLUMNS.values()) >= 2:
        return True
    return (any(m in cols for m in MEMOTION2_MARKERS) and any(c in cols for c in TEXT_COLUMNS[:3])
            and bool(cols & {"id", "image_name"}))


def header_version(header: Sequence[str]) -> str:
    """The edition a header looks like (used when the values do not tell)."""
    cols = {normalise_column(h) for h in header}
    return MEMOTION2 if any(m in cols for m in MEMOTION2_MARKERS) else MEMOTION1


def split_of(stem: str) -> str:
    """The split a file name gives (see the module docstring): train, val, test, or the stem itself."""
    words = [w for w in re.split(r"[^a-z0-9]+", stem.lower()) if w]
    for split, names in SPLIT_WORDS.items():
        if any(w in names for w in words):
            return split
    return "train" if words == ["labels"] else stem


def _csv_header(path: Path) -> List[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def split_files(folder: Path) -> List[Tuple[str, Path]]:
    """``(split, csv)`` of every Memotion split CSV in ``folder`` or one level below, in SPLITS order."""
    found: Dict[str, List[Path]] = {}
    for f in sorted(list(folder.glob("*.csv")) + list(folder.glob("*/*.csv"))):
        split = split_of(f.stem)
        if split in SPLITS and f.is_file() and detect_header(_csv_header(f)):
            found.setdefault(split, []).append(f)
    for split, files in found.items():
        if len(files) > 1:
            names = " and ".join(f.relative_to(folder).as_posix() for f in files)
            raise FeatstoreError(f"dataset {folder}: two {split} files, {names}; remove one, or point at the "
                                 f"file to read")
    return [(s, found[s][0]) for s in SPLITS if s in found]


def detect(path: Path) -> bool:
    """A folder holding Memotion split CSVs (see ``split_files``)."""
    return path.is_dir() and bool(split_files(path))


def _subfolders(base: Path) -> Dict[str, Path]:
    """normalised name -> subfolder of ``base`` (first by sorted name)."""
    out: Dict[str, Path] = {}
    try:
        for d in sorted(base.iterdir()) if base.is_dir() else ():
            if d.is_dir():
                out.setdefault(normalise_column(d.name), d)
    except OSError:  # an unreadable folder holds no image folder we can use
        pass
    return out


def image_folder(csv_path: Path, split: str, dataset: Optional[Path]) -> Path:
    """The folder the images of ``split`` ship in (see the module docstring); the CSV's folder if none."""
    here = csv_path.absolute().parent  # "memotion_train.csv" read inside Memotion2/ still finds "../image folder"
    bases = [here] + [b for b in ((dataset or here.parent),) if b.resolve() != here.resolve()]
    wanted = IMAGE_FOLDERS.get(split, ())
    for base in bases:
        subs = _subfolders(base)
        levels = [subs] + [_subfolders(subs[p]) for p in IMAGE_PARENTS if p in subs]
        for level in levels:
            for name in wanted:
                if name in level:
                    return level[name]
    return _subfolders(here).get("images", here)


def _resolve(roots: Sequence[Path], value: str) -> Tuple[str, str]:
    """``resolve_image`` against the first root holding the file (the first root if none does)."""
    first = resolve_image(roots[0], value)
    for root in roots[1:]:
        if Path(first[0]).is_file():
            break
        other = resolve_image(root, value)
        if Path(other[0]).is_file():
            return other
    return first


def _label_candidates(name: str, cands: Sequence[str]) -> str:
    """``'sarcastic' (or 'sarcasm')``: a missing label column and the other names Memotion accepts for it."""
    others = [c for c in cands if c != name]
    return f"{name!r} (or {' or '.join(repr(c) for c in others)})" if others else repr(name)


def _columns(header: List[str], opts: LoadOptions, problems: Problems, name: str) -> Optional[dict]:
    """The columns of one file (``None`` and a recorded problem when some are missing)."""
    cols = {"id": find_column(header, opts.id_col, ID_COLUMNS),
            "image": find_column(header, opts.image_col, IMAGE_COLUMNS),
            "text": find_column(header, opts.text_col, TEXT_COLUMNS),
            "labels": {e: find_column(header, None, cands) for e, cands in EMOTION_COLUMNS.items()}}
    cols["labels"]["sentiment"] = find_column(header, None, SENTIMENT_COLUMNS)
    missing, hints = [], []
    if cols["image"] is None and cols["id"] is None:
        missing.append(repr(opts.image_col) if opts.image_col else "'image_name' (or 'Id')")
    if cols["text"] is None:
        missing.append(repr(opts.text_col) if opts.text_col else "'ocr_text'")
    hints += [NAME_HINT] if missing else []
    cols["labelled"] = any(cols["labels"].values())
    if cols["labelled"]:
        cands = list(EMOTION_COLUMNS.values()) + [SENTIMENT_COLUMNS]
        absent = [_label_candidates(n, c) for n, c, col in zip(LABEL_NAMES, cands, cols["labels"].values())
                  if col is None]
        missing += absent
        hints += [LABEL_HINT] if absent else []
    if missing:
        problems.add(None, f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                           f"(found: {', '.join(header)})", name, hint=" or ".join(hints))
        return None
    return cols


def file_version(rows: List[Tuple[int, Dict[str, str]]], column: str, fallback: str) -> str:
    """The edition whose sarcasm levels most rows use (ties: the first seen; none: ``fallback``)."""
    counts: Dict[str, int] = {}
    for _, rec in rows:
        v = EDITION_OF_LEVEL.get(normalise_column(rec[column]))
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    return max(counts, key=lambda v: counts[v]) if counts else fallback  # dicts keep first-seen order


def _row_labels(rec: Dict[str, str], cols: dict, version: str, errors: List[str]) -> dict:
    """Task labels of one labelled row; problems go to ``errors`` (then the result is unused)."""
    levels = {}
    for e, allowed in levels_of(version).items():
        col = cols["labels"][e]
        v = normalise_column(rec[col])
        if v in allowed:
            levels[e] = v
        elif e == "sarcasm" and v in EDITION_OF_LEVEL:
            errors.append(f"{col} {rec[col]!r} is a {EDITION_OF_LEVEL[v]} level but this file uses {version}'s "
                          f"({', '.join(allowed)})")
        else:
            errors.append(f"{col} {rec[col]!r} is not one of {', '.join(allowed)}")
    col = cols["labels"]["sentiment"]
    sent = normalise_column(rec[col])
    if sent not in SENTIMENT:
        errors.append(f"{col} {rec[col]!r} is not one of {', '.join(SENTIMENT)}")
    if errors:
        return {}
    return {"A": SENTIMENT[sent], "B": [e for e, lv in levels_of(version).items() if levels[e] != lv[0]],
            "C": levels}


def _no_rows(problems: Problems, name: str) -> None:
    """A split file with a header and no rows: the one-line error naming it."""
    if not problems.multi_file:
        raise FeatstoreError(f"dataset {problems.source}: the file has no rows (only a header); re-download it, "
                             f"or leave the file out")
    raise FeatstoreError(f"dataset {problems.source}: {name} has no rows (only a header); re-download it, or "
                         f"leave the file out (move it out of the folder, or read another split with "
                         f"--dataset-split)")


def read_file(path: Path, split: Optional[str], roots: Sequence[Path], opts: LoadOptions, problems: Problems,
              name: str) -> Tuple[List[Sample], Optional[str], str]:
    """Samples of one CSV, the edition its labels use (``None`` when unlabelled) and its header's edition."""
    before = len(problems)
    header, rows = read_csv(path, problems, name)
    if header and not rows and len(problems) == before:
        _no_rows(problems, name)
    cols = _columns(header, opts, problems, name) if header else None
    if cols is None:
        return [], None, MEMOTION1
    guess = header_version(header)
    version = file_version(rows, cols["labels"]["sarcasm"], guess) if cols["labelled"] else None
    image_col, id_col = cols["image"], cols["id"]
    samples: List[Sample] = []
    for row, rec in rows:
        image = rec[image_col] if image_col else rec[id_col]
        sid = (rec[id_col] if id_col else image).strip()
        errors = []
        if not image.strip():
            errors.append(f"empty {image_col or id_col!r}")
        if not sid:
            errors.append(f"empty {id_col!r}")
        labels = _row_labels(rec, cols, version, errors) if version else {}
        if errors:
            for e in errors:
                problems.add(row, e, name)
            continue
        image_path, key = _resolve(roots, image)
        samples.append(Sample(sid, key, image_path, rec[cols["text"]], labels, split, row, name))
    return samples, version, guess


def _folder_files(path: Path, split: Optional[str]) -> Tuple[List[Tuple[str, Path]], List[Tuple[str, Path]]]:
    """(the split files to read, every split file of the folder)."""
    files = split_files(path)
    if not files:
        raise FeatstoreError(f"dataset {path}: no Memotion CSV in this folder or its subfolders (expected e.g. "
                             f"memotion_train.csv, memotion_val.csv, memotion_test.csv or labels.csv); point at "
                             f"the .csv file")
    if split is None:
        return files, files
    want = split_of(split)
    chosen = [(s, f) for s, f in files if s == want]
    if not chosen:
        raise FeatstoreError(f"dataset {path}: no {split} split file; choose --dataset-split from: "
                             f"{', '.join(s for s, _ in files)}")
    return chosen, files


def dataset_folder(csv_path: Path) -> Tuple[Optional[Path], List[Tuple[str, Path]]]:
    """The dataset folder one split CSV ships in and that folder's split files (``split_files``): of its folder
    and the folder above (Memotion 2.0 keeps ``Memotion2/memotion_train.csv`` below the folder with
    ``memotion_test.csv``), the one whose split files include this CSV and are the most (ties: its own folder);
    ``(None, [])`` when neither lists it."""
    best: Tuple[Optional[Path], List[Tuple[str, Path]]] = (None, [])
    csv_path = csv_path.absolute()  # "memotion_train.csv" read inside Memotion2/ still sees the folder above
    me = csv_path.resolve()
    for folder in dict.fromkeys((csv_path.parent, csv_path.parent.parent)):
        try:
            files = split_files(folder)
        except FeatstoreError:  # two files of one split: not one dataset's folder
            continue
        if any(f.resolve() == me for _, f in files) and len(files) > len(best[1]):
            best = (folder, files)
    return best


def _image_roots(f: Path, split: str, dataset: Optional[Path], opts: LoadOptions) -> List[Path]:
    """Where the images of split file ``f`` resolve (``image_root``, else its image folder, then its folder)."""
    if opts.image_root:
        return [opts.image_root]
    return list(dict.fromkeys([image_folder(f, split_of(split), dataset), f.parent]))


def sibling_images(dataset: Optional[Path], files: Sequence[Tuple[str, Path]],
                   opts: LoadOptions) -> List[Tuple[str, str]]:
    """``(image_key, image_path)`` of every row of the split files not read (the image column only, as the folder
    load would resolve it; no image is opened), so a part of the folder decides ``split_qualified`` as the whole
    folder does."""
    out: List[Tuple[str, str]] = []
    for split, f in files:
        header, rows = read_csv(f, Problems(str(f)), str(f))
        col = find_column(header, opts.image_col, IMAGE_COLUMNS) or find_column(header, opts.id_col, ID_COLUMNS)
        if col is None:
            continue
        roots = _image_roots(f, split, dataset, opts)
        for _, rec in rows:
            if rec[col].strip():
                image_path, key = _resolve(roots, rec[col])
                out.append((key, image_path))
    return out


def _parts(path: Path, opts: LoadOptions) -> Tuple[List[Tuple[str, Path]], Optional[Path], List[Tuple[str, Path]],
                                                  Optional[str]]:
    """(files to read, the dataset folder, its split files not read, the id prefix of a single split file)."""
    if path.is_dir():
        files, every = _folder_files(path, opts.split)
        return files, path, [x for x in every if x not in files], None
    files = [(opts.split if opts.split is not None else split_of(path.stem), path)]
    dataset, every = dataset_folder(path)
    me = path.resolve()
    others = [(s, f) for s, f in every if f.resolve() != me]
    return files, dataset, others, split_of(path.stem) if others else None


def read(path: Path, opts: LoadOptions, problems: Problems) -> FormatResult:
    folder = path.is_dir()
    files, dataset, others, prefix = _parts(path, opts)
    samples: List[Sample] = []
    versions: Dict[str, str] = {}  # edition -> first labelled file using it
    guesses: List[str] = []
    root = None
    for split, f in files:
        name = f.relative_to(path).as_posix() if folder else str(path)
        roots = _image_roots(f, split, path if folder else None, opts)
        root = root or roots[0]
        got, version, guess = read_file(f, split, roots, opts, problems, name)
        samples += got
        guesses.append(guess)
        if version is not None:
            versions.setdefault(version, name)
    if len(versions) > 1:
        (v1, f1), (v2, f2) = list(versions.items())[:2]
        problems.add(None, f"{f1} uses {v1} sarcasm levels but {f2} uses {v2}'s; load the editions "
                           f"separately")
    version = next(iter(versions), guesses[0] if guesses else MEMOTION1)
    shown = opts.image_root or (path if folder else root)
    qualified = split_qualified(samples, sibling_images(dataset, others, opts), prefix)
    return FormatResult(qualified, tasks_for(version), str(shown))


def split_qualified(samples: List[Sample], others: Sequence[Tuple[str, str]] = (),
                    prefix: Optional[str] = None) -> List[Sample]:
    """``samples`` as they are, unless two splits number their memes alike (the same image name in two split
    folders, another picture each): then every id and image key is prefixed with its split (``val-12``), so
    each meme keeps its own features. ``others``: ``(image_key, image_path)`` of the dataset folder's split files
    not read (``sibling_images``), which count as the folder load counts them; ``prefix``: the split a single
    file has in its folder (``val`` for ``memotion_val.csv`` read with ``split="dev"``), else each sample's."""
    paths: Dict[str, set] = {}
    for key, image_path in [(s.image_key, s.image_path) for s in samples] + list(others):
        paths.setdefault(key, set()).add(image_path)
    if all(len(p) == 1 for p in paths.values()):
        return samples
    return [replace(s, id=f"{prefix or s.split}-{s.id}", image_key=f"{prefix or s.split}-{s.image_key}")
            for s in samples]
