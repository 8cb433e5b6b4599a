"""Any CSV or JSONL file with named columns.

Columns (names matched case-insensitively): id ``id_col`` (default ``id``), image ``image_col``
(default the first of ``image``, ``img``, ``image_path``, ``image_name``, ``path``), text ``text_col``
(default ``text``), labels ``label_cols`` (default ``label`` when present; several columns give several
tasks, each named after its column), split: a ``split`` column when present (``split=`` then keeps only
that split's rows), else ``split=``, else none. Images resolve against the file's folder (or
``image_root``); image_key is the image file stem with its leading zeros.

Task kinds are inferred per label column over all rows: list values (JSONL) -> ``multilabel``; only the
integers 0 and 1 -> ``binary``; otherwise ``multiclass`` with class names sorted (integers numerically,
kept as their decimal strings). In CSV files integer-looking cells are integers and an empty cell means
"no label" (a test row). Floats, dicts and booleans are rejected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .manifest import Sample, TaskInfo
from .options import FormatResult, LoadOptions
from .problems import Problems
from .readers import COLUMNS_HINT, find_column, get_id, get_str, read_csv, read_jsonl, resolve_image

IMAGE_COLUMNS = ("image", "img", "image_path", "image_name", "path")


def _label_value(v: Any, from_csv: bool) -> Tuple[Any, Optional[str]]:
    """Normalise one label cell: returns (value or None when unlabelled, error)."""
    if v is None or (from_csv and isinstance(v, str) and not v.strip()):
        return None, None
    if from_csv:
        s = v.strip()
        try:
            return int(s), None
        except ValueError:
            return s, None
    if isinstance(v, bool) or not isinstance(v, (int, str, list)):
        return None, f"must be an integer, a string or a list of strings, got {type(v).__name__}"
    if isinstance(v, list):
        if not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            return None, "must be a list of strings or integers"
        return [str(x) for x in v], None
    return v, None


def _infer_tasks(samples: List[Sample], label_cols: Sequence[str], problems: Problems, name: str):
    """Pick each label column's task kind and rewrite the sample labels to the value convention."""
    tasks: Dict[str, TaskInfo] = {}
    converted = [dict(s.labels) for s in samples]
    for col in label_cols:
        values = [(i, lab[col]) for i, lab in enumerate(converted) if col in lab]
        lists = [isinstance(v, list) for _, v in values]
        if any(lists) and not all(lists):
            i = next(i for i, v in values if not isinstance(v, list))
            problems.add(samples[i].row, f"label {col!r} must be a list like the other rows", name)
            continue
        if values and all(lists):
            vocab = sorted({x for _, v in values for x in v})
            tasks[col] = TaskInfo(col, "multilabel", tuple(vocab))
            for i, v in values:
                converted[i][col] = sorted(set(v))
        elif values and all(isinstance(v, int) and v in (0, 1) for _, v in values):
            tasks[col] = TaskInfo(col, "binary", ("0", "1"))
        else:
            ints = sorted({v for _, v in values if isinstance(v, int)})
            strs = sorted({v for _, v in values if isinstance(v, str)} - {str(v) for v in ints})
            tasks[col] = TaskInfo(col, "multiclass", tuple([str(v) for v in ints] + strs))
            for i, v in values:
                converted[i][col] = str(v)
    return tasks, [Sample(s.id, s.image_key, s.image_path, s.text, lab, s.split, s.row, s.file)
                   for s, lab in zip(samples, converted)]


def read(path: Path, opts: LoadOptions, problems: Problems) -> FormatResult:
    name = str(path)
    root = opts.image_root or path.parent
    from_csv = path.suffix.lower() == ".csv"
    if from_csv:
        header, rows = read_csv(path, problems, name)
    else:
        rows = list(read_jsonl(path, problems, name))
        header = list(dict.fromkeys(k for _, obj in rows for k in obj))
    if not rows:
        return FormatResult([], {}, str(root))
    id_col = find_column(header, opts.id_col, ("id",))
    image_col = find_column(header, opts.image_col, IMAGE_COLUMNS)
    text_col = find_column(header, opts.text_col, ("text",))
    split_col = find_column(header, None, ("split",))
    if opts.label_cols:
        label_cols = [find_column(header, c, ()) or c for c in opts.label_cols]
        absent = [c for c in label_cols if c not in header]
    else:
        label_cols = [c for c in [find_column(header, None, ("label", "labels"))] if c]
        absent = []
    missing = [repr(want or default) for col, want, default in
               ((id_col, opts.id_col, "id"), (image_col, opts.image_col, "image"), (text_col, opts.text_col, "text"))
               if col is None] + [repr(c) for c in absent]
    if missing:
        problems.add(None, f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                           f"(found: {', '.join(header)})", name, hint=COLUMNS_HINT)
        return FormatResult([], {}, str(root))
    samples: List[Sample] = []
    for row, rec in rows:
        errors = []
        sid, err = get_id(rec, id_col)
        errors.append(err)
        image, err = get_str(rec, image_col)
        errors.append(err if err or image.strip() else f"field {image_col!r} is empty")
        text, err = get_str(rec, text_col)
        errors.append(err)
        split = opts.split
        if split_col is not None:
            split, err = get_str(rec, split_col)
            errors.append(err)
        labels = {}
        for col in label_cols:
            v, err = _label_value(rec.get(col), from_csv)
            errors.append(f"label {col!r} {err}" if err else None)
            if v is not None:
                labels[col] = v
        errors = [e for e in errors if e]
        if errors:
            for e in errors:
                problems.add(row, e, name)
            continue
        if split_col is not None and opts.split is not None and split != opts.split:
            continue
        image_path, key = resolve_image(root, image)
        samples.append(Sample(sid, key, image_path, text, labels, split, row, name))
    tasks, samples = _infer_tasks(samples, label_cols, problems, name)
    return FormatResult(samples, tasks, str(root))
