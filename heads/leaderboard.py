"""The leaderboard of a ``heads sweep`` folder: one row per (features, head, setting).

Each row: the mean +- std over its finished seeds (sample std, ddof=1; 0 for one seed) of the headline
metrics (AUROC, accuracy, F1; macro F1 for multi-class tasks) of every labelled split (Hateful Memes: dev,
dev_unseen, test, test_unseen), the mean seconds per run, and per split the p-value of a t-test of the
row's primary metric (the runs' early-stopping monitor, e.g. ``label/auroc``) against the best row's
(``heads.compare.significance``: paired over seeds when both have the same seeds, else Welch). Rows are
ranked by the primary metric's mean on the validation split (never on test); failed rows come last with
their error.

Files: ``leaderboard.csv`` (one column per number: ``<split> <metric> mean`` / ``std``, ``<split> p vs
best``), ``leaderboard.md`` (``mean +- std`` cells) and ``leaderboard.html`` (self-contained: the table,
sortable by clicking a header, and per split the ROC curves of the top rows' first seed, inline SVG).
"""
from __future__ import annotations

import csv
import html
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from featstore.jsonio import read_json

from .compare import lower_is_better, significance
from .metrics import format_mean_std, mean_std
from .experiment import headline_keys
from .sweep_layout import DONE, ERROR, LEADERBOARD_CSV, RUNS, seed_folder, setting_label

REDO = "remove it and rerun the same `heads sweep` command to redo that run"
UNREADABLE, NOT_JSON = "cannot read {path} ({err}); " + REDO, "{path} is not valid JSON ({err.msg}); " + REDO
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _records(root: Path, row_id: str, seeds: Sequence[int]) -> Tuple[Dict[int, dict], Dict[int, str]]:
    done, failed = {}, {}
    for s in seeds:
        folder = seed_folder(root, row_id, s)
        if (folder / DONE).is_file():
            done[s] = read_json(folder / DONE, UNREADABLE, NOT_JSON)
        elif (folder / ERROR).is_file():
            failed[s] = read_json(folder / ERROR, UNREADABLE, NOT_JSON)["error"]
    return done, failed


