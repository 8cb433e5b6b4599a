"""The bottom-up-attention Faster R-CNN (Anderson et al. 2018): ResNet-101 C4 with an attribute head.

The graph is the one the caffe-converted Visual Genome weights of py-bottom-up-attention
(``faster_rcnn_from_caffe_attr.pkl``, detectron2 layout, config ``faster_rcnn_R_101_C4_attr_caffemaxpool``)
run in, with module names equal to the checkpoint's keys:

* ``backbone``: caffe/MSRA ResNet stem (7x7/2 conv, frozen BN as an affine map, ReLU, 3x3/2 max-pool with
  no padding and ceil mode) and stages ``res2``-``res4`` of bottleneck blocks with the stride on the 1x1
  conv (``stride_in_1x1``), widths 64/128/256 (outputs 256/512/1024), blocks (3, 4, 23): the stride-16 C4 map.
* ``proposal_generator.rpn_head``: 3x3 conv to 512 + ReLU, 1x1 objectness (A logits) and deltas (4A) per
  location; A = 12 anchors (sizes 64/128/256/512 x ratios 0.5/1/2, size-major, centred on ``i * 16``).
* ``roi_heads.res5``: three bottleneck blocks 1024 -> 2048 with NO stride and dilation 2 on every 3x3
  (the VG model's "res5 not halved"), run on each 14x14 ``RoIPool`` (caffe max pooling, scale 1/16) crop;
  the mean over the 14x14 output is the 2048-d region feature.
* ``roi_heads.box_predictor``: ``cls_score`` (1,601 logits: the 1,600 VG classes, then background),
  ``bbox_pred`` (unused by the extraction), and the attribute head: ``cls_embedding`` of the argmax class
  (incl. background, 256-d) concatenated to the feature, ``fc_attr`` (-> 512, ReLU), ``attr_score`` (401:
  the 400 attributes, then "no attribute").

Images of different sizes run in one padded batch without changing any number: the input of every conv
with a spatial kernel (and of the stem's max-pool) is zeroed outside each image's valid area, which is
exactly the zero padding the convolution sees on the unpadded image; the RPN only reads the valid
locations and ROI pooling reads each image's valid crop. ``valid_sizes`` tracks that area per stage.

``load_checkpoint`` reads the pickled numpy dict with the restricted unpickler and reports the keys used,
ignored and missing (``LoadReport``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms, roi_pool

from ..errors import FeatstoreError

BBOX_CLAMP = math.log(1000.0 / 16)  # detectron2's limit on predicted log-scale deltas
CHECKPOINT_HINT = ("pass the caffe-converted attribute model faster_rcnn_from_caffe_attr.pkl of "
                   "py-bottom-up-attention (detectron2 layout; http://nlp.cs.unc.edu/models/"
                   "faster_rcnn_from_caffe_attr.pkl, fetched on a connected machine)")


@dataclass(frozen=True)
class VGArch:
    """Sizes of the network; the defaults are the public checkpoint's (smaller ones only for tests)."""

    width: int = 64  # res2 bottleneck width; stage outputs are 4w, 8w, 16w (C4) and 32w (res5)
    blocks: Tuple[int, int, int, int] = (3, 4, 23, 3)  # res2, res3, res4, res5
    rpn_channels: int = 512
    num_classes: int = 1600
    num_attrs: int = 400
    anchor_sizes: Tuple[float, ...] = (64.0, 128.0, 256.0, 512.0)
    anchor_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)

    @property
    def feature_dim(self) -> int:
        return 32 * self.width

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sizes) * len(self.anchor_ratios)


