"""``mmbt``: MMF's MMBT (Kiela et al. 2019, "Supervised Multimodal Bitransformers for Classifying Images and
Text"), the Hateful Memes paper's MMBT-Grid baseline: mmf/models/mmbt.py ``MMBT`` with
``training_head_type: classification`` (``MMBTForClassification`` over ``MMBTBase`` / ``MMBTModel`` /
``ModalEmbeddings``), mmf/configs/models/mmbt/defaults.yaml.

Forward (B rows, T cached token positions ``txt_ids`` = ``[CLS] w1 .. wn [SEP] pad ..`` from the bert
extractor, n + 2 real; H = ``hidden_size`` (768); Di = the image vector's width, MMF's ``modal_hidden_size``
2048):

* the image: ``img_pooled [B, Di]``, one image token. MMBT-Grid's modal encoder is ``ResNet152ImageEncoder``
  with ``pool_type: avg``, ``num_output_features: 1``: ``AdaptiveAvgPool2d((1, 1))`` of res5c, the ResNet-152
  global average (``[B, 1, 2048]``); a regions-only image set gives its regions' masked mean.
* modal part (``ModalEmbeddings``, ``use_modal_start_token`` / ``use_modal_end_token`` true): ``start`` =
  ``txt_ids[:, 0]`` ([CLS]); ``end`` = the last real token, ``txt_ids[b, sum(txt_mask[b]) - 1]`` ([SEP])
  (``MMBTBase.extract_modal_end_token``); ``[word(start), proj_embeddings(img), word(end)]`` ``[B, 3, H]`` +
  ``position_embeddings(0, 1, 2)`` + ``token_type_embeddings(1)`` (MMF's rule: the text's segment ids are all
  0, one sentence, so the modal part takes segment 1), BERT's own tables (shared, as MMF's).
* text part (``MMBTModel``: ``transformer.embeddings``): the ids without their [CLS], ``txt_ids[:, 1:]`` =
  ``w1 .. wn [SEP] pad ..`` ``[B, T - 1]`` (MMF shifts the ids left, so the [SEP] appears twice: as the modal
  end token and at the text's end) + ``position_embeddings(0 .. T - 2)`` (the text's positions restart at 0)
  + ``token_type_embeddings(0)``.
* joint: ``cat([modal, text], 1) [B, 3 + T - 1, H]``, BERT's embedding LayerNorm (one module, applied per
  position: the same as MMF's two calls), dropout ``hidden_dropout_prob`` (MMF: the modal part's own Dropout
  and the text's, both at that probability); mask ``cat([1, 1, 1], txt_mask[:, 1:])``, additive
  ``(1 - mask) * -10000``. (MMF keeps T text positions, the last one a masked copy; masked keys get exactly
  zero weight, so dropping it changes nothing.)
* ``bert.encoder`` (post-norm BERT layers) -> ``sequence [B, 2 + T, H]`` -> ``bert.pooler``:
  ``tanh(dense(sequence[:, 0]))`` (the start [CLS] token) -> ``pooled [B, H]``.
* classifier (``MMBTForClassification``): ``Dropout(hidden_dropout_prob)``, then ``nn.Sequential(
  BertPredictionHeadTransform, Linear(H, num_labels))``: ``transform`` = dense H -> H, ``hidden_act`` (gelu),
  LayerNorm -> ``fused [B, H]`` (MMF's ``fused_feature``) -> ``outputs.layers.<task>`` -> ``logits [B, K]``.

Initialisation: a random start gives ``bert`` MMF's BERT ``_init_weights`` (``vilbert.mmf_init``); with
``--init-checkpoint`` a plain BERT loads whole, pooler included (``heads.text_bert_checkpoint``). The modal
projection (``modal_encoder.proj_embeddings``) and the classifier (``transform``, ``outputs``) keep PyTorch's
default initialisation, as MMF's (plain ``nn.Linear`` / transformers' transform outside the pretrained model).

Optimiser groups: ``MMBT.get_optimizer_parameters`` -> ``get_optimizer_parameters_for_bert`` (finetune_lr_multiplier
1): ``get_bert_configured_parameters`` over the whole model, no decay where the name holds "bias",
"LayerNorm.bias" or "LayerNorm.weight" (``vilbert.mmf_bert_groups``).

What differs from MMF: the image vector is cached and frozen where MMF fine-tunes its ResNet-152 with the
rest. MMBT-Region (``with_features.yaml``: Detectron FPN fc7 features through ``finetune_faster_rcnn_fpn_fc7``,
whose fc7 weight / bias pickles we do not have) is not built. On CPU the padded positions are skipped
(``vilbert.Layout``): outputs equal the dense forward's up to float summation order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

import torch
from torch import Tensor, nn

from featstore.errors import FeatstoreError

from .base import Head, pooled_image, register_head, text_mask
from .text_bert import TextBert
from .vilbert import Layout, additive_mask, mmf_bert_groups, mmf_classifier, mmf_init
from .visualbert import BertSizes, check_bert_sizes, check_token_ids, text_embeddings

MODAL_TOKEN_TYPE = 1  # MMBTBase.forward: one text segment (ids 0) -> the modal tokens take segment 1
MODAL_TOKENS = 3  # start token, the one image token, end token


@dataclass
class MmbtConfig(BertSizes):
    """BERT-base sizes (mmf/configs/models/mmbt/defaults.yaml: bert-base-uncased, hidden_size 768, 12 layers,
    12 heads); the classifier is MMF's (BertPredictionHeadTransform + Linear), with no options."""

    head: ClassVar[str] = "mmbt"  # for the messages (not an option)
    classifier: ClassVar[str] = "mmf"  # vilbert.mmf_classifier's choice (not an option)

    def validate(self) -> None:
        check_bert_sizes(self, self.head)
        if self.type_vocab_size <= MODAL_TOKEN_TYPE:
            raise FeatstoreError(f"mmbt type_vocab_size={self.type_vocab_size}; the image tokens take token type "
                                 f"{MODAL_TOKEN_TYPE} (MMF's), so use at least {MODAL_TOKEN_TYPE + 1}")
        if self.max_position_embeddings < MODAL_TOKENS:
            raise FeatstoreError(f"mmbt max_position_embeddings={self.max_position_embeddings}; the modal part "
                                 f"takes positions 0..{MODAL_TOKENS - 1}, so use at least {MODAL_TOKENS}")


