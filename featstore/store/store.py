"""A store: named feature sets, each with immutable versions (on-disk layout: layout.py)."""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import CorruptDataError, FeatstoreError
from ..version import __version__
from .backends import close_lmdb_envs
from .layout import CHUNK_DIR, FORMAT_FIELD, FORMAT_VERSION, MARKER, RECORD_FILE, SETS, SPEC_FILE, array_checksum, \
    intact_record, read_record
from .location import Location
from .reader import FeatureSetVersion
from .spec import ArraySpec, Recipe
from .writer import VersionWriter, os_errors

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def parse_ref(ref: str) -> Tuple[str, Optional[str]]:
    """``NAME`` or ``NAME@VERSION`` -> (name, version or None)."""
    name, _, version = str(ref).partition("@")
    return name, (version or None)


def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise FeatstoreError(f"feature set name {name!r} is invalid; use letters, digits, '.', '_' or '-' "
                             f"(starting with a letter or digit)")
    return name


@dataclass
class VersionInfo:
    name: str
    version: str
    complete: bool
    created: str
    n: int
    n_valid: int
    extractor: str
    modality: str
    chunks_done: int = 0
    chunks_total: int = 0
    created_unix: float = 0.0  # commit time in seconds (``created`` has one-second resolution)


def open_store(url: str, *, create: bool = False, storage_options: Optional[dict] = None) -> "Store":
    """Open the store at a local path or fsspec URL; ``create=True`` makes it when absent."""
    loc = Location.from_url(url, storage_options)
    if loc.is_local and os.path.exists(loc.root) and not os.path.isdir(loc.root):
        raise FeatstoreError(f"store path {url!r} is a file, not a directory; pass a directory for --store")
    if loc.is_local and any(os.path.isfile(p) for p in _parents(loc.root)):
        raise FeatstoreError(f"store path {url!r} is below a file ({next(p for p in _parents(loc.root) if os.path.isfile(p))}); "
                             f"pass a directory for --store")
    try:
        present = loc.exists(MARKER)
    except Exception as e:  # network / credentials errors from fsspec
        raise FeatstoreError(f"store {url!r} cannot be reached: {type(e).__name__}: {e}") from None
    if not present:
        if not create:
            raise FeatstoreError(f"no store at {url!r}; create one with `featstore init {url}` (or check the path)")
        # names starting with the marker are another process creating this store at the same moment
        others = [n for n in loc.listdir() if not n.startswith(MARKER)] if loc.is_local else []
        if others and not loc.exists(SETS):
            raise FeatstoreError(f"{url!r} exists and is not empty but is not a featstore store; choose an empty "
                                 f"or new directory")
        with os_errors("the store marker", url):
            loc.makedirs()
            loc.write_json({"format": "featstore", FORMAT_FIELD: FORMAT_VERSION, "created": time.time(),
                            "tool_version": __version__}, MARKER)
    return Store(loc)


def _parents(path: str) -> List[str]:
    out, p = [], os.path.dirname(os.path.abspath(path))
    while p and p != os.path.dirname(p):
        out.append(p)
        p = os.path.dirname(p)
    return out


