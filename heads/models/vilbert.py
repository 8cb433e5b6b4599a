"""``vilbert``: ViLBERT two-stream co-attention (Lu et al., 2019) on cached tensors.

The same function as MMF's ViLBERT (``mmf/models/vilbert.py``) after its text embeddings: MMF runs text
layers ``0..t_biattention_id[0]-1``, then for each co-attention block ``k`` the text layers up to
``t_biattention_id[k]``, the visual layers up to ``v_biattention_id[k]`` and ``c_layer[k]``, and finally the
remaining visual then text layers. With the defaults (v ids 0..5, t ids 6..11) the order is
``t0..t5, c0, t6 v0 c1, t7 v1 c2, ..., t10 v4 c5, v5, t11``.

Here ``txt_tokens`` are BERT states cached after ``text_start_layer`` layers (6 by default; best the
checkpoint's own, from the ``vilbert-text`` extractor; 0 = the embedding output, every text layer trained;
``check_text_layer`` refuses states of another layer), so the head
builds only text layers ``text_start_layer..num_hidden_layers-1`` (stored as ``encoder.layer.{i -
text_start_layer}``), all visual layers and the co-attention layers, and starts the loop with the cached
states. Submodule names mirror MMF's so Facebook/MMF checkpoints map (``heads.vilbert_checkpoint``).

With ``text_start_layer=0`` the cached embedding output (``LayerNorm(word + position + type)``, extracted in
eval mode) passes through ``t_dropout`` (``Dropout(hidden_dropout_prob)``, MMF's ``BertEmbeddings`` dropout)
before text layer 0, so all twelve layers train on dropped-out embeddings as in MMF; from any later start the
cached states end inside a layer's residual LayerNorm, whose dropout cannot be applied afterwards.

Differences from MMF, by necessity of cached inputs:
* ``text_start_layer > 0`` (6, the ``vilbert-hm`` / ``vilbert-mmimdb`` presets): MMF fine-tunes the text
  embeddings and every text layer (``fixed_t_layer: 0``, ``freeze_base: false``); here the embeddings and
  text layers ``0..text_start_layer-1`` are the cached extractor's, frozen and run without dropout (for
  BERT-base at 6: 23.8M embedding and 42.5M layer parameters MMF trains). ``text_start_layer=0`` (the
  ``vilbert-hm-direct`` preset) trains all of them.
* ``txt_dim != hidden_size``: the cached tokens pass through ``t_proj`` (``Linear(txt_dim, hidden_size)``,
  not in MMF checkpoints); identity when they match.
* Image features of another width than the checkpoint's image embedding (``v_feature_size``, 2048 for
  Facebook's checkpoints): ``img_dim_mismatch="project"`` learns ``img_proj`` (``Linear(img_dim,
  v_feature_size)``) in front of the loaded embedding, ``"reinit"`` builds a new ``Linear(img_dim,
  v_hidden_size)`` embedding (the loader reports the checkpoint's as re-initialised), ``"error"`` refuses.

As MMF: the feature rows are read as they are (the image mask is ``arange(N) < rows``), no region added.
``global_region=True`` instead prepends the masked mean of the regions with the whole-image box
``[0, 0, 1, 1, 1]`` (vilbert-multi-task's reader convention, not MMF's); without ``img_boxes`` the regions
get a zero location vector. Pooled outputs: ``t_pooler`` (token 0, Linear(hidden -> bi_hidden) + ReLU) and
``v_pooler`` (region 0, Linear(v_hidden -> bi_hidden) + ReLU), fused by product ("mul", MMF's default),
"sum" or "concat" (2 * bi wide); then dropout(hidden_dropout_prob) -> ``fused``.
Classifier (``classifier="mmf"``, MMF's ``ViLBERTForClassification.classifier``): ``transform`` =
Linear(fused, fused) -> GELU (``hidden_act``) -> LayerNorm(eps=``layer_norm_eps``), then one
``Linear(fused, num_outputs)`` per task (``outputs.layers.<task>``). ``classifier="layers"``: the shared
prediction layers on ``fused`` directly (``out_hidden`` / ``out_dropout``). Every Linear/LayerNorm starts
as MMF's ``_init_weights`` (normal(0, ``initializer_range``), zero bias, LayerNorm 1/0).
Masks are additive, ``(1 - mask) * -10000``, as in MMF.

Padding costs no per-position work on CPU (``Layout``, ``VilbertHead.pack_positions``): every Linear,
LayerNorm, GELU and dropout runs on the real positions only (plus position 0, which the poolers read), and
attention pads them back to ``[B, L]`` with zeros at the rest, which the -10000 mask gives exactly zero
weight. Logits, pooled and fused outputs equal the dense forward's (float summation order aside);
``sequence_t`` / ``sequence_v`` hold zeros at the padded positions instead of values no output reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (BertIntermediate, BertOutput, BertPredictionHeadTransform,
                                                    BertSelfOutput)

from featstore.errors import FeatstoreError

from ..outputs import PredictionLayers
from .base import Head, image_boxes, image_mask, masked_mean, register_head, text_mask

FUSIONS = ("mul", "sum", "concat")
CLASSIFIERS = ("mmf", "layers")
MISMATCH = ("error", "project", "reinit")
MMF_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")  # mmf/utils/modeling.py get_bert_configured_parameters


@dataclass
class VilbertConfig:
    # text stream (BERT-base layers 6..11 by default)
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_hidden_layers: int = 12  # text layers in the full model, counting the cached ones
    text_start_layer: int = 6  # the cached txt_tokens are BERT states after this many layers
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    # visual stream
    v_hidden_size: int = 1024
    v_num_attention_heads: int = 8
    v_intermediate_size: int = 1024
    v_num_hidden_layers: int = 6
    v_hidden_act: str = "gelu"
    v_hidden_dropout_prob: float = 0.1
    v_attention_probs_dropout_prob: float = 0.1
    # co-attention
    bi_hidden_size: int = 1024
    bi_num_attention_heads: int = 8
    v_biattention_id: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    t_biattention_id: List[int] = field(default_factory=lambda: [6, 7, 8, 9, 10, 11])
    v_feature_size: int = 0  # input width of the image embedding (a checkpoint's 2048); 0: the features' width
    img_dim_mismatch: str = "error"  # v_feature_size != the features' width: "project", "reinit" or "error"
    # head
    fusion_method: str = "mul"
    global_region: bool = False  # True: prepend the mean region with box [0,0,1,1,1] (not MMF's behaviour)
    classifier: str = "mmf"  # "mmf": Linear-GELU-LayerNorm then Linear per task (MMF); "layers": out_hidden/dropout
    layer_norm_eps: float = 1e-12  # the mmf classifier's LayerNorm
    initializer_range: float = 0.02
    out_hidden: int = 0  # classifier="layers" only
    out_dropout: float = 0.0  # classifier="layers" only
    allow_text_layer_mismatch: bool = False  # train on cached text states from another layer than text_start_layer

    def validate(self) -> None:
        check_mmf_head_choices(self, "vilbert", fusion_method=FUSIONS)
        for size, heads, what in ((self.hidden_size, self.num_attention_heads, "hidden_size"),
                                  (self.v_hidden_size, self.v_num_attention_heads, "v_hidden_size"),
                                  (self.bi_hidden_size, self.bi_num_attention_heads, "bi_hidden_size")):
            if heads <= 0 or size % heads:
                raise FeatstoreError(f"vilbert {what}={size} is not a multiple of its {heads} attention heads; "
                                     "change the size or the head count")
        v, t = list(self.v_biattention_id), list(self.t_biattention_id)
        if len(v) != len(t) or not v:
            raise FeatstoreError(f"vilbert v_biattention_id {v} and t_biattention_id {t} must be non-empty and "
                                 "of equal length (one pair per co-attention layer)")
        if sorted(v) != v or sorted(t) != t or min(v) < 0 or max(v) > self.v_num_hidden_layers:
            raise FeatstoreError(f"vilbert v_biattention_id {v} / t_biattention_id {t} must be increasing and "
                                 f"v ids within 0..v_num_hidden_layers={self.v_num_hidden_layers}")
        if not 0 <= self.text_start_layer <= self.num_hidden_layers:
            raise FeatstoreError(f"vilbert text_start_layer={self.text_start_layer} must be within "
                                 f"0..num_hidden_layers={self.num_hidden_layers}")
        if min(t) < self.text_start_layer or max(t) > self.num_hidden_layers:
            raise FeatstoreError(
                f"vilbert t_biattention_id {t} must lie within text_start_layer={self.text_start_layer}.."
                f"num_hidden_layers={self.num_hidden_layers}: text layers before the cached layer cannot run again")


def check_mmf_head_choices(c, head: str, **own: Tuple[str, ...]) -> None:
    """One-line refusals shared by the MMF heads' configs (vilbert, visualbert): each ``own`` field, then
    ``classifier`` and ``img_dim_mismatch``, must take one of its allowed values; ``out_hidden`` /
    ``out_dropout`` apply only to ``classifier="layers"``."""
    for name, allowed in dict(own, classifier=CLASSIFIERS, img_dim_mismatch=MISMATCH).items():
        if getattr(c, name) not in allowed:
            raise FeatstoreError(f"{head} {name}={getattr(c, name)!r} is not known; use one of: {', '.join(allowed)}")
    if c.classifier == "mmf" and (c.out_hidden or c.out_dropout):
        raise FeatstoreError(f"{head} out_hidden/out_dropout apply to classifier='layers'; MMF's classifier "
                             "has its own transform - pass classifier=layers or drop them")


def mmf_classifier(c, task, width: int) -> Tuple[nn.Module, PredictionLayers]:
    """(``transform``, ``outputs``) on the ``width``-wide fused vector: for ``c.classifier="mmf"`` MMF's
    ``classifier`` (``0``: BertPredictionHeadTransform, Linear-``hidden_act``-LayerNorm; ``1``: a Linear per
    task), else Identity and the shared prediction layers (``out_hidden`` / ``out_dropout``)."""
    if c.classifier == "mmf":
        return (BertPredictionHeadTransform(BertConfig(hidden_size=width, hidden_act=c.hidden_act,
                                                       layer_norm_eps=c.layer_norm_eps)), PredictionLayers(task, width))
    return nn.Identity(), PredictionLayers(task, width, c.out_hidden, c.out_dropout)


def _bert_config(hidden: int, intermediate: int, act: str, dropout: float) -> BertConfig:
    return BertConfig(hidden_size=hidden, intermediate_size=intermediate, hidden_act=act,
                      hidden_dropout_prob=dropout, layer_norm_eps=1e-12, num_attention_heads=1)


MIN_PADDING_TO_PACK = 0.9  # pack a stream only when at most this share of its [B, L] positions is computed


class Layout:
    """Where a stream's computed positions sit in its padded ``[B, L]`` layout.

    Every op of a layer except attention works per position, so it runs on the packed rows ``[N, H]`` of the
    computed positions only (the real ones, plus position 0, which the poolers read); attention takes them
    back to ``[B, L, H]`` (zeros at the others, which its additive mask gives exactly zero weight) and
    returns to packed rows. ``idx=None``: every position is computed (pack / pad are reshapes)."""

    def __init__(self, b: int, length: int, idx: Optional[Tensor] = None):
        self.b, self.length, self.idx = b, length, idx

    @classmethod
    def of(cls, mask: Tensor, pack: bool) -> "Layout":
        """The layout of a stream with mask ``[B, L]`` (True = real); ``pack=False``: every position."""
        b, length = mask.shape
        keep = mask.to(torch.bool).clone()
        keep[:, 0] = True
        if not pack or not bool(mask.any(dim=1).all()):
            return cls(b, length)  # a row without a real position attends uniformly over all: keep them all
        idx = keep.reshape(-1).nonzero().squeeze(1)
        # nearly no padding (a length-bucketed batch): the gathers would cost more than they save
        return cls(b, length) if idx.numel() > MIN_PADDING_TO_PACK * keep.numel() else cls(b, length, idx)

    def pack(self, x: Tensor) -> Tensor:
        """``[B, L, ...] -> [N, ...]``: the computed positions, row by row."""
        flat = x.reshape(self.b * self.length, *x.shape[2:])
        return flat if self.idx is None else flat.index_select(0, self.idx)

    def pad(self, x: Tensor) -> Tensor:
        """``[N, ...] -> [B, L, ...]``, zeros at the positions not computed."""
        if self.idx is not None:
            x = x.new_zeros(self.b * self.length, *x.shape[1:]).index_copy(0, self.idx, x)
        return x.view(self.b, self.length, *x.shape[1:])


def _padded(layout: Layout, x: Tensor, *linears: nn.Module) -> Tuple[Tensor, ...]:
    """Each Linear of packed ``x``, back in the padded layout (one scatter for all of them)."""
    outs = [f(x) for f in linears]
    if layout.idx is None:
        return tuple(layout.pad(o) for o in outs)
    return layout.pad(torch.cat(outs, dim=-1)).split([o.shape[-1] for o in outs], dim=-1)


def _attend(q: Tensor, k: Tensor, v: Tensor, heads: int, add_mask: Tensor, dropout: float) -> Tensor:
    """Multi-head scaled dot-product attention; ``q [B, Nq, A]``, ``k, v [B, Nk, A]``,
    ``add_mask [B, 1, 1, Nk]`` additive -> ``[B, Nq, A]``."""
    b, nq, a = q.shape
    split = lambda x: x.view(b, x.shape[1], heads, a // heads).transpose(1, 2)  # noqa: E731
    ctx = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=add_mask.to(q.dtype),
                                         dropout_p=dropout)
    return ctx.transpose(1, 2).reshape(b, nq, a)


class SelfAttention(nn.Module):
    """MMF's BertSelfAttention / BertImageSelfAttention: query/key/value Linear, ``[B, N, H] -> [B, N, H]``."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.num_attention_heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout_p = dropout

    def forward(self, x: Tensor, add_mask: Tensor, layout: Layout) -> Tensor:
        """``x`` packed ``[N, H]`` (``layout``) -> packed ``[N, H]``."""
        p = self.dropout_p if self.training else 0.0
        q, k, v = _padded(layout, x, self.query, self.key, self.value)
        return layout.pack(_attend(q, k, v, self.num_attention_heads, add_mask, p))