class FrozenBN(nn.Module):
    """Batch norm with fixed statistics: ``x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))``."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((channels,), fill))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype)[None, :, None, None] + shift.to(x.dtype)[None, :, None, None]


class ConvNorm(nn.Conv2d):
    """A bias-free conv followed by its frozen BN (detectron2's ``Conv2d(..., norm=FrozenBN)``)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1):
        super().__init__(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=False)
        self.norm = FrozenBN(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    """1x1 (carries the stride) -> 3x3 (dilation d, padding d) -> 1x1, projection shortcut when widths differ."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride) if cin != cout else None
        self.conv1 = ConvNorm(cin, mid, 1, stride)
        self.conv2 = ConvNorm(mid, mid, 3, 1, dilation, dilation)
        self.conv3 = ConvNorm(mid, cout, 1)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        out = F.relu(self.conv1(x))
        if mask is not None:
            out = out * mask
        out = self.conv3(F.relu(self.conv2(out)))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class Stem(nn.Module):
    def __init__(self, cout: int):
        super().__init__()
        self.conv1 = ConvNorm(3, cout, 7, 2, 3)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x = F.relu(self.conv1(x))
        if mask is not None:
            x = x * mask
        return F.max_pool2d(x, 3, 2, 0, ceil_mode=True)  # caffe pooling: no pad, ceil


def _stage(n: int, cin: int, mid: int, cout: int, stride: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(*[Bottleneck(cin if i == 0 else cout, mid, cout, stride if i == 0 else 1, dilation)
                           for i in range(n)])


class Backbone(nn.Module):
    def __init__(self, a: VGArch):
        super().__init__()
        w = a.width
        self.stem = Stem(w)
        self.res2 = _stage(a.blocks[0], w, w, 4 * w, 1)
        self.res3 = _stage(a.blocks[1], 4 * w, 2 * w, 8 * w, 2)
        self.res4 = _stage(a.blocks[2], 8 * w, 4 * w, 16 * w, 2)

    def forward(self, x: Tensor, sizes: Sequence[Tuple[int, int]]) -> Tuple[Tensor, List[Tuple[int, int]]]:
        """C4 of a zero-padded batch ``x`` whose image i is valid in its top-left ``sizes[i]`` = (h, w);
        returns the map and the valid (h, w) on it."""
        sizes = [(conv_size(h, 7, 2, 3), conv_size(w, 7, 2, 3)) for h, w in sizes]
        x = self.stem(x, valid_mask(sizes, (conv_size(x.shape[-2], 7, 2, 3), conv_size(x.shape[-1], 7, 2, 3)), x))
        sizes = [(pool_size(h), pool_size(w)) for h, w in sizes]
        for stage, stride in ((self.res2, 1), (self.res3, 2), (self.res4, 2)):
            sizes = [(conv_size(h, 1, stride, 0), conv_size(w, 1, stride, 0)) for h, w in sizes]
            mask = valid_mask(sizes, (conv_size(x.shape[-2], 1, stride, 0), conv_size(x.shape[-1], 1, stride, 0)), x)
            for block in stage:  # every block runs at the resolution after the first one's strided conv1
                x = block(x, mask)
        return x, sizes


class RPNHead(nn.Module):
    def __init__(self, cin: int, hidden: int, anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, anchors, 1)
        self.anchor_deltas = nn.Conv2d(hidden, 4 * anchors, 1)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        t = F.relu(self.conv(x if mask is None else x * mask))
        return self.objectness_logits(t), self.anchor_deltas(t)


class BoxPredictor(nn.Module):
    def __init__(self, dim: int, num_classes: int, num_attrs: int):
        super().__init__()
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, num_classes * 4)
        self.cls_embedding = nn.Embedding(num_classes + 1, dim // 8)
        self.fc_attr = nn.Linear(dim + dim // 8, dim // 4)
        self.attr_score = nn.Linear(dim // 4, num_attrs + 1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Class logits [R, C+1] and attribute logits [R, A+1] of pooled features ``x`` [R, D]."""
        logits = self.cls_score(x)
        emb = self.cls_embedding(logits.argmax(-1))  # the argmax class, background included
        attr = self.attr_score(F.relu(self.fc_attr(torch.cat([x, emb.to(x.dtype)], -1))))
        return logits, attr


@dataclass
class RPNSettings:
    pre_nms_topk: int = 6000
    post_nms_topk: int = 300
    nms_thresh: float = 0.7
    min_size: float = 0.0


class VGDetector(nn.Module):
    """The whole network; ``state_dict()`` keys are the checkpoint's."""

    def __init__(self, arch: VGArch = VGArch()):
        super().__init__()
        self.arch = arch
        w, d = arch.width, arch.feature_dim
        self.backbone = Backbone(arch)
        self.proposal_generator = nn.ModuleDict({"rpn_head": RPNHead(16 * w, arch.rpn_channels, arch.num_anchors)})
        self.roi_heads = nn.ModuleDict({"res5": _stage(arch.blocks[3], 16 * w, 8 * w, d, 1, dilation=2),
                                        "box_predictor": BoxPredictor(d, arch.num_classes, arch.num_attrs)})
        self.register_buffer("cell_anchors", cell_anchors(arch.anchor_sizes, arch.anchor_ratios), persistent=False)

    def proposals(self, c4: Tensor, sizes16: Sequence[Tuple[int, int]], image_sizes: Sequence[Tuple[int, int]],
                  s: RPNSettings) -> List[Tensor]:
        """RPN proposals per image (float32 [P, 4] in input pixels, by decreasing objectness)."""
        logits, deltas = self.proposal_generator["rpn_head"](c4, valid_mask(sizes16, tuple(c4.shape[-2:]), c4))
        cand, scores, owner = [], [], []
        for i, ((hf, wf), (h, w)) in enumerate(zip(sizes16, image_sizes)):
            lg = logits[i, :, :hf, :wf].permute(1, 2, 0).reshape(-1).float()  # (y, x, anchor) order
            dl = deltas[i, :, :hf, :wf].reshape(-1, 4, hf, wf).permute(2, 3, 0, 1).reshape(-1, 4).float()
            anchors = grid_anchors(self.cell_anchors, hf, wf, 16)
            top = torch.sort(lg, descending=True).indices[: s.pre_nms_topk]
            boxes = clip_boxes(apply_deltas(dl[top], anchors[top], (1.0, 1.0, 1.0, 1.0)), h, w)
            ok = ((boxes[:, 2] - boxes[:, 0]) > s.min_size) & ((boxes[:, 3] - boxes[:, 1]) > s.min_size)
            cand.append(boxes[ok])
            scores.append(lg[top][ok])
            owner.append(torch.full((int(ok.sum()),), i, dtype=torch.int64, device=c4.device))
        boxes, sc, own = torch.cat(cand), torch.cat(scores), torch.cat(owner)
        keep = grouped_nms(boxes, sc, own, s.nms_thresh)  # one NMS for the batch, images kept apart
        return [boxes[keep[own[keep] == i]][: s.post_nms_topk] for i in range(len(image_sizes))]

    def region_features(self, c4: Tensor, sizes16: Sequence[Tuple[int, int]], boxes: Sequence[Tensor],
                        chunk: int = 1024) -> Tensor:
        """The pooled res5 feature [sum R_i, D] of each box (input pixels) of each image."""
        crops = [roi_pool(c4[i:i + 1, :, :hf, :wf].float(), [b.float()], output_size=14, spatial_scale=1 / 16)
                 for i, ((hf, wf), b) in enumerate(zip(sizes16, boxes))]
        x = torch.cat(crops).to(c4.dtype)
        out = []
        for part in x.split(max(1, chunk)):
            for block in self.roi_heads["res5"]:
                part = block(part)
            out.append(part.mean(dim=(2, 3)))
        return torch.cat(out) if out else x.new_zeros(0, self.arch.feature_dim)

    def predict(self, pooled: Tensor) -> Tuple[Tensor, Tensor]:
        """Class probabilities [R, C+1] and attribute probabilities [R, A+1] (softmax, float32)."""
        logits, attr = self.roi_heads["box_predictor"](pooled)
        return F.softmax(logits.float(), -1), F.softmax(attr.float(), -1)


# -- geometry -----------------------------------------------------------------------------------------
def conv_size(n: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def pool_size(n: int) -> int:
    """Output length of the stem's 3x3/2 max-pool with no padding and ceil mode."""
    return -(-(n - 3) // 2) + 1


def valid_mask(sizes: Sequence[Tuple[int, int]], hw: Tuple[int, int], like: Tensor) -> Optional[Tensor]:
    """[N, 1, H, W] mask of ``like``'s dtype, 1 inside image i's valid top-left ``sizes[i]`` of an ``hw`` map;
    None when every image fills the map (nothing to zero)."""
    hh, ww = hw
    if all(h == hh and w == ww for h, w in sizes):
        return None
    hs = torch.tensor([h for h, _ in sizes], device=like.device)
    ws = torch.tensor([w for _, w in sizes], device=like.device)
    rows = torch.arange(hh, device=like.device)[None, :] < hs[:, None]
    cols = torch.arange(ww, device=like.device)[None, :] < ws[:, None]
    return (rows[:, None, :, None] & cols[:, None, None, :]).to(like.dtype)


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """detectron2's anchors around (0, 0): for each size, for each ratio (h / w), area size**2."""
    out = []
    for size in sizes:
        for r in ratios:
            w = math.sqrt(size * size / r)
            h = r * w
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(cell: Tensor, h: int, w: int, stride: int) -> Tensor:
    """[h * w * A, 4] anchors centred on (x * stride, y * stride), in (y, x, anchor) order."""
    ys = torch.arange(h, device=cell.device, dtype=torch.float32) * stride
    xs = torch.arange(w, device=cell.device, dtype=torch.float32) * stride
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([sx, sy, sx, sy], -1).reshape(-1, 1, 4)
    return (shifts + cell.reshape(1, -1, 4)).reshape(-1, 4)


def apply_deltas(deltas: Tensor, boxes: Tensor, weights: Tuple[float, float, float, float]) -> Tensor:
    """R-CNN box decoding (widths without +1, dw/dh clamped at log(1000/16))."""
    wd, ht = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * wd, boxes[:, 1] + 0.5 * ht
    dx, dy = deltas[:, 0] / weights[0], deltas[:, 1] / weights[1]
    dw = torch.clamp(deltas[:, 2] / weights[2], max=BBOX_CLAMP)
    dh = torch.clamp(deltas[:, 3] / weights[3], max=BBOX_CLAMP)
    px, py, pw, ph = dx * wd + cx, dy * ht + cy, torch.exp(dw) * wd, torch.exp(dh) * ht
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], -1)


def clip_boxes(boxes: Tensor, h: int, w: int) -> Tensor:
    return torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                        boxes[:, 3].clamp(0, h)], -1)


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou: float, max_boxes: int = 32768) -> Tensor:
    """Greedy NMS within each group (``torchvision.ops.nms`` on the device), indices of the survivors.

    Groups are kept apart by shifting each group's boxes by ``group * span`` in float64 (float32 would
    round shifted coordinates once there are many groups); at most ``max_boxes`` boxes (whole groups)
    go into one ``nms`` call, which bounds its O(n^2) mask."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(groups, stable=True).indices
    g = groups[order]
    b = boxes[order].double()
    b = b + (g.double() * (float(b.max() - min(float(b.min()), 0.0)) + 2.0))[:, None]
    s = scores[order].double()
    keep, start, size = [], 0, 0

    def run(a: int, z: int) -> None:
        keep.append(order[a:z][nms(b[a:z], s[a:z], iou)])

    for count in torch.unique_consecutive(g, return_counts=True)[1].tolist():
        if size and size + count > max_boxes:
            run(start, start + size)
            start, size = start + size, 0
        size += count
    run(start, start + size)
    return torch.cat(keep)


# -- checkpoint ---------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    used: List[str] = field(default_factory=list)  # checkpoint keys copied into the model
    ignored: List[Tuple[str, str]] = field(default_factory=list)  # (key, why) with no place in the model
    missing: List[str] = field(default_factory=list)  # model keys the checkpoint lacks (an error when loading)

    def summary(self) -> Dict[str, object]:
        return {"used": len(self.used), "ignored": [f"{k} ({why})" for k, why in self.ignored],
                "missing": list(self.missing)}


def read_checkpoint(path: str) -> Dict[str, np.ndarray]:
    """The name -> array dict of a detectron2-layout pickle (bare, or under ``"model"`` as detectron2's
    model zoo stores it), read with the restricted unpickler."""
    from ..interop.safe_pickle import safe_load

    if not os.path.isfile(path):
        raise FeatstoreError(f"weights file {path!r} does not exist; {CHECKPOINT_HINT}")
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


def map_checkpoint(ckpt: Dict[str, np.ndarray], model: VGDetector, pixel_mean: Sequence[float],
                   source: str) -> Tuple[Dict[str, Tensor], LoadReport]:
    """Checkpoint arrays -> the model's state dict (same names), checking shapes and constants."""
    own = model.state_dict()
    report = LoadReport()
    state: Dict[str, Tensor] = {}
    for key in sorted(ckpt):
        arr = ckpt[key]
        if key in own:
            if tuple(arr.shape) != tuple(own[key].shape):
                raise FeatstoreError(f"weights {source!r}: {key} has shape {tuple(arr.shape)}, the model expects "
                                     f"{tuple(own[key].shape)}; set the architecture options (width, blocks, "
                                     "rpn_channels, num_classes, num_attrs) to the checkpoint's")
            state[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            report.used.append(key)
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
    return "no counterpart in the model"


def load_checkpoint(model: VGDetector, path: str, pixel_mean: Sequence[float]) -> LoadReport:
    """Load every weight of the pickle at ``path`` into ``model``; raises one-line errors (see above)."""
    state, report = map_checkpoint(read_checkpoint(path), model, pixel_mean, path)
    model.load_state_dict(state, strict=False)  # every model key is in state (missing raised above)
    return report
