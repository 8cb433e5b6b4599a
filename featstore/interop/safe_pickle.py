"""Unpickle numpy arrays and plain values without running anything else.

``pickle.load`` calls whatever callable a pickle names, so a feature file from the internet can run
``os.system``. ``safe_loads``/``safe_load`` use a ``pickle.Unpickler`` whose ``find_class`` resolves
only the globals that numpy arrays, numpy scalars and plain containers need (``ALLOWED``); any other
global raises ``FeatstoreError`` naming the source and the refused global *before* it is called.

numpy 1 pickles name ``numpy.core.*`` and numpy 2 pickles ``numpy._core.*``; both spellings map to the
installed numpy's functions, so either loads under numpy 1 or 2. Python 2 pickles are read with
``encoding="latin1"`` (numpy's own convention), and ``_codecs.encode`` (how protocol 0-2 pickles store
``bytes``) is allowed for the latin-1 codec only.
"""
from __future__ import annotations

import codecs
import collections
import io
import pickle
from typing import Any, BinaryIO, Callable, Dict, Tuple

import numpy as np

from ..errors import FeatstoreError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore
    from numpy.core import numeric as _numeric  # type: ignore


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to what protocol 0-2 pickles of ``bytes`` use (latin-1)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1", errors)


def _allowed() -> Dict[Tuple[str, str], Callable[..., Any]]:
    table: Dict[Tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings
        table[(f"{core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = _multiarray.scalar
        table[(f"{core}.numeric", "_frombuffer")] = _numeric._frombuffer
    return table


ALLOWED = _allowed()
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only ``ALLOWED`` globals."""

    def __init__(self, file: BinaryIO, *, source: str):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        found = ALLOWED.get((module, name))
        if found is None:
            raise FeatstoreError(f"{self.source}: refused to unpickle global {module}.{name} (only numpy arrays "
                                 f"and plain values are allowed); re-save the file with numpy arrays and plain "
                                 f"values only, and do not open files from untrusted sources")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise FeatstoreError(f"{self.source}: refused a pickle persistent id (only numpy arrays and plain values "
                             f"are allowed); re-save the file with numpy arrays and plain values only")


def safe_load(fileobj: BinaryIO, *, source: str) -> Any:
    """Unpickle one object from a binary file object, allowing only numpy arrays and plain values."""
    try:
        return SafeUnpickler(fileobj, source=source).load()
    except FeatstoreError:
        raise
    except Exception as e:  # truncated or garbled bytes raise many different types
        raise FeatstoreError(f"{source}: not a readable pickle ({type(e).__name__}: {e}); the file is damaged "
                             f"or not a pickle, re-create it") from None


def safe_loads(data: bytes, *, source: str) -> Any:
    """``safe_load`` on bytes."""
    return safe_load(io.BytesIO(data), source=source)
