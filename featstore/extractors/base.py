"""The extractor contract, the ``EXTRACTORS`` registry and what every extractor shares.

An extractor turns decoded inputs into fixed-shape arrays for the store. The run loop (not here) calls::

    ex = create_extractor("grid", weights="demo")          # config dataclass built from keyword args
    ex.schema()              -> {name: ArraySpec}         # per-row shapes, storage dtypes
    ex.preprocess(item)      -> {name: CPU tensor}         # in DataLoader workers; PIL image or str
    ex.collate(list)         -> batch                      # DataLoader collate_fn
    ex.to(device, dtype)     -> ex                         # once, before forward
    ex.forward(batch)        -> {name: np.ndarray}         # [N, ...] in the schema's shapes
    ex.weights_fingerprint(), ex.preprocessing(), dataclasses.asdict(ex.config)   # the version recipe

Per-item arrays (``ArraySpec.per_item``: regions, tokens) are returned padded with zeros to the schema's
item count, next to ``count`` (int32 [N], the true number of items per row). Models stay in float32;
on CUDA ``forward`` runs under autocast (bf16 where supported, else fp16) unless ``to(..., torch.float32)``.
"""
from __future__ import annotations

import contextlib
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import FeatstoreError
from ..config_types import build_dataclass, field_default
from ..registry import Registry
from ..store.spec import ArraySpec
from .images import FEATSTORE_DECODE

EXTRACTORS = Registry("extractor")
STORAGE_DTYPES = ("float16", "float32")


@dataclass
class BaseConfig:
    """Knobs every extractor has. ``weights``: path, cached model id, ``"demo"`` or None (random init
    from ``seed``, for tests). ``dtype``: storage dtype of float arrays. ``compile``: ``torch.compile``
    the model in ``to()``."""

    weights: Optional[str] = None
    seed: int = 0
    dtype: str = "float16"
    compile: bool = False

    def __post_init__(self):
        if self.dtype not in STORAGE_DTYPES:
            raise FeatstoreError(f"dtype={self.dtype!r} is not a storage dtype; use one of {', '.join(STORAGE_DTYPES)}")
        # JSON / CLI give lists where the dataclass wants tuples (Tuple[...], tuple[...], Optional[...] of them)
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list) and _wants_tuple(hints.get(f.name)):
                setattr(self, f.name, tuple(v))


def check_box_counts(min_boxes: int, max_boxes: int) -> None:
    """The detectors' box budget: one line unless ``1 <= min_boxes <= max_boxes``."""
    if not 1 <= min_boxes <= max_boxes:
        raise FeatstoreError(f"min_boxes={min_boxes}, max_boxes={max_boxes} are invalid; use 1 <= min_boxes <= max_boxes")


def _wants_tuple(hint) -> bool:
    """True when the annotation is a tuple type (``Tuple[int, ...]``, ``tuple[int, int]``, ``tuple``) or a
    Union / Optional whose first non-None member is one."""
    if hint is tuple or typing.get_origin(hint) is tuple:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        return bool(members) and _wants_tuple(members[0])
    return False


def register_extractor(name: str, config_cls: type, help: str) -> Callable[[type], type]:
    """Class decorator: ``EXTRACTORS.register(name, config_cls, help=help)`` on an ``Extractor`` subclass built
    as ``cls(config, name=name)`` by ``create_extractor``."""
    return EXTRACTORS.register(name, config_cls, help=help)


def create_extractor(name: str, **cfg) -> "Extractor":
    """Build a registered extractor with its config options as keyword arguments."""
    return EXTRACTORS.create(name, extractor_config(name, cfg), name)


def extractor_config(name: str, cfg: Dict[str, Any]):
    """Extractor ``name``'s config dataclass from its options (unknown or mistyped ones: one-line errors)."""
    return build_dataclass(EXTRACTORS.config_cls(name), cfg, f"extractor {name!r}",  # an unknown name raises first
                           unknown_message="{what} has no option {unknown}; valid options: {known}")


