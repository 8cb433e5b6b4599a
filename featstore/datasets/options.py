"""What ``load_dataset`` passes to a format reader (``LoadOptions``) and what it gets back
(``FormatResult``). A format reader is ``read(path, opts, problems) -> FormatResult``; it records
unreadable rows in ``problems`` and skips them; the shared checks (``validate.py``) run afterwards."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .manifest import Sample, TaskInfo


@dataclass(frozen=True)
class LoadOptions:
    image_root: Optional[Path] = None  # images resolve against this instead of the data file's folder
    id_col: Optional[str] = None
    image_col: Optional[str] = None
    text_col: Optional[str] = None
    label_cols: Optional[Sequence[str]] = None
    split: Optional[str] = None  # a folder: load only this split; a file: the split name to give rows
    check_images: bool = True
    allow_empty_text: bool = False


@dataclass
class FormatResult:
    samples: List[Sample]
    tasks: Dict[str, TaskInfo] = field(default_factory=dict)
    image_root: str = ""  # the folder image paths were resolved against (for messages)
