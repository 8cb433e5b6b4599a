"""A disposable on-disk cache of decoded images, shared by the extractors that run over the same files.

``DecodedImageCache(dir).load(path, max_pixels)`` returns exactly what
``featstore.extractors.images.load_image(path, max_pixels=max_pixels)`` returns (an 8-bit RGB ``PIL.Image``
with the same pixels) or raises the same ``ImageDecodeError`` (same reason, same message); only the first
call for a file decodes it, later calls - from any process - read the raw pixels back from an LMDB
environment in ``dir``.

Records (one per file, the LMDB key is the SHA-256 of the file's realpath)::

    header  magic b"FSIC", format version, kind (pixels | failure), the file's size and mtime_ns when it
            was decoded, width/height of the RGB pixels, the size the file declares (before the EXIF
            rotation; what load_image checks against max_pixels), CRC32C and length of the payload
    payload pixels: H*W*3 raw RGB bytes; failure: JSON {"reason", "fix"} of the ImageDecodeError;
            resized: the decoded image's width and height (2 x uint32) then H*W*3 RGB bytes resized by
            an extractor's ``pixels.ResizeRecipe`` (width/height in the header are the resized ones)

Resized records (``load_resized(path, recipe)``: the extractor's input geometry as uint8, so a warm run does
no per-image resize) are keyed by the SHA-256 of the realpath and ``recipe.key()`` (mode, sizes, filter,
torchvision and Pillow versions), so another size or extractor never reads them; a miss resizes
``load(path)``'s pixels (the decoded record, itself decoded on a miss) and stores both. A recipe with
``decode="convert-rgb"`` (``images.load_image``'s other decode) names it in its key, and its decoded records
are keyed by the realpath and ``"decode/convert-rgb"``: the default decode's keys are unchanged.

A record whose size/mtime_ns differ from the file's is stale (the file changed): a miss, overwritten by
the fresh decode. A record that does not parse or whose CRC does not match is treated the same way, so the
cache never returns wrong pixels. "Too large" failures are not cached (they depend on the caller's
``max_pixels``); instead every hit is checked against the caller's ``max_pixels`` first, as load_image does.

Processes: the environment is opened lazily, once per directory and process, and every environment this
module holds is closed before a ``fork`` (DataLoader workers are forked; LMDB forbids using an environment
across fork), so each worker opens its own. LMDB serialises writers across processes; each store is one
short write transaction, not fsync'ed (a cache: after a power loss, delete the directory if opening it
fails). The cache holds nothing that cannot be recomputed: deleting the directory is always safe (when no
run is using it).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import threading
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import numpy as np
from crc32c import crc32c
from PIL import Image

from ..errors import FeatstoreError
from ..extractors.images import FEATSTORE_DECODE

_MAGIC = b"FSIC"
_FORMAT = 1
_PIXELS, _FAILURE, _RESIZED = 1, 2, 3
_ORIG = struct.Struct("<II")  # a resized record's payload starts with the decoded image's width, height
# magic, format, kind, file size, file mtime_ns, width, height, declared width, declared height, crc32c, length
_HEADER = struct.Struct("<4sHHqqIIIIIQ")
_LMDB_FILES = ("data.mdb", "lock.mdb")
DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB of address space; the file is sparse and grows with what is stored
_TOO_LARGE_FIX = "downscale the image or raise max_pixels if it is trusted"  # as in images.load_image

# path -> (environment, pid that opened it); guarded by _LOCK, emptied before every fork
_ENVS: Dict[str, Tuple[object, int]] = {}
_LOCK = threading.RLock()
_INHERITED: list = []  # environments found open after a fork: kept referenced, never used nor closed


class ImageCacheError(FeatstoreError):
    """The cache directory itself cannot be used (not a bad image): the run must stop, not record a failure."""


@dataclass
class _Record:
    kind: int
    size: int
    mtime_ns: int
    width: int
    height: int
    declared: Tuple[int, int]
    crc: int
    payload: np.ndarray  # uint8 view of the value after the header (valid inside its read transaction only)


class DecodedImageCache:
    """Decoded images in the LMDB environment at ``path`` (created if missing).

    The constructor only validates the directory (one-line ``ImageCacheError`` naming it and the fix);
    ``check()`` also opens the environment in this process. ``hits`` / ``misses`` / ``corrupt`` count this
    process's records served (decoded or resized), files decoded and damaged records (a DataLoader worker
    has its own copy).
    """

    def __init__(self, path: Union[str, os.PathLike], map_size: int = DEFAULT_MAP_SIZE):
        self.path = os.path.abspath(os.fspath(path))
        self.map_size = int(map_size)
        if self.map_size <= 0:
            raise FeatstoreError(f"image cache map_size={map_size!r} is invalid; pass a positive byte count")
        self.hits = self.misses = self.corrupt = 0
        _prepare_dir(self.path)

    def __repr__(self) -> str:
        return f"DecodedImageCache({self.path!r})"

    def check(self) -> None:
        """Open (or create) the environment now, so a broken cache fails before any work starts."""
        _env(self.path, self.map_size)

    def close(self) -> None:
        """Close this process's environment for the directory (the next call reopens it)."""
        _close(self.path)

    def stats(self) -> Dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt}

    def __len__(self) -> int:
        with _LOCK:
            return int(_env(self.path, self.map_size).stat()["entries"])

    def load(self, path: Union[str, os.PathLike], max_pixels: Optional[int] = None,
             decode: str = FEATSTORE_DECODE) -> Image.Image:
        """``load_image(path, max_pixels=max_pixels, decode=decode)`` through the cache: same pixels, same
        errors (each ``decode`` has its own records; the default's key is the one it always had).

        ``max_pixels=None`` means load_image's default. Raises ``ImageDecodeError`` for a bad image (cached
        or not) and ``ImageCacheError`` when the cache directory cannot be read or written (full, corrupt
        environment, disk error).
        """
        _images().check_decode(decode)
        max_pixels, path, st = _checked(max_pixels, path)
        if st is None:  # missing / a directory: nothing to cache
            return _images().load_image(path, max_pixels=max_pixels, decode=decode)
        key = _key(self._realpath(path), "" if decode == FEATSTORE_DECODE else f"decode/{decode}")
        found = self._lookup(key, path, st, max_pixels)
        if found is not None:
            return found
        self.misses += 1
        return self._decode_and_store(key, path, st, max_pixels, decode)

    def load_resized(self, path: Union[str, os.PathLike], recipe, max_pixels: Optional[int] = None):
        """``recipe.apply(load(path, max_pixels))`` (a ``pixels.ResizedImage``) through the cache: the same
        pixels byte for byte, the same errors. A hit reads only the resized bytes."""
        max_pixels, path, st = _checked(max_pixels, path)
        if st is None:
            return recipe.apply(self.load(path, max_pixels, recipe.decode))  # load raises load_image's error
        key = _key(self._realpath(path), recipe.key())
        found = self._lookup_resized(key, path, st, max_pixels)
        if found is not None:
            return found
        img = self.load(path, max_pixels, recipe.decode)  # counts its own hit or miss; raises a (cached) failure
        resized = recipe.apply(img)
        if _unchanged(path, st):
            self._put(key, _resized_value(resized, st, _declared_size(path)))
        return resized

    def _realpath(self, path: str) -> str:
        """``os.path.realpath(path)``, resolving each folder once per process: a file that is not itself a
        symlink is its folder's realpath joined with its name (``realpath`` costs five ``lstat`` calls per file)."""
        head, name = os.path.split(path)
        if not os.path.isabs(path) or name in ("", ".", "..") or stat.S_ISLNK(os.lstat(path).st_mode):
            return os.path.realpath(path)
        dirs = self.__dict__.setdefault("_dirs", {})
        if head not in dirs:
            dirs[head] = os.path.realpath(head)
        return os.path.join(dirs[head], name)

    # -- hit path -------------------------------------------------------------------------------------
    def _lookup(self, key: bytes, path: str, st: os.stat_result, max_pixels: int) -> Optional[Image.Image]:
        """The cached image (or a raised cached failure); None for a miss, a stale or a corrupt record."""
        def serve(rec: _Record):
            failure = _cached_failure(path, rec) if rec.kind == _FAILURE else None
            if rec.kind == _RESIZED or (rec.kind == _FAILURE and failure is None):
                self.corrupt += 1
                return None
            self.hits += 1  # served from the cache: the pixels, a too-large error or a cached failure
            _check_declared_size(path, rec.declared, max_pixels)
            if failure is not None:
                raise failure
            return Image.frombytes("RGB", (rec.width, rec.height), rec.payload)  # copies the bytes

        return self._read(key, st, serve)

    def _lookup_resized(self, key: bytes, path: str, st: os.stat_result, max_pixels: int):
        """The cached ``ResizedImage``; None for a miss, a stale or a corrupt record (then resized anew)."""
        def serve(rec: _Record):
            if rec.kind != _RESIZED:
                self.corrupt += 1
                return None
            self.hits += 1
            _check_declared_size(path, rec.declared, max_pixels)
            w, h = _ORIG.unpack_from(rec.payload)
            pixels = rec.payload[_ORIG.size:].reshape(rec.height, rec.width, 3).copy()
            return _pixels().ResizedImage(pixels, (int(w), int(h)))

        return self._read(key, st, serve)

    def _read(self, key: bytes, st: os.stat_result, serve):
        """``serve(record)`` inside the read transaction (the payload is valid only there) for an intact record
        stamped with the file's size and mtime; None for a miss, a stale (the file changed) or a corrupt one."""
        with _LOCK:
            env = _env(self.path, self.map_size)
            try:
                with env.begin(buffers=True) as txn:
                    value = txn.get(key)
                    if value is None:
                        return None
                    rec = _parse(value)
                    if rec is None:
                        self.corrupt += 1
                        return None
                    if (rec.size, rec.mtime_ns) != (st.st_size, st.st_mtime_ns):
                        return None
                    return serve(rec)
            except _lmdb().Error as e:
                raise _cache_error(self.path, e) from e

    # -- miss path ------------------------------------------------------------------------------------
    def _decode_and_store(self, key: bytes, path: str, st: os.stat_result, max_pixels: int,
                          decode: str) -> Image.Image:
        images = _images()
        try:
            img = images.load_image(path, max_pixels=max_pixels, decode=decode)
        except images.ImageDecodeError as e:
            value = _failure_value(e, st, _declared_size(path))
            if value is not None and _unchanged(path, st):
                self._put(key, value)
            raise
        value = _pixels_value(img, st, _declared_size(path))
        if _unchanged(path, st):  # never store pixels under a stamp they may not belong to
            self._put(key, value)
        return img

    def _put(self, key: bytes, value: bytes) -> None:
        lmdb = _lmdb()
        with _LOCK:
            env = _env(self.path, self.map_size)
            try:
                with env.begin(write=True) as txn:
                    txn.put(key, value)
            except lmdb.MapFullError as e:
                raise ImageCacheError(
                    f"image cache {self.path!r} is full (map size {self.map_size / 2 ** 30:.0f} GiB); delete that "
                    f"directory (it only holds decoded images) or use a larger map_size") from e
            except lmdb.Error as e:
                raise _cache_error(self.path, e) from e


