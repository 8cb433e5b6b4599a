"""Heads speed: seconds per training epoch of every head on cached features, against re-extracting them.

    python benchmarks/heads_speed.py [--device auto|cpu|cuda] [--quick] [--heads concat,vilbert,...]
        [--n-train N] [--epochs E] [--baseline-epochs B]
    python benchmarks/heads_speed.py --padding [--quick] [--n-train N] [--epochs E] [--head-size tiny|default]

``--padding``: vilbert and visualbert on cached tensors shaped like the users' sets: tokens stored at 128 x 768
with captions of 8-30 tokens (5% a tail up to 64), and each region set of ``--regions``: ``36`` (36 x 2048, all
real, as grid / roi / dinov2 store them) and ``vg`` (100 stored, 10-100 real, uniform: the vg-regions
extractor's and MMF detectron.lmdb's bounds; no published histogram). Variants in one run, same seed:
untrimmed (``trim=False``, dense), trimmed (dense), trimmed + packed (vilbert's and visualbert's CPU default: per-position
work on real positions only) and trimmed + length buckets (``bucket=8``); s/epoch = median of train()'s epochs after
the first; "steps": the variants' forward + backward interleaved batch by batch, plus a no-padding bound
(every batch at the mean real lengths); then where a trimmed vilbert epoch goes, part by part. Predictions
with trimming/packing on vs untrimmed dense must agree to 1e-4, else exit 1. Goal: vilbert >= 3x on the 2-core
CPU. Sizes: 1,024 + 64 samples on CPU (256 + 16 with --quick; tiny head configs), 8,500 + 500 on CUDA.
``--head-size default`` trains the heads' default configs on a CPU too (the sizes users train; with
``--n-train 128`` about ten minutes on 2 cores).

Data (generated once, seeded): raw inputs shaped like the users' - ``N`` RGB images (uint8, ``S x S``) and
``N`` token-id sequences (``[CLS] ... [SEP]``, lengths uniform in 8..T, padded to T) with a random binary
label; split 17:1 into train and val like Hateful Memes (8,500 train, 500 dev).

Backbones (the users' pipelines, shrunk): a timm CNN (``pretrained=False``, seeded) whose last feature map
is average-pooled to a ``g x g`` grid -> ``img_regions [N, g*g, C]`` (+ ``img_pooled`` = their mean and
``img_boxes`` = the grid cells, normalised), and a few-layer ``transformers.BertModel`` ->
``txt_tokens [N, T, H]`` (+ ``txt_pooled`` = the [CLS] state). Both run in eval mode under ``no_grad``
(bf16 autocast on CUDA); the features are float32.

Two ways to train the same head with ``heads.train.train`` (AdamW, warmup + linear decay, clipping,
a validation pass per epoch; ``patience=0`` so every epoch runs; bf16 autocast on CUDA):

* cached (featstore): the features extracted ONCE into a ``TrainData`` on the device; a batch is one
  ``index_select`` per key;
* baseline (what the users' pipelines did): ``ReextractedData``, a ``TrainData`` whose ``batch(idx)`` runs
  the backbones on the raw inputs of those rows, every step of every epoch (validation too).

Same seed, same head init, same batch order, same dropout masks: both runs compute the same training, so
their per-epoch train/val losses and the trained heads' predicted probabilities on every row must agree
(column ``check``: max relative loss difference / max absolute probability difference; a mismatch fails
the run with exit status 1; a baseline on other features differs by ~0.1-0.3 in probability). The cached
head is first trained ``B`` epochs for this check (which also warms it up), then timed over ``E`` epochs;
``s/epoch`` is the median of the per-epoch times train() logs.

Sizes: on CUDA without ``--quick``, the users' sizes: 8,500 + 500 samples, 36 x 2048 regions (timm
``resnet14t`` at 192 px), 128 x 768 tokens (BERT width 768, 2 layers), default head configs (vilbert: 6 text
layers of 768, 6 visual of 1024, 6 co-attention), E = 20 epochs, compared with the GPU goals. On CPU the
default is a subset (272 + 16 samples, 36 x 2048 regions, 64 x 768 tokens) and ``--quick`` a smaller one
(136 + 8 samples, 9 x 512 regions from ``resnet10t`` at 96 px, 32 x 256 tokens); both time E = 3 epochs
(after a B = 1 epoch check on CPU, B = 2 with --quick; the baseline runs B epochs), use tiny vilbert,
visualbert and singlestream configs (2 layers per stream, width 128) and extrapolate the per-epoch time linearly in the
number of samples to 8,500 + 500, labelled as such (NOT a prediction for the full shapes). Every time is a
wall-clock figure of this machine as loaded at the time (the header gives torch's thread count); compare
rows of the same run, not runs.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence

import numpy as np

from _common import (Parser, Stopwatch, autocast, fmt, format_table, goal_status, header_lines, median,
                     name_list, positive_int, resolve_device, run_main, synchronize)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from featstore.extractors.geometry import grid_cell_boxes  # noqa: E402
from featstore.extractors.cnn import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from heads import models as _heads_registry  # noqa: E402,F401  (register the heads before the report)
from heads.batching import trim_batch  # noqa: E402
from heads.data import TrainData, normalise_boxes  # noqa: E402
from heads.spec import Task, TaskSpec  # noqa: E402
from heads.train import TrainConfig, TrainResult, train  # noqa: E402

HEADS = ("concat", "cross", "text-only", "image-only", "vilbert", "visualbert", "singlestream", "gnn", "refnet")
FULL_TRAIN, FULL_VAL = 8500, 500  # Hateful Memes train / dev
# GPU goals: seconds for a whole 20-epoch train() on the full sizes, one GPU.
GPU_GOALS = {"vilbert": 30.0, "concat": 2.0, "gnn": 60.0}
GOAL_EPOCHS = 20
# Tiny transformer configs for CPU runs (2 layers per stream, width 128); everything else keeps its defaults.
TINY_HEAD_CFG: Dict[str, Dict[str, object]] = {
    "vilbert": dict(hidden_size=128, num_attention_heads=2, intermediate_size=256, num_hidden_layers=4,
                    text_start_layer=2, v_hidden_size=128, v_num_attention_heads=2, v_intermediate_size=256,
                    v_num_hidden_layers=2, bi_hidden_size=128, bi_num_attention_heads=2,
                    v_biattention_id=[0, 1], t_biattention_id=[2, 3]),
    "visualbert": dict(hidden_size=128, num_attention_heads=2, num_hidden_layers=2, intermediate_size=256),
    "singlestream": dict(hidden=128, heads=2, layers=2, ffn=256),
}
TINY_DESCRIBE = {"vilbert": "tiny: 2 text + 2 visual + 2 co-attn, width 128",
                 "visualbert": "tiny: 2 layers, width 128", "singlestream": "tiny: 2 layers, width 128"}
# Heads whose default is GPU-sized without a transformer: cross defaults to the reference main.py's n = 768
# (a 453 M-parameter pre-output layer); the rows here keep n = 64, the size measured before session 11.
FIXED_HEAD_CFG: Dict[str, Dict[str, object]] = {"cross": dict(proj_dim=64)}
FIXED_DESCRIBE = {"cross": "n = 64 (proj_dim)"}
FULL_DESCRIBE = {"vilbert": "6 text (768) + 6 visual (1024) + 6 co-attn", "visualbert": "BERT-base: 12 layers, 768",
                 "singlestream": "4 layers, 768"}


@dataclass(frozen=True)
class Sizes:
    """One size preset. ``grid`` x ``grid`` regions of the CNN's width; ``tokens`` x ``bert_hidden`` tokens."""

    label: str
    n_train: int
    n_val: int
    cnn: str
    image_px: int
    grid: int
    tokens: int
    bert_hidden: int
    bert_layers: int
    tiny_transformers: bool
    epochs: int
    baseline_epochs: int

    @property
    def n(self) -> int:
        return self.n_train + self.n_val


