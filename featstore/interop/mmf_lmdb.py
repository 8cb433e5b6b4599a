"""MMF feature LMDBs (``mmf/tools/scripts/features/lmdb_conversion.py`` layout).

The database holds ``b"keys"`` -> pickled list of keys (bytes, or str in some exports) and, per key,
the pickled record dict (see ``featstore.interop``). Records are unpickled with ``safe_pickle`` (numpy
arrays and plain values only), so a hostile LMDB cannot run code.

``write_mmf_lmdb`` writes the same layout as MMF's conversion script (keys as UTF-8 bytes, pickle
protocol 4), so MMF's ``LMDBFeatureReader`` reads it back. Keys in MMF exports may be written with or
without the image name's leading zeros, with a folder, a suffix or a Windows separator;
``normalize_key``/``match_keys`` map them to image keys.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import lmdb

from ..errors import FeatstoreError
from ..store.backends import check_lmdb_size
from .records import check_record
from .safe_pickle import safe_loads

KEYS_ENTRY = b"keys"
SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
MAX_READERS = 2048
Key = Union[str, bytes]


def normalize_key(key: Key) -> str:
    """The image key an MMF key stands for: the file stem with leading zeros kept.

    ``"img/02345.png"``, ``"img\\\\02345.png"``, ``"02345.npy"``, ``b"02345"`` -> ``"02345"``;
    ``"2345"`` stays ``"2345"`` (``match_keys`` compares numeric stems as integers).
    """
    if isinstance(key, (bytes, bytearray)):
        key = bytes(key).decode("utf-8")
    name = str(key).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    stripped = True
    while stripped:
        stripped = False
        for suffix in SUFFIXES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name, stripped = name[: -len(suffix)], True
                break
    return name


class KeyMatch(dict):
    """``image_key -> lmdb_key`` (the LMDB key exactly as given), plus what did not match:
    ``missing`` (image keys without features) and ``unused`` (LMDB keys no image key asked for)."""

    def __init__(self, mapping: Dict[str, Key], missing: List[str], unused: List[Key]):
        super().__init__(mapping)
        self.missing = missing
        self.unused = unused

    def summary(self) -> str:
        return (f"{len(self)} image keys matched, {len(self.missing)} without features, "
                f"{len(self.unused)} source keys unused")


def _is_number(stem: str) -> bool:
    return stem.isascii() and stem.isdigit()


def match_keys(lmdb_keys: Sequence[Key], image_keys: Sequence[str]) -> KeyMatch:
    """Map each image key to the LMDB key holding its features.

    Keys are compared by ``normalize_key`` stem; when no stem is equal, numeric stems are compared as
    integers (``"2345"`` matches ``"02345"``). Two LMDB keys matching the same image key raise
    ``FeatstoreError``, and so do ``"1235"`` beside ``"01235"`` for image ``"01235"``: MMF's
    ``LMDBFeatureReader`` looks up ``str(int(name))`` before the name itself, so it reads the other record than
    the exact stem. Unmatched keys are reported in ``KeyMatch.missing`` / ``.unused``.
    """
    by_stem: Dict[str, List[int]] = {}
    by_int: Dict[int, List[int]] = {}
    for i, k in enumerate(lmdb_keys):
        stem = normalize_key(k)
        by_stem.setdefault(stem, []).append(i)
        if _is_number(stem):
            by_int.setdefault(int(stem), []).append(i)
    mapping: Dict[str, Key] = {}
    used = set()
    missing: List[str] = []
    clashes: List[str] = []
    for image_key in image_keys:
        stem = normalize_key(image_key)
        plain = str(int(stem)) if _is_number(stem) else None
        cands = by_stem.get(stem) or (by_int.get(int(plain)) if plain is not None else None)
        if cands and plain not in (None, stem) and by_stem.get(plain):  # MMF's reader takes str(int(name)) first
            cands = list(dict.fromkeys(by_stem[plain] + cands))
        if not cands:
            missing.append(image_key)
        elif len(cands) > 1:
            clashes.append(_clash(image_key, [lmdb_keys[c] for c in cands], plain))
        else:
            mapping[image_key] = lmdb_keys[cands[0]]
            used.add(cands[0])
    if clashes:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise FeatstoreError(f"feature keys are ambiguous: {'; '.join(clashes[:3])}{more}; several LMDB keys name "
                             f"the same image, remove the duplicates from the feature file")
    unused = [k for i, k in enumerate(lmdb_keys) if i not in used]
    return KeyMatch(mapping, missing, unused)


def _clash(image_key: str, keys: List[Key], plain: Optional[str]) -> str:
    """``'01235' <- '1235', '01235' (MMF's reader takes '1235')``: the key MMF's ``LMDBFeatureReader._load``
    tries first (``str(int(name))``), when one of them is it."""
    text = f"{image_key!r} <- {', '.join(repr(k) for k in keys[:3])}"
    first = [k for k in keys if normalize_key(k) == plain]
    return text + (f" (MMF's reader takes {first[0]!r}, the number without leading zeros)" if first else "")


class MMFLmdbReader:
    """Read-only access to an MMF feature LMDB.

    ``keys``: the stored keys decoded to str, in stored order; ``len(reader)``; ``key in reader``;
    ``get(key) -> record``; iterating yields ``(key, record)``. Safe to use from DataLoader workers:
    the environment is reopened in a forked process.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FeatstoreError(f"MMF LMDB {self.path} does not exist; check the path")
        self._env: Optional[lmdb.Environment] = None
        self._pid = -1
        with self._txn() as txn:
            raw = txn.get(KEYS_ENTRY)
        if raw is None:
            raise FeatstoreError(f"MMF LMDB {self.path} has no b'keys' entry; it is not an MMF feature LMDB "
                                 f"(convert it with MMF's lmdb_conversion.py)")
        stored = safe_loads(raw, source=f"{self.path}[keys]")
        if not isinstance(stored, (list, tuple)) or not all(isinstance(k, (bytes, str)) for k in stored):
            raise FeatstoreError(f"MMF LMDB {self.path}: b'keys' must hold a list of str/bytes keys; re-create it")
        self._raw: Dict[str, bytes] = {}
        for k in stored:
            name = k.decode("utf-8") if isinstance(k, bytes) else k
            self._raw[name] = k if isinstance(k, bytes) else k.encode("utf-8")
        self.keys: List[str] = list(self._raw)

    def _open(self) -> lmdb.Environment:
        if self._env is None or self._pid != os.getpid():
            try:
                self._env = lmdb.open(self.path, subdir=os.path.isdir(self.path), readonly=True, lock=False,
                                      readahead=False, meminit=False, max_readers=MAX_READERS)
            except lmdb.Error as e:
                raise FeatstoreError(f"MMF LMDB {self.path} cannot be opened ({e}); check it is an LMDB") from None
            data = os.path.join(self.path, "data.mdb") if os.path.isdir(self.path) else self.path
            check_lmdb_size(self._env, data)  # a truncated file would kill the process with SIGBUS on read
            self._pid = os.getpid()
        return self._env

    def _txn(self):
        return self._open().begin(write=False)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: Key) -> bool:
        return (key.decode("utf-8") if isinstance(key, bytes) else key) in self._raw

    def get(self, key: Key) -> Dict[str, Any]:
        """The record of ``key`` (str or bytes, as listed in ``keys``)."""
        name = key.decode("utf-8") if isinstance(key, bytes) else key
        raw_key = self._raw.get(name)
        if raw_key is None:
            raise FeatstoreError(f"MMF LMDB {self.path} has no key {name!r} ({len(self)} keys, e.g. "
                                 f"{self.keys[:3]}); map image keys with match_keys()")
        with self._txn() as txn:
            data = txn.get(raw_key)
        if data is None:
            raise FeatstoreError(f"MMF LMDB {self.path}: key {name!r} is listed in b'keys' but has no record; "
                                 f"the LMDB is incomplete, re-create it")
        source = f"{self.path}[{name}]"
        return check_record(safe_loads(data, source=source), source=source)

    def __iter__(self) -> Iterator[Tuple[str, Dict[str, Any]]]:
        for k in self.keys:
            yield k, self.get(k)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> "MMFLmdbReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_mmf_lmdb(path: Union[str, os.PathLike]) -> MMFLmdbReader:
    """Open an MMF feature LMDB (a folder with data.mdb, or a single .mdb/.lmdb file) read-only."""
    return MMFLmdbReader(path)


