"""Prediction layers shared by every head: fused embedding ``[B, in_dim]`` -> per-task logits.

* Separate layers (default): each task has its own ``Dropout -> Linear(in_dim, num_outputs)``, or
  ``Linear(in_dim, hidden) -> ReLU -> Dropout -> Linear(hidden, num_outputs)`` when ``hidden > 0``.
* ``task.shared_outputs``: one shared ``Linear(in_dim, hidden or in_dim) -> ReLU -> Dropout`` feeds every
  task's final ``Linear``.
* ``task.cascade = ["B", "C", ...]``: task B's probabilities (softmax for binary/multiclass, sigmoid for
  multilabel) are concatenated to the input of task C's layer, C's to D's, and so on. Gradients flow
  through the cascade (the probabilities are not detached).
* ``task.feeds = {"C_humour": ["B"], ...}``: the same, fanned out: each listed task's probabilities are
  concatenated (in the listed order) to that task's input; with ``cascade`` both apply. Tasks run in an
  order where every task's feeders come first; a cycle is a one-line error.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch
from torch import Tensor, nn

from featstore.errors import FeatstoreError

from .spec import Task, TaskSpec

KINDS = ("binary", "multiclass", "multilabel")


def logits_to_probs(task: Task, logits: Tensor) -> Tensor:
    """[B, task.num_outputs] logits -> probabilities of the same shape and dtype: sigmoid for multilabel, softmax
    otherwise. The one definition: the cascade's inputs here, and every reported probability (``probabilities``)."""
    return torch.sigmoid(logits) if task.kind == "multilabel" else torch.softmax(logits, dim=-1)


def probabilities(spec: TaskSpec, logits: Dict[str, Tensor]) -> Dict[str, np.ndarray]:
    """{task: [N, K] float32 numpy probabilities} of a model's {task: logits} (evaluation and predictions)."""
    return {t.name: logits_to_probs(t, logits[t.name].float()).cpu().numpy() for t in spec.tasks}


def validate_tasks(spec: TaskSpec) -> None:
    """One-line FeatstoreError for an empty spec, a bad kind/class count, duplicates or a bad cascade."""
    if not spec.tasks:
        raise FeatstoreError("task spec has no tasks; give at least one label column to predict")
    names = [t.name for t in spec.tasks]
    for t in spec.tasks:
        if t.kind not in KINDS:
            raise FeatstoreError(f"task {t.name!r} has kind {t.kind!r}; use one of: {', '.join(KINDS)}")
        if t.kind == "multiclass" and t.num_classes < 2:
            raise FeatstoreError(f"multiclass task {t.name!r} has {t.num_classes} classes; it needs at least 2")
        if t.kind == "multilabel" and t.num_classes < 1:
            raise FeatstoreError(f"multilabel task {t.name!r} has no classes; give at least one label")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FeatstoreError(f"task name {dup[0]!r} appears twice in the task spec; give each task a unique name")
    cascade = spec.cascade or []
    for n in cascade:
        if n not in names:
            raise FeatstoreError(f"cascade names task {n!r} which is not a task; choose from: {', '.join(names)}")
    if len(set(cascade)) != len(cascade):
        raise FeatstoreError(f"cascade {cascade} lists a task twice; list each task once, in order")
    if len(cascade) == 1:
        raise FeatstoreError(f"cascade {cascade} has one task; a cascade needs at least two (e.g. ['B', 'C'])")
    for task, feeders in (spec.feeds or {}).items():
        for n in [task, *feeders]:
            if n not in names:
                raise FeatstoreError(f"feeds names task {n!r} which is not a task; choose from: {', '.join(names)}")
    task_order(spec)  # raises on a cycle


def task_parents(spec: TaskSpec) -> Dict[str, List[str]]:
    """Task -> the tasks whose probabilities feed its layer: the ``cascade`` chain, then ``feeds``."""
    cascade = list(spec.cascade or [])
    parents: Dict[str, List[str]] = {c: [p] for p, c in zip(cascade, cascade[1:])}
    for task, feeders in (spec.feeds or {}).items():
        parents[task] = parents.get(task, []) + [f for f in feeders if f not in parents.get(task, [])]
    return parents


def task_order(spec: TaskSpec) -> List[str]:
    """Every task name once, feeders before the tasks they feed (cascade order first, then the spec's)."""
    parents, order, done = task_parents(spec), [], set()
    names = list(spec.cascade or []) + [t.name for t in spec.tasks if t.name not in (spec.cascade or [])]

    def visit(n: str, path: tuple) -> None:
        if n in done:
            return
        if n in path:
            raise FeatstoreError(f"task feeds form a cycle ({' -> '.join([*path, n])}); feed each task from "
                                 "tasks that do not depend on it")
        for p in parents.get(n, []):
            visit(p, (*path, n))
        done.add(n)
        order.append(n)

    for n in names:
        visit(n, ())
    return order


class PredictionLayers(nn.Module):
    """Per-task output layers on a fused embedding.

    ``forward(x [B, in_dim]) -> {task.name: logits [B, task.num_outputs]}`` in ``task.tasks`` order.

    ``binary_logits=1``: a binary task's last Linear has one output ``z`` (a reference's single BCE logit) and its
    logits are ``[0, z]``: softmax cross-entropy on them is ``BCEWithLogits(z)`` and ``softmax[:, 1]`` is
    ``sigmoid(z)``, value and gradient, so the parameters, their initialisation and every optimiser step are
    the one-logit model's. ``2`` (the default): two free logits.
    """

    def __init__(self, task: TaskSpec, in_dim: int, hidden: int = 0, dropout: float = 0.0, binary_logits: int = 2):
        super().__init__()
        validate_tasks(task)
        if binary_logits not in (1, 2):
            raise FeatstoreError(f"binary_logits={binary_logits!r} is invalid; use 1 (one BCE logit, shown as [0, z]) "
                                 "or 2 (two softmax logits)")
        self.one_logit = {t.name for t in task.tasks if t.kind == "binary"} if binary_logits == 1 else set()
        self.spec = task
        self.tasks: List[Task] = list(task.tasks)
        by_name = {t.name: t for t in self.tasks}
        # extra input width of each task: its feeders' numbers of outputs (cascade predecessor and feeds)
        self.parents: Dict[str, List[str]] = task_parents(task)
        self.order = task_order(task)  # feeders before the tasks they feed

        if task.shared_outputs:
            width = hidden or in_dim
            self.shared = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout))
        else:
            width = in_dim
            self.shared = nn.Dropout(dropout)
        self.layers = nn.ModuleDict()
        for t in self.tasks:
            d = width + sum(by_name[p].num_outputs for p in self.parents.get(t.name, []))
            k = 1 if t.name in self.one_logit else t.num_outputs
            if hidden > 0 and not task.shared_outputs:
                self.layers[t.name] = nn.Sequential(
                    nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, k))
            else:
                self.layers[t.name] = nn.Linear(d, k)
        self.in_dim = in_dim

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        h = self.shared(x)
        by_name = {t.name: t for t in self.tasks}
        out: Dict[str, Tensor] = {}
        for name in self.order:
            feeders = self.parents.get(name, [])
            inp = torch.cat([h, *(logits_to_probs(by_name[p], out[p]) for p in feeders)], dim=-1) if feeders else h
            z = self.layers[name](inp)
            out[name] = torch.cat([torch.zeros_like(z), z], dim=-1) if name in self.one_logit else z
        return {t.name: out[t.name] for t in self.tasks}
