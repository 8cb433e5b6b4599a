"""``vg-regions``: Visual Genome bottom-up-attention region features (Anderson et al. 2018) for any image.

The detector is ``vg_model.VGDetector`` (ResNet-101 C4 Faster R-CNN with the attribute head) loaded from
either public caffe-converted checkpoint (``vg_checkpoint``): py-bottom-up-attention's
``--weights faster_rcnn_from_caffe_attr.pkl`` (layout ``detectron2``) or bottom-up-attention.pytorch's
``--weights bua-caffe-frcn-r101_with_attributes.pth`` (layout ``bua-caffe``), told apart by their keys
(``--set layout=`` forces one). The layout also sets the RPN conventions (``vg_model``'s table) and the
``rpn_min_size`` default (0, or 16 original pixels for bua-caffe). Per image, as bottom-up-attention's
``generate_tsv.py`` (and bottom-up-attention.pytorch's ``save_roi_features``) extract:

0. the file decoded as ``cv2.imread`` decodes it (``decode="cv2"``, the default: EXIF orientation applied, alpha
   dropped, not composited; ``--set decode=featstore`` composites alpha on white instead);
1. caffe preprocessing: BGR, minus the pixel means (102.9801, 115.9465, 122.7717), scale so the shorter side
   is ``shorter_side`` (600) unless the longer would then exceed ``max_side`` (1000) (``caffe_scale``),
   bilinear exactly as ``cv2.resize(fx=fy=scale, interpolation=INTER_LINEAR)`` maps pixels; no std;
2. RPN on C4: the ``pre_nms_topk`` (6000) best anchors, decoded, clipped, NMS at ``rpn_nms_thresh`` (0.7),
   the ``post_nms_topk`` (300) best proposals;
3. every proposal's 2048-d feature (RoIPool 14x14 -> res5 -> mean), class and attribute probabilities;
4. selection (``select_regions``) on the proposal boxes in original pixels: for every object class, NMS of
   the proposals by that class's probability at ``nms_thresh`` (0.3; IoU with the legacy +1 pixel areas);
   (bua-caffe: maskrcnn-benchmark's nms, which also suppresses at IoU equal to the threshold);
   a proposal's confidence is its best probability among the classes where it survives; keep those with
   confidence >= ``conf_thresh`` (0.2) in proposal order, or the ``min_boxes`` (10) / ``max_boxes`` (100)
   most confident (by decreasing confidence) when fewer / more pass.

Output (K = max_boxes, zero-padded past ``count``): ``regions [N, K, 2048]``, ``boxes`` (float32, x1 y1 x2 y2
in original pixels: the proposal / scale), ``count``, ``image_size`` (w, h), ``class_ids`` (0..1599, the
index in the VG ``objects_vocab.txt``, background excluded) and ``class_scores``, ``attr_ids`` (0..399,
``attributes_vocab.txt``) and ``attr_scores`` (softmax over the 401 attribute outputs, "no attribute"
excluded from the argmax, as ``save_roi_features``' ``attr_scores[:, 1:]``), ``cls_prob [N, K, 1601]``
(the class softmax in the caffe order MMF and ViLBERT pretraining read: column 0 background, column 1 + c
class c) and ``pooled`` (mean of the regions). The attribute softmax over all 401 outputs is caffe's
``attr_prob`` and MILVLG's; py-bottom-up-attention's demo notebooks instead softmax the 400 without
"no attribute" (same argmax, larger scores).

A batch runs as at most two padded tensors (landscape and portrait); masking in ``VGDetector`` makes every
row equal to the image run alone. All NMS runs on the model's device, one call per stage for the batch.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ..errors import FeatstoreError
from ..store.spec import ArraySpec
from .base import BaseConfig, Extractor, check_box_counts, register_extractor, seeded
from .images import CV2, check_decode, require_pil
from .vg_checkpoint import detect_layout, load_checkpoint, read_checkpoint
from .vg_model import LAYOUTS, RPNSettings, VGArch, VGDetector, grouped_nms, legacy_boxes
from .weights import DEMO

CAFFE_PIXEL_MEAN = (102.9801, 115.9465, 122.7717)  # BGR
MIN_SIDE = 32  # a scaled side this short leaves no C4 map (stride 16) to pool from


@dataclass
class VGRegionsConfig(BaseConfig):
    shorter_side: int = 600
    max_side: int = 1000
    pixel_mean: Tuple[float, ...] = CAFFE_PIXEL_MEAN
    pre_nms_topk: int = 6000
    post_nms_topk: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_min_size: Optional[float] = None  # None: the layout's (0 for detectron2, 16 original pixels for bua-caffe)
    nms_thresh: float = 0.3
    conf_thresh: float = 0.2
    min_boxes: int = 10
    max_boxes: int = 100
    cls_prob: bool = True
    roi_chunk: int = 1024
    # architecture: the defaults are the public checkpoint's; smaller values only make test models
    width: int = 64
    blocks: Tuple[int, ...] = (3, 4, 23, 3)
    rpn_channels: int = 512
    num_classes: int = 1600
    num_attrs: int = 400
    layout: str = "auto"  # auto (from the checkpoint's keys; detectron2 without weights), detectron2, bua-caffe
    decode: str = CV2  # how files are decoded (images.load_image): generate_tsv.py's cv2.imread

    def __post_init__(self):
        super().__post_init__()
        check_decode(self.decode)
        if self.weights == DEMO:
            raise FeatstoreError("vg-regions has no demo weights; pass --weights faster_rcnn_from_caffe_attr.pkl "
                                 "(py-bottom-up-attention's Visual Genome checkpoint)")
        if self.layout not in ("auto",) + LAYOUTS:
            raise FeatstoreError(f"layout={self.layout!r} is not a checkpoint layout; use auto, "
                                 f"{', '.join(LAYOUTS)}")
        check_box_counts(self.min_boxes, self.max_boxes)
        if not 0 <= self.conf_thresh <= 1 or not 0 < self.nms_thresh <= 1 or not 0 < self.rpn_nms_thresh <= 1:
            raise FeatstoreError(f"conf_thresh={self.conf_thresh}, nms_thresh={self.nms_thresh}, rpn_nms_thresh="
                                 f"{self.rpn_nms_thresh} must be in [0, 1] (NMS thresholds above 0)")
        if self.shorter_side < 32 or self.max_side < self.shorter_side:
            raise FeatstoreError(f"shorter_side={self.shorter_side}, max_side={self.max_side} are invalid; "
                                 "use 32 <= shorter_side <= max_side")
        if len(self.blocks) != 4 or min(self.blocks) < 1 or len(self.pixel_mean) != 3:
            raise FeatstoreError(f"blocks={self.blocks} / pixel_mean={self.pixel_mean} are invalid; give four block "
                                 "counts (res2..res5) >= 1 and three BGR means")
        self.blocks = tuple(int(b) for b in self.blocks)
        self.pixel_mean = tuple(float(m) for m in self.pixel_mean)

    def arch(self, layout: str) -> VGArch:
        return VGArch(width=self.width, blocks=self.blocks, rpn_channels=self.rpn_channels,
                      num_classes=self.num_classes, num_attrs=self.num_attrs, layout=layout)

    def rpn(self, layout: str) -> RPNSettings:
        min_size = self.rpn_min_size if self.rpn_min_size is not None else (16.0 if layout == "bua-caffe" else 0.0)
        return RPNSettings(self.pre_nms_topk, self.post_nms_topk, self.rpn_nms_thresh, min_size)


def caffe_scale(width: int, height: int, shorter: int, max_side: int) -> Tuple[float, Tuple[int, int]]:
    """bottom-up-attention's test scale: ``shorter / min side``, or ``max_side / max side`` when the
    rounded longer side would exceed ``max_side``; with the resized (w, h) rounded as cv2.resize does."""
    scale = shorter / min(width, height)
    if round(scale * max(width, height)) > max_side:
        scale = max_side / max(width, height)
    return scale, (max(1, int(round(width * scale))), max(1, int(round(height * scale))))


def region_confidence(boxes: torch.Tensor, probs: torch.Tensor, owner: torch.Tensor, nms_thresh: float,
                      floor: float, inclusive: bool = False) -> torch.Tensor:
    """Per box, the best class probability among the classes where class-wise NMS keeps it (0 if none).

    ``boxes [R, 4]`` (all images), ``probs [R, C]`` (foreground classes), ``owner [R]`` (image index). Only
    (box, class) pairs with probability >= ``floor`` take part: a pair can only be suppressed by pairs of
    higher probability, so every confidence >= ``floor`` is exact. IoU uses the legacy +1 areas;
    ``inclusive``: an IoU equal to ``nms_thresh`` suppresses too (maskrcnn-benchmark's nms)."""
    r, c = torch.nonzero(probs >= floor, as_tuple=True)
    conf = torch.zeros(len(boxes), dtype=torch.float64, device=boxes.device)
    if r.numel() == 0:
        return conf
    s = probs[r, c].double()
    iou = math.nextafter(nms_thresh, 0.0) if inclusive else nms_thresh
    keep = grouped_nms(legacy_boxes(boxes[r].double()), s, owner[r] * probs.shape[1] + c, iou)
    return conf.scatter_reduce(0, r[keep], s[keep], reduce="amax")


def pick(conf: torch.Tensor, conf_thresh: float, min_boxes: int, max_boxes: int) -> torch.Tensor:
    """generate_tsv.py's choice from one image's confidences: those >= conf_thresh in index order, else the
    min/max most confident (numpy ``argsort()[::-1]`` order: ties go to the later index)."""
    above = torch.nonzero(conf >= conf_thresh).flatten()
    if min_boxes <= len(above) <= max_boxes:
        return above
    ranked = torch.sort(conf, stable=True).indices.flip(0)
    return ranked[:min_boxes] if len(above) < min_boxes else ranked[:max_boxes]


def select_regions(boxes: Sequence[torch.Tensor], probs: Sequence[torch.Tensor], *, nms_thresh: float,
                   conf_thresh: float, min_boxes: int, max_boxes: int, inclusive: bool = False) -> List[torch.Tensor]:
    """Indices of the kept proposals of each image (step 4 of the module docstring), all images at once.

    ``boxes[i] [R_i, 4]`` in original pixels, ``probs[i] [R_i, C]`` foreground class probabilities. The pairs
    at or above ``conf_thresh`` settle nearly every image; an image with fewer than ``min_boxes`` confident
    proposals is redone with a lower floor (down to every pair) until its ``min_boxes`` best are exact."""
    out: List[torch.Tensor] = [None] * len(boxes)  # type: ignore[list-item]
    todo = list(range(len(boxes)))
    for floor in (conf_thresh, conf_thresh / 10, conf_thresh / 100, 0.0):
        if not todo:
            break
        owner = torch.cat([torch.full((len(boxes[i]),), j, dtype=torch.int64, device=boxes[i].device)
                           for j, i in enumerate(todo)])
        conf = region_confidence(torch.cat([boxes[i] for i in todo]), torch.cat([probs[i] for i in todo]), owner,
                                 nms_thresh, floor, inclusive).split([len(boxes[i]) for i in todo])
        still = []
        for i, ci in zip(todo, conf):
            if int((ci >= floor).sum()) >= min(min_boxes, len(ci)) or floor == 0.0:
                out[i] = pick(ci, conf_thresh, min_boxes, max_boxes)
            else:
                still.append(i)
        todo = still
    return out


@register_extractor("vg-regions", VGRegionsConfig,
                    help="bottom-up-attention VG Faster R-CNN (R101 C4 + attributes): 10-100 regions x 2048, "
                         "classes, attributes, cls_prob")
class VGRegionsExtractor(Extractor):
    modality = "image"
    key_kind = "image_key"
    channels_last = False

    def __init__(self, config: VGRegionsConfig, name: str):
        super().__init__(config, name)
        self.weights_path = None
        self.load_report = None
        ckpt = None
        self.layout = "detectron2" if config.layout == "auto" else config.layout
        if config.weights is not None:
            self.weights_path = os.path.expanduser(str(config.weights))
            ckpt = read_checkpoint(self.weights_path)
            self.layout = detect_layout(ckpt, config.layout, self.weights_path)
        self.model = seeded(config.seed, lambda: VGDetector(config.arch(self.layout)))
        if ckpt is not None:
            self.load_report = load_checkpoint(self.model, ckpt, config.pixel_mean, self.weights_path)
        self.model.eval()
        self.rpn = config.rpn(self.layout)

    def schema(self) -> Dict[str, ArraySpec]:
        c = self.config
        k, d = c.max_boxes, self.model.arch.feature_dim
        out = {**self.region_schema(k, d),
               "class_ids": ArraySpec((k,), "int32", True), "class_scores": ArraySpec((k,), "float32", True),
               "attr_ids": ArraySpec((k,), "int32", True), "attr_scores": ArraySpec((k,), "float32", True),
               "pooled": self.fspec(d)}
        if c.cls_prob:
            out["cls_prob"] = self.fspec(k, c.num_classes + 1, per_item=True)
        return out

    def preprocessing(self) -> Dict[str, Any]:
        c = self.config
        return {"color": "BGR", "pixel_mean": list(c.pixel_mean), "pixel_std": None, "scale": "caffe_scale",
                "shorter_side": c.shorter_side, "max_side": c.max_side, "interpolation": "cv2-linear",
                "layout": self.layout, "decode": c.decode,
                "rpn": {"pre_nms_topk": c.pre_nms_topk, "post_nms_topk": c.post_nms_topk,
                        "nms_thresh": c.rpn_nms_thresh, "min_size": self.rpn.min_size},
                "roi": {"pool": "RoIPool", "output": 14, "spatial_scale": 1 / 16, "head": "res5-dilated",
                        "reduce": "mean"},
                "selection": {"nms": "per-class, legacy +1 IoU", "nms_thresh": c.nms_thresh,
                              "conf_thresh": c.conf_thresh, "min_boxes": c.min_boxes, "max_boxes": c.max_boxes},
                "weights_load": self.load_report.summary() if self.load_report else None}

    def preprocess(self, item: Image.Image) -> Dict[str, torch.Tensor]:
        """uint8 RGB [3, H, W] (scaled and normalised on the device) and the original (w, h)."""
        require_pil(item)
        _, (rw, rh) = caffe_scale(*item.size, self.config.shorter_side, self.config.max_side)
        if min(rw, rh) < MIN_SIDE:
            raise FeatstoreError(f"image {item.size[0]}x{item.size[1]} scales to {rw}x{rh}, thinner than the "
                                 f"detector's {MIN_SIDE} pixels; crop or pad such extreme aspect ratios")
        return {"image": TF.pil_to_tensor(item.convert("RGB")), "size": torch.tensor(item.size, dtype=torch.int64)}

    def collate(self, items):
        if not items:
            raise FeatstoreError("collate got an empty batch; the DataLoader must yield at least one item")
        return {"images": [it["image"] for it in items], "size": torch.stack([it["size"] for it in items])}

    def prepare(self, image: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """One uint8 RGB image -> the network input (BGR minus the means, caffe-scaled) and its scale."""
        h, w = image.shape[-2:]
        scale, (rw, rh) = caffe_scale(w, h, self.config.shorter_side, self.config.max_side)
        x = image.to(self.device, non_blocking=True).float().flip(0)  # RGB -> BGR
        x = x - torch.tensor(self.config.pixel_mean, device=self.device)[:, None, None]
        if scale != 1.0:  # cv2.resize(fx=fy=scale, INTER_LINEAR): rounded size, source pixel (d + 0.5) / scale - 0.5
            x = torch.ops.aten.upsample_bilinear2d.default(x[None], [rh, rw], False, scale, scale)[0]
        return x, scale

    def run_group(self, xs: List[torch.Tensor], scales: Sequence[float]) -> List[Dict[str, torch.Tensor]]:
        """Proposals (input pixels), their pooled features and probabilities for images padded together
        (``scales``: each input's size / its original's)."""
        sizes = [tuple(x.shape[-2:]) for x in xs]
        canvas = xs[0].new_zeros(len(xs), 3, max(h for h, _ in sizes), max(w for _, w in sizes))
        for i, x in enumerate(xs):
            canvas[i, :, : x.shape[1], : x.shape[2]] = x
        with self.autocast():
            c4, sizes16 = self.model.backbone(canvas, sizes)
            props = self.model.proposals(c4, sizes16, sizes, self.rpn, scales)
            pooled = self.model.region_features(c4, sizes16, props, self.config.roi_chunk)
            probs, attr = self.model.predict(pooled)
        n = [len(p) for p in props]
        return [{"proposals": p, "pooled": f.float(), "probs": pr, "attr": a}
                for p, f, pr, a in zip(props, pooled.split(n), probs.split(n), attr.split(n))]

    @torch.inference_mode()
    def detect(self, batch) -> List[Dict[str, torch.Tensor]]:
        """Per image: every proposal's ``boxes`` (original pixels), ``pooled``, ``probs`` [P, C+1] (classes,
        then background) and ``attr`` [P, A+1], plus ``keep`` (the selected rows)."""
        prepared = [self.prepare(img) for img in batch["images"]]
        dets: List[Dict[str, torch.Tensor]] = [None] * len(prepared)  # type: ignore[list-item]
        for portrait in (False, True):
            rows = [i for i, (x, _) in enumerate(prepared) if (x.shape[1] > x.shape[2]) == portrait]
            if rows:
                group = self.run_group([prepared[i][0] for i in rows], [prepared[i][1] for i in rows])
                for i, d in zip(rows, group):
                    d["boxes"] = d.pop("proposals") / prepared[i][1]
                    dets[i] = d
        c = self.config
        keeps = select_regions([d["boxes"] for d in dets], [d["probs"][:, :c.num_classes] for d in dets],
                               nms_thresh=c.nms_thresh, conf_thresh=c.conf_thresh, min_boxes=c.min_boxes,
                               max_boxes=c.max_boxes, inclusive=self.layout == "bua-caffe")
        for d, k in zip(dets, keeps):
            d["keep"] = k
        return dets

    @torch.inference_mode()
    def forward(self, batch) -> Dict[str, np.ndarray]:
        dets = self.detect(batch)
        rows = [self._row(d) for d in dets]
        out = {name: np.stack([r[name] for r in rows]) for name in rows[0]}
        for name in ("regions", "pooled", "cls_prob"):  # the storage dtype (float16 overflow is an error)
            if name in out:
                out[name] = self.out(torch.from_numpy(out[name]))
        out["image_size"] = self.out_int(batch["size"])
        return out

    def _row(self, d: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        """One image's selected regions, zero-padded to ``max_boxes`` (float32 / int32 numpy)."""
        c = self.config
        k, keep = c.max_boxes, d["keep"]
        n = len(keep)
        probs, attr = d["probs"][keep], d["attr"][keep]
        cls_scores, cls_ids = probs[:, : c.num_classes].max(-1)
        attr_scores, attr_ids = attr[:, : c.num_attrs].max(-1)
        feats = d["pooled"][keep]

        def pad(t: torch.Tensor, dtype=np.float32) -> np.ndarray:
            a = np.zeros((k,) + tuple(t.shape[1:]), dtype=dtype)
            a[:n] = t.detach().cpu().numpy()
            return a

        row = {"regions": pad(feats), "count": np.int32(n), "boxes": pad(d["boxes"][keep]),
               "class_ids": pad(cls_ids, np.int32), "class_scores": pad(cls_scores),
               "attr_ids": pad(attr_ids, np.int32), "attr_scores": pad(attr_scores),
               "pooled": (feats.mean(0) if n else feats.new_zeros(feats.shape[1])).cpu().numpy()}
        if c.cls_prob:  # caffe order: background first
            row["cls_prob"] = pad(torch.cat([probs[:, c.num_classes:], probs[:, : c.num_classes]], 1))
        return row
