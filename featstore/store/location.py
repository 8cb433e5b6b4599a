"""Where a store lives: a local directory or an fsspec URL (s3://, gs://, memory://...).

``Location`` is the one small interface the rest of the store uses for files: read and write bytes and
JSON (writes are atomic: a temporary file renamed into place locally, a single PUT on object stores),
list children, remove a tree, and hand out a Zarr store for a sub-path. Nothing else in the package
touches fsspec or the OS file API for store contents.
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any, Iterable, List, Optional

import fsspec

from ..errors import FeatstoreError


class Location:
    def __init__(self, url: str, storage_options: Optional[dict] = None):
        self.url = str(url).rstrip("/") or "/"
        self.storage_options = dict(storage_options or {})
        protocol = fsspec.core.split_protocol(self.url)[0]
        self.is_local = protocol in (None, "file", "local")
        if self.is_local:
            self.root = os.path.abspath(fsspec.core.strip_protocol(self.url) if protocol else self.url)
            self.fs = fsspec.filesystem("file")
        else:
            try:
                self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
            except (ImportError, ValueError) as e:
                raise FeatstoreError(f"store URL {self.url!r} cannot be opened: {e}; for s3:// install the "
                                     f"extra `pip install featstore-heads[s3]`") from None
            self.root = self.root.rstrip("/")
        self.protocol = "file" if self.is_local else protocol

    # -- paths ---------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Absolute path (in the filesystem's own terms) of a sub-path."""
        join = os.path.join if self.is_local else posixpath.join
        return join(self.root, *parts) if parts else self.root

    def url_of(self, *parts: str) -> str:
        if self.is_local:
            return self.path(*parts)
        return f"{self.protocol}://{self.path(*parts)}"

    def child(self, *parts: str) -> "Location":
        return Location(self.url_of(*parts), self.storage_options)

    # -- queries -------------------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def listdir(self, *parts: str) -> List[str]:
        """Names of the direct children of a directory (empty when it does not exist)."""
        p = self.path(*parts)
        if self.is_local:
            try:
                return sorted(os.listdir(p))
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            self.fs.invalidate_cache(p)
            entries = self.fs.ls(p, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != p.rstrip("/"))

    def find(self, *parts: str) -> List[str]:
        """Every file below a directory, as paths relative to it."""
        p = self.path(*parts)
        if not self.fs.exists(p):
            return []
        if not self.is_local:
            self.fs.invalidate_cache(p)
        files = self.fs.find(p)
        prefix = p.rstrip("/").rstrip(os.sep) + ("/" if not self.is_local else os.sep)
        out = []
        for f in files:
            if self.is_local:
                f = os.path.abspath(f)
            out.append(f[len(prefix):].replace(os.sep, "/") if f.startswith(prefix) else f)
        return sorted(out)

    # -- bytes and JSON ------------------------------------------------------------------------------
    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open(self.path(*parts), "rb") as f:
            return f.read()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a whole file atomically: readers see the old content or the new, never a part."""
        p = self.path(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = f"{p}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        else:
            with self.fs.open(p, "wb") as f:  # one PUT: atomic on object stores
                f.write(data)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts).decode("utf-8"))

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=1, sort_keys=True, default=str).encode("utf-8"), *parts)

    def makedirs(self, *parts: str) -> None:
        if self.is_local:
            os.makedirs(self.path(*parts), exist_ok=True)

    def remove_tree(self, *parts: str) -> None:
        p = self.path(*parts)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    def remove_files(self, paths: Iterable[str]) -> None:
        for rel in paths:
            p = self.path(rel)
            if self.fs.exists(p):
                self.fs.rm(p)

    # -- zarr ------------------------------------------------------------------------------------------
    def zarr_store(self, *parts: str, read_only: bool = False):
        import zarr.storage

        if self.is_local:
            return zarr.storage.LocalStore(self.path(*parts), read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url_of(*parts), storage_options=self.storage_options or None,
                                                 read_only=read_only)
