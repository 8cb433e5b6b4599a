"""Memotion (SemEval-2020 Task 8) and Memotion 2.0 (DE-FACTIFY 2022) CSV files.

Columns are matched case-insensitively, spaces/hyphens read as underscores:

* id: ``id_col`` or ``Id``/``id`` (optional; the image name is the id when absent);
* image: ``image_col`` or ``image_name``/``Image_name``/``image``/``img``; without one the ``Id`` value
  is the image name (a name without suffix is tried with .jpg/.png/...). Images resolve against the
  CSV's folder (or ``image_root``). image_key: the file stem, leading zeros kept;
* text: ``text_col`` or ``ocr_text``/``text_corrected``/``text_ocr``/``text``;
* labels: ``humour``, ``sarcastic`` (or ``sarcasm``), ``offensive`` (``offense``), ``motivational``
  (``motivation``), ``overall_sentiment`` (``sentiment``). A file with none of them is a test file
  (``labels = {}``); a file with only some of them is an error.

Label values are lower-cased with spaces/hyphens as underscores before matching the levels.

Task mapping (names as produced in ``Sample.labels``):

* ``A`` (multiclass: negative, neutral, positive): overall_sentiment very_negative/negative -> negative,
  neutral -> neutral, positive/very_positive -> positive.
* ``B`` (multilabel: humour, sarcasm, offense, motivation): an emotion is present when its level is not
  the lowest one (humour != not_funny, sarcasm != not_sarcastic, offense != not_offensive,
  motivation == motivational).
* ``C``: the level of every emotion, ``labels["C"] = {"humour": "funny", "sarcasm": "general",
  "offense": "slight", "motivation": "not_motivational"}``, i.e. the tasks ``C_humour`` (multiclass:
  not_funny, funny, very_funny, hilarious), ``C_sarcasm`` (not_sarcastic, general, twisted_meaning,
  very_twisted), ``C_offense`` (not_offensive, slight, very_offensive, hateful_offensive) and
  ``C_motivation`` (binary: not_motivational, motivational).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from .manifest import Sample, TaskInfo
from .options import FormatResult, LoadOptions
from .problems import Problems
from .readers import COLUMNS_HINT, find_column, normalise_column, read_csv, resolve_image

# emotion -> (column candidates, levels lowest first)
EMOTIONS = {
    "humour": (("humour", "humor"), ("not_funny", "funny", "very_funny", "hilarious")),
    "sarcasm": (("sarcastic", "sarcasm"), ("not_sarcastic", "general", "twisted_meaning", "very_twisted")),
    "offense": (("offensive", "offense"), ("not_offensive", "slight", "very_offensive", "hateful_offensive")),
    "motivation": (("motivational", "motivation"), ("not_motivational", "motivational")),
}
SENTIMENT_COLUMNS = ("overall_sentiment", "sentiment")
SENTIMENT = {"very_negative": "negative", "negative": "negative", "neutral": "neutral",
             "positive": "positive", "very_positive": "positive"}

TASKS: Dict[str, TaskInfo] = {
    "A": TaskInfo("A", "multiclass", ("negative", "neutral", "positive")),
    "B": TaskInfo("B", "multilabel", tuple(EMOTIONS)),
    **{f"C_{e}": TaskInfo(f"C_{e}", "binary" if len(levels) == 2 else "multiclass", levels)
       for e, (_, levels) in EMOTIONS.items()},
}


def detect_header(header: List[str]) -> bool:
    cols = {normalise_column(h) for h in header}
    return sum(any(c in cols for c in cands) for cands, _ in EMOTIONS.values()) >= 2


def read(path: Path, opts: LoadOptions, problems: Problems) -> FormatResult:
    name = str(path)
    root = opts.image_root or path.parent
    header, rows = read_csv(path, problems, name)
    if not header:
        return FormatResult([], TASKS, str(root))
    id_col = find_column(header, opts.id_col, ("id",))
    image_col = find_column(header, opts.image_col, ("image_name", "image", "img", "image_path"))
    text_col = find_column(header, opts.text_col, ("ocr_text", "text_corrected", "text_ocr", "text"))
    label_cols = {e: find_column(header, None, cands) for e, (cands, _) in EMOTIONS.items()}
    label_cols["sentiment"] = find_column(header, None, SENTIMENT_COLUMNS)
    missing = []
    if image_col is None and id_col is None:
        missing.append(repr(opts.image_col) if opts.image_col else "'image_name' (or 'Id')")
    if text_col is None:
        missing.append(repr(opts.text_col) if opts.text_col else "'ocr_text'")
    labelled = any(label_cols.values())
    if labelled:
        missing += [repr(c) for c, col in zip(("humour", "sarcastic", "offensive", "motivational",
                                                "overall_sentiment"), label_cols.values()) if col is None]
    if missing:
        problems.add(None, f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                           f"(found: {', '.join(header)})", name, hint=COLUMNS_HINT)
        return FormatResult([], TASKS, str(root))
    split = opts.split if opts.split is not None else path.stem
    samples: List[Sample] = []
    for row, rec in rows:
        image = rec[image_col] if image_col else rec[id_col]
        sid = (rec[id_col] if id_col else image).strip()
        errors = []
        if not image.strip():
            errors.append(f"empty {image_col or id_col!r}")
        if not sid:
            errors.append(f"empty {id_col!r}")
        labels = {}
        if labelled:
            levels = {}
            for e, (_, allowed) in EMOTIONS.items():
                v = normalise_column(rec[label_cols[e]])
                if v not in allowed:
                    errors.append(f"{label_cols[e]} {rec[label_cols[e]]!r} is not one of {', '.join(allowed)}")
                levels[e] = v
            sent = normalise_column(rec[label_cols["sentiment"]])
            if sent not in SENTIMENT:
                errors.append(f"{label_cols['sentiment']} {rec[label_cols['sentiment']]!r} is not one of "
                              f"{', '.join(SENTIMENT)}")
            if not errors:
                labels["A"] = SENTIMENT[sent]
                labels["B"] = [e for e, (_, allowed) in EMOTIONS.items() if levels[e] != allowed[0]]
                labels["C"] = dict(levels)
        if errors:
            for e in errors:
                problems.add(row, e, name)
            continue
        image_path, key = resolve_image(root, image)
        samples.append(Sample(sid, key, image_path, rec[text_col], labels, split, row, name))
    return FormatResult(samples, TASKS, str(root))
