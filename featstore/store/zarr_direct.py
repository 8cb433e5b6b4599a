"""Direct reads of raw (uncompressed) Zarr 3 chunks on a local disk, straight into the output array.

The zarr backend stores dense image features without compression: each chunk object is the array's bytes
in C order (``bytes`` codec, little endian) followed by a CRC32C of those bytes (``crc32c`` codec), and a
write unit larger than ``INNER_CHUNK_BYTES`` is a shard (``sharding_indexed``) of such inner chunks with
its index (``uint64`` offset/length pairs + CRC32C) at the end. zarr-python decodes a chunk into a buffer
of its own and then copies it into the output; for a bulk load of 1.5 GB that copy and its per-chunk
bookkeeping are most of the time. Here a chunk whose rows all land in the output is read with
``readinto`` directly into the output's memory and its checksum verified in place; other chunks (edge
chunks, partial selections) go through one scratch buffer. Chunks are read by a small thread pool (file
reads release the GIL).

Only that exact layout takes this path (``DirectLayout.of`` returns None otherwise: compressed arrays,
big-endian or object dtypes, remote stores), and a checksum mismatch, a short or missing chunk object or
a bad shard index raises ``CorruptDataError``, as zarr's own decode does.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from crc32c import crc32c as _crc  # releases the GIL on large buffers: chunks are checksummed on several cores

from ..errors import CorruptDataError

READ_THREADS = 4  # enough to overlap page-cache copies with checksums on a small machine
_EMPTY = np.uint64(2 ** 64 - 1)  # a shard index entry for a chunk that was never written


@dataclass(frozen=True)
class DirectLayout:
    """How one array's chunk objects are laid out along axis 0 (the row axis; other axes are one chunk)."""

    dtype: np.dtype
    row_shape: Tuple[int, ...]
    object_rows: int  # rows per stored object (a chunk, or a shard)
    inner_rows: int  # rows per checksummed chunk (== object_rows when not sharded)
    sharded: bool

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @classmethod
    def of(cls, metadata) -> Optional["DirectLayout"]:
        """The layout of a zarr ``ArrayV3Metadata``, or None when this reader cannot take it."""
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

        if sys.byteorder != "little" or getattr(metadata, "zarr_format", 3) != 3:
            return None
        try:
            dtype = np.dtype(metadata.dtype.to_native_dtype())
            chunk_shape = tuple(metadata.chunk_grid.chunk_shape)
        except (AttributeError, TypeError):
            return None
        shape = tuple(metadata.shape)
        if dtype.kind not in "fiub" or dtype.byteorder == ">" or len(shape) < 1:
            return None
        if getattr(metadata.chunk_key_encoding, "separator", None) != "/" or \
                type(metadata.chunk_key_encoding).__name__ != "DefaultChunkKeyEncoding":
            return None
        if tuple(chunk_shape[1:]) != shape[1:]:
            return None

        def raw_crc(codecs) -> bool:
            return (len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], Crc32cCodec)
                    and (dtype.itemsize == 1 or getattr(codecs[0].endian, "value", None) == "little"))

        codecs = tuple(metadata.codecs)
        if raw_crc(codecs):
            return cls(dtype, shape[1:], chunk_shape[0], chunk_shape[0], False)
        if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
            sc = codecs[0]
            inner = tuple(sc.chunk_shape)
            if (raw_crc(tuple(sc.codecs)) and raw_crc(tuple(sc.index_codecs)) and inner[1:] == shape[1:]
                    and getattr(sc.index_location, "value", None) == "end" and chunk_shape[0] % inner[0] == 0):
                return cls(dtype, shape[1:], chunk_shape[0], inner[0], True)
        return None


@dataclass
class _Task:
    """Rows of one checksummed chunk: ``src`` positions inside it -> ``dst`` rows of the output."""

    obj: int  # stored object index
    inner: int  # inner chunk inside the object (0 when not sharded)
    src: np.ndarray
    dst: np.ndarray


