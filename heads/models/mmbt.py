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
``--init-checkpoint`` a plain BERT loads whole, pooler included, and so does MMF's own ``model.pth`` (mmbt-grid:
BERT, projection and classifier; ``heads.text_bert_checkpoint`` / ``heads.mmf_checkpoint``). The modal
projection (``modal_encoder.proj_embeddings``) and the classifier (``transform``, ``outputs``) keep PyTorch's
default initialisation, as MMF's (plain ``nn.Linear`` / transformers' transform outside the pretrained model).

Optimiser groups: ``MMBT.get_optimizer_parameters`` -> ``get_optimizer_parameters_for_bert`` (finetune_lr_multiplier
1): ``get_bert_configured_parameters`` over the whole model, no decay where the name holds "bias",
"LayerNorm.bias" or "LayerNorm.weight" (``vilbert.mmf_bert_groups``).

What differs from MMF: the image vector is cached and frozen where MMF fine-tunes its ResNet-152 with the
rest. On CPU the padded text positions are skipped (``vilbert.Layout``): outputs equal the dense forward's up to float summation order.

``mmbt-region`` (``MmbtRegionHead``): the paper's MMBT-Region, projects/mmbt/configs/hateful_memes/
with_features.yaml (mmf/configs/models/mmbt/with_features.yaml: ``direct_features_input: true``, modal encoder
``finetune_faster_rcnn_fpn_fc7``, in_dim 2048). The same forward with N = ``num_regions`` (100) image tokens:

* ``MMBTBase.forward``: ``input_modal`` = ``image_feature_0`` ``[B, N, Di]``, MMF's reader's zero-padded regions
  (``heads.fc7.padded_regions``: masked positions zeroed, the batch padded back to N).
* ``ModalEmbeddings``: ``proj_embeddings(encoder(input_modal))``: ``heads.fc7.Fc7`` (``fc7.lc`` Linear(Di, F)
  + ReLU, Detectron's fc7) then Linear(F, H) -> ``[B, N, H]``; ``[word(start), N tokens, word(end)]``
  ``[B, N + 2, H]`` + ``position_embeddings(0 .. N + 1)`` + ``token_type_embeddings(1)`` (one id per row,
  broadcast over the modal part).
* mask: MMF's ``MMBTModel`` sets ones over the whole modal part (``input_modal_shape``), so the zero-padded
  regions are attended like real ones: ``cat(ones(N + 2), txt_mask[:, 1:])``.
* the rest as above: ``sequence [B, N + 1 + T, H]``, pooler on position 0, the classifier.

``fc7`` starts from ``fc7_weights`` (Detectron's pickles, read at training start by ``load_init_files``, not by
``heads predict``), or from MMF's own fine-tuned MMBT-Region ``model.pth`` (``--init-checkpoint``,
``heads.mmf_checkpoint``: fc7, BERT, projection and classifier whole); MMF fine-tunes it inside ``get_optimizer_parameters_for_bert``'s groups (its bias without
decay, by name), as here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

import torch
from torch import Tensor, nn

from featstore.errors import FeatstoreError

from ..fc7 import Fc7, check_fc7_options, check_region_count, fc7_to_copy, load_fc7_init, padded_regions
from .base import Head, pooled_image, register_head, text_mask
from .text_bert import TextBert
from .vilbert import Layout, additive_mask, mmf_bert_groups, mmf_classifier, mmf_init
from .visualbert import BertSizes, check_bert_sizes, check_token_ids, text_embeddings

