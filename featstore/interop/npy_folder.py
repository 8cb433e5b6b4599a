"""MMF extraction folders (``mmf/tools/scripts/features/extract_features_vmb.py`` output): per image
``<key>.npy`` (float32 ``[N, 2048]``, a plain array) and ``<key>_info.npy`` (a dict saved with
``np.save``, i.e. a pickled 0-d object array, holding ``bbox``, ``num_boxes``, ``image_width``,
``image_height``, ``objects``, ``cls_prob``, ...). Sub-folders are allowed; a key is the path relative to
the folder without ``.npy`` and with ``/`` separators (as MMF's LMDB conversion names them).

Reading never calls ``np.load(allow_pickle=True)``: the ``.npy`` header is parsed with
``numpy.lib.format`` and the pickled payload goes through ``safe_pickle`` (numpy arrays and plain values
only). Plain ``<key>.npy`` arrays are read with ``np.load(allow_pickle=False)``. A key with no info file
yields just ``{"features": ...}``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Tuple, Union

import numpy as np
from numpy.lib import format as npy_format

from ..errors import FeatstoreError
from .records import check_record
from .safe_pickle import safe_load

INFO_SUFFIX = "_info.npy"


def _read_header(f, source: str):
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            return npy_format.read_array_header_1_0(f)
        if version in ((2, 0), (3, 0)):  # 3.0 differs only by a UTF-8 (not latin-1) header text
            return npy_format.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy version {version}")
    except ValueError as e:
        raise FeatstoreError(f"{source} is not a .npy file ({e}); re-create it with np.save") from None


def load_info(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a ``<key>_info.npy`` dict safely (see the module docstring)."""
    source = os.fspath(path)
    with open(path, "rb") as f:
        shape, _fortran, dtype = _read_header(f, source)
        if not dtype.hasobject or shape != ():
            raise FeatstoreError(f"{source}: expected a dict saved with np.save (a 0-d object array), got "
                                 f"dtype {dtype} shape {shape}; re-save the info dict")
        arr = safe_load(f, source=source)
    info = arr.item() if isinstance(arr, np.ndarray) and arr.shape == () else arr
    if not isinstance(info, dict):
        raise FeatstoreError(f"{source}: expected a dict, got {type(info).__name__}; re-save the info dict")
    return info


def _load_features(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise FeatstoreError(f"{path}: not a plain numeric .npy array ({e}); re-save the features with "
                             f"np.save(path, float32_array)") from None


def _scan(path: Union[str, os.PathLike]) -> Tuple[Path, Dict[str, Path], Dict[str, Path]]:
    """(root, key -> feature file, key -> info file); fails early on a missing/empty folder or orphan infos."""
    root = Path(path)
    if not root.is_dir():
        raise FeatstoreError(f"feature folder {root} does not exist; check the path")
    features: Dict[str, Path] = {}
    infos: Dict[str, Path] = {}
    for p in root.rglob("*.npy"):
        rel = p.relative_to(root).as_posix()
        if rel.endswith(INFO_SUFFIX):
            infos[rel[: -len(INFO_SUFFIX)]] = p
        else:
            features[rel[: -len(".npy")]] = p
    orphans = sorted(set(infos) - set(features))
    if orphans:
        raise FeatstoreError(f"feature folder {root}: {len(orphans)} info files have no feature file (e.g. "
                             f"{orphans[0]}{INFO_SUFFIX}); the extraction is incomplete, re-run it")
    if not features:
        raise FeatstoreError(f"feature folder {root} holds no .npy files; point at the extraction output folder")
    return root, features, infos


def npy_folder_keys(path: Union[str, os.PathLike]) -> List[str]:
    """The keys ``read_npy_folder`` yields, in the same (sorted) order, without loading any array."""
    return sorted(_scan(path)[1])


def read_npy_folder(path: Union[str, os.PathLike]) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """Yield ``(key, record)`` for every ``<key>.npy`` under ``path`` in sorted key order.

    The folder is scanned first: a missing folder, an empty one, or an ``_info.npy`` without its feature
    file raises ``FeatstoreError`` before anything is yielded.
    """
    root, features, infos = _scan(path)
    return _iterate(root, sorted(features), features, infos)


def _iterate(root: Path, keys, features, infos) -> Iterator[Tuple[str, Dict[str, Any]]]:
    for key in keys:
        record: Dict[str, Any] = dict(load_info(infos[key])) if key in infos else {}
        record["features"] = _load_features(features[key])
        yield key, check_record(record, source=f"{root / key}.npy")


def write_npy_folder(path: Union[str, os.PathLike], records: Iterable[Tuple[str, Dict[str, Any]]]) -> int:
    """Write ``(key, record)`` pairs as ``<key>.npy`` (the features) + ``<key>_info.npy`` (the other
    fields, via ``np.save`` of the dict). Keys may contain ``/`` (sub-folders) but not ``..``.
    Returns the number of records written; refuses to overwrite an existing file."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    count = 0
    for key, record in records:
        parts = str(key).split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or key.endswith("_info"):
            raise FeatstoreError(f"feature folder {root}: key {key!r} is not a safe relative name; rename it")
        rec = check_record(record, source=f"record {key!r} for {root}")
        target = root.joinpath(*parts)
        feat_path, info_path = target.with_name(target.name + ".npy"), target.with_name(target.name + INFO_SUFFIX)
        if feat_path.exists() or info_path.exists():
            raise FeatstoreError(f"feature folder {root}: {feat_path.name} already exists; write to an empty folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(feat_path, rec["features"], allow_pickle=False)
        info = {k: v for k, v in rec.items() if k != "features"}
        if info:
            np.save(info_path, np.array(info, dtype=object), allow_pickle=True)
        count += 1
    return count