def check_image_extractor(name: str, what: str) -> None:
    """A one-line error when extractor ``name`` does not read images (``what`` names the command)."""
    modality = getattr(EXTRACTORS.builder(name), "modality", "")
    if modality != "image":
        images = [n for n in EXTRACTORS.names() if getattr(EXTRACTORS.builder(n), "modality", "") == "image"]
        raise FeatstoreError(f"{what} --extractor {name}: {name} reads {modality or 'no images'}, not images; pass "
                             f"an image extractor ({', '.join(images)})")


def recipe_for(name: str, settings: Optional[dict] = None):
    """The ``pixels.ResizeRecipe`` of extractor ``name`` with ``settings`` (its options, checked as
    ``create_extractor`` checks them), without building its model; None when it takes PIL images only."""
    return config_recipe(extractor_config(name, dict(settings or {})))


def config_recipe(config):
    """The config's ``resize_recipe()``, None for a config without one (PIL images only)."""
    recipe = getattr(config, "resize_recipe", None)
    return recipe() if recipe is not None else None


def decode_for(name: str, settings: Optional[dict] = None) -> str:
    """How extractor ``name`` with ``settings`` decodes image files (``images.load_image``'s ``decode``): its
    resize recipe's, else its config's ``decode``, else featstore's; without building its model."""
    config = extractor_config(name, dict(settings or {}))
    return decode_of(config_recipe(config), config)


def decode_of(recipe, config) -> str:
    """A resize recipe's decode, else the config's ``decode`` option, else featstore's."""
    return recipe.decode if recipe is not None else getattr(config, "decode", FEATSTORE_DECODE)


def list_extractors() -> List[Tuple[str, str, List[Tuple[str, Any]]]]:
    """``[(name, help, [(option, default), ...])]`` for ``featstore extractors``."""
    out = []
    for name in EXTRACTORS.names():
        opts = [(f.name, field_default(f)) for f in fields(EXTRACTORS.config_cls(name))]
        out.append((name, EXTRACTORS.help(name), opts))
    return out


def seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build a module under ``torch.manual_seed(seed)`` without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


