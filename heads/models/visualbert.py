"""``visualbert``: VisualBERT (Li et al., 2019) as MMF fine-tunes it for classification
(``mmf/models/visual_bert.py``, ``VisualBERTForClassification``; Hateful Memes ``visual_bert`` configs).

One BERT runs over ``[text tokens; image regions]`` from its embedding layer (``bert.embeddings``, MMF's
``BertVisioLinguisticEmbeddings``):

* text: ``word_embeddings(txt_ids) + position_embeddings(0..T-1) + token_type_embeddings(0)`` (one
  sentence: segment 0, as MMF's bert tokenizer gives);
* image: ``projection(regions) + position_embeddings_visual(0) + token_type_embeddings_visual(0)``: MMF
  passes ``visual_embeddings_type = zeros`` and, with no ``image_text_alignment``, visual position 0 for
  every region; no box input (MMF's VisualBERT reads none);
* ``LayerNorm`` + dropout over the concatenation, then ``bert.encoder.layer.*`` (BERT layers, post-norm,
  additive ``(1 - mask) * -10000`` over ``cat(txt_mask, img_mask)``) and ``bert.pooler`` (Linear + tanh on
  position 0, the [CLS] token). ``pooler_strategy="vqa"`` takes instead the raw sequence output at the
  text's second-to-last real token (MMF's VQA strategy, the pooler not applied).
* classifier (``classifier="mmf"``): dropout(``hidden_dropout_prob``) -> ``transform`` (MMF's
  ``classifier.0``, BertPredictionHeadTransform: Linear, GELU, LayerNorm) -> ``outputs.layers.<task>``
  (``classifier.1``); ``classifier="layers"``: the shared prediction layers on the pooled vector.

Inputs: ``txt_ids`` (the text set's ``input_ids``, from the tokenizer of the checkpoint: bert-base-uncased
for MMF's; ``check_data`` refuses ids outside the vocabulary or a text set tokenised with another vocabulary
size), ``txt_mask``, ``img_regions`` / ``img_mask`` (MMF's detectron.lmdb features are 100 x 2048).
``special_visual_initialize`` (MMF's default): the visual token-type and position tables start as copies of
the text ones, at build and again after loading a checkpoint that lacks them (a plain BERT, MMF's "direct"
recipe). Every Linear / Embedding / LayerNorm starts as MMF's ``_init_weights``. Weights load with
``heads.visualbert_checkpoint`` (MMF / HF VisualBERT / BERT files, with a report of what was used).

On CPU, as vilbert, every per-position op runs on the real positions only (``vilbert.Layout``); outputs
equal the dense forward's up to float summation order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn
from featstore.errors import FeatstoreError

from .base import Head, image_mask, register_head, text_mask
from .vilbert import (Layout, TransformerLayer, additive_mask, check_mmf_head_choices, image_input_layer,
                      mmf_bert_groups, mmf_classifier, mmf_init)

POOLER_STRATEGIES = ("default", "vqa")


@dataclass
class BertSizes:
    """BERT-base's sizes (bert-base-uncased's config), the first options of every BERT head here."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    vocab_size: int = 30522  # bert-base-uncased
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02


@dataclass
class VisualBertConfig(BertSizes):
    """BERT-base sizes and MMF's visual_bert defaults (``configs/models/visual_bert/defaults.yaml``)."""

    visual_embedding_dim: int = 0  # projection input (MMF: 2048); 0 = the image features' width
    img_dim_mismatch: str = "error"  # visual_embedding_dim != the features' width: "project", "reinit", "error"
    special_visual_initialize: bool = True
    pooler_strategy: str = "default"
    classifier: str = "mmf"
    out_hidden: int = 0  # classifier="layers" only
    out_dropout: float = 0.0  # classifier="layers" only

    def validate(self) -> None:
        check_mmf_head_choices(self, "visualbert", pooler_strategy=POOLER_STRATEGIES)
        check_bert_sizes(self, "visualbert")


def check_bert_sizes(c, head: str) -> None:
    """One-line refusals of BERT sizes no BERT has (shared by visualbert, text-bert and concat-bert)."""
    if c.num_attention_heads <= 0 or c.hidden_size % c.num_attention_heads:
        raise FeatstoreError(f"{head} hidden_size={c.hidden_size} is not a multiple of "
                             f"num_attention_heads={c.num_attention_heads}; change one of them")
    for name in ("num_hidden_layers", "vocab_size", "max_position_embeddings", "type_vocab_size"):
        if getattr(c, name) < 1:
            raise FeatstoreError(f"{head} {name}={getattr(c, name)}; use at least 1")


