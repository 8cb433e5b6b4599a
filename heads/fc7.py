"""Detectron's FPN fc7 layer, as MMF's ``finetune_faster_rcnn_fpn_fc7`` image encoder
(mmf/modules/encoders.py ``FinetuneFasterRcnnFpnFc7``): ``lc = nn.Linear(in_dim 2048, out_dim)`` whose weight
and bias MMF copies from Detectron's ``fc7_w.pkl`` / ``fc7_b.pkl`` (``out_dim`` = the bias length), then ReLU.
The Hateful Memes paper's Image-Region and MMBT-Region baselines feed detectron.lmdb's fc6 region features
through it; MMF fine-tunes it with the rest of the model (a plain module: every optimiser group sees it).

* ``read_fc7(folder) -> (weight [out, in], bias [out])`` float32 tensors from a folder holding the two pickles
  (the unpacked ``vmb_weights.tar.gz`` of MMF's zoo ``detectron.vmb_weights``; one folder down is searched too).
  The pickles (Python 2 numpy arrays, hence ``encoding="latin1"``) are read by ``_ArrayUnpickler``, which
  resolves only numpy's array reconstruction names (``ALLOWED``); anything else is a one-line FeatstoreError.
* ``Fc7``: the ``lc`` Linear + ReLU, shared by ``image-region`` and ``mmbt-region``.
* ``load_fc7_init(head, folder, report)``: the heads' ``load_init_files`` (called by ``heads.train._build_head``
  at training start, never when a run is reopened): copies the pickles into ``head.fc7.lc`` and records them in
  the LoadReport as ``used: fc7 (Detectron's vmb_weights)``; with no folder it prints the note ``FC7_NOTE``.
  (No import of ``heads.checkpoints`` here: that would close an import cycle through ``heads.models``.)
"""
from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from featstore.errors import FeatstoreError

FILES = ("fc7_w.pkl", "fc7_b.pkl")
URL = "https://dl.fbaipublicfiles.com/mmf/data/models/detectron/vmb_weights.tar.gz"  # mmf://models/detectron/...
HOW_TO_GET = (f"download vmb_weights.tar.gz (MMF's zoo detectron.vmb_weights, {URL}), unpack it "
              "(tar xzf vmb_weights.tar.gz -C DIR) and pass --set fc7_weights=DIR")
GROUP = "fc7 (Detectron's vmb_weights)"
FC7_NOTE = ("note: fc7 starts from random weights; MMF starts it from Detectron's fc7 (fc7_w.pkl / fc7_b.pkl): "
            + HOW_TO_GET)


def _allowed():
    """(module, name) -> object: numpy's array reconstruction (``numpy.core`` in old pickles, ``numpy._core``
    in numpy 2's), and ``_codecs.encode``, which Python 3's protocol-2 pickles use to write bytes."""
    import _codecs

    core = getattr(np, "_core", None) or np.core
    found = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _codecs.encode}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found[(mod, "_reconstruct")] = core.multiarray._reconstruct
        found[(mod, "scalar")] = core.multiarray.scalar
    return found


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and nothing else (``_allowed``)."""

    def find_class(self, module, name):
        obj = _allowed().get((module, name))
        if obj is None:
            raise FeatstoreError(f"fc7 pickle {self.source!r} refers to {module}.{name}; only numpy arrays are read "
                                 f"(Detectron's fc7_w.pkl / fc7_b.pkl from {URL})")
        return obj


def _read_array(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        unpickler = _ArrayUnpickler(f, encoding="latin1")
        unpickler.source = str(path)
        try:
            arr = unpickler.load()
        except FeatstoreError:
            raise
        except Exception as e:  # a damaged file: one line
            raise FeatstoreError(f"fc7 pickle {str(path)!r} cannot be read ({type(e).__name__}: {e}); "
                                 f"{HOW_TO_GET}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
        raise FeatstoreError(f"fc7 pickle {str(path)!r} holds {type(arr).__name__}, not a float numpy array")
    return arr


def fc7_folder(folder) -> Path:
    """The folder holding both ``FILES``: ``folder`` itself or one of its sub-folders."""
    p = Path(folder).expanduser()
    holds = lambda c: all((c / f).is_file() for f in FILES)  # noqa: E731
    if holds(p):
        return p  # the sub-folders are listed only when the folder itself lacks the files
    for c in sorted(q for q in p.iterdir() if q.is_dir()) if p.is_dir() else []:
        if holds(c):
            return c
    raise FeatstoreError(f"fc7_weights={str(folder)!r} holds no {' + '.join(FILES)} (nor one folder down); "
                         + HOW_TO_GET)


def read_fc7(folder) -> Tuple[Tensor, Tensor]:
    """Detectron's fc7 -> (weight ``[out, in]``, bias ``[out]``) float32, shapes checked."""
    where = fc7_folder(folder)
    w, b = (_read_array(where / f) for f in FILES)
    if w.ndim != 2 or b.ndim != 1 or w.shape[0] != b.shape[0]:
        raise FeatstoreError(f"fc7 in {str(where)!r}: weight {tuple(w.shape)} / bias {tuple(b.shape)}; expected "
                             "weight [out, in] and bias [out] (Detectron's: [2048, 2048] and [2048])")
    return torch.from_numpy(np.ascontiguousarray(w, np.float32)), torch.from_numpy(np.ascontiguousarray(b, np.float32))


