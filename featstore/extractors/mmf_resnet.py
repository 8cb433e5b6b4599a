"""MMF's own model files as CNN weights: the fine-tuned ResNet inside a Hateful Memes baseline's ``model.pth``.

MMF's Concat BERT, Late Fusion, MMBT-Grid and Image-Grid baselines fine-tune their ResNet-152 (``freeze_modal`` /
``freeze_base`` false in mmf/configs/models/{fusions,mmbt,unimodal}/*.yaml), so their ``model.pth`` holds it.
``ResNet152ImageEncoder`` (mmf/modules/encoders.py) keeps ``nn.Sequential(*list(resnet152.children())[:-2])`` as
its ``model``: Sequential index i is the torchvision ResNet's i-th child (0 conv1, 1 bn1, 2 relu, 3 maxpool,
4 layer1, 5 layer2, 6 layer3, 7 layer4; avgpool and fc dropped), then ``AdaptiveAvgPool2d((1, 1))``. Where the
baselines keep it (``MMF_RESNETS``; ``build_image_encoder`` returns the factory's ``module``, mmf/utils/build.py):

* ``base.modal.model.*``: ``FusionBase.modal`` (``concat_bert``; ``late_fusion`` when ``text_classifier.*`` is there);
* ``base.encoder.model.*``: ``UnimodalBase.encoder`` (``unimodal_image``, the Image-Grid file);
* ``model.bert.mmbt.modal_encoder.encoder.model.*``: ``ModalEmbeddings.encoder`` (``mmbt``).

``find_mmf_resnet(keys, path)`` says which (None: not such a file, loaded as today); ``load_mmf_resnet`` maps the
indices to torchvision's names by the model's own ``named_children()[:-2]`` and loads them strictly: every ResNet
tensor of the file placed, every torchvision tensor but ``fc`` (and the parameter-free avgpool) filled, shapes equal;
each failure is one line naming the file and the fix. torchvision's ``fc`` is not in the file and stays at its
seeded random init: ``grid`` and ``roi`` never compute it. The rest of the file (BERT, classifiers, MMBT's modal
projection) is what ``heads train --init-checkpoint`` reads; the load report (``weights_load``, the version
record's ``meta``) names both. The weights fingerprint stays the file's sha256 (``weights.fingerprint_files``),
so the version id names the very file whose classifier the heads load.

featstore never imports heads: the prefixes live here, and ``heads.mmf_checkpoint`` reads them from this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..errors import FeatstoreError

FUSION, UNIMODAL, MMBT = "base.modal.model.", "base.encoder.model.", "model.bert.mmbt.modal_encoder.encoder.model."
MMF_RESNETS = (FUSION, UNIMODAL, MMBT)
DROPPED = ("avgpool", "fc")  # the children ResNet152ImageEncoder's [:-2] leaves out
READ_BY_HEADS = "read by heads train --init-checkpoint"
GROUPS = (("BERT", ("base.text.", "model.bert.mmbt.transformer.")),
          ("classifier", ("classifier.", "text_classifier.", "modal_classifier.", "model.classifier.")),
          ("MMBT modal embeddings", ("model.bert.mmbt.modal_encoder.",)))
BACKBONE_HINT = "the backbone must be the file's ResNet (MMF's baselines: --set backbone=resnet152)"


@dataclass(frozen=True)
class MMFResNet:
    """Where an MMF file keeps its ResNet (``prefix``) and which MMF model wrote it (``model``)."""

    prefix: str
    model: str


def strip_data_parallel(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``sd`` without the ``module.`` DataParallel puts before every key (when every key has it)."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def find_mmf_resnet(keys: Iterable[str], path) -> Optional[MMFResNet]:
    """The MMF ResNet ``keys`` hold (module docstring), or None; a file with two is refused in one line."""
    keys = list(keys)
    found = [p for p in MMF_RESNETS if any(k.startswith(p) for k in keys)]
    if not found:
        return None
    if len(found) > 1:
        raise FeatstoreError(f"weights {str(path)!r} hold ResNets under both {found[0]}* and {found[1]}*; pass the "
                             "model.pth of one MMF model")
    prefix = found[0]
    if prefix == UNIMODAL:
        model = "unimodal_image"
    elif prefix == MMBT:
        model = "mmbt"
    else:
        model = "late_fusion" if any(k.startswith("text_classifier.") for k in keys) else "concat_bert"
    return MMFResNet(prefix, model)


def resnet_title(name: str) -> str:
    """``resnet152`` -> ``ResNet-152``."""
    return "ResNet-" + name[len("resnet"):] if name.startswith("resnet") else name


def children(model: nn.Module) -> List[str]:
    """The ResNet's child names MMF's Sequential indexes: ``named_children()[:-2]`` (avgpool and fc dropped)."""
    names = [n for n, _ in model.named_children()]
    if tuple(names[-2:]) != DROPPED:
        raise ValueError(f"expected a torchvision ResNet ending in avgpool, fc; got children {names}")
    return names[:-2]


def torchvision_key(rest: str, names: List[str]) -> Optional[str]:
    """``4.0.conv1.weight`` (after MMF's prefix) -> ``layer1.0.conv1.weight``; None for no such index."""
    index, _, leaf = rest.partition(".")
    if not index.isdigit() or int(index) >= len(names) or not leaf:
        return None
    return f"{names[int(index)]}.{leaf}"


def mmf_key(key: str, prefix: str, names: List[str]) -> str:
    """torchvision's ``layer1.0.conv1.weight`` as MMF names it (``<prefix>4.0.conv1.weight``)."""
    child, _, leaf = key.partition(".")
    return f"{prefix}{names.index(child)}.{leaf}"


def mapped_resnet(model: nn.Module, sd: Dict[str, torch.Tensor], found: MMFResNet, path,
                  name: str) -> Dict[str, torch.Tensor]:
    """The file's ResNet tensors by torchvision's names, every refusal of ``load_mmf_resnet`` checked."""
    names, own, where = children(model), model.state_dict(), f"MMF {found.model}'s ResNet ({found.prefix}*)"
    mapped: Dict[str, torch.Tensor] = {}
    stray = []
    for key in sorted(k for k in sd if k.startswith(found.prefix)):
        target = torchvision_key(key[len(found.prefix):], names)
        if target is None or target not in own:
            stray.append(key)
            continue
        if tuple(sd[key].shape) != tuple(own[target].shape):
            raise FeatstoreError(f"weights {str(path)!r}: {key} has shape {tuple(sd[key].shape)}, torchvision {name}'s "
                                 f"{target} expects {tuple(own[target].shape)}; {BACKBONE_HINT}")
        mapped[target] = sd[key]
    if stray:
        raise FeatstoreError(f"weights {str(path)!r}: {len(stray)} keys of {where} have no place in torchvision "
                             f"{name} (first: {stray[0]}); {BACKBONE_HINT}")
    missing = [k for k in own if k not in mapped and not k.startswith(tuple(d + "." for d in DROPPED))]
    if missing:
        first = mmf_key(missing[0], found.prefix, names)
        raise FeatstoreError(f"weights {str(path)!r}: {where} lacks {len(missing)} of torchvision {name}'s "
                             f"{len(missing) + len(mapped)} tensors (first: {first}, torchvision's {missing[0]}); "
                             "pass the whole model.pth MMF saved")
    return mapped


def ignored_line(keys: Iterable[str]) -> str:
    """The file's tensors outside its ResNet by part (``GROUPS``, else their first name), for the load report:
    ``BERT 199 (base.text.*), classifier 14 (classifier.*): read by heads train --init-checkpoint``."""
    parts: Dict[str, Tuple[int, set]] = {}
    for key in keys:
        group, prefix = next(((g, p) for g, ps in GROUPS for p in ps if key.startswith(p)),
                             ("other", key.split(".", 1)[0] + "."))
        n, prefixes = parts.get(group, (0, set()))
        parts[group] = (n + 1, prefixes | {prefix})
    if not parts:
        return "none"
    order = [g for g, _ in GROUPS] + ["other"]
    listed = ", ".join(f"{g} {parts[g][0]} ({', '.join(p + '*' for p in sorted(parts[g][1]))})"
                       for g in order if g in parts)
    return f"{listed}: {READ_BY_HEADS}"


def load_mmf_resnet(model: nn.Module, sd: Dict[str, torch.Tensor], found: MMFResNet, path,
                    name: str) -> Tuple[List[str], Dict[str, str]]:
    """Load the fine-tuned ResNet of MMF file ``sd`` (``find_mmf_resnet``'s ``found``) into torchvision ``model``
    (resnet ``name``) strictly -> (the model keys it filled, the load report's lines: ``mmf``, ``ignored``,
    ``not_in_file``)."""
    mapped = mapped_resnet(model, sd, found, path, name)
    model.load_state_dict(mapped, strict=False)
    dropped = sorted({k.split(".", 1)[0] for k in model.state_dict() if k.split(".", 1)[0] in DROPPED})
    report = {"mmf": f"MMF {found.model} fine-tuned {resnet_title(name)} from {found.prefix}*: {len(mapped)} tensors",
              "ignored": ignored_line(k for k in sd if not k.startswith(found.prefix)),
              "not_in_file": f"{', '.join(dropped)}: MMF's encoder keeps children()[:-2], so torchvision's "
                             f"{', '.join(dropped)} stays at its seeded random init; grid and roi never compute it"}
    return list(mapped), report


def refuse_for_timm(sd: Dict[str, torch.Tensor], path, name: str) -> None:
    """An MMF file's ResNet is torchvision's: refused for a timm backbone in one line."""
    found = find_mmf_resnet(strip_data_parallel(sd), path)
    if found is not None:
        raise FeatstoreError(f"weights {str(path)!r} are MMF {found.model}'s model.pth, whose ResNet ({found.prefix}*) "
                             f"is torchvision's, not timm {name!r}; pass --set backbone=resnet152")