PRESETS = {
    "full": Sizes("full (users' sizes)", FULL_TRAIN, FULL_VAL, "resnet14t", 192, 6, 128, 768, 2, False,
                  GOAL_EPOCHS, 2),
    "cpu": Sizes("CPU subset", 272, 16, "resnet14t", 192, 6, 64, 768, 2, True, 3, 1),
    "quick": Sizes("quick (tiny)", 136, 8, "resnet10t", 96, 3, 32, 256, 2, True, 3, 2),
}


# ------------------------------------------------------------------------------------------- raw data
@dataclass
class RawInputs:
    """What the users' pipelines start every epoch from: ``images`` uint8 ``[N, 3, S, S]``, ``input_ids``
    int64 ``[N, T]``, ``attention`` bool ``[N, T]`` (True = real token), ``labels`` int64 ``[N]`` (0/1)."""

    images: Tensor
    input_ids: Tensor
    attention: Tensor
    labels: Tensor


def make_raw(sizes: Sizes, vocab: int, device: torch.device, seed: int = 0) -> RawInputs:
    """Seeded raw inputs on ``device``; labels are a shuffled 0/1 alternation within each split (so train and
    val both hold both classes)."""
    g = torch.Generator().manual_seed(seed)
    n, t, s = sizes.n, sizes.tokens, sizes.image_px
    images = torch.randint(0, 256, (n, 3, s, s), generator=g, dtype=torch.uint8)
    lengths = torch.randint(min(8, t), t + 1, (n,), generator=g)
    pos = torch.arange(t)[None, :]
    attention = pos < lengths[:, None]
    ids = torch.randint(1000, vocab, (n, t), generator=g)
    ids[:, 0] = 101  # [CLS]
    ids[torch.arange(n), lengths - 1] = 102  # [SEP]
    ids = ids.masked_fill(~attention, 0)  # [PAD]
    labels = torch.cat([(torch.arange(k) % 2)[torch.randperm(k, generator=g)] for k in (sizes.n_train, sizes.n_val)])
    return RawInputs(images.to(device), ids.to(device), attention.to(device), labels.to(device))


