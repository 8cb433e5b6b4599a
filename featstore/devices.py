"""The one ``--device`` validator (``check_device``), and the resolver extraction and ``heads`` use.

``check_device`` is what every device option goes through: ``heads.sweep.sweep_devices`` (a comma list),
``heads.train.resolve_device`` (a ``TrainConfig.device`` against the data's device) and ``resolve_device``
below; each passes its own one-line messages.
"""
from __future__ import annotations

import re
from typing import Optional

from .errors import FeatstoreError

DEVICE_HELP = "auto, cpu, cuda or cuda:N"
DEVICE_PATTERN = re.compile(r"cpu|cuda(:(0|[1-9][0-9]*))?")  # what torch.device parses of cpu / cuda[:N]
NO_GPU = "--device {device} asked for CUDA but no GPU is visible; use --device cpu"


def check_device(text: str, not_a_device: str, no_gpu: Optional[str] = None) -> str:
    """``text`` when it is ``cpu``, ``cuda`` or ``cuda:N``, else FeatstoreError(``not_a_device``). With ``no_gpu``,
    a CUDA device while torch sees no GPU is FeatstoreError(``no_gpu``). Both are templates with ``{device}``."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise FeatstoreError(not_a_device.format(device=text))
    if no_gpu is not None and text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise FeatstoreError(no_gpu.format(device=text))
    return text


def resolve_device(text: str, local_rank: Optional[int] = None) -> str:
    """``auto`` -> ``cuda`` (``cuda:<local_rank>`` when a rank is given) when a GPU is visible, else ``cpu``;
    ``cpu``, ``cuda``, ``cuda:N`` as given. Anything else, or CUDA without a visible GPU, is a one-line FeatstoreError."""
    import torch

    text = str(text).strip()
    if text == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        return "cuda" if local_rank is None else f"cuda:{local_rank}"
    return check_device(text, "--device {device!r} is not a device this toolkit runs on; pass " + DEVICE_HELP, NO_GPU)
