"""Which label the search commands show: ``--task NAME``, a task of the dataset whose value is one class per
sample (Hateful Memes' ``label``, Memotion's ``A`` or ``C_humour``; not a list of classes such as MM-IMDB's
``genres`` or Memotion's ``B``, nor a dict of tasks such as Memotion's ``C``).

``resolve_task(dataset, task)``: the task name, or None (no labels). Without ``--task`` it is the dataset's only
label key when that holds one class per sample; a dataset with several label keys, or whose only key holds lists,
is a one-line error naming the tasks that can be used (``--task none`` searches without labels).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

from ..datasets.manifest import label_value
from ..errors import FeatstoreError

NO_TASK = "none"  # --task none: no labels (no flips, no label column, one colour)


def scalar_tasks(dataset) -> List[str]:
    """The dataset's tasks whose value is one class per sample (binary or multiclass), in task order."""
    return [name for name, info in dataset.tasks.items() if info.kind != "multilabel"]


def _choices(dataset) -> str:
    usable = scalar_tasks(dataset)
    return (f"pass --task with one of: {', '.join(usable)}, or --task {NO_TASK}" if usable
            else f"pass --task {NO_TASK} to search without labels")


def _not_one_class(dataset, task: str) -> Optional[str]:
    """Why ``task`` is no single class per sample (a list or a dict of values), or None."""
    info = dataset.tasks.get(task)
    if info is not None and info.kind == "multilabel":
        return "lists of classes (a multi-label task)"
    for s in dataset.samples:
        value = (s.labels or {}).get(task)
        if isinstance(value, dict):
            return f"dicts of tasks ({', '.join(f'{task}_{k}' for k in value)})"
        if isinstance(value, (list, tuple)):
            return "lists of classes"
    return None


def resolve_task(dataset, task: Optional[str] = None) -> Optional[str]:
    """The task whose labels mark flips, label neighbours and colour a map; None for no labels."""
    if dataset is None:
        if task not in (None, NO_TASK):
            raise FeatstoreError(f"--task {task!r} needs --dataset (the labels come from the dataset); pass "
                                 "--dataset or drop --task")
        return None
    if task == NO_TASK or (task is None and not dataset.tasks):
        return None
    where = f"dataset {dataset.source}" if getattr(dataset, "source", "") else "the dataset"
    if task is None:
        usable = scalar_tasks(dataset)
        if len(dataset.tasks) == 1 and usable:
            return usable[0]
        if len(dataset.tasks) == 1:
            only = next(iter(dataset.tasks))
            raise FeatstoreError(f"{where}: its label key {only!r} holds {_not_one_class(dataset, only)}, not one "
                                 f"class per sample; {_choices(dataset)}")
        keys = list(dict.fromkeys(k for s in dataset.samples for k in (s.labels or {})))
        raise FeatstoreError(f"{where} has several label keys ({', '.join(keys)}); say which one to show: "
                             f"{_choices(dataset)}")
    why = _not_one_class(dataset, task)
    if why is not None:
        raise FeatstoreError(f"--task {task!r}: its values are {why}, not one class per sample; "
                             f"{_choices(dataset)}")
    if task not in dataset.tasks:
        raise FeatstoreError(f"--task {task!r}: {where} has no such label key; {_choices(dataset)}")
    return task


def sample_labels(samples: Sequence, task: Optional[str]) -> List[Any]:
    """The label of ``task`` of each sample (None where unlabelled, or every one when ``task`` is None)."""
    if task is None:
        return [None] * len(samples)
    return [label_value(s.labels or {}, task) for s in samples]