def write_mmf_lmdb(path: Union[str, os.PathLike], records: Iterable[Tuple[str, Dict[str, Any]]],
                   map_size: int = 1 << 26, batch: int = 256) -> List[str]:
    """Write ``(key, record)`` pairs as an MMF feature LMDB folder at ``path``; returns the keys written.

    Each record is checked (``check_record``; rows of ``bbox`` past the features are kept: MMF's collate needs
    them as wide as its padded features) and stored as ``pickle.dumps(record, protocol=4)`` under the UTF-8
    key; ``b"keys"`` gets the pickled list of byte keys. ``map_size`` is the starting map size; it doubles
    whenever a batch does not fit. Records are committed ``batch`` at a time.
    """
    path = os.fspath(path)
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise FeatstoreError(f"MMF LMDB {path} already exists; remove it or choose another output path")
    env = lmdb.open(path, subdir=True, map_size=map_size, max_readers=MAX_READERS)
    keys: List[bytes] = []
    seen = set()

    def put_all(items: List[Tuple[bytes, bytes]]) -> None:
        while True:
            try:
                with env.begin(write=True) as txn:
                    for k, v in items:
                        txn.put(k, v)
                return
            except lmdb.MapFullError:
                env.set_mapsize(env.info()["map_size"] * 2)

    try:
        pending: List[Tuple[bytes, bytes]] = []
        for key, record in records:
            if not isinstance(key, str) or not key:
                raise FeatstoreError(f"MMF LMDB {path}: keys must be non-empty strings, got {key!r}")
            bkey = key.encode("utf-8")
            if bkey == KEYS_ENTRY or bkey in seen:
                what = "is reserved for the key list" if bkey == KEYS_ENTRY else "is given twice"
                raise FeatstoreError(f"MMF LMDB {path}: key {key!r} {what}; rename the image")
            seen.add(bkey)
            rec = check_record(record, source=f"record {key!r} for {path}", keep_bbox_rows=True)
            pending.append((bkey, pickle.dumps(rec, protocol=4)))
            keys.append(bkey)
            if len(pending) >= batch:
                put_all(pending)
                pending = []
        pending.append((KEYS_ENTRY, pickle.dumps(keys, protocol=4)))
        put_all(pending)
    finally:
        env.close()
    return [k.decode("utf-8") for k in keys]
