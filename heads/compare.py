"""Compare run groups over seeds: a ``heads train`` output (``summary.json`` + ``seed_<k>`` runs), a bare run
folder, or a ``heads sweep`` folder (every finished leaderboard row becomes a group, in leaderboard order).

``compare_runs(run_dirs, split, metrics, against)`` -> ``Comparison`` for one split: ``rows`` (one per
group: name, head, feature sets, seeds, ``{metric: (mean, std)}``), ``tests`` (each other group against the
reference group - the first (``"ranked"``: a sweep's rank 1, its groups coming in leaderboard order), or with
``against="best"`` the one with the highest mean of the first metric -
on every metric: the paired ``scipy.stats.ttest_rel`` when both groups have the same seeds, values aligned
by seed, else Welch's ``ttest_ind(equal_var=False)``; ``t`` is "b minus a", so t > 0 means b's mean is
higher), each with a ``verdict`` in words, and ``to_text()`` (fixed-width tables).
``compare_splits(...)`` does the same for every labelled split the groups share (Hateful Memes: dev,
dev_unseen, test, test_unseen) -> ``[Comparison]``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from featstore.errors import FeatstoreError
from featstore.jsonio import read_json

from .metrics import format_mean_std, mean_std
from .sweep_layout import LEADERBOARD_CSV, SPEC, sweep_row_groups

ALPHA = 0.05  # significance level of the verdicts
UNREADABLE = "cannot read {path} ({err}); pass run folders written by `heads train`"


@dataclass
class RunGroup:
    name: str
    head: str
    features: str
    metrics: Dict[int, Dict[str, float]]  # {seed: flat metrics of the chosen split}
    # its task spec's groups (Memotion's C: its tasks); None when saved before groups, whose ``score`` then
    # averaged every task (each C_<emotion> once) rather than each label key once
    groups: Optional[Dict[str, List[str]]] = field(default_factory=dict)


@dataclass
class Comparison:
    split: str
    metrics: List[str]
    rows: List[dict]
    tests: List[dict] = field(default_factory=list)
    reference: str = ""
    notes: List[str] = field(default_factory=list)

    def to_text(self) -> str:
        head = ["run", "head", "features", "seeds"] + self.metrics
        body = [[r["name"], r["head"], r["features"], ",".join(map(str, r["seeds"]))]
                + [format_mean_std(*r["metrics"][m], missing="n/a") for m in self.metrics] for r in self.rows]
        lines = _table(head, body, f"split: {self.split} (mean +- std over seeds)")
        if self.tests:
            th = ["a", "b", "metric", "test", "t (b - a)", "p", "verdict"]
            tb = [[t["a"], t["b"], t["metric"], t["test"], _num(t["t"]), _num(t["p"]), t["verdict"]]
                  for t in self.tests]
            lines += [""] + _table(th, tb, f"significance of each run against {self.reference} (t > 0: b is higher)")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _num(x: Optional[float]) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:.4g}"


def _table(header: List[str], body: List[List[str]], title: str) -> List[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [title, fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in body]


def lower_is_better(metric: str) -> bool:
    return metric.rpartition("/")[2].endswith("loss")


def verdict(a: str, b: str, metric: str, t: float, p: float, alpha: float = ALPHA) -> str:
    """The test in words: which side is better on ``metric`` and whether the difference is significant."""
    if math.isnan(t) or math.isnan(p):
        return "no test (identical values, differences that do not vary, or too few)"
    if t == 0:
        return f"{a} and {b} are level"
    higher, lower = (b, a) if t > 0 else (a, b)
    better, worse = (lower, higher) if lower_is_better(metric) else (higher, lower)
    if p < alpha:
        return f"{better} is better than {worse} (significant, p < {alpha})"
    return f"{better} is ahead of {worse}, not significant (p >= {alpha})"


def _seed_runs(root: Path) -> List[Path]:
    """``root`` itself when it is a run folder, else its ``seed_<k>`` runs; none is a one-line error."""
    if (root / "metrics.json").is_file():
        return [root]
    runs = sorted((p for p in root.glob("seed_*") if (p / "metrics.json").is_file()), key=lambda p: p.name)
    if not runs:
        raise FeatstoreError(f"{root} holds no metrics.json nor seed_*/metrics.json; pass run folders of `heads train`")
    return runs


def load_group(run_dir, split: str, name: Optional[str] = None) -> RunGroup:
    """A run folder (``metrics.json``) or a folder of ``seed_<k>`` runs as one group."""
    root = Path(run_dir)
    runs = _seed_runs(root)
    metrics: Dict[int, Dict[str, float]] = {}
    config = read_json(runs[0] / "config.json", UNREADABLE)
    for r in runs:
        m = read_json(r / "metrics.json", UNREADABLE)
        if split not in m:
            raise FeatstoreError(f"run {r} has no metrics for split {split!r} (it has {', '.join(labelled_splits(m))}); "
                                 "pass --split")
        seed = int(m.get("seed", 0))
        if seed in metrics:
            raise FeatstoreError(f"{root} holds two runs with seed {seed}; keep one run per seed")
        metrics[seed] = {k: (math.nan if v is None else float(v)) for k, v in m[split].items()}
    feats = config.get("features", {})
    fs = " + ".join(f"{v['name']}@{v['version']}" for v in feats.values()) if feats else "-"
    spec = config.get("task_spec", {})
    return RunGroup(name or root.name or str(root), config.get("head", "?"), fs, metrics,
                    spec.get("groups") or {} if "groups" in spec else None)


def labelled_splits(metrics_json: dict) -> List[str]:
    """The splits with metrics in a ``metrics.json`` content, in its order."""
    return [k for k, v in metrics_json.items() if isinstance(v, dict) and k != "warnings"]


def expand_inputs(run_dirs: Sequence) -> List[Tuple[Path, Optional[str]]]:
    """(group folder, display name) for each input: a sweep folder (or its ``leaderboard.csv``) becomes its
    finished rows in leaderboard order; anything else stays itself."""
    out: List[Tuple[Path, Optional[str]]] = []
    for d in run_dirs:
        p = Path(d)
        root = p.parent if p.name == LEADERBOARD_CSV else p
        if (root / SPEC).is_file():
            rows = sweep_row_groups(root)
            if not rows:
                raise FeatstoreError(f"sweep {root} has no finished row yet; run `heads sweep` to completion first")
            out += rows
        else:
            out.append((p, None))
    return out


def significance(a: Dict[int, float], b: Dict[int, float]) -> Tuple[str, float, float]:
    """(test name, t, p) between per-seed values of two groups: paired t-test when the seed sets match,
    else Welch's t-test. NaN values are dropped (pairwise for the paired test). t is b against a. Differences
    that do not vary (every seed's the same up to rounding, non-zero: t is infinite, or 1e15 from float noise)
    have no test: t and p are NaN."""
    with warnings.catch_warnings():  # nearly identical values: scipy warns, the numbers still stand
        warnings.simplefilter("ignore", RuntimeWarning)
        return _ttest(a, b)


def _flat(values: np.ndarray) -> bool:
    """Values equal up to float rounding (the spread a t-test would divide by is noise)."""
    return len(values) > 0 and float(np.ptp(values)) <= 1e-9 * max(1.0, float(np.abs(values).max()))


def _ttest(a: Dict[int, float], b: Dict[int, float]) -> Tuple[str, float, float]:
    if set(a) == set(b) and len(a) > 1:
        seeds = sorted(a)
        x = np.array([a[s] for s in seeds])
        y = np.array([b[s] for s in seeds])
        ok = np.isfinite(x) & np.isfinite(y)
        if _flat(y[ok] - x[ok]):
            return "paired", math.nan, math.nan
        r = stats.ttest_rel(y[ok], x[ok])
        return "paired", float(r.statistic), float(r.pvalue)
    x = np.array([v for v in a.values() if math.isfinite(v)])
    y = np.array([v for v in b.values() if math.isfinite(v)])
    if _flat(x) and _flat(y):
        return "welch", math.nan, math.nan
    r = stats.ttest_ind(y, x, equal_var=False)
    return "welch", float(r.statistic), float(r.pvalue)


def _row_stats(g: RunGroup, metrics: Sequence[str]) -> dict:
    out = {}
    for m in metrics:
        out[m] = mean_std(v.get(m, math.nan) for v in g.metrics.values())[:2]
    return out


AGAINST = ("first", "best", "ranked")  # ranked: a sweep's groups come in leaderboard order, so its rank 1


def _reference(groups: List[RunGroup], rows: List[dict], metric: str, against: str) -> int:
    if against in ("first", "ranked"):
        return 0
    if against != "best":
        raise FeatstoreError(f"--against {against!r} is unknown; pass {', '.join(AGAINST[:-1])} or {AGAINST[-1]}")
    sign = -1.0 if lower_is_better(metric) else 1.0
    means = [sign * r["metrics"][metric][0] if r["metrics"][metric][0] is not None else -math.inf for r in rows]
    return int(np.argmax(means))


def compare_groups(groups: List[RunGroup], split: str, metrics: Optional[Sequence[str]] = None,
                   against: str = "first") -> Comparison:
    """Rows of mean +- std per metric for each group and t-tests of every group against the reference.

    ``metrics`` defaults to the keys every group has (sorted; the row counts "<task>/n" left out)."""
    common = {k for k in set.intersection(*(set(k for m in g.metrics.values() for k in m) for g in groups))
              if k.rpartition("/")[2] != "n"}
    if metrics is None:
        metrics = sorted(common)
    else:
        missing = [m for m in metrics if m not in common]
        if missing:
            raise FeatstoreError(f"metric {missing[0]!r} is not in every run; choose from {', '.join(sorted(common))}")
    rows = [{"name": g.name, "head": g.head, "features": g.features, "seeds": sorted(g.metrics),
             "metrics": _row_stats(g, metrics)} for g in groups]
    ref = _reference(groups, rows, metrics[0], against) if metrics else 0
    base = groups[ref]
    tests = []
    for g in groups:
        if g is base:
            continue
        for m in metrics:
            a = {s: v.get(m, math.nan) for s, v in base.metrics.items()}
            b = {s: v.get(m, math.nan) for s, v in g.metrics.items()}
            if len(a) < 2 or len(b) < 2:
                continue
            name, t, p = significance(a, b)
            tests.append({"a": base.name, "b": g.name, "metric": m, "test": name, "t": t, "p": p,
                          "verdict": verdict(base.name, g.name, m, t, p)})
    why = {"best": f"best {metrics[0]}" if metrics else "the first run", "ranked": "rank 1 of the sweep's leaderboard"}
    reference = f"{base.name} ({why.get(against, 'the first run')})"
    return Comparison(split, list(metrics), rows, tests, reference, _score_notes(groups, metrics))


def _score_notes(groups: List[RunGroup], metrics: Sequence[str]) -> List[str]:
    """A note when ``score`` is compared between runs that define it differently: runs saved before task groups
    averaged every task, newer ones each label key once (Memotion's C once, not once per emotion)."""
    grouped = [g.name for g in groups if g.groups]
    old = [g.name for g in groups if g.groups is None]
    if "score" not in metrics or not grouped or not old:
        return []
    return [f"score is not the same quantity in every run: {', '.join(old)} (saved before task groups) average every "
            f"task, {', '.join(grouped)} each label key once (a group such as C by its macro F1); compare the tasks' "
            "own metrics instead"]


def compare_runs(run_dirs: Sequence, split: str = "test", metrics: Optional[Sequence[str]] = None,
                 against: str = "first") -> Comparison:
    """``compare_groups`` over the groups of ``run_dirs`` (see ``expand_inputs``) on one split."""
    if not run_dirs:
        raise FeatstoreError("no run folders given; pass at least one run folder")
    groups = [load_group(d, split, name) for d, name in expand_inputs(run_dirs)]
    return compare_groups(groups, split, metrics, against)


def common_splits(run_dirs: Sequence) -> List[str]:
    """The labelled splits every group's runs have (train left out), in the first run's order."""
    found: Optional[List[str]] = None
    for d, _ in expand_inputs(run_dirs):
        for r in _seed_runs(Path(d)):
            have = [s for s in labelled_splits(read_json(r / "metrics.json", UNREADABLE)) if s != "train"]
            found = have if found is None else [s for s in found if s in have]
    return found or []


def compare_splits(run_dirs: Sequence, splits: Optional[Sequence[str]] = None,
                   metrics: Optional[Sequence[str]] = None, against: str = "first") -> List[Comparison]:
    """One ``Comparison`` per split: ``splits``, or every labelled split all the runs share."""
    if not run_dirs:
        raise FeatstoreError("no run folders given; pass at least one run folder")
    splits = list(splits) if splits else common_splits(run_dirs)
    if not splits:
        raise FeatstoreError("the runs share no labelled split; pass --split with one of each run's splits")
    return [compare_runs(run_dirs, s, metrics, against) for s in splits]
