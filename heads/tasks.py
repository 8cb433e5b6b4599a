"""Derive a ``TaskSpec`` from a dataset manifest's labels and encode the targets.

``Sample.labels`` is a dict ``{label_key: value}``; a label key becomes tasks by the kind of its values:

* a scalar (int / bool / str): one task; ``binary`` when it has two classes, else ``multiclass``.
  Classes are the distinct values seen: integers sorted (so 0/1 gives class 1 = positive), names in the
  dataset format's order (``TaskInfo.class_names``, e.g. Memotion's levels lowest first, so ``C_motivation``'s
  class 1 is ``motivational`` and ``C_humour``'s classes rise with the intensity) when it names them all,
  else sorted. Hateful Memes ``{"label": 0|1}``, Memotion ``"A"`` (negative/neutral/positive).
* a list of names (MM-IMDB ``"genres"``), or a dict of name -> 0/1/bool (Memotion ``"B"``): one
  ``multilabel`` task over the names seen, in the format's order likewise.
* a dict of name -> level (Memotion ``"C"``, intensity per emotion): one task per name (multiclass; binary
  when only two levels occur; none when one level occurs, and the key's weight is then shared by the
  others), called ``"<key>_<name>"`` (``C_humour``, ``C_sarcasm`` ...). A level never seen has no class.
  The key names them as a group (``TaskSpec.groups``), scored together too (``C/macro_f1``, ``heads.metrics``).

``--task`` picks label keys: one key, a comma-separated list, or ``all``. Task weights default to 1 each,
except Memotion's A/B/C multi-task (0.4 / 0.3 / 0.3; the 0.3 of C is split evenly over its per-emotion
tasks); an explicit ``weights`` list gives one weight per picked key.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from featstore.errors import FeatstoreError

from .spec import Task, TaskSpec

MEMOTION_WEIGHTS = {"A": 0.4, "B": 0.3, "C": 0.3}


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, str, np.integer)) and not isinstance(v, float)


def _kind_of(key: str, values: List[Any]) -> str:
    """"scalar", "names" (multilabel) or "levels" (one multiclass per name) for one label key."""
    kinds = set()
    for v in values:
        if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
            kinds.add("names")
        elif isinstance(v, dict) and v and all(isinstance(x, (bool, int, np.integer)) and int(x) in (0, 1)
                                                for x in v.values()):
            kinds.add("names")
        elif isinstance(v, dict) and v and all(_is_scalar(x) for x in v.values()):
            kinds.add("levels")
        elif _is_scalar(v):
            kinds.add("scalar")
        else:
            raise FeatstoreError(f"label {key!r} has a value of unsupported kind {v!r}; labels must be a class "
                                 "(int or str), a list of class names, or a dict of name -> class")
    if len(kinds) != 1:
        raise FeatstoreError(f"label {key!r} mixes value kinds ({', '.join(sorted(kinds))}); "
                             "fix the dataset so every sample gives the same kind")
    return kinds.pop()


def _names(v: Any) -> List[str]:
    if isinstance(v, dict):
        return [str(k) for k, x in v.items() if int(x) == 1]
    return [str(x) for x in v]


def label_keys(samples: Sequence[Any]) -> List[str]:
    """Label keys present in any sample, in first-seen order."""
    return list(dict.fromkeys(k for s in samples for k in s.labels))


def derive_task_spec(samples: Sequence[Any], task: Optional[str] = None,
                     weights: Optional[Sequence[float]] = None, known: Optional[Dict[str, Any]] = None) -> TaskSpec:
    """Tasks for the label key(s) picked by ``task`` (see module docstring) from the labelled samples.
    ``known``: the dataset format's tasks (``DatasetManifest.tasks``, name -> ``TaskInfo``), whose
    ``class_names`` order the classes seen."""
    keys = label_keys(samples)
    if not keys:
        raise FeatstoreError("the dataset has no labels; pass a labelled dataset (train/dev files with labels)")
    if task is None:
        if len(keys) > 1:
            raise FeatstoreError(f"the dataset has several label keys ({', '.join(keys)}); pass --task with one "
                                 "of them, a comma-separated list, or all")
        picked = keys
    elif task == "all":
        picked = keys
    else:
        picked = [t.strip() for t in task.split(",") if t.strip()]
        unknown = [t for t in picked if t not in keys]
        if unknown or not picked:
            raise FeatstoreError(f"--task {task!r}: no label {unknown[0] if unknown else task!r} in the dataset; "
                                 f"choose from {', '.join(keys)} or all")
    if isinstance(weights, dict):  # --task all with --task-weights KEY=W,...: one per label key
        if sorted(weights) != sorted(picked):
            raise FeatstoreError(f"--task-weights weighs {', '.join(weights)} but --task all picks "
                                 f"{', '.join(picked)}; give one weight per label key")
        weights = [weights[k] for k in picked]
    if weights is not None and len(weights) != len(picked):
        raise FeatstoreError(f"{len(weights)} task weights given for {len(picked)} tasks ({', '.join(picked)}); "
                             "pass one weight per task")
    if weights is None:
        if len(picked) > 1 and set(picked) == set(MEMOTION_WEIGHTS):
            weights = [MEMOTION_WEIGHTS[k] for k in picked]
        else:
            weights = [1.0] * len(picked)
    tasks: List[Task] = []
    groups: Dict[str, List[str]] = {}
    for key, w in zip(picked, weights):
        values = [s.labels[key] for s in samples if s.labels.get(key) is not None]
        got = _key_tasks(key, values, float(w), known or {})
        if got and got[0].name != key:  # a levels key's tasks are named <key>_<name>
            groups[key] = [t.name for t in got]
        tasks += got
    return TaskSpec(tasks=tasks, groups=groups or None)


def _ordered(seen, key: str, known: Dict[str, Any]) -> List[str]:
    """``seen`` class names in the dataset format's order (``known[key].class_names``: Memotion's levels lowest
    first, MM-IMDB's genre list) when it names every one of them, else sorted."""
    order = [str(c) for c in getattr(known.get(key), "class_names", ()) or ()]
    if seen and set(seen) <= set(order):
        return [c for c in order if c in seen]
    return sorted(seen)