def _checked(max_pixels: Optional[int], path) -> Tuple[int, str, Optional[os.stat_result]]:
    """(max_pixels with load_image's default, the path, its stat when it is a regular file: else None)."""
    if max_pixels is None:
        max_pixels = _images().DEFAULT_MAX_PIXELS
    if int(max_pixels) <= 0:
        raise FeatstoreError(f"max_pixels={max_pixels!r} is invalid; pass a positive pixel count")
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError:
        return max_pixels, path, None
    return max_pixels, path, (st if stat.S_ISREG(st.st_mode) else None)


def _key(realpath: str, recipe_key: str = "") -> bytes:
    """The LMDB key: SHA-256 of the realpath (decoded pixels), or of the realpath and a resize recipe's key."""
    raw = os.fsencode(realpath)
    return hashlib.sha256(raw + b"\0" + recipe_key.encode() if recipe_key else raw).digest()


# -- records --------------------------------------------------------------------------------------------
def _pixels_value(img: Image.Image, st: os.stat_result, declared: Tuple[int, int]) -> bytes:
    if img.mode != "RGB":
        raise FeatstoreError(f"image cache: load_image returned mode {img.mode!r}, not RGB; this is a bug")
    data = img.tobytes()
    w, h = img.size
    return _HEADER.pack(_MAGIC, _FORMAT, _PIXELS, st.st_size, st.st_mtime_ns, w, h, *declared,
                        crc32c(data), len(data)) + data


