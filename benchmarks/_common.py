"""Shared plumbing of ``extract_throughput.py`` and ``heads_speed.py``: argument parsing whose errors are one
line (``Parser``, ``positive_int``, ``run_main``: exit status 2), device choice, the run header, timing that is
correct on CUDA, a plain-text table and the goal lines.

Timing contract: ``Stopwatch`` measures wall-clock seconds of a block. On CUDA it records CUDA events on
the current stream around the block and synchronises the device before reading them (and before starting,
so earlier queued work is not billed to the block); on CPU it uses ``time.perf_counter``. End-to-end
figures (a data pipeline with Python on the host) are wall-clock by nature, so the same stopwatch serves
both benchmarks.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from featstore.errors import FeatstoreError  # noqa: E402

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")  # what featstore.devices.resolve_device takes


def resolve_device(arg: str) -> torch.device:
    """``--device`` value -> ``torch.device`` through the toolkit's one validator (``featstore.devices``): auto = cuda
    when a GPU is visible, else cpu; cpu, cuda, cuda:N as given."""
    from featstore.devices import resolve_device as resolve

    return torch.device(resolve(arg))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})"


def command_line() -> str:
    """The exact command that started this process, shell-quoted."""
    return shlex.join([sys.executable] + sys.argv)


def header_lines(title: str, device: torch.device) -> List[str]:
    """What every benchmark prints first: title, device, torch version, date, command line."""
    return [
        f"== {title} ==",
        f"device : {device.type} - {device_name(device)}",
        f"torch  : {torch.__version__}" + (f" (CUDA {torch.version.cuda})" if device.type == "cuda" else ""),
        f"date   : {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"command: {command_line()}",
        f"load   : {load_average()}",
    ]


def load_average() -> str:
    """The 1 / 5 / 15-minute load averages (other work on the machine depresses every figure)."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """``with Stopwatch(device) as sw: ...``; then ``sw.seconds``. CUDA: events + synchronize."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self._end.record()
            torch.cuda.synchronize(self.device)
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


def autocast(device: torch.device):
    """bf16 autocast on CUDA, a no-op context on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned text columns separated by `` | `` with a dashed rule under the header."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(x: Optional[float], digits: int = 3) -> str:
    """A number with ``digits`` significant digits (thousands separated), or ``-`` for None/NaN."""
    if x is None or x != x:
        return "-"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def goal_status(value: float, goal: float, higher_is_better: bool, applies: bool, why_not: str) -> str:
    """``met`` / ``NOT met`` when the goal applies to this run, else ``n/a (why_not)``."""
    if not applies:
        return f"n/a ({why_not})"
    ok = value >= goal if higher_is_better else value <= goal
    return "met" if ok else "NOT met"


def median(values: Sequence[float]) -> float:
    """The median of ``values``; NaN for an empty sequence."""
    return float(statistics.median(values)) if len(values) else float("nan")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors (unknown option, missing value) raise a one-line
    ``FeatstoreError`` instead of printing the usage block, so ``run_main`` reports them like any bad input."""

    def error(self, message: str):  # type: ignore[override]
        raise FeatstoreError(f"{message}; run with --help to list the options")

    def add_device(self) -> None:
        """``--device auto|cpu|cuda``, checked by ``resolve_device`` (a one-line error for a bad value)."""
        self.add_argument("--device", default="auto", metavar="|".join(DEVICE_CHOICES),
                          help="auto = cuda when a GPU is visible, else cpu")


def positive_int(name: str) -> Callable[[str], int]:
    """An argparse ``type`` for a positive integer option; a bad value is a one-line FeatstoreError."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise FeatstoreError(f"{name} {s!r} is not an integer; pass a positive whole number") from None
        if v <= 0:
            raise FeatstoreError(f"{name} {v} must be positive; pass a positive whole number")
        return v

    return parse


def name_list(flag: str, value: str, allowed: Sequence[str], noun: str) -> List[str]:
    """The names of a comma-separated option (``--heads concat,gnn``), each checked against ``allowed``;
    unknown names or an empty list are a one-line FeatstoreError naming the option and the choices."""
    names = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in names if s not in allowed]
    if bad or not names:
        what = f"{', '.join(map(repr, bad))} not benchmarked here" if bad else f"names no {noun}"
        raise FeatstoreError(f"{flag} {value!r}: {what}; choose from {', '.join(allowed)}")
    return names


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> None:
    """Run ``main``; a FeatstoreError (bad input) prints one ``error:`` line on stderr and exits 2."""
    try:
        code = main(argv)
    except FeatstoreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