def _stat(values: Dict[int, Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    return mean_std(values.values())


def _row_entry(root: Path, row, seeds: Sequence[int]) -> dict:
    from .runs import write_summary

    done, failed = _records(root, row.id, seeds)
    values: Dict[str, Dict[str, Dict[int, Optional[float]]]] = {}
    for s, rec in done.items():
        for split, flat in rec["metrics"].items():
            for k, v in flat.items():
                values.setdefault(split, {}).setdefault(k, {})[s] = v
    if done:
        write_summary(root / RUNS / row.id, {s: {**r["metrics"], "seed": s} for s, r in done.items()},
                      {s: {"dir": f"seed_{s}", "best_epoch": r["best_epoch"], "seconds": r["seconds"]}
                       for s, r in done.items()}, head=row.head)
    status = "failed" if not done else ("ok" if len(done) == len(seeds) else f"partial ({len(done)}/{len(seeds)} seeds)")
    first = done[min(done)] if done else {}
    return {"row_id": row.id, "features": "+".join(f for f in row.features if f), "head": row.head,
            "setting": row.setting, "label": row.label, "status": status, "seeds": sorted(done),
            "errors": failed, "seconds": float(np.mean([r["seconds"] for r in done.values()])) if done else None,
            "values": values, "monitor": first.get("monitor"), "val_split": first.get("val_split"),
            "roc": first.get("roc", {}), "roc_seed": min(done) if done else None}


def build_leaderboard(root, rows, seeds: Sequence[int]) -> dict:
    """``{"splits", "metrics", "primary", "rank_split", "rows": [entry...]}`` ranked (see module docstring)."""
    root = Path(root)
    entries = [_row_entry(root, r, seeds) for r in rows]
    ok = [e for e in entries if e["seeds"]]
    primary = next((e["monitor"] for e in ok), None)
    rank_split = next((e["val_split"] for e in ok), None)
    splits = list(dict.fromkeys(s for e in ok for s in e["values"]))
    metrics = headline_keys({k for e in ok for vals in e["values"].values() for k in vals})
    if primary and primary not in metrics:
        metrics.insert(0, primary)
    for e in entries:
        e["stats"] = {s: {m: _stat(e["values"].get(s, {}).get(m, {})) for m in metrics} for s in splits}
    sign = -1.0 if primary and lower_is_better(primary) else 1.0

    def key(e):
        mean = e["stats"].get(rank_split, {}).get(primary, (None,))[0] if primary else None
        return (0 if mean is not None else 1, -sign * mean if mean is not None else 0.0)

    entries.sort(key=key)
    for i, e in enumerate(entries, 1):
        e["rank"] = i if e["seeds"] else None
    best = entries[0] if entries and entries[0]["seeds"] else None
    for e in entries:
        e["p"] = {s: _p_vs(best, e, s, primary) for s in splits}
    return {"splits": splits, "metrics": metrics, "primary": primary, "rank_split": rank_split, "rows": entries}


def _p_vs(best: Optional[dict], e: dict, split: str, metric: Optional[str]) -> Optional[float]:
    if best is None or e is best or metric is None:
        return None
    a = {s: v for s, v in best["values"].get(split, {}).get(metric, {}).items() if v is not None}
    b = {s: v for s, v in e["values"].get(split, {}).get(metric, {}).items() if v is not None}
    if len(a) < 2 or len(b) < 2:
        return None
    p = significance(a, b)[2]
    return p if math.isfinite(p) else None


# ----------------------------------------------------------------------------------------------- files

def _cells(board: dict, e: dict, pm: bool) -> List[Any]:
    """One row's values in column order (``pm``: "mean +- std" text cells, else mean and std apart)."""
    out: List[Any] = [e["rank"] or "", e["features"], e["head"], setting_label(e["setting"]), e["status"],
                      ",".join(map(str, e["seeds"])), _f(e["seconds"], 2)]
    for s in board["splits"]:
        for m in board["metrics"]:
            mean, std, _ = e["stats"][s][m]
            out += [format_mean_std(mean, std)] if pm else [_f(mean), _f(std)]
    out += [("best" if e["rank"] == 1 else _f(e["p"].get(s), 3)) for s in board["splits"]]
    errors = "; ".join(f"seed {s}: {msg}" for s, msg in sorted(e["errors"].items()))
    return out + [errors] + ([] if pm else [e["row_id"]])


def _headers(board: dict, pm: bool) -> List[str]:
    h = ["rank", "features", "head", "setting", "status", "seeds", "seconds per run"]
    for s in board["splits"]:
        for m in board["metrics"]:
            h += [f"{s} {m}"] if pm else [f"{s} {m} mean", f"{s} {m} std"]
    h += [f"{s} p vs best ({board['primary']})" for s in board["splits"]]
    return h + ["errors"] + ([] if pm else ["row_id"])


def _f(x: Optional[float], digits: int = 4) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def write_leaderboard(root, board: dict, top: int = 5) -> List[Path]:
    """Write leaderboard.csv, .md and .html into ``root``; return their paths."""
    root = Path(root)
    with open(root / LEADERBOARD_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_headers(board, pm=False))
        w.writerows(_cells(board, e, pm=False) for e in board["rows"])
    (root / "leaderboard.md").write_text(markdown(board))
    (root / "leaderboard.html").write_text(html_page(board, top))
    return [root / LEADERBOARD_CSV, root / "leaderboard.md", root / "leaderboard.html"]


def _title(board: dict) -> str:
    return (f"ranked by {board['primary']} on {board['rank_split']} (mean +- std over seeds); p vs best: t-test of "
            f"{board['primary']} against rank 1 on each split")


def markdown(board: dict) -> str:
    head = _headers(board, pm=True)
    lines = ["# Sweep leaderboard", "", _title(board), "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for e in board["rows"]:
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in _cells(board, e, pm=True)) + " |")
    return "\n".join(lines) + "\n"


def leaderboard_lines(board: dict, top: int = 5) -> List[str]:
    """The top rows as printed lines: rank, label, primary metric per split, seconds per run."""
    out = [_title(board)]
    for e in board["rows"][:top] + [e for e in board["rows"][top:] if not e["seeds"]]:
        if not e["seeds"]:
            out.append(f"  -  {e['label']}: failed: {next(iter(e['errors'].values()), 'not run')}")
            continue
        cells = "  ".join(f"{s}={format_mean_std(*e['stats'][s][board['primary']][:2])}" for s in board["splits"])
        out.append(f"  {e['rank']:>2} {e['label']}: {cells}  ({_f(e['seconds'], 1)} s/run)")
    return out


# ------------------------------------------------------------------------------------------------ html

_JS = """
function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
b=t.tBodies[0],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
const v=r=>{const c=r.children[i];const x=c.dataset.v;return x===undefined||x===''?null:(isNaN(+x)?x:+x)};
[...b.rows].sort((p,q)=>{const a=v(p),c=v(q);if(a===null)return 1;if(c===null)return -1;
return (a<c?-1:a>c?1:0)*(asc?1:-1)}).forEach(r=>b.appendChild(r));}
"""


def _html_table(board: dict) -> str:
    head = _headers(board, pm=True)
    ths = "".join(f"<th onclick='sortBy(this)'>{html.escape(h)}</th>" for h in head)
    body = []
    for e in board["rows"]:
        sort_vals = [e["rank"] or "", e["features"], e["head"], setting_label(e["setting"]), e["status"],
                     len(e["seeds"]), _f(e["seconds"], 3)]
        sort_vals += [_f(e["stats"][s][m][0]) for s in board["splits"] for m in board["metrics"]]
        sort_vals += [_f(e["p"].get(s), 6) for s in board["splits"]] + [""]
        tds = "".join(f"<td data-v='{html.escape(str(v))}'>{html.escape(str(c))}</td>"
                      for c, v in zip(_cells(board, e, pm=True), sort_vals))
        body.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _roc_svg(board: dict, split: str, top: int) -> str:
    curves = [e for e in board["rows"] if e["seeds"] and e["roc"].get(split)][:top]
    if not curves:
        return ""
    size, pad = 320, 30
    def xy(x, y):
        return f"{pad + x * size:.1f},{pad + (1 - y) * size:.1f}"
    parts = [f"<rect x='{pad}' y='{pad}' width='{size}' height='{size}' fill='none' stroke='#999'/>",
             f"<line x1='{pad}' y1='{pad + size}' x2='{pad + size}' y2='{pad}' stroke='#ccc' stroke-dasharray='4'/>"]
    legend = []
    for i, e in enumerate(curves):
        c = COLOURS[i % len(COLOURS)]
        r = e["roc"][split]
        pts = " ".join(xy(x, y) for x, y in zip(r["fpr"], r["tpr"]))
        parts.append(f"<polyline fill='none' stroke='{c}' stroke-width='1.5' points='{pts}'/>")
        mean = e["stats"][split].get(board["primary"], (None,))[0]
        legend.append(f"<li style='color:{c}'>#{e['rank']} {html.escape(e['label'])} (seed {e['roc_seed']}, "
                      f"{board['primary']} mean {_f(mean)})</li>")
    svg = (f"<svg width='{size + 2 * pad}' height='{size + 2 * pad}' xmlns='http://www.w3.org/2000/svg'>"
           + "".join(parts) + f"<text x='{pad}' y='{size + 2 * pad - 5}' font-size='11'>false positive rate</text>"
           f"<text x='5' y='{pad - 8}' font-size='11'>true positive rate</text></svg>")
    return f"<div class='roc'><h3>ROC: {html.escape(split)}</h3>{svg}<ul>{''.join(legend)}</ul></div>"


def html_page(board: dict, top: int = 5) -> str:
    """A self-contained page: sortable table + ROC curves of the ``top`` rows per split (no external files)."""
    rocs = "".join(_roc_svg(board, s, top) for s in board["splits"])
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 5px}td{white-space:nowrap}th{cursor:pointer;background:#eee}"
             ".roc{display:inline-block;vertical-align:top;margin:1em}.roc ul{font-size:11px;max-width:380px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Sweep leaderboard</title>"
            f"<style>{style}</style><script>{_JS}</script></head><body><h1>Sweep leaderboard</h1>"
            f"<p>{html.escape(_title(board))}. Click a header to sort.</p>{_html_table(board)}"
            f"<h2>ROC curves of the top {top} rows</h2>{rocs or '<p>no binary task: no ROC curves</p>'}</body></html>\n")
