"""Where the search commands write: ``--out`` checked before any work, files written under temporary names and
renamed into place at the end, so a command that fails leaves no new file (nor a new folder) behind.

* ``check_out_dir(path)``: a folder for several files (``featstore confounders``): an existing file, or a place
  where no folder can be created, is a one-line error naming ``--out``.
* ``check_out_file(path)``: one file (``featstore map``): an existing folder, or a folder that cannot be written,
  likewise.
* ``AtomicOutputs``: ``path(final)`` gives a temporary file beside ``final`` (creating missing folders);
  ``commit()`` renames every one into place; ``abort()`` removes them and the folders it created. As a context
  manager it commits on success and aborts on any exception.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Tuple

from ..errors import FeatstoreError


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, target: Path, flag: str) -> None:
    """Create and remove a temporary folder in ``folder``: the check that writing there works (permissions,
    read-only or virtual file systems such as /proc)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".featstore-probe-", dir=folder))
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise FeatstoreError(f"{flag} {str(target)!r} cannot be written ({why} in {str(folder)!r}); pass a path "
                             "in a folder you can write to") from None


def check_out_dir(path, flag: str = "--out", holds: str = "the output files") -> Path:
    """``path`` as a folder to write ``holds`` into (created at the end if missing); checked, nothing created."""
    target = Path(os.fspath(path)).absolute()
    if target.exists() and not target.is_dir():
        raise FeatstoreError(f"{flag} {str(path)!r} is a file, not a folder; pass a folder for {holds} (it is "
                             "created if missing)")
    base = _existing_ancestor(target)
    if not base.is_dir():
        raise FeatstoreError(f"{flag} {str(path)!r}: {str(base)!r} is a file, so no folder can be created below "
                             "it; pass another folder")
    _probe(base, Path(os.fspath(path)), flag)
    return target


def check_out_file(path, flag: str = "--out", example: str = "map.png") -> Path:
    """``path`` as one file to write (its folder created at the end if missing); checked, nothing created."""
    target = Path(os.fspath(path)).absolute()
    if target.is_dir():
        raise FeatstoreError(f"{flag} {str(path)!r} is a folder; pass a file path, e.g. "
                             f"{os.path.join(str(path), example)}")
    base = _existing_ancestor(target.parent)
    if not base.is_dir():
        raise FeatstoreError(f"{flag} {str(path)!r}: {str(base)!r} is a file, not a folder; pass a file path "
                             "inside a folder")
    _probe(base, Path(os.fspath(path)), flag)
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class AtomicOutputs:
    """Temporary files renamed into place together (see the module docstring)."""

    def __init__(self) -> None:
        self._files: List[Tuple[str, str]] = []  # (temporary, final)
        self._made: List[Path] = []  # folders created here, outermost first

    def path(self, final) -> str:
        final = Path(os.fspath(final)).absolute()
        missing = []
        p = final.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._made.append(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it, not mkstemp's 0600
        self._files.append((tmp, str(final)))
        return tmp

    def commit(self) -> None:
        """Rename every temporary file into place; a name taken by a folder is refused before any rename, and a
        rename that fails removes the temporary files (one line naming the file)."""
        taken = [final for _, final in self._files if os.path.isdir(final)]
        if taken:
            self.abort()
            raise FeatstoreError(f"cannot write {taken[0]!r}: a folder has that name; move it away or pass another "
                                 "--out")
        try:
            for tmp, final in self._files:
                os.replace(tmp, final)
        except OSError as err:
            self.abort()
            raise _write_error(err) from None
        self._files, self._made = [], []

    def abort(self) -> None:
        for tmp, _ in self._files:
            try:
                os.remove(tmp)
            except OSError:
                pass
        for folder in reversed(self._made):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._files, self._made = [], []

    def __enter__(self) -> "AtomicOutputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        self.abort()
        if isinstance(exc, OSError):  # a write that failed (a full disk, a lost mount): one line, no traceback
            raise _write_error(exc) from None


def _write_error(err: OSError) -> FeatstoreError:
    where = f" {err.filename!r}" if err.filename else ""
    return FeatstoreError(f"cannot write{where} ({err.strerror or type(err).__name__}); free space or pass "
                          "another --out")
