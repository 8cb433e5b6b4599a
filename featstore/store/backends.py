"""Array backends: how one version's rows are laid out on storage.

One small interface (``ArrayBackend``) with two implementations:

- ``ZarrBackend`` (default, bulk): one Zarr 3 array per feature, chunked along the sample axis. A writer
  chunk of ``chunk_rows`` rows is exactly one Zarr chunk, or one shard of inner chunks of at most
  ``INNER_CHUNK_BYTES`` when the write chunk is larger, so writers on disjoint chunks never touch the same
  object. Chunks are deliberately large: zarr-python pays a fixed cost per chunk, so bulk loads run at
  disk speed only with few, big chunks (measured in benchmarks/store_io.py); per-sample random access is
  the LMDB backend's job. On a local disk, raw (uncompressed) arrays are read by ``zarr_direct``:
  chunk bytes go straight into the output and their CRC32C is checked in place (zarr-python's decode
  costs an extra copy per chunk); every other array goes through zarr-python. Compression (``backend_options["compression"]``): ``auto`` (default) stores
  dense float image features raw (they do not compress, and blosc would cost bulk-load speed) and
  blosc-lz4-compresses text sets (padding to max_length) and integer/bool arrays; ``blosc``, ``zstd`` or
  ``none`` force one codec for every array. Every chunk carries a CRC32C (``Crc32cCodec``), so a corrupted or
  truncated chunk fails to decode instead of returning garbage; ``write_empty_chunks`` is on, so a missing
  chunk object is detectable as missing.
- ``LmdbBackend`` (per-sample random access, local paths only): one record per key: a small header and
  the raw array bytes (no pickle), with a CRC32 of the payload checked on every read. Many processes can
  read at once (LMDB readers take no lock).

Both store the reserved arrays ``valid`` (bool: False for rows whose production failed; readers never
return them) and, when the schema has per-item arrays, ``count``.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import math
import os
import struct
from abc import ABC, abstractmethod
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from crc32c import crc32c as _crc32c  # CRC32C (as zarr's codec); releases the GIL on large buffers

from ..errors import CorruptDataError, FeatstoreError
from .location import Location
from .spec import ArraySpec

VALID = "valid"
COUNT = "count"
KEYS = "ids"  # the Zarr array holding each row's key
RESERVED = frozenset({VALID, KEYS, "mask"})  # "mask" is what readers add beside per-item arrays
INNER_CHUNK_BYTES = 16 * 1024 * 1024  # larger write chunks become shards of inner chunks this big


def full_schema(schema: Dict[str, ArraySpec]) -> Dict[str, ArraySpec]:
    """The user's schema plus the reserved arrays every version stores."""
    out = dict(schema)
    out[VALID] = ArraySpec((), "bool")
    if any(s.per_item for s in schema.values()):
        if COUNT in schema and (schema[COUNT].shape != () or schema[COUNT].dtype not in ("int32", "int64")):
            raise FeatstoreError("array 'count' is reserved for per-row item counts: shape () and dtype int32")
        out[COUNT] = ArraySpec((), "int32")
    return out


class ArrayBackend(ABC):
    name: str = ""

    def __init__(self, loc: Location, n: int, schema: Dict[str, ArraySpec], chunk_rows: int, options: dict):
        self.loc, self.n, self.schema, self.chunk_rows, self.options = loc, n, schema, chunk_rows, options
        self.tags: Dict[str, Dict[int, List[int]]] = {}  # array -> write chunk -> its recorded CRC32Cs

    @property
    def n_chunks(self) -> int:
        return max(1, math.ceil(self.n / self.chunk_rows))

    @abstractmethod
    def create(self, keys: Sequence[str]) -> None:
        """Create empty storage for ``n`` rows and store the keys."""

    @abstractmethod
    def write_chunk(self, chunk: int, arrays: Dict[str, np.ndarray]) -> None:
        """Write every array (full schema, reserved ones included) for the rows of one chunk."""

    @abstractmethod
    def read_keys(self) -> np.ndarray:
        ...

    @abstractmethod
    def read(self, names: Iterable[str], rows: np.ndarray) -> Dict[str, np.ndarray]:
        """Rows (sorted, unique int indices) of each named array; per-item arrays at full stored width."""

    @abstractmethod
    def missing_chunks(self) -> List[str]:
        """Names of the storage objects a complete version must have but does not."""

    keys_object = ""

    def chunk_tags(self, chunk: int) -> Dict[str, List[int]]:
        """What binds write chunk ``chunk``'s stored objects to their position (recorded in its marker)."""
        return {}

    def read_chunk(self, chunk: int, names: Iterable[str]) -> Dict[str, np.ndarray]:
        start = chunk * self.chunk_rows
        rows = np.arange(start, min(self.n, start + self.chunk_rows))
        return self.read(names, rows)