def object_crcs(path: str, per_obj: Optional[int]) -> List[int]:
    """The CRC32Cs stored in one chunk object: ``[chunk crc]``, or for a shard of ``per_obj`` inner chunks
    each inner chunk's crc (-1 for one never written) then the index crc. [] for a missing/short file.

    Recorded at write time and compared on reads, they bind a chunk's bytes to its array and position:
    a chunk file swapped with another one passes its own CRC32C but not the one recorded for its place."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if per_obj is None:
                if size < 4:
                    return []
                f.seek(size - 4)
                return [int.from_bytes(f.read(4), "little")]
            nbytes = per_obj * 16 + 4
            if size < nbytes:
                return []
            f.seek(size - nbytes)
            raw = f.read(nbytes)
            crcs = []
            for start, length in np.frombuffer(raw[:-4], dtype="<u8").reshape(per_obj, 2).tolist():
                if start == int(_EMPTY) or length < 4 or start + length > size:
                    crcs.append(-1)
                    continue
                f.seek(start + length - 4)
                crcs.append(int.from_bytes(f.read(4), "little"))
            return crcs + [int.from_bytes(raw[-4:], "little")]
    except FileNotFoundError:
        return []


def read_rows(layout: DirectLayout, object_path: Callable[[int], str], rows: np.ndarray,
              name: str, threads: int = READ_THREADS, tags: Optional[Dict[int, List[int]]] = None) -> np.ndarray:
    """``array[rows]`` (sorted, unique row indices) read from the chunk files ``object_path(i)``.

    ``tags`` (object -> ``object_crcs`` recorded at write time): each chunk's CRC32C must also be the one
    recorded for its position, at no extra read."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows),) + layout.row_shape, layout.dtype)
    if not len(rows):
        return out
    tasks = _plan(layout, rows)
    by_obj: Dict[int, List[_Task]] = {}
    for t in tasks:
        by_obj.setdefault(t.obj, []).append(t)
    reader = _ObjectReader(layout, object_path, out, name, tags or {})
    if threads <= 1 or len(by_obj) == 1:
        for obj, ts in by_obj.items():
            reader(obj, ts)
        return out
    with cf.ThreadPoolExecutor(max_workers=min(threads, len(by_obj)), thread_name_prefix="featstore-read") as pool:
        for f in [pool.submit(reader, obj, ts) for obj, ts in by_obj.items()]:
            f.result()
    return out