# ------------------------------------------------------------------------------------------- backbones
class Backbones(nn.Module):
    """The shrunk users' extractors: ``forward(raw, idx)`` -> the heads' batch dict for rows ``idx``.

    Output: ``img_regions [B, g*g, C]``, ``img_mask [B, g*g]`` (all True), ``img_boxes [B, g*g, 5]``,
    ``img_pooled [B, C]``, ``txt_tokens [B, T, H]``, ``txt_mask [B, T]``, ``txt_pooled [B, H]``; float32;
    ``txt_ids [B, T]`` int64 (the token ids, which visualbert embeds itself).
    """

    def __init__(self, sizes: Sizes, seed: int = 0):
        super().__init__()
        import timm
        from transformers import BertConfig, BertModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.cnn = timm.create_model(sizes.cnn, pretrained=False, num_classes=0, global_pool="")
            self.bert = BertModel(BertConfig(hidden_size=sizes.bert_hidden, num_hidden_layers=sizes.bert_layers,
                                             num_attention_heads=max(1, sizes.bert_hidden // 64),
                                             intermediate_size=4 * sizes.bert_hidden,
                                             max_position_embeddings=max(512, sizes.tokens)),
                                  add_pooling_layer=False)
        self.eval()
        self.grid = sizes.grid
        self.vocab = int(self.bert.config.vocab_size)
        self.img_dim = int(self.cnn.num_features)
        self.txt_dim = sizes.bert_hidden
        px = sizes.image_px
        boxes = grid_cell_boxes(px, px, sizes.grid, sizes.grid)[None]  # [1, R, 4] in pixels
        self.register_buffer("boxes", normalise_boxes(boxes, torch.tensor([[px, px]])), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    @torch.no_grad()
    def forward(self, raw: RawInputs, idx: Tensor) -> Dict[str, Tensor]:
        dev = self.boxes.device
        with autocast(dev):
            x = (raw.images.index_select(0, idx).float() - self.mean) / self.std
            fmap = self.cnn.forward_features(x)
            regions = F.adaptive_avg_pool2d(fmap.float(), self.grid).flatten(2).transpose(1, 2)
            attention = raw.attention.index_select(0, idx)
            tokens = self.bert(input_ids=raw.input_ids.index_select(0, idx),
                               attention_mask=attention.long()).last_hidden_state.float()
        b, r = regions.shape[:2]
        return {"img_regions": regions, "img_mask": torch.ones(b, r, dtype=torch.bool, device=dev),
                "img_boxes": self.boxes.expand(b, -1, -1), "img_pooled": regions.mean(dim=1),
                "txt_tokens": tokens, "txt_mask": attention, "txt_pooled": tokens[:, 0],
                "txt_ids": raw.input_ids.index_select(0, idx)}


class ReextractedData(TrainData):
    """A ``TrainData`` whose ``batch(idx)`` re-extracts the features from raw inputs every time (the users'
    pipelines). Built by ``reextracted_data``; ``features`` are zero-stride placeholders that carry only the
    shapes and device (for ``input_spec``/``device``)."""

    backbones: Optional[Backbones] = None
    raw: Optional[RawInputs] = None

    def batch(self, idx: Tensor, trim: bool = False) -> Dict[str, Tensor]:
        out = self.backbones(self.raw, idx)
        return trim_batch(out) if trim else out


def _task_spec() -> TaskSpec:
    return TaskSpec([Task("label", "binary", 2, ["0", "1"])])


def _splits(sizes: Sizes, device: torch.device) -> Dict[str, Tensor]:
    return {"train": torch.arange(sizes.n_train, device=device),
            "val": torch.arange(sizes.n_train, sizes.n, device=device)}


def cached_data(backbones: Backbones, raw: RawInputs, sizes: Sizes, chunk: int = 256) -> TrainData:
    """Extract every row once (in chunks of ``chunk``) into a ``TrainData`` on the device."""
    dev = raw.images.device
    parts: Dict[str, List[Tensor]] = {}
    for s in range(0, sizes.n, chunk):
        out = backbones(raw, torch.arange(s, min(sizes.n, s + chunk), device=dev))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.contiguous())
    features = {k: torch.cat(v) for k, v in parts.items()}
    return TrainData(features=features, ids=[f"s{i:05d}" for i in range(sizes.n)], targets={"label": raw.labels},
                     splits=_splits(sizes, dev), task_spec=_task_spec())


def reextracted_data(backbones: Backbones, raw: RawInputs, sizes: Sizes, like: TrainData) -> ReextractedData:
    """The baseline's data: same ids/targets/splits as ``like``, features recomputed per batch."""
    placeholders = {k: v[:1].expand(v.shape) for k, v in like.features.items()}  # shape + device, no memory
    data = ReextractedData(features=placeholders, ids=list(like.ids), targets=like.targets, splits=like.splits,
                           task_spec=like.task_spec)
    data.backbones, data.raw = backbones, raw
    return data


# ------------------------------------------------------------------------------------------- one head
@dataclass
class HeadResult:
    head: str
    describe: str
    cached_epoch_s: float
    baseline_epoch_s: float
    timed_total_s: float  # the whole cached train() call of ``epochs`` epochs
    epochs: int
    loss_diff: float
    prob_diff: float
    cached_times: List[float] = field(default_factory=list)
    baseline_times: List[float] = field(default_factory=list)


def _losses(res: TrainResult) -> List[float]:
    return [v for row in res.history for k, v in row.items() if k in ("train_loss", "val_loss")]


def max_prob_diff(a: TrainResult, b: TrainResult) -> float:
    """max over splits, rows and tasks of |p_a - p_b| for the final predicted probabilities; inf if the
    splits or tasks differ."""
    if a.probs.keys() != b.probs.keys() or any(a.probs[s].keys() != b.probs[s].keys() for s in a.probs):
        return float("inf")
    return max((float(np.abs(a.probs[s][t] - b.probs[s][t]).max()) for s in a.probs for t in a.probs[s]),
               default=float("inf"))


def max_rel_diff(a: Sequence[float], b: Sequence[float]) -> float:
    """max_i |a_i - b_i| / max(|b_i|, 1e-12); inf when the lengths differ or a value is not finite."""
    if len(a) != len(b) or not len(a):
        return float("inf")
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("inf")
    return float((np.abs(x - y) / np.maximum(np.abs(y), 1e-12)).max())


def _release(device: torch.device) -> None:
    """Finish queued work and hand freed CUDA blocks back, so one head's memory does not crowd the next."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_head(head: str, head_cfg: Dict[str, object], describe: str, data: TrainData, baseline: ReextractedData,
               sizes: Sizes, device: torch.device) -> HeadResult:
    cuda = device.type == "cuda"
    short = TrainConfig(head=head, head_cfg=copy.deepcopy(head_cfg), epochs=sizes.baseline_epochs, patience=0,
                        device=device.type, amp=cuda, seed=0, threads=torch.get_num_threads())
    reference = train(short, data, progress=False)  # check reference + warm-up of this head's kernels
    base = train(replace(short, head_cfg=copy.deepcopy(head_cfg)), baseline, progress=False)
    diff = max_rel_diff(_losses(base), _losses(reference))
    prob_diff = max_prob_diff(base, reference)
    baseline_times = [row["time_s"] for row in base.history]
    del reference, base
    _release(device)
    timed_cfg = replace(short, head_cfg=copy.deepcopy(head_cfg), epochs=sizes.epochs)
    with Stopwatch(device) as sw:
        timed = train(timed_cfg, data, progress=False)
    cached_times = [row["time_s"] for row in timed.history]
    del timed
    _release(device)
    return HeadResult(head, describe, median(cached_times), median(baseline_times), sw.seconds, sizes.epochs, diff,
                      prob_diff, cached_times, baseline_times)


# ------------------------------------------------------------------------------------------- padding
PADDING_HEADS = ("vilbert", "visualbert")
PADDING_GOAL = 3.0  # vilbert, untrimmed / trimmed s/epoch, 2-core CPU
PADDING_SIZES = {"cpu": (1024, 64), "quick": (256, 16), "full": (FULL_TRAIN, FULL_VAL)}
# Region sets as the users store them: (stored R, (low, high) real counts or None = all real, description)
REGION_SETS = {
    "36": (36, None, "36 x 2048 all real (grid / roi / dinov2 store a fixed count)"),
    "vg": (100, (10, 100), "100 x 2048 stored, real 10-100 uniform (vg-regions and MMF's detectron.lmdb: 10 to "
                           "100 boxes per image padded to 100; no published histogram, so uniform over the bounds)"),
}


def caption_lengths(n: int, stored: int, g: torch.Generator) -> Tensor:
    """Token counts like Hateful Memes captions: 95% uniform in 8..30, 5% a tail uniform in 31..64 (at most
    ``stored``)."""
    short = torch.randint(8, 31, (n,), generator=g)
    tail = torch.randint(31, 65, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.05, tail, short).clamp_max(stored)


def padded_data(n_train: int, n_val: int, tokens: int, txt_dim: int, regions: str, img_dim: int,
                device: torch.device, seed: int = 0) -> TrainData:
    """Random cached features at the stored shapes (``tokens`` positions, real counts from
    ``caption_lengths``; regions as ``REGION_SETS[regions]``); padded positions hold zeros as the store
    writes them. The head's work depends on the shapes only, so no backbone is needed here."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    stored, counts, _ = REGION_SETS[regions]
    lengths = caption_lengths(n, tokens, g)
    t_mask = torch.arange(tokens)[None] < lengths[:, None]
    r_real = torch.full((n,), stored) if counts is None else torch.randint(counts[0], counts[1] + 1, (n,), generator=g)
    r_mask = torch.arange(stored)[None] < r_real[:, None]
    feats = {"txt_tokens": torch.randn(n, tokens, txt_dim, generator=g) * t_mask[..., None], "txt_mask": t_mask,
             "img_regions": torch.randn(n, stored, img_dim, generator=g).abs() * r_mask[..., None],
             "img_mask": r_mask, "img_boxes": torch.rand(n, stored, 5, generator=g) * r_mask[..., None]}
    feats["txt_pooled"], feats["img_pooled"] = feats["txt_tokens"][:, 0], feats["img_regions"].mean(1)
    feats["txt_ids"] = torch.randint(1, 30522, (n, tokens), generator=g) * t_mask  # BERT's vocabulary, 0 = padding
    labels = torch.cat([(torch.arange(k) % 2)[torch.randperm(k, generator=g)] for k in (n_train, n_val)])
    return TrainData({k: v.to(device) for k, v in feats.items()}, [f"s{i:05d}" for i in range(n)],
                     {"label": labels.to(device)}, {"train": torch.arange(n_train, device=device),
                                                    "val": torch.arange(n_train, n, device=device)}, _task_spec())


# (label, TrainConfig options, pack_positions of the heads that pack (PACKING_HEADS): False = dense, None = their
# default: packed on CPU)
PADDING_VARIANTS = (("untrimmed", dict(trim=False), False), ("trimmed", dict(trim=True), False),
                    ("trimmed + packed", dict(trim=True), None), ("trimmed + bucket 8", dict(trim=True, bucket=8), None))
PACKING_HEADS = ("vilbert", "visualbert")  # heads with ``pack_positions`` (per-position work on real positions only)


@contextlib.contextmanager
def head_packing(pack: Optional[bool]):
    """``pack_positions`` of the packing heads' classes set to ``pack`` for the heads built inside (the
    untrimmed baseline and the plain trimmed variant run dense, as before packing existed)."""
    from heads.models.vilbert import VilbertHead
    from heads.models.visualbert import VisualBertHead

    classes = (VilbertHead, VisualBertHead)
    before = [c.pack_positions for c in classes]
    for c in classes:
        c.pack_positions = pack
    try:
        yield
    finally:
        for c, b in zip(classes, before):
            c.pack_positions = b


def variants(head: str) -> tuple:
    """The padding variants that differ for ``head`` (only ``PACKING_HEADS`` pack)."""
    return tuple(v for v in PADDING_VARIANTS if head in PACKING_HEADS or v[0] != "trimmed + packed")


def bench_padding_head(head: str, head_cfg: Dict[str, object], data: TrainData, epochs: int,
                       device: torch.device) -> Dict[str, object]:
    """Median s/epoch of each variant (same seed; the first epoch of each run is dropped as warm-up when
    there are more than two), and the largest |p| difference of the trimmed model's predictions with
    trimming on vs off (eval mode: trimming must not change them)."""
    from heads.train import predict_logits

    cuda = device.type == "cuda"
    out: Dict[str, object] = {}
    for label, opts, pack in variants(head):
        cfg = TrainConfig(head=head, head_cfg=copy.deepcopy(head_cfg), epochs=epochs, patience=0, seed=0,
                          device=device.type, amp=cuda, threads=torch.get_num_threads(), **opts)
        with head_packing(pack):
            res = train(cfg, data, progress=False)
        times = [row["time_s"] for row in res.history]
        out[label] = median(times[1:] if len(times) > 2 else times)
        if label == variants(head)[-2][0]:  # trimmed (+ packed for the packing heads)
            idx = torch.arange(len(data), device=data.device)
            a = predict_logits(res.model, data, idx, trim=True)["label"].softmax(-1)
            res.model.pack_positions = False  # the reference: untrimmed and dense
            b = predict_logits(res.model, data, idx, trim=False)["label"].softmax(-1)
            out["prob_diff"] = float((a - b).abs().max())
        del res
        _release(device)
    return out


def no_padding_batch(batch: Dict[str, Tensor], lengths: Dict[str, int]) -> Dict[str, Tensor]:
    """``batch`` cut to ``lengths`` positions per sequence group with every position real: a batch of the
    same rows in which every row has the mean real length (what an ideal packing without padding costs)."""
    from heads.batching import SEQUENCES

    out = dict(batch)
    for mask_key, keys in SEQUENCES:
        if mask_key in out:
            for k in keys:
                out[k] = out[k][:, :lengths[mask_key]]
            out[mask_key] = torch.ones_like(out[mask_key][:, :lengths[mask_key]])
    return out


def step_plans(data: TrainData, head: str = "vilbert", window: int = 8) -> Dict[str, List]:
    """One epoch's training batches per variant: ``{label: [(rows, trim, mean lengths or None, pack)]}``."""
    from heads.batching import bucketed_batches, length_key

    train_idx = data.split("train")
    order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(0)).to(train_idx.device)]
    bs = TrainConfig.batch_size
    lengths = data.sequence_lengths()
    plain = bucketed_batches(order, None, bs, 0, torch.Generator())
    bucketed = bucketed_batches(order, length_key(lengths), bs, window, torch.Generator().manual_seed(0))
    mean = {k: max(1, int(torch.ceil(v.index_select(0, train_idx).float().mean()))) for k, v in lengths.items()}
    plans = {label: [(b, opts["trim"], None, pack) for b in (bucketed if opts.get("bucket") else plain)]
             for label, opts, pack in variants(head)}
    plans["no-padding bound"] = [(b, True, mean, False) for b in plain]
    return plans


