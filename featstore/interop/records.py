"""One region-feature record (the features of one image key) validated, aliases renamed: the format every
interop reader yields (see ``featstore.interop``). What it accepts follows what MMF's ``LMDBFeatureReader``
reads (``mmf/datasets/databases/readers/feature_readers.py``), so every record MMF's extraction scripts write
imports: ``extract_features_vmb.py`` ([N, D], bbox [N, 4], cls_prob [N, C]), ``frcnn/extract_features_frcnn.py``
(cls_prob [N], num_boxes = ``--num_features``, larger than N), ``extract_features_vinvl.py`` (bbox [N, 6]),
ResNet grids ([H, W, D]) and our own exports (bbox zero-padded past N)."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from ..errors import FeatstoreError

ALIASES = {"boxes": "bbox", "image_w": "image_width", "image_h": "image_height"}
INT_FIELDS = ("num_boxes", "image_width", "image_height")


def check_record(record: Any, *, source: str, keep_bbox_rows: bool = False) -> Dict[str, Any]:
    """Validate one record and return it with aliases renamed (arrays are not copied).

    Requires ``features``: an array [N, D], or more dims read as [-1, D] as MMF's reader reshapes them. When
    present: ``bbox`` [N', 4 or more] with N' >= N (rows past N are padding, cut to N unless ``keep_bbox_rows``;
    columns past 4 as VinVL's [N, 6]), ``objects`` [N], ``cls_prob`` [N, ...] (rank >= 1, first axis N),
    ``num_boxes`` an integer >= 0 (MMF keeps it as written, even above N), widths/heights positive integers.
    ``None`` values are kept (MMF writes them for absent fields). Raises ``FeatstoreError`` naming ``source``.
    """
    if not isinstance(record, dict):
        raise FeatstoreError(f"{source}: expected a dict of arrays, got {type(record).__name__}; the file is not "
                             f"a region-feature record")
    out = {ALIASES.get(k, k) if isinstance(k, str) else k: v for k, v in record.items()}
    out["features"] = _features(out.get("features"), source)
    n = out["features"].shape[0]
    if out.get("bbox") is not None:
        out["bbox"] = _bbox(out["bbox"], n, source, keep_bbox_rows)
    for name, ndim, want in (("objects", 1, f"[{n}]"), ("cls_prob", None, f"[{n}, ...]")):
        arr = out.get(name)
        if arr is not None and (not isinstance(arr, np.ndarray) or arr.ndim < 1 or arr.shape[0] != n
                                or (ndim is not None and arr.ndim != ndim)):
            raise FeatstoreError(f"{source}: {name!r} must have shape {want} to match 'features', got "
                                 f"{getattr(arr, 'shape', type(arr).__name__)}; the record is inconsistent")
    for name in INT_FIELDS:
        if out.get(name) is not None:
            out[name] = _integer(out[name], name, source)
    return out


def _features(feats: Any, source: str) -> np.ndarray:
    """``features`` as [N, D]: more dims are reshaped to [-1, D] (MMF's reader: ``reshape(-1, shape[-1])``)."""
    if not isinstance(feats, np.ndarray) or feats.ndim < 2:
        got = "nothing" if feats is None else f"shape {getattr(feats, 'shape', type(feats).__name__)}"
        raise FeatstoreError(f"{source}: 'features' must be an array [N, D] (more dims are read as [-1, D]), got "
                             f"{got}; re-extract the features")
    return feats.reshape(-1, feats.shape[-1]) if feats.ndim > 2 else feats


def _bbox(arr: Any, n: int, source: str, keep_rows: bool) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[0] < n or arr.shape[1] < 4:
        raise FeatstoreError(f"{source}: 'bbox' must have shape [{n}, 4] to match 'features' (more rows are "
                             f"padding, more columns extra values), got {getattr(arr, 'shape', type(arr).__name__)}; "
                             f"the record is inconsistent")
    return arr if keep_rows else arr[:n]


def _integer(v: Any, name: str, source: str) -> int:
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(()).item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise FeatstoreError(f"{source}: {name!r} must be an integer, got {v!r}; the record is inconsistent")
    v = int(v)
    if v < (0 if name == "num_boxes" else 1):
        raise FeatstoreError(f"{source}: {name!r} = {v} is out of range (>= 0 for num_boxes, >= 1 for sizes); the "
                             f"record is inconsistent")
    return v
