"""A ``heads sweep`` folder's names and labels: what ``heads.sweep`` writes and ``heads.leaderboard`` /
``heads.compare`` read (the folder layout is in ``heads.sweep``'s docstring). Imports none of them, so data
flows one way: sweep -> leaderboard -> compare, each reading the layout from here."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from featstore.errors import FeatstoreError

RUNS, DONE, ERROR, ROW, SPEC = "runs", "done.json", "error.json", "row.json", "sweep.json"
LEADERBOARD_CSV = "leaderboard.csv"


def seed_folder(root: Path, row_id: str, seed: int) -> Path:
    """``root/runs/<row_id>/seed_<seed>``: one run of a row."""
    return Path(root) / RUNS / row_id / f"seed_{seed}"


def features_label(features: Tuple[Optional[str], Optional[str]]) -> str:
    """``("img@v1", "txt@v2")`` -> ``img+txt``; ``-`` for none."""
    return "+".join(f.split("@")[0] for f in features if f) or "-"


def setting_label(setting: Dict[str, Any]) -> str:
    """``{"lr": 0.01, "loss": "ce"}`` -> ``lr=0.01 loss=ce``; ``default`` for none."""
    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in setting.items()) or "default"


def read_leaderboard_order(root) -> List[Tuple[str, str]]:
    """(row_id, label) of the rows in ``leaderboard.csv``, in its order."""
    path = Path(root) / LEADERBOARD_CSV
    if not path.is_file():
        raise FeatstoreError(f"{path} does not exist; run `heads sweep` into {root} first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [(r["row_id"], f"{features_label(r['features'].split('+'))} {r['head']} {r['setting']}") for r in rows]


def sweep_row_groups(root) -> List[Tuple[Path, str]]:
    """(row folder, row label) of every row with a finished run, in leaderboard order (``heads compare``)."""
    root = Path(root)
    out = []
    for row_id, label in read_leaderboard_order(root):
        folder = root / RUNS / row_id
        if any((p / DONE).is_file() for p in folder.glob("seed_*")):
            out.append((folder, label))
    return out
