"""A tiny timm-style registry: one decorator registers a builder, ``create(name, ...)`` builds it.

Extractors (``featstore.extractors``) and heads (``heads.models``) each keep one ``Registry``; adding a
component is one module whose class (or builder function) carries ``@REG.register(name, ConfigDataclass,
help=..., **meta)`` (through the kind's thin ``register_extractor`` / ``register_head``). What was registered
is public: ``REG.info(name) -> ComponentInfo(name, config_cls, help, meta)``, ``REG.infos()``.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

from .errors import FeatstoreError


@dataclass(frozen=True)
class ComponentInfo:
    """One registered component: its ``name``, config dataclass, one-line ``help`` and free ``meta``
    (read-only; e.g. a head's ``needs``: the batch inputs it requires)."""

    name: str
    config_cls: Optional[type]
    help: str
    meta: Mapping[str, Any]


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._builders: Dict[str, Callable[..., Any]] = {}
        self._infos: Dict[str, ComponentInfo] = {}

    def register(self, name: str, config_cls: Optional[type] = None, help: str = "", **meta: Any):
        """Decorator: ``@REG.register("grid", GridConfig, help="...", **meta)`` above a builder or class;
        ``help`` defaults to the first line of its docstring."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._builders[name] = fn
            line = help or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
            self._infos[name] = ComponentInfo(name, config_cls, line, types.MappingProxyType(dict(meta)))
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def builder(self, name: str) -> Callable[..., Any]:
        """The builder (or class) registered as ``name``; an unknown name is a one-line error."""
        self._check(name)
        return self._builders[name]

    def info(self, name: str) -> ComponentInfo:
        """What ``name`` was registered with; an unknown name is a one-line error listing the known ones."""
        self._check(name)
        return self._infos[name]

    def infos(self) -> List[ComponentInfo]:
        """Every registered component's info, in name order."""
        return [self._infos[n] for n in self.names()]

    def config_cls(self, name: str) -> Optional[type]:
        return self.info(name).config_cls

    def help(self, name: str) -> str:
        return self.info(name).help

    def _check(self, name: str) -> None:
        if name not in self._builders:
            raise FeatstoreError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names()) or '(none registered)'}"
            )

    def create(self, name: str, *args: Any, **cfg: Any) -> Any:
        self._check(name)
        return self._builders[name](*args, **cfg)
