"""Reading the two public Visual Genome bottom-up-attention checkpoints into ``vg_model.VGDetector``.

Two layouts, told apart by their attribute head's module names (``detect_layout``; ``--set layout=`` forces
one):

* ``detectron2``: py-bottom-up-attention's ``faster_rcnn_from_caffe_attr.pkl``, a pickled dict of float32
  numpy arrays (under ``"model"``), read with the restricted unpickler. Box predictor
  ``cls_score`` / ``bbox_pred`` / ``cls_embedding`` / ``fc_attr`` / ``attr_score``; may also store
  ``pixel_mean`` / ``pixel_std`` and the anchors, which must agree with the extractor's.
* ``bua-caffe``: bottom-up-attention.pytorch's (MILVLG) ``bua-caffe-frcn-r101_with_attributes.pth``, a torch
  state dict (``torch.load(weights_only=True)``, bare or under ``"model"``). Box predictor ``cls_score`` /
  ``bbox_pred`` / ``cls_embed`` / ``attr_linear1`` / ``attr_linear2``; its res4 and res5 norms are
  ``BatchNorm2d`` (``FREEZE_AT: 3``), whose ``num_batches_tracked`` counters are ignored. Its anchors are the
  persistent ``proposal_generator.anchor_generator.cell_anchors.0`` buffer, which detectron2 v0.2.1 loads over
  the config's ``SIZES: [[4, 8, 16, 32]]`` ones, so the file's anchors are the ones used (caffe
  ``generate_anchors`` when the file has none).

The model's state-dict names are the checkpoint's own names in both layouts (``VGDetector`` builds the
layout's modules), so the key map is the identity plus the ignore rules above; ``LoadReport`` lists the
keys used / ignored (with why) / missing, and where the anchors came from.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import FeatstoreError
from .vg_model import VGDetector

CHECKPOINT_HINT = ("pass py-bottom-up-attention's faster_rcnn_from_caffe_attr.pkl (detectron2 layout; "
                   "http://nlp.cs.unc.edu/models/faster_rcnn_from_caffe_attr.pkl) or bottom-up-attention.pytorch's "
                   "bua-caffe-frcn-r101_with_attributes.pth, fetched on a connected machine")
ANCHORS_KEY = "proposal_generator.anchor_generator.cell_anchors.0"
MARKERS = {"detectron2": "roi_heads.box_predictor.fc_attr.weight",
           "bua-caffe": "roi_heads.box_predictor.attr_linear1.weight"}


@dataclass
class LoadReport:
    used: List[str] = field(default_factory=list)  # checkpoint keys copied into the model
    ignored: List[Tuple[str, str]] = field(default_factory=list)  # (key, why) with no place in the model
    missing: List[str] = field(default_factory=list)  # model keys the checkpoint lacks (an error when loading)
    layout: str = "detectron2"
    anchors: str = "generated"  # "checkpoint" when the file's cell anchors are used

    def summary(self) -> Dict[str, object]:
        return {"used": len(self.used), "ignored": [f"{k} ({why})" for k, why in self.ignored],
                "missing": list(self.missing), "layout": self.layout, "anchors": self.anchors}


def read_checkpoint(path: str) -> Dict[str, np.ndarray]:
    """The name -> array dict of either layout's file (a torch zip / ``.pth`` by ``torch.load(weights_only)``,
    anything else by the restricted unpickler), unwrapped from ``"model"`` and a ``module.`` prefix."""
    if not os.path.isfile(path):
        raise FeatstoreError(f"weights file {path!r} does not exist; {CHECKPOINT_HINT}")
    if zipfile.is_zipfile(path) or path.endswith((".pth", ".pt")):
        from .weights import load_state_dict

        obj = {k: v.numpy() for k, v in load_state_dict(path).items()}
    else:
        from ..interop.safe_pickle import safe_load

        with open(path, "rb") as f:
            obj = safe_load(f, source=path)
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise FeatstoreError(f"weights file {path!r} does not hold a dict of arrays by name; {CHECKPOINT_HINT}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise FeatstoreError(f"weights file {path!r}: entry {bad[0]!r} is not a numpy array; {CHECKPOINT_HINT}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def detect_layout(ckpt: Dict[str, np.ndarray], requested: str, source: str) -> str:
    """The checkpoint's layout from its attribute-head names; ``requested`` (not ``auto``) must agree."""
    found = [name for name, key in MARKERS.items() if key in ckpt]
    if requested != "auto":
        if found and found[0] != requested:
            raise FeatstoreError(f"weights {source!r} are in the {found[0]} layout (they have {MARKERS[found[0]]}), "
                                 f"not layout={requested}; drop --set layout or set layout={found[0]}")
        return requested
    if len(found) != 1:
        raise FeatstoreError(f"weights {source!r} are in no known layout (they have neither {MARKERS['detectron2']} "
                             f"nor {MARKERS['bua-caffe']}); {CHECKPOINT_HINT}, or --set layout=detectron2|bua-caffe "
                             "for a file with those modules under other names")
    return found[0]


