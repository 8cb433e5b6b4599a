"""Classification metrics per task, computed with scikit-learn.

Inputs are numpy arrays for the labelled rows of one split:

* binary: ``y_true`` int [N] in {0, 1}, ``probs`` float [N, 2] (softmax; column 1 = positive class)
* multiclass: ``y_true`` int [N] in [0, C), ``probs`` float [N, C] (softmax)
* multilabel: ``y_true`` {0, 1} [N, C] multi-hot, ``probs`` float [N, C] (independent sigmoids),
  decisions above 0.5 (``predictions``)

Rows with a missing label (class index -1, or a NaN multi-hot row) are dropped first. A metric that is
undefined on the given labels (AUROC with a single class present) is NaN and a sentence is added to the
task's ``warnings`` list; it never raises.

``batch_auroc`` (binary tasks, when ``compute_metrics`` is given ``auroc_batch`` = B > 0): the AUROC of each run
of B consecutive labelled rows (the last one shorter), averaged weighted by the rows in each: what
Hate-CLIPper's ``engine.py`` logs as ``val/auroc`` and ``test/auroc`` (torchmetrics' AUROC on every batch of its
unshuffled loader, averaged by Lightning's ``self.log`` over the epoch, weighted by batch size). A batch with
one class has no AUROC; it is left out of the mean, with a warning.

What the datasets' own papers report, by key:

* multilabel ``micro_f1`` / ``macro_f1`` / ``weighted_f1`` / ``samples_f1``: scikit-learn's averages of the 0.5
  decisions over the whole split, MM-IMDB's four (gmu-mmimdb's ``report_performance``; MMBT and MMF report micro
  and macro). ``macro_f1`` averages each label's positive-class F1.
* multilabel ``labelwise_macro_f1`` / ``labelwise_weighted_f1``: each label scored as its own two-class task
  (both "not x" and "x" are classes; over the classes its truth or decisions hold, as scikit-learn's
  ``f1_score(average=...)`` of that label's column, the call the Memotion organisers' code makes), macro /
  weighted over those, then the plain mean over labels:
  Memotion's Task B score (Memotion 1, SemEval-2020 Task 8: macro F1 per emotion, averaged; Memotion 2.0: weighted
  F1 per emotion, averaged), which ``macro_f1`` is not.
* ``<group>/macro_f1`` / ``<group>/weighted_f1`` (``TaskSpec.groups``: a label key of name -> level dicts, one task
  per name): the plain mean of its tasks' values, Memotion's Task C score (macro for Memotion 1, weighted for
  2.0); ``A/macro_f1`` / ``A/weighted_f1`` are its Task A scores.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from .spec import Task, TaskSpec

THRESHOLD = 0.5

METRIC_NAMES = {
    "binary": ("auroc", "accuracy", "f1", "macro_f1", "micro_f1", "weighted_f1", "batch_auroc"),
    "multiclass": ("auroc", "accuracy", "macro_f1", "micro_f1", "weighted_f1"),
    "multilabel": ("micro_auroc", "macro_auroc", "micro_f1", "macro_f1", "weighted_f1", "samples_f1",
                   "labelwise_macro_f1", "labelwise_weighted_f1", "subset_accuracy"),
}
GROUP_METRICS = ("macro_f1", "weighted_f1")  # a group's, each the mean of its tasks' (module docstring)


def default_metric(task: Task) -> str:
    """The metric a task is judged by unless told otherwise: AUROC for binary, macro F1 otherwise."""
    return "auroc" if task.kind == "binary" else "macro_f1"


def labelled_rows(task: Task, y_true: np.ndarray) -> np.ndarray:
    """Boolean [N]: rows whose label for ``task`` is present."""
    if task.kind == "multilabel":
        return ~np.isnan(np.asarray(y_true, dtype=np.float64)).any(axis=1)
    return np.asarray(y_true) >= 0


def predictions(task: Task, probs: np.ndarray) -> np.ndarray:
    """Hard decisions: class index [N] (argmax) or multi-hot int [N, C] (probability above 0.5, as gmu-mmimdb's
    ``y_prob > threshold``, MMBT's ``> 0.5`` and MMF's ``torch.round(sigmoid)`` decide: exactly 0.5 is 0)."""
    if task.kind == "multilabel":
        return (probs > THRESHOLD).astype(np.int64)
    return probs.argmax(axis=1)


def _auroc(y, score, warn: List[str], what: str, **kw) -> float:
    if len(np.unique(y)) < 2:
        warn.append(f"{what} is undefined: only one class is present in the labels; reported as NaN")
        return math.nan
    try:
        return float(roc_auc_score(y, score, **kw))
    except ValueError as err:
        warn.append(f"{what} is undefined on these labels ({err}); reported as NaN")
        return math.nan


def task_metrics(task: Task, y_true: np.ndarray, probs: np.ndarray) -> Tuple[Dict[str, float], List[str]]:
    """Metrics of one task on one split -> ({metric: value}, warnings). Empty dict when no row is labelled."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    keep = labelled_rows(task, y_true)
    warn: List[str] = []
    if not keep.any():
        return {}, [f"task {task.name!r}: no labelled rows"]
    y, p = y_true[keep], probs[keep]
    pred = predictions(task, p)
    m: Dict[str, float] = {"n": int(keep.sum())}
    if task.kind == "multilabel":
        y = y.astype(np.int64)
        m["micro_auroc"] = _auroc(y.ravel(), p.ravel(), warn, f"task {task.name!r} micro AUROC")
        present = [c for c in range(y.shape[1]) if 0 < y[:, c].sum() < len(y)]
        if len(present) < y.shape[1]:
            warn.append(f"task {task.name!r}: {y.shape[1] - len(present)} classes have a single value; "
                        "macro AUROC averages the others")
        m["macro_auroc"] = (float(np.mean([roc_auc_score(y[:, c], p[:, c]) for c in present]))
                            if present else math.nan)
        for avg in ("micro", "macro", "weighted", "samples"):
            m[f"{avg}_f1"] = float(f1_score(y, pred, average=avg, zero_division=0))
        for avg in ("macro", "weighted"):
            m[f"labelwise_{avg}_f1"] = float(np.mean([f1_score(y[:, c], pred[:, c], average=avg, zero_division=0)
                                                      for c in range(y.shape[1])]))
        m["subset_accuracy"] = float(accuracy_score(y, pred))
        return m, warn
    labels = list(range(task.num_outputs))
    m["accuracy"] = float(accuracy_score(y, pred))
    if task.kind == "binary":
        m["auroc"] = _auroc(y, p[:, 1], warn, f"task {task.name!r} AUROC")
        m["f1"] = float(f1_score(y, pred, average="binary", pos_label=1, zero_division=0))
    else:
        if len(np.unique(y)) < task.num_outputs:
            warn.append(f"task {task.name!r} AUROC is undefined: only {len(np.unique(y))} of "
                        f"{task.num_outputs} classes present; reported as NaN")
            m["auroc"] = math.nan
        else:
            m["auroc"] = _auroc(y, p / p.sum(1, keepdims=True), warn, f"task {task.name!r} AUROC",
                                multi_class="ovr", average="macro", labels=labels)
    for avg in ("macro", "micro", "weighted"):
        m[f"{avg}_f1"] = float(f1_score(y, pred, average=avg, labels=labels, zero_division=0))
    return m, warn


