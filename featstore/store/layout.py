"""The on-disk layout of a store: file and folder names, checksums and digests, and the version record.

The writer (writer.py) and the reader (reader.py) both import this module and never each other::

    <store>/featstore.json               marks the directory (or bucket prefix) as a store
    <store>/sets/<name>/<version>/       one version (visible once its version.json exists):
        spec.json            what is being written (recipe, schema, n, chunk_rows, backend): written at start
        data.zarr/ | data.lmdb/   the arrays (see backends.py)
        chunks/<i>.json      one marker per finished chunk: its per-array checksums and failed keys
        version.json         the commit record; a version is visible to readers only once this exists
        .lock                held while a writer creates the version (local stores)

The marker and every version record carry ``format_version`` (``FORMAT_VERSION``): a record without one
is from an older store (format 1); a reader refuses a higher one, which a newer featstore-heads wrote.
The format version is not part of the recipe, so it never changes a version id.
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np

from ..errors import CorruptDataError, FeatstoreError
from ..jsonio import canonical_json
from ..version import __version__
from .location import Location

MARKER = "featstore.json"
SETS = "sets"
SPEC_FILE = "spec.json"
RECORD_FILE = "version.json"
CHUNK_DIR = "chunks"
LOCK_FILE = ".lock"
DIGEST_FIELD = "record_sha256"
FORMAT_FIELD = "format_version"
FORMAT_VERSION = 1  # of the layout and its records: raise it when a reader of this one would misread them


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
    if isinstance(record, dict):
        check_format(record, loc)
    need = ("version", "schema", "n", "backend", "chunk_rows", "chunks")
    if not isinstance(record, dict) or any(k not in record for k in need):
        raise CorruptDataError(f"version record {path} is damaged (fields missing); rerun the extraction that "
                               f"wrote it to recommit it, or remove the version")
    if DIGEST_FIELD in record and record_digest(record) != record[DIGEST_FIELD]:
        raise CorruptDataError(f"version record {path} was edited or damaged (its digest does not match); rerun "
                               f"the extraction that wrote it to recommit it, or remove the version")
    return record


def check_format(record: dict, loc: Location) -> None:
    """A record this featstore-heads can read: format 1 (also when it has no format version) up to ours."""
    have = record.get(FORMAT_FIELD, 1)
    if isinstance(have, bool) or not isinstance(have, int) or have < 1:
        raise CorruptDataError(f"version record {loc.url_of(RECORD_FILE)} is damaged ({FORMAT_FIELD} {have!r} is "
                               f"not a positive integer); rerun the extraction that wrote it to recommit it, or "
                               f"remove the version")
    if have > FORMAT_VERSION:
        raise FeatstoreError(f"feature set version {loc.url} is in store format {have}, newer than this "
                             f"featstore-heads {__version__} reads (format {FORMAT_VERSION}); upgrade "
                             f"featstore-heads (pip install -U featstore-heads) to read it")


def intact_record(loc: Location) -> Optional[dict]:
    """The version's record, or None when it has none or a damaged one (`featstore verify` names it); a
    record in a newer format raises (never taken for a damaged one that a writer would recommit)."""
    if not loc.exists(RECORD_FILE):
        return None
    try:
        return read_record(loc)
    except CorruptDataError:
        return None
