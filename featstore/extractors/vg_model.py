"""The bottom-up-attention Faster R-CNN (Anderson et al. 2018): ResNet-101 C4 with an attribute head.

One graph, in the two layouts its public caffe-converted Visual Genome weights come in (``VGArch.layout``),
with module names equal to the checkpoint's keys (reading them: ``vg_checkpoint``):

* ``detectron2``: py-bottom-up-attention's ``faster_rcnn_from_caffe_attr.pkl`` (config
  ``faster_rcnn_R_101_C4_attr_caffemaxpool``, airsplay's detectron2 fork);
* ``bua-caffe``: bottom-up-attention.pytorch's ``bua-caffe-frcn-r101_with_attributes.pth`` (MILVLG, config
  ``test-caffe-r101.yaml``: ``GeneralizedBUARCNN``, ``BUARPN``, ``BUACaffeRes5ROIHeads``).

Shared by both:

* ``backbone``: caffe/MSRA ResNet stem (7x7/2 conv, BN as an affine map of its running statistics, ReLU,
  3x3/2 max-pool with no padding and ceil mode) and stages ``res2``-``res4`` of bottleneck blocks with the
  stride on the 1x1 conv (``stride_in_1x1``), widths 64/128/256 (outputs 256/512/1024), blocks (3, 4, 23): the
  stride-16 C4 map. (MILVLG's res4 / res5 norms are ``BatchNorm2d`` in eval mode: the same map.)
* ``proposal_generator.rpn_head``: 3x3 conv to 512 + ReLU, 1x1 objectness and 1x1 deltas (4A channels,
  anchor-major: channel ``4a + k`` is coordinate k of anchor a, in both layouts) per location, A = 12.
* ``roi_heads.res5``: three bottleneck blocks 1024 -> 2048 with NO stride and dilation 2 on every 3x3
  (the VG model's "res5 not halved"), run on each 14x14 ``RoIPool`` (caffe max pooling, scale 1/16) crop;
  the mean over the 14x14 output is the 2048-d region feature.
* the attribute head: the embedding (256-d) of the argmax class (background included) concatenated to the
  feature, a linear layer to 512 + ReLU, then 401 attribute logits; probabilities are softmaxes over all
  1,601 classes / all 401 attribute outputs.

What differs (checked in the code of both references):

==================  ==========================================  ==========================================
                    detectron2 (py-bottom-up-attention)         bua-caffe (bottom-up-attention.pytorch)
==================  ==========================================  ==========================================
objectness          A logits (channel a), sigmoid order         2A logits viewed (2, A): channels 0..A-1
                                                                background, A..2A-1 object; score = the
                                                                softmax object probability
anchors             sizes 64..512 x ratios 0.5/1/2, size-major, the checkpoint's ``cell_anchors.0``
                    float, centred on (16x, 16y)                buffer (caffe ``generate_anchors``: ratio-
                                                                major, rounded, +1 extents), same shifts
box decoding        width x2 - x1, clip to [0, w]               width x2 - x1 + 1, clip to [0, w - 1]
proposal order      top 6000 by score, decode, clip, drop       decode all, clip, drop empty and sides
                    sides <= ``min_size`` (0)                   (+1) <= 16 x image scale, then top 6000
RPN NMS (0.7)       IoU without +1, suppress IoU > t            +1 areas, suppress IoU >= t (maskrcnn-
                                                                benchmark's nms); 300 kept in both
class order         1,600 classes then background               background first (caffe)
attribute order     400 attributes then "no attribute"          "no attribute" first
bbox_pred           1600 x 4 = 6400 rows (no background row)    1601 x 4 = 6404 (row 0 background; its
                                                                inference drops ``boxes[:, 4:]``)
predictor names     cls_embedding, fc_attr, attr_score          cls_embed, attr_linear1, attr_linear2
==================  ==========================================  ==========================================

``predict`` returns both layouts' probabilities in the detectron2 order (background / "no attribute" last),
so the extractor has one convention. ``bbox_pred`` is loaded and reported but unused: both references
extract the features of the RPN proposals, not of regressed boxes.

Images of different sizes run in one padded batch without changing any number: the input of every conv
with a spatial kernel (and of the stem's max-pool) is zeroed outside each image's valid area, which is
exactly the zero padding the convolution sees on the unpadded image; the RPN only reads the valid
locations and ROI pooling reads each image's valid crop. ``valid_sizes`` tracks that area per stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms, roi_pool

BBOX_CLAMP = math.log(1000.0 / 16)  # both references' limit on predicted log-scale deltas
LAYOUTS = ("detectron2", "bua-caffe")
PREDICTOR_NAMES = {"detectron2": ("cls_score", "bbox_pred", "cls_embedding", "fc_attr", "attr_score"),
                   "bua-caffe": ("cls_score", "bbox_pred", "cls_embed", "attr_linear1", "attr_linear2")}


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
    layout: str = "detectron2"  # see the module docstring

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
    """``softmax``: bottom-up-attention.pytorch's 2A objectness logits (background block, then object block),
    scored by the object probability; else detectron2's A logits, scored by the logit itself."""

    def __init__(self, cin: int, hidden: int, anchors: int, softmax: bool = False):
        super().__init__()
        self.softmax = softmax
        self.conv = nn.Conv2d(cin, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, anchors * (2 if softmax else 1), 1)
        self.anchor_deltas = nn.Conv2d(hidden, 4 * anchors, 1)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Objectness scores [N, A, H, W] and deltas [N, 4A, H, W]."""
        t = F.relu(self.conv(x if mask is None else x * mask))
        scores = self.objectness_logits(t)
        if self.softmax:
            n, c, h, w = scores.shape
            scores = F.softmax(scores.float().view(n, 2, c // 2, h, w), dim=1)[:, 1]
        return scores, self.anchor_deltas(t)


class BoxPredictor(nn.Module):
    """Class scores, box deltas and the attribute head, named as ``layout``'s checkpoint names them
    (``PREDICTOR_NAMES``); bua-caffe regresses a box for the background too (1601 x 4 rows)."""

    def __init__(self, dim: int, num_classes: int, num_attrs: int, layout: str = "detectron2"):
        super().__init__()
        self.names = PREDICTOR_NAMES[layout]
        box_classes = num_classes + 1 if layout == "bua-caffe" else num_classes
        for name, module in zip(self.names, (nn.Linear(dim, num_classes + 1), nn.Linear(dim, box_classes * 4),
                                             nn.Embedding(num_classes + 1, dim // 8),
                                             nn.Linear(dim + dim // 8, dim // 4), nn.Linear(dim // 4, num_attrs + 1))):
            self.add_module(name, module)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Class logits [R, C+1] and attribute logits [R, A+1] of pooled features ``x`` [R, D] (layout order)."""
        cls, _, embed, hidden, attr = (getattr(self, n) for n in self.names)
        logits = cls(x)
        emb = embed(logits.argmax(-1))  # the argmax class, background included
        return logits, attr(F.relu(hidden(torch.cat([x, emb.to(x.dtype)], -1))))


