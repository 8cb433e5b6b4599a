"""File builders for tests/test_datasets.py and tests/test_interop_formats.py (real files, tiny sizes)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable, List, Sequence

import numpy as np
from PIL import Image


def make_image(path: Path, color=(255, 0, 0), size=(8, 6)) -> Path:
    """A real tiny image; the format follows the suffix (PNG, JPEG, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_jsonl(path: Path, rows: Iterable, raw_lines: Sequence[str] = ()) -> Path:
    """One JSON object per line; ``raw_lines`` are appended verbatim (for broken lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, header: List[str], rows: Iterable[Sequence]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def make_record(rng: np.random.Generator, n: int, dim: int = 2048, classes: int = 5) -> dict:
    """A Faster R-CNN style region record with ``n`` boxes."""
    x1 = rng.uniform(0, 50, n).astype(np.float32)
    y1 = rng.uniform(0, 40, n).astype(np.float32)
    return {
        "features": rng.standard_normal((n, dim)).astype(np.float32),
        "bbox": np.stack([x1, y1, x1 + 10, y1 + 5], axis=1).astype(np.float32),
        "num_boxes": n,
        "image_width": 64,
        "image_height": 48,
        "objects": rng.integers(0, classes, n).astype(np.int64),
        "cls_prob": rng.dirichlet(np.ones(classes), n).astype(np.float32),
    }


def assert_records_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert isinstance(b[k], np.ndarray) and a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k])
        else:
            assert a[k] == b[k] and type(a[k]) is type(b[k]), k