# --------------------------------------------------------------------------------------------------
class ZarrBackend(ArrayBackend):
    name = "zarr"
    DIR = "data.zarr"

    def _compressors(self, spec: ArraySpec):
        from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

        comp = self.options.get("compression", "auto")
        itemsize = np.dtype(spec.dtype).itemsize
        if comp == "auto":
            # dense image features barely compress (ratio ~1.0 measured on CNN regions) and blosc costs ~40%
            # of bulk-load speed; text sets are padded to max_length (5-6x with blosc), ints/bools compress well
            dense_float = np.dtype(spec.dtype).kind == "f" and self.options.get("modality") != "text"
            comp = "none" if dense_float else "blosc"
        if comp == "none":
            return [Crc32cCodec()]
        if comp == "zstd":
            return [ZstdCodec(level=int(self.options.get("level", 1))), Crc32cCodec()]
        if comp == "blosc":
            return [BloscCodec(cname="lz4", clevel=int(self.options.get("level", 5)),
                               shuffle="shuffle" if itemsize > 1 else "noshuffle", typesize=itemsize),
                    Crc32cCodec()]
        raise FeatstoreError(f"compression {comp!r} is unknown; use auto, blosc, zstd or none")

    def _layout(self, spec: ArraySpec):
        """(inner chunk shape, shard shape or None) for one array."""
        row_bytes = max(1, int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize)
        inner = self.chunk_rows
        while inner > 1 and inner * row_bytes > INNER_CHUNK_BYTES:
            inner //= 2
        if self.chunk_rows % inner:
            inner = 1
        inner_shape = (inner,) + tuple(spec.shape)
        if inner == self.chunk_rows:
            return inner_shape, None
        return inner_shape, (self.chunk_rows,) + tuple(spec.shape)

    def _group(self, mode: str = "r"):
        import zarr

        if not hasattr(self, "_grp") or mode != "r":
            self._grp = zarr.open_group(self.loc.zarr_store(self.DIR, read_only=(mode == "r")), mode=mode)
        return self._grp

    def create(self, keys: Sequence[str]) -> None:
        import zarr

        grp = zarr.open_group(self.loc.zarr_store(self.DIR), mode="w")
        ids = grp.create_array(KEYS, shape=(self.n,), dtype=str, chunks=(max(1, self.n),), overwrite=True)
        if self.n:
            ids[:] = np.asarray(list(keys), dtype=str)
        for name, spec in self.schema.items():
            chunks, shards = self._layout(spec)
            grp.create_array(name, shape=(self.n,) + spec.shape, dtype=spec.dtype, chunks=chunks, shards=shards,
                             compressors=self._compressors(spec), fill_value=0,
                             config={"write_empty_chunks": True}, overwrite=True)
        self._grp = zarr.open_group(self.loc.zarr_store(self.DIR, read_only=True), mode="r")

    def write_chunk(self, chunk: int, arrays: Dict[str, np.ndarray]) -> None:
        """Raw arrays on a local disk are encoded here, byte for byte as zarr-python would store them
        (``zarr_direct.write_object``: no event-loop round trips, little Python under the GIL while the forward
        pass runs); the others (compressed, remote) through zarr-python."""
        import zarr

        from .zarr_direct import write_object

        start = chunk * self.chunk_rows
        writable = self.__dict__.setdefault("_writable", {})  # opened once: the metadata never changes
        for name, arr in arrays.items():
            layout = self._direct_layout(name)
            if layout is not None and layout.object_rows == self.chunk_rows:
                write_object(layout, self._object_path(name)(chunk), arr, tmp_dir=self.loc.path())
                continue
            if name not in writable:
                grp = zarr.open_group(self.loc.zarr_store(self.DIR), mode="r+")
                # write_empty_chunks is a runtime setting (not stored in the metadata): without it an all-zero
                # chunk (e.g. every row failed) is not written and the version cannot be committed.
                writable[name] = grp[name].with_config({"write_empty_chunks": True})
            writable[name][start:start + len(arr)] = arr

    keys_object = f"{DIR}/{KEYS}/c/0"

    def read_keys(self) -> np.ndarray:
        if not self.n:
            return np.array([], dtype=str)
        try:
            return np.asarray(self._open_array(KEYS)[:], dtype=object).astype(str)
        except CorruptDataError:
            raise
        except Exception as e:  # zstd / vlen decode errors of a damaged key chunk
            raise CorruptDataError(f"the key array {self.loc.url_of(self.keys_object)} is damaged ({type(e).__name__}: "
                                   f"{e}); the version cannot be joined: rewrite it (featstore rm, then rerun)") from None

    def _open_array(self, name: str):
        """A zarr array whose metadata is readable (a half-written zarr.json is one line naming it)."""
        meta = self.loc.url_of(self.DIR, name, "zarr.json")
        try:
            return self._group()[name]
        except Exception as e:
            raise CorruptDataError(f"array metadata {meta} is damaged or missing ({type(e).__name__}: {e}); run "
                                   f"`featstore verify`, then rewrite or remove the version") from None

    def _array(self, name: str):
        cache = self.__dict__.setdefault("_arrays", {})
        if name not in cache:
            arr = self._open_array(name)
            self._check_metadata(name, arr.metadata)
            cache[name] = arr
        return cache[name]

    def _check_metadata(self, name: str, metadata) -> None:
        """The stored metadata must say what the committed schema says (dtype, shape, chunking)."""
        spec = self.schema[name]
        inner, shards = self._layout(spec)
        try:
            have = (np.dtype(metadata.dtype.to_native_dtype()).name, tuple(metadata.shape),
                    tuple(metadata.chunk_grid.chunk_shape))
        except (AttributeError, TypeError) as e:
            have = (f"unreadable ({e})",)
        want = (spec.dtype, (self.n,) + tuple(spec.shape), tuple(shards or inner))
        if have != want:
            raise CorruptDataError(f"array metadata {self.loc.url_of(self.DIR, name, 'zarr.json')} says dtype/shape/"
                                   f"chunks {have} but the committed schema says {want}; the metadata was edited or "
                                   f"damaged: rewrite or remove the version")

    # -- position binding: the checksums stored in each chunk object, recorded at write time -----------------
    def chunk_tags(self, chunk: int) -> Dict[str, List[int]]:
        """Per array, the CRC32Cs stored in write chunk ``chunk``'s object (local stores; {} elsewhere)."""
        from .zarr_direct import object_crcs

        if not self.loc.is_local:
            return {}
        out = {}
        for name, spec in self.schema.items():
            _, shards = self._layout(spec)
            per_obj = None if shards is None else shards[0] // self._layout(spec)[0][0]
            out[name] = object_crcs(self._object_path(name)(chunk), per_obj)
        return out

    def _check_tags(self, name: str, rows: np.ndarray) -> None:
        """Arrays read through zarr-python: each touched object's last CRC32C must be the one recorded for
        its position (a chunk file swapped with another of the same array fails here)."""
        from .zarr_direct import object_crcs

        tags = self.tags.get(name) if self.loc.is_local else None
        if not tags or not len(rows):
            return
        for obj in np.unique(rows // self.chunk_rows).tolist():
            want = tags.get(int(obj))
            if want is None:
                continue
            path = self._object_path(name)(obj)
            got = object_crcs(path, None)
            if got and got[-1] != want[-1]:
                raise CorruptDataError(f"array {name!r}: stored chunk {path} is not the chunk written at position "
                                       f"{obj} (its checksum is another chunk's); run `featstore verify`, then rewrite "
                                       f"or remove the version")

    def _direct_layout(self, name: str):
        """The raw-chunk layout of a local, uncompressed array (``zarr_direct``), else None."""
        cache = self.__dict__.setdefault("_direct", {})
        if name not in cache:
            from .zarr_direct import DirectLayout

            cache[name] = DirectLayout.of(self._array(name).metadata) if self.loc.is_local else None
        return cache[name]

    def _object_key(self, name: str, i: int) -> str:
        """The storage key (under ``DIR``) of the i-th chunk or shard along the row axis of one array."""
        return "/".join([name, "c", str(i)] + ["0"] * len(self.schema[name].shape))

    def _object_path(self, name: str):
        return lambda i: self.loc.path(self.DIR, *self._object_key(name, i).split("/"))

    def read(self, names: Iterable[str], rows: np.ndarray) -> Dict[str, np.ndarray]:
        from .zarr_direct import read_rows

        rows = np.asarray(rows, dtype=np.int64)
        out = {}
        for name in names:
            layout = self._direct_layout(name)
            if layout is not None:  # raw chunks on a local disk: read straight into the output
                out[name] = read_rows(layout, self._object_path(name), rows, name, tags=self.tags.get(name))
                continue
            arr = self._array(name)
            self._check_tags(name, rows)
            try:
                if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
                    out[name] = arr[int(rows[0]):int(rows[-1]) + 1]
                else:
                    out[name] = arr.get_orthogonal_selection((rows,)) if len(rows) else \
                        np.zeros((0,) + self.schema[name].shape, self.schema[name].dtype)
            except ValueError as e:  # checksum mismatch or undecodable bytes
                raise CorruptDataError(f"array {name!r} in {self.loc.url}: stored chunk is corrupted ({e}); run "
                                       f"`featstore verify` to locate it, then rewrite or remove the version") from None
        return out

    def _expected_objects(self) -> Dict[str, List[str]]:
        exp = {}
        for name, spec in self.schema.items():
            inner, shards = self._layout(spec)
            rows_per_obj = (shards or inner)[0]
            n_obj = max(1, math.ceil(self.n / rows_per_obj)) if self.n else 0
            exp[name] = [self._object_key(name, i) for i in range(n_obj)]
        if self.n:
            exp[KEYS] = [f"{KEYS}/c/0"]
        return exp

    def missing_chunks(self) -> List[str]:
        present = set(self.loc.find(self.DIR))
        missing = []
        for name, objs in self._expected_objects().items():
            missing += [o for o in objs if o not in present]
        return missing


# --------------------------------------------------------------------------------------------------
_MAGIC = b"FSR1"
_KEYS_RECORD = b"\x00featstore:keys"
_FAILED_RECORD = b"FSR1failed"  # a row whose production failed; a missing record is lost data, not a failure


def encode_record(arrays: Dict[str, np.ndarray]) -> bytes:
    """Header + raw bytes. Header: magic, CRC32C of the rest, JSON table of (name, dtype, shape, nbytes)."""
    table = [[k, v.dtype.str, list(v.shape), int(v.nbytes)] for k, v in arrays.items()]
    meta = json.dumps(table, separators=(",", ":")).encode()
    body = struct.pack("<I", len(meta)) + meta + b"".join(np.ascontiguousarray(v).tobytes() for v in arrays.values())
    return _MAGIC + struct.pack("<I", _crc32c(body)) + body


@functools.lru_cache(maxsize=4096)
def _parse_table(meta: bytes) -> tuple:
    """A record's array table; rows of one version share a handful of tables, so parse each once."""
    return tuple((name, dt, tuple(shape), int(nbytes)) for name, dt, shape, nbytes in json.loads(meta))


def decode_record(buf, where: str) -> Dict[str, np.ndarray]:
    """Arrays of one record: views into ``buf`` (bytes, or an LMDB buffer that is only valid inside its
    transaction: copy what you keep). The CRC32C is checked on ``buf`` in place, without a copy."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    if len(raw) < 12 or raw[:4].tobytes() != _MAGIC:
        raise CorruptDataError(f"{where}: not a featstore record (bad header); run `featstore verify`")
    crc = int.from_bytes(raw[4:8].tobytes(), "little")
    body = raw[8:]
    if _crc32c(body) != crc:
        raise CorruptDataError(f"{where}: record checksum mismatch (corrupted bytes); run `featstore verify`")
    mlen = int.from_bytes(body[:4].tobytes(), "little")
    try:
        table = _parse_table(body[4:4 + mlen].tobytes())
        out, off = {}, 4 + mlen
        for name, dt, shape, nbytes in table:
            dtype = np.dtype(dt)
            out[name] = body[off:off + nbytes].view(dtype).reshape(shape)
            off += nbytes
    except (ValueError, TypeError) as e:  # a record whose checksum matches but whose table does not fit
        raise CorruptDataError(f"{where}: record layout is invalid ({e}); run `featstore verify`") from None
    return out


_ENVS: Dict[str, tuple] = {}


def _lmdb_env(path: str, write: bool, map_size: int):
    """One environment per path and process (LMDB forbids opening the same one twice in a process).

    Readers open read-only without the lock file; a writer reopens the path writable (readers in that
    process then share the writable environment).
    """
    import lmdb

    cached = _ENVS.get(path)
    if cached and (cached[1] or not write):
        return cached[0]
    if cached:
        cached[0].close()
    try:
        if write:
            env = lmdb.open(path, map_size=map_size, subdir=True, readahead=False, meminit=False, max_readers=1024)
        else:
            env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True, max_readers=1024)
    except lmdb.Error as e:  # a deleted data.mdb, a damaged meta page (MDB_INVALID), ...
        raise CorruptDataError(f"LMDB {os.path.join(path, 'data.mdb')} cannot be opened ({type(e).__name__}: {e}); "
                               f"run `featstore verify`, then rewrite or remove the version") from None
    check_lmdb_size(env, os.path.join(path, "data.mdb"))
    _ENVS[path] = (env, write)
    return env


def check_lmdb_size(env, data_file: str) -> None:
    """Refuse (one line, env closed) an LMDB file shorter than its last page: mapping it would kill the
    process with SIGBUS on the first read past the end."""
    try:
        need = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
        have = os.path.getsize(data_file)
    except Exception as e:  # lmdb.Error, OSError
        env.close()
        raise CorruptDataError(f"LMDB {data_file} cannot be read ({type(e).__name__}: {e}); it is damaged") from None
    if have < need:
        env.close()
        raise CorruptDataError(f"LMDB {data_file} is truncated ({have} bytes, its pages end at {need}); the file "
                               f"is damaged: re-create it (a store version: `featstore verify`, then rewrite or remove it)")


def close_lmdb_envs() -> None:
    for env, _ in _ENVS.values():
        env.close()
    _ENVS.clear()


class LmdbBackend(ArrayBackend):
    name = "lmdb"
    DIR = "data.lmdb"
    READ_THREADS = 2  # large selections: copies and CRC32C release the GIL

    def _env(self, write: bool = False):
        if not self.loc.is_local:
            raise FeatstoreError(f"the lmdb backend needs a local store path, not {self.loc.url!r}; use --backend zarr "
                                 f"for remote stores")
        if write:
            self.loc.makedirs(self.DIR)
        return _lmdb_env(self.loc.path(self.DIR), write, int(self.options.get("map_size", 1 << 40)))

    def create(self, keys: Sequence[str]) -> None:
        env = self._env(write=True)
        with env.begin(write=True) as txn:
            txn.put(_KEYS_RECORD, json.dumps(list(keys)).encode())
        env.sync()

    def write_chunk(self, chunk: int, arrays: Dict[str, np.ndarray]) -> None:
        start = chunk * self.chunk_rows
        valid = arrays[VALID]
        counts = arrays.get(COUNT)
        env = self._env(write=True)
        with env.begin(write=True) as txn:
            keys = json.loads(txn.get(_KEYS_RECORD))
            for r in range(len(valid)):
                k = keys[start + r].encode()
                if not valid[r]:
                    txn.put(k, _FAILED_RECORD)
                    continue
                rec = {}
                for name, spec in self.schema.items():
                    if name == VALID:
                        continue
                    v = arrays[name][r]
                    if spec.per_item:
                        v = v[: int(counts[r])]
                    rec[name] = v
                txn.put(k, encode_record(rec))
        env.sync()

    keys_object = f"{DIR}/data.mdb"

    def read_keys(self) -> np.ndarray:
        if not self.loc.exists(self.DIR, "data.mdb"):
            raise CorruptDataError(f"LMDB {self.loc.url_of(self.keys_object)} is missing; the version's data is "
                                   f"lost: rewrite or remove the version")
        env = self._env(write=False)
        try:
            with env.begin() as txn:
                raw = txn.get(_KEYS_RECORD)
            return np.asarray(json.loads(raw), dtype=str) if raw else np.array([], dtype=str)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptDataError(f"the key record of {self.loc.url_of(self.keys_object)} is damaged ({e}); "
                                   f"rewrite or remove the version") from None

    def read(self, names: Iterable[str], rows: np.ndarray) -> Dict[str, np.ndarray]:
        names = list(names)
        keys = self._keys if hasattr(self, "_keys") else self.read_keys()
        self._keys = keys
        rows = np.asarray(rows, dtype=np.int64)
        out = {n: np.zeros((len(rows),) + self.schema[n].shape, self.schema[n].dtype) for n in names}
        env = self._env()
        parts = max(1, min(self.READ_THREADS, len(rows) // 256))  # threads: copies and CRC32C release the GIL
        bounds = np.linspace(0, len(rows), parts + 1).astype(int)
        if parts == 1:
            self._read_part(env, keys, rows, 0, len(rows), names, out)
            return out
        with cf.ThreadPoolExecutor(max_workers=parts, thread_name_prefix="featstore-lmdb") as pool:
            futures = [pool.submit(self._read_part, env, keys, rows, int(a), int(b), names, out)
                       for a, b in zip(bounds[:-1], bounds[1:])]
            for f in futures:
                f.result()
        return out

    def _read_part(self, env, keys, rows: np.ndarray, lo: int, hi: int, names: List[str],
                   out: Dict[str, np.ndarray]) -> None:
        """Rows ``rows[lo:hi]`` into ``out[lo:hi]``, in one read transaction of this thread's own."""
        with env.begin(buffers=True) as txn:
            for i in range(lo, hi):
                r = rows[i]
                raw = txn.get(keys[r].encode())
                if raw is None:
                    raise CorruptDataError(f"{self.loc.url} record {str(keys[r])!r} is missing; run `featstore verify`, "
                                           f"then rewrite or remove the version")
                if len(raw) == len(_FAILED_RECORD) and bytes(raw) == _FAILED_RECORD:
                    continue  # a failed row: valid stays False
                rec = decode_record(raw, f"{self.loc.url} record {str(keys[r])!r}")
                for n in names:
                    if n == VALID:
                        out[n][i] = True
                    elif self.schema[n].per_item:
                        v = rec[n]
                        out[n][i, : len(v)] = v
                    else:
                        out[n][i] = rec[n]

    def missing_chunks(self) -> List[str]:
        return [] if self.loc.exists(self.DIR, "data.mdb") else [f"{self.DIR}/data.mdb"]


BACKENDS = {"zarr": ZarrBackend, "lmdb": LmdbBackend}


def make_backend(kind: str, loc: Location, n: int, schema: Dict[str, ArraySpec], chunk_rows: int,
                 options: Optional[dict] = None) -> ArrayBackend:
    if kind not in BACKENDS:
        raise FeatstoreError(f"backend {kind!r} is unknown; use one of {', '.join(BACKENDS)}")
    return BACKENDS[kind](loc, n, schema, chunk_rows, dict(options or {}))