class Attention(nn.Module):
    """``self`` (SelfAttention) + ``output`` (transformers' BertSelfOutput: dense, dropout, residual LayerNorm)."""

    def __init__(self, hidden: int, heads: int, attn_dropout: float, bert_cfg: BertConfig):
        super().__init__()
        self.self = SelfAttention(hidden, heads, attn_dropout)
        self.output = BertSelfOutput(bert_cfg)

    def forward(self, x: Tensor, add_mask: Tensor, layout: Layout) -> Tensor:
        return self.output(self.self(x, add_mask, layout), x)


class TransformerLayer(nn.Module):
    """MMF's BertLayer / BertImageLayer: attention, intermediate, output; packed ``[N, H] -> [N, H]``."""

    def __init__(self, hidden: int, heads: int, intermediate: int, act: str, dropout: float, attn_dropout: float):
        super().__init__()
        cfg = _bert_config(hidden, intermediate, act, dropout)
        self.attention = Attention(hidden, heads, attn_dropout, cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, x: Tensor, add_mask: Tensor, layout: Layout) -> Tensor:
        a = self.attention(x, add_mask, layout)
        return self.output(self.intermediate(a), a)


class BiAttention(nn.Module):
    """MMF's BertBiAttention. Stream 1 = image ``[B, R, Hv]``, stream 2 = text ``[B, T, Ht]``.

    Returns ``(ctx1 [B, T, bi], ctx2 [B, R, bi])``: ctx1 = text queries over image keys/values (masked by the
    image mask), ctx2 = image queries over text keys/values (masked by the text mask), as in MMF.
    """

    def __init__(self, c: VilbertConfig):
        super().__init__()
        bi = c.bi_hidden_size
        self.num_attention_heads = c.bi_num_attention_heads
        self.query1, self.key1, self.value1 = (nn.Linear(c.v_hidden_size, bi) for _ in range(3))
        self.query2, self.key2, self.value2 = (nn.Linear(c.hidden_size, bi) for _ in range(3))
        self.p1, self.p2 = c.v_attention_probs_dropout_prob, c.attention_probs_dropout_prob

    def forward(self, x1: Tensor, mask1: Tensor, x2: Tensor, mask2: Tensor, lay1: Layout,
                lay2: Layout) -> Tuple[Tensor, Tensor]:
        """``x1``, ``x2`` packed by ``lay1`` / ``lay2``; returns ``ctx1`` packed by ``lay2``, ``ctx2`` by ``lay1``."""
        p1, p2 = (self.p1, self.p2) if self.training else (0.0, 0.0)
        h = self.num_attention_heads
        q1, k1, v1 = _padded(lay1, x1, self.query1, self.key1, self.value1)
        q2, k2, v2 = _padded(lay2, x2, self.query2, self.key2, self.value2)
        ctx1 = _attend(q2, k1, v1, h, mask1, p1)
        ctx2 = _attend(q1, k2, v2, h, mask2, p2)
        return lay2.pack(ctx1), lay1.pack(ctx2)


