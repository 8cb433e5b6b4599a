"""``dinov2`` and ``dinov2-multilayer``: DINOv2 ViT patch tokens reduced to R region vectors.

Preprocessing: the whole image resized to ``image_size x image_size`` (518 default; bicubic, antialiased;
NOT the stock processor's 224 centre crop), ImageNet mean/std. With patch size P the patch grid is
g x g (g = image_size / P, 37 at 518/14).

Reduction of the [g, g, D] patch tokens to R regions (``reduce``, ``patch_regions``, shared with
``clip-image``):
  * ``"interp"`` (default): bilinear resampling of the grid to r x r (R = r*r must be a square;
    align_corners=False; ``antialias=True`` by default, so every patch contributes, as in a triangle-filter
    downscale); regions row-major; ``boxes`` (original-image pixels) the area of the patches that
    contribute to each region (``patch_regions.interp_support``: the resampling's nonzero weights, reaching
    about half a cell past the region's r x r cell on each side with antialias; recorded in
    ``preprocessing()`` as ``region_boxes``);
  * ``"attention"``: the R patches with the highest CLS attention in the last layer (attention averaged over
    heads; the model runs with ``attn_implementation="eager"``), in decreasing attention order; ``boxes``
    those patches' cells in the original image.

``dinov2``: the last layer (``last_hidden_state``, after the final LayerNorm); ``pooled`` = its CLS token.
``dinov2-multilayer``: ``hidden_states[k]`` for k in ``layers`` (hidden_states[0] is the embedding output),
each passed through the model's final LayerNorm when ``apply_layernorm`` (as DINOv2's own
``get_intermediate_layers(norm=True)``), each reduced with the same R positions, concatenated on the
feature axis: D = len(layers) * hidden (4 x 1024 = 4096 for ViT-L); ``pooled`` = the layers' CLS tokens
concatenated the same way.

Output: ``regions [N, R, D]``, ``count`` (= R), ``boxes [N, R, 4]`` (float32), ``image_size`` int32 [N, 2],
``pooled [N, D]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torchvision.transforms.functional as TF

from ..errors import FeatstoreError
from .base import BaseConfig, Extractor, register_extractor, seeded
from .hf import check_loading
from .images import require_pil
from .cnn import IMAGENET_MEAN, IMAGENET_STD
from .pixels import ResizeRecipe
from .patch_regions import attention_indices, check_fits_grid, check_region_options, reduce_patches, region_boxes
from .weights import DEMO, resolve_weights

@dataclass
class Dinov2Config(BaseConfig):
    """weights: a Dinov2Model folder or a cached model id; None = random ViT-L/14 (tests only)."""

    weights: Optional[str] = "facebook/dinov2-large"
    image_size: int = 518
    num_regions: int = 36
    reduce: str = "interp"
    antialias: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.weights == DEMO:
            raise FeatstoreError("dinov2 has no demo weights; pass --weights with a Dinov2Model folder "
                                 "(e.g. `huggingface-cli download facebook/dinov2-large`)")
        check_region_options(self.num_regions, self.reduce)

    def resize_recipe(self) -> ResizeRecipe:
        return ResizeRecipe("square", self.image_size, "bicubic")


@dataclass
class Dinov2MultiConfig(Dinov2Config):
    layers: Tuple[int, ...] = (6, 12, 18, 24)
    apply_layernorm: bool = True


def _random_vit_large() -> "torch.nn.Module":
    from transformers import Dinov2Config as HFConfig, Dinov2Model

    return Dinov2Model(HFConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                                image_size=518, mlp_ratio=4))


class _Dinov2Base(Extractor):
    modality = "image"
    key_kind = "image_key"
    _compile_targets = ("model",)
    multilayer = False

    def __init__(self, config: Dinov2Config, name: str):
        super().__init__(config, name)
        from transformers import Dinov2Model

        attn = "eager" if config.reduce == "attention" else "sdpa"
        self.weights_path = None
        if config.weights is None:
            self.model = seeded(config.seed, _random_vit_large)
            self.model.config._attn_implementation = attn
        else:
            self.weights_path = resolve_weights(config.weights, "dir")
            try:
                self.model, info = Dinov2Model.from_pretrained(str(self.weights_path), attn_implementation=attn,
                                                               output_loading_info=True)
            except (OSError, ValueError) as e:
                raise FeatstoreError(f"weights {str(self.weights_path)!r} are not a Dinov2Model folder "
                                     f"({type(e).__name__}); pass a DINOv2 checkpoint folder") from e
            # mask_token is only used for masked-image pretraining, never here
            self.weights_load = check_loading(info, self.weights_path, "Dinov2Model", may_miss=("embeddings.mask_token",))
        self.model.eval()
        hf = self.model.config
        self.patch = int(hf.patch_size)
        self.hidden = int(hf.hidden_size)
        if config.image_size % self.patch:
            raise FeatstoreError(f"image_size={config.image_size} is not a multiple of the patch size {self.patch}; "
                                 f"use e.g. {self.patch * max(1, round(config.image_size / self.patch))}")
        self.grid = config.image_size // self.patch
        check_fits_grid(config.num_regions, self.grid)
        if self.multilayer:
            bad = [k for k in config.layers if not 0 <= int(k) <= hf.num_hidden_layers]
            if bad or not config.layers:
                raise FeatstoreError(f"layers={tuple(config.layers)} are invalid for a {hf.num_hidden_layers}-layer "
                                     f"model; choose layers in 0..{hf.num_hidden_layers}")

    @property
    def dim(self) -> int:
        return self.hidden * (len(self.config.layers) if self.multilayer else 1)

    def schema(self):
        r = self.config.num_regions
        return {**self.region_schema(r, self.dim), "pooled": self.fspec(self.dim)}

    def preprocessing(self) -> Dict[str, Any]:
        s = self.config.image_size
        out = {"resize": [s, s], "crop": None, "interpolation": "bicubic-antialias", "mean": list(IMAGENET_MEAN),
               "std": list(IMAGENET_STD), "patch_size": self.patch, "grid": self.grid}
        if self.config.reduce == "interp":  # a new version id: interp boxes were the r x r cells before
            out["region_boxes"] = "interp support"
        return out

    def preprocess(self, item) -> Dict[str, torch.Tensor]:
        """A PIL image -> ``image`` normalised float32 [3, s, s]; a ``ResizedImage`` (``resize_recipe()``)
        -> ``image`` its uint8 [s, s, 3] pixels, normalised in ``forward`` (same numbers)."""
        resized = self.resized_item(item)
        if resized is not None:
            return resized
        require_pil(item)
        s = self.config.image_size
        x = TF.resize(item.convert("RGB"), [s, s], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        x = TF.normalize(TF.to_tensor(x), list(IMAGENET_MEAN), list(IMAGENET_STD))
        return {"image": x, "size": torch.tensor(item.size, dtype=torch.int64)}

    @torch.inference_mode()
    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        c = self.config
        attention = c.reduce == "attention"
        with self.autocast():
            pixels = self.image_input(batch["image"], IMAGENET_MEAN, IMAGENET_STD)
            out = self.model(pixel_values=pixels, output_hidden_states=self.multilayer,
                             output_attentions=attention)
            if self.multilayer:
                layers = [out.hidden_states[int(k)] for k in c.layers]
                if c.apply_layernorm:
                    layers = [self.model.layernorm(h) for h in layers]
            else:
                layers = [out.last_hidden_state]
        g = self.grid
        idx = attention_indices(out.attentions[-1], g, c.num_regions) if attention else None
        size = batch["size"].cpu()
        windows = torch.cat([torch.zeros_like(size), size], dim=1)
        boxes = region_boxes(windows, g, c.num_regions, idx, c.antialias)
        regions = torch.cat([reduce_patches(h[:, 1:1 + g * g], g, c.num_regions, c.antialias, idx) for h in layers],
                            dim=-1)
        pooled = torch.cat([h[:, 0].float() for h in layers], dim=-1)
        n = regions.shape[0]
        return {"regions": self.out(regions), "count": np.full(n, c.num_regions, dtype=np.int32),
                "boxes": boxes.numpy(), "image_size": self.out_int(batch["size"]), "pooled": self.out(pooled)}


@register_extractor("dinov2", Dinov2Config, help="DINOv2 ViT-L/14 at 518 px: patch grid reduced to 36 regions + CLS")
class Dinov2Extractor(_Dinov2Base):
    multilayer = False


@register_extractor("dinov2-multilayer", Dinov2MultiConfig,
                    help="DINOv2 layers 6/12/18/24 (LayerNormed), each reduced to 36 regions, concatenated")
class Dinov2MultiExtractor(_Dinov2Base):
    multilayer = True