def interleaved_epoch_s(head: str, head_cfg: Dict[str, object], data: TrainData, device: torch.device,
                        window: int = 8) -> Dict[str, float]:
    """Seconds of one epoch of training steps (forward + backward, no optimiser step) per variant, the
    variants' steps interleaved batch by batch (untrimmed i, trimmed i, bucketed i, bound i, ...) so that a
    shared machine's changing load hits all alike; ``train()``'s epoch times run one variant after another.
    ``no-padding bound``: every batch at the data's mean real lengths, all real (``no_padding_batch``)."""
    from heads.models import create_head

    torch.manual_seed(0)
    model = create_head(head, data.input_spec(), data.task_spec, **copy.deepcopy(head_cfg)).to(device).train()
    plans = step_plans(data, head, window)
    spent = {k: 0.0 for k in plans}
    for i in range(len(plans["untrimmed"])):
        for label, plan in plans.items():
            idx, trim, mean, pack = plan[i]
            model.pack_positions = pack
            batch = data.batch(idx, trim=trim)
            if mean is not None:
                batch = no_padding_batch(batch, mean)
            with Stopwatch(device) as sw, autocast(device):
                out = model(batch)
                out["logits"]["label"].float().sum().backward()
            model.zero_grad(set_to_none=True)
            spent[label] += sw.seconds
    return spent


