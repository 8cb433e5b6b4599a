"""``roi``: bottom-up-attention-style region features from fixed multi-scale proposals (no detector).

Preprocessing: resize keeping the aspect ratio so the shorter side is ``shorter_side`` (600) unless the
longer side would exceed ``max_side`` (1000), bilinear antialiased, backbone mean/std; a batch is
zero-padded at the bottom/right to its largest image.

Proposals (``geometry.multiscale_tiles`` on the ORIGINAL image, in the order of ``scales``, row-major
within a scale; box side ``s*W x s*H``, stride half a box, an extra edge-flush box where the steps do not
end at the edge), the first ``num_regions`` kept. Default scales (1.0, 0.75, 0.5, 0.25) give
1 + 4 + 9 + 49 = 63 boxes: the first 36 are the whole image, the 2x2 and 3x3 tilings and the first 22
quarter-size tiles (rows 0-2 and the first tile of row 3). Coarse scales come first so truncation never
drops the global views; pass ``num_regions=63`` for all of them.

Features: ``torchvision.ops.roi_align`` (output ``roi_output`` = 14x14, spatial_scale 1/16, sampling_ratio 2,
aligned=True) on the stride-16 map (ResNet layer3), then the remaining stage (layer4, 7x7), then the mean
over space: one vector per region (2048-d for ResNet-152).

Output: ``regions [N, R, D]``, ``count`` (= R), ``boxes [N, R, 4]`` (float32, original pixels),
``image_size`` int32 [N, 2], ``pooled [N, D]`` (mean of the regions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from PIL import Image
from torchvision.ops import roi_align

from ..errors import FeatstoreError
from ..store.spec import ArraySpec
from .base import BaseConfig, register_extractor
from .cnn import CNNExtractor
from .geometry import multiscale_tiles, resize_keep_aspect
from .grid import pil_to_normalized
from .weights import DEMO, DEMO_IMAGE_BACKBONE


@dataclass
class RoiConfig(BaseConfig):
    backbone: str = "resnet152"
    shorter_side: int = 600
    max_side: int = 1000
    scales: Tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    num_regions: int = 36
    roi_output: int = 14
    sampling_ratio: int = 2

    def __post_init__(self):
        super().__post_init__()
        if self.weights == DEMO and self.backbone == "resnet152":
            self.backbone = DEMO_IMAGE_BACKBONE
        if not self.scales or any(not 0 < float(s) <= 1 for s in self.scales):
            raise FeatstoreError(f"scales={self.scales!r} are invalid; give fractions of the image side in (0, 1]")
        self.scales = tuple(float(s) for s in self.scales)
        total = len(multiscale_tiles(100.0, 100.0, self.scales))
        if not 1 <= self.num_regions <= total:
            raise FeatstoreError(f"num_regions={self.num_regions} is invalid; scales {self.scales} give {total} "
                                 f"proposals, choose 1..{total}")
        if self.shorter_side < 32 or self.max_side < self.shorter_side:
            raise FeatstoreError(f"shorter_side={self.shorter_side}, max_side={self.max_side} are invalid; "
                                 "use 32 <= shorter_side <= max_side")


@register_extractor("roi", RoiConfig, help="RoIAlign on a CNN stride-16 map over multi-scale grid proposals (36x2048)")
class RoiExtractor(CNNExtractor):
    def schema(self):
        r, d = self.config.num_regions, self.backbone.channels
        return {"regions": self.fspec(r, d, per_item=True), "count": ArraySpec((), "int32"),
                "boxes": ArraySpec((r, 4), "float32", True), "image_size": ArraySpec((2,), "int32"),
                "pooled": self.fspec(d)}

    def preprocessing(self) -> Dict[str, Any]:
        c = self.config
        return {"resize_shorter": c.shorter_side, "max_side": c.max_side, "keep_aspect": True,
                "interpolation": "bilinear-antialias", "mean": list(self.backbone.mean),
                "std": list(self.backbone.std), "proposals": "multiscale_tiles", "scales": list(c.scales),
                "roi_align": {"output": c.roi_output, "spatial_scale": 1 / 16, "sampling_ratio": c.sampling_ratio,
                              "aligned": True}}

    def proposals(self, width: int, height: int) -> torch.Tensor:
        """The first ``num_regions`` multi-scale tiles of a ``width x height`` image, float32 [R, 4]."""
        return multiscale_tiles(float(width), float(height), self.config.scales)[: self.config.num_regions]

    def preprocess(self, item: Image.Image) -> Dict[str, torch.Tensor]:
        w, h = item.size
        rw, rh = resize_keep_aspect(w, h, self.config.shorter_side, self.config.max_side)
        x = pil_to_normalized(item, (rw, rh), self.backbone.mean, self.backbone.std)
        return {"image": x, "size": torch.tensor([w, h], dtype=torch.int64)}

    def collate(self, items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Zero-pad images to the batch's largest height/width: ``image [N, 3, Hmax, Wmax]``,
        ``resized`` int64 [N, 2] (w, h before padding), ``size`` int64 [N, 2] (original w, h)."""
        if not items:
            raise FeatstoreError("collate got an empty batch; the DataLoader must yield at least one item")
        hmax = max(it["image"].shape[1] for it in items)
        wmax = max(it["image"].shape[2] for it in items)
        img = torch.zeros(len(items), 3, hmax, wmax)
        for i, it in enumerate(items):
            _, h, w = it["image"].shape
            img[i, :, :h, :w] = it["image"]
        resized = torch.tensor([[it["image"].shape[2], it["image"].shape[1]] for it in items], dtype=torch.int64)
        return {"image": img, "resized": resized, "size": torch.stack([it["size"] for it in items])}

    @torch.inference_mode()
    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        c = self.config
        boxes_orig, boxes_resized = [], []
        for (w, h), (rw, rh) in zip(batch["size"].tolist(), batch["resized"].tolist()):
            b = self.proposals(w, h)
            boxes_orig.append(b)
            boxes_resized.append(b * torch.tensor([rw / w, rh / h, rw / w, rh / h]))
        with self.autocast():
            fmap = self.backbone.stem16(self.to_device(batch["image"]))
            rois = roi_align(fmap.float(), [b.to(self.device) for b in boxes_resized], output_size=c.roi_output,
                             spatial_scale=1 / 16, sampling_ratio=c.sampling_ratio, aligned=True)
            feats = self.backbone.tail(self.to_device(rois.to(fmap.dtype)))
        vec = feats.float().mean(dim=(2, 3))  # [N*R, D]
        n, r = len(boxes_orig), c.num_regions
        regions = vec.reshape(n, r, -1)
        return {"regions": self.out(regions), "count": np.full(n, r, dtype=np.int32),
                "boxes": torch.stack(boxes_orig).numpy(), "image_size": self.out_int(batch["size"]),
                "pooled": self.out(regions.mean(dim=1))}
