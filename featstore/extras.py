"""Optional packages that an extra of ``featstore-heads`` installs (``.[hdf5]``: h5py; ``.[gnn]``: PyTorch
Geometric; ``.[test]`` takes both), imported where they are used: when one is missing, the code that needs it
raises a one-line :class:`FeatstoreError` naming the extra, and everything else works without it."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import FeatstoreError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``; if it is not installed, a one-line error naming ``purpose`` and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise FeatstoreError(f"{purpose} needs the optional package {top!r}, which is not installed; install it "
                             f"with `pip install 'featstore-heads[{extra}]'` (in a checkout: "
                             f"`pip install -e '.[{extra}]'`)") from None


class LazyModule:
    """Stands for ``module`` at an import site; the first attribute access imports it through :func:`require`."""

    def __init__(self, module: str, extra: str, purpose: str):
        self._args = (module, extra, purpose)

    def __getattr__(self, name: str):
        return getattr(require(*self._args), name)
