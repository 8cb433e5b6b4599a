"""Shared CLI plumbing: FeatstoreError becomes one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Callable, Dict, Iterable, List, Tuple

import click

from featstore.config_types import DottedOptions, field_default
from featstore.errors import FeatstoreError


class FriendlyGroup(click.Group):
    """A click group whose commands report FeatstoreError as ``error: <one line>`` (exit 2)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FeatstoreError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: completed chunks are kept; rerun the same command to resume", err=True)
            ctx.exit(130)


def parse_settings(pairs: Tuple[str, ...], what: str = "--set") -> Dict[str, Any]:
    """``key=value`` pairs -> dict; values parsed as JSON when they are JSON (numbers, lists, true/false). A dotted
    key sets one option of a nested options dict (``base_cfg.hidden=[512]``: refnet's base head's ``hidden``), a
    ``DottedOptions`` that ``deep_merge`` merges into a preset's; a dict given whole replaces the preset's."""
    out: Dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise FeatstoreError(f"{what} {p!r} is not KEY=VALUE; write e.g. {what} max_length=64")
        k, v = p.split("=", 1)
        try:
            value = json.loads(v)
        except json.JSONDecodeError:
            value = v
        *outer, name = parts = [part.strip().replace("-", "_") for part in k.split(".")]
        if not all(parts):
            raise FeatstoreError(f"{what} {p!r}: an empty option name; write KEY=VALUE or OPTION.KEY=VALUE, e.g. "
                                 f"{what} base_cfg.hidden=[512]")
        into = out
        for i, part in enumerate(outer):
            into = into.setdefault(part, DottedOptions())
            if not isinstance(into, dict):
                raise FeatstoreError(f"{what} {p!r}: {'.'.join(outer[:i + 1])} is set to a value, not a dict of "
                                     f"options; give it whole ({what} {outer[0]}='{{...}}') or by dotted keys only")
        into[name] = value
    return out


def parse_seeds(text: str) -> List[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; anything that is not a comma list of integers is a one-line error."""
    parts = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        seeds = [int(s) for s in parts]
    except ValueError:
        raise FeatstoreError(f"--seeds {text!r} is not a comma-separated list of integers; pass e.g. --seeds 0,1,2")
    if not seeds:
        raise FeatstoreError("--seeds is empty; pass e.g. --seeds 0,1,2")
    return seeds


def store_option(f):
    return click.option("--store", "store_url", envvar="FEATSTORE_STORE", required=True, show_envvar=True,
                        help="Store location: a local directory or an fsspec URL (s3://bucket/prefix).")(f)


def echo_table(rows, headers) -> None:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)))


_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


def _click_type(hint: Any, choices) -> Any:
    """The click type of a field: its choices, ``int`` / ``float`` / ``str`` (also inside ``Optional``), else
    text that the command parses (``Union[str, int]``, lists)."""
    if choices:
        return click.Choice(list(choices))
    members = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union else [hint]
    return _CLICK_TYPES.get(members[0], click.STRING) if len(members) == 1 else click.STRING


DATASET_READ = "dataset_read"  # ctx.meta key of the ReadOptions values given on the command line


def _keep_in_meta(name: str):
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        ctx.meta.setdefault(DATASET_READ, {})[name] = value
    return callback


def dataset_read_options(f):
    """Add ``featstore.datasets.options.ReadOptions``' options (``--dataset-split``, ``--image-root``, ``--id-col``,
    ``--image-col``, ``--text-col``, ``--label-cols``, ``--allow-empty-text``) to a command taking ``--dataset``;
    their values wait in ``ctx.meta`` for ``load_cli_dataset``, so the command's signature stays as it is."""
    from featstore.datasets.options import ReadOptions

    for option in reversed(options_from_dataclass(ReadOptions)):
        option.expose_value, option.callback = False, _keep_in_meta(option.name)
        f.__click_params__ = [*getattr(f, "__click_params__", []), option]
    return f


def read_options():
    """The command's ``ReadOptions`` (defaults outside a command)."""
    from featstore.datasets.options import ReadOptions

    ctx = click.get_current_context(silent=True)
    return ReadOptions(**(ctx.meta.get(DATASET_READ, {}) if ctx is not None else {}))


def load_cli_dataset(path, fmt: str = "auto"):
    """``load_dataset(path, fmt)`` with the command's ``--dataset-split`` / ``--image-root`` / column options; the
    manifest's notes (what the reader left out on purpose) go to stderr, one ``note:`` line each."""
    from featstore.datasets import load_dataset

    ds = load_dataset(path, fmt, **read_options().load_kwargs())
    for note in ds.notes:
        click.echo(f"note: dataset {path}: {note}", err=True)
    return ds


def options_from_dataclass(cls: type, skip: Iterable[str] = ()) -> List[click.Option]:
    """A click option for every field of dataclass ``cls`` whose metadata has a ``help``
    (``featstore.config_types.cli_field``), except ``skip``: named like the field, with the field's default,
    type, choices and help, so the option's default is the dataclass's. A bool field is a ``--x/--no-x``
    switch, or a plain flag when its metadata names one flag; a tuple ``flag`` names the flag and its aliases."""
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or f.name in skip:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        flags = list(flag) if isinstance(flag, tuple) else [flag]  # a tuple: the flag, then its aliases
        extra: Dict[str, Any] = {}
        if hints[f.name] is bool:
            if "flag" in f.metadata:
                extra["is_flag"] = True
            else:
                flags = [f"{flag}/--no-{flag[2:]}"]
        else:
            extra["type"] = _click_type(hints[f.name], f.metadata.get("choices"))
        if "metavar" in f.metadata:
            extra["metavar"] = f.metadata["metavar"]
        options.append(click.Option(flags + [f.name], default=field_default(f), show_default=True, help=f.metadata["help"],
                                    **extra))
    return options


class LazyOptionsCommand(click.Command):
    """A command whose options generated from a dataclass (``options_from_dataclass``) are made on first use:
    ``lazy_options`` is called then, so importing the CLI does not import the library that defines the
    dataclass (``heads train``'s ``TrainConfig`` pulls in torch)."""

    def __init__(self, *args: Any, lazy_options: Callable[[], List[click.Option]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lazy_options = lazy_options

    def get_params(self, ctx: click.Context) -> List[click.Parameter]:
        if self._lazy_options is not None:
            self.params.extend(self._lazy_options())
            self._lazy_options = None
        return super().get_params(ctx)
