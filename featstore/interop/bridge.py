"""Import region features users already have into the store, and export store versions back out.

Formats: ``mmf-lmdb`` (Facebook/MMF ``detectron.lmdb``), ``hdf5`` (table or per-key groups) and ``npy``
(MMF's per-image ``<key>.npy`` + ``<key>_info.npy`` folders). Records are streamed chunk by chunk, so an
import never holds more than one store chunk in memory.

An imported set is an image region set keyed by image key: ``regions`` [N, R, D] (per item), ``count``,
``pooled`` (mean of the real regions) and, when the source has them, ``boxes`` [N, R, 4] (image pixels),
``image_size`` [N, 2] (width, height) and ``class_ids`` [N, R] (the detector's ``objects``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import FeatstoreError
from ..store import ArraySpec, Recipe, Store
from . import check_record
from .hdf5 import hdf5_keys, iter_hdf5_records, write_hdf5
from .mmf_lmdb import match_keys, normalize_key, read_mmf_lmdb, write_mmf_lmdb
from .npy_folder import npy_folder_keys, read_npy_folder, write_npy_folder

FORMATS = ("mmf-lmdb", "hdf5", "npy")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise FeatstoreError(f"format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")


def _open_source(path: str, fmt: str) -> Tuple[List[str], Callable[[], Iterator[Tuple[str, dict]]]]:
    """(source keys in iteration order, a function that iterates (key, record) in that order)."""
    if not os.path.exists(path):
        raise FeatstoreError(f"{fmt} source {path} does not exist; check the path")
    if fmt == "mmf-lmdb":
        reader = read_mmf_lmdb(path)
        return list(reader.keys), lambda: ((k, check_record(reader.get(k), source=f"{path}[{k}]")) for k in reader.keys)
    if fmt == "hdf5":
        return hdf5_keys(path), lambda: iter_hdf5_records(path)
    return npy_folder_keys(path), lambda: read_npy_folder(path)


def source_fingerprint(path: str, fmt: str) -> str:
    """sha256 of the source's bytes (for an LMDB only data.mdb: lock.mdb changes whenever it is read)."""
    from ..extractors.weights import fingerprint_files

    p = Path(path)
    if fmt == "mmf-lmdb" and p.is_dir():
        p = p / "data.mdb"
    return fingerprint_files(p)


