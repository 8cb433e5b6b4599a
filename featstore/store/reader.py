"""Reading one committed feature set version: ids and arrays as numpy or torch, selected by key."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..errors import CorruptDataError, FeatstoreError
from .backends import COUNT, VALID, full_schema, make_backend
from .layout import RECORD_FILE, keys_digest, read_record
from .location import Location
from .spec import ArraySpec, Recipe


class FeatureSetVersion:
    """A complete, immutable version. Rows that failed during extraction are never returned."""

    def __init__(self, loc: Location, name: str):
        if not loc.exists(RECORD_FILE):
            raise FeatstoreError(f"{loc.url} is not a complete feature set version")
        self.loc, self.name = loc, name
        self.record: dict = read_record(loc)
        self.version: str = self.record["version"]
        self.user_schema = {k: ArraySpec.from_dict(v) for k, v in self.record["schema"].items()}
        self.schema = full_schema(self.user_schema)
        self.n_rows: int = self.record["n"]
        self.backend = make_backend(self.record["backend"], loc, self.n_rows, self.schema, self.record["chunk_rows"],
                                    self.record.get("backend_options"))
        for ch in self.record.get("chunks", []):  # records before the position tags have none: not checked
            for arr, tag in (ch.get("tags") or {}).items():
                self.backend.tags.setdefault(arr, {})[int(ch["chunk"])] = tag
        self._keys_all: Optional[np.ndarray] = None
        self._checked = False

    # -- description ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"FeatureSetVersion({self.name}@{self.version}, {len(self)} rows)"

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def key_kind(self) -> str:
        return self.record["key_kind"]

    @property
    def modality(self) -> str:
        return self.record["modality"]

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(self.record["recipe"])

    @property
    def failures(self) -> Dict[str, str]:
        return dict(self.record.get("failures", {}))

    @property
    def array_names(self) -> List[str]:
        names = list(self.user_schema)
        if COUNT in self.schema and COUNT not in names:
            names.append(COUNT)
        return names

    def spec(self, name: str) -> ArraySpec:
        self._check_name(name)
        return self.schema[name]

    def _check_name(self, name: str) -> None:
        if name not in self.schema or name == VALID:
            raise FeatstoreError(f"feature set {self.ref} has no array {name!r}; it has: {', '.join(self.array_names)}")

    # -- keys ----------------------------------------------------------------------------------------
    def _load_keys(self) -> None:
        if self._keys_all is None:
            keys = self.backend.read_keys()
            want = self.record.get("keys_sha256")
            if want and keys_digest(keys.tolist()) != want:
                where = self.loc.url_of(self.backend.keys_object) if self.backend.keys_object else self.loc.url
                raise CorruptDataError(f"feature set {self.ref}: the stored keys ({where}) are not the keys "
                                       f"committed (checksum mismatch: a damaged or lost key chunk); run `featstore "
                                       f"verify`, then rewrite the version (featstore rm, then rerun)")
            valid = np.ones(len(keys), dtype=bool)
            if self.record.get("n_failed", 0):
                fail = self.failures
                valid = np.array([k not in fail for k in keys], dtype=bool)
            self._keys_all, self._valid = keys, valid
            self._valid_rows = np.flatnonzero(valid)
            self._row_of = {k: i for i, k in enumerate(keys) if valid[i]}

    @property
    def keys(self) -> np.ndarray:
        """Keys of the valid rows, in stored order (image keys or sample ids, see ``key_kind``)."""
        self._load_keys()
        return self._keys_all[self._valid]

    def __len__(self) -> int:
        return int(self.record.get("n_valid", self.n_rows))

    def __contains__(self, key: str) -> bool:
        self._load_keys()
        return str(key) in self._row_of

    def rows_of(self, keys: Sequence[str]) -> np.ndarray:
        """Row index of each key; unknown (or failed) keys raise one error listing the first few."""
        self._load_keys()
        rows = np.fromiter((self._row_of.get(str(k), -1) for k in keys), dtype=np.int64, count=len(keys))
        if (rows < 0).any():
            bad = [str(k) for k, r in zip(keys, rows) if r < 0]
            raise FeatstoreError(f"feature set {self.ref}: {len(bad)} of {len(keys)} keys not found "
                                 f"(first: {', '.join(map(repr, bad[:5]))}); check the dataset manifest matches the "
                                 f"feature set (featstore preflight)")
        return rows

    # -- arrays --------------------------------------------------------------------------------------
    def _ensure_intact(self) -> None:
        if not self._checked:
            missing = self.backend.missing_chunks()
            if missing:
                raise CorruptDataError(f"feature set {self.ref}: {len(missing)} stored chunks are missing "
                                       f"(first: {missing[0]}); run `featstore verify {self.ref}`")
            self._checked = True

    def _read_rows(self, names: List[str], rows: np.ndarray) -> Dict[str, np.ndarray]:
        self._ensure_intact()
        uniq, inverse = np.unique(rows, return_inverse=True)
        data = self.backend.read(names, uniq)
        if len(uniq) == len(rows) and np.array_equal(uniq, rows):
            return data
        return {k: v[inverse] for k, v in data.items()}

    def read(self, name: str) -> np.ndarray:
        """All valid rows of one array, in the order of ``keys``."""
        self._check_name(name)
        self._load_keys()
        return self._read_rows([name], self._valid_rows)[name]

    def select(self, keys: Sequence[str], names: Optional[Iterable[str]] = None, *, max_items: Optional[int] = None,
               torch: bool = False, device=None, dtype=None, pin: bool = False) -> Dict[str, object]:
        """Rows for ``keys`` (repeats allowed, order kept) of the named arrays (default: all).

        Per-item arrays are padded with zeros or cut to ``max_items`` (default: the stored maximum) and
        returned with ``mask`` ([len(keys), max_items] bool, True = real item) and ``count``.
        With ``torch=True`` arrays become tensors: floating ones cast to ``dtype`` if given, pinned if
        ``pin`` (and CUDA is available), moved to ``device`` if given.
        """
        names = list(names) if names is not None else self.array_names
        for n in names:
            self._check_name(n)
        per_item = [n for n in names if self.schema[n].per_item]
        read_names = list(dict.fromkeys(names + ([COUNT] if per_item else [])))
        rows = self.rows_of(list(keys))
        data = self._read_rows(read_names, rows)
        if per_item:
            stored = max(self.schema[n].shape[0] for n in per_item)
            width = stored if max_items is None else int(max_items)
            if width < 1:
                raise FeatstoreError(f"max_items must be >= 1, got {max_items}")
            counts = np.minimum(data[COUNT].astype(np.int64), width)
            for n in per_item:
                a = data[n]
                if a.shape[1] >= width:
                    a = a[:, :width]
                else:
                    pad = np.zeros((a.shape[0], width - a.shape[1]) + a.shape[2:], dtype=a.dtype)
                    a = np.concatenate([a, pad], axis=1)
                data[n] = a
            data["mask"] = np.arange(width)[None, :] < counts[:, None]
            data[COUNT] = counts.astype(np.int32)
        if not torch:
            return data
        return {k: _to_torch(v, device=device, dtype=dtype, pin=pin) for k, v in data.items()}

    def load(self, names: Optional[Iterable[str]] = None, **kw) -> Dict[str, object]:
        """Every valid row (in ``keys`` order) of the named arrays; same options as ``select``."""
        return self.select(list(self.keys), names, **kw)

    # -- auxiliary cache files (e.g. a FAISS index), beside the immutable data ---------------------------
    def read_aux(self, name: str) -> Optional[bytes]:
        return self.loc.read_bytes("aux", name) if self.loc.exists("aux", name) else None

    def write_aux(self, name: str, data: bytes) -> None:
        self.loc.write_bytes(data, "aux", name)


def _to_torch(a: np.ndarray, *, device=None, dtype=None, pin: bool = False):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    if pin and torch.cuda.is_available():
        t = t.pin_memory()
    if device is not None:
        t = t.to(device, non_blocking=pin)
    return t
