"""``clip-image`` and ``clip-text``: a CLIPModel's pre-projection and projected vectors, token states, regions.

weights: any ``CLIPModel`` folder (or a model id in the local Hugging Face cache); default
``openai/clip-vit-large-patch14`` at 224 px, Hate-CLIPper's encoder (1024-d image / 768-d text
``pooler``, 768-d ``pooled``); ``openai/clip-vit-large-patch14-336`` (RGCL's) works the same, its own
processor giving 336 px and a 24 x 24 patch grid.

Image: the folder's own ``CLIPImageProcessor`` (shorter side resized, centre crop, CLIP mean/std), then
``vision_model``. ``preprocess="squash"`` is instead Hate-CLIPper's and RGCL's input (gokulkarthik/hateclipper
datasets.py, JingbiaoMei/RGCL src/data_loader/dataset.py: ``Image.open(path).convert('RGB').resize((s, s))``
then the processor): the file decoded as Pillow's ``convert("RGB")`` (``images.load_image(decode=
"convert-rgb")``), the WHOLE image resized to the tower's ``s x s`` with Pillow's bicubic (its ``resize``
default; a ``pixels.ResizeRecipe``, so the run loop and the image cache hand over the resized pixels), then
the processor, whose resize and crop leave an ``s x s`` image as it is; nothing is cropped away, so the
boxes below are cells of the whole image. ``squash_size`` squashes to another side first: RGCL's train split
(its ``get_Dataloader`` builds the train dataset without ``image_size``, so train memes are squashed to 224
and the 336 processor upsamples them, Pillow bicubic under transformers 4; dev and test at 336); that
upsample is done here with Pillow's bicubic before the processor. Stored per version:
  * ``pooler [N, Dv]``: ``vision_model(...).pooler_output`` (post-LayerNormed CLS; pre-projection, what
    Hate-CLIPper's trainable projections read);
  * ``pooled [N, P]``: ``visual_projection(pooler)`` = ``CLIPModel.get_image_features``; ``normalize=True``
    divides it (only it) by its L2 norm, as CLIPModel does before its logits;
  * ``regions [N, R, Dv]`` + ``count`` + ``boxes`` + ``image_size`` (``num_regions`` > 0, default 36): the
    g x g patch states reduced exactly as ``dinov2`` does (``patch_regions``: ``reduce="interp"``, a 6 x 6
    antialiased bilinear resampling, or ``"attention"``, the top-R patches by last-layer CLS attention);
    boxes are in original-image pixels within the centre crop's area (``crop_window``): under interp the
    area of the patches that contribute to each region (its resampling support, reaching past its 6 x 6
    cell), under attention the picked patches' cells;
  * ``tokens [N, g*g, Dv]`` (``tokens=True``): every patch state, row-major, CLS left out (no ``count``:
    every patch is real).
Patch states are ``last_hidden_state`` (the encoder output; CLIP applies ``post_layernorm`` only to the
CLS), or ``hidden_states[layer]`` (0 = the embeddings after ``pre_layrnorm``, k = layer k's output);
``post_layernorm=True`` passes them through the vision tower's ``post_layernorm`` first.

Text: the folder's tokenizer (truncated to ``max_length``, at most the model's positions, 77 for CLIP), then
``text_model``: ``pooler [N, Dt]`` (``pooler_output``: the EOS token's state after ``final_layer_norm``),
``pooled [N, P]`` (``text_projection(pooler)``, ``normalize`` as above) and, with ``tokens=True``,
``tokens [N, T, Dt]`` (``last_hidden_state``, after ``final_layer_norm``; or ``hidden_states[layer]``, before
it; zero past ``count``) + ``count``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ..errors import FeatstoreError
from ..store.spec import ArraySpec
from .base import BaseConfig, Extractor, pad_items, register_extractor
from .images import CONVERT_RGB, require_pil
from .hf import load_model, load_pretrained
from .pixels import ResizedImage, ResizeRecipe
from .patch_regions import attention_indices, check_fits_grid, check_region_options, reduce_patches, region_boxes
from .text import pad_ids, text_input, truncation_note
from .weights import DEMO, resolve_weights

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
PROCESSOR, SQUASH = "processor", "squash"
IMAGE_PREPROCESS = (PROCESSOR, SQUASH)


@dataclass
class _ClipConfig(BaseConfig):
    """layer: None = the tower's ``last_hidden_state``; k = ``hidden_states[k]`` for ``tokens`` / ``regions``."""

    weights: Optional[str] = DEFAULT_CLIP
    normalize: bool = False
    tokens: bool = False
    layer: Optional[int] = None


