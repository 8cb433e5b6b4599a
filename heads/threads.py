"""CPU intra-op threads for training a head: chosen by measuring, or given.

A head's training step on a CPU is a stream of small kernels (a pooled-vector MLP: microseconds each) or of
large ones (vilbert's layers). Each kernel is one OpenMP parallel region over ``torch.get_num_threads()``
threads; when other work holds the cores, every region waits at its barrier for a thread the OS has
descheduled, so small kernels can run ten times slower with two threads than with one (``heads train
--head concat`` on the 2-core machine under load: 250 s a seed with the default, 27 s with one thread).
No fixed count wins for every head and every load, so ``threads="auto"`` times a few real training steps
(forward + backward on the first train batch, no optimiser step, random state restored afterwards) at one
thread and at every available core, and keeps the faster (the smaller count when they are within 5%).
An explicit ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` is the user's choice and is kept. On CUDA the CPU
threads are left as they are. ``cpu_threads`` applies the choice for one block and restores the caller's
setting afterwards (like ``featstore.runner.threads.ForwardThreads`` does for extraction).

The thread count can change floating-point summation order in some kernels, so a run records the count it
used (``TrainResult.threads``, the ``heads train`` summary); pass it back with ``--threads N`` to repeat a
run exactly.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, Union

import torch

from featstore.errors import FeatstoreError
from featstore.runner.threads import available_cores

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
TIE = 0.05  # a larger count must be this much faster to be chosen


@dataclass
class ThreadChoice:
    threads: int
    how: str  # "auto", "given", "environment", "cuda", "one core"
    step_s: Dict[int, float] = field(default_factory=dict)  # measured seconds per probe step by thread count

    def describe(self) -> str:
        word = "thread" if self.threads == 1 else "threads"
        if self.how == "auto" and self.step_s:
            timings = ", ".join(f"{n}: {s * 1e3:.3g} ms/step" for n, s in sorted(self.step_s.items()))
            return f"{self.threads} {word} (auto, measured {timings})"
        reason = {"given": "--threads", "environment": "from " + "/".join(ENV_VARS), "cuda": "CUDA device, CPU "
                  "threads left as they were", "one core": "one core available"}.get(self.how, self.how)
        return f"{self.threads} {word} ({reason})"


def check_threads(value: Union[str, int]) -> None:
    """``"auto"`` or a positive int; anything else is a one-line FeatstoreError."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    raise FeatstoreError(f"threads={value!r} is neither 'auto' nor a positive count; pass --threads auto or "
                         "e.g. --threads 1")


def parse_threads(text: str) -> Union[str, int]:
    """The ``--threads`` option's value: ``auto`` or a positive whole number."""
    t = str(text).strip().lower()
    value: Union[str, int] = t if t == "auto" else (int(t) if t.isdigit() else t)
    check_threads(value)
    return value


def _probe_step(model, batch) -> float:
    """Seconds of one forward + backward pass (no optimiser step; gradients dropped)."""
    t0 = time.perf_counter()
    out = model(batch)
    loss = sum(v.float().sum() for v in out["logits"].values()) + out["fused"].float().sum() * 0
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def measure_steps(cfg, data, counts) -> Dict[int, float]:
    """``{threads: best seconds of a training step}`` for each count, on the first train batch."""
    from .models import create_head

    with torch.random.fork_rng(devices=[]):
        model = create_head(cfg.head, data.input_spec(), data.task_spec, **cfg.head_cfg).to(data.device)
        model.train()
        batch = data.batch(data.split("train")[:cfg.batch_size], trim=cfg.trim)
        out: Dict[int, float] = {}
        for n in counts:
            torch.set_num_threads(n)
            first = _probe_step(model, batch)  # warm-up (allocator, kernels for these shapes)
            reps = 3 if first < 0.05 else (2 if first < 0.5 else 1)
            out[n] = min(_probe_step(model, batch) for _ in range(reps))
    return out


def resolve_threads(cfg, data) -> ThreadChoice:
    """The intra-op thread count to train ``cfg`` on ``data`` with (see the module docstring)."""
    check_threads(cfg.threads)
    current = torch.get_num_threads()
    if data.device.type != "cpu":
        return ThreadChoice(current, "cuda")
    if cfg.threads != "auto":
        return ThreadChoice(int(cfg.threads), "given")
    if any(os.environ.get(v) for v in ENV_VARS):
        return ThreadChoice(current, "environment")
    cores = available_cores()
    if cores <= 1:
        return ThreadChoice(1, "one core")
    try:
        step_s = measure_steps(cfg, data, (1, cores))
    finally:
        torch.set_num_threads(current)
    best = min(step_s, key=lambda n: (step_s[n], n))
    if step_s[1] <= step_s[best] * (1 + TIE):
        best = 1
    return ThreadChoice(best, "auto", step_s)


@contextlib.contextmanager
def cpu_threads(cfg, data) -> Iterator[ThreadChoice]:
    """Run a block with ``resolve_threads(cfg, data)`` intra-op threads; the caller's count is restored."""
    before = torch.get_num_threads()
    choice = resolve_threads(cfg, data)
    torch.set_num_threads(choice.threads)
    try:
        yield choice
    finally:
        torch.set_num_threads(before)
