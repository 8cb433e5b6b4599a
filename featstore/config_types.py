"""Type-check a config dataclass's field values against their annotations.

CLI values arrive as JSON or plain strings (``--set max_length=abc`` gives the string ``"abc"``), so every
config builder (extractors, heads, training) calls :func:`check_values` before construction and a value
of the wrong type is one line naming the option and the type it needs, before anything is built or written.

Accepted: ``int`` for an int (not ``bool``); ``int`` or ``float`` for a float; ``bool`` for a bool; ``str``;
``None`` for ``Optional``; any member of a ``Union``; ``Literal`` values; lists/tuples whose items match
``List[X]`` / ``Tuple[X, ...]`` / ``tuple[X, Y]``; dicts for ``Dict``. Annotations it does not understand
(``Any``, classes, callables) are not checked.

:func:`build_dataclass` is the one strict "dataclass from a dict" builder: unknown keys, then types, then
construction.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import json
import types
import typing
from typing import Any, Mapping, Optional, Tuple, Union

from .errors import FeatstoreError

_UNCHECKED = object()


def _matches(value: Any, hint: Any) -> bool:
    """True when ``value`` fits annotation ``hint`` (unknown annotations always fit)."""
    if hint is Any or hint is _UNCHECKED:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        return _matches_sequence(value, hint)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True


def _matches_sequence(value: Any, hint: Any) -> bool:
    if not isinstance(value, (list, tuple)):
        return False
    args = typing.get_args(hint)
    if not args:
        return True
    if typing.get_origin(hint) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    return all(_matches(v, args[0]) for v in value)


_NAMES = {bool: "a bool (true or false)", int: "an int", float: "a float", str: "a string", dict: "a dict",
          list: "a list", tuple: "a list"}


def _describe(hint: Any) -> str:
    """What an annotation asks for, in words: ``an int``, ``an int or None``, ``a list of int``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if hint in _NAMES:
        return _NAMES[hint]
    if origin in (list, tuple, collections.abc.Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return "a list" + (f" of {_describe(args[0]).split(' ', 1)[-1]}" if args else "")
    if origin is dict:
        return "a dict"
    return getattr(hint, "__name__", str(hint))


UNKNOWN_OPTION = "{what} has no option {first}; its options are: {known}"


def build_dataclass(config_cls: type, values: Optional[Mapping[str, Any]], what: str,
                    unknown_message: str = UNKNOWN_OPTION, check_types: bool = True, hint_flag: str = "--set") -> Any:
    """``config_cls(**values)``, strictly: a key that is not a field of dataclass ``config_cls`` is a one-line
    FeatstoreError, and so (``check_types``) is a value of the wrong type (:func:`check_values`; its example
    names ``hint_flag``).

    ``unknown_message`` is formatted with ``what``, ``first`` (the first unknown key, repr), ``unknown`` (every
    unknown key, repr, comma-separated) and ``known`` (the sorted field names, comma-separated)."""
    values = dict(values or {})
    known = sorted(f.name for f in dataclasses.fields(config_cls))
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise FeatstoreError(unknown_message.format(what=what, first=repr(unknown[0]),
                                                    unknown=", ".join(map(repr, unknown)), known=", ".join(known)))
    if check_types:
        check_values(config_cls, values, what, hint_flag)
    return config_cls(**values)


def check_values(config_cls: type, values: dict, what: str, hint_flag: str = "--set") -> None:
    """Raise a one-line FeatstoreError when a value in ``values`` does not fit its field's annotation in
    dataclass ``config_cls``; called before the dataclass is built, so ``__post_init__`` never sees a wrong
    type. ``what`` names the config in the message (``extractor 'bert'``, ``head 'vilbert'``, ``train``)."""
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # unresolvable forward references: nothing to check against
        return
    by_name = {f.name: f for f in dataclasses.fields(config_cls)}
    for name, value in values.items():
        hint = hints.get(name, _UNCHECKED)
        if name in by_name and not _matches(value, hint):
            raise FeatstoreError(
                f"{what} option {name}={value!r} must be {_describe(hint)}; "
                f"e.g. {hint_flag} {name}={_example(by_name[name])}")


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (its ``default_factory()`` for one made by a factory; None without)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _example(f: dataclasses.Field) -> str:
    """The field's default written as a ``--set`` value (JSON, quoted for the shell when it has brackets)."""
    default = field_default(f)
    if default is None:
        return "VALUE"
    if isinstance(default, str):
        return default
    text = json.dumps(list(default) if isinstance(default, tuple) else default)
    return f"'{text}'" if isinstance(default, (list, tuple, dict)) else text


def cli_field(default: Any, help: str, flag: Union[str, Tuple[str, ...], None] = None, choices: Optional[typing.Sequence[str]] = None,
              metavar: Optional[str] = None) -> Any:
    """A dataclass field that is also a command-line option: ``default`` is the one default (the CLI's is read
    from it, ``cli.common.options_from_dataclass``); ``help``, ``flag`` (default ``--field-name``; a bool field
    is a ``--x/--no-x`` switch unless ``flag`` names a single flag; a tuple: the flag, then aliases), ``choices`` and ``metavar`` go to the
    option, kept in the field's ``metadata``."""
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices is not None else None, "metavar": metavar}
    return dataclasses.field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


class DottedOptions(dict):
    """Options set by dotted ``--set`` keys (``base_cfg.hidden=[512]``): ``deep_merge`` merges them into the
    nested dict they name; a dict given whole (``--set base_cfg='{...}'``) replaces it."""


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    """``base`` with ``over`` on top: a ``DottedOptions`` value merged key by key into the dict it names (a
    preset's ``base_cfg`` keeps its other keys under ``--set base_cfg.hidden=[512]``), any other value replacing."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, DottedOptions):
            v = deep_merge(out[k], v) if isinstance(out.get(k), dict) else dict(v)
        out[k] = v
    return out