def import_features(store: Store, path: str, fmt: str, name: str, *, dataset=None, max_regions: Optional[int] = None,
                    dtype: str = "float32", backend: str = "zarr", chunk_rows: int = 64):
    """Import ``path`` as feature set ``name``. Returns (version, report lines).

    With ``dataset``, source keys are matched to its image keys (leading zeros, path separators and file
    extensions do not matter) and only matched keys are imported; without it keys are normalised to file stems.
    """
    _check_format(fmt)
    path = os.fspath(path)
    src_keys, iterate = _open_source(path, fmt)
    if not src_keys:
        raise FeatstoreError(f"{fmt} source {path} holds no records")
    report: List[str] = []
    if dataset is not None:
        km = match_keys(src_keys, dataset.image_keys())
        report.append(f"key matching: {km.summary()}")
        if km.missing:
            report.append(f"  image keys without features (first 5): {', '.join(km.missing[:5])}")
        if not len(km):
            raise FeatstoreError(f"no key of {path} matches an image key of the dataset (e.g. source "
                                 f"{src_keys[0]!r} vs dataset {dataset.image_keys()[0]!r}); check the dataset")
        to_image = {str(v if not isinstance(v, bytes) else v.decode()): k for k, v in km.items()}
    else:
        to_image = {}
        for k in src_keys:
            ik = normalize_key(k)
            if ik in to_image.values():
                raise FeatstoreError(f"source keys {k!r} and another both name image {ik!r}; pass --dataset to "
                                     f"match keys to the dataset's images")
            to_image[k] = ik
    keys = [to_image[k] for k in src_keys if k in to_image]

    records = iterate()
    first_key, first = next((k, r) for k, r in records if k in to_image)
    feats = np.asarray(first["features"])
    width = int(max_regions or feats.shape[0])
    dim = int(feats.shape[1])
    if dtype not in ("float16", "float32"):
        raise FeatstoreError(f"dtype {dtype!r} is not supported for imports; use float16 or float32")
    schema: Dict[str, ArraySpec] = {"regions": ArraySpec((width, dim), dtype, True), "pooled": ArraySpec((dim,), dtype)}
    has_boxes = "bbox" in first
    has_size = "image_width" in first and "image_height" in first
    has_objects = "objects" in first
    if has_boxes:
        schema["boxes"] = ArraySpec((width, 4), "float32", True)
    if has_size:
        schema["image_size"] = ArraySpec((2,), "int32")
    if has_objects:
        schema["class_ids"] = ArraySpec((width,), "int32", True)
    recipe = Recipe(extractor=f"import:{fmt}",
                    config={"source": os.path.basename(os.path.normpath(path)), "max_regions": width, "dtype": dtype,
                            "source_sha256": source_fingerprint(path, fmt)},
                    manifest_fingerprint=dataset.fingerprint if dataset is not None else "")
    writer = store.writer(name, recipe, keys, schema, key_kind="image_key", modality="image", chunk_rows=chunk_rows,
                          backend=backend, meta={"imported_from": os.path.abspath(path)})
    if writer.complete:
        report.append("already imported: the same source and options name an existing version")
        return writer.commit(), report
    pending = set(writer.pending_chunks())

    def rows_of(rec: dict, key: str) -> Dict[str, np.ndarray]:
        f = np.asarray(rec["features"])
        n = int(rec.get("num_boxes", f.shape[0]))
        if f.ndim != 2 or f.shape[1] != dim:
            raise FeatstoreError(f"{path}[{key}]: features have shape {f.shape}, expected [N, {dim}] like the first record")
        if n > width:
            raise FeatstoreError(f"{path}[{key}] has {n} regions but the set keeps {width}; pass --max-regions {n} "
                                 f"(or more)")
        out = {"regions": f[:n], "count": np.int32(n),
               "pooled": f[:n].astype(np.float64).mean(0) if n else np.zeros(dim)}
        if has_boxes:
            out["boxes"] = np.asarray(rec["bbox"], dtype=np.float32)[:n]
        if has_size:
            out["image_size"] = np.array([rec["image_width"], rec["image_height"]], dtype=np.int32)
        if has_objects:
            out["class_ids"] = np.asarray(rec["objects"]).astype(np.int32)[:n]
        return out

    def stack(rows: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        out = {}
        for name_, spec in writer.schema.items():
            if name_ == "valid":
                continue
            if spec.per_item:
                buf = np.zeros((len(rows),) + spec.shape, dtype=spec.dtype)
                for i, r in enumerate(rows):
                    buf[i, : len(r[name_])] = r[name_]
                out[name_] = buf
            else:
                out[name_] = np.stack([np.asarray(r[name_]) for r in rows]).astype(spec.dtype)
        return out

    chunk, buf = 0, []
    stream = ((k, r) for k, r in _chain_first(first_key, first, records) if k in to_image)
    for k, rec in stream:
        if chunk in pending:
            buf.append(rows_of(rec, k))
        else:
            buf.append(None)
        if len(buf) == len(writer.chunk_keys(chunk)):
            if chunk in pending:
                writer.write_chunk(chunk, stack(buf))
            chunk, buf = chunk + 1, []
    fsv = writer.commit()
    report.append(f"regions [{len(fsv)}, {width}, {dim}] {dtype}; boxes: {'yes' if has_boxes else 'no'}, "
                  f"image sizes: {'yes' if has_size else 'no'}, class ids: {'yes' if has_objects else 'no'}")
    return fsv, report


def _chain_first(k, r, rest):
    yield k, r
    yield from rest


def _check_regions(fsv) -> None:
    need = {"regions", "count"}
    if not need <= set(fsv.array_names):
        raise FeatstoreError(f"{fsv.ref} has no region features ({', '.join(fsv.array_names)}); export takes an image "
                             f"region set (grid, roi, detector, dinov2 or an import)")


def _records(fsv, block: int = 256) -> Iterator[Tuple[str, dict]]:
    _check_regions(fsv)
    names = [n for n in ("regions", "boxes", "image_size", "class_ids", "scores") if n in fsv.array_names]
    keys = list(fsv.keys)
    for start in range(0, len(keys), block):
        ks = keys[start:start + block]
        data = fsv.select(ks, names)
        for i, k in enumerate(ks):
            n = int(data["count"][i])
            rec = {"features": data["regions"][i, :n].astype(np.float32), "num_boxes": n}
            if "boxes" in data:
                rec["bbox"] = data["boxes"][i, :n].astype(np.float32)
            if "image_size" in data:
                rec["image_width"], rec["image_height"] = (int(v) for v in data["image_size"][i])
            if "class_ids" in data:
                rec["objects"] = data["class_ids"][i, :n].astype(np.int64)
            if "scores" in data:
                rec["scores"] = data["scores"][i, :n].astype(np.float32)
            yield k, rec


def export_features(fsv, out_path: str, fmt: str) -> int:
    """Write a region set version to ``out_path`` in ``fmt``; returns the number of records."""
    _check_format(fmt)
    if os.path.exists(out_path) and (not os.path.isdir(out_path) or os.listdir(out_path)):
        raise FeatstoreError(f"{out_path} already exists; choose a new path (exports never overwrite)")
    _check_regions(fsv)  # before anything is written: no half-made output for a text set
    if fmt == "mmf-lmdb":
        return len(write_mmf_lmdb(out_path, _records(fsv)))
    if fmt == "npy":
        return write_npy_folder(out_path, _records(fsv))
    names = [n for n in fsv.array_names]
    data = fsv.load(names)
    arrays = {"features": data["regions"], "num_boxes": data["count"]}
    if "boxes" in data:
        arrays["bbox"] = data["boxes"]
    if "image_size" in data:
        arrays["image_width"], arrays["image_height"] = data["image_size"][:, 0], data["image_size"][:, 1]
    for extra in ("class_ids", "scores", "pooled"):
        if extra in data:
            arrays["objects" if extra == "class_ids" else extra] = data[extra]
    write_hdf5(out_path, list(fsv.keys), arrays, {"featstore_ref": fsv.ref, "recipe": fsv.record["recipe"]})
    return len(fsv)