class BiOutput(nn.Module):
    """MMF's BertBiOutput: per stream dense -> dropout -> LayerNorm(+ residual). ``q_dense*`` exist in MMF
    checkpoints but are unused in its forward; kept for key compatibility."""

    def __init__(self, c: VilbertConfig):
        super().__init__()
        bi, hv, ht = c.bi_hidden_size, c.v_hidden_size, c.hidden_size
        self.dense1, self.LayerNorm1 = nn.Linear(bi, hv), nn.LayerNorm(hv, eps=1e-12)
        self.dropout1 = nn.Dropout(c.v_hidden_dropout_prob)
        self.q_dense1 = nn.Linear(bi, hv)
        self.dense2, self.LayerNorm2 = nn.Linear(bi, ht), nn.LayerNorm(ht, eps=1e-12)
        self.dropout2 = nn.Dropout(c.hidden_dropout_prob)
        self.q_dense2 = nn.Linear(bi, ht)
        for p in list(self.q_dense1.parameters()) + list(self.q_dense2.parameters()):
            p.requires_grad_(False)  # unused in the forward (as in MMF); frozen so optimisers skip them

    def forward(self, h1: Tensor, in1: Tensor, h2: Tensor, in2: Tensor) -> Tuple[Tensor, Tensor]:
        out1 = self.LayerNorm1(self.dropout1(self.dense1(h1)) + in1)
        out2 = self.LayerNorm2(self.dropout2(self.dense2(h2)) + in2)
        return out1, out2


