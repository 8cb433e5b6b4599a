"""``roi``: bottom-up-attention-style region features from fixed multi-scale proposals (no detector).

Preprocessing: resize keeping the aspect ratio so the shorter side is ``shorter_side`` (600) unless the
longer side would exceed ``max_side`` (1000), bilinear antialiased, backbone mean/std; each image is
zero-padded at the bottom/right to a fixed canvas for its orientation (``shorter_side x max_side`` for
landscape and square images, ``max_side x shorter_side`` for portrait ones), and the two orientations
run as two sub-batches (on a CPU, each in micro-batches of at most ``CPU_MICRO_BATCH_PIXELS`` pixels:
large canvases one at a time, where a big batch is memory-bound; the rows are the same). Padding to the
batch's largest image instead would let the padding (which the convolutions see at the borders) depend on
the other images in the batch, so the same image would get different features at another batch size;
with fixed canvases a row depends only on its own image.

Proposals (``geometry.multiscale_tiles`` on the ORIGINAL image, in the order of ``scales``, row-major
within a scale; box side ``s*W x s*H``, stride half a box, an extra edge-flush box where the steps do not
end at the edge), cut to ``num_regions`` by ``geometry.balanced_tiles``: coarse scales first, each whole
while it fits; the scale that does not fit keeps a subset that still covers the whole image (its abutting
tiling first, then tiles centred on that tiling's inner corners, evenly spread). Default scales
(1.0, 0.75, 0.5, 0.25) give 1 + 4 + 9 + 49 = 63 boxes; the default 36 are the whole image, the 2x2 and 3x3
tilings and 22 quarter-size tiles: the 4x4 abutting tiling plus 6 tiles centred at x in {1/4, 3/4},
y in {1/4, 1/2, 3/4}, so the bottom of the image (where meme captions sit) has fine regions as the top
does. ``num_regions`` must leave each kept scale its covering tiles (defaults: 1, 5, 9-14 or 30-63);
pass 63 for all of them.

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
from torchvision.ops import roi_align

from ..errors import FeatstoreError
from .base import BaseConfig, register_extractor
from .images import require_pil
from .cnn import CNNExtractor
from .geometry import balanced_counts, balanced_tiles, resize_keep_aspect
from .grid import pil_to_normalized
from .pixels import ResizeRecipe
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
        ok = balanced_counts(self.scales)
        if not any(lo <= self.num_regions <= hi for lo, hi in ok):
            choices = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ok)
            raise FeatstoreError(f"num_regions={self.num_regions} is invalid for scales {self.scales}: every kept "
                                 f"scale must cover the whole image; choose one of {choices}")
        if self.shorter_side < 32 or self.max_side < self.shorter_side:
            raise FeatstoreError(f"shorter_side={self.shorter_side}, max_side={self.max_side} are invalid; "
                                 "use 32 <= shorter_side <= max_side")

    def resize_recipe(self) -> ResizeRecipe:
        return ResizeRecipe("keep_aspect", self.shorter_side, "bilinear", self.max_side)


@register_extractor("roi", RoiConfig, help="RoIAlign on a CNN stride-16 map over multi-scale grid proposals (36x2048)")
class RoiExtractor(CNNExtractor):
    def schema(self):
        r, d = self.config.num_regions, self.backbone.channels
        return {**self.region_schema(r, d), "pooled": self.fspec(d)}

    def preprocessing(self) -> Dict[str, Any]:
        c = self.config
        return {"resize_shorter": c.shorter_side, "max_side": c.max_side, "keep_aspect": True,
                "interpolation": "bilinear-antialias", "pad": "orientation-canvas", "mean": list(self.backbone.mean),
                "std": list(self.backbone.std), "proposals": "balanced_tiles", "scales": list(c.scales),
                "roi_align": {"output": c.roi_output, "spatial_scale": 1 / 16, "sampling_ratio": c.sampling_ratio,
                              "aligned": True}}

    def proposals(self, width: int, height: int) -> torch.Tensor:
        """The ``num_regions`` balanced multi-scale tiles of a ``width x height`` image, float32 [R, 4]."""
        return balanced_tiles(float(width), float(height), self.config.scales, self.config.num_regions)

    def preprocess(self, item) -> Dict[str, torch.Tensor]:
        """A PIL image -> ``image`` normalised float32 [3, rh, rw]; a ``ResizedImage`` (``resize_recipe()``)
        -> ``image`` its uint8 [rh, rw, 3] pixels, normalised in ``forward`` (same numbers)."""
        resized = self.resized_item(item)
        if resized is not None:
            return resized
        w, h = require_pil(item).size
        rw, rh = resize_keep_aspect(w, h, self.config.shorter_side, self.config.max_side)
        x = pil_to_normalized(item, (rw, rh), self.backbone.mean, self.backbone.std)
        return {"image": x, "size": torch.tensor([w, h], dtype=torch.int64)}

    def canvas(self, portrait: bool) -> Tuple[int, int]:
        """(height, width) every image of one orientation is padded to."""
        s, m = self.config.shorter_side, self.config.max_side
        return (m, s) if portrait else (s, m)

    def collate(self, items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Zero-pad each image to its orientation's canvas: ``landscape [Nl, 3, S, M]`` and
        ``portrait [Np, 3, M, S]`` (S = shorter_side, M = max_side), ``portrait_mask`` bool [N] (row order),
        ``resized`` int64 [N, 2] (w, h before padding), ``size`` int64 [N, 2] (original w, h). uint8 pixels
        ([h, w, 3], from a ``ResizedImage``) give uint8 canvases ``[n, S, M, 3]`` / ``[n, M, S, 3]`` instead,
        normalised (and their padding zeroed) in ``forward``."""
        if not items:
            raise FeatstoreError("collate got an empty batch; the DataLoader must yield at least one item")
        pixels = items[0]["image"].dtype == torch.uint8
        if any((it["image"].dtype == torch.uint8) != pixels for it in items):
            raise FeatstoreError("collate got PIL-preprocessed and resized-pixel items in one batch; use one kind")
        hw = [tuple(it["image"].shape[:2] if pixels else it["image"].shape[1:]) for it in items]
        portrait = torch.tensor([h > w for h, w in hw], dtype=torch.bool)
        out = {}
        for name, is_p in (("landscape", False), ("portrait", True)):
            group = [it["image"] for it, p in zip(items, portrait.tolist()) if p == is_p]
            ch, cw = self.canvas(is_p)
            if pixels:
                img = torch.zeros(len(group), ch, cw, 3, dtype=torch.uint8)
                for i, x in enumerate(group):
                    img[i, : x.shape[0], : x.shape[1]] = x
            else:
                img = torch.zeros(len(group), 3, ch, cw)
                for i, x in enumerate(group):
                    img[i, :, : x.shape[1], : x.shape[2]] = x
            out[name] = img
        resized = torch.tensor([[w, h] for h, w in hw], dtype=torch.int64)
        return dict(out, portrait_mask=portrait, resized=resized, size=torch.stack([it["size"] for it in items]))

    # On a CPU the convolutions over a batch of large canvases are memory-bound: ResNet-50 at a 400 x 667
    # canvas measured 1.23-1.37 img/s a batch of 1, 1.19-1.22 at 4, 1.03-1.12 at 8 and 0.95-0.99 at 32
    # (benchmarks/RESULTS.md, session 6). So a CPU forward runs the canvases in micro-batches of at most
    # this many pixels (at least one canvas); small canvases still go many at a time. On CUDA: one batch.
    CPU_MICRO_BATCH_PIXELS = 300_000

    def _micro_batches(self, group: List[int], portrait: bool) -> List[Tuple[int, List[int]]]:
        """(offset in the orientation's canvas tensor, batch rows) of each forward over ``group``."""
        if not group:
            return []
        ch, cw = self.canvas(portrait)
        size = len(group) if self.device.type != "cpu" else max(1, self.CPU_MICRO_BATCH_PIXELS // (ch * cw))
        return [(i, group[i:i + size]) for i in range(0, len(group), size)]

    def _region_vectors(self, canvases: torch.Tensor, valid: torch.Tensor, boxes: List[torch.Tensor]) -> torch.Tensor:
        """[n, R, D] region vectors of n canvases of one orientation (``valid``: their (w, h) before padding;
        ``boxes``: each one's proposals in resized pixels)."""
        c = self.config
        with self.autocast():
            fmap = self.backbone.stem16(self.image_input(canvases, self.backbone.mean, self.backbone.std, valid))
            rois = roi_align(fmap.float(), [b.to(self.device) for b in boxes], output_size=c.roi_output,
                             spatial_scale=1 / 16, sampling_ratio=c.sampling_ratio, aligned=True)
            feats = self.backbone.tail(self.to_device(rois.to(fmap.dtype)))
        return feats.float().mean(dim=(2, 3)).reshape(len(boxes), c.num_regions, -1)

    @torch.inference_mode()
    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        c = self.config
        boxes_orig, boxes_resized = [], []
        for (w, h), (rw, rh) in zip(batch["size"].tolist(), batch["resized"].tolist()):
            b = self.proposals(w, h)
            boxes_orig.append(b)
            boxes_resized.append(b * torch.tensor([rw / w, rh / h, rw / w, rh / h]))
        n, r = len(boxes_orig), c.num_regions
        portrait = batch["portrait_mask"].tolist()
        regions = None
        for name, is_p in (("landscape", False), ("portrait", True)):
            group = [i for i, p in enumerate(portrait) if p == is_p]
            for start, rows in self._micro_batches(group, is_p):
                vec = self._region_vectors(batch[name][start:start + len(rows)], batch["resized"][torch.tensor(rows)],
                                           [boxes_resized[i] for i in rows])
                if regions is None:
                    regions = vec.new_zeros(n, r, vec.shape[-1])
                regions[torch.tensor(rows, device=vec.device)] = vec
        return {"regions": self.out(regions), "count": np.full(n, r, dtype=np.int32),
                "boxes": torch.stack(boxes_orig).numpy(), "image_size": self.out_int(batch["size"]),
                "pooled": self.out(regions.mean(dim=1))}