def batch_auroc(task: Task, y_true: np.ndarray, probs: np.ndarray, size: int) -> Tuple[float, List[str]]:
    """The size-weighted mean AUROC of runs of ``size`` consecutive labelled rows (module docstring)."""
    keep = labelled_rows(task, np.asarray(y_true))
    y, score = np.asarray(y_true)[keep], np.asarray(probs, dtype=np.float64)[keep][:, 1]
    values, weights, skipped = [], [], 0
    for start in range(0, len(y), size):
        yb = y[start:start + size]
        if len(np.unique(yb)) < 2:
            skipped += 1
            continue
        values.append(roc_auc_score(yb, score[start:start + size]))
        weights.append(len(yb))
    warn = [f"task {task.name!r} batch AUROC: {skipped} batch(es) of {size} rows with one class left out"] \
        if skipped else []
    return (float(np.average(values, weights=weights)) if values else math.nan), warn


def compute_metrics(spec: TaskSpec, targets: Dict[str, np.ndarray], probs: Dict[str, np.ndarray],
                    auroc_batch: int = 0) -> Tuple[Dict[str, float], List[str]]:
    """All tasks of one split -> (flat {"<task>/<metric>": value, "score": ...}, warnings).

    ``score`` is the mean over label keys: a task's default metric (AUROC for binary, macro F1 otherwise), a
    group's ``<group>/macro_f1`` (Memotion's A, B and C count once each, not C four times); with one task it
    equals that task's default metric. NaN when any of them is NaN. ``auroc_batch`` > 0 adds each binary task's
    ``batch_auroc``; groups add ``<group>/<GROUP_METRICS>`` (``_group_metrics``).
    """
    flat: Dict[str, float] = {}
    warnings: List[str] = []
    defaults: Dict[str, float] = {}
    for task in spec.tasks:
        m, w = task_metrics(task, targets[task.name], probs[task.name])
        warnings += w
        flat.update({f"{task.name}/{k}": v for k, v in m.items()})
        if m and auroc_batch > 0 and task.kind == "binary":
            flat[f"{task.name}/batch_auroc"], w = batch_auroc(task, targets[task.name], probs[task.name], auroc_batch)
            warnings += w
        if m:
            defaults[task.name] = m[default_metric(task)]
    flat.update(_group_metrics(spec, flat))
    grouped = {name: group for group, names in (spec.groups or {}).items() for name in names}
    units: Dict[str, float] = {}  # label key -> its default metric: a task's own, or its group's macro F1
    for name, value in defaults.items():
        group = grouped.get(name)
        units[group or name] = flat.get(f"{group}/macro_f1", math.nan) if group else value
    if units:
        flat["score"] = float(np.mean(list(units.values())))
    return flat, warnings


