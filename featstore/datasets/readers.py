"""Row readers shared by the formats: JSONL and CSV rows with 1-based row numbers, field checks and
image path resolution. Unreadable rows are recorded in a ``Problems`` and skipped."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .problems import Problems

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
COLUMNS_HINT = "name the columns with --id-col/--image-col/--text-col/--label-cols"


def read_jsonl(path: Path, problems: Problems, file: str) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for row, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    problems.add(row, f"invalid JSON ({e.msg} at column {e.colno})", file)
                    continue
                if not isinstance(obj, dict):
                    problems.add(row, f"expected a JSON object, got {type(obj).__name__}", file)
                    continue
                yield row, obj
    except UnicodeDecodeError:
        problems.add(*_non_utf8(path), file)


def normalise_column(name: str) -> str:
    return "_".join(str(name).strip().lower().replace("-", " ").split())


def _non_utf8(path: Path) -> Tuple[int, str]:
    """(line, message) of a file's first byte that is not UTF-8 (the decoder's own offset is per block)."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8-sig")
        return None, "not UTF-8 text; re-save the file as UTF-8"
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        return line, f"not UTF-8 text ({e.reason}, byte {data[e.start]:#04x}); re-save the file as UTF-8"


def read_csv(path: Path, problems: Problems, file: str) -> Tuple[List[str], List[Tuple[int, Dict[str, str]]]]:
    """Read a CSV with a header. Returns ``(header, [(line_number, {column: value})])``.

    Line numbers count the header as line 1 (a spreadsheet's row numbers); a record spanning several
    lines gets the number of its first line. Rows with the wrong number of fields are reported.
    """
    rows: List[Tuple[int, Dict[str, str]]] = []
    start = 1
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, strict=True)  # an unclosed quote is an error, not rows swallowed into one field
            try:
                header = next(reader)
            except StopIteration:
                problems.add(None, "empty file (expected a header line)", file)
                return [], rows
            start = reader.line_num + 1
            for values in reader:
                row, start = start, reader.line_num + 1
                if not values or all(not v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    problems.add(row, f"expected {len(header)} fields, got {len(values)}", file)
                    continue
                rows.append((row, dict(zip(header, values))))
    except UnicodeDecodeError:
        problems.add(*_non_utf8(path), file)
        return [], []
    except csv.Error as e:
        problems.add(start, f"not valid CSV from this row on ({e}): a quote opened in this row is not closed where "
                            f"it should be; close it, or write a literal quote as \"\"", file)
        return [], []
    return header, rows


def find_column(header: Sequence[str], wanted: Optional[str], candidates: Sequence[str]) -> Optional[str]:
    """The header column matching ``wanted`` (if given) or the first of ``candidates``, compared
    case-insensitively with spaces/hyphens as underscores; ``None`` if absent."""
    by_norm = {}
    for h in header:
        by_norm.setdefault(normalise_column(h), h)
    for c in ([wanted] if wanted else candidates):
        if c in header:
            return c
        if normalise_column(c) in by_norm:
            return by_norm[normalise_column(c)]
    return None


def get_id(obj: Dict[str, Any], key: str) -> Tuple[Optional[str], Optional[str]]:
    """Sample id from field ``key``: an int (``str(int)``) or a non-empty string. Returns (id, error)."""
    if key not in obj:
        return None, f"missing field {key!r}"
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        return None, f"field {key!r} must be an integer or a string, got {type(v).__name__}"
    s = str(v).strip()
    if not s:
        return None, f"field {key!r} is empty"
    return s, None


def get_str(obj: Dict[str, Any], key: str) -> Tuple[Optional[str], Optional[str]]:
    """A string field (``None`` counts as missing). Returns (value, error)."""
    if key not in obj or obj[key] is None:
        return None, f"missing field {key!r}"
    v = obj[key]
    if not isinstance(v, str):
        return None, f"field {key!r} must be a string, got {type(v).__name__}"
    return v, None


def resolve_image(root: Path, value: str) -> Tuple[str, str]:
    """Resolve an image reference against ``root``. Returns ``(path, image_key)``.

    Backslashes count as separators; absolute paths are kept. A reference without a suffix (an
    ``Id`` column) is tried with the common image suffixes and kept as given if none exists.
    The key is the file stem with its leading zeros (``img/02345.png`` -> ``02345``).
    """
    rel = value.strip().replace("\\", "/")
    pure = PurePosixPath(rel)
    path = Path(rel) if pure.is_absolute() else root / Path(*pure.parts)
    if pure.suffix.lower() not in IMAGE_SUFFIXES and not path.is_file():
        for suffix in IMAGE_SUFFIXES:
            cand = path.with_name(path.name + suffix)
            if cand.is_file():
                path = cand
                break
    key = pure.stem if pure.suffix.lower() in IMAGE_SUFFIXES else pure.name
    return os.path.abspath(path), key