class Embeddings(nn.Module):
    """MMF's ``BertVisioLinguisticEmbeddings`` (names as there): text ids ``[B, T]`` + regions ``[B, R, Dv]``
    -> ``[B, T + R, H]`` before the LayerNorm (which the head applies on the computed positions)."""

    def __init__(self, c: VisualBertConfig, visual_dim: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.token_type_embeddings_visual = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.position_embeddings_visual = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.projection = nn.Linear(visual_dim, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def initialize_visual_from_text(self) -> None:
        """MMF's ``initialize_visual_from_pretrained``: the visual token-type / position tables := the text ones."""
        with torch.no_grad():
            self.token_type_embeddings_visual.weight.copy_(self.token_type_embeddings.weight)
            self.position_embeddings_visual.weight.copy_(self.position_embeddings.weight)

    def forward(self, ids: Tensor, regions: Tensor) -> Tensor:
        t = text_embeddings(self, ids, "visualbert")
        v = (self.projection(regions) + self.position_embeddings_visual.weight[0]
             + self.token_type_embeddings_visual.weight[0])
        return torch.cat([t, v], dim=1)


def text_embeddings(emb: nn.Module, ids: Tensor, head: str) -> Tensor:
    """BERT's text embeddings before the LayerNorm, ``ids [B, T] -> [B, T, H]``: ``word_embeddings(ids) +
    position_embeddings(0..T-1) + token_type_embeddings(0)`` (one sentence: MMF's segment ids are zeros)."""
    T, table = ids.shape[1], emb.position_embeddings.num_embeddings
    if T > table:
        raise FeatstoreError(f"batch has {T} text tokens but {head} max_position_embeddings={table}; pass "
                             f"--max-tokens {table} or a larger table")
    return emb.word_embeddings(ids) + emb.position_embeddings.weight[:T] + emb.token_type_embeddings.weight[0]


class Encoder(nn.Module):
    """``layer.{i}``: BERT layers (MMF's BertEncoderJit) over the packed joint sequence."""

    def __init__(self, c: VisualBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            TransformerLayer(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act,
                             c.hidden_dropout_prob, c.attention_probs_dropout_prob)
            for _ in range(c.num_hidden_layers))

    def forward(self, x: Tensor, add_mask: Tensor, layout: Layout) -> Tensor:
        for layer in self.layer:
            x = layer(x, add_mask, layout)
        return x


class Pooler(nn.Module):
    """BertPooler: ``dense`` + tanh on position 0."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, seq: Tensor) -> Tensor:
        return torch.tanh(self.dense(seq[:, 0]))


class Bert(nn.Module):
    """MMF's ``VisualBERTBase``: ``embeddings``, ``encoder``, ``pooler`` (``model.bert.*`` in MMF files)."""

    def __init__(self, c: VisualBertConfig, visual_dim: int):
        super().__init__()
        self.embeddings = Embeddings(c, visual_dim)
        self.encoder = Encoder(c)
        self.pooler = Pooler(c.hidden_size)


@register_head("visualbert", VisualBertConfig,
               help="VisualBERT as MMF: one BERT over [token ids; regions] from its embeddings, [CLS] pooler")
class VisualBertHead(Head):
    """fused ``[B, hidden]`` (the pooled vector after dropout); outputs also ``"pooled"``, ``"sequence"``."""

    needs = frozenset({"img_regions", "txt_ids"})
    pack_positions: Optional[bool] = None  # as VilbertHead: None = pack on CPU only

    def __init__(self, inputs, task, config: VisualBertConfig):
        super().__init__(inputs, task, config)
        c = config
        self.img_proj, visual_dim = image_input_layer(inputs.img_dim, c.visual_embedding_dim, c.img_dim_mismatch,
                                                      "visualbert visual_embedding_dim", "projection", "projection")
        self.bert = Bert(c, visual_dim)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.transform, self.outputs = mmf_classifier(c, task, c.hidden_size)
        self.apply(lambda m: mmf_init(m, c.initializer_range))
        if c.special_visual_initialize:
            self.bert.embeddings.initialize_visual_from_text()

    def optimizer_groups(self, weight_decay: float):
        """MMF's ``get_optimizer_parameters_for_bert`` (as vilbert): no decay where the name holds "bias",
        "LayerNorm.bias" or "LayerNorm.weight"."""
        return mmf_bert_groups(self, weight_decay)

    def _pool(self, seq: Tensor, t_mask: Tensor) -> Tensor:
        if self.config.pooler_strategy == "default":
            return self.bert.pooler(seq)
        at = (t_mask.long().sum(dim=1) - 2).clamp_min(0)  # MMF: input_mask.sum(1) - 2
        return seq[torch.arange(seq.shape[0], device=seq.device), at]

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        ids, regions = batch["txt_ids"], batch["img_regions"]
        t_mask, r_mask = text_mask(batch), image_mask(batch)
        mask = torch.cat([t_mask, r_mask], dim=1)
        pack = ids.device.type == "cpu" if self.pack_positions is None else self.pack_positions
        layout = Layout.of(mask, pack)
        emb = self.bert.embeddings
        x = emb.dropout(emb.LayerNorm(layout.pack(emb(ids.long(), self.img_proj(regions)))))
        x = self.bert.encoder(x, additive_mask(mask, x.dtype), layout)
        seq = layout.pad(x)
        pooled = self._pool(seq, t_mask)
        fused = self.dropout(pooled)
        return {"logits": self.outputs(self.transform(fused)), "fused": fused, "pooled": pooled, "sequence": seq}

    def check_data(self, features: Dict[str, Tensor], text_meta: Optional[Dict[str, Any]] = None) -> None:
        """``check_token_ids`` against the head's ``vocab_size``."""
        check_token_ids(features, text_meta, self.config.vocab_size, "visualbert", "MMF's VisualBERT")


def check_token_ids(features: Dict[str, Tensor], text_meta: Optional[Dict[str, Any]], vocab: int, head: str,
                    model: str) -> None:
    """Refuse (one line) token ids outside ``vocab``, or a text set whose tokenizer has another vocabulary
    size (ids of another tokenizer name other words); ``model`` names whose tokenizer is bert-base-uncased."""
    recorded = (text_meta or {}).get("vocab_size")
    name = (text_meta or {}).get("name", "the text feature set")
    if recorded is not None and int(recorded) != vocab:
        raise FeatstoreError(
            f"text feature set {name!r} was tokenised with a {recorded}-word vocabulary but {head} "
            f"vocab_size={vocab}; extract the text with the checkpoint's tokenizer (bert-base-uncased for "
            f"{model}) or set vocab_size to match")
    ids = features.get("txt_ids")
    if ids is not None and ids.numel() and int(ids.max()) >= vocab:
        raise FeatstoreError(f"text feature set {name!r} holds token id {int(ids.max())}, outside {head}'s "
                             f"vocab_size={vocab}; extract the text with the checkpoint's tokenizer")