# Where a trimmed + bucketed vilbert training step goes: (label, module names of VilbertHead; a ModuleList counts
# each of its layers)
VILBERT_PARTS = (("text input projection (t_proj)", ("t_proj",)),
                 ("image embedding (img_proj + v_embeddings)", ("img_proj", "v_embeddings")),
                 ("text layers (encoder.layer)", ("encoder.layer",)),
                 ("visual layers (encoder.v_layer)", ("encoder.v_layer",)),
                 ("co-attention layers (encoder.c_layer)", ("encoder.c_layer",)),
                 ("poolers + classifier", ("t_pooler", "v_pooler", "transform", "outputs")))


def _capture_calls(model: nn.Module, batch: Dict[str, Tensor]) -> List[tuple]:
    """One forward of ``model`` on ``batch``; returns ``(part label, module, args, kwargs)`` of every call to
    a module named in ``VILBERT_PARTS`` (inputs detached, ``requires_grad`` as in the real graph)."""
    calls, handles = [], []
    for label, names in VILBERT_PARTS:
        for name in names:
            mod = model.get_submodule(name)
            for m in (list(mod) if isinstance(mod, nn.ModuleList) else [mod]):
                def hook(m, args, kwargs, label=label):
                    keep = lambda a: a.detach().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a  # noqa: E731
                    calls.append((label, m, [keep(a) for a in args], {k: keep(v) for k, v in kwargs.items()}))
                handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        model(batch)
    finally:
        for h in handles:
            h.remove()
    return calls