class ConnectionLayer(nn.Module):
    """MMF's BertConnectionLayer: co-attention + per-stream feed-forward.
    ``(img [B, R, Hv], txt [B, T, Ht]) -> same shapes``."""

    def __init__(self, c: VilbertConfig):
        super().__init__()
        self.biattention = BiAttention(c)
        self.biOutput = BiOutput(c)
        vcfg = _bert_config(c.v_hidden_size, c.v_intermediate_size, c.v_hidden_act, c.v_hidden_dropout_prob)
        tcfg = _bert_config(c.hidden_size, c.intermediate_size, c.hidden_act, c.hidden_dropout_prob)
        self.v_intermediate, self.v_output = BertIntermediate(vcfg), BertOutput(vcfg)
        self.t_intermediate, self.t_output = BertIntermediate(tcfg), BertOutput(tcfg)

    def forward(self, img: Tensor, img_mask: Tensor, txt: Tensor, txt_mask: Tensor, img_layout: Layout,
                txt_layout: Layout) -> Tuple[Tensor, Tensor]:
        ctx_t, ctx_v = self.biattention(img, img_mask, txt, txt_mask, img_layout, txt_layout)
        a_img, a_txt = self.biOutput(ctx_v, img, ctx_t, txt)
        img = self.v_output(self.v_intermediate(a_img), a_img)
        txt = self.t_output(self.t_intermediate(a_txt), a_txt)
        return img, txt