def _resized_value(resized, st: os.stat_result, declared: Tuple[int, int]) -> bytes:
    h, w = resized.pixels.shape[:2]
    data = _ORIG.pack(*resized.size) + np.ascontiguousarray(resized.pixels, np.uint8).tobytes()
    return _HEADER.pack(_MAGIC, _FORMAT, _RESIZED, st.st_size, st.st_mtime_ns, w, h, *declared,
                        crc32c(data), len(data)) + data


def _failure_value(err, st: os.stat_result, declared: Tuple[int, int]) -> Optional[bytes]:
    """The record for a decode failure; None for failures that must not be cached (too large, odd message)."""
    if err.reason.startswith("too large"):
        return None  # depends on the caller's max_pixels, and costs no decoding to find again
    fix = _fix_of(err)
    if fix is None:
        return None
    data = json.dumps({"reason": err.reason, "fix": fix}).encode("utf-8")
    return _HEADER.pack(_MAGIC, _FORMAT, _FAILURE, st.st_size, st.st_mtime_ns, 0, 0, *declared,
                        crc32c(data), len(data)) + data


def _fix_of(err) -> Optional[str]:
    """The ``fix`` part of an ImageDecodeError message (``image 'p': reason; fix``), or None."""
    ImageDecodeError = _images().ImageDecodeError
    head = str(ImageDecodeError(err.path, err.reason, ""))  # "image 'p': reason;" (whitespace normalised)
    msg = str(err)
    if not msg.startswith(head + " "):
        return None
    fix = msg[len(head) + 1:]
    return fix if str(ImageDecodeError(err.path, err.reason, fix)) == msg else None


