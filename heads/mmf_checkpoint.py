"""MMF's own model files (an MMF run's ``model.pth``, the zoo's fine-tuned Hateful Memes baselines) for the heads
of the paper's MMF baselines: ``text-bert``, ``concat-bert``, ``late-fusion``, ``mmbt`` (their BERT part is read
through ``heads.text_bert_checkpoint``), ``image-region`` and ``mmbt-region``.

A file is MMF's BaseModel ``state_dict``, bare or under ``"model"`` (a DataParallel ``module.`` before every key
is dropped by the caller). ``mmf_layout`` tells which MMF model wrote it from its prefixes (``MMF_LAYOUTS``);
it loads into the head of that model only, and another head is refused in one line naming the right one.
MMF's builders keep the modules themselves in the tree (``build_text_encoder``, ``build_image_encoder`` and
``build_classifier_layer`` return the factory's ``module``; mmf/utils/build.py), so the names are:

* BERT: ``base.encoder.*`` (``UnimodalText``), ``base.text.*`` (``FusionBase``: concat_bert, late_fusion),
  ``model.bert.mmbt.transformer.*`` (``MMBT``) -> ``bert.*``; a file saved with the text factory in the tree
  (``module.*`` next to ``_module.module.*`` / ``_module.embeddings.*``) reads the ``module.`` copy and reports
  the others as ignored "duplicate registrations".
* Detectron's fc7 (``FinetuneFasterRcnnFpnFc7``, MMF's ``finetune_faster_rcnn_fpn_fc7`` with
  ``direct_features_input``; mmf/modules/encoders.py): its ``lc`` Linear under ``base.encoder.`` (``UnimodalModal``:
  ``UnimodalBase.encoder`` is the modal encoder) or ``model.bert.mmbt.modal_encoder.encoder.`` (``ModalEmbeddings``),
  also as ``module.lc.*`` (the older name its ``_load_from_state_dict`` renames) -> ``fc7.lc.*``, reported as
  used "fc7 (MMF's, fine-tuned)". MMF fine-tunes fc7 with the head; the regions it reads (detectron.lmdb's fc6)
  are fixed, so a fine-tuned Image-Region or MMBT-Region file loaded here computes MMF's model whole.
* ``MLPClassifer`` (``classifier.*``; late_fusion ``text_classifier.*`` -> ``mlp`` / ``outputs``,
  ``modal_classifier.*`` -> ``image_mlp`` / ``image_outputs``): ``layers.N`` below its final Linear -> ``mlp.N``
  (MLP with batch_norm keeps its order: Linear, BatchNorm1d with its running statistics, activation, Dropout);
  the final Linear -> ``outputs.layers.<task>`` when its row count is the task's output count, else ignored
  "classifier of another label count" (ours left initialised).
* MMBT: ``model.bert.mmbt.modal_encoder.proj_embeddings.*`` -> ``modal_encoder.proj_embeddings.*``; the modal
  encoder's ``{word,position,token_type}_embeddings`` and ``LayerNorm`` (BERT's own modules, shared, so saved
  twice) -> ignored "shared copies of BERT's tables"; ``model.classifier.0.*`` -> ``transform.*``,
  ``model.classifier.1.*`` -> ``outputs.layers.<task>.*`` (the label-count rule).
* MMF's ResNet-152 (``base.modal.*``, ``base.encoder.model.*``, ``model.bert.mmbt.modal_encoder.encoder.*``) ->
  ignored "image encoder (cached features are used)"; ``position_ids`` buffers -> ignored "buffers".

Refused in one line: MMF's Image-Grid (``unimodal_image`` over a ResNet-152): MMF fine-tunes that ResNet, so its
classifier reads features the cached grid sets do not hold, and no head here reads the file.

``mmf_config`` reads the sizes a file implies where the head config gives none: BERT's (attention head counts
cannot be read: 12 unless given), ``fc7_dim`` from fc7's rows and the classifier's ``hidden`` widths.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from torch import Tensor, nn

from featstore.errors import FeatstoreError

from .checkpoints import OTHER_LABEL_COUNT, LoadReport, head_from_checkpoint as build_from_checkpoint, read_weights
from .visualbert_checkpoint import config_from_checkpoint as bert_sizes, copy_tensors, finish_load

MMBT = "model.bert.mmbt."
MMBT_MODAL = MMBT + "modal_encoder."


@dataclass(frozen=True)
class Layout:
    """Where one MMF model keeps its parts; ``head`` reads it ("" = no head here does)."""

    head: str
    bert: str = ""  # the text encoder's prefix ("" = no BERT)
    classifiers: Dict[str, Tuple[str, str]] = field(default_factory=dict)  # MLPClassifer prefix -> (mlp, outputs)
    fc7: str = ""  # FinetuneFasterRcnnFpnFc7's prefix ("" = none)

    @property
    def required(self) -> str:
        """The report group a file of this layout must fill (else it is refused as holding nothing)."""
        return "backbone" if self.bert else FC7_GROUP


MMF_LAYOUTS = {
    "unimodal_text": Layout("text-bert", "base.encoder.", {"classifier.": ("mlp", "outputs")}),
    "unimodal_image": Layout("image-region", "", {"classifier.": ("mlp", "outputs")}, fc7="base.encoder."),
    "unimodal_image_grid": Layout("", "", {"classifier.": ("mlp", "outputs")}),
    "concat_bert": Layout("concat-bert", "base.text.", {"classifier.": ("mlp", "outputs")}),
    "late_fusion": Layout("late-fusion", "base.text.", {"text_classifier.": ("mlp", "outputs"),
                                                        "modal_classifier.": ("image_mlp", "image_outputs")}),
    "mmbt": Layout("mmbt", MMBT + "transformer."),
    "mmbt_region": Layout("mmbt-region", MMBT + "transformer.", fc7=MMBT_MODAL + "encoder."),
}
IMAGE_ENCODER = ("base.modal.", "base.encoder.model.", MMBT_MODAL + "encoder.")  # ResNet-152: features are cached
MMBT_SHARED = tuple(f"{MMBT_MODAL}{t}." for t in ("word_embeddings", "position_embeddings",
                                                   "token_type_embeddings", "LayerNorm"))
FC7_GROUP = "fc7 (MMF's, fine-tuned)"
IGNORED_IMAGE = "image encoder (cached features are used)"
OTHER = "other heads (pretraining / task layers)"
_CLF_LAYER = re.compile(r"^(?:module\.)?layers\.(\d+)\.(.+)$")
MMF_NOTE = "MMF's own {model} file (model.pth): {parts} load{images}"
RESNET_NOTE = "; MMF's ResNet-152 is not read (the head reads cached image features)"
WANTED = {"backbone": "BERT weights (keys like 'bert.encoder.layer.0...' or 'encoder.layer.0...')",
          FC7_GROUP: "fc7 weights (MMF's base.encoder.lc.*)"}
HOW_TO_GET_IMAGE_REGION = ("pass MMF's own Image-Region model.pth (an MMF unimodal_image run with "
                           "direct_features_input, or the zoo's unimodal_image.hateful_memes.features); without one, "
                           "train --preset image-region-hm with --set fc7_weights=DIR for Detectron's fc7")


def strip_data_parallel(sd: Dict[str, Any]) -> Dict[str, Any]:
    """``sd`` without the ``module.`` that DataParallel puts before every key (when every key has it)."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def holds_fc7(keys, prefix: str) -> bool:
    """Whether ``keys`` hold a FinetuneFasterRcnnFpnFc7 (its ``lc``, or the older ``module.lc``) under ``prefix``."""
    return any(k.startswith((prefix + "lc.", prefix + "module.lc.")) for k in keys)


