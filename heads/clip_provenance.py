"""Whether cached CLIP features are the ones a Hate-CLIPper / RGCL checkpoint was trained on.

A Hate-CLIPper file (gokulkarthik/hateclipper ``engine.py``'s ``CLIPClassifier``) keeps its CLIP encoders
(``image_encoder`` / ``text_encoder``: ``copy.deepcopy`` of ``CLIPModel.vision_model`` / ``text_model``, frozen by
``main.py``'s defaults), which name the CLIP its projections read:

* geometry (``check_features``): ``image_encoder.embeddings`` has ``patch_embedding [width, 3, p, p]`` and
  ``position_embedding [1 + (px / p)^2, width]``, so ViT-L/14 at 224 px (``openai/clip-vit-large-patch14``,
  Hate-CLIPper's) and at 336 px (``-336``, RGCL's) differ though their pooler widths agree. A cached image set of
  another extractor, or a ``clip-image`` set of another resolution or patch size (its recorded ``crop_size`` /
  ``grid``), is refused in one line; so is a text set not made by ``clip-text`` where the file's text tower is
  CLIP's (``embeddings.token_embedding``). A match is noted; a set recording no geometry (``import:<format>``)
  is noted as not checked. RGCL files hold no encoders: a ``clip-image`` set off RGCL's published 336 px /
  patch 14 is noted.
* weights (``compare_encoders``): a few of the towers' tensors (``COMPARED``: the embeddings, the last layer's
  MLP output, the final LayerNorm) against the CLIP folder the feature set records (``config.weights``, read
  lazily from its ``model.safetensors`` / ``pytorch_model.bin``, sharded or not). Equal: noted. Different: a
  warning note (the features come from another CLIP of the same shapes, or the run fine-tuned its encoder with
  ``--freeze_image_encoder False``; either way the projections will read features they were not trained on).
  A folder that is no longer there is noted as not compared.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from featstore.errors import FeatstoreError

CLIP_IDS = {(1024, 14, 224): "openai/clip-vit-large-patch14", (1024, 14, 336): "openai/clip-vit-large-patch14-336",
            (768, 32, 224): "openai/clip-vit-base-patch32", (768, 16, 224): "openai/clip-vit-base-patch16"}
RGCL_CLIP = (1024, 14, 336)  # RGCL's generate_CLIP_embedding_HF.py default: openai/clip-vit-large-patch14-336
PATCH_KEY = "image_encoder.embeddings.patch_embedding.weight"  # CLIPVisionTransformer's, under engine.py's name
POSITION_KEY = "image_encoder.embeddings.position_embedding.weight"
CLIP_TEXT_KEY = "text_encoder.embeddings.token_embedding.weight"  # CLIPTextTransformer's (BERT's: word_embeddings)


def vision_geometry(shapes: Dict[str, tuple]) -> Optional[Tuple[int, int, int]]:
    """(width, patch, image px) of the checkpoint's own CLIP vision encoder, or None where it keeps none."""
    patch, positions = shapes.get(PATCH_KEY), shapes.get(POSITION_KEY)
    if patch is None or positions is None or len(patch) != 4 or len(positions) != 2:
        return None
    return int(patch[0]), int(patch[2]), math.isqrt(int(positions[0]) - 1) * int(patch[2])


def extracted_here(meta: Dict[str, Any]) -> bool:
    """Whether a feature set was made by one of featstore's extractors (not ``import:<format>`` / ``heads:<head>``)."""
    return bool(meta.get("extractor")) and ":" not in str(meta["extractor"])


def describe_clip(geometry: Tuple[int, int, int]) -> str:
    width, patch, px = geometry
    known = CLIP_IDS.get(geometry)
    return f"{width}-wide CLIP ViT seeing {px} px in {patch} px patches" + (f" ({known})" if known else "")


