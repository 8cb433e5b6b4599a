"""MMF's own model files (an MMF run's ``model.pth``, the zoo's fine-tuned Hateful Memes baselines) for the heads
of the paper's MMF baselines: ``text-bert``, ``concat-bert``, ``late-fusion``, ``mmbt`` (their BERT part is read
through ``heads.text_bert_checkpoint``), ``image-region``, ``mmbt-region`` and ``image-only`` (Image-Grid).

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
  ignored "fine-tuned ResNet-152 (featstore extract reads it)"; ``position_ids`` buffers -> ignored "buffers".

MMF fine-tunes that ResNet-152 in concat_bert, late_fusion, mmbt and unimodal_image (Image-Grid; ``freeze_modal`` /
``freeze_base`` false), so their classifiers were trained on its vectors, not on an ImageNet ResNet's. The heads
read cached vectors; ``featstore extract --extractor grid --set weights=model.pth --set
preprocess=mmf-hateful-memes`` computes them with the file's own ResNet (``featstore.extractors.mmf_resnet``) and
records the file's sha256 (``fingerprint_files``) as the set's weights fingerprint. ``image_source_note`` compares
the run's image sets (``TrainData.meta["features"]``) with the file: extracted from it, by grid with MMF's input
and read through ``pooled`` -> the note says the head computes MMF's model whole (at inference: heads train keeps
the ResNet frozen); otherwise a ``WARNING`` note names the fix command. A warning, not a refusal, for the BERT
heads: their BERT (the bulk of the file) is a sound start whatever the image vectors, and fine-tuning on other
vectors retrains the classifier. Without the run's image sets (``load_mmf_state`` given no ``features``) the note
says the vectors are MMF's only when extracted from the file, with the command.

MMF's Image-Grid file (``unimodal_image`` over a ResNet-152: ``base.encoder.model.*`` + ``classifier.*``) loads into
``image-only`` (``image_grid_head_from_checkpoint``: the head of ``--preset image-grid-hm``, ``classifier.layers.N``
-> ``mlp.N`` / ``outputs``, ``hidden`` and ``batch_norm`` read from the file) only when the run's image sets were
extracted from that file with MMF's input; otherwise it is refused in one line naming the command: its classifier
is all the file holds besides the ResNet, and on other vectors it computes nothing MMF trained.

``mmf_config`` reads the sizes a file implies where the head config gives none: BERT's (attention head counts
cannot be read: 12 unless given), ``fc7_dim`` from fc7's rows and the classifier's ``hidden`` widths.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from torch import Tensor, nn

from featstore.errors import FeatstoreError
from featstore.extractors.mmf_resnet import UNIMODAL as UNIMODAL_RESNET, strip_data_parallel  # noqa: F401 (re-export)

from .checkpoints import (OTHER_LABEL_COUNT, LoadReport, _file_stamp, checkpoint_file,
                          head_from_checkpoint as build_from_checkpoint, read_weights)
from .visualbert_checkpoint import config_from_checkpoint as bert_sizes, copy_tensors, finish_load

MMBT = "model.bert.mmbt."
MMBT_MODAL = MMBT + "modal_encoder."


@dataclass(frozen=True)
class Layout:
    """Where one MMF model keeps its parts; ``head`` reads it."""

    head: str
    bert: str = ""  # the text encoder's prefix ("" = no BERT)
    classifiers: Dict[str, Tuple[str, str]] = field(default_factory=dict)  # MLPClassifer prefix -> (mlp, outputs)
    fc7: str = ""  # FinetuneFasterRcnnFpnFc7's prefix ("" = none)
    model: str = ""  # MMF's registered model name where it differs from the MMF_LAYOUTS key

    @property
    def required(self) -> str:
        """The report group a file of this layout must fill (else it is refused as holding nothing)."""
        return "backbone" if self.bert else FC7_GROUP if self.fc7 else "classifier"


MMF_LAYOUTS = {
    "unimodal_text": Layout("text-bert", "base.encoder.", {"classifier.": ("mlp", "outputs")}),
    "unimodal_image": Layout("image-region", "", {"classifier.": ("mlp", "outputs")}, fc7="base.encoder."),
    "unimodal_image_grid": Layout("image-only", "", {"classifier.": ("mlp", "outputs")}, model="unimodal_image"),
    "concat_bert": Layout("concat-bert", "base.text.", {"classifier.": ("mlp", "outputs")}),
    "late_fusion": Layout("late-fusion", "base.text.", {"text_classifier.": ("mlp", "outputs"),
                                                        "modal_classifier.": ("image_mlp", "image_outputs")}),
    "mmbt": Layout("mmbt", MMBT + "transformer."),
    "mmbt_region": Layout("mmbt-region", MMBT + "transformer.", fc7=MMBT_MODAL + "encoder."),
}
IMAGE_ENCODER = ("base.modal.", UNIMODAL_RESNET, MMBT_MODAL + "encoder.")  # ResNet-152: read by featstore extract
MMBT_SHARED = tuple(f"{MMBT_MODAL}{t}." for t in ("word_embeddings", "position_embeddings",
                                                   "token_type_embeddings", "LayerNorm"))
FC7_GROUP = "fc7 (MMF's, fine-tuned)"
IGNORED_IMAGE = "image encoder (cached features are used)"  # an fc7 file's other modal-encoder tensors
IGNORED_RESNET = "fine-tuned ResNet-152 (featstore extract reads it)"
OTHER = "other heads (pretraining / task layers)"
UNCHECKED = object()  # load_mmf_state without a run's image sets: the ResNet note says how to match them
_FINGERPRINTS: Dict[tuple, str] = {}  # file_fingerprint's last file
_OWN_FILE = re.compile(r"^MMF's own (\S+) file")  # MMF_NOTE's model name
_CLF_LAYER = re.compile(r"^(?:module\.)?layers\.(\d+)\.(.+)$")
MMF_NOTE = "MMF's own {model} file (model.pth): {parts} load{s}"
FIX = "featstore extract --extractor grid --set weights={path} --set preprocess=mmf-hateful-memes"
RESNET_UNCHECKED = ("MMF's fine-tuned ResNet-152 ({n} tensors) is read by featstore extract, not by the head: the "
                    "cached image vectors are MMF's only when extracted from this file (`{fix}`)")
RESNET_WHOLE = ("the image vectors come from this file's fine-tuned ResNet-152 (image set {names}, weights {fp}): "
                "MMF's {model} whole, at inference (heads train keeps that ResNet frozen)")
RESNET_WARNING = ("WARNING: {why}, so the classifier reads image vectors it was not trained on; extract them from "
                  "this file with `{fix}`")
MMF_INPUT = ("grid", "mmf-hateful-memes", "pooled")  # extractor, preprocess, --image-pool of MMF's pooled image
WANTED = {"backbone": "BERT weights (keys like 'bert.encoder.layer.0...' or 'encoder.layer.0...')",
          FC7_GROUP: "fc7 weights (MMF's base.encoder.lc.*)",
          "classifier": "MLPClassifer weights (MMF's classifier.layers.N.*)"}
HOW_TO_GET_IMAGE_GRID = ("pass MMF's own Image-Grid model.pth (an MMF unimodal_image run over resnet152, or the zoo's "
                         "unimodal_image.hateful_memes.images); without one, train --preset image-grid-hm")
HOW_TO_GET_IMAGE_REGION = ("pass MMF's own Image-Region model.pth (an MMF unimodal_image run with "
                           "direct_features_input, or the zoo's unimodal_image.hateful_memes.features); without one, "
                           "train --preset image-region-hm with --set fc7_weights=DIR for Detectron's fc7")


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
        return None, IGNORED_RESNET
    for prefix, names in layout.classifiers.items():
        if key.startswith(prefix):
            return classifier_part(key[len(prefix):], names, lasts[prefix], task)
    if layout.head.startswith("mmbt"):
        return mmbt_part(key, task)
    return None, OTHER


def check_mmf_head(head_name: str, layout: str, path: str) -> None:
    """One-line refusal of an MMF file of another model than head ``head_name``'s; called before the head is
    built from the file's sizes and again when it loads."""
    want = MMF_LAYOUTS[layout].head
    if head_name == want:
        return
    if layout == "unimodal_image_grid":
        raise FeatstoreError(f"checkpoint {path!r} is MMF's unimodal_image over a ResNet-152 (Image-Grid, model.pth), "
                             f"which the 'image-only' head reads, not {head_name!r}: extract the image set from it "
                             f"(`{FIX.format(path=path)}`) and train --preset image-grid-hm --init-checkpoint {path} "
                             "(MMF's Image-Region file, unimodal_image.hateful_memes.features, loads into --head "
                             "image-region)")
    other = ", or pass a plain BERT" if head_name not in ("image-region", "image-only") else ""
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


