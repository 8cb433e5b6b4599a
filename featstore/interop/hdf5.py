"""HDF5 feature files, two layouts, auto-detected when reading:

* ``table`` (what ``write_hdf5`` writes): a ``keys`` dataset of UTF-8 strings and one dataset per array,
  rows aligned with the keys (``features [K, N, D]``, ``bbox [K, N, 4]``, ``num_boxes [K]``, ...),
  chunked along the rows and optionally compressed; file attributes hold ``attrs``. Files whose key
  dataset has another name (e.g. ``image_id``, integers are turned into decimal strings) are read with
  ``keys_name=``.
* ``groups`` (common in extraction scripts): one group per image key holding datasets such as
  ``features`` and ``bbox`` (group attributes count as values too).

Attributes that HDF5 cannot hold natively (dicts, lists, None) are stored as JSON strings and their
names listed in the file attribute ``featstore_json_attrs``, so they read back equal.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import FeatstoreError
from ..extras import LazyModule
from .records import check_record

h5py = LazyModule("h5py", "hdf5", "reading or writing HDF5 feature files")  # the optional extra .[hdf5]

JSON_ATTRS = "featstore_json_attrs"
COMPRESSIONS = (None, "gzip", "lzf")


class HDF5Contents(NamedTuple):
    """``keys``: list[str]; ``arrays``: name -> ndarray [K, ...] (table layout) or name -> list of K
    per-key arrays (groups layout); ``attrs``: file attributes; ``layout``: "table" or "groups"."""

    keys: List[str]
    arrays: Dict[str, Union[np.ndarray, List[np.ndarray]]]
    attrs: Dict[str, Any]
    layout: str


def write_hdf5(path: Union[str, os.PathLike], key_order: Sequence[str], arrays: Mapping[str, np.ndarray],
               attrs: Optional[Mapping[str, Any]] = None, *, compression: Optional[str] = "gzip",
               chunk_rows: int = 256) -> None:
    """Write a table-layout file: ``keys`` plus one dataset per array (``arrays[name].shape[0] ==
    len(key_order)``), chunked ``chunk_rows`` rows at a time, compressed with ``compression``
    (``"gzip"``, ``"lzf"`` or ``None``). Refuses to overwrite an existing file."""
    path = os.fspath(path)
    keys = [str(k) for k in key_order]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise FeatstoreError(f"HDF5 {path}: key {dup!r} is given twice; keys must be unique")
    if compression not in COMPRESSIONS:
        raise FeatstoreError(f"HDF5 {path}: unknown compression {compression!r}; use gzip, lzf or none")
    for name, arr in arrays.items():
        if name == "keys" or "/" in name or not name:
            raise FeatstoreError(f"HDF5 {path}: array name {name!r} is not allowed (reserved or has '/'); rename it")
        if not isinstance(arr, np.ndarray) or arr.dtype.hasobject or arr.ndim == 0:
            raise FeatstoreError(f"HDF5 {path}: array {name!r} must be a non-object numpy array with one row per "
                                 f"key; convert it with np.asarray")
        if arr.shape[0] != len(keys):
            raise FeatstoreError(f"HDF5 {path}: array {name!r} has {arr.shape[0]} rows but there are {len(keys)} "
                                 f"keys; give one row per key")
    native: Dict[str, Any] = {}
    json_names: List[str] = []
    for name, value in (attrs or {}).items():
        if isinstance(value, (str, int, float, bool, np.ndarray, np.generic)):
            native[name] = value
            continue
        try:
            native[name] = json.dumps(value)
        except TypeError:
            raise FeatstoreError(f"HDF5 {path}: attribute {name!r} of type {type(value).__name__} cannot be "
                                 f"stored; use numbers, strings, arrays or JSON values") from None
        json_names.append(name)
    if json_names:
        native[JSON_ATTRS] = json.dumps(json_names)
    try:
        f = h5py.File(path, "w-")
    except (FileExistsError, OSError) as e:
        raise FeatstoreError(f"HDF5 {path} cannot be created ({e}); remove the file or choose another path") from None
    try:
        with f:
            f.create_dataset("keys", data=np.array(keys, dtype=object), dtype=h5py.string_dtype("utf-8"))
            for name, arr in arrays.items():
                chunks = (max(1, min(chunk_rows, arr.shape[0])),) + arr.shape[1:] if arr.shape[0] else None
                f.create_dataset(name, data=arr, chunks=chunks, compression=compression if chunks else None)
            for name, value in native.items():
                f.attrs[name] = value
    except BaseException:
        os.remove(path)  # never leave a half-written file behind
        raise


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _read_attrs(node) -> Dict[str, Any]:
    attrs = {k: _plain(v) for k, v in node.attrs.items()}
    for name in json.loads(attrs.pop(JSON_ATTRS, "[]")):
        attrs[name] = json.loads(attrs[name])
    return attrs


def _decode_keys(values: np.ndarray, path: str, keys_name: str) -> List[str]:
    if values.ndim != 1:
        raise FeatstoreError(f"HDF5 {path}: dataset {keys_name!r} must be 1-D, got shape {values.shape}")
    if values.dtype.kind in "iu":
        return [str(int(v)) for v in values]
    if values.dtype.kind in "OSU":
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    raise FeatstoreError(f"HDF5 {path}: dataset {keys_name!r} must hold strings or integers, got {values.dtype}")


def _open(path: str) -> h5py.File:
    if not os.path.isfile(path):
        raise FeatstoreError(f"HDF5 {path} does not exist; check the path")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise FeatstoreError(f"HDF5 {path} cannot be read ({e}); it is not an HDF5 file") from None


def _layout(f: h5py.File, path: str, keys_name: str) -> str:
    if isinstance(f.get(keys_name), h5py.Dataset):
        return "table"
    members = list(f.values())
    if members and all(isinstance(m, h5py.Group) for m in members):
        return "groups"
    raise FeatstoreError(f"HDF5 {path}: no {keys_name!r} dataset and not one group per key (found: "
                         f"{', '.join(list(f.keys())[:10]) or 'nothing'}); pass keys_name= the dataset holding the keys")


def _table_arrays(f: h5py.File, path: str, keys_name: str, n: int) -> Dict[str, h5py.Dataset]:
    out = {}
    for name, ds in f.items():
        if name == keys_name or not isinstance(ds, h5py.Dataset):
            continue
        if ds.ndim == 0 or ds.shape[0] != n:
            raise FeatstoreError(f"HDF5 {path}: dataset {name!r} has shape {ds.shape} but there are {n} keys; "
                                 f"every dataset needs one row per key")
        out[name] = ds
    return out


def _group_values(group: h5py.Group, path: str) -> Dict[str, Any]:
    values = {k: _plain(v) for k, v in group.attrs.items()}
    for name, ds in group.items():
        if not isinstance(ds, h5py.Dataset):
            raise FeatstoreError(f"HDF5 {path}: {group.name}/{name} is a group; per-key groups must hold datasets")
        values[name] = ds[()]
    return values


def read_hdf5(path: Union[str, os.PathLike], *, keys_name: str = "keys") -> HDF5Contents:
    """Read a whole file (either layout) into memory."""
    path = os.fspath(path)
    with _open(path) as f:
        layout = _layout(f, path, keys_name)
        attrs = _read_attrs(f)
        if layout == "table":
            keys = _decode_keys(f[keys_name][()], path, keys_name)
            arrays: Dict[str, Any] = {n: ds[()] for n, ds in _table_arrays(f, path, keys_name, len(keys)).items()}
            return HDF5Contents(keys, arrays, attrs, layout)
        keys = list(f.keys())
        per_key = [_group_values(f[k], path) for k in keys]
        names = list(dict.fromkeys(n for v in per_key for n in v))
        for k, v in zip(keys, per_key):
            absent = [n for n in names if n not in v]
            if absent:
                raise FeatstoreError(f"HDF5 {path}: group {k!r} lacks {', '.join(absent)} that other groups hold; "
                                     f"every per-key group needs the same datasets")
        arrays = {n: [v[n] for v in per_key] for n in names}
        return HDF5Contents(keys, arrays, attrs, layout)


def iter_hdf5_records(path: Union[str, os.PathLike], *, keys_name: str = "keys",
                      block_rows: int = 256) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """Yield ``(key, record)`` per key, reading ``block_rows`` rows at a time; each record is checked
    with ``check_record`` (region-feature records)."""
    path = os.fspath(path)
    with _open(path) as f:
        layout = _layout(f, path, keys_name)
        if layout == "groups":
            for k in f.keys():
                yield k, check_record(_group_values(f[k], path), source=f"{path}[{k}]")
            return
        keys = _decode_keys(f[keys_name][()], path, keys_name)
        datasets = _table_arrays(f, path, keys_name, len(keys))
        for start in range(0, len(keys), block_rows):
            block = {n: ds[start:start + block_rows] for n, ds in datasets.items()}
            for i, k in enumerate(keys[start:start + block_rows]):
                rec = {n: (a[i].item() if a.ndim == 1 else a[i]) for n, a in block.items()}
                yield k, check_record(_unpad(rec), source=f"{path}[{k}]")


def _unpad(rec: Dict[str, Any]) -> Dict[str, Any]:
    """A table row holds padded region arrays: cut them to ``num_rows`` (the stored rows, what
    ``featstore export`` writes) or, in files without it, to ``num_boxes``."""
    rows = rec.pop("num_rows", rec.get("num_boxes"))
    feats = rec.get("features")
    if rows is None or not isinstance(feats, np.ndarray) or feats.ndim != 2:
        return rec
    width, rows = feats.shape[0], int(rows)
    return {n: (v[:rows] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == width else v)
            for n, v in rec.items()}


def hdf5_keys(path: Union[str, os.PathLike], *, keys_name: str = "keys") -> List[str]:
    """The keys ``iter_hdf5_records`` yields, in the same order, without reading any array."""
    path = os.fspath(path)
    with _open(path) as f:
        if _layout(f, path, keys_name) == "groups":
            return list(f.keys())
        return _decode_keys(f[keys_name][()], path, keys_name)