class Encoder(nn.Module):
    """MMF's BertEncoder loop, starting at text layer ``text_start_layer`` (``layer[j]`` is MMF layer
    ``j + text_start_layer``)."""

    def __init__(self, c: VilbertConfig):
        super().__init__()
        self.c = c
        self.layer = nn.ModuleList(
            TransformerLayer(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act,
                             c.hidden_dropout_prob, c.attention_probs_dropout_prob)
            for _ in range(c.num_hidden_layers - c.text_start_layer))
        self.v_layer = nn.ModuleList(
            TransformerLayer(c.v_hidden_size, c.v_num_attention_heads, c.v_intermediate_size, c.v_hidden_act,
                             c.v_hidden_dropout_prob, c.v_attention_probs_dropout_prob)
            for _ in range(c.v_num_hidden_layers))
        self.c_layer = nn.ModuleList(ConnectionLayer(c) for _ in c.v_biattention_id)

    def forward(self, txt: Tensor, img: Tensor, txt_mask: Tensor, img_mask: Tensor, txt_layout: Layout,
                img_layout: Layout) -> Tuple[Tensor, Tensor]:
        """``txt``, ``img`` packed ``[Nt, Ht]`` / ``[Nr, Hv]`` (``txt_layout`` / ``img_layout``), additive masks
        ``[B, 1, 1, T]`` / ``[B, 1, 1, R]``."""
        s = self.c.text_start_layer
        t_start, v_start = s, 0
        for k, (v_end, t_end) in enumerate(zip(self.c.v_biattention_id, self.c.t_biattention_id)):
            for i in range(t_start, t_end):
                txt = self.layer[i - s](txt, txt_mask, txt_layout)
            for i in range(v_start, v_end):
                img = self.v_layer[i](img, img_mask, img_layout)
            img, txt = self.c_layer[k](img, img_mask, txt, txt_mask, img_layout, txt_layout)
            t_start, v_start = t_end, v_end
        for i in range(v_start, len(self.v_layer)):
            img = self.v_layer[i](img, img_mask, img_layout)
        for i in range(t_start, self.c.num_hidden_layers):
            txt = self.layer[i - s](txt, txt_mask, txt_layout)
        return txt, img


