"""Where a store lives: a local directory or an fsspec URL (s3://, gs://, memory://...).

``Location`` is the one small interface the rest of the store uses for files: read and write bytes and
JSON (writes are atomic), list children, remove a tree, lock, and hand out a Zarr store for a sub-path.
Two implementations, as zarr has ``LocalStore`` and ``FsspecStore``: ``LocalLocation`` (the OS file API:
a temporary file renamed into place, ``flock``) and ``FsspecLocation`` (object stores: a single PUT, no
locks); ``Location.from_url`` chooses. Nothing else in the package touches fsspec or the OS file API for
store contents.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time
import uuid
from abc import ABC, abstractmethod
from typing import Any, Iterable, Iterator, List, Optional

import fsspec

from ..errors import FeatstoreError
from ..jsonio import to_jsonable

LOCAL_PROTOCOLS = (None, "file", "local")


class Location(ABC):
    """One directory (or bucket prefix); sub-paths are given as parts (``loc.exists("chunks", "0.json")``)."""

    is_local: bool  # the OS file API works on ``path()`` (LMDB, direct chunk reads, open_store's path checks)
    SEP = "/"  # what separates the parts of ``path()``
    fs: Any  # the fsspec filesystem
    root: str  # ``path()`` of the location itself
    protocol: str

    def __init__(self, url: str, storage_options: Optional[dict] = None):
        self.url = str(url).rstrip("/") or "/"
        self.storage_options = dict(storage_options or {})

    @staticmethod
    def from_url(url: str, storage_options: Optional[dict] = None) -> "Location":
        """A ``LocalLocation`` for a path or ``file://`` URL, an ``FsspecLocation`` for any other protocol."""
        protocol = fsspec.core.split_protocol(str(url).rstrip("/") or "/")[0]
        cls = LocalLocation if protocol in LOCAL_PROTOCOLS else FsspecLocation
        return cls(url, storage_options)

    # -- paths ---------------------------------------------------------------------------------------
    @abstractmethod
    def path(self, *parts: str) -> str:
        """Absolute path (in the filesystem's own terms) of a sub-path."""

    @abstractmethod
    def url_of(self, *parts: str) -> str:
        """What a message names: the local path, or the URL on an object store."""

    def child(self, *parts: str) -> "Location":
        return type(self)(self.url_of(*parts), self.storage_options)

    # -- queries -------------------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    @abstractmethod
    def listdir(self, *parts: str) -> List[str]:
        """Names of the direct children of a directory (empty when it does not exist)."""

    def find(self, *parts: str) -> List[str]:
        """Every file below a directory, as paths relative to it."""
        p = self.path(*parts)
        if not self.fs.exists(p):
            return []
        prefix = p.rstrip("/").rstrip(os.sep) + self.SEP
        return sorted(f[len(prefix):].replace(os.sep, "/") if f.startswith(prefix) else f for f in self._files(p))

    @abstractmethod
    def _files(self, p: str) -> List[str]:
        """Every file below ``p`` as full paths comparable with ``path()``."""

    # -- bytes and JSON ------------------------------------------------------------------------------
    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open(self.path(*parts), "rb") as f:
            return f.read()

    @abstractmethod
    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a whole file atomically: readers see the old content or the new, never a part."""

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts).decode("utf-8"))

    def write_json(self, obj: Any, *parts: str) -> None:
        text = json.dumps(to_jsonable(obj, where=parts[-1]), indent=1, sort_keys=True)  # as record digests see it
        self.write_bytes(text.encode("utf-8"), *parts)

    @abstractmethod
    def makedirs(self, *parts: str) -> None:
        """Create a directory and its parents (object stores have none to create)."""

    def remove_tree(self, *parts: str) -> None:
        p = self.path(*parts)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    def remove_files(self, paths: Iterable[str]) -> None:
        for rel in paths:
            p = self.path(rel)
            if self.fs.exists(p):
                self.fs.rm(p)

    # -- concurrent writers --------------------------------------------------------------------------
    @abstractmethod
    def lock(self, name: str) -> contextlib.AbstractContextManager:
        """An exclusive lock (held while the ``with`` block runs) on the lock file ``name``."""

    @abstractmethod
    def remove_stale_tmp(self, *parts: str, older_than_s: float) -> None:
        """Remove the temporary files of atomic writes a killed writer left in a directory (never renamed)."""

    # -- zarr ------------------------------------------------------------------------------------------
    @abstractmethod
    def zarr_store(self, *parts: str, read_only: bool = False):
        """A zarr-python store for a sub-path."""


class LocalLocation(Location):
    """A local directory, through the OS file API."""

    is_local = True
    SEP = os.sep

    def __init__(self, url: str, storage_options: Optional[dict] = None):
        super().__init__(url, storage_options)
        protocol = fsspec.core.split_protocol(self.url)[0]
        self.root = os.path.abspath(fsspec.core.strip_protocol(self.url) if protocol else self.url)
        self.fs = fsspec.filesystem("file")
        self.protocol = "file"

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts) if parts else self.root

    def url_of(self, *parts: str) -> str:
        return self.path(*parts)

    def listdir(self, *parts: str) -> List[str]:
        try:
            return sorted(os.listdir(self.path(*parts)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _files(self, p: str) -> List[str]:
        return [os.path.abspath(f) for f in self.fs.find(p)]

    def write_bytes(self, data: bytes, *parts: str) -> None:
        p = self.path(*parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = f"{p}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    def makedirs(self, *parts: str) -> None:
        os.makedirs(self.path(*parts), exist_ok=True)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        import fcntl

        self.makedirs()
        with open(self.path(name), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def remove_stale_tmp(self, *parts: str, older_than_s: float) -> None:
        folder, now = self.path(*parts), time.time()
        for entry in (os.scandir(folder) if os.path.isdir(folder) else []):
            if ".tmp-" in entry.name and entry.is_file() and now - entry.stat().st_mtime > older_than_s:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)

    def zarr_store(self, *parts: str, read_only: bool = False):
        import zarr.storage

        return zarr.storage.LocalStore(self.path(*parts), read_only=read_only)


class FsspecLocation(Location):
    """A prefix on any fsspec filesystem (object stores: s3://, gs://, memory://...)."""

    is_local = False

    def __init__(self, url: str, storage_options: Optional[dict] = None):
        super().__init__(url, storage_options)
        self.protocol = fsspec.core.split_protocol(self.url)[0]
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        except (ImportError, ValueError) as e:
            raise FeatstoreError(f"store URL {self.url!r} cannot be opened: {e}; for s3:// install the "
                                 f"extra `pip install featstore-heads[s3]`") from None
        self.root = root.rstrip("/")

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if parts else self.root

    def url_of(self, *parts: str) -> str:
        return f"{self.protocol}://{self.path(*parts)}"

    def listdir(self, *parts: str) -> List[str]:
        p = self.path(*parts)
        try:
            self.fs.invalidate_cache(p)
            entries = self.fs.ls(p, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != p.rstrip("/"))

    def _files(self, p: str) -> List[str]:
        self.fs.invalidate_cache(p)
        return self.fs.find(p)

    def write_bytes(self, data: bytes, *parts: str) -> None:
        with self.fs.open(self.path(*parts), "wb") as f:  # one PUT: atomic on object stores
            f.write(data)

    def makedirs(self, *parts: str) -> None:
        pass  # object stores have no directories

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        yield  # object stores: the first writer (rank 0) creates, the others open after a barrier

    def remove_stale_tmp(self, *parts: str, older_than_s: float) -> None:
        pass  # a PUT leaves no temporary file

    def zarr_store(self, *parts: str, read_only: bool = False):
        import zarr.storage

        return zarr.storage.FsspecStore.from_url(self.url_of(*parts), storage_options=self.storage_options or None,
                                                 read_only=read_only)
