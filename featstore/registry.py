"""A tiny timm-style registry: one decorator registers a builder, ``create(name, **cfg)`` builds it.

Extractors (``featstore.extractors``) and heads (``heads.models``) each keep one ``Registry``;
adding a component is one module that decorates its builder.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional

from .errors import FeatstoreError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._builders: Dict[str, Callable[..., Any]] = {}
        self._config_cls: Dict[str, Optional[type]] = {}
        self._help: Dict[str, str] = {}

    def register(self, name: str, config_cls: Optional[type] = None, help: str = ""):
        """Decorator: ``@REG.register("grid", GridConfig, help="...")`` above a builder ``f(cfg)``."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._builders[name] = fn
            self._config_cls[name] = config_cls
            self._help[name] = help or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def config_cls(self, name: str) -> Optional[type]:
        self._check(name)
        return self._config_cls[name]

    def help(self, name: str) -> str:
        self._check(name)
        return self._help[name]

    def _check(self, name: str) -> None:
        if name not in self._builders:
            raise FeatstoreError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names()) or '(none registered)'}"
            )

    def create(self, name: str, *args: Any, **cfg: Any) -> Any:
        self._check(name)
        return self._builders[name](*args, **cfg)
