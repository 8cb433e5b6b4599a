"""What a head is given (``InputSpec``) and what it must predict (``TaskSpec``).

Both are plain dataclasses serialised into a run folder's ``config.json``, so a checkpoint can always
say what it expects.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional


@dataclass
class InputSpec:
    """Shapes of the cached features a head receives in a batch.

    Batch keys (all optional, by what the feature sets hold):
      img_regions [B, R, img_dim] float, img_mask [B, R] bool (True = real region),
      img_boxes [B, R, 5] float (x1/W, y1/H, x2/W, y2/H, box area / image area),
      img_pooled [B, img_pooled_width] float (``img_pooled_dim``, or ``img_dim`` when that is 0),
      txt_tokens [B, T, txt_dim] float, txt_mask [B, T] bool, txt_pooled [B, txt_pooled_width] float,
      txt_ids [B, T] int64 (the text set's ``input_ids``: the tokenizer's ids, 0 at padding; aligned with
      ``txt_mask``; what a head with its own word embeddings reads, e.g. visualbert).
    """

    img_dim: int
    txt_dim: int
    img_regions: int = 0  # max regions R; 0 = the image set has only pooled vectors
    txt_tokens: int = 0  # max tokens T; 0 = the text set has only pooled vectors
    img_pooled: bool = True
    txt_pooled: bool = True
    img_boxes: bool = False
    txt_ids: bool = False
    # the pooled vectors' widths where they differ from the regions' / tokens' (a CLIP set's projected
    # ``pooled`` [768] beside 1024-wide patch regions); 0: the same as img_dim / txt_dim (runs saved before)
    img_pooled_dim: int = 0
    txt_pooled_dim: int = 0

    @property
    def img_pooled_width(self) -> int:
        """Width of what ``pooled_image`` gives: ``img_pooled``'s, or the regions' mean's."""
        return self.img_pooled_dim if self.img_pooled and self.img_pooled_dim else self.img_dim

    @property
    def txt_pooled_width(self) -> int:
        """Width of what ``pooled_text`` gives: ``txt_pooled``'s, or the tokens' mean's."""
        return self.txt_pooled_dim if self.txt_pooled and self.txt_pooled_dim else self.txt_dim

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Task:
    """One prediction target.

    kind: "binary" (2 logits, softmax; the positive-class probability is softmax[:, 1]),
          "multiclass" (num_classes logits, softmax) or "multilabel" (num_classes logits, sigmoid).
    """

    name: str
    kind: str
    num_classes: int
    class_names: List[str] = field(default_factory=list)
    weight: float = 1.0

    @property
    def num_outputs(self) -> int:
        return 2 if self.kind == "binary" else self.num_classes


@dataclass
class TaskSpec:
    tasks: List[Task]
    shared_outputs: bool = False  # one shared hidden layer before the per-task linear layers
    cascade: Optional[List[str]] = None  # e.g. ["B", "C"]: task B's outputs are fed into task C's layer
    # fan-out cascade: task -> the tasks whose probabilities are concatenated to its layer's input, e.g.
    # {"C_humour": ["B"], "C_sarcasm": ["B"], ...} (Memotion 2.0's emotions feeding every intensity task)
    feeds: Optional[Dict[str, List[str]]] = None
    # label key -> its per-item tasks, for a key of name -> level dicts (Memotion's "C": C_humour, C_sarcasm,
    # ...): scored together as well (``heads.metrics``: ``C/macro_f1`` = the mean of the tasks', Memotion's
    # Task C score); None in runs saved before groups
    groups: Optional[Dict[str, List[str]]] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        return cls(tasks=[Task(**t) for t in d["tasks"]], shared_outputs=d.get("shared_outputs", False),
                   cascade=d.get("cascade"), feeds=d.get("feeds"), groups=d.get("groups"))
