"""What a feature set version holds (``ArraySpec``) and what produced it (``Recipe``).

The version id is a hash of the recipe, so writing the same recipe twice names the same version.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Tuple

import numpy as np

from ..errors import FeatstoreError
from ..jsonio import canonical_json
from ..version import __version__

SUPPORTED_DTYPES = ("float16", "float32", "float64", "int64", "int32", "int16", "uint8", "bool")


@dataclass(frozen=True)
class ArraySpec:
    """One stored array: per row ``shape`` (the leading N axis is implied) and ``dtype``.

    ``per_item``: the first axis of ``shape`` counts items (regions, tokens) whose true number per row is
    in the version's ``count`` array; readers pad or cut that axis and give a mask.
    """

    shape: Tuple[int, ...]
    dtype: str
    per_item: bool = False

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        try:
            dt = np.dtype(self.dtype).name
        except TypeError:
            dt = str(self.dtype)
        if dt not in SUPPORTED_DTYPES:
            raise FeatstoreError(f"dtype {self.dtype!r} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}")
        object.__setattr__(self, "dtype", dt)
        if self.per_item and not self.shape:
            raise FeatstoreError("a per-item array needs at least one axis after N (the item axis)")

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "per_item": self.per_item}

    @classmethod
    def from_dict(cls, d: dict) -> "ArraySpec":
        return cls(tuple(d["shape"]), d["dtype"], bool(d.get("per_item", False)))


@dataclass
class Recipe:
    """Everything that determines a version's content. ``version_id`` hashes all of it."""

    extractor: str
    config: Dict[str, Any] = field(default_factory=dict)
    weights_fingerprint: str = ""
    preprocessing: Dict[str, Any] = field(default_factory=dict)
    manifest_fingerprint: str = ""
    tool_version: str = __version__
    compute: Dict[str, Any] = field(default_factory=dict)  # how the numbers were computed, e.g. {"autocast": "bf16"}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        return cls(**d)

    @property
    def version_id(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict(), "recipe").encode()).hexdigest()[:16]