class ImageEmbeddings(nn.Module):
    """MMF's BertImageFeatureEmbeddings: ``LayerNorm(Linear(feat) + Linear(loc5))``, dropout.
    ``[B, R, Di], [B, R, 5] -> [B, R, Hv]``."""

    def __init__(self, img_dim: int, c: VilbertConfig):
        super().__init__()
        self.image_embeddings = nn.Linear(img_dim, c.v_hidden_size)
        self.image_location_embeddings = nn.Linear(5, c.v_hidden_size)
        self.LayerNorm = nn.LayerNorm(c.v_hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, feats: Tensor, loc: Tensor) -> Tensor:
        return self.dropout(self.LayerNorm(self.image_embeddings(feats) + self.image_location_embeddings(loc)))


class Pooler(nn.Module):
    """MMF's BertTextPooler / BertImagePooler: item 0 -> Linear -> ReLU. ``[B, N, H] -> [B, bi]``."""

    def __init__(self, hidden: int, bi: int):
        super().__init__()
        self.dense = nn.Linear(hidden, bi)
        self.activation = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.dense(x[:, 0]))


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """bool ``[B, N]`` (True = real) -> additive ``[B, 1, 1, N]``: 0 for real, -10000 for padding (MMF)."""
    return (1.0 - mask.to(dtype))[:, None, None, :] * -10000.0


