"""Load Facebook/MMF ViLBERT checkpoints, or a plain BERT, into a ``vilbert`` head
(``heads.models.vilbert.VilbertHead``), whole.

ViLBERT checkpoint keys look like ``model.bert.encoder.layer.7.attention.self.query.weight`` and
``model.classifier.0.dense.weight`` (MMF, ``ViLBERTForClassification`` / ``ViLBERTForPretraining``), or
with the older ``bert.bert.`` / ``bert.`` prefixes (vilbert-multi-task, ``ViLBERT.format_state_key``),
stored as a bare state dict or under ``"model"`` (``"state_dict"`` is accepted too). A plain BERT
(``bert-base-uncased``: ``bert.*``, or bare ``embeddings.*`` / ``encoder.*`` / ``pooler.*``, LayerNorm
``gamma`` / ``beta`` read as ``weight`` / ``bias``) is MMF's direct recipe, which builds ViLBERT with
``ViLBERTBase.from_pretrained("bert-base-uncased")``: BERT's names are ViLBERT's text-stream names, so its
text layers load and everything else starts as MMF's ``_init_weights`` (the report says so); BERT's
``pooler`` is not ViLBERT's ``t_pooler`` (that one maps to ``bi_hidden_size``) and is ignored, as
``from_pretrained`` leaves it. A VisualBERT checkpoint is refused with the head to use. A file, a folder or
a model id in the local Hugging Face cache is read by ``heads.checkpoints.read_weights``
(``weights_only=True`` unless ``trust_pickle``). After the prefix:

* ``encoder.layer.{i}.*`` with ``i >= text_start_layer`` -> the head's ``encoder.layer.{i - text_start_layer}``;
  the lower text layers and ``embeddings.*`` ran before the text states were cached (the ``vilbert-text``
  extractor runs them from the same file), so they are reported as ignored;
* ``encoder.v_layer.*``, ``encoder.c_layer.*``, ``v_embeddings.*``, ``t_pooler.*``, ``v_pooler.*`` map as is;
* ``model.classifier.0.*`` (MMF's Linear-GELU-LayerNorm) -> ``transform.*`` and ``model.classifier.1.*`` ->
  ``outputs.layers.<task>.*`` for a head with ``classifier="mmf"`` and one task whose output count equals
  the checkpoint's label count; otherwise the report says why it was left initialised;
* pretraining heads (``model.cls.*``) and ``position_ids`` buffers are ignored.

``head_from_checkpoint`` also reads the head's sizes, layer counts and co-attention ids from the tensors'
shapes when the head config does not give them (``config_from_checkpoint``), as ``from_pretrained`` reads
a config. Attention head counts cannot be read from shapes: they keep the head's defaults (BERT-base's
12 / 8 / 8) unless given.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple

from torch import Tensor, nn

from featstore.errors import FeatstoreError
from featstore.extractors.mmf_resnet import strip_data_parallel
from featstore.extractors.vilbert_text import base_key

from .checkpoints import LoadReport, head_from_checkpoint as build_from_checkpoint, read_weights, torch_names

__all__ = ["LoadReport", "load_vilbert_checkpoint", "map_key", "config_from_checkpoint", "head_from_checkpoint",
           "text_source_note"]

AS_IS = ("encoder.v_layer.", "encoder.c_layer.", "v_embeddings.", "t_pooler.", "v_pooler.")
CLASSIFIER = ("model.classifier.", "bert.classifier.", "module.classifier.", "classifier.")
PRETRAINING = ("model.cls.", "bert.cls.", "module.cls.", "cls.")
IMAGE_EMBEDDING = "v_embeddings.image_embeddings.weight"
BARE = ("embeddings.", "encoder.", "pooler.")  # a BERT saved without its "bert." prefix (transformers' BertModel)
VISUALBERT = ("embeddings.projection.", "embeddings.visual_projection.", "embeddings.token_type_embeddings_visual.",
              "embeddings.visual_token_type_embeddings.")
HOW_TO_GET = ("MMF's ViLBERT is https://dl.fbaipublicfiles.com/mmf/data/models/vilbert/vilbert.pretrained.cc_original"
              ".tar.gz (its model.pth), or pass a bert-base-uncased folder (MMF's direct recipe)")
DIRECT_NOTE = ("a plain BERT, as MMF's direct recipe (ViLBERTBase.from_pretrained(bert-base-uncased)): the text "
               "layers come from it; the image embedding, visual layers, co-attention, both poolers and the "
               "classifier start as MMF's _init_weights")
_INDEXED = re.compile(r"^encoder\.(layer|v_layer|c_layer)\.(\d+)\.")


def _rest(key: str) -> Optional[str]:
    """The key after its ViLBERT/BERT base-model prefix, a bare BERT key as it is, or None."""
    rest = base_key(key)
    return rest if rest is not None else (key if key.startswith(BARE) else None)


def _group(rest: Optional[str], key: str) -> str:
    if key.endswith(("position_ids", "token_type_ids")):
        return "buffers"
    if key.startswith(CLASSIFIER):
        return "classifier"
    if key.startswith(PRETRAINING):
        return "pretraining heads"
    if rest is None:
        return "other"
    if rest.startswith("embeddings."):
        return "text embeddings"
    if rest.startswith("encoder.layer."):
        return "text layers"
    if rest.startswith("pooler."):
        return "BERT pooler"  # ViLBERT's text pooler is t_pooler, Linear(hidden -> bi_hidden): not this one
    return "backbone" if rest.startswith(AS_IS) else "other"


def map_key(key: str, text_start_layer: int, tasks: Sequence[str] = ()) -> Tuple[Optional[str], str]:
    """``(head key or None, group)`` for one checkpoint key; groups name what the key belongs to."""
    key = torch_names(key)
    rest = _rest(key)
    group = _group(rest, key)
    if group == "classifier":
        tail = key[len(next(p for p in CLASSIFIER if key.startswith(p))):]
        if tail.startswith("0."):
            return "transform." + tail[2:], group
        if tail.startswith("1.") and len(tasks) == 1:
            return f"outputs.layers.{tasks[0]}.{tail[2:]}", group
        return None, group
    if group == "text layers":
        idx, _, tail = rest[len("encoder.layer."):].partition(".")
        if not idx.isdigit() or int(idx) < text_start_layer:
            return None, "lower text layers"
        return f"encoder.layer.{int(idx) - text_start_layer}.{tail}", "upper text layers"
    if group == "backbone":
        return rest, group
    return None, group


def _refuse_visualbert(sd: Dict[str, Tensor], path: str) -> None:
    """A VisualBERT checkpoint (its visual projection / token-type tables) is not a ViLBERT one: refuse."""
    key = next((k for k in sd if (_rest(k) or "").startswith(VISUALBERT)), None)
    if key is not None:
        raise FeatstoreError(f"checkpoint {path!r} is a VisualBERT checkpoint (key {key!r}), not ViLBERT or BERT; "
                             "train it with --head visualbert")


def _classifier_note(report: LoadReport, key: str, have, want) -> None:
    report.add("ignored", "classifier", key)
    note = (f"classifier: the checkpoint's final layer has {have[0]} labels, the head's task {want[0]} outputs; "
            "it was left initialised")
    if key.endswith("weight") and note not in report.notes:
        report.notes.append(note)


def load_state(head: nn.Module, sd: Dict[str, Tensor], path: str) -> LoadReport:
    """Copy the matching tensors of ``sd`` into the vilbert ``head`` (in place) and report what happened."""
    if not hasattr(head, "encoder") or not hasattr(head, "v_embeddings"):
        raise FeatstoreError("load_vilbert_checkpoint needs a 'vilbert' head; build the run with --head vilbert")
    c = head.config
    own = head.state_dict()
    tasks = [t.name for t in head.outputs.tasks] if c.classifier == "mmf" else []
    sd = strip_data_parallel(sd)  # a model saved inside DataParallel: every key under module.
    _refuse_visualbert(sd, path)
    report, mapped = LoadReport(path=str(path)), {}
    for key in sorted(sd):
        target, group = map_key(key, c.text_start_layer, tasks)
        if target is None or (group == "classifier" and target not in own):
            report.add("ignored", group, key)
            continue
        if target not in own:
            raise FeatstoreError(
                f"checkpoint {path!r} key {key!r} has no counterpart {target!r} in the head; build the head "
                "with the checkpoint's layer counts (num_hidden_layers, v_num_hidden_layers, v/t_biattention_id)")
        have, want = tuple(sd[key].shape), tuple(own[target].shape)
        if have != want and group == "classifier":
            _classifier_note(report, key, have, want)
            continue
        if have != want and target == IMAGE_EMBEDDING and c.img_dim_mismatch == "reinit":
            report.reinitialised_keys.append(f"{key} (checkpoint {list(have)}, head {list(want)})")
            continue
        if have != want:
            raise FeatstoreError(
                f"checkpoint {path!r} key {key!r} has shape {have} but the head's {target!r} has {want}; match the "
                "head's sizes (hidden_size, v_hidden_size, bi_hidden_size, intermediate sizes) to the checkpoint, "
                "or for the image features' width pass --set img_dim_mismatch=project or reinit")
        mapped[target] = sd[key]
        report.add("used", group, key)
    if not any(g in report.groups for g in ("used: backbone", "used: upper text layers")):
        raise FeatstoreError(f"checkpoint {path!r} has no ViLBERT or BERT weights for this head (keys like "
                             f"'model.bert.encoder.v_layer.0...' or 'bert.encoder.layer.{c.text_start_layer}...'); "
                             f"{HOW_TO_GET}")
    if "used: backbone" not in report.groups:
        report.note(DIRECT_NOTE)
    head.load_state_dict(mapped, strict=False)
    report.missing_keys = sorted(k for k in own if k not in mapped)
    return report


def load_vilbert_checkpoint(head: nn.Module, path: str, *, trust_pickle: bool = False) -> LoadReport:
    """Copy the matching weights of a Facebook/MMF ViLBERT checkpoint at ``path`` into ``head`` (in place).

    Raises FeatstoreError (one line) for an unreadable/unsafe file, a checkpoint with no ViLBERT weights, a
    key whose shape differs from the head's (unless a classifier or a re-initialised image embedding), or
    a key the head lacks (its config has fewer layers).
    """
    if not hasattr(head, "encoder") or not hasattr(head, "v_embeddings"):
        raise FeatstoreError("load_vilbert_checkpoint needs a 'vilbert' head; build the run with --head vilbert")
    return load_state(head, read_weights(path, trust_pickle, HOW_TO_GET), str(path))


def _counts(shapes: Dict[str, tuple]) -> Dict[str, int]:
    seen: Dict[str, set] = {"layer": set(), "v_layer": set(), "c_layer": set()}
    for rest in shapes:
        m = _INDEXED.match(rest)
        if m:
            seen[m.group(1)].add(int(m.group(2)))
    return {k: len(v) for k, v in seen.items()}


def config_from_checkpoint(shapes: Dict[str, tuple], given: Dict[str, Any]) -> Dict[str, Any]:
    """``given`` completed with the sizes, layer counts and co-attention ids a checkpoint's shapes imply.

    Ids follow MMF's layout when not given: co-attention block k after visual layers ``0..k-1`` and text
    layers ``0..N-K+k-1`` (v ids ``0..K-1``, t ids ``N-K..N-1``: MMF's 0..5 / 6..11), and
    ``text_start_layer`` = the first t id (where ViLBERT's co-attention starts)."""
    shapes = strip_data_parallel(shapes)  # a model saved inside DataParallel: every key under module.
    base = {r: s for k, s in shapes.items() for r in [_rest(torch_names(k))] if r is not None}
    n = _counts(base)
    read = {"hidden_size": ("encoder.layer.0.attention.self.query.weight", 0),
            "intermediate_size": ("encoder.layer.0.intermediate.dense.weight", 0),
            "v_hidden_size": ("encoder.v_layer.0.attention.self.query.weight", 0),
            "v_intermediate_size": ("encoder.v_layer.0.intermediate.dense.weight", 0),
            "bi_hidden_size": ("encoder.c_layer.0.biattention.query1.weight", 0),
            "v_feature_size": (IMAGE_EMBEDDING, 1)}
    found: Dict[str, Any] = {k: int(base[key][axis]) for k, (key, axis) in read.items() if key in base}
    found.update(num_hidden_layers=n["layer"], v_num_hidden_layers=n["v_layer"])
    found = {k: v for k, v in found.items() if v}
    k, t_layers = n["c_layer"], given.get("num_hidden_layers", found.get("num_hidden_layers"))
    if k and t_layers:
        found["v_biattention_id"] = list(range(k))
        found["t_biattention_id"] = list(range(t_layers - k, t_layers))
    out = dict(found, **given)
    if "text_start_layer" not in given and out.get("t_biattention_id"):
        out["text_start_layer"] = min(out["t_biattention_id"])
    return out


def head_from_checkpoint(name: str, inputs, spec, head_cfg: Dict[str, Any], path, *,
                         trust_pickle: bool = False) -> Tuple[nn.Module, LoadReport]:
    """Build head ``name`` (``vilbert``, or ``refnet`` with ``base="vilbert"``) with the sizes the checkpoint
    at ``path`` implies where ``head_cfg`` gives none, load the checkpoint into it; -> (head, report)."""
    return build_from_checkpoint("vilbert", name, inputs, spec, head_cfg, path, trust_pickle=trust_pickle,
                                 config_from_checkpoint=config_from_checkpoint, load_state=load_state,
                                 how_to_get=HOW_TO_GET)


def _same_source(a, b) -> bool:
    """Whether two weight specs (paths or model ids) name the same files: real paths compared, a model id
    resolved in the local cache when it is there."""
    from .checkpoints import local_path

    def where(spec):
        try:
            return os.path.realpath(local_path(spec))
        except FeatstoreError:
            return str(spec)
    a, b = where(a), where(b)  # a model id is resolved in the cache once each
    return a == b or a == os.path.dirname(b) or os.path.dirname(a) == b


def _same_files(fingerprint: Optional[str], path) -> bool:
    """Whether the checkpoint at ``path`` holds the very files the text set's recipe fingerprinted (a copy
    elsewhere, another name for them): ``featstore.extractors.weights.fingerprint_files``, same kind only."""
    from featstore.extractors.weights import fingerprint_files

    from .checkpoints import local_path

    if not fingerprint or not str(fingerprint).startswith("files:"):
        return False
    try:
        return fingerprint_files(local_path(path)) == fingerprint
    except (FeatstoreError, OSError):
        return False


def text_source_note(report: LoadReport, text_meta: Optional[dict], path) -> Optional[str]:
    """A note when the cached text states did not come from the text layers below the checkpoint's: a ViLBERT
    checkpoint's lower layers were trained with it (``vilbert-text`` caches them), a plain BERT's states
    come from that BERT (``bert``). None when they match - the same path, or the same files by the text
    recipe's weights fingerprint - or the text set does not record its source."""
    extractor = (text_meta or {}).get("extractor")
    weights = ((text_meta or {}).get("config") or {}).get("weights")
    if not extractor or not weights:  # imported states: their source is not recorded
        return None
    if _same_source(weights, path) or _same_files(text_meta.get("weights_fingerprint"), path):
        return None
    name = text_meta.get("name")
    how = f"featstore extract --extractor {'bert' if DIRECT_NOTE in report.notes else 'vilbert-text'} --weights {path}"
    return (f"text set {name!r} was cached by {extractor} from {weights!r}, not from the text layers below "
            f"checkpoint {str(path)!r}; for the checkpoint's own states cache them with `{how}`")