def _outputs(x) -> List[Tensor]:
    if isinstance(x, Tensor):
        return [x] if x.requires_grad else []
    items = x.values() if isinstance(x, dict) else x
    return [t for v in items for t in _outputs(v)]


def vilbert_breakdown(head_cfg: Dict[str, object], data: TrainData, device: torch.device) -> List[tuple]:
    """``[(part, s/epoch)]`` of one epoch of trimmed (packed: the default) vilbert training steps: the whole step
    (gather + forward + backward + clipping + AdamW), the gather, the optimiser, and each part of the head
    re-run alone (forward + backward) on the inputs it received in that step; ``other`` is what the parts
    do not account for (loss, fusion, masks, autograd bookkeeping)."""
    from heads.models import create_head

    torch.manual_seed(0)
    model = create_head("vilbert", data.input_spec(), data.task_spec, **copy.deepcopy(head_cfg)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    spent: Dict[str, float] = {"whole step": 0.0, "gather + trim (TrainData.batch)": 0.0,
                               "grad clipping + AdamW step": 0.0}
    spent.update({label: 0.0 for label, _ in VILBERT_PARTS})
    for idx, trim, _, _ in step_plans(data)["trimmed + packed"]:
        with Stopwatch(device) as whole:
            with Stopwatch(device) as gather:
                batch = data.batch(idx, trim=trim)
            model(batch)["logits"]["label"].float().sum().backward()
            with Stopwatch(device) as step:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
        spent["whole step"] += whole.seconds
        spent["gather + trim (TrainData.batch)"] += gather.seconds
        spent["grad clipping + AdamW step"] += step.seconds
        for label, mod, args, kwargs in _capture_calls(model, batch):
            with Stopwatch(device) as sw:
                outs = _outputs(mod(*args, **kwargs))
                if outs:
                    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            spent[label] += sw.seconds
        model.zero_grad(set_to_none=True)
    parts = [(k, v) for k, v in spent.items() if k != "whole step"]
    return [("whole step", spent["whole step"])] + parts + [("other", spent["whole step"] - sum(v for _, v in parts))]


def _lengths_line(data: TrainData) -> str:
    lengths = data.sequence_lengths()
    parts = []
    for key, what in (("txt_mask", "tokens"), ("img_mask", "regions")):
        v = lengths[key].float()
        parts.append(f"{what} real {int(v.min())}..{int(v.max())} (mean {v.mean():.1f}, median {v.median():.0f})")
    return "; ".join(parts)


def padding_rows(head: str, regions: str, data: TrainData, epochs: int, device: torch.device, tiny: bool) -> tuple:
    """One head on one region set: (table rows, one per variant, the best speed-up of train()'s epochs, prob diff
    within 1e-4). ``tiny``: ``TINY_HEAD_CFG``, else the head's default config (MMF's sizes for vilbert)."""
    cfg = TINY_HEAD_CFG[head] if tiny else {}
    r = bench_padding_head(head, cfg, data, epochs, device)
    steps = interleaved_epoch_s(head, cfg, data, device)
    config = TINY_DESCRIBE[head] if tiny else FULL_DESCRIBE[head]
    rows = []
    for label in steps:
        epoch = r.get(label)
        rows.append([head, regions, config, label, fmt(epoch), f"{r['untrimmed'] / epoch:.2f}x" if epoch else "-",
                     fmt(steps[label]), f"{steps['untrimmed'] / steps[label]:.2f}x"])
    best = max(r["untrimmed"] / r[label] for label, _, _ in variants(head))
    return rows, best, r["prob_diff"]


def padding_main(args, device: torch.device) -> int:
    """``--padding``: vilbert and visualbert trained on tokens stored at 128 with short real captions, on each
    region set, untrimmed against trimmed (packed, length-bucketed), in one run; then where the time of a
    trimmed vilbert step goes."""
    cuda = device.type == "cuda"
    preset = "quick" if args.quick else ("full" if cuda else "cpu")
    tiny = (args.head_size or ("default" if cuda else "tiny")) == "tiny"
    n_train, n_val = PADDING_SIZES[preset]
    if args.n_train:
        n_train, n_val = args.n_train, max(8, round(args.n_train / 17))
    epochs = args.epochs or (GOAL_EPOCHS if preset == "full" else 3)
    heads = [h for h in name_list("--heads", args.heads, HEADS, "head") if h in PADDING_HEADS] or list(PADDING_HEADS)
    region_sets = name_list("--regions", args.regions, tuple(REGION_SETS), "region set")
    for line in header_lines("heads speed: padding (trimmed batches vs untrimmed)", device):
        print(line)
    print(f"data   : {n_train} train + {n_val} val; tokens stored at 128 x 768; batch {TrainConfig.batch_size}; "
          f"threads {torch.get_num_threads()}; {epochs} epochs each")
    rows, goals, diffs, sets = [], [], {}, {}
    for regions in region_sets:
        sets[regions] = padded_data(n_train, n_val, 128, 768, regions, 2048, device)
        print(f"regions {regions!r}: {REGION_SETS[regions][2]}; {_lengths_line(sets[regions])}")
    print()
    for regions, data in sets.items():
        for h in heads:
            head_rows, best, diffs[(h, regions)] = padding_rows(h, regions, data, epochs, device, tiny)
            rows += head_rows
            if h == "vilbert":
                goals.append(f"  regions {regions!r}: best {best:.2f}x: "
                             f"{goal_status(best, PADDING_GOAL, True, not cuda, 'CPU goal')}")
            print(f"  done {h} on regions {regions!r}", flush=True)
    print()
    print("s/epoch: train()'s epoch (train + val pass, median after the first), variants one after another; "
          "steps: one epoch of forward + backward, the variants interleaved batch by batch (the same load for all); "
          "'no-padding bound': every batch at the mean real lengths, nothing padded; 'packed': vilbert's and "
          "visualbert's per-position work on real positions only (their CPU default); untrimmed and trimmed run dense")
    print(format_table(["head", "regions", "config", "variant", "s/epoch", "speed-up", "steps s", "speed-up (steps)"],
                       rows))
    print()
    print(f"vilbert goal >= {PADDING_GOAL:g}x per epoch vs untrimmed (CPU), train() epochs:")
    print("\n".join(goals) if goals else "  vilbert not run")
    print("prob diff, trimmed model with trimming (and packing) on vs untrimmed dense (eval): "
          + ", ".join(f"{h} {r!r} {d:.1e}" for (h, r), d in diffs.items()))
    if "vilbert" in heads:
        for regions, data in sets.items():
            parts = vilbert_breakdown(TINY_HEAD_CFG["vilbert"] if tiny else {}, data, device)
            whole = parts[0][1]
            print()
            print(f"where a trimmed + packed vilbert training epoch goes (regions {regions!r}; parts re-run alone, "
                  "forward + backward):")
            print(format_table(["part", "s/epoch", "share"], [[k, fmt(v), f"{100 * v / whole:.0f}%"] for k, v in parts]))
    if any(d > 1e-4 for d in diffs.values()):
        print("error: the trimmed forward changed predictions beyond 1e-4; see 'prob diff'")
        return 1
    return 0


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]]):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_device()
    p.add_argument("--quick", action="store_true", help="tiny sizes (< 2 minutes on 2 CPU cores)")
    p.add_argument("--heads", default=",".join(HEADS), help=f"comma-separated, from {', '.join(HEADS)}")
    p.add_argument("--n-train", type=positive_int("--n-train"), default=None,
                   help="train samples (val = n_train / 17, at least 8); default by preset")
    p.add_argument("--epochs", type=positive_int("--epochs"), default=None,
                   help=f"epochs of the timed cached run (default {GOAL_EPOCHS} full, 3 on CPU / --quick)")
    p.add_argument("--baseline-epochs", type=positive_int("--baseline-epochs"), default=None,
                   help="epochs of the re-extracting baseline (and of the loss check); default by preset")
    p.add_argument("--regions", default=",".join(REGION_SETS),
                   help=f"--padding: region sets, comma-separated, from {', '.join(REGION_SETS)} (36: all real; vg: "
                   "10-100 real of 100 stored)")
    p.add_argument("--padding", action="store_true",
                   help="instead: vilbert/visualbert on tokens stored at 128 with 8-30-token captions, trimmed "
                   "batches vs untrimmed (--n-train, --epochs, --quick apply)")
    p.add_argument("--head-size", choices=("tiny", "default"), default=None,
                   help="--padding: 'default' trains the heads' default configs (vilbert: MMF's 6 text + 6 visual + "
                   "6 co-attention layers; minutes per epoch on a CPU, use a small --n-train), 'tiny' the 2-layer "
                   "width-128 ones; default: tiny on CPU, default on CUDA")
    return p.parse_args(argv)