def _plan(layout: DirectLayout, rows: np.ndarray) -> List[_Task]:
    chunk = rows // layout.inner_rows
    cuts = np.flatnonzero(np.diff(chunk)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(rows)]])
    per_obj = layout.object_rows // layout.inner_rows
    tasks = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        c = int(chunk[s])
        tasks.append(_Task(c // per_obj, c % per_obj, rows[s:e] - c * layout.inner_rows, np.arange(s, e)))
    return tasks


class _ObjectReader:
    """Reads the tasks of one stored object (thread-safe: each call opens its own file)."""

    def __init__(self, layout: DirectLayout, object_path: Callable[[int], str], out: np.ndarray, name: str,
                 tags: Dict[int, List[int]]):
        self.layout, self.object_path, self.out, self.name, self.tags = layout, object_path, out, name, tags
        self.chunk_bytes = layout.inner_rows * layout.row_bytes
        self.flat = out.reshape(len(out), -1).view(np.uint8) if out.size else out

    def __call__(self, obj: int, tasks: List[_Task]) -> None:
        path = self.object_path(obj)
        try:
            f = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise CorruptDataError(f"array {self.name!r}: chunk object {path} is missing; run `featstore verify`, "
                                   f"then rewrite or remove the version") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            offsets = self._shard_index(f, size, path) if self.layout.sharded else None
            for t in tasks:
                if offsets is None:
                    start, length = 0, size
                else:  # inner chunks past the array's end are never written: only those read are checked
                    start, length = offsets[t.inner]
                    if start == _EMPTY or start + length > size - (len(offsets) * 16 + 4):
                        raise self._corrupt(path, "shard index points outside the shard")
                    start, length = int(start), int(length)
                self._read_chunk(f, start, length, t, path, self.tags.get(obj))

    def _shard_index(self, f, size: int, path: str) -> np.ndarray:
        per_obj = self.layout.object_rows // self.layout.inner_rows
        nbytes = per_obj * 16 + 4
        if size < nbytes:
            raise self._corrupt(path, "shard shorter than its index")
        f.seek(size - nbytes)
        raw = _read_exact(f, nbytes, path, self)
        body = raw[:-4]
        if _crc(body) != int.from_bytes(raw[-4:], "little"):
            raise self._corrupt(path, "shard index checksum mismatch")
        return np.frombuffer(body, dtype="<u8").reshape(per_obj, 2)

    def _read_chunk(self, f, start: int, length: int, t: _Task, path: str, tag: Optional[List[int]]) -> None:
        if length != self.chunk_bytes + 4:
            raise self._corrupt(path, f"chunk is {length} bytes, expected {self.chunk_bytes + 4}")
        f.seek(start)
        k = len(t.src)
        whole = k == self.layout.inner_rows and t.src[0] == 0 and t.dst[-1] - t.dst[0] == k - 1
        if whole:  # every row of the chunk, in order: read straight into the output
            target = self.flat[int(t.dst[0]):int(t.dst[0]) + k].reshape(-1)
        else:
            target = np.empty(self.chunk_bytes, np.uint8)
        got = f.readinto(memoryview(target))
        while got < self.chunk_bytes:  # readinto may return short counts on some filesystems
            more = f.readinto(memoryview(target)[got:])
            if not more:
                raise self._corrupt(path, "chunk is truncated")
            got += more
        crc = int.from_bytes(_read_exact(f, 4, path, self), "little")
        if _crc(target) != crc:
            raise self._corrupt(path, "checksum mismatch")
        if tag and tag[t.inner if self.layout.sharded else 0] != crc:
            raise self._corrupt(path, f"it is not the chunk written at this position (its checksum is another "
                                      f"chunk's: a swapped or misplaced file)")
        if not whole:
            rows = target.reshape(self.layout.inner_rows, -1)
            self.flat[t.dst] = rows[t.src]

    def _corrupt(self, path: str, why: str) -> CorruptDataError:
        return CorruptDataError(f"array {self.name!r}: stored chunk {path} is corrupted ({why}); run `featstore "
                                f"verify` to locate every bad chunk, then rewrite or remove the version")


def _read_exact(f, n: int, path: str, reader: _ObjectReader) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise reader._corrupt(path, "object is truncated")
    return data


# -- writes ---------------------------------------------------------------------------------------------------
def encode_object(layout: DirectLayout, rows: np.ndarray) -> bytes:
    """The bytes zarr-python stores for one object (a chunk, or a shard of inner chunks) holding ``rows``: all
    of its rows, or fewer for the edge object at the end of the array.

    A chunk is its ``object_rows`` rows in C order, little endian (zarr pads an edge chunk to the full chunk
    shape with the fill value 0), then the CRC32C of those bytes. A shard is its inner chunks so encoded, one
    after another, then the index: per inner chunk (offset, length) as ``<u8``, the index's own CRC32C; an inner
    chunk wholly outside the array is not stored (its index entry is 2**64 - 1 twice)."""
    return b"".join(encode_parts(layout, rows))


def encode_parts(layout: DirectLayout, rows: np.ndarray) -> List[object]:
    """``encode_object``'s bytes as the buffers that make it up, in order, without joining them: a full
    object of C-contiguous little-endian rows is not copied at all (its parts are views of ``rows``); an edge
    object is copied once, into a zero-padded buffer."""
    data = _padded(layout, rows)
    if not layout.sharded:
        raw = memoryview(data).cast("B")
        return [raw, _crc(raw).to_bytes(4, "little")]
    parts: List[object] = []
    index, offset = [], 0
    for i in range(layout.object_rows // layout.inner_rows):
        if i * layout.inner_rows >= len(rows):
            index.append((int(_EMPTY), int(_EMPTY)))
            continue
        raw = memoryview(data[i * layout.inner_rows:(i + 1) * layout.inner_rows]).cast("B")
        parts += [raw, _crc(raw).to_bytes(4, "little")]
        index.append((offset, raw.nbytes + 4))
        offset += raw.nbytes + 4
    idx = np.asarray(index, dtype="<u8").tobytes()
    return parts + [idx, _crc(idx).to_bytes(4, "little")]


def _padded(layout: DirectLayout, rows: np.ndarray) -> np.ndarray:
    """``rows`` as the object's full ``object_rows`` rows, C order, little endian: ``rows`` itself when it
    already is that, else a copy zero-padded at the end (zarr's fill value)."""
    rows = np.asarray(rows)
    if rows.shape[1:] != layout.row_shape or len(rows) > layout.object_rows:
        raise ValueError(f"rows of shape {rows.shape} do not fit an object of {layout.object_rows} rows of "
                         f"shape {layout.row_shape}")
    dtype = layout.dtype.newbyteorder("<")
    if len(rows) == layout.object_rows:
        return np.ascontiguousarray(rows, dtype=dtype)
    data = np.zeros((layout.object_rows,) + layout.row_shape, dtype=dtype)
    data[:len(rows)] = rows
    return data


def write_object(layout: DirectLayout, path: str, rows: np.ndarray, tmp_dir: Optional[str] = None) -> None:
    """``encode_object`` written to ``path`` through a temporary file renamed over it, so a reader (or a run
    resumed after a kill) sees the old object or the new one, never a part. The temporary file goes in
    ``tmp_dir`` (on the same filesystem; the store passes the version folder, whose stale ``*.tmp-*`` files
    a resumed run removes), named after ``path`` relative to it; beside ``path`` without one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if tmp_dir is None:
        tmp_dir, name = os.path.dirname(path), os.path.basename(path)
    else:
        name = os.path.relpath(path, tmp_dir).replace(os.sep, "~")
    tmp = os.path.join(tmp_dir, name) + f".tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "wb") as f:
            for part in encode_parts(layout, rows):
                f.write(part)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