def _key_tasks(key: str, values: List[Any], w: float, known: Dict[str, Any]) -> List[Task]:
    """The task(s) of one label key (see the module docstring)."""
    kind = _kind_of(key, values)
    if kind == "scalar":
        seen = {str(v) if isinstance(v, str) else int(v) for v in values}
        if all(isinstance(v, str) for v in seen):
            classes = _ordered(seen, key, known)
        else:
            classes = [str(c) for c in sorted(seen, key=lambda x: (str(type(x)), x))]
        if len(classes) < 2:
            raise FeatstoreError(f"label {key!r} has a single class ({classes[0]!r}) in the dataset; "
                                 "a task needs at least 2 classes - pass another --task")
        return [Task(key, "binary" if len(classes) == 2 else "multiclass", len(classes), classes, w)]
    if kind == "names":
        names = _ordered({n for v in values for n in _names(v)} | {str(k) for v in values if isinstance(v, dict)
                                                                  for k in v}, key, known)
        return [Task(key, "multilabel", len(names), names, w)]
    levels = {sub: _ordered({str(v[sub]) for v in values if sub in v}, f"{key}_{sub}", known)
              for sub in dict.fromkeys(n for v in values for n in v)}
    kept = {sub: lv for sub, lv in levels.items() if len(lv) >= 2}  # a name with one level seen has no task
    return [Task(f"{key}_{sub}", "binary" if len(lv) == 2 else "multiclass", len(lv), lv, w / len(kept))
            for sub, lv in kept.items()]


def _lookup(labels: Dict[str, Any], task: Task) -> Any:
    if task.name in labels:
        return labels[task.name]
    key, _, sub = task.name.rpartition("_")
    if key and isinstance(labels.get(key), dict):
        return labels[key].get(sub)
    return None


def encode_targets(samples: Sequence[Any], spec: TaskSpec) -> Dict[str, np.ndarray]:
    """Targets per task, rows in ``samples`` order: int64 [N] class index (-1 = missing) for binary /
    multiclass; float32 [N, C] multi-hot (NaN row = missing) for multilabel."""
    out: Dict[str, np.ndarray] = {}
    for task in spec.tasks:
        index = {c: i for i, c in enumerate(task.class_names)}
        if task.kind == "multilabel":
            y = np.full((len(samples), task.num_classes), np.nan, dtype=np.float32)
        else:
            y = np.full(len(samples), -1, dtype=np.int64)
        for r, s in enumerate(samples):
            v = _lookup(s.labels, task)
            if v is None:
                continue
            if task.kind == "multilabel":
                if not isinstance(v, (list, tuple, dict)):
                    raise FeatstoreError(f"sample {s.id!r}: label {task.name!r} is {v!r}, expected a list of class "
                                         "names; fix the dataset or pick another --task")
                y[r] = 0.0
                for n in _names(v):
                    if n not in index:
                        raise FeatstoreError(f"sample {s.id!r}: class {n!r} of {task.name!r} is not one of "
                                             f"{', '.join(task.class_names)}; retrain or fix the label")
                    y[r, index[n]] = 1.0
            else:
                if not _is_scalar(v):
                    raise FeatstoreError(f"sample {s.id!r}: label {task.name!r} is {v!r}, expected one class; "
                                         "fix the dataset or pick another --task")
                c = str(v) if isinstance(v, str) else str(int(v))
                if c not in index:
                    raise FeatstoreError(f"sample {s.id!r}: class {c!r} of {task.name!r} is not one of "
                                         f"{', '.join(task.class_names)}; retrain or fix the label")
                y[r] = index[c]
        out[task.name] = y
    return out


def tasks_named(spec: TaskSpec, key: str) -> List[str]:
    """The tasks a label key names: the task ``key`` itself, or every per-item task ``key_<item>``."""
    names = [t.name for t in spec.tasks]
    return [key] if key in names else [n for n in names if n.startswith(f"{key}_")]


def with_feeds(spec: TaskSpec, text: Optional[str]) -> TaskSpec:
    """``spec`` with a fan-out cascade from ``--feeds`` text: comma-separated ``SRC>DST`` pairs, each feeding
    the probabilities of the tasks of label ``SRC`` into every task of label ``DST`` (``B>C``: Memotion's
    emotions into each intensity task ``C_humour``, ``C_sarcasm``, ...; see ``heads.outputs``)."""
    if not text:
        return spec
    feeds: Dict[str, List[str]] = {k: list(v) for k, v in (spec.feeds or {}).items()}
    for pair in (p.strip() for p in str(text).split(",") if p.strip()):
        src_key, sep, dst_key = (x.strip() for x in pair.partition(">"))
        src, dst = tasks_named(spec, src_key), tasks_named(spec, dst_key)
        if not sep or not src or not dst:
            names = ", ".join(t.name for t in spec.tasks)
            raise FeatstoreError(f"--feeds {pair!r}: write SRC>DST with labels of the chosen tasks (e.g. B>C); "
                                 f"the tasks are {names}")
        for d in dst:
            feeds[d] = feeds.get(d, []) + [s for s in src if s not in feeds.get(d, [])]
    out = dataclasses.replace(spec, feeds=feeds)
    from .outputs import validate_tasks

    validate_tasks(out)
    return out