@dataclass
class ClipImageConfig(_ClipConfig):
    """preprocess: ``processor`` (the folder's CLIPImageProcessor on the image) or ``squash`` (Hate-CLIPper's
    and RGCL's: the whole image resized to the tower's size first; module docstring)."""

    num_regions: int = 36
    reduce: str = "interp"
    antialias: bool = True
    post_layernorm: bool = False
    preprocess: str = PROCESSOR
    squash_size: int = 0  # squash: the side the whole image is squashed to; 0 = the tower's input size

    def __post_init__(self):
        super().__post_init__()
        if self.num_regions != 0:
            check_region_options(self.num_regions, self.reduce)
        if self.preprocess not in IMAGE_PREPROCESS:
            raise FeatstoreError(f"preprocess={self.preprocess!r} is not known; use one of "
                                 f"{', '.join(IMAGE_PREPROCESS)}")
        if self.squash_size and (self.preprocess != SQUASH or self.squash_size < 16):
            raise FeatstoreError(f"squash_size={self.squash_size} needs preprocess=squash and a side >= 16 (0: the "
                                 "tower's size); e.g. --set preprocess=squash --set squash_size=224")

    def resize_recipe(self) -> Optional[ResizeRecipe]:
        """``squash``: the recipe at the tower's input size (read from the weights folder's config.json);
        ``processor``: None (PIL images go to the processor)."""
        if self.preprocess != SQUASH:
            return None
        return squash_recipe(self.squash_size or tower_image_size(self.weights))


def squash_recipe(size: int) -> ResizeRecipe:
    """Pillow's ``convert("RGB").resize((size, size))`` (bicubic, its default for RGB) as a resize recipe."""
    return ResizeRecipe("square", int(size), "bicubic", decode=CONVERT_RGB)


def tower_image_size(weights: Optional[str]) -> int:
    """The vision tower's input size from a CLIPModel folder's config.json (CLIPVisionConfig's 224 if unset)."""
    import json

    path = resolve_weights(_needs_weights(weights, "clip-image"), "dir") / "config.json"
    try:
        cfg = json.loads(path.read_text())
        return int((cfg.get("vision_config") or {}).get("image_size", 224))
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise FeatstoreError(f"{path} does not hold a CLIP config ({err}); pass a CLIPModel folder") from None


def _needs_weights(weights: Optional[str], name: str) -> str:
    if weights in (None, DEMO):
        raise FeatstoreError(f"{name} needs CLIP weights; pass --weights with a CLIPModel folder or a cached id "
                             f"(e.g. `huggingface-cli download {DEFAULT_CLIP}`)")
    return str(weights)


@dataclass
class ClipTextConfig(_ClipConfig):
    max_length: int = 77
    # ftfy.fix_text before the tokenizer, as transformers 4's CLIPTokenizer cleans every text when ftfy is
    # installed (Hate-CLIPper's requirements list it; RGCL's do not, so its run may have had BasicTokenizer's
    # fallback); openai/CLIP's basic_clean adds html.unescape, which ftfy skips in a text holding "<". The fast
    # tokenizer of transformers 5 does neither (curly quotes, HTML entities, full-width letters differ)
    fix_text: bool = True
    # what a recipe saved before an option existed was extracted with (heads' preset input notes read it)
    ABSENT_MEANS: ClassVar[Dict[str, Any]] = {"fix_text": False}


