"""Shared CLI plumbing: FeatstoreError becomes one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import click

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
    """``key=value`` pairs -> dict; values parsed as JSON when they are JSON (numbers, lists, true/false)."""
    out: Dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise FeatstoreError(f"{what} {p!r} is not KEY=VALUE; write e.g. {what} max_length=64")
        k, v = p.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip().replace("-", "_")] = v
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
