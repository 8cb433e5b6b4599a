"""``text-bert``, ``concat-bert`` and ``late-fusion``: the Text BERT, Concat BERT and Late Fusion baselines of the
Hateful Memes paper (Kiela et al. 2020) as MMF computes them: ``unimodal_text`` (mmf/models/unimodal.py,
``UnimodalText`` over ``UnimodalBase``), ``concat_bert`` and ``late_fusion`` (mmf/models/fusions.py,
``ConcatBERT`` / ``LateFusion`` over ``FusionBase``).

Forward (B rows, T token positions, H = ``hidden_size`` (768), Di = the image vector's width (2048 for
ResNet-152)):

* ``bert`` is MMF's text encoder (mmf/modules/encoders.py ``TransformerEncoder``:
  ``BertModelJit.from_pretrained("bert-base-uncased")``, every layer fine-tuned), under visualbert's module
  names so that ``heads.visualbert_checkpoint``'s key mapping reads the same files: ``txt_ids [B, T]`` ->
  ``embeddings``: ``word_embeddings(ids) + position_embeddings(0..T-1) + token_type_embeddings(0)`` (MMF's
  ``segment_ids``: zeros for one sentence), LayerNorm, dropout -> ``encoder.layer.*`` (post-norm BERT layers,
  additive ``(1 - txt_mask) * -10000``) -> ``sequence [B, T, H]`` -> ``pooler``: ``tanh(dense(sequence[:, 0]))``
  -> ``pooled [B, H]`` (UnimodalBase / FusionBase keep the encoder's output [1], the pooled one).
* text-bert: ``x = pooled [B, H]``. concat-bert: ``x = cat([pooled, img_pooled], -1) [B, H + Di]``, text first
  as in ``ConcatBERT.forward``; ``img_pooled`` is the batch's pooled image vector (or its regions' masked mean).
* ``mlp``: MMF's ``MLPClassifer`` (mmf/modules/layers.py) hidden blocks, ``heads.models.unimodal.hidden_blocks``:
  per width of ``hidden`` ([768, 768] = hidden_dim 768, num_layers 2) Linear, BatchNorm1d, ReLU, Dropout(0.5)
  -> ``fused [B, hidden[-1]]``; then ``outputs.layers.<task>``, MLPClassifer's last Linear -> ``logits [B, K]``.
  No dropout between the pooler and the MLP, as MMF.
* late-fusion: two MLPClassifers of the same options, ``mlp`` + ``outputs`` on ``pooled`` and ``image_mlp`` +
  ``image_outputs`` on ``img_pooled``; ``logits = (text logits + image logits) / 2`` per task
  (``LateFusion.forward``: ``(text + modal) / 2`` of the scores); ``fused = cat([text fused, image fused])``;
  outputs also ``text_logits`` / ``image_logits``. One optimiser group (LateFusion defines no
  ``get_optimizer_parameters``), as text-bert.

Initialisation: a random start gives ``bert`` MMF's BERT ``_init_weights`` (``vilbert.mmf_init``); the MLP and
the output Linear keep PyTorch's default initialisation, as MMF's ``build_classifier_layer`` leaves them. With
``--init-checkpoint`` a plain BERT loads whole, pooler included, or MMF's own ``model.pth`` of the same model
(BERT and MLPClassifer; ``heads.text_bert_checkpoint``).

Optimiser groups: text-bert has one (UnimodalText defines no ``get_optimizer_parameters``: every parameter at
the run's weight decay; MMF's is transformers' AdamW default, 0.0); concat-bert has MMF's BERT groups
(``ConcatBERT.get_optimizer_parameters`` -> ``get_bert_configured_parameters`` on the base and the classifier:
no decay where the name holds "bias", "LayerNorm.bias" or "LayerNorm.weight"; BatchNorm weights decay).

What differs from MMF: concat-bert reads a cached, frozen image vector where MMF fine-tunes its ResNet-152
with the rest; ``heads train`` evaluates every epoch, MMF every 1,000 updates. On CPU the padded positions are
skipped (``vilbert.Layout``): outputs equal the dense forward's up to float summation order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..outputs import PredictionLayers
from .base import Head, pooled_image, register_head, text_mask
from .unimodal import check_mlp_options, hidden_blocks, refuse_single_row
from .vilbert import Layout, additive_mask, mmf_bert_groups, mmf_init
from .visualbert import BertSizes, Encoder, Pooler, check_bert_sizes, check_token_ids, text_embeddings


@dataclass
class TextBertConfig(BertSizes):
    """BERT-base sizes (mmf/configs/models/unimodal/bert.yaml) and MMF's MLPClassifer as the Hateful Memes
    configs build it (``classifier.params``: hidden_dim 768, num_layers 2; dropout 0.5, relu, batch_norm)."""

    head: ClassVar[str] = "text-bert"  # for the messages (not an option)
    hidden: List[int] = field(default_factory=lambda: [768, 768])  # MLPClassifer: num_layers x hidden_dim
    activation: str = "relu"
    dropout: float = 0.5  # the MLP's (MLPClassifer's); BERT's own are the *_prob options
    batch_norm: bool = True

    def validate(self) -> None:
        check_bert_sizes(self, self.head)
        check_mlp_options(self)


@dataclass
class ConcatBertConfig(TextBertConfig):
    """As text-bert (mmf/configs/models/fusions/concat_bert.yaml: BERT-base, classifier hidden_dim 768; the
    Hateful Memes config sets num_layers 2)."""

    head: ClassVar[str] = "concat-bert"


@dataclass
class LateFusionConfig(TextBertConfig):
    """As text-bert, for both classifiers (mmf/configs/models/fusions/late_fusion.yaml: BERT-base,
    modal_classifier and text_classifier hidden_dim 768; the Hateful Memes config sets num_layers 2 on each)."""

    head: ClassVar[str] = "late-fusion"


class TextEmbeddings(nn.Module):
    """BERT's embeddings (names as transformers' / MMF's): ids ``[B, T]`` -> ``[B, T, H]`` before the LayerNorm,
    which the head applies on the computed positions only."""

    def __init__(self, c: TextBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, ids: Tensor, head: str) -> Tensor:
        return text_embeddings(self, ids, head)


class TextBert(nn.Module):
    """BertModel: ``embeddings``, ``encoder``, ``pooler`` (``bert.*``, as in visualbert and BERT's files)."""

    def __init__(self, c: TextBertConfig):
        super().__init__()
        self.embeddings = TextEmbeddings(c)
        self.encoder = Encoder(c)
        self.pooler = Pooler(c.hidden_size)


class _BertClassifier(Head):
    """The BERT, the MLP on ``x`` (``[B, hidden_size + extra]``) and the prediction layers."""

    pack_positions: Optional[bool] = None  # as visualbert: None = pack the real positions on CPU only

    def __init__(self, inputs, task, config: TextBertConfig, extra: int = 0):
        super().__init__(inputs, task, config)
        self.bert = TextBert(config)
        self.bert.apply(lambda m: mmf_init(m, config.initializer_range))
        self.mlp = hidden_blocks(config.hidden_size + extra, config)
        self.outputs = PredictionLayers(task, self.mlp.out_dim)

    def encode(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """``{"pooled": [B, H], "sequence": [B, T, H]}`` of the token ids (zeros at skipped padded positions)."""
        ids, mask = batch["txt_ids"].long(), text_mask(batch)
        pack = ids.device.type == "cpu" if self.pack_positions is None else self.pack_positions
        layout = Layout.of(mask, pack)
        emb = self.bert.embeddings
        x = emb.dropout(emb.LayerNorm(layout.pack(emb(ids, self.head_name))))
        seq = layout.pad(self.bert.encoder(x, additive_mask(mask, x.dtype), layout))
        return {"pooled": self.bert.pooler(seq), "sequence": seq}

    def classify(self, x: Tensor, out: Dict[str, Tensor]) -> dict:
        refuse_single_row(self, x)
        fused = self.mlp(x)
        return dict(out, logits=self.outputs(fused), fused=fused)

    def check_data(self, features: Dict[str, Tensor], text_meta: Optional[Dict[str, Any]] = None) -> None:
        """Token ids within ``vocab_size``, from a tokenizer of that vocabulary size (``check_token_ids``)."""
        check_token_ids(features, text_meta, self.config.vocab_size, self.head_name, "MMF's Text / Concat BERT")


@register_head("text-bert", TextBertConfig,
               help="MMF's Text BERT: BERT fine-tuned on the token ids, pooler output -> MLPClassifer (BatchNorm)")
class TextBertHead(_BertClassifier):
    """fused = MLP(BERT pooled(txt_ids)) ``[B, hidden[-1]]``; outputs also ``"pooled"``, ``"sequence"``."""

    needs = frozenset({"txt_ids"})

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        out = self.encode(batch)
        return self.classify(out["pooled"], out)


@register_head("concat-bert", ConcatBertConfig,
               help="MMF's Concat BERT: cat(BERT pooled, image pooled) -> MLPClassifer; BERT fine-tuned")
class ConcatBertHead(_BertClassifier):
    """fused = MLP(cat(BERT pooled(txt_ids), img_pooled)) ``[B, hidden[-1]]``; outputs also ``"pooled"``."""

    needs = frozenset({"txt_ids", "img_pooled"})

    def __init__(self, inputs, task, config: ConcatBertConfig):
        super().__init__(inputs, task, config, extra=inputs.img_pooled_width)

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        out = self.encode(batch)
        image = pooled_image(batch).to(out["pooled"].dtype)
        return self.classify(torch.cat([out["pooled"], image], dim=-1), out)

    def optimizer_groups(self, weight_decay: float):
        """MMF's ``get_bert_configured_parameters`` groups (``vilbert.mmf_bert_groups``)."""
        return mmf_bert_groups(self, weight_decay)


@register_head("late-fusion", LateFusionConfig,
               help="MMF's Late Fusion: mean of MLPClassifer(BERT pooled) and MLPClassifer(image pooled) logits")
class LateFusionHead(_BertClassifier):
    """logits = (text MLPClassifer(BERT pooled(txt_ids)) + image MLPClassifer(img_pooled)) / 2; fused
    ``[B, 2 * hidden[-1]]`` (text then image); outputs also ``"text_logits"``, ``"image_logits"``, ``"pooled"``."""

    needs = frozenset({"txt_ids", "img_pooled"})

    def __init__(self, inputs, task, config: LateFusionConfig):
        super().__init__(inputs, task, config)
        self.image_mlp = hidden_blocks(inputs.img_pooled_width, config)  # PyTorch's default init, as MMF's
        self.image_outputs = PredictionLayers(task, self.image_mlp.out_dim)

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        encoded = self.encode(batch)
        out = self.classify(encoded["pooled"], encoded)
        image = pooled_image(batch).to(out["pooled"].dtype)
        image_fused = self.image_mlp(image)
        image_logits = self.image_outputs(image_fused)
        logits = {t: (v + image_logits[t]) / 2 for t, v in out["logits"].items()}
        return dict(out, logits=logits, fused=torch.cat([out["fused"], image_fused], dim=-1),
                    text_logits=out["logits"], image_logits=image_logits)
