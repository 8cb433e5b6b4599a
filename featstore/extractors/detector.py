"""``detector``: Faster R-CNN (torchvision ``fasterrcnn_resnet50_fpn``) detections and their box features.

Per image: the model's own transform (resize to ``min_size``/``max_size``, normalise; then padded to a fixed
canvas per orientation, so a row never depends on the rest of its batch), backbone + FPN, RPN
proposals, box head -> class scores and class-specific boxes (decoded, clipped, background dropped, tiny
boxes removed). Selection (``select_detections``), all on the model's device:

1. the ``pre_nms_topk`` highest (box, class) scores are candidates (bounds the NMS cost);
2. class-wise NMS with ``torchvision.ops.batched_nms`` (IoU ``nms_thresh``), result sorted by score;
3. keep every detection with score >= ``score_thresh``, but at least ``min_boxes`` (the next best
   detections below the threshold fill up, so a low-confidence image still has regions) and at most
   ``max_boxes``.

Features of a kept box (``region_features``):
  * ``"box_head"`` (default): the model's ``roi_heads.box_roi_pool`` (MultiScaleRoIAlign 7x7) + ``box_head``
    (TwoMLPHead) output on that box: 1024-d;
  * ``"c5"``: ``torchvision.ops.roi_align`` of the box on the ResNet body's last stage (C5 = layer4, 2048
    channels, stride 32, before the FPN; output ``c5_output`` x ``c5_output`` = 7x7, sampling_ratio 2,
    aligned=True), mean-pooled: 2048-d, the size Facebook's ViLBERT / VisualBERT checkpoints embed. The
    1024-d box-head vectors are stored beside them as ``box_features``.
This is torchvision's COCO detector (91 classes, ResNet-50 FPN): its boxes and features are COCO's, not
the Visual Genome bottom-up-attention regions ViLBERT / VisualBERT were pretrained on (``vg-regions``
computes those; an MMF ``detectron.lmdb`` imports with ``featstore import detectron.lmdb --format mmf-lmdb``).

Output (K = max_boxes, D = 1024 or 2048): ``regions [N, K, D]``, ``count``, ``boxes [N, K, 4]`` (float32,
original pixels), ``class_ids`` int32 [N, K], ``scores`` float32 [N, K], ``image_size`` int32 [N, 2],
``pooled`` (mean of the kept regions), with c5 also ``box_features [N, K, 1024]``. A box may appear once
per class (class-wise NMS, as torchvision's detector itself outputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, boxes as box_ops, roi_align

from ..errors import FeatstoreError
from ..store.spec import ArraySpec
from .base import BaseConfig, Extractor, check_box_counts, register_extractor, seeded
from .images import require_pil
from .weights import DEMO, load_into, load_report, resolve_weights


REGION_FEATURES = ("box_head", "c5")


@dataclass
class DetectorConfig(BaseConfig):
    num_classes: int = 91
    min_size: int = 800
    max_size: int = 1333
    max_boxes: int = 36
    min_boxes: int = 10
    score_thresh: float = 0.2
    nms_thresh: float = 0.5
    pre_nms_topk: int = 3000
    region_features: str = "box_head"
    c5_output: int = 7

    def __post_init__(self):
        super().__post_init__()
        if self.region_features not in REGION_FEATURES:
            raise FeatstoreError(f"region_features={self.region_features!r} is unknown; use one of "
                                 f"{', '.join(REGION_FEATURES)}")
        if self.c5_output < 1:
            raise FeatstoreError(f"c5_output={self.c5_output} is invalid; use a positive size (7 by default)")
        if self.weights == DEMO:
            raise FeatstoreError("the detector has no demo weights; pass --weights with a torchvision "
                                 "fasterrcnn_resnet50_fpn state dict")
        check_box_counts(self.min_boxes, self.max_boxes)
        if not 0 <= self.score_thresh <= 1 or not 0 < self.nms_thresh <= 1:
            raise FeatstoreError(f"score_thresh={self.score_thresh} / nms_thresh={self.nms_thresh} must be in [0, 1]")


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *, score_thresh: float,
                      nms_thresh: float, min_boxes: int, max_boxes: int, pre_nms_topk: int) -> torch.Tensor:
    """Indices into the flat candidates (``boxes [M, 4]``, ``scores [M]``, ``labels [M]``) of the kept
    detections, sorted by decreasing score (steps 1-3 of the module docstring)."""
    order = torch.argsort(scores, descending=True)[:pre_nms_topk]
    keep = order[batched_nms(boxes[order], scores[order], labels[order], nms_thresh)]
    n_above = int((scores[keep] >= score_thresh).sum())
    n = min(max(n_above, min_boxes), max_boxes, keep.numel())
    return keep[:n]


@register_extractor("detector", DetectorConfig,
                    help="Faster R-CNN R50-FPN (COCO) detections: top-K boxes, 1024-d box-head or 2048-d C5 features, classes")
class DetectorExtractor(Extractor):
    modality = "image"
    key_kind = "image_key"
    channels_last = False
    _compile_targets = ()

    def __init__(self, config: DetectorConfig, name: str):
        super().__init__(config, name)
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        c = config
        self.model = seeded(c.seed, lambda: fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=c.num_classes, min_size=c.min_size,
            max_size=c.max_size))
        self.weights_path = None
        if c.weights is not None:
            self.weights_path = resolve_weights(c.weights, "file")
            loaded = load_into(self.model, self.weights_path, f"fasterrcnn_resnet50_fpn with {c.num_classes} classes")
            self.weights_load = load_report(self.model, self.computed_modules(), loaded)
        self.model.eval()
        self.box_dim = self.model.roi_heads.box_head.fc7.out_features
        self.c5 = c.region_features == "c5"
        self.dim = self.model.backbone.body.layer4[-1].conv3.out_channels if self.c5 else self.box_dim

    def computed_modules(self) -> Tuple[torch.nn.Module, ...]:
        """The submodules ``_detect_group`` runs, whose tensors the load report counts as used: they hold
        all of torchvision's detector (``transform`` holds none), so ``weights_load`` is ``{"used": N,
        "unused": {}}`` for a file."""
        m, rh = self.model, self.model.roi_heads
        return m.backbone.body, m.backbone.fpn, m.rpn, rh.box_roi_pool, rh.box_head, rh.box_predictor

    def schema(self):
        k, d = self.config.max_boxes, self.dim
        s = {**self.region_schema(k, d), "class_ids": ArraySpec((k,), "int32", True),
             "scores": ArraySpec((k,), "float32", True), "pooled": self.fspec(d)}
        if self.c5:
            s["box_features"] = self.fspec(k, self.box_dim, per_item=True)
        return s

    def preprocessing(self) -> Dict[str, Any]:
        t = self.model.transform
        c = self.config
        return {"min_size": c.min_size, "max_size": c.max_size, "mean": list(t.image_mean), "std": list(t.image_std),
                "selection": {"score_thresh": c.score_thresh, "nms_thresh": c.nms_thresh, "min_boxes": c.min_boxes,
                              "max_boxes": c.max_boxes, "pre_nms_topk": c.pre_nms_topk, "nms": "class-wise"},
                "region_features": (c.region_features if not self.c5 else
                                    {"c5": {"output": c.c5_output, "sampling_ratio": 2, "aligned": True,
                                            "pool": "mean"}})}

    def preprocess(self, item: Image.Image) -> Dict[str, torch.Tensor]:
        """uint8 [3, H, W] (the model's transform resizes and normalises on the device) and (w, h)."""
        require_pil(item)
        return {"image": TF.pil_to_tensor(item.convert("RGB")), "size": torch.tensor(item.size, dtype=torch.int64)}

    def collate(self, items):
        if not items:
            raise FeatstoreError("collate got an empty batch; the DataLoader must yield at least one item")
        return {"images": [it["image"] for it in items], "size": torch.stack([it["size"] for it in items])}

    @torch.inference_mode()
    def detect(self, batch) -> List[Dict[str, torch.Tensor]]:
        """Per image: ``boxes`` [n, 4] in the model's resized coordinates, ``scores``, ``labels``,
        ``features`` [n, D] (the ``regions`` vectors; with c5 also ``box_features`` [n, 1024]), ``resized`` (h, w)."""
        images = [img.to(self.device, non_blocking=True).float() / 255.0 for img in batch["images"]]
        with self.autocast():
            il, _ = self.model.transform(images)  # resized + normalised, padded to the batch maximum
        out: List[Optional[Dict[str, torch.Tensor]]] = [None] * len(images)
        for portrait in (False, True):
            rows = [i for i, (h, w) in enumerate(il.image_sizes) if (h > w) == portrait]
            if not rows:
                continue
            ch, cw = self.canvas(portrait)
            canvas = il.tensors.new_zeros(len(rows), 3, ch, cw)
            for j, i in enumerate(rows):
                h, w = il.image_sizes[i]
                canvas[j, :, :h, :w] = il.tensors[i, :, :h, :w]
            for i, det in zip(rows, self._detect_group(ImageList(canvas, [il.image_sizes[i] for i in rows]))):
                out[i] = det
        return out

    def canvas(self, portrait: bool) -> Tuple[int, int]:
        """(height, width) every resized image of one orientation is padded to (multiples of 32).

        Padding to the batch's largest image (torchvision's default) would let the padding the backbone sees
        depend on the other images in the batch; with fixed canvases a row depends only on its own image."""
        s, m = (-(-int(v) // 32) * 32 for v in (self.config.min_size, self.config.max_size))
        return (m, s) if portrait else (s, m)

    def _detect_group(self, il) -> List[Dict[str, torch.Tensor]]:
        m, c = self.model, self.config
        rh = m.roi_heads
        with self.autocast():
            body = m.backbone.body(il.tensors)  # what m.backbone(x) computes: body, then FPN
            feats = m.backbone.fpn(body)
            proposals, _ = m.rpn(il, feats)
            x = rh.box_head(rh.box_roi_pool(feats, proposals, il.image_sizes))
            logits, reg = rh.box_predictor(x)
        pred = rh.box_coder.decode(reg.float(), proposals)  # [sumP, C, 4]
        probs = F.softmax(logits.float(), -1)
        out, chosen = [], []
        for boxes, sc, size in zip(pred.split([len(p) for p in proposals]), probs.split([len(p) for p in proposals]),
                                   il.image_sizes):
            boxes = box_ops.clip_boxes_to_image(boxes, size)
            labels = torch.arange(sc.shape[1], device=sc.device).expand_as(sc)
            boxes, sc, labels = boxes[:, 1:].reshape(-1, 4), sc[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            ok = box_ops.remove_small_boxes(boxes, 1e-2)
            boxes, sc, labels = boxes[ok], sc[ok], labels[ok]
            keep = select_detections(boxes, sc, labels, score_thresh=c.score_thresh, nms_thresh=c.nms_thresh,
                                     min_boxes=c.min_boxes, max_boxes=c.max_boxes, pre_nms_topk=c.pre_nms_topk)
            chosen.append(boxes[keep])
            out.append({"boxes": boxes[keep], "scores": sc[keep], "labels": labels[keep], "resized": size})
        with self.autocast():
            f = rh.box_head(rh.box_roi_pool(feats, chosen, il.image_sizes)).float()
        for o, fi in zip(out, f.split([len(b) for b in chosen])):
            o["features"] = fi
        if self.c5:
            c5 = body[list(body)[-1]]
            for o, fi in zip(out, self._c5_features(c5, chosen, il.tensors.shape[-1]).split([len(b) for b in chosen])):
                o["box_features"], o["features"] = o["features"], fi
        return out

    def _c5_features(self, c5: torch.Tensor, boxes: List[torch.Tensor], canvas_width: int) -> torch.Tensor:
        """Each kept box (resized-image pixels) ROI-aligned on the C5 map and mean-pooled: [sum K, 2048]."""
        k = self.config.c5_output
        with self.autocast():
            r = roi_align(c5, [b.to(c5.dtype) for b in boxes], output_size=k, spatial_scale=c5.shape[-1] / canvas_width,
                          sampling_ratio=2, aligned=True)
        return r.float().mean(dim=(2, 3))

    @torch.inference_mode()
    def forward(self, batch) -> Dict[str, np.ndarray]:
        k, n = self.config.max_boxes, len(batch["images"])
        dets = self.detect(batch)
        regions = torch.zeros(n, k, self.dim)
        boxes = torch.zeros(n, k, 4)
        cls = torch.zeros(n, k, dtype=torch.int32)
        scores = torch.zeros(n, k)
        count = np.zeros(n, dtype=np.int32)
        pooled = torch.zeros(n, self.dim)
        box_features = torch.zeros(n, k, self.box_dim) if self.c5 else None
        for i, (d, (w, h)) in enumerate(zip(dets, batch["size"].tolist())):
            r = len(d["boxes"])
            if box_features is not None:
                box_features[i, :r] = d["box_features"].cpu()
            rh_, rw_ = d["resized"]
            scale = torch.tensor([w / rw_, h / rh_, w / rw_, h / rh_])
            regions[i, :r] = d["features"].cpu()
            boxes[i, :r] = d["boxes"].cpu() * scale
            cls[i, :r] = d["labels"].cpu().int()
            scores[i, :r] = d["scores"].cpu()
            count[i] = r
            if r:
                pooled[i] = d["features"].cpu().mean(0)
        res = {"regions": self.out(regions), "count": count, "boxes": boxes.numpy(), "class_ids": cls.numpy(),
               "scores": scores.numpy().astype(np.float32), "image_size": self.out_int(batch["size"]),
               "pooled": self.out(pooled)}
        if box_features is not None:
            res["box_features"] = self.out(box_features)
        return res