@dataclass
class RPNSettings:
    pre_nms_topk: int = 6000
    post_nms_topk: int = 300
    nms_thresh: float = 0.7
    min_size: float = 0.0


class VGDetector(nn.Module):
    """The whole network; ``state_dict()`` keys are the checkpoint's (of ``arch.layout``)."""

    def __init__(self, arch: VGArch = VGArch()):
        super().__init__()
        self.arch = arch
        w, d = arch.width, arch.feature_dim
        caffe = arch.layout == "bua-caffe"
        self.backbone = Backbone(arch)
        self.proposal_generator = nn.ModuleDict({"rpn_head": RPNHead(16 * w, arch.rpn_channels, arch.num_anchors,
                                                                     softmax=caffe)})
        self.roi_heads = nn.ModuleDict({"res5": _stage(arch.blocks[3], 16 * w, 8 * w, d, 1, dilation=2),
                                        "box_predictor": BoxPredictor(d, arch.num_classes, arch.num_attrs,
                                                                      arch.layout)})
        make = caffe_anchors if caffe else cell_anchors
        self.register_buffer("cell_anchors", make(arch.anchor_sizes, arch.anchor_ratios), persistent=False)

    def proposals(self, c4: Tensor, sizes16: Sequence[Tuple[int, int]], image_sizes: Sequence[Tuple[int, int]],
                  s: RPNSettings, scales: Optional[Sequence[float]] = None) -> List[Tensor]:
        """RPN proposals per image (float32 [P, 4] in input pixels, by decreasing objectness); ``scales``
        (input / original pixels) scale bua-caffe's ``min_size``, which is in original pixels."""
        scores, deltas = self.proposal_generator["rpn_head"](c4, valid_mask(sizes16, tuple(c4.shape[-2:]), c4))
        caffe = self.arch.layout == "bua-caffe"
        cand, score, owner = [], [], []
        for i, ((hf, wf), (h, w)) in enumerate(zip(sizes16, image_sizes)):
            sc = scores[i, :, :hf, :wf].permute(1, 2, 0).reshape(-1).float()  # (y, x, anchor) order
            dl = deltas[i, :, :hf, :wf].reshape(-1, 4, hf, wf).permute(2, 3, 0, 1).reshape(-1, 4).float()
            anchors = grid_anchors(self.cell_anchors, hf, wf, 16)
            if caffe:
                boxes, sc = caffe_candidates(sc, dl, anchors, (h, w), s.pre_nms_topk,
                                             s.min_size * (scales[i] if scales else 1.0))
            else:
                boxes, sc = detectron2_candidates(sc, dl, anchors, (h, w), s.pre_nms_topk, s.min_size)
            cand.append(boxes)
            score.append(sc)
            owner.append(torch.full((len(sc),), i, dtype=torch.int64, device=c4.device))
        boxes, sc, own = torch.cat(cand), torch.cat(score), torch.cat(owner)
        if caffe:  # maskrcnn-benchmark's nms: +1 areas, suppressed at IoU >= t
            keep = grouped_nms(legacy_boxes(boxes), sc, own, math.nextafter(s.nms_thresh, 0.0))
        else:
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
        """Class probabilities [R, C+1] and attribute probabilities [R, A+1] (softmax, float32), background /
        "no attribute" last in both layouts (bua-caffe's column 0 moved to the end)."""
        logits, attr = self.roi_heads["box_predictor"](pooled)
        probs, attr = F.softmax(logits.float(), -1), F.softmax(attr.float(), -1)
        if self.arch.layout == "bua-caffe":
            probs, attr = (torch.cat([p[:, 1:], p[:, :1]], 1) for p in (probs, attr))
        return probs, attr


