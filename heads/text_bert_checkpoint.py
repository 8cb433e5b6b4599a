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

MMF's own model files (an MMF run's ``model.pth``, the zoo's fine-tuned Hateful Memes models) load for the head
of the same model through ``heads.mmf_checkpoint`` (its docstring has the key map): text-bert from
``unimodal_text``, concat-bert / late-fusion from ``concat_bert`` / ``late_fusion``, mmbt from ``mmbt`` over
images and mmbt-region from ``mmbt`` over region features (fc7 included); another head is refused naming it.

``head_from_checkpoint`` reads the BERT sizes and layer count from the shapes where the head config gives none
(attention head counts cannot be read: 12 unless given); from an MMF file also the classifier's ``hidden``.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from torch import Tensor, nn

from featstore.errors import FeatstoreError

from .checkpoints import LoadReport, head_from_checkpoint as build_from_checkpoint, read_weights
from .mmf_checkpoint import UNCHECKED, load_mmf_state, mmf_file_config, mmf_layout, strip_data_parallel
from .visualbert_checkpoint import config_from_checkpoint as bert_sizes, copy_bert, finish_load, refuse_other_family

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


def load_state(head: nn.Module, sd: Dict[str, Tensor], path: str, features: Any = UNCHECKED) -> LoadReport:
    """Copy BERT's tensors of ``sd`` into the text-bert / concat-bert / late-fusion / mmbt / mmbt-region ``head``
    (in place) and report; an MMF file with its fine-tuned ResNet-152 is checked against the run's image sets
    ``features`` when given (``heads.mmf_checkpoint.load_mmf_state``)."""
    if getattr(head, "head_name", "") not in HEADS_READ:
        raise FeatstoreError("load_text_bert_checkpoint needs a 'text-bert', 'concat-bert', 'late-fusion', 'mmbt' or "
                             "'mmbt-region' head; build the run with --head text-bert, concat-bert, late-fusion, mmbt "
                             "or mmbt-region")
    sd = strip_data_parallel(sd)
    if mmf_layout(sd) is not None:
        return load_mmf_state(head, sd, path, HOW_TO_GET, features)
    refuse_other_family(sd, path, ("vilbert", "visualbert"), "BERT")
    report, mapped = copy_bert(head, sd, path, (), WANTED, HOW_TO_GET)
    report.note(MMBT_NOTE if head.head_name in ("mmbt", "mmbt-region") else PLAIN_NOTE)
    return finish_load(head, mapped, report)


def load_text_bert_checkpoint(head: nn.Module, path, *, trust_pickle: bool = False) -> LoadReport:
    """Copy the BERT at ``path`` (file, folder or cached model id) into ``head`` (in place) -> report."""
    return load_state(head, read_weights(path, trust_pickle, HOW_TO_GET), str(path))


def config_from_checkpoint(shapes: Dict[str, tuple], given: Dict[str, Any], head_name: str,
                           path: str) -> Dict[str, Any]:
    """``given`` completed with the BERT sizes and layer count the shapes imply (visualbert's reading, without
    its projection width: a VisualBERT file is refused when it loads); an MMF file's sizes are
    ``heads.mmf_checkpoint.mmf_file_config``'s (another model's than ``head_name``'s refused first)."""
    found = mmf_file_config(shapes, given, head_name, path)
    if found is not None:
        return found
    found = bert_sizes(strip_data_parallel(shapes), given)
    if "visual_embedding_dim" not in given:
        found.pop("visual_embedding_dim", None)
    return found


def head_from_checkpoint(name: str, inputs, spec, head_cfg: Dict[str, Any], path, *,
                         trust_pickle: bool = False, features: Any = UNCHECKED) -> Tuple[nn.Module, LoadReport]:
    """Build head ``name`` (one of ``HEADS_READ``) with the sizes the BERT at ``path`` implies where
    ``head_cfg`` gives none, and load it (``features``: the run's ``TrainData.meta["features"]``, as
    ``load_state``) -> (head, report)."""
    family = name if name in HEADS_READ else HEADS_READ[0]
    sizes = lambda shapes, given: config_from_checkpoint(shapes, given, family, str(path))  # noqa: E731
    load = lambda head, sd, p: load_state(head, sd, p, features)  # noqa: E731
    return build_from_checkpoint(family, name, inputs, spec, head_cfg, path, trust_pickle=trust_pickle,
                                 config_from_checkpoint=sizes, load_state=load, how_to_get=HOW_TO_GET)