def load_mmf_state(head: nn.Module, sd: Dict[str, Tensor], path: str, how_to_get: str,
                   features: Any = UNCHECKED) -> LoadReport:
    """Copy MMF's own model file ``sd`` (``mmf_layout`` not None) into ``head`` (in place) and report; a file with
    MMF's fine-tuned ResNet-152 is checked against the image sets ``features`` (``TrainData.meta["features"]``:
    ``image_source_note``) when given."""
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
    report.note(mmf_note(name, layout))
    resnet = report.groups.get(f"ignored: {IGNORED_RESNET}", [])
    if resnet and features is UNCHECKED:
        report.note(RESNET_UNCHECKED.format(n=len(resnet), fix=FIX.format(path=path)))
    elif resnet:
        image_source_note(report, features, path)
    return finish_load(head, mapped, report)


def mmf_note(name: str, layout: Layout) -> str:
    """What a file of ``layout`` gave: its parts."""
    parts = [p for p, on in (("BERT (pooler included)", layout.bert), ("fc7", layout.fc7)) if on] + ["the classifier"]
    listed = " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
    return MMF_NOTE.format(model=layout.model or name, parts=listed, s="" if len(parts) > 1 else "s")


# ------------------------------------------------------- MMF's fine-tuned ResNet-152: where the image vectors come from


