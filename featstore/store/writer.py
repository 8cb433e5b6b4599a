"""Writing one feature set version: in chunks, by one or several writers, resumable, committed atomically.

A version directory's files are named in layout.py. A chunk's marker is written only after its data, so a
killed writer leaves at most one chunk without a marker; rerunning the same recipe opens the same version and writes only the chunks that have none.
Writers on disjoint chunks never touch the same object, so several processes can fill one version.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from ..errors import FeatstoreError
from ..version import __version__
from .backends import COUNT, RESERVED, VALID, full_schema, make_backend
from .layout import CHUNK_DIR, DIGEST_FIELD, FORMAT_FIELD, FORMAT_VERSION, LOCK_FILE, RECORD_FILE, SPEC_FILE, \
    array_checksum, intact_record, keys_digest, record_digest
from .location import Location
from .spec import ArraySpec, Recipe

@contextlib.contextmanager
def os_errors(what: str, where: str) -> Iterator[None]:
    """OS and LMDB write errors as one line: what failed, where, what to do (written chunks are kept)."""
    import errno

    import lmdb

    resume = "rerun the same command to resume (finished chunks are kept)"
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise FeatstoreError(f"no space left on the device of {where} while writing {what}; free space, then "
                                 f"{resume}") from None
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise FeatstoreError(f"{where} is not writable ({e.strerror}) while writing {what}; fix its permissions "
                                 f"or pass another --store") from None
        raise FeatstoreError(f"cannot write {what} to {where} ({e.strerror or e}); check the disk, then {resume}") \
            from None
    except lmdb.Error as e:
        if _free_bytes(where) < (1 << 20):  # LMDB reports a full disk as an input/output error
            raise FeatstoreError(f"no space left on the device of {where} while writing {what} (LMDB: {e}); free "
                                 f"space, then {resume}") from None
        raise FeatstoreError(f"LMDB failed writing {what} in {where} ({e}); check the disk, then {resume}") from None


def _free_bytes(where: str) -> int:
    import shutil

    try:
        return shutil.disk_usage(where).free
    except OSError:
        return 1 << 62


class VersionWriter:
    """Fills one version. Obtain it from ``Store.writer``; see the module docstring for the protocol.

    ``open_version(loc, name)`` opens the committed version for ``commit`` to return (the store passes its
    reader, so the writer never imports it).
    """

    def __init__(self, loc: Location, name: str, recipe: Recipe, keys: Sequence[str], schema: Dict[str, ArraySpec],
                 *, key_kind: str, modality: str, open_version: Callable[[Location, str], Any], chunk_rows: int = 64,
                 backend: str = "zarr", backend_options: Optional[dict] = None, meta: Optional[dict] = None):
        keys = [str(k) for k in keys]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise FeatstoreError(f"feature set {name!r}: key {dup!r} appears twice; keys must be unique per version")
        if chunk_rows < 1:
            raise FeatstoreError(f"chunk_rows must be >= 1, got {chunk_rows}")
        for k, s in schema.items():
            if not isinstance(s, ArraySpec):
                raise FeatstoreError(f"schema entry {k!r} must be an ArraySpec, got {type(s).__name__}")
        reserved = sorted(set(schema) & RESERVED)
        if reserved:
            raise FeatstoreError(f"array name {reserved[0]!r} is reserved (the store uses {', '.join(sorted(RESERVED))}); "
                                 f"rename it")
        self.loc, self.name, self.recipe, self.keys = loc, name, recipe, keys
        self.version = recipe.version_id
        self.user_schema = dict(schema)
        self.schema = full_schema(schema)
        self.key_kind, self.modality = key_kind, modality
        self.chunk_rows, self.backend_kind = int(chunk_rows), backend
        self.backend_options = dict(backend_options or {})
        if backend == "zarr":  # codec choice per array ("auto" compression) depends on the modality
            self.backend_options.setdefault("modality", modality)
        self.meta = dict(meta or {})
        self.open_version = open_version
        self.backend = make_backend(backend, loc, len(keys), self.schema, self.chunk_rows, self.backend_options)
        self.complete = intact_record(loc) is not None  # a damaged record is recommitted
        if self.complete:
            self._check_backend(loc.read_json(RECORD_FILE).get("backend"))
        else:
            self._create_or_open()

    def _check_backend(self, have: Optional[str]) -> None:
        """The backend is not part of the version id: the same recipe on another backend is a conflict."""
        if have and have != self.backend_kind:
            raise FeatstoreError(f"version {self.name}@{self.version} already exists on the {have} backend (the "
                                 f"backend is not part of the version id); read it as it is, or remove it with "
                                 f"`featstore rm {self.name}@{self.version}` and run again with --backend "
                                 f"{self.backend_kind}")

    # -- set-up --------------------------------------------------------------------------------------
    def _spec_record(self) -> dict:
        return {
            "name": self.name, "version": self.version, "recipe": self.recipe.to_dict(),
            "schema": {k: v.to_dict() for k, v in self.user_schema.items()},
            "key_kind": self.key_kind, "modality": self.modality, "n": len(self.keys),
            "keys_sha256": keys_digest(self.keys), "chunk_rows": self.chunk_rows,
            "backend": self.backend_kind, "backend_options": self.backend_options, "meta": self.meta,
        }

    def _create_or_open(self) -> None:
        want = self._spec_record()
        with self.loc.lock(LOCK_FILE):  # concurrent writers create the version once (local stores)
            if self.loc.exists(SPEC_FILE):
                self._clean_stale_tmp()
                have = self.loc.read_json(SPEC_FILE)
                for field in ("schema", "n", "keys_sha256", "chunk_rows", "backend", "key_kind", "modality"):
                    if have.get(field) != want[field]:
                        raise FeatstoreError(
                            f"version {self.name}@{self.version} was started with a different {field}; remove the "
                            f"unfinished version with `featstore rm {self.name}@{self.version}` and run again")
                return
            with os_errors(f"the new version {self.name}@{self.version}", self.loc.url):
                self.backend.create(self.keys)
                self.loc.write_json(want, SPEC_FILE)  # last: its presence means the arrays exist

    STALE_TMP_S = 60.0  # a live writer replaces its temporary file within milliseconds

    def _clean_stale_tmp(self) -> None:
        """Remove the ``*.tmp-*`` files a killed writer left (atomic writes that never got renamed)."""
        for folder in ((), (CHUNK_DIR,)):
            self.loc.remove_stale_tmp(*folder, older_than_s=self.STALE_TMP_S)

    # -- chunks --------------------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return self.backend.n_chunks if self.keys else 0

    def chunk_slice(self, chunk: int) -> slice:
        return slice(chunk * self.chunk_rows, min(len(self.keys), (chunk + 1) * self.chunk_rows))

    def chunk_keys(self, chunk: int) -> List[str]:
        return self.keys[self.chunk_slice(chunk)]

    def done_chunks(self) -> List[int]:
        if self.complete:
            return list(range(self.n_chunks))
        return sorted(int(n[:-5]) for n in self.loc.listdir(CHUNK_DIR) if n.endswith(".json") and n[:-5].isdigit())

    def chunk_taken(self, chunk: int) -> bool:
        """Another writer finished this chunk (its marker exists) or committed the version meanwhile."""
        return self.committed_elsewhere() or self.loc.exists(CHUNK_DIR, f"{chunk}.json")

    def committed_elsewhere(self) -> bool:
        """The version was committed by another process after this writer opened it."""
        return not self.complete and self.loc.exists(RECORD_FILE)

    def pending_chunks(self) -> List[int]:
        done = set(self.done_chunks())
        return [c for c in range(self.n_chunks) if c not in done]

    def _check_array(self, name: str, arr: np.ndarray, rows: int) -> np.ndarray:
        spec = self.schema[name]
        arr = np.asarray(arr)
        where = f"feature set {self.name!r} array {name!r}"
        if arr.ndim != 1 + len(spec.shape):
            raise FeatstoreError(f"{where}: got shape {arr.shape}, expected (rows,)+{spec.shape}; fix the extractor's output")
        tail = arr.shape[1:]
        if spec.per_item:
            if tail[0] > spec.shape[0] or tail[1:] != spec.shape[1:]:
                raise FeatstoreError(f"{where}: got shape {arr.shape}, expected (rows, <= {spec.shape[0]})+{spec.shape[1:]}")
        elif tail != spec.shape:
            raise FeatstoreError(f"{where}: got shape {arr.shape}, expected (rows,)+{spec.shape}")
        if arr.shape[0] != rows:
            raise FeatstoreError(f"{where}: got {arr.shape[0]} rows, expected {rows}")
        want = np.dtype(spec.dtype)
        if arr.dtype != want:
            same_kind = (arr.dtype.kind == want.kind or (arr.dtype.kind in "iu" and want.kind in "iu"))
            if not (same_kind and np.can_cast(arr.dtype, want, "same_kind")):
                raise FeatstoreError(f"{where}: got dtype {arr.dtype}, expected {want}; cast it before writing")
            arr = arr.astype(want)
        if spec.per_item and tail[0] < spec.shape[0]:
            pad = np.zeros((rows, spec.shape[0] - tail[0]) + spec.shape[1:], dtype=want)
            arr = np.concatenate([arr, pad], axis=1)
        return arr

    def write_chunk(self, chunk: int, arrays: Dict[str, np.ndarray], failures: Optional[Dict[str, str]] = None) -> None:
        """Write the rows of one chunk.

        ``arrays`` holds every schema array (and ``count`` when there are per-item arrays), either for all the
        chunk's rows or for only the rows that did not fail, in key order. ``failures`` maps the chunk's keys
        that could not be produced to a reason; those rows are stored as invalid (never as zeros a reader sees).
        """
        if self.complete:
            raise FeatstoreError(f"version {self.name}@{self.version} is complete and immutable; nothing to write")
        if not 0 <= chunk < self.n_chunks:
            raise FeatstoreError(f"chunk {chunk} is out of range 0..{self.n_chunks - 1}")
        failures = dict(failures or {})
        ck = self.chunk_keys(chunk)
        unknown = [k for k in failures if k not in set(ck)]
        if unknown:
            raise FeatstoreError(f"failures name keys outside chunk {chunk}: {unknown[:3]}")
        n = len(ck)
        ok = np.array([k not in failures for k in ck], dtype=bool)
        expected = set(self.schema) - {VALID}
        missing, extra = expected - set(arrays), set(arrays) - expected
        if missing or extra:
            raise FeatstoreError(f"feature set {self.name!r}: arrays {sorted(missing)} missing and {sorted(extra)} "
                                 f"unexpected for chunk {chunk}; the schema has {sorted(expected)}")
        rows_given = {len(np.asarray(a)) for a in arrays.values()} or {0}
        if len(rows_given) != 1:
            raise FeatstoreError(f"feature set {self.name!r}: arrays of chunk {chunk} have different row counts {sorted(rows_given)}")
        given = rows_given.pop()
        if given not in (n, int(ok.sum())):
            raise FeatstoreError(f"feature set {self.name!r}: chunk {chunk} has {n} keys ({n - int(ok.sum())} failed) "
                                 f"but the arrays have {given} rows")
        full: Dict[str, np.ndarray] = {}
        for name, arr in arrays.items():
            arr = self._check_array(name, arr, given)
            if given != n:
                buf = np.zeros((n,) + arr.shape[1:], dtype=arr.dtype)
                buf[ok] = arr
                arr = buf
            else:
                arr = arr.copy()
                arr[~ok] = 0
            full[name] = arr
        if COUNT in full:
            counts = full[COUNT]
            for name, spec in self.schema.items():
                if spec.per_item:
                    if np.any(counts > spec.shape[0]) or np.any(counts < 0):
                        raise FeatstoreError(f"feature set {self.name!r}: count exceeds {name!r}'s {spec.shape[0]} items")
                    beyond = np.arange(spec.shape[0])[None, :] >= counts[:, None]
                    full[name][beyond] = 0  # padding is always zeros, so checksums are deterministic
        full[VALID] = ok
        with os_errors(f"chunk {chunk} of {self.name}@{self.version}", self.loc.url):
            self._store_chunk(chunk, full, failures)

    def _store_chunk(self, chunk: int, full: Dict[str, np.ndarray], failures: Dict[str, str]) -> None:
        self.backend.write_chunk(chunk, full)
        sl = self.chunk_slice(chunk)
        self.loc.write_json({"chunk": chunk, "rows": [sl.start, sl.stop],
                             "checksums": {k: array_checksum(v) for k, v in sorted(full.items())},
                             "tags": self.backend.chunk_tags(chunk),
                             "failures": failures, "written": time.time(), "pid": os.getpid()},
                            CHUNK_DIR, f"{chunk}.json")

    def chunk_markers(self) -> list:
        """Every chunk's marker (rows, checksums, tags, failures), in chunk order; each must exist."""
        return [self.loc.read_json(CHUNK_DIR, f"{c}.json") for c in range(self.n_chunks)]

    # -- commit --------------------------------------------------------------------------------------
    def commit(self):
        """Make the version visible. Fails, listing what is missing, unless every chunk has been written."""
        if self.complete:
            return self.open_version(self.loc, self.name)
        pending = self.pending_chunks()
        if pending:
            raise FeatstoreError(f"version {self.name}@{self.version} is incomplete: {len(pending)} of {self.n_chunks} "
                                 f"chunks not written (first: {pending[:5]}); run the same command again to resume")
        missing = self.backend.missing_chunks()
        if missing:
            raise FeatstoreError(f"version {self.name}@{self.version}: chunk markers exist but data objects are missing "
                                 f"({missing[:3]}); remove the unfinished version and write it again")
        markers = self.chunk_markers()
        chunks = [{"chunk": c, "rows": m["rows"], "checksums": m["checksums"], "tags": m.get("tags", {})}
                  for c, m in enumerate(markers)]
        failures = {k: v for m in markers for k, v in m["failures"].items()}
        record = self._spec_record()
        record.update({
            "chunks": chunks, "failures": failures, "n_valid": len(self.keys) - len(failures),
            "n_failed": len(failures), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "created_unix": time.time(), "tool_version": __version__, FORMAT_FIELD: FORMAT_VERSION,
        })
        record[DIGEST_FIELD] = record_digest(record)
        with os_errors(f"the record of {self.name}@{self.version}", self.loc.url):
            self.loc.write_json(record, RECORD_FILE)  # the atomic commit
        self.complete = True
        return self.open_version(self.loc, self.name)
