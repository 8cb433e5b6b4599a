"""What ``load_dataset`` passes to a format reader (``LoadOptions``) and what it gets back
(``FormatResult``). A format reader is ``read(path, opts, problems) -> FormatResult``; it records
unreadable rows in ``problems`` and skips them; the shared checks (``validate.py``) run afterwards."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..config_types import cli_field
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
    notes: List[str] = field(default_factory=list)  # what the reader left out as the dataset's own script does


@dataclass(frozen=True)
class ReadOptions:
    """How a command-line ``--dataset`` is read: the ``load_dataset`` keywords beyond the format, each an option
    of every command that takes ``--dataset`` (``cli.common.dataset_read_options``). The CLI never checks image
    files up front (a missing image fails its own row when extracted)."""

    dataset_split: Optional[str] = cli_field(None, "A dataset folder: read only this split's file; one data file: "
                                                   "the split name its rows get (e.g. train).")
    image_root: Optional[str] = cli_field(None, "Folder the dataset's image paths resolve against (default: the data "
                                                "file's folder; MM-IMDB: dataset/).")
    id_col: Optional[str] = cli_field(None, "Id column of a CSV / JSONL dataset (generic, Memotion).")
    image_col: Optional[str] = cli_field(None, "Image column of a CSV / JSONL dataset (generic, Memotion).")
    text_col: Optional[str] = cli_field(None, "Text column of a CSV / JSONL dataset (generic, Memotion).")
    label_cols: Optional[str] = cli_field(None, "Comma-separated label columns of a generic CSV / JSONL dataset.")
    allow_empty_text: bool = cli_field(False, "Accept dataset rows whose text is empty.", flag="--allow-empty-text")

    def load_kwargs(self) -> Dict[str, object]:
        """The ``load_dataset`` keywords these options give."""
        labels = [c.strip() for c in self.label_cols.split(",") if c.strip()] if self.label_cols else None
        return {"split": self.dataset_split, "image_root": self.image_root, "id_col": self.id_col,
                "image_col": self.image_col, "text_col": self.text_col, "label_cols": labels,
                "allow_empty_text": self.allow_empty_text, "check_images": False}
