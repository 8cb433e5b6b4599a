"""The on-disk layout of a store: file and folder names, checksums and digests, and the version record.

The writer (writer.py) and the reader (reader.py) both import this module and never each other::

    <store>/featstore.json               marks the directory (or bucket prefix) as a store
    <store>/sets/<name>/<version>/       one version (visible once its version.json exists):
        spec.json            what is being written (recipe, schema, n, chunk_rows, backend): written at start
        data.zarr/ | data.lmdb/   the arrays (see backends.py)
        chunks/<i>.json      one marker per finished chunk: its per-array checksums and failed keys
        version.json         the commit record; a version is visible to readers only once this exists
        .lock                held while a writer creates the version (local stores)
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np

from ..errors import CorruptDataError, FeatstoreError
from ..jsonio import canonical_json
from .location import Location

MARKER = "featstore.json"
SETS = "sets"
SPEC_FILE = "spec.json"
RECORD_FILE = "version.json"
CHUNK_DIR = "chunks"
LOCK_FILE = ".lock"
DIGEST_FIELD = "record_sha256"


def array_checksum(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def record_digest(record: dict) -> str:
    """sha256 of a version record (every field but the digest itself), checked whenever it is opened."""
    body = {k: v for k, v in record.items() if k != DIGEST_FIELD}
    return hashlib.sha256(canonical_json(body, "version record").encode()).hexdigest()


def keys_digest(keys: Sequence[str]) -> str:
    h = hashlib.sha256()
    for k in keys:
        h.update(k.encode("utf-8") + b"\n")
    return h.hexdigest()


def read_record(loc: Location) -> dict:
    """A version's commit record, whose digest (when it has one: records written since it exists) matches."""
    path = loc.url_of(RECORD_FILE)
    try:
        record = loc.read_json(RECORD_FILE)
    except FileNotFoundError:
        raise FeatstoreError(f"{loc.url} is not a complete feature set version") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptDataError(f"version record {path} is damaged (not JSON: {e}); rerun the extraction that "
                               f"wrote it to recommit it, or remove the version") from None
    need = ("version", "schema", "n", "backend", "chunk_rows", "chunks")
    if not isinstance(record, dict) or any(k not in record for k in need):
        raise CorruptDataError(f"version record {path} is damaged (fields missing); rerun the extraction that "
                               f"wrote it to recommit it, or remove the version")
    if DIGEST_FIELD in record and record_digest(record) != record[DIGEST_FIELD]:
        raise CorruptDataError(f"version record {path} was edited or damaged (its digest does not match); rerun "
                               f"the extraction that wrote it to recommit it, or remove the version")
    return record


def intact_record(loc: Location) -> Optional[dict]:
    """The version's record, or None when it has none or a damaged one (`featstore verify` names it)."""
    if not loc.exists(RECORD_FILE):
        return None
    try:
        return read_record(loc)
    except CorruptDataError:
        return None
