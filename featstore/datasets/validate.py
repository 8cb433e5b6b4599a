"""Checks shared by every format, run on the samples a format produced (all problems are collected):

* duplicate ids: the same id twice in one split, or in two splits with a different image, text or
  label (an unlabelled test row may repeat a labelled one);
* image files: missing files (unless ``check_images=False``) and one image key naming two files;
* empty text (unless ``allow_empty_text=True``).
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

from .manifest import Sample
from .problems import Problems


def _conflict(a: Sample, b: Sample) -> bool:
    """Two rows with one id must show the same image and text; labels may be absent on one side (a test
    split) but must agree where both have them."""
    shared = set(a.labels) & set(b.labels)
    return (a.image_key, a.text) != (b.image_key, b.text) or any(a.labels[t] != b.labels[t] for t in shared)


def check_samples(samples: List[Sample], problems: Problems, *, check_images: bool, allow_empty_text: bool,
                  image_root: str) -> None:
    """Record every problem of ``samples`` in ``problems`` (``image_root`` shortens paths in messages)."""
    first: Dict[Tuple[str, object], Sample] = {}
    by_id: Dict[str, Sample] = {}
    key_path: Dict[str, str] = {}
    exists: Dict[str, bool] = {}
    for s in samples:
        prev = first.get((s.id, s.split))
        if prev is not None:
            problems.add(s.row, f"duplicate id {s.id!r} (first at {problems.where(prev.file, prev.row)})", s.file)
        else:
            first[(s.id, s.split)] = s
            other = by_id.setdefault(s.id, s)
            if other is not s and _conflict(other, s):
                problems.add(s.row, f"id {s.id!r} is also at {problems.where(other.file, other.row)} (split {other.split}) with a "
                                    f"different image, text or labels", s.file)
        if s.image_path is not None:
            shown = os.path.relpath(s.image_path, image_root) if image_root else s.image_path
            if check_images:
                if s.image_path not in exists:
                    exists[s.image_path] = os.path.isfile(s.image_path)
                if not exists[s.image_path]:
                    problems.add(s.row, f"image {shown} not found", s.file, hint="load with check_images=False")
            known = key_path.setdefault(s.image_key, s.image_path)
            if known != s.image_path:
                problems.add(s.row, f"image key {s.image_key!r} of {shown} is also the key of {known} "
                                    f"(image file stems must be unique)", s.file)
        if not s.text.strip() and not allow_empty_text:
            problems.add(s.row, "empty text", s.file, hint="pass --allow-empty-text")
