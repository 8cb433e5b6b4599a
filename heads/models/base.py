"""The head registry, ``create_head`` / ``list_heads`` and the blocks every head shares.

A head is an ``nn.Module`` class ``cls(inputs: InputSpec, task: TaskSpec, cfg: ConfigDataclass)`` registered
with ``@register_head(name, ConfigDataclass, help=...)`` (``HEADS.register`` with the class attribute ``needs``,
a subset of ``NEEDS``, as metadata: ``HEADS.info(name).meta["needs"]``), which ``create_head`` checks against
the ``InputSpec`` first.

``forward(batch)`` takes the batch dict described in ``heads.spec.InputSpec`` and returns
``{"logits": {task_name: Tensor[B, task.num_outputs]}, "fused": Tensor[B, H], ...}``.
Masks are bool with True = a real region/token. When a pooled vector is absent from the batch it is the
masked mean of the regions/tokens (``pooled_image`` / ``pooled_text``).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from featstore.errors import FeatstoreError
from featstore.config_types import build_dataclass
from featstore.registry import Registry

from ..spec import InputSpec, TaskSpec

HEADS = Registry("head")

NEEDS = frozenset({"img_regions", "img_pooled", "txt_tokens", "txt_pooled", "txt_ids"})

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU}


# ----------------------------------------------------------------------------------------------- inputs


def masked_mean(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean over dim 1 of ``x [B, N, D]`` counting only items with ``mask [B, N]`` True -> ``[B, D]``.

    A row with no real item gives zeros (not NaN).
    """
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def _mask(batch: Dict[str, Tensor], key: str, items: Tensor) -> Tensor:
    mask = batch.get(key)
    if mask is None:
        return torch.ones(items.shape[:2], dtype=torch.bool, device=items.device)
    return mask.to(torch.bool)


def image_mask(batch: Dict[str, Tensor]) -> Tensor:
    """``img_mask [B, R]`` as bool (all True when the batch has none)."""
    return _mask(batch, "img_mask", batch["img_regions"])


def text_mask(batch: Dict[str, Tensor]) -> Tensor:
    """``txt_mask [B, T]`` as bool (all True when the batch has none; T from ``txt_tokens``, else ``txt_ids``)."""
    return _mask(batch, "txt_mask", batch["txt_tokens"] if "txt_tokens" in batch else batch["txt_ids"])


def pooled_image(batch: Dict[str, Tensor]) -> Tensor:
    """``img_pooled [B, Di]``, or the masked mean of ``img_regions`` when the batch has no pooled vector."""
    if batch.get("img_pooled") is not None:
        return batch["img_pooled"]
    if batch.get("img_regions") is not None:
        return masked_mean(batch["img_regions"], image_mask(batch))
    raise FeatstoreError("batch has neither 'img_pooled' nor 'img_regions'; pass an image feature set")


def pooled_text(batch: Dict[str, Tensor]) -> Tensor:
    """``txt_pooled [B, Dt]``, or the masked mean of ``txt_tokens`` when the batch has no pooled vector."""
    if batch.get("txt_pooled") is not None:
        return batch["txt_pooled"]
    if batch.get("txt_tokens") is not None:
        return masked_mean(batch["txt_tokens"], text_mask(batch))
    raise FeatstoreError("batch has neither 'txt_pooled' nor 'txt_tokens'; pass a text feature set")


def image_boxes(batch: Dict[str, Tensor]) -> Tensor:
    """``img_boxes [B, R, 5]``, or zeros (no location information) when the batch has none."""
    regions = batch["img_regions"]
    boxes = batch.get("img_boxes")
    if boxes is None:
        return regions.new_zeros(regions.shape[0], regions.shape[1], 5)
    return boxes.to(regions.dtype)


# ----------------------------------------------------------------------------------------------- blocks


def activation(name: str) -> nn.Module:
    """An activation module by name (relu, gelu, tanh, silu, leaky_relu)."""
    if name not in _ACTIVATIONS:
        raise FeatstoreError(f"unknown activation {name!r}; choose one of: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """``in_dim -> hidden[0] -> ... -> hidden[-1]``: each step Linear, activation, dropout; with ``batch_norm``
    Linear, BatchNorm1d, activation, dropout (MMF's ``MLPClassifer`` order; its input is then ``[B, in_dim]``:
    in train mode BatchNorm1d uses the batch's mean and biased variance, so B >= 2, and updates its running
    statistics, momentum 0.1; in eval mode it uses the running ones; eps 1e-5).

    Input ``[..., in_dim]``, output ``[..., out_dim]`` where ``out_dim = hidden[-1]`` (``in_dim`` when
    ``hidden`` is empty: then the MLP is the identity).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], act: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False):
        layers: List[nn.Module] = []
        d = in_dim
        for h in hidden:
            norm = [nn.BatchNorm1d(int(h))] if batch_norm else []
            layers += [nn.Linear(d, int(h)), *norm, activation(act), nn.Dropout(dropout)]
            d = int(h)
        super().__init__(*layers)
        self.out_dim = d


# ----------------------------------------------------------------------------------------------- registry

_NEED_WORDS = {
    "img_regions": "image regions",
    "txt_tokens": "text tokens",
    "img_pooled": "an image feature",
    "txt_pooled": "a text feature",
    "txt_ids": "text token ids",
}