def file_fingerprint(path) -> str:
    """``featstore.extractors.weights.fingerprint_files`` of the weight file ``path`` names (what a grid set
    extracted with ``--set weights=`` that file records), kept for the last file (``read_weights``' stamp)."""
    from featstore.extractors.weights import fingerprint_files

    p = checkpoint_file(path)
    stamp = _file_stamp(p, False)  # read_weights' stamp of a file's contents
    if stamp not in _FINGERPRINTS:
        _FINGERPRINTS.clear()
        _FINGERPRINTS[stamp] = fingerprint_files(p)
    return _FINGERPRINTS[stamp]


def recorded_weights(image: Dict[str, Any]) -> Optional[str]:
    """The weights fingerprint an image set's run record names: its ``weights_fingerprint``, else (records that
    keep only the recipe's config) the fingerprint of the file its ``weights`` setting names now."""
    if image.get("weights_fingerprint"):
        return str(image["weights_fingerprint"])
    spec = (image.get("config") or {}).get("weights")
    if not spec:
        return None
    from featstore.extractors.weights import resolve_weights

    try:
        return file_fingerprint(resolve_weights(spec, "file"))
    except (FeatstoreError, OSError):
        return None


def short(fp: Optional[str]) -> str:
    """A weights fingerprint with its hex digest cut to 12 digits (``files:sha256:0123456789ab...``)."""
    kind, _, digest = str(fp).rpartition(":")
    return f"{kind}:{digest[:12]}..." if kind and len(digest) > 12 else str(fp)


def image_set_problem(image: Dict[str, Any], fp: str) -> Optional[str]:
    """Why the image set of run record ``image`` is not MMF's input from the file of fingerprint ``fp``; None
    when it is (extracted from that file by grid with preprocess=mmf-hateful-memes, read through ``pooled``)."""
    name, recorded = image.get("name"), recorded_weights(image)
    if recorded != fp:
        why = f"its weights {short(recorded)}, the file's {short(fp)}" if recorded else "it records no weights file"
        return f"image set {name!r} was not extracted from this file's fine-tuned ResNet-152 ({why})"
    got = (image.get("extractor"), (image.get("config") or {}).get("preprocess"), image.get("pool", "pooled"))
    if got != MMF_INPUT:
        return (f"image set {name!r} comes from this file's ResNet-152 but not through MMF's input (extractor, "
                f"preprocess, --image-pool: {', '.join(map(str, got))}; MMF's: {', '.join(MMF_INPUT)})")
    return None


def image_source(features: Optional[Dict[str, Any]], path) -> Tuple[Optional[str], str]:
    """(why the image sets a run reads, ``--image`` and ``--train-image``, are not MMF's input from the file at
    ``path``, or None; their names)."""
    sets = [s for s in ((features or {}).get("image"), (features or {}).get("train_image")) if s]
    if not sets:
        return "the run reads no image set recorded as extracted from this file", ""
    fp = file_fingerprint(path)
    problems = [p for p in (image_set_problem(s, fp) for s in sets) if p]
    return (problems[0] if problems else None), ", ".join(repr(s.get("name")) for s in sets)


