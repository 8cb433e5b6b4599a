"""Collect every problem found while reading a dataset and report them together in one line.

``Problems.add(row, message, file=...)`` records one; ``raise_if_any()`` raises a single
``FeatstoreError`` such as::

    dataset data/train.jsonl: 3 problems: row 4: duplicate id '42' (first at row 2); row 7: image
    img/00007.png not found; row 9: empty text (fix the rows or pass --allow-empty-text)

The listing stops after ``MAX_LISTED`` problems and says how many more there are.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from ..errors import FeatstoreError

MAX_LISTED = 10


class Problems:
    def __init__(self, source: str, multi_file: bool = False):
        self.source = source
        self.multi_file = multi_file  # prefix rows with their file name
        self.items: List[Tuple[Optional[str], Optional[int], str]] = []
        self.hints: List[str] = []

    def add(self, row: Optional[int], message: str, file: Optional[str] = None, hint: Optional[str] = None):
        """Record a problem at 1-based ``row`` of ``file`` (``row=None`` for a whole-file problem)."""
        self.items.append((file, row, message))
        if hint and hint not in self.hints:
            self.hints.append(hint)

    def __len__(self) -> int:
        return len(self.items)

    def where(self, file: Optional[str], row: Optional[int]) -> str:
        """How a location is written: ``row 4``, or ``train.jsonl row 4`` when several files are read."""
        return self._where(file, row)

    def _where(self, file: Optional[str], row: Optional[int]) -> str:
        parts = []
        if file and self.multi_file:
            parts.append(file)
        if row is not None:
            parts.append(f"row {row}")
        return " ".join(parts)

    def message(self) -> str:
        n = len(self.items)
        listed = []
        for file, row, msg in self.items[:MAX_LISTED]:
            where = self._where(file, row)
            listed.append(f"{where}: {msg}" if where else msg)
        text = "; ".join(listed)
        if n > MAX_LISTED:
            text += f"; ... and {n - MAX_LISTED} more"
        base = "fix the rows" if any(row is not None for _, row, _ in self.items) else "fix the file"
        fix = " or ".join([base] + self.hints)
        return f"dataset {self.source}: {n} problem{'s' if n != 1 else ''}: {text} ({fix})"

    def raise_if_any(self) -> None:
        if self.items:
            raise FeatstoreError(self.message())
