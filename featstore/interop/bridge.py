"""Import region features users already have into the store, and export store versions back out.

Formats: ``mmf-lmdb`` (Facebook/MMF ``detectron.lmdb``), ``hdf5`` (table or per-key groups) and ``npy``
(MMF's per-image ``<key>.npy`` + ``<key>_info.npy`` folders). Records are streamed chunk by chunk, so an
import never holds more than one store chunk in memory.

An imported set is an image region set keyed by image key: ``regions`` [N, R, D] (per item; R = the
largest record's row count unless ``max_regions``), ``count`` (the rows each record stores, all of them
stored), ``pooled`` (float64 mean of those rows) and, when every record has them, ``num_boxes`` [N] (MMF's
count of boxes with non-zero confidence, its own array, kept as written even above the rows), ``image_size``
[N, 2] (width, height) and one per-region array per record field whose first axis is the record's rows.
MMF's reader keeps the first ``max_features`` rows (100 by default) with the mask all ones, so up to 100 rows
a set reads as MMF reads it, and past 100 heads' ``max_regions`` 100 does (the report says so).
Records with boxes but no sizes take ``image_size`` from the ``--dataset``'s image files (their headers, as
displayed), recorded in the recipe; without them the report says heads get no box locations.

Names (``IMPORT_NAMES``; the export maps them back): ``features`` <-> ``regions``, ``bbox`` <-> ``boxes``,
``objects`` <-> ``class_ids``; every other per-region field (``cls_prob``, ``scores``, ``attr_ids``,
``attr_scores``, ...) keeps its name and dtype both ways, so whatever arrays a set has are exported. A
``bbox`` of more than 4 columns (VinVL's normalised [N, 6]) is not pixel boxes: it keeps its name ``bbox``.
Non-array fields (MMF's ``feature_path``) are not imported; the report names them.

The ``mmf-lmdb`` export pads ``bbox`` with zero rows to the set's width R (MMF's reader pads the features to
``max_features`` and its collate needs every sample's ``bbox`` as long) and writes ``None`` for the fields
MMF's ``lmdb_conversion.py --mode extract`` reads that a set lacks (``objects``, ``cls_prob``, ...).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import FeatstoreError
from ..store import ArraySpec, Recipe, Store
from .records import check_record
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


# record field <-> store array, for the fields whose names differ; every other per-region array of a record
# (``cls_prob``, ``scores``, ``attr_ids``, ...: first axis = the record's rows) keeps its own name both ways.
IMPORT_NAMES = {"features": "regions", "bbox": "boxes", "objects": "class_ids"}
EXPORT_NAMES = {v: k for k, v in IMPORT_NAMES.items()}
SCALARS = ("num_boxes", "image_width", "image_height")  # per-record integers; the sizes become ``image_size``
NOT_EXPORTED = ("count", "valid", "pooled", "image_size", "num_boxes")
MMF_MAX_FEATURES = 100  # MMF's FeaturesDatabase default (``dataset_config.<dataset>.max_features``)
EXTRACT_FIELDS = ("bbox", "num_boxes", "image_height", "image_width", "objects", "cls_prob")  # lmdb_conversion


class SourceShape:
    """What a pre-pass over the source found: the largest row count, the feature size, and per field the
    row shape and dtype of the per-region arrays and which scalars every record has."""

    def __init__(self):
        self.rows, self.dim, self.n = 0, None, 0
        self.arrays: Dict[str, Tuple[Tuple[int, ...], str]] = {}
        self.partial: Dict[str, int] = {}
        self.scalars: Dict[str, int] = {}
        self.ignored: set = set()
        self.over: List[Tuple[str, int, int]] = []  # (key, num_boxes, rows) where num_boxes > rows

    def add(self, key: str, rec: dict, path: str) -> None:
        f = rec["features"]
        if self.dim is None:
            self.dim = int(f.shape[1])
        if f.shape[1] != self.dim:
            raise FeatstoreError(f"{path}[{key}]: features have shape {f.shape}, expected [N, {self.dim}] like the "
                                 f"first record")
        self.rows, self.n = max(self.rows, int(f.shape[0])), self.n + 1
        if rec.get("num_boxes") is not None and rec["num_boxes"] > f.shape[0]:
            self.over.append((key, rec["num_boxes"], int(f.shape[0])))
        for name, v in rec.items():
            if name == "features":
                continue
            if name in SCALARS and v is not None:
                self.scalars[name] = self.scalars.get(name, 0) + 1
            elif isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == f.shape[0]:
                got = (tuple(v.shape[1:]), v.dtype.name)
                if self.arrays.setdefault(name, got) != got:
                    raise FeatstoreError(f"{path}[{key}]: {name!r} has rows {got[0]} {got[1]}, other records "
                                         f"{self.arrays[name][0]} {self.arrays[name][1]}; the records are inconsistent")
                self.partial[name] = self.partial.get(name, 0) + 1
            elif v is not None:
                self.ignored.add(str(name))

    def kept(self) -> List[str]:
        """Per-region fields present in every record (a field some records lack cannot round-trip)."""
        return [n for n in self.arrays if self.partial[n] == self.n]

    def store_names(self) -> Dict[str, str]:
        """Record field -> store array of the kept per-region fields (``IMPORT_NAMES``; a ``bbox`` of other than
        4 columns, VinVL's normalised [N, 6], keeps its own name: ``boxes`` are pixel x1 y1 x2 y2)."""
        return {n: n if n == "bbox" and self.arrays[n][0] != (4,) else IMPORT_NAMES.get(n, n) for n in self.kept()}

    def notes(self) -> List[str]:
        """Report lines on what the records hold that MMF reads its own way."""
        out = []
        if self.rows > MMF_MAX_FEATURES:
            out.append(f"records hold up to {self.rows} rows, all stored (count = rows); MMF's reader keeps the first "
                       f"max_features ({MMF_MAX_FEATURES} by default) with the mask all ones: train with --max-regions "
                       f"{MMF_MAX_FEATURES} to read them as MMF does")
        if self.over:
            key, nb, rows = self.over[0]
            out.append(f"num_boxes exceeds the stored rows in {len(self.over)} records (e.g. {key!r}: {nb} > {rows} "
                       f"rows, as MMF's frcnn/extract_features_frcnn.py writes --num_features): kept as written in "
                       f"num_boxes; count and the mask follow the stored rows, as in MMF's reader")
        if self.store_names().get("bbox") == "bbox":
            out.append(f"bbox has {self.arrays['bbox'][0][0]} columns (VinVL's normalised boxes), not pixel x1 y1 x2 "
                       f"y2: imported as the per-region array 'bbox', not 'boxes', so heads get no box locations")
        return out


def _scan(records: Iterator[Tuple[str, dict]], to_image: Dict[str, str], path: str) -> SourceShape:
    shape = SourceShape()
    for k, rec in records:
        if k in to_image:
            shape.add(k, rec, path)
    return shape


def _import_schema(shape: SourceShape, width: int, dtype: str) -> Dict[str, ArraySpec]:
    schema = {"regions": ArraySpec((width, shape.dim), dtype, True), "pooled": ArraySpec((shape.dim,), dtype)}
    for field, name in shape.store_names().items():
        rows, dt = shape.arrays[field]
        schema[name] = ArraySpec((width,) + rows, dt, True)
    if shape.scalars.get("num_boxes") == shape.n:
        schema["num_boxes"] = ArraySpec((), "int32")
    if shape.scalars.get("image_width") == shape.n and shape.scalars.get("image_height") == shape.n:
        schema["image_size"] = ArraySpec((2,), "int32")
    return schema


def _match_source(src_keys: List[str], dataset, path: str, report: List[str]) -> Dict[str, str]:
    """source key -> image key (matched to the dataset's image keys, or the file stems)."""
    if dataset is not None:
        km = match_keys(src_keys, dataset.image_keys())
        report.append(f"key matching: {km.summary()}")
        if km.missing:
            report.append(f"  image keys without features (first 5): {', '.join(km.missing[:5])}")
        if not len(km):
            raise FeatstoreError(f"no key of {path} matches an image key of the dataset (e.g. source "
                                 f"{src_keys[0]!r} vs dataset {dataset.image_keys()[0]!r}); check the dataset")
        return {str(v if not isinstance(v, bytes) else v.decode()): k for k, v in km.items()}
    to_image: Dict[str, str] = {}
    numbers: Dict[int, List[str]] = {}
    for k in src_keys:
        ik = normalize_key(k)
        if ik in to_image.values():
            raise FeatstoreError(f"source keys {k!r} and another both name image {ik!r}; pass --dataset to "
                                 f"match keys to the dataset's images")
        to_image[k] = ik
        if ik.isascii() and ik.isdigit():
            numbers.setdefault(int(ik), []).append(k)
    for number, ks in numbers.items():  # '1235' and '01235': MMF's reader takes '1235' for image 01235
        plain = [k for k in ks if to_image[k] == str(number)]
        if plain and len(ks) > 1:
            raise FeatstoreError(f"source keys {', '.join(map(repr, ks[:3]))} all name image number {number} (MMF's "
                                 f"reader takes {plain[0]!r}, the number without leading zeros, first); remove the "
                                 f"duplicates from the feature file")
    return to_image


NO_SIZES = ("boxes without image sizes (the source has no image_width / image_height): heads get no box locations "
            "(ViLBERT's location embedding reads zeros); import with --dataset and its images to read the sizes "
            "from the image files")


def _displayed_size(path: Optional[str]) -> Optional[Tuple[int, int]]:
    """(width, height) of an image file as displayed (EXIF orientation applied, as ``load_image`` decodes it for
    the extractors), from its header; None when it cannot be opened."""
    from PIL import Image, UnidentifiedImageError

    if path is None:
        return None
    try:
        with Image.open(path) as img:
            w, h = img.size
            return (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)
    except (OSError, UnidentifiedImageError, ValueError, TypeError, SyntaxError):
        return None


def _sizes_from_images(dataset, to_image: Dict[str, str], report: List[str]) -> Optional[Dict[str, Tuple[int, int]]]:
    """source key -> (width, height) of its dataset image, for records with boxes but no image sizes; None (and
    a report line) when an image cannot be opened."""
    paths = dataset.image_paths()
    sizes = {}
    for src, key in to_image.items():
        size = _displayed_size(paths.get(key))
        if size is None:
            report.append(f"image sizes not read: image {key!r} ({paths.get(key)}) cannot be opened")
            return None
        sizes[src] = size
    report.append(f"image sizes read from the dataset's {len(sizes)} image files (the source has no "
                  "image_width / image_height)")
    return sizes


def _image_sizes(schema: Dict[str, ArraySpec], dataset, to_image: Dict[str, str], report: List[str]):
    """Sizes from the dataset's images when the records have boxes but none (``schema`` gains
    ``image_size``); None when the records have them, or when they cannot be read (then ``NO_SIZES``)."""
    if "boxes" not in schema or "image_size" in schema:
        return None
    sizes = _sizes_from_images(dataset, to_image, report) if dataset is not None else None
    if sizes is None:
        report.append(NO_SIZES)
    else:
        schema["image_size"] = ArraySpec((2,), "int32")
    return sizes


def _rows_of(rec: dict, key: str, schema: Dict[str, ArraySpec], width: int, path: str,
             sizes: Optional[Dict[str, Tuple[int, int]]], names: Dict[str, str]) -> Dict[str, np.ndarray]:
    """One record as store rows: every stored row kept (``count`` = rows); ``names`` (record field -> store
    array, ``SourceShape.store_names``) picks the per-region fields; ``sizes`` (source key -> width, height)
    stands in for records without image sizes."""
    f = np.asarray(rec["features"])
    n = int(f.shape[0])
    if n > width:
        raise FeatstoreError(f"{path}[{key}] has {n} regions but the set keeps {width}; pass --max-regions {n} "
                             f"(or more)")
    out = {"regions": f, "count": np.int32(n), "pooled": f.astype(np.float64).mean(0) if n else np.zeros(f.shape[1])}
    for field, name in names.items():
        if name in schema and schema[name].per_item and name != "regions":
            out[name] = np.asarray(rec[field])
    if "num_boxes" in schema:
        out["num_boxes"] = np.int32(rec["num_boxes"])
    if "image_size" in schema:
        size = sizes[key] if sizes is not None else (rec["image_width"], rec["image_height"])
        out["image_size"] = np.array(size, dtype=np.int32)
    return out


def _stack(rows: List[Dict[str, np.ndarray]], schema: Dict[str, ArraySpec]) -> Dict[str, np.ndarray]:
    out = {}
    for name, spec in schema.items():
        if name == "valid":
            continue
        if spec.per_item:
            buf = np.zeros((len(rows),) + spec.shape, dtype=spec.dtype)
            for i, r in enumerate(rows):
                buf[i, : len(r[name])] = r[name]
            out[name] = buf
        else:
            out[name] = np.stack([np.asarray(r[name]) for r in rows]).astype(spec.dtype)
    return out


def import_features(store: Store, path: str, fmt: str, name: str, *, dataset=None, max_regions: Optional[int] = None,
                    dtype: str = "float32", backend: str = "zarr", chunk_rows: int = 64):
    """Import ``path`` as feature set ``name``. Returns (version, report lines).

    With ``dataset``, source keys are matched to its image keys (leading zeros, path separators and file
    extensions do not matter) and only matched keys are imported; without it keys are normalised to file stems.
    A pre-pass sizes the region axis from the largest record (or ``max_regions``); every stored row is kept
    (MMF's reader keeps the first ``max_features``, 100 by default: the report says so past 100 rows).
    """
    _check_format(fmt)
    if dtype not in ("float16", "float32"):
        raise FeatstoreError(f"dtype {dtype!r} is not supported for imports; use float16 or float32")
    path = os.fspath(path)
    src_keys, iterate = _open_source(path, fmt)
    if not src_keys:
        raise FeatstoreError(f"{fmt} source {path} holds no records")
    report: List[str] = []
    to_image = _match_source(src_keys, dataset, path, report)
    keys = [to_image[k] for k in src_keys if k in to_image]
    shape = _scan(iterate(), to_image, path)
    width = int(max_regions or shape.rows)
    schema = _import_schema(shape, width, dtype)
    report.extend(shape.notes())
    sizes = _image_sizes(schema, dataset, to_image, report)
    config = {"source": os.path.basename(os.path.normpath(path)), "max_regions": width, "dtype": dtype,
              "source_sha256": source_fingerprint(path, fmt)}
    if sizes is not None:  # only then, so the versions of sources with their own sizes keep their ids
        config["image_size"] = "dataset image files"
    recipe = Recipe(extractor=f"import:{fmt}", config=config,
                    manifest_fingerprint=dataset.fingerprint if dataset is not None else "")
    writer = store.writer(name, recipe, keys, schema, key_kind="image_key", modality="image", chunk_rows=chunk_rows,
                          backend=backend, meta={"imported_from": os.path.abspath(path)})
    if writer.complete:
        report.append("already imported: the same source and options name an existing version")
        return writer.commit(), report
    _write_chunks(writer, ((k, r) for k, r in iterate() if k in to_image), schema, width, path, sizes,
                  shape.store_names())
    fsv = writer.commit()
    report.append(_summary(fsv, schema, shape, width, dtype))
    return fsv, report


def _write_chunks(writer, stream, schema, width: int, path: str, sizes, names: Dict[str, str]) -> None:
    pending = set(writer.pending_chunks())
    chunk, buf = 0, []
    for k, rec in stream:
        buf.append(_rows_of(rec, k, schema, width, path, sizes, names) if chunk in pending else None)
        if len(buf) == len(writer.chunk_keys(chunk)):
            if chunk in pending:
                writer.write_chunk(chunk, _stack(buf, writer.schema))
            chunk, buf = chunk + 1, []


def _summary(fsv, schema, shape: SourceShape, width: int, dtype: str) -> str:
    yes = lambda n: "yes" if n in schema else "no"  # noqa: E731
    line = (f"regions [{len(fsv)}, {width}, {shape.dim}] {dtype}; boxes: {yes('boxes')}, image sizes: "
            f"{yes('image_size')}, class ids: {yes('class_ids')}")
    extra = [n for n in schema if n not in ("regions", "pooled", "boxes", "image_size", "class_ids")]
    if extra:
        line += f"; also {', '.join(extra)}"
    dropped = sorted(set(shape.arrays) - set(shape.kept())) + sorted(shape.ignored)
    if dropped:
        line += f"; not imported: {', '.join(dropped)} (not an array per region in every record)"
    return line


def _check_regions(fsv) -> None:
    need = {"regions", "count"}
    if not need <= set(fsv.array_names):
        raise FeatstoreError(f"{fsv.ref} has no region features ({', '.join(fsv.array_names)}); export takes an image "
                             f"region set (grid, roi, detector, dinov2 or an import)")


def _records(fsv, block: int = 256, mmf: bool = False) -> Iterator[Tuple[str, dict]]:
    """(key, MMF record) per row: ``EXPORT_NAMES`` renamed, every per-region array cut to ``count`` rows,
    ``num_boxes`` from its own array when the set has one (else ``count``), ``image_size`` -> width/height.
    ``mmf``: as MMF's LMDB reader needs them (``_as_mmf``)."""
    _check_regions(fsv)
    names = [n for n in fsv.array_names if n not in ("count", "valid", "pooled")]
    per_region = [n for n in names if fsv.spec(n).per_item]
    box = next((a for a in per_region if EXPORT_NAMES.get(a, a) == "bbox"), None)  # boxes (or VinVL's bbox)
    keys = list(fsv.keys)
    for start in range(0, len(keys), block):
        ks = keys[start:start + block]
        data = fsv.select(ks, names)
        for i, k in enumerate(ks):
            n = int(data["count"][i])
            rec = {EXPORT_NAMES.get(a, a): data[a][i, :n] for a in per_region}
            rec["features"] = rec["features"].astype(np.float32)
            if "objects" in rec:
                rec["objects"] = rec["objects"].astype(np.int64)  # what MMF's extractor writes (torch.argmax)
            rec["num_boxes"] = int(data["num_boxes"][i]) if "num_boxes" in data else n
            if "image_size" in data:
                rec["image_width"], rec["image_height"] = (int(v) for v in data["image_size"][i])
            yield k, (_as_mmf(rec, data[box][i] if box is not None else None) if mmf else rec)


def _as_mmf(rec: dict, boxes: Optional[np.ndarray]) -> dict:
    """``bbox`` zero-padded to the set's width (all of ``boxes``' rows; the features stay cut to ``count``, MMF's
    mask): MMF's reader pads the features to ``max_features`` and not ``bbox``, and its collate fails on samples
    whose ``bbox`` lengths differ. ``None`` for the fields ``lmdb_conversion.py --mode extract`` reads that the
    set lacks (as MMF's ``convert`` writes them), which our import skips."""
    if boxes is not None:
        bbox = np.zeros_like(boxes)
        n = len(rec["bbox"])
        bbox[:n] = boxes[:n]
        rec["bbox"] = bbox
    for name in EXTRACT_FIELDS:
        rec.setdefault(name, None)
    return rec


def export_notes(fsv, fmt: str) -> List[str]:
    """What MMF needs to read an export of ``fsv`` as written (``export_features`` prints them)."""
    if fmt not in ("mmf-lmdb", "npy"):
        return []
    notes, width = [], fsv.spec("regions").shape[0]
    if fmt == "mmf-lmdb" and width != MMF_MAX_FEATURES:
        notes.append(f"note: {fsv.ref} holds {width} regions per image, not MMF's default max_features "
                     f"{MMF_MAX_FEATURES}: run MMF with dataset_config.<dataset>.max_features={width} (bbox is padded "
                     f"to {width} rows and MMF pads the features to max_features; they must agree)")
    if "boxes" in fsv.array_names and "image_size" not in fsv.array_names:
        notes.append(f"warning: {fsv.ref} has boxes but no image_size, so the export has no image_width / "
                     f"image_height, which MMF's TransformerBboxProcessor needs; re-import the set with --dataset and "
                     f"its images (the sizes are read from the image files) and export that")
    return notes


def _make_parent(out_path: str) -> None:
    """The folder ``out_path`` goes in, made when missing (as ``mkdir -p``), or a one-line error."""
    parent = os.path.dirname(os.path.abspath(out_path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise FeatstoreError(f"{out_path}: its folder {parent} cannot be made ({e.strerror}); choose another "
                             "--out") from None


def export_features(fsv, out_path: str, fmt: str) -> int:
    """Write a region set version to ``out_path`` in ``fmt``; returns the number of records (``export_notes``:
    the lines to show once it is written)."""
    _check_format(fmt)
    if os.path.exists(out_path) and (not os.path.isdir(out_path) or os.listdir(out_path)):
        raise FeatstoreError(f"{out_path} already exists; choose a new path (exports never overwrite)")
    _check_regions(fsv)  # before anything is written: no half-made output for a text set
    _make_parent(out_path)
    if fmt == "mmf-lmdb":
        return len(write_mmf_lmdb(out_path, _records(fsv, mmf=True)))
    if fmt == "npy":
        return write_npy_folder(out_path, _records(fsv))
    data = fsv.load([n for n in fsv.array_names])
    arrays = {EXPORT_NAMES.get(n, n): data[n] for n in fsv.array_names
              if n not in NOT_EXPORTED and fsv.spec(n).per_item}
    arrays["num_rows"] = data["count"]  # the stored rows (the table pads to the widest); see hdf5._unpad
    arrays["num_boxes"] = data["num_boxes"] if "num_boxes" in data else data["count"]
    if "image_size" in data:
        arrays["image_width"], arrays["image_height"] = data["image_size"][:, 0], data["image_size"][:, 1]
    if "pooled" in data:
        arrays["pooled"] = data["pooled"]
    write_hdf5(out_path, list(fsv.keys), arrays, {"featstore_ref": fsv.ref, "recipe": fsv.record["recipe"]})
    return len(fsv)