def fix_clip_text(text: str) -> str:
    """transformers 4's CLIPTokenizer's cleanup: ``ftfy.fix_text`` (the fast tokenizer then folds whitespace and
    lower-cases, as the slow one's ``whitespace_clean(...).lower()``)."""
    import ftfy

    return ftfy.fix_text(text)


def crop_window(processor, width: int, height: int) -> Tuple[float, float, float, float]:
    """The area (x1, y1, x2, y2, original pixels) of a ``width x height`` image that the processor's output
    shows: its resize (``shortest_edge``: shorter side to it, the longer to ``int(s * long / short)``; or a
    fixed ``height`` x ``width``) then its centre crop (offset ``int((resized - crop) / 2)``; a crop larger
    than the resized image is zero padding, half each side, as the processor pads)."""
    size, crop = processor.size, processor.crop_size
    rw, rh = width, height
    if processor.do_resize:
        if size.shortest_edge and not size.longest_edge:
            s = int(size.shortest_edge)
            short, long = sorted((width, height))
            rw, rh = (s, int(s * long / short)) if width <= height else (int(s * long / short), s)
        elif size.height and size.width:
            rw, rh = int(size.width), int(size.height)
        else:
            raise FeatstoreError(f"the CLIP processor's size {dict(size)} has no box arithmetic here; "
                                 "use a processor with size shortest_edge or height/width")
    x1, y1, cw, ch = 0.0, 0.0, float(rw), float(rh)
    if processor.do_center_crop:
        cw, ch = int(crop.width), int(crop.height)
        x1 = -((cw - rw) // 2) if cw > rw else int((rw - cw) / 2.0)
        y1 = -((ch - rh) // 2) if ch > rh else int((rh - ch) / 2.0)
    sx, sy = width / rw, height / rh
    return x1 * sx, y1 * sy, (x1 + cw) * sx, (y1 + ch) * sy


class _ClipBase(Extractor):
    _compile_targets = ("model",)
    tower = ""  # "vision_config" / "text_config"
    unused: Tuple[str, ...] = ()  # CLIPModel tensors this tower's extractor never computes with

    def __init__(self, config: _ClipConfig, name: str, attn: Optional[str] = None):
        super().__init__(config, name)
        from transformers import CLIPModel

        self.weights_path = resolve_weights(_needs_weights(config.weights, name), "dir")
        extra = {"attn_implementation": attn} if attn else {}
        self.model, self.weights_load = load_model(CLIPModel, self.weights_path, "CLIPModel", may_miss=self.unused,
                                                   **extra)
        self.model.eval()
        self.dim = int(self.model.config.projection_dim)
        tower = getattr(self.model.config, self.tower)
        self.hidden, n_layers = int(tower.hidden_size), int(tower.num_hidden_layers)
        if config.layer is not None and not 0 <= int(config.layer) <= n_layers:
            raise FeatstoreError(f"layer={config.layer} is invalid for the {n_layers}-layer CLIP "
                                 f"{self.tower.split('_')[0]} tower; choose 0..{n_layers} or leave it unset")

    def _states(self, out) -> torch.Tensor:
        """The per-token states ``tokens`` / ``regions`` are made of (``layer``)."""
        return out.last_hidden_state if self.config.layer is None else out.hidden_states[int(self.config.layer)]

    def _vectors(self, pooler: torch.Tensor, projected: torch.Tensor) -> Dict[str, np.ndarray]:
        emb = projected.float()
        if self.config.normalize:
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return {"pooler": self.out(pooler.float()), "pooled": self.out(emb)}


@register_extractor("clip-image", ClipImageConfig,
                    help="CLIP image tower: pooler (pre-projection), pooled (projected), 36 patch regions, tokens")
class ClipImageExtractor(_ClipBase):
    modality = "image"
    key_kind = "image_key"
    tower = "vision_config"
    unused = ("text_model.", "text_projection.", "logit_scale")

    def __init__(self, config: ClipImageConfig, name: str):
        super().__init__(config, name, attn="eager" if config.num_regions and config.reduce == "attention" else None)
        from transformers import CLIPImageProcessor

        self.processor = load_pretrained(CLIPImageProcessor, self.weights_path, "CLIPImageProcessor")
        vc = self.model.config.vision_config
        self.grid = int(vc.image_size) // int(vc.patch_size)
        crop = self.processor.crop_size
        if self.processor.do_center_crop and (crop.height, crop.width) != (vc.image_size, vc.image_size):
            raise FeatstoreError(f"the CLIP processor crops {crop.height}x{crop.width} but the vision tower takes "
                                 f"{vc.image_size}x{vc.image_size}; pass a folder whose processor matches its model")
        if config.num_regions:
            check_fits_grid(config.num_regions, self.grid)
        self.tower = int(vc.image_size)
        self.recipe = squash_recipe(config.squash_size or self.tower) if config.preprocess == SQUASH else None

    def resize_recipe(self) -> Optional[ResizeRecipe]:
        return self.recipe  # the config's, from the loaded tower (no config.json read per item)

    def schema(self):
        c, d = self.config, self.hidden
        s = {"pooler": self.fspec(d), "pooled": self.fspec(self.dim)}
        if c.num_regions:
            s.update(self.region_schema(c.num_regions, d))
        if c.tokens:
            s["tokens"] = self.fspec(self.grid * self.grid, d)
        return s

    def preprocessing(self) -> Dict[str, Any]:
        p = self.processor
        out = {"processor": type(p).__name__, "size": dict(p.size) if p.size else None,
               "crop_size": dict(p.crop_size) if getattr(p, "crop_size", None) else None,
               "mean": list(p.image_mean), "std": list(p.image_std), "normalize": self.config.normalize,
               "grid": self.grid, "boxes": "crop_window cells"}
        if self.config.num_regions and self.config.reduce == "interp":  # a new id: these were the r x r cells
            out["boxes"] = "crop_window interp support"
        if self.recipe is not None:
            out.update(squash=[self.recipe.size, self.recipe.size], squash_interpolation="bicubic",
                       decode=self.recipe.decode)
            if self.recipe.size != self.tower:
                out.update(then_resize=[self.tower, self.tower], then_resize_interpolation="pil-bicubic")
        return out

    def preprocess(self, item) -> Dict[str, torch.Tensor]:
        """A PIL image (or, with ``squash``, the ``ResizedImage`` of ``resize_recipe()``) -> the processor's
        ``pixel_values``, the original ``size`` and the ``window`` of it the pixels show."""
        image, size, window = self._processor_input(item)
        px = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": px, "size": torch.tensor(size, dtype=torch.int64),
                "window": torch.tensor(window, dtype=torch.float64)}

    def _processor_input(self, item):
        """(the image the processor gets, the original (w, h), the window in original pixels)."""
        if self.recipe is None:
            require_pil(item)
            return item.convert("RGB"), item.size, crop_window(self.processor, *item.size)
        resized = item if isinstance(item, ResizedImage) else self.recipe.apply(require_pil(item))
        image = Image.fromarray(resized.tensor_for(self.recipe).numpy(), "RGB")
        (w, h), s = resized.size, self.tower
        if self.recipe.size != s:  # squash_size: the s x s squash goes to the tower's size as the processor's PIL
            image = image.resize((s, s), Image.BICUBIC)  # resize does (transformers 4, RGCL's train split)
        x1, y1, x2, y2 = crop_window(self.processor, s, s)  # in tower pixels: the whole image
        return image, resized.size, (x1 * w / s, y1 * h / s, x2 * w / s, y2 * h / s)

    @torch.inference_mode()
    def forward(self, batch) -> Dict[str, np.ndarray]:
        c, g = self.config, self.grid
        attention = bool(c.num_regions) and c.reduce == "attention"
        vm = self.model.vision_model
        with self.autocast():
            v = vm(pixel_values=self.to_device(batch["pixel_values"]), output_hidden_states=c.layer is not None,
                   output_attentions=attention)
            projected = self.model.visual_projection(v.pooler_output)
            states = self._states(v)
            if c.post_layernorm:
                states = vm.post_layernorm(states)
        res = self._vectors(v.pooler_output, projected)
        patches = states[:, 1:1 + g * g].float()
        if c.tokens:
            res["tokens"] = self.out(patches)
        if c.num_regions:
            idx = attention_indices(v.attentions[-1], g, c.num_regions) if attention else None
            res.update({"regions": self.out(reduce_patches(patches, g, c.num_regions, c.antialias, idx)),
                        "count": np.full(len(patches), c.num_regions, dtype=np.int32),
                        "boxes": region_boxes(batch["window"].cpu(), g, c.num_regions, idx, c.antialias).numpy(),
                        "image_size": self.out_int(batch["size"])})
        return res


@register_extractor("clip-text", ClipTextConfig,
                    help="CLIP text tower: pooler (pre-projection EOS state), pooled (projected), tokens")
class ClipTextExtractor(_ClipBase):
    modality = "text"
    key_kind = "sample_id"
    tower = "text_config"
    unused = ("vision_model.", "visual_projection.", "logit_scale")

    def __init__(self, config: ClipTextConfig, name: str):
        super().__init__(config, name)
        from transformers import AutoTokenizer

        self.tokenizer = load_pretrained(AutoTokenizer, self.weights_path, "CLIP tokenizer")
        self.positions = int(self.model.config.text_config.max_position_embeddings)
        self.max_length = min(config.max_length, self.positions)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def truncation_note(self, texts) -> Optional[str]:
        """The summary's line on texts cut to ``max_length`` (77 for CLIP, as Hate-CLIPper and RGCL cut them)."""
        return truncation_note(self.tokenizer, [self._text(t) for t in texts], self.max_length, self.positions)

    def schema(self):
        s = {"pooler": self.fspec(self.hidden), "pooled": self.fspec(self.dim)}
        if self.config.tokens:
            s.update({"tokens": self.fspec(self.max_length, self.hidden, per_item=True),
                      "count": ArraySpec((), "int32")})
        return s

    def preprocessing(self) -> Dict[str, Any]:
        out = {"tokenizer": type(self.tokenizer).__name__, "max_length": self.max_length, "truncation": True,
               "normalize": self.config.normalize}
        if self.config.fix_text:  # ftfy's rules change between its releases: its version names the cleanup
            import ftfy

            out["fix_text"] = f"ftfy {ftfy.__version__}"
        return out

    def _text(self, item: Any) -> str:
        text = text_input(item)
        return fix_clip_text(text) if self.config.fix_text else text

    def preprocess(self, item: str) -> Dict[str, torch.Tensor]:
        ids = self.tokenizer(self._text(item), truncation=True, max_length=self.max_length)["input_ids"]
        return {"input_ids": torch.tensor(ids, dtype=torch.int64)}

    def collate(self, items):
        return pad_ids(items, self.pad_id)

    @torch.inference_mode()
    def forward(self, batch) -> Dict[str, np.ndarray]:
        mask = batch["attention_mask"].to(self.device)
        with self.autocast():
            t = self.model.text_model(input_ids=batch["input_ids"].to(self.device), attention_mask=mask,
                                      output_hidden_states=self.config.layer is not None)
            projected = self.model.text_projection(t.pooler_output)
        res = self._vectors(t.pooler_output, projected)
        if self.config.tokens:
            states = self._states(t).float() * mask.unsqueeze(-1).float()
            res.update({"tokens": self.out(pad_items(states, self.max_length)), "count": self.out_int(mask.sum(1))})
        return res