def mmf_init(module: nn.Module, std: float) -> None:
    """MMF's ``BertPreTrainedModel._init_weights``: Linear/Embedding weights normal(0, std), Linear biases 0,
    LayerNorm weight 1 and bias 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(0.0, std)
    elif isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()


def image_input_layer(img_dim: int, want: int, mismatch: str, field: str, layer: str, short: str):
    """(``img_proj``, the input width of the checkpoint's image ``layer``) for ``img_dim``-wide features when
    that layer takes ``want`` (0: the features' width): ``mismatch`` "project" learns a Linear in front,
    "reinit" builds the layer at the features' width, "error" refuses naming ``field`` (shared with visualbert)."""
    want = want or img_dim
    if want == img_dim or mismatch == "reinit":
        return nn.Identity(), img_dim
    if mismatch == "project":
        return nn.Linear(img_dim, want), want
    raise FeatstoreError(
        f"{field}={want} (the checkpoint's {layer} input) differs from the image features' width {img_dim}; pass "
        f"--set img_dim_mismatch=project (learn a Linear({img_dim}, {want}) in front of the checkpoint's {short}) "
        f"or --set img_dim_mismatch=reinit (a new {layer})")


def mmf_bert_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """MMF's ``get_bert_configured_parameters``: no decay where a parameter's name holds ``MMF_NO_DECAY``,
    ``weight_decay`` on the rest (MMF writes 0.01; the MMF presets set that value)."""
    params = list(model.named_parameters())
    no_decay = [p for n, p in params if any(part in n for part in MMF_NO_DECAY)]
    decay = [p for n, p in params if not any(part in n for part in MMF_NO_DECAY)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def with_global_region(regions: Tensor, boxes: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Prepend the masked mean region with the whole-image box ``[0, 0, 1, 1, 1]`` (``global_region=True``)."""
    g = masked_mean(regions, mask).unsqueeze(1)
    whole = boxes.new_tensor([0.0, 0.0, 1.0, 1.0, 1.0]).expand(boxes.shape[0], 1, 5)
    return (torch.cat([g, regions], dim=1), torch.cat([whole, boxes], dim=1),
            torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1))


@register_head("vilbert", VilbertConfig, help="ViLBERT two-stream co-attention (MMF layout) on regions + tokens")
class VilbertHead(Head):
    """fused ``[B, bi]`` (``[B, 2*bi]`` for fusion "concat"); outputs also ``"pooled_t"``, ``"pooled_v"``."""

    needs = frozenset({"img_regions", "txt_tokens"})
    # per-position work on the real positions only (``Layout``): None = on CPU (on CUDA the padded dense ops
    # are cheap and the packing's dynamic shapes would sync and defeat --compile); True / False force it
    pack_positions: Optional[bool] = None

    def optimizer_groups(self, weight_decay: float):
        """MMF's ViLBERT groups (``get_optimizer_parameters_for_bert``, finetune_lr_multiplier 1 by default:
        ``get_bert_configured_parameters``): no decay on a parameter whose name holds ``MMF_NO_DECAY``,
        ``weight_decay`` on the rest (MMF writes 0.01, the vilbert-hm preset's value). By MMF's names, which
        this head's mirror: the co-attention outputs' ``LayerNorm1`` / ``LayerNorm2`` weights are decayed there
        (their names hold neither "bias" nor "LayerNorm.weight"), so they are here."""
        return mmf_bert_groups(self, weight_decay)

    def __init__(self, inputs, task, config: VilbertConfig):
        super().__init__(inputs, task, config)
        c = config
        self.t_proj = nn.Identity() if inputs.txt_dim == c.hidden_size else nn.Linear(inputs.txt_dim, c.hidden_size)
        self.t_dropout = nn.Dropout(c.hidden_dropout_prob) if c.text_start_layer == 0 else nn.Identity()
        self.img_proj, emb_in = image_input_layer(inputs.img_dim, c.v_feature_size, c.img_dim_mismatch,
                                                  "vilbert v_feature_size", "image embedding", "embedding")
        self.v_embeddings = ImageEmbeddings(emb_in, c)
        self.encoder = Encoder(c)
        self.t_pooler = Pooler(c.hidden_size, c.bi_hidden_size)
        self.v_pooler = Pooler(c.v_hidden_size, c.bi_hidden_size)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.fused_dim = c.bi_hidden_size * (2 if c.fusion_method == "concat" else 1)
        self.transform, self.outputs = mmf_classifier(c, task, self.fused_dim)
        self.apply(lambda m: mmf_init(m, c.initializer_range))

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        regions, tokens = batch["img_regions"], batch["txt_tokens"]
        r_mask, t_mask = image_mask(batch), text_mask(batch)
        boxes = image_boxes(batch)
        if self.config.global_region:
            regions, boxes, r_mask = with_global_region(regions, boxes, r_mask)
        pack = tokens.device.type == "cpu" if self.pack_positions is None else self.pack_positions
        t_lay, v_lay = Layout.of(t_mask, pack), Layout.of(r_mask, pack)
        txt = self.t_proj(self.t_dropout(t_lay.pack(tokens)))
        img = self.v_embeddings(self.img_proj(v_lay.pack(regions)), v_lay.pack(boxes))
        txt, img = self.encoder(txt, img, additive_mask(t_mask, txt.dtype), additive_mask(r_mask, img.dtype), t_lay, v_lay)
        txt, img = t_lay.pad(txt), v_lay.pad(img)
        pt, pv = self.t_pooler(txt), self.v_pooler(img)
        if self.config.fusion_method == "mul":
            fused = pt * pv
        elif self.config.fusion_method == "sum":
            fused = pt + pv
        else:
            fused = torch.cat([pt, pv], dim=-1)
        fused = self.dropout(fused)
        return {"logits": self.outputs(self.transform(fused)), "fused": fused, "pooled_t": pt, "pooled_v": pv,
                "sequence_t": txt, "sequence_v": img}


# ------------------------------------------------------------------------------ which layer the text came from

BERT_LIKE = ("bert", "distilbert")


def cached_text_layer(text_meta: Optional[dict]):
    """The layer of the cached text states a run trains on, from ``TrainData.meta["features"]["text"]``
    (``array`` and the version's ``extractor`` / ``config``): an int, ``"last"`` (a bert/distilbert
    ``tokens`` array: the model's last layer) or None (not recorded, e.g. imported features)."""
    if not text_meta or "array" not in text_meta:
        return None
    array = str(text_meta["array"])
    if array.startswith("layer_") and array[len("layer_"):].isdigit():
        return int(array[len("layer_"):])
    if array == "tokens":
        extractor, cfg = text_meta.get("extractor"), text_meta.get("config") or {}
        if extractor == "vilbert-text" and cfg.get("layers"):
            return max(int(k) for k in cfg["layers"])
        if extractor in BERT_LIKE:
            return "last"
    return None


def check_text_layer(model: nn.Module, text_meta: Optional[dict]) -> None:
    """Refuse (one-line FeatstoreError) to train a vilbert head (alone or as a refnet base) on cached text
    states of another layer than its ``text_start_layer``, unless ``allow_text_layer_mismatch``."""
    layer = cached_text_layer(text_meta)
    if layer is None:
        return
    for m in model.modules():
        if not isinstance(m, VilbertHead) or m.config.allow_text_layer_mismatch:
            continue
        s = m.config.text_start_layer
        if layer != s:
            what = "the last layer's" if layer == "last" else f"layer {layer}"
            raise FeatstoreError(
                f"text feature set {text_meta.get('name')!r} array {text_meta['array']!r} holds {what} states, but "
                f"vilbert text_start_layer={s} runs text layers {s}.. on states after layer {s}; pass --text-array "
                f"layer_{s} (extract it with --set layers='[{s}]'), set text_start_layer to the cached layer, or "
                "--set allow_text_layer_mismatch=true to train on them anyway")