def _missing_needs(needs: frozenset, inputs: InputSpec) -> List[str]:
    have = set()
    if inputs.img_dim <= 0 and inputs.txt_dim <= 0 and not inputs.txt_ids:
        return sorted(needs)
    if inputs.img_dim <= 0:  # no image feature set at all
        inputs = dataclasses.replace(inputs, img_regions=0, img_pooled=False)
    if inputs.txt_dim <= 0:  # no text states (at most token ids)
        inputs = dataclasses.replace(inputs, txt_tokens=0, txt_pooled=False)
    if inputs.img_regions > 0:
        have |= {"img_regions", "img_pooled"}
    if inputs.img_pooled:
        have.add("img_pooled")
    if inputs.txt_tokens > 0:
        have |= {"txt_tokens", "txt_pooled"}
    if inputs.txt_pooled:
        have.add("txt_pooled")
    if inputs.txt_ids:
        have.add("txt_ids")
    return [n for n in sorted(needs) if n not in have]


def check_needs(name: str, needs: frozenset, inputs: InputSpec) -> None:
    """Raise a one-line FeatstoreError when ``inputs`` lacks something in ``needs``."""
    missing = _missing_needs(needs, inputs)
    if not missing:
        return
    n = missing[0]
    given = inputs.img_dim > 0 if n.startswith("img") else inputs.txt_dim > 0
    if n == "txt_tokens" and not given and inputs.txt_ids:
        raise FeatstoreError(f"head {name!r} needs text token states but the text array read gives token ids only; "
                             "pass --text-array tokens (or layer_N)")
    if n == "img_regions" and given:
        raise FeatstoreError(
            f"head {name!r} needs image regions but the image feature set gives pooled vectors only; "
            "extract with --extractor roi/grid/dinov2 or use --head concat")
    if n == "txt_tokens" and given:
        raise FeatstoreError(
            f"head {name!r} needs text tokens but the text feature set gives pooled vectors only; "
            "extract text with a token-level text extractor (per-token states) or use --head concat")
    if n == "txt_ids" and inputs.txt_dim > 0:
        raise FeatstoreError(
            f"head {name!r} needs the text's token ids but the text feature set stores no 'input_ids' array; "
            "extract text with --extractor bert (ids of the checkpoint's tokenizer, e.g. bert-base-uncased)")
    side = "image" if n.startswith("img") else "text"
    raise FeatstoreError(
        f"head {name!r} needs {_NEED_WORDS[n]} but no {side} feature set was given; "
        f"pass {'an' if side == 'image' else 'a'} {side} feature set (--{side} NAME) or use --head "
        f"{'text-only' if side == 'image' else 'image-only'}")


def _register_all() -> None:
    """Import ``heads.models`` so every head module has registered itself."""
    importlib.import_module(__package__)


def create_head(name: str, inputs: InputSpec, task: TaskSpec, **cfg: Any) -> nn.Module:
    """Build head ``name`` for ``inputs``/``task`` with config overrides ``cfg``.

    The returned module has ``.config`` (its config dataclass, for ``config.json``), ``.inputs`` and
    ``.task``. Raises FeatstoreError for an unknown head, an unknown option, or missing inputs.
    """
    _register_all()
    info = HEADS.info(name)  # raises for an unknown name
    config = build_dataclass(info.config_cls, cfg, f"head {name!r}")  # unknown keys / wrong types: one line
    check_dropouts(config, name)
    if hasattr(config, "validate"):
        config.validate()
    check_needs(name, info.meta["needs"], inputs)
    return HEADS.create(name, inputs, task, config)


def check_dropouts(config: Any, name: str) -> None:
    """A one-line FeatstoreError for any ``*dropout*`` option of a head config outside [0, 1] (torch would
    raise its own ValueError only when the layer is built)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "dropout" in f.name and isinstance(value, (int, float)) and not 0.0 <= value <= 1.0:
            raise FeatstoreError(f"head {name!r} {f.name}={value} is a dropout probability outside [0, 1]; "
                                 f"use e.g. --set {f.name}=0.1")


def list_heads() -> List[Tuple[str, str, Any]]:
    """``[(name, one-line help, config dataclass instance with defaults)]`` for ``heads list``."""
    _register_all()
    return [(n, HEADS.help(n), HEADS.config_cls(n)()) for n in HEADS.names()]


def register_head(name: str, config_cls: type, help: str):
    """Class decorator: ``HEADS.register(name, config_cls, help=help, needs=cls.needs)`` on an ``nn.Module``
    subclass built as ``cls(inputs, task, config)``. ``HEADS.info(name).meta["needs"]`` is what
    ``create_head`` checks the inputs against before building."""

    def deco(cls):
        needs = frozenset(cls.needs)
        assert needs <= NEEDS, f"{cls.__name__}.needs has unknown entries"
        HEADS.register(name, config_cls, help=help, needs=needs)(cls)
        cls.head_name = name
        return cls

    return deco


class Head(nn.Module):
    """Common attributes of every head: ``config``, ``inputs``, ``task``, ``needs``; ``optimizer_groups``."""

    needs: frozenset = frozenset()
    head_name: str = ""

    def __init__(self, inputs: InputSpec, task: TaskSpec, config: Any):
        super().__init__()
        self.config = config
        self.inputs = inputs
        self.task = task

    def optimizer_groups(self, weight_decay: float) -> List[Dict[str, Any]]:
        """AdamW parameter groups: one, every parameter decayed by ``weight_decay``; a head whose reference
        trains with other groups (vilbert: MMF's BERT groups) overrides this."""
        return [{"params": list(self.parameters()), "weight_decay": weight_decay}]

    def check_data(self, features: Dict[str, Tensor], text_meta: Optional[Dict[str, Any]] = None) -> None:
        """Refuse (one-line FeatstoreError) data this head cannot read although the shapes fit; ``features``
        are ``TrainData.features``, ``text_meta`` its ``meta["features"]["text"]``. Nothing by default;
        visualbert checks its token ids against its vocabulary."""
