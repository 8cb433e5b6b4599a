"""``clip-image`` and ``clip-text``: CLIP's projected embeddings (``pooled`` [N, projection_dim] only).

Image: the folder's own ``CLIPImageProcessor`` (shorter side resized, centre crop, CLIP mean/std), then
``visual_projection(vision_model(pixels).pooler_output)``, i.e. ``CLIPModel.get_image_features``.
Text: the folder's tokenizer (truncated to ``max_length``, at most the model's positions, 77 for CLIP),
then ``text_projection(text_model(ids).pooler_output)`` (the EOS token's state). ``normalize=True`` divides
by the L2 norm (as CLIPModel does before its logits). weights: a CLIPModel folder or a cached model id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch
from PIL import Image

from ..errors import FeatstoreError
from .base import BaseConfig, Extractor, register_extractor, require_pil
from .hf import load_pretrained
from .text import pad_ids, text_input
from .weights import DEMO, resolve_weights


@dataclass
class ClipImageConfig(BaseConfig):
    weights: Optional[str] = "openai/clip-vit-base-patch32"
    normalize: bool = False


@dataclass
class ClipTextConfig(ClipImageConfig):
    max_length: int = 77


class _ClipBase(Extractor):
    _compile_targets = ("model",)

    def __init__(self, config: ClipImageConfig, name: str):
        super().__init__(config, name)
        from transformers import CLIPModel

        if config.weights in (None, DEMO):
            raise FeatstoreError(f"{name} needs CLIP weights; pass --weights with a CLIPModel folder or a cached id "
                                 "(e.g. `huggingface-cli download openai/clip-vit-base-patch32`)")
        self.weights_path = resolve_weights(config.weights, "dir")
        self.model = load_pretrained(CLIPModel, self.weights_path, "CLIPModel")
        self.model.eval()
        self.dim = int(self.model.config.projection_dim)

    def schema(self):
        return {"pooled": self.fspec(self.dim)}

    def _finish(self, emb: torch.Tensor) -> Dict[str, np.ndarray]:
        emb = emb.float()
        if self.config.normalize:
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return {"pooled": self.out(emb)}


@register_extractor("clip-image", ClipImageConfig, help="CLIP image embedding (pooled, projection_dim)")
class ClipImageExtractor(_ClipBase):
    modality = "image"
    key_kind = "image_key"

    def __init__(self, config: ClipImageConfig, name: str):
        super().__init__(config, name)
        from transformers import CLIPImageProcessor

        self.processor = load_pretrained(CLIPImageProcessor, self.weights_path, "CLIPImageProcessor")

    def preprocessing(self) -> Dict[str, Any]:
        p = self.processor
        return {"processor": type(p).__name__, "size": dict(p.size) if p.size else None,
                "crop_size": dict(p.crop_size) if getattr(p, "crop_size", None) else None,
                "mean": list(p.image_mean), "std": list(p.image_std), "normalize": self.config.normalize}

    def preprocess(self, item: Image.Image) -> Dict[str, torch.Tensor]:
        require_pil(item)
        return {"pixel_values": self.processor(images=item.convert("RGB"), return_tensors="pt")["pixel_values"][0]}

    @torch.inference_mode()
    def forward(self, batch) -> Dict[str, np.ndarray]:
        with self.autocast():
            v = self.model.vision_model(pixel_values=self.to_device(batch["pixel_values"]))
            emb = self.model.visual_projection(v.pooler_output)
        return self._finish(emb)


@register_extractor("clip-text", ClipTextConfig, help="CLIP text embedding (pooled, projection_dim)")
class ClipTextExtractor(_ClipBase):
    modality = "text"
    key_kind = "sample_id"

    def __init__(self, config: ClipTextConfig, name: str):
        super().__init__(config, name)
        from transformers import AutoTokenizer

        self.tokenizer = load_pretrained(AutoTokenizer, self.weights_path, "CLIP tokenizer")
        self.max_length = min(config.max_length, int(self.model.config.text_config.max_position_embeddings))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def preprocessing(self) -> Dict[str, Any]:
        return {"tokenizer": type(self.tokenizer).__name__, "max_length": self.max_length, "truncation": True,
                "normalize": self.config.normalize}

    def preprocess(self, item: str) -> Dict[str, torch.Tensor]:
        ids = self.tokenizer(text_input(item), truncation=True, max_length=self.max_length)["input_ids"]
        return {"input_ids": torch.tensor(ids, dtype=torch.int64)}

    def collate(self, items):
        return pad_ids(items, self.pad_id)

    @torch.inference_mode()
    def forward(self, batch) -> Dict[str, np.ndarray]:
        with self.autocast():
            t = self.model.text_model(input_ids=batch["input_ids"].to(self.device),
                                      attention_mask=batch["attention_mask"].to(self.device))
            emb = self.model.text_projection(t.pooler_output)
        return self._finish(emb)