def holds_bert(keys, prefix: str) -> bool:
    """Whether ``keys`` hold BERT's tensors under MMF's text-encoder ``prefix``."""
    return any(bert_part(k[len(prefix):])[1] == "backbone" for k in keys if k.startswith(prefix))


def mmf_layout(keys) -> Optional[str]:
    """MMF's model name (``MMF_LAYOUTS``) whose module tree ``keys`` follow, or None (a plain BERT etc.):
    ``MMBT`` -> ``model.bert.mmbt.*`` (``mmbt_region`` with fc7 in its modal encoder); ``UnimodalText`` /
    ``UnimodalModal`` -> ``base.encoder.*`` with ``classifier.*`` (BERT / fc7 / else a ResNet); ``ConcatBERT`` /
    ``LateFusion`` (``FusionBase``) -> ``base.text.*`` with ``classifier.*`` / ``text_classifier.*``."""
    keys = list(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has(MMBT):
        return "mmbt_region" if holds_fc7(keys, MMBT_MODAL + "encoder.") else "mmbt"
    if has("base.encoder.") and has("classifier."):
        if holds_fc7(keys, "base.encoder."):
            return "unimodal_image"
        return "unimodal_text" if holds_bert(keys, "base.encoder.") else "unimodal_image_grid"
    if has("base.text."):
        return "late_fusion" if has("text_classifier.") else "concat_bert" if has("classifier.") else None
    return None


def bert_part(rest: str) -> Tuple[Optional[str], str]:
    """(our ``bert.*`` key or None, group) of a key after MMF's text-encoder prefix (module docstring: the
    ``module.`` copy is read, the ``_module.`` ones are duplicates)."""
    if rest.startswith("_module."):
        return None, "duplicate registrations"
    if rest.startswith("module."):
        rest = rest[len("module."):]
    if rest.endswith(("position_ids", "token_type_ids")):
        return None, "buffers"
    if rest.startswith(("embeddings.", "encoder.", "pooler.")):
        return "bert." + rest, "backbone"
    return None, OTHER


def fc7_part(rest: str) -> Tuple[Optional[str], str]:
    """(our ``fc7.lc.*`` key or None, group) of a key after MMF's fc7 prefix; anything but ``lc`` is MMF's
    image encoder."""
    if rest.startswith("module."):
        rest = rest[len("module."):]
    if rest in ("lc.weight", "lc.bias"):
        return "fc7." + rest, FC7_GROUP
    return None, IGNORED_IMAGE


def classifier_part(rest: str, names: Tuple[str, str], last: int, task: Optional[str]) -> Tuple[Optional[str], str]:
    """(our key or None, group) of a key after an ``MLPClassifer`` prefix: ``layers.N`` (N < ``last``, the
    index of its final Linear) -> ``<mlp>.N`` (MLP with batch_norm keeps MLPClassifer's order), ``layers.<last>`` ->
    ``<outputs>.layers.<task>`` (None when the head has several tasks)."""
    m = _CLF_LAYER.match(rest)
    if m is None:
        return None, OTHER
    n, leaf = int(m.group(1)), m.group(2)
    if n < last:
        return f"{names[0]}.{n}.{leaf}", "classifier"
    return (f"{names[1]}.layers.{task}.{leaf}" if task else None), "classifier"


def mmbt_part(key: str, task: Optional[str]) -> Tuple[Optional[str], str]:
    """(our key or None, group) of an MMBT key outside its transformer and fc7: the modal projection, the shared
    copies of BERT's modules, the classifier (``classifier.0`` transform, ``classifier.1`` Linear)."""
    if key.startswith(MMBT_MODAL + "proj_embeddings."):
        return "modal_encoder." + key[len(MMBT_MODAL):], "modal projection"
    if key.startswith(MMBT_SHARED):
        return None, "shared copies of BERT's tables"
    if key.startswith("model.classifier.0."):
        return "transform." + key[len("model.classifier.0."):], "classifier"
    if key.startswith("model.classifier.1."):
        return (f"outputs.layers.{task}." + key[len("model.classifier.1."):] if task else None), "classifier"
    return None, OTHER


def last_linear(keys, prefix: str) -> int:
    """The index of an ``MLPClassifer``'s final Linear (its highest ``layers.N``) under ``prefix``."""
    found = [int(m.group(1)) for k in keys if k.startswith(prefix) for m in [_CLF_LAYER.match(k[len(prefix):])] if m]
    return max(found, default=0)


def map_mmf_key(key: str, layout: str, lasts: Dict[str, int], task: Optional[str]) -> Tuple[Optional[str], str]:
    """(our key or None, report group) of MMF key ``key`` in ``layout``'s module tree; a classifier tensor with
    no place (a final layer for several tasks) is in ``OTHER_LABEL_COUNT``."""
    target, group = _map_mmf_key(key, MMF_LAYOUTS[layout], lasts, task)
    return target, (OTHER_LABEL_COUNT if target is None and group == "classifier" else group)


def _map_mmf_key(key: str, layout: Layout, lasts: Dict[str, int], task: Optional[str]) -> Tuple[Optional[str], str]:
    if layout.bert and key.startswith(layout.bert):
        return bert_part(key[len(layout.bert):])
    if layout.fc7 and key.startswith(layout.fc7):
        return fc7_part(key[len(layout.fc7):])
    if key.startswith(IMAGE_ENCODER):
        return None, IGNORED_IMAGE
    for prefix, names in layout.classifiers.items():
        if key.startswith(prefix):
            return classifier_part(key[len(prefix):], names, lasts[prefix], task)
    if layout.head.startswith("mmbt"):
        return mmbt_part(key, task)
    return None, OTHER


def check_mmf_head(head_name: str, layout: str, path: str) -> None:
    """One-line refusal of an MMF file of another model than head ``head_name``'s (or of one no head here
    reads); called before the head is built from the file's sizes and again when it loads."""
    want = MMF_LAYOUTS[layout].head
    if not want:
        raise FeatstoreError(f"checkpoint {path!r} is MMF's unimodal_image over a ResNet-152 (Image-Grid, "
                             "model.pth): MMF fine-tunes that ResNet, so its classifier does not read the cached grid "
                             "features and no head here loads it; train --preset image-grid-hm instead (MMF's "
                             "Image-Region file, unimodal_image.hateful_memes.features, loads into --head "
                             "image-region)")
    if head_name != want:
        other = ", or pass a plain BERT" if head_name != "image-region" else ""
        raise FeatstoreError(f"checkpoint {path!r} is MMF's {layout} (model.pth), which the {want!r} head reads, "
                             f"not {head_name!r}; train it with --head {want}{other}")


def placed(report: LoadReport, key: str, target: str, have, want) -> bool:
    """Whether ``key`` (shape ``have``) fits ``target`` (``want``): a final Linear of another label count is
    reported ignored; any other mismatch is refused in one line."""
    if have == want:
        return True
    if ".layers." in target and target.startswith(("outputs.", "image_outputs.")):
        return report.other_label_count(key, have, want)
    raise FeatstoreError(f"checkpoint key {key!r} has shape {tuple(have)} but the head's {target!r} has "
                         f"{tuple(want)}; build the head with the checkpoint's sizes (hidden_size, intermediate_size, "
                         "vocab_size, hidden, fc7_dim)")


def load_mmf_state(head: nn.Module, sd: Dict[str, Tensor], path: str, how_to_get: str) -> LoadReport:
    """Copy MMF's own model file ``sd`` (``mmf_layout`` not None) into ``head`` (in place) and report."""
    name = mmf_layout(sd)
    check_mmf_head(head.head_name, name, path)
    layout = MMF_LAYOUTS[name]
    tasks = [t.name for t in head.outputs.tasks]
    task = tasks[0] if len(tasks) == 1 else None
    lasts = {p: last_linear(sd, p) for p in layout.classifiers}
    report, mapped = copy_tensors(head, sd, path, lambda key: map_mmf_key(key, name, lasts, task), placed,
                                  WANTED[layout.required], how_to_get,
                                  "layer counts (num_hidden_layers, hidden, batch_norm)", absent_ok=(),
                                  required=layout.required)
    report.note(mmf_note(name, layout, report))
    return finish_load(head, mapped, report)


def mmf_note(name: str, layout: Layout, report: LoadReport) -> str:
    """What a file of ``layout`` gave: its parts, and whether a ResNet in it was left out."""
    parts = [p for p, on in (("BERT (pooler included)", layout.bert), ("fc7", layout.fc7)) if on] + ["the classifier"]
    listed = " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
    images = RESNET_NOTE if f"ignored: {IGNORED_IMAGE}" in report.groups else ""
    return MMF_NOTE.format(model=name, parts=listed, images=images)


def mmf_config(layout_name: str, shapes: Dict[str, tuple], given: Dict[str, Any]) -> Dict[str, Any]:
    """``given`` completed with the sizes of MMF's file (``shapes``): BERT's, ``fc7_dim`` (fc7's rows) and,
    for the MLPClassifer heads, the hidden widths (``hidden``) of its (text) classifier."""
    layout = MMF_LAYOUTS[layout_name]
    found: Dict[str, Any] = {}
    if layout.bert:
        bert = {t: s for k, s in shapes.items() if k.startswith(layout.bert)
                for t, _ in [bert_part(k[len(layout.bert):])] if t is not None}
        found = bert_sizes(bert, {})
        found.pop("visual_embedding_dim", None)
    if layout.fc7:
        rows = [s[0] for k, s in shapes.items() if k.startswith(layout.fc7) and fc7_part(k[len(layout.fc7):])[0]
                == "fc7.lc.weight"]
        found.update({"fc7_dim": int(rows[0])} if rows else {})
    if layout.classifiers and "hidden" not in given:
        prefix = next(iter(layout.classifiers))
        last = last_linear(shapes, prefix)
        widths = {int(m.group(1)): s[0] for k, s in shapes.items() if k.startswith(prefix) and len(s) == 2
                  for m in [_CLF_LAYER.match(k[len(prefix):])] if m and m.group(2) == "weight"}
        found["hidden"] = [int(widths[n]) for n in sorted(widths) if n < last]
    return dict(found, **given)


# ------------------------------------------------------------------ image-region: MMF's file is its only checkpoint


def load_state(head: nn.Module, sd: Dict[str, Tensor], path: str) -> LoadReport:
    """Copy MMF's Image-Region file ``sd`` into the image-region ``head`` (in place) and report; any other file
    is refused in one line."""
    if getattr(head, "head_name", "") != "image-region":
        raise FeatstoreError("heads.mmf_checkpoint.load_state loads an 'image-region' head; the BERT heads load "
                             "through heads.text_bert_checkpoint")
    sd = strip_data_parallel(sd)
    if mmf_layout(sd) is None:
        raise FeatstoreError(f"checkpoint {path!r} is not an MMF model file; the image-region head reads MMF's "
                             f"unimodal_image model.pth only: {HOW_TO_GET_IMAGE_REGION}")
    return load_mmf_state(head, sd, path, HOW_TO_GET_IMAGE_REGION)


def mmf_file_config(shapes: Dict[str, tuple], given: Dict[str, Any], head_name: str,
                    path: str) -> Optional[Dict[str, Any]]:
    """``given`` completed with the sizes an MMF file implies (``mmf_config``), a file of another model than
    ``head_name``'s refused first; None when ``shapes`` are not an MMF file's. The one sizing of MMF files,
    for this module's image-region and ``heads.text_bert_checkpoint``'s heads."""
    shapes = strip_data_parallel(shapes)
    layout = mmf_layout(shapes)
    if layout is None:
        return None
    check_mmf_head(head_name, layout, path)
    return mmf_config(layout, shapes, given)


def config_from_checkpoint(shapes: Dict[str, tuple], given: Dict[str, Any], head_name: str,
                           path: str) -> Dict[str, Any]:
    """``mmf_file_config``, or ``given`` for another file (refused when it loads: ``load_state``)."""
    found = mmf_file_config(shapes, given, head_name, path)
    return given if found is None else found


def head_from_checkpoint(name: str, inputs, spec, head_cfg: Dict[str, Any], path, *,
                         trust_pickle: bool = False) -> Tuple[nn.Module, LoadReport]:
    """Build the image-region head with the sizes MMF's file at ``path`` implies where ``head_cfg`` gives none,
    and load it -> (head, report)."""
    sizes = lambda shapes, given: config_from_checkpoint(shapes, given, name, str(path))  # noqa: E731
    return build_from_checkpoint("image-region", name, inputs, spec, head_cfg, path, trust_pickle=trust_pickle,
                                 config_from_checkpoint=sizes, load_state=load_state,
                                 how_to_get=HOW_TO_GET_IMAGE_REGION)