def choose_sizes(args, device: torch.device) -> Sizes:
    sizes = PRESETS["quick" if args.quick else ("full" if device.type == "cuda" else "cpu")]
    if args.n_train:
        sizes = replace(sizes, n_train=args.n_train, n_val=max(8, round(args.n_train / 17)))
    if args.epochs:
        sizes = replace(sizes, epochs=args.epochs)
    if args.baseline_epochs:
        sizes = replace(sizes, baseline_epochs=args.baseline_epochs)
    return sizes


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.padding:
        return padding_main(args, device)
    heads = name_list("--heads", args.heads, HEADS, "head")
    sizes = choose_sizes(args, device)
    cuda = device.type == "cuda"
    full = sizes.n_train == FULL_TRAIN and sizes.label.startswith("full")
    scale = (FULL_TRAIN + FULL_VAL) / sizes.n

    for line in header_lines("heads speed (cached features vs re-extracting every epoch)", device):
        print(line)
    backbones = Backbones(sizes).to(device)
    raw = make_raw(sizes, backbones.vocab, device)
    with Stopwatch(device) as sw_ext:
        data = cached_data(backbones, raw, sizes)
    baseline = reextracted_data(backbones, raw, sizes, data)
    spec = data.input_spec()
    print(f"sizes  : {sizes.label}: {sizes.n_train} train + {sizes.n_val} val samples; regions {spec.img_regions} x "
          f"{spec.img_dim}, tokens {spec.txt_tokens} x {spec.txt_dim}; batch {TrainConfig.batch_size}; "
          f"amp {'bf16' if cuda else 'none (float32)'}")
    print(f"baseline backbones: timm {sizes.cnn} ({sizes.image_px} px, random init) + BERT {sizes.bert_layers} layers "
          f"x {sizes.bert_hidden} (random init); one extraction of all {sizes.n} rows took {sw_ext.seconds:.2f} s")
    print(f"epochs : cached {sizes.epochs} timed (after a {sizes.baseline_epochs}-epoch check run), baseline "
          f"{sizes.baseline_epochs}; s/epoch = median of train()'s per-epoch times (train + val pass)")
    print()

    results: List[HeadResult] = []
    for h in heads:
        tiny = sizes.tiny_transformers and h in TINY_HEAD_CFG
        cfg = TINY_HEAD_CFG[h] if tiny else FIXED_HEAD_CFG.get(h, {})
        describe = TINY_DESCRIBE[h] if tiny else FULL_DESCRIBE.get(h, FIXED_DESCRIBE.get(h, "default"))
        results.append(bench_head(h, cfg, describe, data, baseline, sizes, device))
        r = results[-1]
        print(f"  done {h}: cached epochs {', '.join(f'{t:.3g}' for t in r.cached_times)} s; baseline epochs "
              f"{', '.join(f'{t:.3g}' for t in r.baseline_times)} s", flush=True)

    # bf16 features differ with the batch composition; float32 ones only by summation order
    tol = 2e-2 if cuda else 1e-3
    at = "measured" if full else f"extrapolated x{scale:.1f}"
    def ok(r: HeadResult) -> bool:
        return r.loss_diff <= tol and r.prob_diff <= tol

    rows = []
    for r in results:
        rows.append([r.head, r.describe, fmt(r.cached_epoch_s), fmt(r.baseline_epoch_s),
                     f"{r.baseline_epoch_s / r.cached_epoch_s:.1f}x",
                     fmt(r.cached_epoch_s * (1 if full else scale)), fmt(r.baseline_epoch_s * (1 if full else scale)),
                     f"{r.timed_total_s:.2f} ({r.epochs} ep)",
                     f"{r.loss_diff:.1e} / {r.prob_diff:.1e}" + ("" if ok(r) else " MISMATCH")])
    print()
    print(format_table(["head", "config", "cached s/epoch", "baseline s/epoch", "baseline/cached",
                        f"cached s/epoch @8,500 ({at})", f"baseline s/epoch @8,500 ({at})",
                        "cached train() total s", "check (loss rel / prob abs)"], rows))
    if not full:
        print(f"(@8,500: per-epoch time x {scale:.2f} = {FULL_TRAIN}+{FULL_VAL} / {sizes.n_train}+{sizes.n_val} "
              f"samples, at THESE shapes and configs; not a measurement of the full sizes)")
    print()
    print(f"GPU goals (one GPU, full sizes, {GOAL_EPOCHS} epochs of train(); reference):")
    by_head = {r.head: r for r in results}
    for h, goal in GPU_GOALS.items():
        r = by_head.get(h)
        if r is None:
            print(f"  {h}: {GOAL_EPOCHS} epochs < {goal:g} s; not run (not in --heads)")
            continue
        applies = cuda and full and r.epochs == GOAL_EPOCHS
        status = goal_status(r.timed_total_s, goal, False, applies, f"needs CUDA, full sizes and {GOAL_EPOCHS} epochs")
        got = (f"measured {r.timed_total_s:.2f} s" if applies
               else f"this run: {r.timed_total_s:.2f} s for {r.epochs} epochs")
        print(f"  {h}: {GOAL_EPOCHS} epochs < {goal:g} s; {got}: {status}")
    if not all(ok(r) for r in results):
        print(f"error: cached and re-extracting training disagree beyond {tol:g}; see the 'check' column")
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