def set_geometry(image_meta: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    """(patch, image px) a ``clip-image`` feature set was extracted at (its recorded ``crop_size`` / ``grid``)."""
    pre = image_meta.get("preprocessing") or {}
    crop, grid = pre.get("crop_size") or {}, pre.get("grid")
    if image_meta.get("extractor") != "clip-image" or not crop.get("height") or not grid:
        return None
    return int(crop["height"]) // int(grid), int(crop["height"])


def check_image_set(geometry: Tuple[int, int, int], image_meta: Dict[str, Any], path: str) -> str:
    """The note of a cached image set that fits the checkpoint's CLIP ``geometry``; a one-line refusal otherwise."""
    name, extractor, clip = image_meta.get("name"), image_meta.get("extractor"), describe_clip(geometry)
    fix = (f"extract clip-image with that CLIP (featstore extract --extractor clip-image --weights "
           f"{CLIP_IDS.get(geometry, 'FOLDER')}) and train with --image-pool pooler")
    if extracted_here(image_meta) and extractor != "clip-image":
        raise FeatstoreError(f"checkpoint {path!r} was trained on the pooler features of a {clip}, but image "
                             f"feature set {name!r} was made by {extractor!r}; {fix}")
    found = set_geometry(image_meta)
    if found is None:
        return f"image feature set {name!r} records no CLIP geometry: not checked against the file's {clip}"
    if found != geometry[1:]:
        raise FeatstoreError(f"checkpoint {path!r} was trained on the pooler features of a {clip}, but image "
                             f"feature set {name!r} was extracted at {found[1]} px in {found[0]} px patches; {fix}")
    return f"its CLIP vision encoder, a {clip}, matches image feature set {name!r}"


def rgcl_note(image_meta: Dict[str, Any]) -> List[str]:
    """A note where a ``clip-image`` set is not at RGCL's published resolution (an RGCL file names no CLIP)."""
    found = set_geometry(image_meta)
    if found is None or found == RGCL_CLIP[1:]:
        return []
    return [f"RGCL's published run reads {CLIP_IDS[RGCL_CLIP]} features (336 px, 14 px patches); image feature set "
            f"{image_meta.get('name')!r} was extracted at {found[1]} px in {found[0]} px patches"]


def check_features(shapes: Dict[str, tuple], features: Optional[Dict[str, Any]], layout: str, path: str) -> List[str]:
    """Notes on the cached features (``TrainData.meta["features"]``) against the CLIP the checkpoint was trained
    with; a one-line refusal where they are another CLIP's or another extractor's (module docstring)."""
    image, text = (features or {}).get("image") or {}, (features or {}).get("text") or {}
    if CLIP_TEXT_KEY in shapes and extracted_here(text) and text["extractor"] != "clip-text":
        raise FeatstoreError(f"checkpoint {path!r} was trained on CLIP text pooler features, but text feature set "
                             f"{text.get('name')!r} was made by {text['extractor']!r}; extract clip-text with the "
                             "same CLIP and train with --text-pool pooler")
    geometry = vision_geometry(shapes)
    if geometry is not None and image:
        return [check_image_set(geometry, image, path)]
    return rgcl_note(image) if layout == "rgcl" else []


COMPARED = {  # checkpoint tower -> (the CLIPModel folder's prefix, tensors compared; {last}: the last layer)
    "image_encoder": ("vision_model", ("embeddings.patch_embedding.weight", "embeddings.position_embedding.weight",
                                       "encoder.layers.{last}.mlp.fc2.weight", "post_layernorm.weight")),
    "text_encoder": ("text_model", ("embeddings.token_embedding.weight", "encoder.layers.{last}.mlp.fc2.weight",
                                    "final_layer_norm.weight")),
}


def last_layer(sd: Dict[str, Tensor], tower: str) -> int:
    return max((int(k.split(".")[3]) for k in sd if k.startswith(f"{tower}.encoder.layers.")), default=-1)


def folder_tensors(folder: Path, names: List[str]) -> Optional[Dict[str, Tensor]]:
    """``names`` read from a CLIPModel folder's weights (only those, where the file allows), or None where the
    folder holds none of transformers' weight files or lacks one of the names. The files are looked for in
    ``from_pretrained``'s order: ``model.safetensors``, its sharded index, ``pytorch_model.bin``, its index."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return file_tensors(folder / single, names)
        if (folder / index).is_file():
            return sharded_tensors(folder, index, names)
    return None


def sharded_tensors(folder: Path, index: str, names: List[str]) -> Optional[Dict[str, Tensor]]:
    """``names`` from the shards a transformers ``*.index.json`` maps them to (each shard read for its names
    only); None when the index does not parse or lacks a name, or a shard lacks one."""
    import json

    try:
        weight_map = json.loads((folder / index).read_text())["weight_map"]
        shards = {weight_map[n] for n in names}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    out: Dict[str, Tensor] = {}
    for shard in sorted(shards):
        got = file_tensors(folder / shard, [n for n in names if weight_map[n] == shard])
        if got is None:
            return None
        out.update(got)
    return out


def file_tensors(path: Path, names: List[str]) -> Optional[Dict[str, Tensor]]:
    """``names`` from one ``.safetensors`` (read lazily) or torch file (memory-mapped); None when the file is
    missing, unreadable or lacks one of them."""
    if not path.is_file():
        return None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {n: f.get_tensor(n) for n in names} if set(names) <= set(f.keys()) else None
        except Exception:  # noqa: BLE001 - a damaged file: not compared (noted)
            return None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an old-format or unreadable file: not compared (noted)
        return None
    return {n: sd[n] for n in names} if all(n in sd for n in names) else None


def same_tensor(a: Tensor, b: Tensor) -> bool:
    """Equal up to a half-precision copy (a folder may store fp16): |a - b| <= 1e-3 |b| + 1e-4."""
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4)


def compare_tower(sd: Dict[str, Tensor], tower: str, meta: Dict[str, Any]) -> Optional[str]:
    """The note comparing the checkpoint's ``tower`` with the CLIP folder feature set ``meta`` records."""
    prefix, leaves = COMPARED[tower]
    if not any(k.startswith(f"{tower}.") for k in sd) or not extracted_here(meta):
        return None
    from featstore.extractors.weights import resolve_weights

    spec, name = (meta.get("config") or {}).get("weights"), meta.get("name")
    leaves = [leaf.format(last=last_layer(sd, tower)) for leaf in leaves]
    try:
        folder = resolve_weights(spec, "dir")
    except FeatstoreError:
        return f"{tower} not compared with the CLIP weights of feature set {name!r} ({spec!r} is not here)"
    theirs = folder_tensors(folder, [f"{prefix}.{leaf}" for leaf in leaves])
    if theirs is None or not all(f"{tower}.{leaf}" in sd for leaf in leaves):
        return f"{tower} not compared with the CLIP weights of feature set {name!r} ({str(folder)!r} lacks them)"
    if all(same_tensor(sd[f"{tower}.{leaf}"], theirs[f"{prefix}.{leaf}"]) for leaf in leaves):
        return f"{tower} equals the CLIP that feature set {name!r} was extracted with ({spec})"
    return (f"warning: {tower} differs from the CLIP that feature set {name!r} was extracted with ({spec}): another "
            "CLIP of the same shapes, or a run that fine-tuned it (--freeze_image_encoder / --freeze_text_encoder "
            "False); the head reads features its projections were not trained on")


def compare_encoders(sd: Dict[str, Tensor], features: Optional[Dict[str, Any]]) -> List[str]:
    """Notes comparing the checkpoint's CLIP towers with the weights the cached sets were extracted with."""
    sets = {"image_encoder": (features or {}).get("image") or {}, "text_encoder": (features or {}).get("text") or {}}
    if CLIP_TEXT_KEY not in sd:
        sets.pop("text_encoder")  # a BERT text tower (the Tamil runs): not CLIP's
    notes = (compare_tower(sd, tower, meta) for tower, meta in sets.items() if meta)
    return [n for n in notes if n]