def _parse(value) -> Optional[_Record]:
    """A record from an LMDB value (a buffer), or None when it is not one this format wrote intact."""
    if len(value) < _HEADER.size:
        return None
    magic, fmt, kind, size, mtime_ns, w, h, dw, dh, crc, length = _HEADER.unpack_from(value)
    if magic != _MAGIC or fmt != _FORMAT or kind not in (_PIXELS, _FAILURE, _RESIZED):
        return None
    pixel_bytes = {_PIXELS: 0, _RESIZED: _ORIG.size}.get(kind)
    if len(value) != _HEADER.size + length or (pixel_bytes is not None and (w * h * 3 + pixel_bytes != length
                                                                            or w * h == 0)):
        return None
    payload = np.frombuffer(value, np.uint8, offset=_HEADER.size)
    if crc32c(payload) != crc:
        return None
    return _Record(kind, size, mtime_ns, w, h, (dw, dh), crc, payload)


def _cached_failure(path: str, rec: _Record):
    """The ImageDecodeError load_image raised for this file, naming the caller's ``path``; None when the
    record's JSON does not parse (treated as corrupt)."""
    try:
        info = json.loads(rec.payload.tobytes().decode("utf-8"))
        return _images().ImageDecodeError(path, str(info["reason"]), str(info["fix"]))
    except (ValueError, KeyError, TypeError):
        return None


def _check_declared_size(path: str, declared: Tuple[int, int], max_pixels: int) -> None:
    """Raise load_image's "too large" error when the file's declared size exceeds ``max_pixels``."""
    w, h = declared
    if w * h > max_pixels:
        reason = f"too large ({w}x{h} = {w * h} pixels > max_pixels={max_pixels})"
        raise _images().ImageDecodeError(path, reason, _TOO_LARGE_FIX)


