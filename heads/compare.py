"""Compare run groups (a run folder, or a ``train_seeds`` folder of ``seed_<k>`` runs) over seeds.

``compare_runs(run_dirs, split, metrics)`` -> ``Comparison``: ``rows`` (one per group: name, head, feature
sets, seeds, ``{metric: (mean, std)}``), ``tests`` (each later group against the first on every metric:
Welch's t-test over seeds, ``scipy.stats.ttest_ind(equal_var=False)``, or the paired ``ttest_rel`` when
both groups have the same seeds, values aligned by seed), and ``to_text()`` (a fixed-width table).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from featstore.errors import FeatstoreError


@dataclass
class RunGroup:
    name: str
    head: str
    features: str
    metrics: Dict[int, Dict[str, float]]  # {seed: flat metrics of the chosen split}


@dataclass
class Comparison:
    split: str
    metrics: List[str]
    rows: List[dict]
    tests: List[dict] = field(default_factory=list)

    def to_text(self) -> str:
        head = ["run", "head", "features", "seeds"] + self.metrics
        body = [[r["name"], r["head"], r["features"], ",".join(map(str, r["seeds"]))]
                + [_pm(*r["metrics"][m]) for m in self.metrics] for r in self.rows]
        lines = _table(head, body, f"split: {self.split} (mean +- std over seeds)")
        if self.tests:
            th = ["a", "b", "metric", "test", "t", "p"]
            tb = [[t["a"], t["b"], t["metric"], t["test"], _num(t["t"]), _num(t["p"])] for t in self.tests]
            lines += [""] + _table(th, tb, "significance (b against a)")
        return "\n".join(lines)


def _num(x: Optional[float]) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _pm(mean: Optional[float], std: Optional[float]) -> str:
    return "n/a" if mean is None else f"{mean:.4f} +- {std:.4f}"


def _table(header: List[str], body: List[List[str]], title: str) -> List[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [title, fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in body]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FeatstoreError(f"cannot read {path} ({err}); pass run folders written by `heads train`") from None


def load_group(run_dir, split: str) -> RunGroup:
    """A run folder (``metrics.json``) or a folder of ``seed_<k>`` runs as one group."""
    root = Path(run_dir)
    runs = [root] if (root / "metrics.json").is_file() else sorted(
        (p for p in root.glob("seed_*") if (p / "metrics.json").is_file()), key=lambda p: p.name)
    if not runs:
        raise FeatstoreError(f"{root} holds no metrics.json nor seed_*/metrics.json; pass run folders of `heads train`")
    metrics: Dict[int, Dict[str, float]] = {}
    config = _read(runs[0] / "config.json")
    for r in runs:
        m = _read(r / "metrics.json")
        if split not in m:
            have = [k for k, v in m.items() if isinstance(v, dict) and k != "warnings"]
            raise FeatstoreError(f"run {r} has no metrics for split {split!r} (it has {', '.join(have)}); pass --split")
        seed = int(m.get("seed", 0))
        if seed in metrics:
            raise FeatstoreError(f"{root} holds two runs with seed {seed}; keep one run per seed")
        metrics[seed] = {k: (math.nan if v is None else float(v)) for k, v in m[split].items()}
    feats = config.get("features", {})
    fs = " + ".join(f"{v['name']}@{v['version']}" for v in feats.values()) if feats else "-"
    return RunGroup(root.name or str(root), config.get("head", "?"), fs, metrics)


def significance(a: Dict[int, float], b: Dict[int, float]) -> Tuple[str, float, float]:
    """(test name, t, p) between per-seed values of two groups: paired t-test when the seed sets match,
    else Welch's t-test. NaN values are dropped (pairwise for the paired test)."""
    if set(a) == set(b) and len(a) > 1:
        seeds = sorted(a)
        x = np.array([a[s] for s in seeds])
        y = np.array([b[s] for s in seeds])
        ok = np.isfinite(x) & np.isfinite(y)
        r = stats.ttest_rel(y[ok], x[ok])
        return "paired", float(r.statistic), float(r.pvalue)
    x = np.array([v for v in a.values() if math.isfinite(v)])
    y = np.array([v for v in b.values() if math.isfinite(v)])
    r = stats.ttest_ind(y, x, equal_var=False)
    return "welch", float(r.statistic), float(r.pvalue)


def compare_runs(run_dirs: Sequence, split: str = "test", metrics: Optional[Sequence[str]] = None) -> Comparison:
    """Rows of mean +- std per metric for each group and t-tests of every group against the first.

    ``metrics`` defaults to the keys every group has (sorted; the row counts "<task>/n" left out)."""
    if not run_dirs:
        raise FeatstoreError("no run folders given; pass at least one run folder")
    groups = [load_group(d, split) for d in run_dirs]
    common = {k for k in set.intersection(*(set(k for m in g.metrics.values() for k in m) for g in groups))
              if k.rpartition("/")[2] != "n"}
    if metrics is None:
        metrics = sorted(common)
    else:
        missing = [m for m in metrics if m not in common]
        if missing:
            raise FeatstoreError(f"metric {missing[0]!r} is not in every run; choose from {', '.join(sorted(common))}")
    rows = []
    for g in groups:
        stats_ = {}
        for m in metrics:
            xs = np.array([v[m] for v in g.metrics.values() if math.isfinite(v.get(m, math.nan))])
            stats_[m] = (float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0) if len(xs) else (None, None)
        rows.append({"name": g.name, "head": g.head, "features": g.features, "seeds": sorted(g.metrics),
                     "metrics": stats_})
    tests = []
    base = groups[0]
    for g in groups[1:]:
        for m in metrics:
            a = {s: v.get(m, math.nan) for s, v in base.metrics.items()}
            b = {s: v.get(m, math.nan) for s, v in g.metrics.items()}
            if len(a) < 2 or len(b) < 2:
                continue
            name, t, p = significance(a, b)
            tests.append({"a": base.name, "b": g.name, "metric": m, "test": name, "t": t, "p": p})
    return Comparison(split, list(metrics), rows, tests)