MODAL_TOKEN_TYPE = 1  # MMBTBase.forward: one text segment (ids 0) -> the modal tokens take segment 1
MODAL_TOKENS = 3  # start token, the one image token, end token (mmbt; mmbt-region: num_regions + 2)


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
        self.modal_encoder = ModalEncoder(self.modal_width(inputs), c.hidden_size)  # PyTorch's default, as MMF's
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.transform, self.outputs = mmf_classifier(c, task, c.hidden_size)

    def modal_width(self, inputs) -> int:
        """The width of the vectors ``proj_embeddings`` projects: the image vector's (MMF's modal_hidden_size)."""
        return inputs.img_pooled_width

    def image_tokens(self, batch: Dict[str, Tensor]) -> Tensor:
        """``[B, 1, Di]``: the one image token's vector (``img_pooled``)."""
        return pooled_image(batch).unsqueeze(1)

    def optimizer_groups(self, weight_decay: float):
        """MMF's ``get_optimizer_parameters_for_bert`` (``vilbert.mmf_bert_groups``)."""
        return mmf_bert_groups(self, weight_decay)

    def embed(self, ids: Tensor, mask: Tensor, image: Tensor):
        """(joint embeddings before the LayerNorm ``[B, M + 1 + T, H]``, joint mask ``[B, M + 1 + T]``) of
        ``ids``, ``mask [B, T]`` and ``image [B, M, Dm]`` (M image tokens): modal part ``[start, M projected
        tokens, end]`` at positions 0 .. M + 1, then ``ids[:, 1:]``."""
        emb, b = self.bert.embeddings, ids.shape[0]
        end_at = (mask.long().sum(dim=1) - 1).clamp_min(0)
        end = ids[torch.arange(b, device=ids.device), end_at]
        projected = self.modal_encoder.proj_embeddings(image.to(self.modal_encoder.proj_embeddings.weight.dtype))
        modal = torch.cat([emb.word_embeddings(ids[:, :1]), projected, emb.word_embeddings(end[:, None])], dim=1)
        n = modal.shape[1]
        modal = modal + emb.position_embeddings.weight[:n] + emb.token_type_embeddings.weight[MODAL_TOKEN_TYPE]
        text = text_embeddings(emb, ids[:, 1:], self.head_name)
        joint_mask = torch.cat([mask.new_ones(b, n), mask[:, 1:]], dim=1)
        return torch.cat([modal, text], dim=1), joint_mask

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        ids, mask = batch["txt_ids"].long(), text_mask(batch)
        x, joint_mask = self.embed(ids, mask, self.image_tokens(batch))
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


@dataclass
class MmbtRegionConfig(MmbtConfig):
    """MMBT's options plus the region part (mmf/configs/models/mmbt/with_features.yaml)."""

    head: ClassVar[str] = "mmbt-region"
    num_regions: int = 100  # MMF's max_features: image tokens per row, zero-padded regions included
    fc7_dim: int = 2048  # fc7's output width = MMF's modal_hidden_size 2048 (proj_embeddings' input)
    fc7_weights: str = ""  # folder of Detectron's fc7_w.pkl / fc7_b.pkl (unpacked vmb_weights.tar.gz); "" = random

    def validate(self) -> None:
        super().validate()
        check_fc7_options(self)
        if self.max_position_embeddings < self.num_regions + 2:
            raise FeatstoreError(f"mmbt-region max_position_embeddings={self.max_position_embeddings}; the modal "
                                 f"part takes positions 0..{self.num_regions + 1} (num_regions={self.num_regions} "
                                 f"+ start and end), so use at least {self.num_regions + 2}")


@register_head("mmbt-region", MmbtRegionConfig,
               help="MMF's MMBT-Region: [CLS], 100 fc7 region tokens, [SEP], then the text through one BERT")
class MmbtRegionHead(MmbtHead):
    """``mmbt`` with ``num_regions`` image tokens ``proj_embeddings(fc7(regions))`` (module docstring)."""

    needs = frozenset({"txt_ids", "img_regions"})

    def __init__(self, inputs, task, config: MmbtRegionConfig):
        check_region_count("mmbt-region", inputs, config.num_regions)
        super().__init__(inputs, task, config)
        self.fc7 = Fc7(inputs.img_dim, config.fc7_dim)  # Detectron's at training start (load_init_files)

    def modal_width(self, inputs) -> int:
        return self.config.fc7_dim

    def image_tokens(self, batch: Dict[str, Tensor]) -> Tensor:
        """``[B, N, F]``: fc7 of MMF's zero-padded regions (``heads.fc7.padded_regions``)."""
        return self.fc7(padded_regions(batch, self.config.num_regions))

    def load_init_files(self, report):
        """Detectron's fc7 from ``fc7_weights`` (``heads.fc7.load_fc7_init``) -> the LoadReport."""
        return load_fc7_init(self, self.config.fc7_weights, report)

    def check_init_files(self, report) -> None:
        """``load_init_files``' one-line refusals, nothing copied (``heads.fc7.fc7_to_copy``)."""
        fc7_to_copy(self, self.config.fc7_weights, report)