def _declared_size(path: str) -> Tuple[int, int]:
    """The size in the file's header (what load_image checks against max_pixels); (0, 0) if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return tuple(int(v) for v in img.size)
    except Exception:  # the header itself is broken: load_image fails before its size check anyway
        return (0, 0)


def _unchanged(path: str, st: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


# -- environments (one per directory and process) --------------------------------------------------------
def _images():
    """featstore.extractors.images, imported on first use (importing it registers every extractor)."""
    from ..extractors import images

    return images


def _pixels():
    from ..extractors import pixels

    return pixels


def _lmdb():
    import lmdb

    return lmdb


def _prepare_dir(path: str) -> None:
    """Create the cache directory; refuse a regular file or a non-empty folder that is not a cache."""
    fix = "pass a new or empty directory for the image cache (it is created if missing)"
    if os.path.exists(path) and not os.path.isdir(path):
        raise ImageCacheError(f"image cache {path!r} is an existing file, not a directory; {fix}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ImageCacheError(f"image cache {path!r} cannot be created ({e.strerror or e}); {fix}") from e
    entries = set(os.listdir(path))
    if entries and not entries & set(_LMDB_FILES):  # lock.mdb alone: another process is creating it now
        raise ImageCacheError(f"image cache {path!r} is a non-empty directory that holds no image cache; {fix}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ImageCacheError(f"image cache {path!r} is not writable; {fix}")


def _env(path: str, map_size: int):
    """This process's environment for ``path``, opened on first use (after a fork: opened anew)."""
    lmdb = _lmdb()
    with _LOCK:
        held = _ENVS.get(path)
        if held is not None and held[1] == os.getpid():
            return held[0]
        if held is not None:  # inherited through a fork the hook did not see: never touch it again
            _INHERITED.append(_ENVS.pop(path)[0])
        try:
            env = lmdb.open(path, map_size=map_size, subdir=True, readahead=False, meminit=False,
                            max_readers=1024, sync=False, metasync=False, lock=True)
        except lmdb.Error as e:
            raise ImageCacheError(f"image cache {path!r} cannot be opened ({type(e).__name__}: {e}); delete "
                                  f"that directory (it only holds decoded images) or pass another one") from e
        _ENVS[path] = (env, os.getpid())
        return env


def _close(path: str) -> None:
    with _LOCK:
        held = _ENVS.pop(path, None)
        if held is not None and held[1] == os.getpid():
            held[0].close()
        elif held is not None:
            _INHERITED.append(held[0])


def close_image_caches() -> None:
    """Close every cache environment this process opened (they reopen on their next use)."""
    with _LOCK:
        for path in list(_ENVS):
            _close(path)


def _cache_error(path: str, err: Exception) -> ImageCacheError:
    return ImageCacheError(f"image cache {path!r} failed ({type(err).__name__}: {err}); delete that directory "
                           f"(it only holds decoded images) and rerun, or run without the image cache")


def _before_fork() -> None:
    """Close our environments so no child inherits one (LMDB forbids using an environment across fork)."""
    _LOCK.acquire()
    try:
        close_image_caches()
    except Exception:  # a fork must never fail because of the cache; the child then reopens after the pid check
        pass


def _after_fork() -> None:
    _LOCK.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


def load_input(path: Union[str, os.PathLike], recipe, max_pixels: int, cache: Optional[DecodedImageCache] = None,
               decode: str = FEATSTORE_DECODE):
    """What an image extractor's ``preprocess`` takes for the file at ``path``: the decoded PIL image (by
    ``decode``, the extractor's ``image_decode()``) when ``recipe`` is None, else its ``pixels.ResizedImage``
    (the extractor's ``resize_recipe()``, which names its own decode); through ``cache`` when given. Raises
    ``load_image``'s ``ImageDecodeError`` (and the cache's ``ImageCacheError``)."""
    if cache is not None:
        return cache.load(path, max_pixels, decode) if recipe is None else cache.load_resized(path, recipe, max_pixels)
    img = _images().load_image(path, max_pixels=max_pixels, decode=decode if recipe is None else recipe.decode)
    return img if recipe is None else recipe.apply(img)