class ModalEncoder(nn.Module):
    """MMF's ``ModalEmbeddings`` own layer: ``proj_embeddings`` Linear(Di, H); its tables are BERT's."""

    def __init__(self, img_dim: int, hidden: int):
        super().__init__()
        self.proj_embeddings = nn.Linear(img_dim, hidden)


@register_head("mmbt", MmbtConfig,
               help="MMF's MMBT(-Grid): [CLS] image [SEP] then the text through one BERT, [CLS] pooler -> "
                    "MMF's transform + Linear")
class MmbtHead(Head):
    """fused ``[B, H]`` (MMF's fused_feature: the transform of the dropped-out pooled vector); outputs also
    ``"pooled"``, ``"sequence"``."""

    needs = frozenset({"txt_ids", "img_pooled"})
    pack_positions: Optional[bool] = None  # as visualbert: None = pack the real positions on CPU only

    def __init__(self, inputs, task, config: MmbtConfig):
        super().__init__(inputs, task, config)
        c = config
        self.bert = TextBert(c)
        self.bert.apply(lambda m: mmf_init(m, c.initializer_range))
        self.modal_encoder = ModalEncoder(inputs.img_dim, c.hidden_size)  # PyTorch's default init, as MMF's
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.transform, self.outputs = mmf_classifier(c, task, c.hidden_size)

    def optimizer_groups(self, weight_decay: float):
        """MMF's ``get_optimizer_parameters_for_bert`` (``vilbert.mmf_bert_groups``)."""
        return mmf_bert_groups(self, weight_decay)

    def embed(self, ids: Tensor, mask: Tensor, image: Tensor):
        """(joint embeddings before the LayerNorm ``[B, 2 + T, H]``, joint mask ``[B, 2 + T]``) of ``ids``,
        ``mask [B, T]`` and ``image [B, Di]``: modal part ``[start, image, end]``, then ``ids[:, 1:]``."""
        emb, b = self.bert.embeddings, ids.shape[0]
        end_at = (mask.long().sum(dim=1) - 1).clamp_min(0)
        end = ids[torch.arange(b, device=ids.device), end_at]
        projected = self.modal_encoder.proj_embeddings(image.to(self.modal_encoder.proj_embeddings.weight.dtype))
        modal = torch.stack([emb.word_embeddings(ids[:, 0]), projected, emb.word_embeddings(end)], dim=1)
        modal = (modal + emb.position_embeddings.weight[:MODAL_TOKENS]
                 + emb.token_type_embeddings.weight[MODAL_TOKEN_TYPE])
        text = text_embeddings(emb, ids[:, 1:], self.head_name)
        joint_mask = torch.cat([mask.new_ones(b, MODAL_TOKENS), mask[:, 1:]], dim=1)
        return torch.cat([modal, text], dim=1), joint_mask

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        ids, mask = batch["txt_ids"].long(), text_mask(batch)
        x, joint_mask = self.embed(ids, mask, pooled_image(batch))
        pack = ids.device.type == "cpu" if self.pack_positions is None else self.pack_positions
        layout = Layout.of(joint_mask, pack)
        emb = self.bert.embeddings
        x = emb.dropout(emb.LayerNorm(layout.pack(x)))
        seq = layout.pad(self.bert.encoder(x, additive_mask(joint_mask, x.dtype), layout))
        pooled = self.bert.pooler(seq)
        fused = self.transform(self.dropout(pooled))
        return {"logits": self.outputs(fused), "fused": fused, "pooled": pooled, "sequence": seq}

    def check_data(self, features: Dict[str, Tensor], text_meta: Optional[Dict[str, Any]] = None) -> None:
        """Token ids within ``vocab_size``, from a tokenizer of that vocabulary size (``check_token_ids``)."""
        check_token_ids(features, text_meta, self.config.vocab_size, self.head_name, "MMF's MMBT")