def _group_metrics(spec: TaskSpec, flat: Dict[str, float]) -> Dict[str, float]:
    """``<group>/<metric>`` = the mean of ``<metric>`` over the group's tasks with labelled rows on the split (a
    task without any is left out, as ``score`` leaves out such a task)."""
    out: Dict[str, float] = {}
    for group, names in (spec.groups or {}).items():
        for metric in GROUP_METRICS:
            values = [flat[f"{name}/{metric}"] for name in names if f"{name}/{metric}" in flat]
            if values:
                out[f"{group}/{metric}"] = float(np.mean(values))
    return out


def metric_keys(spec: TaskSpec) -> List[str]:
    """Every flat metric key ``compute_metrics`` can produce for ``spec`` (plus "score" and "loss")."""
    keys = [f"{t.name}/{m}" for t in spec.tasks for m in METRIC_NAMES[t.kind]]
    keys += [f"{group}/{m}" for group in (spec.groups or {}) for m in GROUP_METRICS]
    return keys + ["score", "loss"]


def mean_std(values) -> Tuple[Optional[float], Optional[float], int]:
    """(mean, sample std with ddof=1 (0 for one value), n) over the finite values of ``values``, ignoring None
    and NaN; (None, None, 0) when none is left. The one mean +- std of runs, sweeps and comparisons."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(xs):
        return None, None, 0
    return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0, int(len(xs))


def format_mean_std(mean: Optional[float], std: Optional[float], missing: str = "", sep: str = " +- ") -> str:
    """``"0.7512 +- 0.0123"`` (4 decimals, ``sep`` between), or ``missing`` when there is no mean: the one
    mean +- std text of run comparisons, sweep leaderboards and the training summary (``sep="+-"``)."""
    return missing if mean is None else f"{mean:.4f}{sep}{std:.4f}"
