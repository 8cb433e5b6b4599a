"""CNN backbones split at stride 16, for the ``grid`` and ``roi`` extractors.

``CNNBackbone(name, weights, seed)``:
  * ``stem16(x)``: image batch ``[N, 3, H, W]`` -> the stride-16 map ``[N, c16, H/16, W/16]``
    (torchvision ResNets: conv1..layer3; timm models: every top-level stage up to the feature_info entry of
    reduction 16);
  * ``tail(m)``: stride-16 map -> last feature stage ``[N, channels, H/32, W/32]`` (ResNet layer4; timm: the
    remaining stages up to the last feature_info entry, i.e. what ``features_only`` gives as last stage).

Names: torchvision ``resnet18/34/50/101/152`` (weights: a torchvision state-dict file) or any timm model
with ``feature_info`` (weights: a timm state-dict file; ``"demo"``: the packaged EfficientNet-Lite0 for
``tf_efficientnet_lite0``). ``weights=None`` is a seeded random init.

The file loads into the whole classification model, of which only ``stem16`` and ``tail`` compute:
``weights_load`` (the extractor's, so the version record's ``meta``) counts the loaded tensors used and
names the ones never read by first name (``{"used": 120, "unused": {"fc": 2}}`` for ResNet-18); ``None``
for a random init.

A torchvision ResNet also takes MMF's own model.pth of a Hateful Memes baseline (concat_bert, late_fusion, mmbt,
unimodal_image over a ResNet-152): its fine-tuned ResNet (``base.modal.model.*``, ``base.encoder.model.*``,
``model.bert.mmbt.modal_encoder.encoder.model.*``) loads strictly through ``mmf_resnet``, and ``weights_load``
adds ``mmf`` (what was read: "MMF concat_bert fine-tuned ResNet-152 from base.modal.model.*: N tensors"),
``ignored`` (BERT, classifiers: read by heads train --init-checkpoint) and ``not_in_file`` (torchvision's ``fc``,
left at its seeded random init and never computed). The fingerprint stays the file's sha256.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import FeatstoreError
from .base import Extractor, seeded
from .mmf_resnet import find_mmf_resnet, load_mmf_resnet, refuse_for_timm, strip_data_parallel
from .weights import (DEMO, DEMO_IMAGE_BACKBONE, demo_image_file, fingerprint_files, fingerprint_state_dict,
                      fit_state_dict, load_efficientnet_lite0_demo, load_report, load_state_dict, resolve_weights)

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CNNExtractor(Extractor):
    """Shared by the CNN image extractors (``grid``, ``roi``): one ``CNNBackbone`` built from the config's
    ``backbone``, ``weights`` and ``seed``; fingerprinted by its weights; ``weights_load`` is the backbone's
    load report (outside the version id)."""

    modality = "image"
    key_kind = "image_key"
    channels_last = True
    _compile_targets = ("backbone",)

    def __init__(self, config, name: str):
        super().__init__(config, name)
        self.backbone = CNNBackbone(config.backbone, config.weights, config.seed)
        self.weights_load = self.backbone.weights_load

    def modules(self):
        return [self.backbone]

    def _compute_fingerprint(self) -> str:
        return self.backbone.fingerprint()


class CNNBackbone(nn.Module):
    """``stem16`` / ``tail`` of a classification ``model`` (module docstring); ``weights_load``: the
    ``load_report`` of the weights file over them, ``None`` without one."""

    def __init__(self, name: str, weights: Optional[str], seed: int = 0):
        super().__init__()
        self.weights_path = None
        loaded: Optional[List[str]] = None  # the model's state-dict keys the weights file filled
        mmf: Dict[str, str] = {}  # an MMF model.pth's load-report lines (mmf_resnet.load_mmf_resnet)
        if name in TORCHVISION_RESNETS:
            import torchvision

            self.model = seeded(seed, lambda: getattr(torchvision.models, name)(weights=None))
            if weights == DEMO:
                raise FeatstoreError(f"weights='demo' is the timm {DEMO_IMAGE_BACKBONE!r}; use backbone="
                                     f"{DEMO_IMAGE_BACKBONE!r} (or leave backbone at its default)")
            if weights is not None:
                self.weights_path = resolve_weights(weights, "file")
                loaded, mmf = _load_torchvision(self.model, self.weights_path, name)
            m = self.model
            self.stem16 = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3)
            self.tail = nn.Sequential(m.layer4)
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        else:
            import timm

            if not timm.is_model(name):
                raise FeatstoreError(f"backbone {name!r} is neither a torchvision ResNet ({', '.join(TORCHVISION_RESNETS)}) "
                                     "nor a timm model name; see timm.list_models()")
            self.model = seeded(seed, lambda: timm.create_model(name, pretrained=False))
            if weights == DEMO:
                if name != DEMO_IMAGE_BACKBONE:
                    raise FeatstoreError(f"weights='demo' exists only for backbone {DEMO_IMAGE_BACKBONE!r}, "
                                         f"not {name!r}; pass a weights file for {name!r}")
                self.weights_path = demo_image_file()
                loaded = load_efficientnet_lite0_demo(self.model, self.weights_path)
            elif weights is not None:
                self.weights_path = resolve_weights(weights, "file")
                sd = load_state_dict(self.weights_path)
                refuse_for_timm(sd, self.weights_path, name)
                loaded = fit_state_dict(self.model, sd, self.weights_path, f"timm {name}")
            self.stem16, self.tail = _split_timm(self.model, name)
            cfg = getattr(self.model, "pretrained_cfg", {}) or {}
            self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
            self.std = tuple(cfg.get("std", IMAGENET_STD))
        self.weights_load = None if loaded is None else load_report(self.model, (self.stem16, self.tail), loaded)
        if self.weights_load is not None:
            self.weights_load.update(mmf)
        self.model.eval()
        with torch.inference_mode():
            m16 = self.stem16(torch.zeros(1, 3, 64, 64))
            self.c16 = int(m16.shape[1])
            self.channels = int(self.tail(m16).shape[1])
        self.seed = seed

    def fingerprint(self) -> str:
        if self.weights_path is not None:
            return fingerprint_files(self.weights_path)
        return fingerprint_state_dict(nn.ModuleList([self.stem16, self.tail]), self.seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.stem16(x))


def _load_torchvision(model: nn.Module, path, name: str) -> Tuple[List[str], Dict[str, str]]:
    """Load weights file ``path`` into torchvision ``model`` (resnet ``name``) -> (the model keys it filled, the
    load report's MMF lines): MMF's own model.pth through ``mmf_resnet`` (its fine-tuned ResNet), any other file
    strictly as a torchvision state dict."""
    sd = load_state_dict(path)
    stripped = strip_data_parallel(sd)
    found = find_mmf_resnet(stripped, path)
    if found is None:  # fit_state_dict strips module. key by key itself
        return fit_state_dict(model, sd, path, f"torchvision {name}"), {}
    return load_mmf_resnet(model, stripped, found, path, name)


def _split_timm(model: nn.Module, name: str) -> Tuple[nn.Sequential, nn.Sequential]:
    info = getattr(model, "feature_info", None)
    info = list(info.info if hasattr(info, "info") else (info or []))
    r16 = [fi for fi in info if fi.get("reduction") == 16]
    if not info or not r16 or info[-1].get("reduction", 0) <= 16:
        raise FeatstoreError(f"timm backbone {name!r} has no stride-16 stage followed by a deeper stage; "
                             "use a CNN such as resnet50 or tf_efficientnet_lite0")
    wanted = [fi["module"] for fi in info]
    flat: List[Tuple[str, nn.Module]] = []
    for child_name, child in model.named_children():
        if isinstance(child, nn.Sequential) and any(w.startswith(child_name + ".") for w in wanted):
            flat += [(f"{child_name}.{n}", m) for n, m in child.named_children()]
        else:
            flat.append((child_name, child))

    def last_index(module_name: str) -> int:
        idx = [i for i, (n, _) in enumerate(flat) if n == module_name or n.startswith(module_name + ".")]
        if not idx:
            raise FeatstoreError(f"timm backbone {name!r}: feature module {module_name!r} is not a top-level stage; "
                                 "use a CNN such as resnet50 or tf_efficientnet_lite0")
        return idx[-1]

    i16, i_last = last_index(r16[-1]["module"]), last_index(info[-1]["module"])
    return (nn.Sequential(*[m for _, m in flat[: i16 + 1]]), nn.Sequential(*[m for _, m in flat[i16 + 1: i_last + 1]]))
