"""One region-feature record (the features of one image key) validated, aliases renamed: the format every
interop reader yields (see ``featstore.interop``)."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from ..errors import FeatstoreError

ALIASES = {"boxes": "bbox", "image_w": "image_width", "image_h": "image_height"}
INT_FIELDS = ("num_boxes", "image_width", "image_height")


def check_record(record: Any, *, source: str) -> Dict[str, Any]:
    """Validate one record and return it with aliases renamed (arrays are not copied).

    Requires ``features`` (2-D array [N, D]); when present ``bbox`` must be [N, 4], ``objects`` [N],
    ``cls_prob`` [N, C], ``num_boxes`` an integer in 0..N, widths/heights positive integers.
    Raises ``FeatstoreError`` naming ``source`` otherwise.
    """
    if not isinstance(record, dict):
        raise FeatstoreError(f"{source}: expected a dict of arrays, got {type(record).__name__}; the file is not "
                             f"a region-feature record")
    out = {ALIASES.get(k, k) if isinstance(k, str) else k: v for k, v in record.items()}
    feats = out.get("features")
    if not isinstance(feats, np.ndarray) or feats.ndim != 2:
        got = "nothing" if feats is None else f"shape {getattr(feats, 'shape', type(feats).__name__)}"
        raise FeatstoreError(f"{source}: 'features' must be a 2-D array [N, D], got {got}; re-extract the features")
    n = feats.shape[0]
    for name, ndim, width in (("bbox", 2, 4), ("objects", 1, None), ("cls_prob", 2, None)):
        if name in out and out[name] is not None:
            arr = out[name]
            if (not isinstance(arr, np.ndarray) or arr.ndim != ndim or arr.shape[0] != n
                    or (width is not None and arr.shape[1] != width)):
                want = f"[{n}, 4]" if width else (f"[{n}]" if ndim == 1 else f"[{n}, C]")
                raise FeatstoreError(f"{source}: {name!r} must have shape {want} to match 'features', got "
                                     f"{getattr(arr, 'shape', type(arr).__name__)}; the record is inconsistent")
    for name in INT_FIELDS:
        if name in out and out[name] is not None:
            v = out[name]
            if isinstance(v, np.ndarray) and v.size == 1:
                v = v.reshape(()).item()
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise FeatstoreError(f"{source}: {name!r} must be an integer, got {v!r}; the record is inconsistent")
            v = int(v)
            low = 0 if name == "num_boxes" else 1
            if v < low or (name == "num_boxes" and v > n):
                raise FeatstoreError(f"{source}: {name!r} = {v} is out of range (0..{n} for num_boxes, >= 1 for "
                                     f"sizes); the record is inconsistent")
            out[name] = v
    return out
