"""One resolver for ``--device`` values, shared by extraction and training."""
from __future__ import annotations

import re
from typing import Optional

from .errors import FeatstoreError

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def resolve_device(text: str, local_rank: Optional[int] = None) -> str:
    """``auto`` -> ``cuda`` (``cuda:<local_rank>`` when a rank is given) when a GPU is visible, else ``cpu``;
    ``cpu``, ``cuda``, ``cuda:N`` as given. Anything else, or CUDA without a visible GPU, is a one-line FeatstoreError."""
    import torch

    text = str(text).strip()
    if text == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        return "cuda" if local_rank is None else f"cuda:{local_rank}"
    if not (text == "cpu" or re.fullmatch(r"cuda(:\d+)?", text)):
        raise FeatstoreError(f"--device {text!r} is not a device this toolkit runs on; pass {DEVICE_HELP}")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise FeatstoreError(f"--device {text} asked for CUDA but no GPU is visible; use --device cpu")
    return text