class Fc7(nn.Module):
    """``relu(lc(x))``: ``[..., in_dim] -> [..., out_dim]`` (MMF's ``FinetuneFasterRcnnFpnFc7.forward``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lc = nn.Linear(in_dim, out_dim)  # PyTorch's default init until load_fc7_init copies Detectron's

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.lc(x.to(self.lc.weight.dtype)))


def filled_by_checkpoint(report) -> bool:
    """Whether the init checkpoint behind ``report`` filled ``fc7.lc`` (an MMF Image-Region / MMBT-Region
    model.pth: ``heads.mmf_checkpoint``)."""
    return bool(report.path) and "fc7.lc.weight" not in report.missing_keys


def fc7_to_copy(head: nn.Module, folder: str, report) -> Optional[Tuple[Tensor, Tensor]]:
    """Detectron's fc7 ``(weight, bias)`` in ``folder`` for ``head.fc7.lc``, read and checked; None with no
    ``folder`` or when the init checkpoint behind ``report`` filled fc7 (``filled_by_checkpoint``), where a
    ``folder`` is refused in one line (the pickles would overwrite the fine-tuned fc7)."""
    if filled_by_checkpoint(report):
        if folder:
            raise FeatstoreError(f"fc7_weights={folder!r} would replace the fine-tuned fc7 that the init checkpoint "
                                 f"{report.path!r} holds (MMF's, trained with its classifier); drop --set fc7_weights")
        return None
    if not folder:
        return None
    w, b = read_fc7(folder)
    lc = head.fc7.lc
    if tuple(w.shape) != tuple(lc.weight.shape):
        raise FeatstoreError(f"fc7 weight in {folder!r} is {tuple(w.shape)} but the head's fc7.lc is "
                             f"{tuple(lc.weight.shape)} [out, in]: set fc7_dim={w.shape[0]} or feed "
                             f"{w.shape[1]}-d regions")
    return w, b


def load_fc7_init(head: nn.Module, folder: str, report):
    """Copy Detectron's fc7 from ``folder`` into ``head.fc7.lc`` (``fc7_to_copy``) and record it in ``report`` (a
    LoadReport: the init checkpoint's, or an empty one, which then takes the folder as its path and the head's
    other keys as missing) -> ``report``; with no ``folder`` and no fc7 from the checkpoint, print ``FC7_NOTE``
    (noted in ``report`` too)."""
    found = fc7_to_copy(head, folder, report)
    if found is None:
        if not filled_by_checkpoint(report):
            print(FC7_NOTE, file=sys.stderr)
            report.note(FC7_NOTE.removeprefix("note: "))
        return report
    lc = head.fc7.lc
    with torch.no_grad():
        lc.weight.copy_(found[0])
        lc.bias.copy_(found[1])
    keys = ["fc7.lc.weight", "fc7.lc.bias"]
    if not report.path:
        report.path = str(fc7_folder(folder))
        report.missing_keys = list(head.state_dict())
    report.missing_keys = [k for k in report.missing_keys if k not in keys]
    for k in keys:
        report.add("used", GROUP, k)
    return report


def check_region_count(head_name: str, inputs, num_regions: int) -> None:
    """Refuse (one line) an image set with more regions per image than ``num_regions``: MMF reads at most
    max_features 100 per image and zero-pads fewer (mmf/configs/datasets/hateful_memes/defaults.yaml,
    feature_readers.py ``PaddedFasterRCNNFeatureReader``), so fewer are padded here too (``padded_regions``)."""
    if inputs.img_regions > num_regions:
        raise FeatstoreError(f"head {head_name!r} reads num_regions={num_regions} regions per image (MMF's "
                             f"max_features 100, zero-padded) but the image set has {inputs.img_regions}; pass "
                             f"--max-regions {num_regions} to keep the first {num_regions} as MMF's reader does, or "
                             f"--set num_regions={inputs.img_regions}")


def check_fc7_options(c) -> None:
    """One-line refusals of ``num_regions`` / ``fc7_dim`` / ``fc7_weights``."""
    for name in ("num_regions", "fc7_dim"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise FeatstoreError(f"{name}={v!r} must be a positive integer; e.g. --set {name}=100")
    if not isinstance(c.fc7_weights, str):
        raise FeatstoreError(f"fc7_weights={c.fc7_weights!r} must be a folder path; e.g. --set fc7_weights=DIR")


def padded_regions(batch, num_regions: int) -> Tensor:
    """``img_regions [B, R, D]`` (R <= num_regions, the batch may be trimmed) with its masked positions zeroed
    and zeros appended -> ``[B, num_regions, D]``: MMF's reader's zero-padded ``image_feature_0``."""
    from .models.base import image_mask

    x = batch["img_regions"]
    x = torch.where(image_mask(batch).unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    if x.shape[1] > num_regions:
        raise FeatstoreError(f"batch has {x.shape[1]} regions per image, more than num_regions={num_regions}")
    return torch.nn.functional.pad(x, (0, 0, 0, num_regions - x.shape[1]))