def map_checkpoint(ckpt: Dict[str, np.ndarray], model: VGDetector, pixel_mean: Sequence[float],
                   source: str) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """Checkpoint arrays -> the model's state dict (same names), checking shapes and constants."""
    own = model.state_dict()
    report = LoadReport(layout=model.arch.layout)
    state: Dict[str, torch.Tensor] = {}
    for key in sorted(ckpt):
        arr = ckpt[key]
        if key in own:
            if tuple(arr.shape) != tuple(own[key].shape):
                raise FeatstoreError(f"weights {source!r}: {key} has shape {tuple(arr.shape)}, the model expects "
                                     f"{tuple(own[key].shape)}; set the architecture options (width, blocks, "
                                     "rpn_channels, num_classes, num_attrs) to the checkpoint's")
            state[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            report.used.append(key)
        elif key == ANCHORS_KEY and model.arch.layout == "bua-caffe":
            state[key] = _stored_anchors(arr, model, source)
            report.used.append(key)
            report.anchors = "checkpoint"
        else:
            report.ignored.append((key, _check_constant(key, arr, model, pixel_mean, source)))
    report.missing = [k for k in own if k not in state]
    if not report.used:
        raise FeatstoreError(f"weights {source!r} have none of the model's keys (e.g. backbone.stem.conv1.weight); "
                             f"{CHECKPOINT_HINT}")
    if report.missing:
        raise FeatstoreError(f"weights {source!r} lack {len(report.missing)} of the model's keys (e.g. "
                             f"{', '.join(report.missing[:3])}); {CHECKPOINT_HINT}")
    return state, report


def _stored_anchors(arr: np.ndarray, model: VGDetector, source: str) -> torch.Tensor:
    if arr.shape != tuple(model.cell_anchors.shape):
        raise FeatstoreError(f"weights {source!r}: {ANCHORS_KEY} has shape {tuple(arr.shape)}, the RPN has "
                             f"{model.arch.num_anchors} anchors of 4 coordinates; pass the checkpoint's own anchors")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _check_constant(key: str, arr: np.ndarray, model: VGDetector, pixel_mean: Sequence[float], source: str) -> str:
    """Why a checkpoint key is not loaded; a stored constant that disagrees with the extractor is an error."""
    if key == "pixel_mean":
        if not np.allclose(arr.reshape(-1), np.asarray(pixel_mean, dtype=np.float64), atol=1e-3):
            raise FeatstoreError(f"weights {source!r} were trained with pixel_mean {arr.reshape(-1).tolist()} "
                                 f"(BGR), the extractor uses {list(pixel_mean)}; pass --set pixel_mean=...")
        return "equals pixel_mean"
    if key == "pixel_std":
        if not np.allclose(arr.reshape(-1), 1.0):
            raise FeatstoreError(f"weights {source!r} expect pixel_std {arr.reshape(-1).tolist()}, the caffe model "
                                 "divides by nothing; pass the caffe-converted attribute checkpoint")
        return "ones, as the extractor"
    if key.startswith("proposal_generator.anchor_generator.cell_anchors"):
        if arr.shape != tuple(model.cell_anchors.shape) or not np.allclose(arr, model.cell_anchors.cpu().numpy(),
                                                                           atol=1e-3):
            raise FeatstoreError(f"weights {source!r}: {key} differs from the anchors the extractor generates "
                                 f"(sizes {list(model.arch.anchor_sizes)}, ratios {list(model.arch.anchor_ratios)})")
        return "equals the generated anchors"
    if key.endswith(".num_batches_tracked"):
        return "BatchNorm step counter, unused at inference"
    return "no counterpart in the model"


def load_checkpoint(model: VGDetector, ckpt: Dict[str, np.ndarray], pixel_mean: Sequence[float],
                    source: str) -> LoadReport:
    """Load every weight of ``ckpt`` (``read_checkpoint``) into ``model``; raises one-line errors (see above)."""
    state, report = map_checkpoint(ckpt, model, pixel_mean, source)
    anchors: Optional[torch.Tensor] = state.pop(ANCHORS_KEY, None)
    if anchors is not None:
        model.cell_anchors.copy_(anchors)
    model.load_state_dict(state, strict=False)  # every model key is in state (missing raised above)
    return report

