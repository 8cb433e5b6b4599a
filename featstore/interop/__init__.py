"""Read and write the region-feature files other tools produce (format level only; the store wiring
lives elsewhere).

A *record* holds the features of ONE image key::

    {"features": float32 [N, D] (D = 2048 for Faster R-CNN/VinVL regions; more dims read as [-1, D]),
     "bbox": float32 [N, 4] (x1, y1, x2, y2 in image pixels; zero rows past N are padding; VinVL's [N, 6],
             already normalised, is kept as its own array),
     "num_boxes": int, "image_width": int, "image_height": int,
     "objects": int [N] (optional), "cls_prob": float32 [N, C] or [N] (optional), ...}

Arrays are returned with the dtype they were stored with. ``check_record`` validates the shapes and
renames the common aliases (``boxes`` -> ``bbox``, ``image_w``/``image_h`` -> ``image_width``/``image_height``);
other keys pass through unchanged.

Modules: ``safe_pickle`` (numpy-only unpickling), ``mmf_lmdb`` (MMF feature LMDBs), ``hdf5`` (table and
per-key-group HDF5), ``npy_folder`` (MMF extraction folders of ``<key>.npy`` + ``<key>_info.npy``).
"""
from __future__ import annotations

from .records import ALIASES, INT_FIELDS, check_record  # noqa: F401
from .hdf5 import iter_hdf5_records, read_hdf5, write_hdf5  # noqa: E402
from .mmf_lmdb import MMFLmdbReader, match_keys, normalize_key, read_mmf_lmdb, write_mmf_lmdb  # noqa: E402
from .npy_folder import read_npy_folder, write_npy_folder  # noqa: E402
from .safe_pickle import safe_load, safe_loads  # noqa: E402

__all__ = ["check_record", "safe_load", "safe_loads", "read_mmf_lmdb", "write_mmf_lmdb", "MMFLmdbReader",
           "normalize_key", "match_keys", "read_hdf5", "write_hdf5", "iter_hdf5_records", "read_npy_folder",
           "write_npy_folder"]