# -- proposals ----------------------------------------------------------------------------------------
def detectron2_candidates(scores: Tensor, deltas: Tensor, anchors: Tensor, hw: Tuple[int, int], topk: int,
                          min_size: float) -> Tuple[Tensor, Tensor]:
    """detectron2's find_top_rpn_proposals before NMS: the ``topk`` best anchors, decoded, clipped to
    [0, w] x [0, h], sides > ``min_size``."""
    top = torch.sort(scores, descending=True, stable=True).indices[:topk]
    boxes = clip_boxes(apply_deltas(deltas[top], anchors[top], (1.0, 1.0, 1.0, 1.0)), *hw)
    ok = ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
    return boxes[ok], scores[top][ok]


def caffe_candidates(scores: Tensor, deltas: Tensor, anchors: Tensor, hw: Tuple[int, int], topk: int,
                     min_size: float) -> Tuple[Tensor, Tensor]:
    """bottom-up-attention.pytorch's find_top_bua_rpn_proposals before NMS: every anchor decoded with +1
    widths, clipped to [0, w - 1] x [0, h - 1], kept when x2 > x1, y2 > y1 and both +1 sides exceed
    ``min_size``; then the ``topk`` best."""
    boxes = clip_boxes(apply_deltas(deltas, anchors, (1.0, 1.0, 1.0, 1.0), plus_one=1.0), *hw, plus_one=1.0)
    wd, ht = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ok = (wd > 0) & (ht > 0) & (wd + 1 > min_size) & (ht + 1 > min_size)
    boxes, scores = boxes[ok], scores[ok]
    top = torch.sort(scores, descending=True, stable=True).indices[:topk]
    return boxes[top], scores[top]


def legacy_boxes(boxes: Tensor) -> Tensor:
    """Boxes whose plain areas / intersections are the legacy (x2 - x1 + 1) * (y2 - y1 + 1) ones."""
    return torch.cat([boxes[:, :2], boxes[:, 2:] + 1.0], 1)


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


def caffe_anchors(sizes: Sequence[float], ratios: Sequence[float], base: int = 16) -> Tensor:
    """py-faster-rcnn's ``generate_anchors(base, ratios, scales=sizes / base)``: for each ratio (h / w) the
    base box's rounded width / height, then for each scale those times the scale, as +1 extents around
    ((base - 1) / 2, (base - 1) / 2)."""
    ctr, out = (base - 1) / 2, []
    for r in ratios:
        ws = round(math.sqrt(base * base / r))  # half to even, as np.round
        hs = round(ws * r)
        for size in sizes:
            w, h = ws * size / base, hs * size / base
            out.append([ctr - (w - 1) / 2, ctr - (h - 1) / 2, ctr + (w - 1) / 2, ctr + (h - 1) / 2])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(cell: Tensor, h: int, w: int, stride: int) -> Tensor:
    """[h * w * A, 4] anchors centred on (x * stride, y * stride), in (y, x, anchor) order."""
    ys = torch.arange(h, device=cell.device, dtype=torch.float32) * stride
    xs = torch.arange(w, device=cell.device, dtype=torch.float32) * stride
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([sx, sy, sx, sy], -1).reshape(-1, 1, 4)
    return (shifts + cell.reshape(1, -1, 4)).reshape(-1, 4)


def apply_deltas(deltas: Tensor, boxes: Tensor, weights: Tuple[float, float, float, float],
                 plus_one: float = 0.0) -> Tensor:
    """R-CNN box decoding (widths x2 - x1 + ``plus_one``, dw/dh clamped at log(1000/16))."""
    wd, ht = boxes[:, 2] - boxes[:, 0] + plus_one, boxes[:, 3] - boxes[:, 1] + plus_one
    cx, cy = boxes[:, 0] + 0.5 * wd, boxes[:, 1] + 0.5 * ht
    dx, dy = deltas[:, 0] / weights[0], deltas[:, 1] / weights[1]
    dw = torch.clamp(deltas[:, 2] / weights[2], max=BBOX_CLAMP)
    dh = torch.clamp(deltas[:, 3] / weights[3], max=BBOX_CLAMP)
    px, py, pw, ph = dx * wd + cx, dy * ht + cy, torch.exp(dw) * wd, torch.exp(dh) * ht
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], -1)


def clip_boxes(boxes: Tensor, h: int, w: int, plus_one: float = 0.0) -> Tensor:
    """Clip to [0, w - ``plus_one``] x [0, h - ``plus_one``]."""
    w, h = w - plus_one, h - plus_one
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