class Extractor:
    """Shared machinery; subclasses set ``modality``, ``key_kind`` and implement the abstract methods."""

    modality: str = ""
    key_kind: str = ""
    channels_last: bool = False  # CNNs: channels_last memory format (cuDNN and oneDNN both run NHWC convs faster)
    _compile_targets: Tuple[str, ...] = ()  # attribute names of modules that ``compile=True`` wraps

    def __init__(self, config: BaseConfig, name: str):
        self.config = config
        self.name = name
        self.device = torch.device("cpu")
        self.amp_dtype: Optional[torch.dtype] = None
        self._fingerprint: Optional[str] = None
        # what loading the weights used / ignored (``hf.load_model``, ``weights.load_report``)
        self.weights_load: Optional[Dict[str, Any]] = None

    # -- the contract ---------------------------------------------------------------------------------
    def weights_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        """Default: the weight files' sha256 (``self.weights_path``), else the seeded random init's state."""
        from .weights import fingerprint_files, fingerprint_state_dict

        if getattr(self, "weights_path", None) is not None:
            return fingerprint_files(self.weights_path)
        return fingerprint_state_dict(self.model, self.config.seed)

    def schema(self) -> Dict[str, ArraySpec]:
        raise NotImplementedError

    def preprocessing(self) -> Dict[str, Any]:
        raise NotImplementedError

    def preprocess(self, item) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def collate(self, items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Default: stack every key (all items have equal shapes)."""
        if not items:
            raise FeatstoreError("collate got an empty batch; the DataLoader must yield at least one item")
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def forward(self, batch) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def modules(self) -> List[torch.nn.Module]:
        """The torch modules ``to()`` moves; default: ``self.model``."""
        return [self.model]

    def to(self, device, dtype: Optional[torch.dtype] = None) -> "Extractor":
        """Move the model(s) to ``device``. ``dtype``: autocast dtype (None: bf16/fp16 on CUDA, none on CPU;
        ``torch.float32`` turns autocast off)."""
        device = torch.device(device)
        for m in self.modules():
            m.to(device)
            if self.channels_last:
                m.to(memory_format=torch.channels_last)
            m.eval()
        self.device = device
        if dtype is None:
            if device.type == "cuda":
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            else:
                dtype = torch.float32
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise FeatstoreError(f"compute dtype {dtype} is not supported; use float32, float16 or bfloat16")
        self.amp_dtype = None if dtype == torch.float32 else dtype
        if self.config.compile:
            for attr in self._compile_targets:
                mod = getattr(self, attr)
                if not hasattr(mod, "_orig_mod"):
                    setattr(self, attr, torch.compile(mod))
        return self

    # -- helpers for subclasses -----------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def resize_recipe(self):
        """The ``pixels.ResizeRecipe`` this extractor resizes decoded images with, when ``preprocess`` also
        takes a ``pixels.ResizedImage`` (then normalised batched on the device); None: PIL images only. It
        is the config's ``resize_recipe()`` (a function of the config alone: ``recipe_for``)."""
        return config_recipe(self.config)

    def image_decode(self) -> str:
        """How the run loop decodes this extractor's image files: its ``resize_recipe()``'s ``decode``, else
        its config's ``decode`` option, else featstore's (``images.load_image``)."""
        return decode_of(self.resize_recipe(), self.config)

    def resized_item(self, item) -> Optional[Dict[str, torch.Tensor]]:
        """``preprocess``'s item for a ``pixels.ResizedImage``: ``image`` its uint8 [h, w, 3] pixels (checked
        against ``resize_recipe()``), ``size`` int64 (width, height) decoded; None for any other input."""
        from .pixels import ResizedImage

        if not isinstance(item, ResizedImage):
            return None
        return {"image": item.tensor_for(self.resize_recipe()), "size": torch.tensor(item.size, dtype=torch.int64)}

    def image_input(self, x: torch.Tensor, mean, std, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The forward pass's image input on the device: a float batch as given, or uint8 pixels
        ``[N, H, W, 3]`` normalised there (``pixels.normalize_pixels``; ``valid`` as there)."""
        if x.dtype != torch.uint8:
            return self.to_device(x)
        from .pixels import normalize_pixels

        return normalize_pixels(x, mean, std, self.device, self.channels_last, valid)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        if self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def out(self, t: torch.Tensor) -> np.ndarray:
        """A float tensor -> numpy in the storage dtype."""
        a = t.detach().float().cpu().numpy()
        with np.errstate(over="ignore"):  # overflow is reported below as a FeatstoreError
            out = a.astype(self.config.dtype, copy=False)
        if self.config.dtype == "float16" and not np.isfinite(out).all() and np.isfinite(a).all():
            big = float(np.abs(a).max())
            raise FeatstoreError(f"extractor {self.name!r} produced values up to {big:.3g}, beyond float16's range "
                                 "(65504); re-run with dtype=float32")
        return out

    @staticmethod
    def out_int(t) -> np.ndarray:
        if torch.is_tensor(t):
            t = t.detach().cpu().numpy()
        return np.asarray(t).astype(np.int32)

    def fspec(self, *shape: int, per_item: bool = False) -> ArraySpec:
        return ArraySpec(tuple(shape), self.config.dtype, per_item)

    def region_schema(self, r: int, d: int) -> Dict[str, ArraySpec]:
        """A region set's arrays: ``regions`` [R, D] per item with their ``count``, ``boxes`` [R, 4] (x1 y1 x2
        y2 in image pixels, per item) and ``image_size`` (width, height)."""
        return {"regions": self.fspec(r, d, per_item=True), "count": ArraySpec((), "int32"),
                "boxes": ArraySpec((r, 4), "float32", True), "image_size": ArraySpec((2,), "int32")}


def pad_items(t: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad (or cut) axis 1 of ``t`` ([N, R, ...]) to ``n``."""
    r = t.shape[1]
    if r >= n:
        return t[:, :n]
    pad = t.new_zeros((t.shape[0], n - r) + tuple(t.shape[2:]))
    return torch.cat([t, pad], dim=1)
