"""Load VisualBERT weights into a ``visualbert`` head (``heads.models.visualbert.VisualBertHead``), whole.

Accepted files (a file, a folder holding ``model.safetensors`` / ``pytorch_model.bin`` / ``model.pth``, or a
model id such as ``bert-base-uncased`` found in the local Hugging Face cache):

* MMF's VisualBERT (``visual_bert.pretrained.coco``, ``visual_bert.finetuned.hateful_memes_*``: the
  ``model.pth`` inside the zoo's tar): ``model.bert.*`` (``bert.bert.*`` in the original uclanlp files, which
  MMF's ``format_state_key`` renames the same way), ``model.classifier.0.*`` / ``model.classifier.1.*``,
  pretraining heads ``model.cls.*``;
* Hugging Face VisualBERT (``uclanlp/visualbert-*``): ``visual_bert.*`` with ``visual_projection``,
  ``visual_token_type_embeddings``, ``visual_position_embeddings`` renamed to MMF's ``projection``,
  ``token_type_embeddings_visual``, ``position_embeddings_visual``;
* a plain BERT (``bert-base-uncased``; ``bert.*`` or bare ``embeddings.*`` / ``encoder.*`` / ``pooler.*``):
  MMF's "direct" recipe, VisualBERT started from BERT; the visual tables then start as copies of the
  text ones (``special_visual_initialize``) and the projection keeps its initialisation.

Old TF-port names (``LayerNorm.gamma`` / ``beta``) read as ``weight`` / ``bias``. The classifier
(``classifier.0`` -> ``transform``, ``classifier.1`` -> ``outputs.layers.<task>``) loads for a head with
``classifier="mmf"`` and one task whose output count is the checkpoint's label count; otherwise the report
says why it was left initialised. ``position_ids`` buffers and other heads' layers (``cls.*``) are reported
as ignored; a ViLBERT checkpoint is refused naming ``--head vilbert``. ``head_from_checkpoint`` reads sizes
and layer counts from the shapes where the head config gives none (attention head counts cannot be read: 12
unless given). The loop (``copy_bert``, ``finish_load``, ``refuse_other_family``) is shared with
``heads.text_bert_checkpoint``.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from torch import Tensor, nn

from featstore.errors import FeatstoreError

from .checkpoints import LoadReport, head_from_checkpoint as build_from_checkpoint, read_weights as read_weights_of
from .checkpoints import torch_names
from .vilbert_checkpoint import AS_IS as VILBERT_KEYS  # ViLBERT's own modules (after the base prefix)

BASE_PREFIXES = ("model.bert.", "bert.bert.", "module.model.bert.", "module.bert.", "visual_bert.", "bert.")
BARE = ("embeddings.", "encoder.", "pooler.")
CLASSIFIER_PREFIXES = ("model.classifier.", "bert.classifier.", "module.model.classifier.", "classifier.")
HF_RENAMES = {"embeddings.visual_projection.": "embeddings.projection.",
              "embeddings.visual_token_type_embeddings.": "embeddings.token_type_embeddings_visual.",
              "embeddings.visual_position_embeddings.": "embeddings.position_embeddings_visual."}
VISUAL_TABLES = {"bert.embeddings.token_type_embeddings_visual.weight": "bert.embeddings.token_type_embeddings.weight",
                 "bert.embeddings.position_embeddings_visual.weight": "bert.embeddings.position_embeddings.weight"}
PROJECTION = ("bert.embeddings.projection.weight", "bert.embeddings.projection.bias")
VISUAL_KEYS = ("bert.embeddings.projection.", *(k.rsplit(".", 1)[0] + "." for k in VISUAL_TABLES))
WANTED = "VisualBERT or BERT weights (keys like 'model.bert.encoder.layer.0...')"
HOW_TO_GET = ("MMF's VisualBERT is https://dl.fbaipublicfiles.com/mmf/data/models/visual_bert/"
              "visual_bert.pretrained.coco.tar.gz (its model.pth), or pass a bert-base-uncased folder")
_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.")


def map_key(key: str, tasks) -> Tuple[Optional[str], str]:
    """(the head's key for checkpoint ``key`` or None, the report group)."""
    k = torch_names(key)
    if k.endswith(("position_ids", "token_type_ids")):
        return None, "buffers"
    for p in CLASSIFIER_PREFIXES:
        if k.startswith(p):
            rest = k[len(p):]
            if rest.startswith("0."):
                return "transform." + rest[2:], "classifier"
            if rest.startswith("1.") and len(tasks) == 1:
                return f"outputs.layers.{tasks[0]}." + rest[2:], "classifier"
            return None, "classifier"
    rest = next((k[len(p):] for p in BASE_PREFIXES if k.startswith(p)), k if k.startswith(BARE) else None)
    if rest is None or not rest.startswith(BARE):
        return None, "other heads (pretraining / task layers)"
    for old, new in HF_RENAMES.items():
        rest = rest.replace(old, new)
    return "bert." + rest, "backbone"


def read_weights(path, trust_pickle: bool = False) -> Dict[str, Tensor]:
    """The tensors of a checkpoint file, model folder or cached model id (``heads.checkpoints``) by name."""
    return read_weights_of(path, trust_pickle, HOW_TO_GET)


def _place(report: LoadReport, key: str, target: str, have, want, c) -> bool:
    """Whether checkpoint ``key`` (shape ``have``) can be copied to ``target`` (``want``); records why not."""
    if have == want:
        return True
    if target.startswith(("transform.", "outputs.")):
        report.add("ignored", "classifier", key)
        report.note(f"classifier: the checkpoint's final layer has shape {list(have)}, the head's {list(want)}; "
                    "it was left initialised")
        return False
    if target in PROJECTION and c.img_dim_mismatch == "reinit":
        report.reinitialised_keys.append(f"{key} (checkpoint {list(have)}, head {list(want)})")
        return False
    raise FeatstoreError(
        f"checkpoint key {key!r} has shape {tuple(have)} but the head's {target!r} has {tuple(want)}; build the "
        "head with the checkpoint's sizes (hidden_size, intermediate_size, vocab_size), or for the image "
        "features' width pass --set img_dim_mismatch=project or reinit")


def _visual_tables(head: nn.Module, mapped: Dict[str, Tensor], report: LoadReport) -> None:
    """MMF's ``special_visual_initialize`` after loading: visual tables the file lacks copy the loaded text ones."""
    if not head.config.special_visual_initialize:
        return
    for visual, text in VISUAL_TABLES.items():
        if visual not in mapped and text in mapped:
            mapped[visual] = mapped[text]
            report.notes.append(f"{visual}: not in the checkpoint; copied from {text} (special_visual_initialize)")


def copy_tensors(head: nn.Module, sd: Dict[str, Tensor], path: str, mapper: Callable, place: Callable,
                 wanted: str, how_to_get: str, layer_hint: str, absent_ok: Tuple[str, ...] = ("classifier",),
                 required: str = "backbone"):
    """(report, head key -> tensor): every key of ``sd`` through ``mapper(key) -> (head key or None, group)``;
    a head key the head lacks is ignored in a group of ``absent_ok``, else refused naming ``layer_hint``;
    ``place(report, key, target, have, want)`` says whether the shapes fit (or records why not). Refuses a
    file that fills no ``required`` group (BERT's: "used: backbone"), saying the ``wanted`` ones and
    ``how_to_get`` them."""
    own = head.state_dict()
    report, mapped = LoadReport(path=str(path)), {}
    for key in sorted(sd):
        target, group = mapper(key)
        if target is None or (group in absent_ok and target not in own):
            report.add("ignored", group, key)
            continue
        if target not in own:
            raise FeatstoreError(f"checkpoint {path!r} key {key!r} has no counterpart {target!r} in the head; build "
                                 f"the head with the checkpoint's {layer_hint}")
        if place(report, key, target, tuple(sd[key].shape), tuple(own[target].shape)):
            mapped[target] = sd[key]
            report.add("used", group, key)
    if f"used: {required}" not in report.groups:
        raise FeatstoreError(f"checkpoint {path!r} has no {wanted}; {how_to_get}")
    return report, mapped


def copy_bert(head: nn.Module, sd: Dict[str, Tensor], path: str, tasks, wanted: str, how_to_get: str):
    """``copy_tensors`` with visualbert's key map (``map_key``) into a head of visualbert's module names;
    ``tasks``: the task a checkpoint's ``classifier.1`` may fill."""
    return copy_tensors(head, sd, path, lambda key: map_key(key, tasks),
                        lambda report, key, target, have, want: _place(report, key, target, have, want, head.config),
                        wanted, how_to_get, "layer count (num_hidden_layers)")


def finish_load(head: nn.Module, mapped: Dict[str, Tensor], report: LoadReport) -> LoadReport:
    """Copy ``mapped`` into ``head`` (in place); the head keys it did not fill are the report's missing ones."""
    head.load_state_dict(mapped, strict=False)
    report.missing_keys = sorted(k for k in head.state_dict() if k not in mapped)
    return report


def refuse_other_family(sd: Dict[str, Tensor], path: str, families: Sequence[str], reader: str) -> None:
    """A ViLBERT or VisualBERT checkpoint (``families``: those ``reader`` cannot read) refused in one line with
    the head that reads it."""
    for key in sd:
        target = map_key(key, ())[0] or ""
        if "visualbert" in families and target.startswith(VISUAL_KEYS):
            found = ("VisualBERT", "visualbert")
        elif "vilbert" in families and any(f".{part}" in f".{key}" for part in VILBERT_KEYS):
            found = ("ViLBERT", "vilbert")
        else:
            continue
        raise FeatstoreError(f"checkpoint {path!r} is a {found[0]} checkpoint (key {key!r}), not {reader}; train it "
                             f"with --head {found[1]}")


def load_state(head: nn.Module, sd: Dict[str, Tensor], path: str) -> LoadReport:
    """Copy the matching tensors of ``sd`` into the visualbert ``head`` (in place) and report what happened."""
    if getattr(head, "head_name", "") != "visualbert":
        raise FeatstoreError("load_visualbert_checkpoint needs a 'visualbert' head; build the run with --head visualbert")
    refuse_other_family(sd, path, ("vilbert",), "VisualBERT or BERT")
    tasks = [t.name for t in head.outputs.tasks] if head.config.classifier == "mmf" else []
    report, mapped = copy_bert(head, sd, path, tasks, WANTED, HOW_TO_GET)
    _visual_tables(head, mapped, report)
    return finish_load(head, mapped, report)


def load_visualbert_checkpoint(head: nn.Module, path, *, trust_pickle: bool = False) -> LoadReport:
    """Copy the weights of the VisualBERT / BERT checkpoint at ``path`` into ``head`` (in place) -> report."""
    return load_state(head, read_weights(path, trust_pickle), str(path))


def config_from_checkpoint(shapes: Dict[str, tuple], given: Dict[str, Any]) -> Dict[str, Any]:
    """``given`` completed with the sizes and layer count the checkpoint's shapes imply."""
    base = {t: s for k, s in shapes.items() for t, _ in [map_key(k, ())] if t is not None}
    read = {"vocab_size": ("bert.embeddings.word_embeddings.weight", 0),
            "hidden_size": ("bert.embeddings.word_embeddings.weight", 1),
            "max_position_embeddings": ("bert.embeddings.position_embeddings.weight", 0),
            "type_vocab_size": ("bert.embeddings.token_type_embeddings.weight", 0),
            "intermediate_size": ("bert.encoder.layer.0.intermediate.dense.weight", 0),
            "visual_embedding_dim": (PROJECTION[0], 1)}
    found: Dict[str, Any] = {k: int(base[key][axis]) for k, (key, axis) in read.items() if key in base}
    layers = {int(m.group(1)) for m in map(_LAYER.match, base) if m}
    if layers:
        found["num_hidden_layers"] = max(layers) + 1
    return dict(found, **given)


def head_from_checkpoint(name: str, inputs, spec, head_cfg: Dict[str, Any], path, *,
                         trust_pickle: bool = False) -> Tuple[nn.Module, LoadReport]:
    """Build head ``name`` (``visualbert``, or ``refnet`` with ``base="visualbert"``) with the sizes the
    checkpoint at ``path`` implies where ``head_cfg`` gives none, and load it -> (head, report)."""
    return build_from_checkpoint("visualbert", name, inputs, spec, head_cfg, path, trust_pickle=trust_pickle,
                                 config_from_checkpoint=config_from_checkpoint, load_state=load_state,
                                 how_to_get=HOW_TO_GET)
