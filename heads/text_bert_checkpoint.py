"""Load a plain BERT into a ``text-bert``, ``concat-bert`` or ``late-fusion`` head (``heads.models.text_bert``) or an
``mmbt`` head (``heads.models.mmbt``), whole.

MMF's Text BERT and Concat BERT build their text encoder with ``BertModelJit.from_pretrained(bert_model_name)``
(mmf/modules/encoders.py ``TransformerEncoder``, bert-base-uncased in the Hateful Memes configs): BERT's
embeddings, every layer and its pooler load, and the classifier (``MLPClassifer``) keeps PyTorch's default
initialisation; MMF's MMBT builds its ``transformer`` the same way (``MMBTBase``'s text encoder) and leaves its
modal projection and classifier initialised. Here the same:

* accepted: a transformers ``save_pretrained`` folder of a ``BertModel`` (bare ``embeddings.*`` / ``encoder.*`` /
  ``pooler.*``) or a ``BertForPreTraining`` / ``BertForSequenceClassification`` (``bert.*``), a
  ``pytorch_model.bin`` / ``model.safetensors`` file (TF-port ``LayerNorm.gamma`` / ``beta`` read as
  ``weight`` / ``bias``), or a model id in the local Hugging Face cache (``heads.checkpoints.read_weights``);
* the keys map as in ``heads.visualbert_checkpoint`` (the heads share visualbert's module names:
  ``bert.embeddings.*``, ``bert.encoder.layer.N.*``, ``bert.pooler.dense.*``), with its loop (``copy_bert``);
* the report: used = every BERT tensor, pooler included; ignored = pretraining / task heads (``cls.*``,
  ``classifier.*``) and buffers; missing = ``mlp.*`` and ``outputs.*`` (MMF's MLPClassifer, left initialised;
  late-fusion also ``image_mlp.*`` / ``image_outputs.*``; mmbt: ``modal_encoder.*``, ``transform.*`` and
  ``outputs.*``);
* a ViLBERT or VisualBERT checkpoint is refused in one line naming the head that reads it.

MMF's own model files (an MMF run's ``model.pth``, the zoo's fine-tuned Hateful Memes models: the BaseModel's
state_dict, bare or under ``"model"``; a DataParallel ``module.`` before every key is dropped) load for the head
of the same model (``mmf_layout`` tells which by the prefixes; another head is refused naming it; not
``mmbt-region``). MMF's model builders keep the BertModel and the MLPClassifer themselves in the tree
(``build_text_encoder`` / ``build_classifier_layer`` return the factory's ``module``):

* text-bert (``unimodal_text``): ``base.encoder.{embeddings,encoder,pooler}.*`` -> ``bert.*``; concat-bert /
  late-fusion (``FusionBase``): ``base.text.*`` -> ``bert.*``. A file saved with the encoder factory in the
  tree (``module.*`` next to ``_module.module.*`` / ``_module.embeddings.*``) reads the ``module.`` copy and
  reports the others as ignored "duplicate registrations".
* MLPClassifer (``classifier.*``; late-fusion ``text_classifier.*`` -> ``mlp`` / ``outputs``,
  ``modal_classifier.*`` -> ``image_mlp`` / ``image_outputs``): ``layers.N`` for N below its final Linear ->
  ``mlp.N`` (MLP with batch_norm keeps its order: Linear, BatchNorm1d with its running statistics, activation,
  Dropout), the final Linear -> ``outputs.layers.<task>`` when its row count is the task's output count, else
  ignored "classifier of another label count" (ours left initialised).
* mmbt: ``model.bert.mmbt.transformer.*`` -> ``bert.*``; ``model.bert.mmbt.modal_encoder.proj_embeddings.*``
  -> ``modal_encoder.proj_embeddings.*``; the modal encoder's ``{word,position,token_type}_embeddings`` ->
  ignored "shared copies of BERT's tables"; ``model.classifier.0.*`` -> ``transform.*``,
  ``model.classifier.1.*`` -> ``outputs.layers.<task>.*`` (the label-count rule).
* the image encoder (``base.modal.*``, ``model.bert.mmbt.modal_encoder.encoder.*``: MMF's ResNet-152) ->
  ignored "image encoder (cached features are used)"; ``position_ids`` buffers -> ignored "buffers".

``head_from_checkpoint`` reads the BERT sizes and layer count from the shapes where the head config gives none
(attention head counts cannot be read: 12 unless given); from an MMF file also the classifier's ``hidden``.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

from torch import Tensor, nn

from featstore.errors import FeatstoreError

from .checkpoints import LoadReport, head_from_checkpoint as build_from_checkpoint, read_weights
from .visualbert_checkpoint import (config_from_checkpoint as bert_sizes, copy_bert, copy_tensors, finish_load,
                                   refuse_other_family)

HEADS_READ = ("text-bert", "concat-bert", "late-fusion", "mmbt", "mmbt-region")
WANTED = "BERT weights (keys like 'bert.encoder.layer.0...' or 'encoder.layer.0...')"
HOW_TO_GET = ("pass a bert-base-uncased folder (save_pretrained), its pytorch_model.bin / model.safetensors, or "
              "the model id bert-base-uncased from the local Hugging Face cache (on a connected machine: "
              "huggingface-cli download bert-base-uncased)")
PLAIN_NOTE = ("a plain BERT, as MMF's TransformerEncoder (BertModelJit.from_pretrained): embeddings, layers and "
              "pooler come from it; the MLP classifier keeps PyTorch's default initialisation, as MMF's")
MMBT_NOTE = ("a plain BERT, as MMF's MMBT text encoder (BertModelJit.from_pretrained): embeddings, layers and "
             "pooler come from it; the modal projection (modal_encoder.proj_embeddings) and the classifier "
             "(transform, outputs) keep PyTorch's default initialisation, as MMF's")


# ------------------------------------------------------------------ MMF's own model files (model.pth)

MMF_LAYOUTS = {  # MMF model -> (our head, BERT prefix, {classifier prefix: (our mlp, our outputs)})
    "unimodal_text": ("text-bert", "base.encoder.", {"classifier.": ("mlp", "outputs")}),
    "concat_bert": ("concat-bert", "base.text.", {"classifier.": ("mlp", "outputs")}),
    "late_fusion": ("late-fusion", "base.text.", {"text_classifier.": ("mlp", "outputs"),
                                                  "modal_classifier.": ("image_mlp", "image_outputs")}),
    "mmbt": ("mmbt", "model.bert.mmbt.transformer.", {}),
}
IMAGE_ENCODER = ("base.modal.", "model.bert.mmbt.modal_encoder.encoder.")  # ResNet-152 / fc7: features are cached
MMBT_MODAL = "model.bert.mmbt.modal_encoder."
MMBT_TABLES = tuple(f"{MMBT_MODAL}{t}_embeddings." for t in ("word", "position", "token_type"))
IGNORED_IMAGE = "image encoder (cached features are used)"
IGNORED_OTHER_COUNT = "classifier of another label count"
_CLF_LAYER = re.compile(r"^(?:module\.)?layers\.(\d+)\.(.+)$")
MMF_NOTE = ("MMF's own {model} file (model.pth): BERT, pooler included, and the classifier load; the image "
            "encoder is not read (the head reads cached image features)")


def strip_data_parallel(sd: Dict[str, Any]) -> Dict[str, Any]:
    """``sd`` without the ``module.`` that DataParallel puts before every key (when every key has it)."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def mmf_layout(keys) -> Optional[str]:
    """MMF's model name (``MMF_LAYOUTS``) whose module tree ``keys`` follow, or None (a plain BERT etc.):
    ``MMBT`` -> ``model.bert.mmbt.*``; ``UnimodalText`` -> ``base.encoder.*``; ``ConcatBERT`` / ``LateFusion``
    (``FusionBase``) -> ``base.text.*`` with ``classifier.*`` / ``text_classifier.*``."""
    keys = list(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("model.bert.mmbt."):
        return "mmbt"
    if has("base.encoder.") and has("classifier."):
        return "unimodal_text"
    if has("base.text."):
        return "late_fusion" if has("text_classifier.") else "concat_bert" if has("classifier.") else None
    return None


def bert_part(rest: str) -> Tuple[Optional[str], str]:
    """(our ``bert.*`` key or None, group) of a key after MMF's text-encoder prefix. MMF keeps the BertModel
    itself there (``build_text_encoder`` returns the factory's ``module``); a file saved with the factory in
    the tree holds it twice, ``module.*`` and ``_module.module.*`` (plus ``_module.embeddings.*``): the
    ``module.`` copy is read, the ``_module.`` ones are duplicates."""
    if rest.startswith("_module."):
        return None, "duplicate registrations"
    if rest.startswith("module."):
        rest = rest[len("module."):]
    if rest.endswith(("position_ids", "token_type_ids")):
        return None, "buffers"
    if rest.startswith(("embeddings.", "encoder.", "pooler.")):
        return "bert." + rest, "backbone"
    return None, "other heads (pretraining / task layers)"


def classifier_part(rest: str, names: Tuple[str, str], last: int, task: Optional[str]) -> Tuple[Optional[str], str]:
    """(our key or None, group) of a key after an ``MLPClassifer`` prefix: ``layers.N`` (N < ``last``, the
    index of its final Linear) -> ``<mlp>.N`` (MLP with batch_norm keeps MLPClassifer's order), ``layers.<last>`` ->
    ``<outputs>.layers.<task>`` (None when the head has several tasks)."""
    m = _CLF_LAYER.match(rest)
    if m is None:
        return None, "other heads (pretraining / task layers)"
    n, leaf = int(m.group(1)), m.group(2)
    if n < last:
        return f"{names[0]}.{n}.{leaf}", "classifier"
    return (f"{names[1]}.layers.{task}.{leaf}" if task else None), "classifier"


def mmbt_part(key: str, task: Optional[str]) -> Tuple[Optional[str], str]:
    """(our key or None, group) of an MMBT key outside its transformer: the modal projection, the shared
    copies of BERT's tables, the classifier (``classifier.0`` transform, ``classifier.1`` Linear)."""
    if key.startswith(MMBT_MODAL + "proj_embeddings."):
        return "modal_encoder." + key[len(MMBT_MODAL):], "modal projection"
    if key.startswith(MMBT_TABLES):
        return None, "shared copies of BERT's tables"
    if key.startswith("model.classifier.0."):
        return "transform." + key[len("model.classifier.0."):], "classifier"
    if key.startswith("model.classifier.1."):
        return (f"outputs.layers.{task}." + key[len("model.classifier.1."):] if task else None), "classifier"
    return None, "other heads (pretraining / task layers)"


def last_linear(keys, prefix: str) -> int:
    """The index of an ``MLPClassifer``'s final Linear (its highest ``layers.N``) under ``prefix``."""
    found = [int(m.group(1)) for k in keys if k.startswith(prefix) for m in [_CLF_LAYER.match(k[len(prefix):])] if m]
    return max(found, default=0)


def map_mmf_key(key: str, layout: str, lasts: Dict[str, int], task: Optional[str]) -> Tuple[Optional[str], str]:
    """(our key or None, report group) of MMF key ``key`` in ``layout``'s module tree; a classifier tensor with
    no place (a final layer for several tasks) is in ``IGNORED_OTHER_COUNT``."""
    target, group = _map_mmf_key(key, layout, lasts, task)
    return target, (IGNORED_OTHER_COUNT if target is None and group == "classifier" else group)


def _map_mmf_key(key: str, layout: str, lasts: Dict[str, int], task: Optional[str]) -> Tuple[Optional[str], str]:
    _, bert_prefix, classifiers = MMF_LAYOUTS[layout]
    if key.startswith(bert_prefix):
        return bert_part(key[len(bert_prefix):])
    if key.startswith(IMAGE_ENCODER):
        return None, IGNORED_IMAGE
    for prefix, names in classifiers.items():
        if key.startswith(prefix):
            return classifier_part(key[len(prefix):], names, lasts[prefix], task)
    if layout == "mmbt":
        return mmbt_part(key, task)
    return None, "other heads (pretraining / task layers)"


def check_mmf_head(head: nn.Module, layout: str, path: str) -> None:
    """One-line refusal of an MMF file of another model than ``head``'s."""
    want = MMF_LAYOUTS[layout][0]
    if head.head_name != want:
        raise FeatstoreError(f"checkpoint {path!r} is MMF's {layout} (model.pth), which the {want!r} head reads, "
                             f"not {head.head_name!r}; train it with --head {want}, or pass a plain BERT")


def placed(report: LoadReport, key: str, target: str, have, want) -> bool:
    """Whether ``key`` (shape ``have``) fits ``target`` (``want``): a final Linear of another label count is
    reported ignored; any other mismatch is refused in one line."""
    if have == want:
        return True
    if ".layers." in target and target.startswith(("outputs.", "image_outputs.")):
        report.add("ignored", IGNORED_OTHER_COUNT, key)
        report.note(f"classifier: the checkpoint's final layer has shape {list(have)}, the head's {list(want)} "
                    "(another label count); it was left initialised")
        return False
    raise FeatstoreError(f"checkpoint key {key!r} has shape {tuple(have)} but the head's {target!r} has "
                         f"{tuple(want)}; build the head with the checkpoint's sizes (hidden_size, intermediate_size, "
                         "vocab_size, hidden)")


def load_mmf_state(head: nn.Module, sd: Dict[str, Tensor], path: str) -> LoadReport:
    """Copy MMF's own model file ``sd`` (``mmf_layout`` not None) into ``head`` (in place) and report."""
    layout = mmf_layout(sd)
    check_mmf_head(head, layout, path)
    tasks = [t.name for t in head.outputs.tasks]
    task = tasks[0] if len(tasks) == 1 else None
    lasts = {p: last_linear(sd, p) for p in MMF_LAYOUTS[layout][2]}
    report, mapped = copy_tensors(head, sd, path, lambda key: map_mmf_key(key, layout, lasts, task), placed,
                                  WANTED, HOW_TO_GET, "layer counts (num_hidden_layers, hidden, batch_norm)",
                                  absent_ok=())
    report.note(MMF_NOTE.format(model=layout))
    return finish_load(head, mapped, report)


def mmf_config(layout: str, shapes: Dict[str, tuple], given: Dict[str, Any]) -> Dict[str, Any]:
    """``given`` completed with the BERT sizes of MMF's file (``shapes``) and, for the MLPClassifer heads, the
    hidden widths (``hidden``) of its (text) classifier."""
    _, bert_prefix, classifiers = MMF_LAYOUTS[layout]
    bert = {t: s for k, s in shapes.items() if k.startswith(bert_prefix)
            for t, _ in [bert_part(k[len(bert_prefix):])] if t is not None}
    found = bert_sizes(bert, {})
    found.pop("visual_embedding_dim", None)
    if classifiers and "hidden" not in given:
        prefix = next(iter(classifiers))
        last = last_linear(shapes, prefix)
        widths = {int(m.group(1)): s[0] for k, s in shapes.items() if k.startswith(prefix) and len(s) == 2
                  for m in [_CLF_LAYER.match(k[len(prefix):])] if m and m.group(2) == "weight"}
        found["hidden"] = [int(widths[n]) for n in sorted(widths) if n < last]
    return dict(found, **given)


def load_state(head: nn.Module, sd: Dict[str, Tensor], path: str) -> LoadReport:
    """Copy BERT's tensors of ``sd`` into the text-bert / concat-bert / late-fusion / mmbt / mmbt-region ``head``
    (in place) and report."""
    if getattr(head, "head_name", "") not in HEADS_READ:
        raise FeatstoreError("load_text_bert_checkpoint needs a 'text-bert', 'concat-bert', 'late-fusion', 'mmbt' or "
                             "'mmbt-region' head; build the run with --head text-bert, concat-bert, late-fusion, mmbt "
                             "or mmbt-region")
    sd = strip_data_parallel(sd)
    if mmf_layout(sd) is not None:
        return load_mmf_state(head, sd, path)
    refuse_other_family(sd, path, ("vilbert", "visualbert"), "BERT")
    report, mapped = copy_bert(head, sd, path, (), WANTED, HOW_TO_GET)
    report.note(MMBT_NOTE if head.head_name in ("mmbt", "mmbt-region") else PLAIN_NOTE)
    return finish_load(head, mapped, report)


def load_text_bert_checkpoint(head: nn.Module, path, *, trust_pickle: bool = False) -> LoadReport:
    """Copy the BERT at ``path`` (file, folder or cached model id) into ``head`` (in place) -> report."""
    return load_state(head, read_weights(path, trust_pickle, HOW_TO_GET), str(path))


def config_from_checkpoint(shapes: Dict[str, tuple], given: Dict[str, Any]) -> Dict[str, Any]:
    """``given`` completed with the BERT sizes and layer count the shapes imply (visualbert's reading, without
    its projection width: a VisualBERT file is refused when it loads)."""
    shapes = strip_data_parallel(shapes)
    layout = mmf_layout(shapes)
    if layout is not None:
        return mmf_config(layout, shapes, given)
    found = bert_sizes(shapes, given)
    if "visual_embedding_dim" not in given:
        found.pop("visual_embedding_dim", None)
    return found


def head_from_checkpoint(name: str, inputs, spec, head_cfg: Dict[str, Any], path, *,
                         trust_pickle: bool = False) -> Tuple[nn.Module, LoadReport]:
    """Build head ``name`` (one of ``HEADS_READ``) with the sizes the BERT at ``path`` implies where
    ``head_cfg`` gives none, and load it -> (head, report)."""
    family = name if name in HEADS_READ else HEADS_READ[0]
    return build_from_checkpoint(family, name, inputs, spec, head_cfg, path, trust_pickle=trust_pickle,
                                 config_from_checkpoint=config_from_checkpoint, load_state=load_state,
                                 how_to_get=HOW_TO_GET)
