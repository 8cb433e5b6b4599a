"""Intra-op threads for the forward pass when it shares CPU cores with the DataLoader workers.

On a CPU device the workers (decode + resize) and the forward pass (an OpenMP team of
``torch.get_num_threads()`` threads) run on the same cores. When decoding is the bottleneck, a full-width
OpenMP team makes it worse: its threads spin at every barrier while the workers want those cores. When
the forward pass is the bottleneck (``roi``: layer4 over 36 regions per image), it needs every thread.
No fixed split wins for every extractor (measured in benchmarks/RESULTS.md), so ``ForwardThreads`` looks
at a few batches first: if the loop spent more than ``INPUT_BOUND`` of that window waiting for inputs, it
lowers the team to the cores the workers leave (at least one); otherwise it changes nothing. One decision
per run, so the setting cannot oscillate; the caller's setting is restored by ``close()``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

INPUT_BOUND = 0.3  # share of the window spent waiting for inputs above which the workers get the cores
SKIP_BATCHES = 1  # the first wait includes starting the workers
WINDOW_BATCHES = 4


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class ForwardThreads:
    """Call ``observe(wait_s, forward_s)`` once per batch; ``lowered_to`` is the thread count chosen, or
    None when the threads were left alone."""

    def __init__(self, device: torch.device, workers: int):
        self.before = torch.get_num_threads()
        self.active = device.type == "cpu" and workers > 0 and available_cores() - workers < self.before
        self.workers = workers
        self.seen = 0
        self.wait = self.forward = 0.0
        self.lowered_to: Optional[int] = None

    def observe(self, wait_s: float, forward_s: float) -> None:
        if not self.active:
            return
        self.seen += 1
        if self.seen <= SKIP_BATCHES:
            return
        self.wait += wait_s
        self.forward += forward_s
        if self.seen < SKIP_BATCHES + WINDOW_BATCHES:
            return
        self.active = False  # decided, once
        total = self.wait + self.forward
        if total > 0 and self.wait / total > INPUT_BOUND:
            self.lowered_to = max(1, available_cores() - self.workers)
            torch.set_num_threads(self.lowered_to)

    def close(self) -> None:
        if self.lowered_to is not None:
            torch.set_num_threads(self.before)
