"""One strict JSON mechanism for the toolkit: what goes into a file or a hash is JSON, or it is an error.

* ``to_jsonable(obj)``: numpy scalars and arrays, ``Path``, tuples and dataclass instances -> JSON types
  (dict keys: str as is, numbers / bool / None as ``json`` writes them). Any other object is a one-line
  ``FeatstoreError`` naming where it sits and its type; it is never written as a lossy ``str()``.
* ``canonical_json(obj)``: sorted keys, compact separators, strict types: the text that version ids and
  record digests hash (byte-identical to ``json.dumps`` for JSON-native values, so existing ids stay).
* ``read_json(path, missing, invalid)`` / ``write_json(path, obj)``: the readers' one-line errors and the
  run files' layout (indent 2, no NaN: a non-finite float is written as ``null``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path, PurePath
from typing import Any, Optional

import numpy as np

from .errors import FeatstoreError

NATIVE = (str, int, float, bool, type(None))  # bool and numpy float64 are subclasses of int / float


def to_jsonable(obj: Any, finite: bool = False, where: str = "value") -> Any:
    """A copy of ``obj`` made of JSON types only. ``finite``: NaN / inf -> None (for strict JSON files).
    ``where`` names ``obj`` in the error an unknown type raises (keys and indices are appended)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {_key(k, where): to_jsonable(v, finite, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, finite, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), finite, where)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, float):
        return None if finite and not math.isfinite(obj) else float(obj)
    if isinstance(obj, NATIVE):
        return obj
    raise FeatstoreError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which JSON cannot hold; "
                         "pass a str, number, bool, None, list or dict")


def _key(k: Any, where: str) -> str:
    """A dict key as ``json`` writes it (str as is; 1 -> "1", True -> "true", None -> "null")."""
    if isinstance(k, np.generic):
        k = k.item()
    if isinstance(k, str):
        return k
    if isinstance(k, (int, float, bool, type(None))):
        return json.dumps(k)
    raise FeatstoreError(f"{where} has a key of type {type(k).__module__}.{type(k).__qualname__} ({k!r}), which "
                         "JSON cannot hold; use str keys")


def canonical_json(obj: Any, where: str = "value", compact: bool = True) -> str:
    """``obj`` as hashing text: strict types, sorted keys, ``,``/``:`` separators (``compact=False``: the
    default ``, ``/``: `` ones, for keys that were hashed with them)."""
    return json.dumps(to_jsonable(obj, where=where), sort_keys=True, separators=(",", ":") if compact else None)


def read_json(path, missing: str, invalid: Optional[str] = None) -> Any:
    """The JSON content of ``path``. ``missing`` (a file that cannot be read) and ``invalid`` (not JSON;
    default ``missing``) are the one-line messages, templates with ``{path}`` and ``{err}``."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise FeatstoreError(missing.format(path=path, err=err)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FeatstoreError((invalid or missing).format(path=path, err=err)) from None


def write_json(path, obj: Any) -> None:
    """``obj`` as strict JSON (indent 2, non-finite floats as null, trailing newline) at ``path``."""
    Path(path).write_text(json.dumps(to_jsonable(obj, finite=True), indent=2, allow_nan=False) + "\n")