class Store:
    def __init__(self, loc: Location):
        self.loc = loc
        self.url = loc.url

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def _vloc(self, name: str, version: str) -> Location:
        return self.loc.child(SETS, check_name(name), version)

    # -- listing -------------------------------------------------------------------------------------
    def feature_sets(self) -> List[str]:
        return [n for n in self.loc.listdir(SETS) if _NAME_RE.match(n)]

    def _info(self, name: str, version: str) -> Optional[VersionInfo]:
        vloc = self._vloc(name, version)
        r = intact_record(vloc)
        if r is not None:
            return VersionInfo(name, version, True, r["created"], r["n"], r["n_valid"], r["recipe"]["extractor"],
                               r["modality"], len(r["chunks"]), len(r["chunks"]), float(r.get("created_unix", 0.0)))
        if vloc.exists(SPEC_FILE):
            try:
                s = vloc.read_json(SPEC_FILE)
            except ValueError:
                return None  # a damaged start record: `featstore verify` names it
            total = max(1, -(-s["n"] // s["chunk_rows"])) if s["n"] else 0
            done = len([f for f in vloc.listdir(CHUNK_DIR) if f.endswith(".json")])
            return VersionInfo(name, version, False, "", s["n"], 0, s["recipe"]["extractor"], s["modality"], done, total)
        return None

    def versions(self, name: str, *, include_incomplete: bool = False) -> List[VersionInfo]:
        """Versions of a feature set, oldest first; complete ones only unless asked."""
        infos = [i for v in self.loc.listdir(SETS, check_name(name)) if (i := self._info(name, v))]
        if not include_incomplete:
            infos = [i for i in infos if i.complete]
        return sorted(infos, key=lambda i: (not i.complete, i.created_unix, i.created, i.version))

    def resolve(self, name: str, version: Optional[str] = None) -> str:
        """The full version id: the latest complete one by default; a unique prefix is accepted."""
        complete = self.versions(name)
        if not complete or (version and not any(i.version.startswith(version) for i in complete)):
            self._raise_if_damaged(name, version)
        if not complete:
            sets = self.feature_sets()
            if name not in sets:
                raise FeatstoreError(f"feature set {name!r} not found in {self.url}; it has: {', '.join(sets) or '(none)'}")
            raise FeatstoreError(f"feature set {name!r} has no complete version yet; finish the extraction (rerun "
                                 f"the same command to resume)")
        if version in (None, "", "latest"):
            return complete[-1].version
        matches = [i.version for i in complete if i.version.startswith(version)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            incomplete = [i.version for i in self.versions(name, include_incomplete=True)
                          if not i.complete and i.version.startswith(version)]
            hint = " (it is incomplete: rerun the command that writes it)" if incomplete else ""
            raise FeatstoreError(f"feature set {name!r} has no complete version {version!r}{hint}; versions: "
                                 f"{', '.join(i.version for i in complete)}")
        raise FeatstoreError(f"version prefix {version!r} of {name!r} is ambiguous: {', '.join(matches)}")

    def _raise_if_damaged(self, name: str, version: Optional[str]) -> None:
        """A version asked for (or the only ones there) whose record exists but is damaged: say that, not
        "not found"."""
        for v in self.loc.listdir(SETS, check_name(name)):
            vloc = self._vloc(name, v)
            if (not version or v.startswith(version)) and vloc.exists(RECORD_FILE) and intact_record(vloc) is None:
                read_record(vloc)  # raises the one-line CorruptDataError naming the file

    def open(self, name: str, version: Optional[str] = None) -> FeatureSetVersion:
        """A complete version (``name`` may be ``NAME@VERSION``); latest complete when no version is given."""
        if version is None and "@" in name:
            name, version = parse_ref(name)
        return FeatureSetVersion(self._vloc(name, self.resolve(name, version)), name)

    # -- writing -------------------------------------------------------------------------------------
    def writer(self, name: str, recipe: Recipe, keys: Sequence[str], schema: Dict[str, ArraySpec], *,
               key_kind: str, modality: str, chunk_rows: int = 64, backend: str = "zarr",
               backend_options: Optional[dict] = None, meta: Optional[dict] = None) -> VersionWriter:
        """Start (or resume, or find already complete) the version that ``recipe`` names."""
        if key_kind not in ("image_key", "sample_id"):
            raise FeatstoreError(f"key_kind must be 'image_key' or 'sample_id', got {key_kind!r}")
        if modality not in ("image", "text", "fused"):
            raise FeatstoreError(f"modality must be 'image', 'text' or 'fused', got {modality!r}")
        return VersionWriter(self._vloc(name, recipe.version_id), name, recipe, keys, schema, key_kind=key_kind,
                             modality=modality, open_version=FeatureSetVersion, chunk_rows=chunk_rows,
                             backend=backend, backend_options=backend_options, meta=meta)

    def write(self, name: str, recipe: Recipe, keys: Sequence[str], arrays: Dict[str, np.ndarray], *,
              key_kind: str, modality: str, schema: Optional[Dict[str, ArraySpec]] = None,
              failures: Optional[Dict[str, str]] = None, per_item: Sequence[str] = (), **kw) -> FeatureSetVersion:
        """Write a whole in-memory feature set in one call (arrays hold every row in ``keys`` order)."""
        keys = [str(k) for k in keys]
        failures = dict(failures or {})
        if schema is None:
            schema = {k: ArraySpec(np.asarray(v).shape[1:], np.asarray(v).dtype.name, k in per_item)
                      for k, v in arrays.items() if k != "count"}
        w = self.writer(name, recipe, keys, schema, key_kind=key_kind, modality=modality, **kw)
        for c in w.pending_chunks():
            sl = w.chunk_slice(c)
            w.write_chunk(c, {k: np.asarray(v)[sl] for k, v in arrays.items()},
                          {k: failures[k] for k in keys[sl] if k in failures})
        return w.commit()

    # -- maintenance ---------------------------------------------------------------------------------
    def rm(self, name: str, version: Optional[str] = None, *, all_versions: bool = False) -> List[str]:
        """Remove one version (complete or not; a unique prefix is accepted) or, with all_versions, the set."""
        if name not in self.feature_sets():
            raise FeatstoreError(f"feature set {name!r} not found in {self.url}")
        if all_versions:
            removed = [i.version for i in self.versions(name, include_incomplete=True)]
            close_lmdb_envs()
            self.loc.remove_tree(SETS, name)
            return removed
        if version is None:
            raise FeatstoreError(f"name a version to remove ({name}@VERSION) or pass --all to remove every version")
        every = [v for v in self.loc.listdir(SETS, name) if v.startswith(version)]
        if len(every) != 1:
            raise FeatstoreError(f"version {version!r} of {name!r} matches {len(every)} versions; give more of the id")
        vloc = self._vloc(name, every[0])
        close_lmdb_envs()
        vloc.remove_files([RECORD_FILE])  # invisible first, then the data
        vloc.remove_tree()
        if not self.loc.listdir(SETS, name):
            self.loc.remove_tree(SETS, name)
        return every

    def verify_all(self) -> List["VerifyReport"]:
        """``verify`` of every version directory, damaged ones included: a version whose record is damaged,
        or missing while its chunks are all written, is reported, and the others are still checked."""
        reports = []
        for name in self.feature_sets():
            for version in self.loc.listdir(SETS, name):
                vloc = self._vloc(name, version)
                ref = f"{name}@{version}"
                if vloc.exists(RECORD_FILE):
                    reports.append(self.verify(name, version))
                elif vloc.exists(SPEC_FILE):
                    unrecorded = _unrecorded(vloc, ref)
                    if unrecorded is not None:
                        reports.append(unrecorded)
        return reports

    def verify(self, name: str, version: Optional[str] = None) -> "VerifyReport":
        """Re-read every chunk and compare with the checksums recorded at commit; damage is reported, not raised."""
        if version is None and "@" in name:
            name, version = parse_ref(name)
        vloc = self._vloc(name, version) if version else None
        try:
            if vloc is not None and vloc.exists(RECORD_FILE):
                fsv = FeatureSetVersion(vloc, name)  # a damaged record is named, not "not found"
            else:
                fsv = self.open(name, version)
        except CorruptDataError as e:
            return VerifyReport(f"{name}@{version}" if version else name, [(None, "record", str(e))])
        return _verify_version(fsv)


def _unrecorded(vloc: Location, ref: str) -> Optional["VerifyReport"]:
    """A version with every chunk marker but no record (a deleted version.json); None when unfinished."""
    try:
        s = vloc.read_json(SPEC_FILE)
    except ValueError as e:
        return VerifyReport(ref, [(None, "record", f"start record {vloc.url_of(SPEC_FILE)} is damaged ({e}); "
                                                   f"remove the version and extract it again")])
    total = max(1, -(-s["n"] // s["chunk_rows"])) if s["n"] else 0
    done = len([f for f in vloc.listdir(CHUNK_DIR) if f.endswith(".json")])
    if done < total:
        return None  # an extraction still running or killed: resumable, not damage
    return VerifyReport(ref, [(None, "record", f"{vloc.url_of(RECORD_FILE)} is missing but all {total} chunks are "
                                               f"written; rerun the extraction that wrote it to recommit it")])


def _as_verify_says(err: Exception) -> str:
    """A reader's damage message as ``featstore verify`` lists it: without its advice to run verify."""
    return str(err).replace("run `featstore verify`, then ", "")


def _verify_version(fsv: FeatureSetVersion) -> "VerifyReport":
    report = VerifyReport(fsv.ref)
    try:
        fsv.keys
    except CorruptDataError as e:
        report.problems.append((None, "ids", _as_verify_says(e)))
    missing = fsv.backend.missing_chunks()
    for obj in missing:
        report.problems.append((None, obj, "missing"))
    for ch in fsv.record["chunks"]:
        c = ch["chunk"]
        names = [k for k in fsv.schema if k in ch["checksums"]]
        try:  # the whole chunk in one read (LMDB decodes each record once for all its arrays)
            data = fsv.backend.read_chunk(c, names)
        except CorruptDataError:
            data = {}
            for k in names:  # one array at a time, so the problem names its array
                try:
                    data[k] = fsv.backend.read_chunk(c, [k])[k]
                except CorruptDataError as e:
                    why = _as_verify_says(e)
                    whole_file = "data.mdb" in why or "zarr.json" in why  # a whole file: said once
                    if any(f"/{obj} " in why for obj in missing):  # its missing object is already listed
                        continue
                    if not whole_file or all(why not in said for _, _, said in report.problems):
                        report.problems.append((c, k, f"unreadable: {why}"))
        for k, arr in data.items():
            if array_checksum(arr) != ch["checksums"][k]:
                report.problems.append((c, k, "checksum mismatch"))
        report.chunks_checked += 1
    return report


@dataclass
class VerifyReport:
    ref: str
    problems: list = None
    chunks_checked: int = 0

    def __post_init__(self):
        self.problems = [] if self.problems is None else self.problems

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> List[str]:
        if self.ok:
            return [f"{self.ref}: OK ({self.chunks_checked} chunks verified)"]
        out = [f"{self.ref}: {len(self.problems)} problem(s)"]
        for c, arr, why in self.problems:
            where = f"chunk {c}" if c is not None else "object"
            out.append(f"  {where} {arr}: {why}")
        return out