def image_source_note(report: LoadReport, features: Optional[Dict[str, Any]], path) -> Optional[str]:
    """For a report of MMF's concat_bert / late_fusion / mmbt file with its fine-tuned ResNet-152 (else None,
    nothing done): the note on the run's image sets (``TrainData.meta["features"]``) in place of the unchecked
    one: MMF's model whole when they were extracted from this file with MMF's input, else a WARNING naming the
    fix. A warning, not a refusal: BERT is the bulk of these files and a fine start whatever the image vectors."""
    resnet = report.groups.get(f"ignored: {IGNORED_RESNET}", [])
    if not resnet:
        return None
    fix = FIX.format(path=path)
    report.notes = [n for n in report.notes if n != RESNET_UNCHECKED.format(n=len(resnet), fix=fix)
                    and not n.startswith((RESNET_WHOLE[:28], RESNET_WARNING[:8]))]
    why, names = image_source(features, path)
    model = next((m.group(1) for n in report.notes for m in [_OWN_FILE.match(n)] if m), "model")
    text = (RESNET_WARNING.format(why=why, fix=fix) if why else
            RESNET_WHOLE.format(names=names, fp=short(file_fingerprint(path)), model=model))
    report.note(text)
    return text


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


# --------------------------------------------------- image-only: MMF's Image-Grid file, on its own ResNet's vectors


def load_image_grid_state(head: nn.Module, sd: Dict[str, Tensor], path: str,
                          features: Optional[Dict[str, Any]]) -> LoadReport:
    """Copy MMF's Image-Grid file ``sd`` (``unimodal_image`` over a ResNet-152) into the image-only ``head`` (in
    place) and report; refused in one line unless the run's image sets (``features``) were extracted from that
    file with MMF's input: its MLPClassifer was trained on that fine-tuned ResNet's vectors and on nothing else."""
    if getattr(head, "head_name", "") != "image-only":
        raise FeatstoreError("heads.mmf_checkpoint.load_image_grid_state loads an 'image-only' head; the BERT heads "
                             "load through heads.text_bert_checkpoint")
    sd = strip_data_parallel(sd)
    layout = mmf_layout(sd)
    if layout is None:
        raise FeatstoreError(f"checkpoint {path!r} is not an MMF model file; the image-only head reads MMF's "
                             f"Image-Grid model.pth only: {HOW_TO_GET_IMAGE_GRID}")
    check_mmf_head("image-only", layout, path)
    why, _ = image_source(features, path)
    if why:
        raise FeatstoreError(f"checkpoint {path!r} is MMF's Image-Grid, whose classifier reads its own fine-tuned "
                             f"ResNet-152's vectors, but {why}; extract them from it with `{FIX.format(path=path)}` "
                             "and pass that set as --image")
    return load_mmf_state(head, sd, path, HOW_TO_GET_IMAGE_GRID, features)


def image_grid_config(shapes: Dict[str, tuple], given: Dict[str, Any], head_name: str, path: str) -> Dict[str, Any]:
    """``given`` completed with the sizes MMF's Image-Grid file implies: the classifier's ``hidden`` widths and
    ``batch_norm`` (MLPClassifer's BatchNorm1d running statistics present); another file is refused on load."""
    found = mmf_file_config(shapes, given, head_name, path)
    if found is None:
        return given
    if "batch_norm" not in given:
        found["batch_norm"] = any(k.startswith("classifier.") and k.endswith(".running_mean")
                                  for k in strip_data_parallel(shapes))
    return found


def image_grid_head_from_checkpoint(name: str, inputs, spec, head_cfg: Dict[str, Any], path, *,
                                    trust_pickle: bool = False,
                                    features: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, LoadReport]:
    """Build the image-only head with the sizes MMF's Image-Grid file at ``path`` implies where ``head_cfg`` gives
    none, and load it, checked against the run's image sets ``features`` (``TrainData.meta["features"]``) ->
    (head, report)."""
    sizes = lambda shapes, given: image_grid_config(shapes, given, name, str(path))  # noqa: E731
    load = lambda head, sd, p: load_image_grid_state(head, sd, p, features)  # noqa: E731
    return build_from_checkpoint("image-only", name, inputs, spec, head_cfg, path, trust_pickle=trust_pickle,
                                 config_from_checkpoint=sizes, load_state=load, how_to_get=HOW_TO_GET_IMAGE_GRID)
