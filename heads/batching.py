"""Batches that carry no padding work: each batch cut to its longest real token and region run, and an
order of rows that puts similar lengths together.

Text sets store every caption at one length (e.g. 128 token positions) and region sets at their maximum
region count, while most rows are much shorter. A head that runs over tokens or regions (vilbert,
visualbert, gnn, refnet over them) would spend most of its time on positions its masks then ignore.

* ``row_lengths(mask)``: per row, the index of its last real position + 1 (``[N]`` int64). Masks need not be
  prefixes: a cut at the batch's largest such index drops only positions masked in EVERY row of the batch.
* ``gather_trimmed(features, idx, lengths)``: the batch of rows ``idx``, each sequence group
  (``txt_tokens``/``txt_ids``/``txt_mask``; ``img_regions``/``img_mask``/``img_boxes``) sliced to the batch's longest
  row before the gather, so the cut positions are never even copied. ``trim_batch(batch)`` cuts a batch
  that is already gathered (views, no copy).
* ``length_sorted(idx, key)`` (evaluation: rows sorted by length, every output put back in place with the
  returned inverse) and ``bucketed_batches(order, key, batch_size, window, generator)`` (training: the
  shuffled order sorted by length within windows of ``window`` batches, then the batches shuffled).

Why the outputs do not change: every head masks padded keys out of attention (additive -10000, which
underflows to a weight of exactly 0 in float32, or -inf), pools over real items or over position 0, and
works per position elsewhere, so removing positions masked in every row leaves every output as it was,
up to floating-point summation order (tests/test_trim.py checks each head). Training with dropout draws
its masks over the trimmed shapes, so a trimmed run is not the same random draw as an untrimmed one.
Rows with no real position at all are the exception: attention over all-masked keys is uniform over
whatever padding is there, so such rows keep one position (``min_length``); the store never writes one
(a failed sample is left out, BERT rows hold at least [CLS] and [SEP]).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

# mask key -> the per-item arrays that share its second dimension
SEQUENCES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("txt_mask", ("txt_tokens", "txt_ids")),
    ("img_mask", ("img_regions", "img_boxes")),
)


def row_lengths(mask: Tensor) -> Tensor:
    """``mask [N, L]`` bool (True = real) -> ``[N]`` int64: index of the row's last True + 1 (0 if none)."""
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.to(torch.bool).long() * pos).amax(dim=1) if mask.shape[1] else mask.new_zeros(mask.shape[0], dtype=torch.long)


def sequence_lengths(features: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """``{mask key: row_lengths(mask)}`` for each sequence group present in ``features``."""
    return {m: row_lengths(features[m]) for m, _ in SEQUENCES if m in features}


def _cuts(lengths: Mapping[str, Tensor], idx: Tensor, min_length: int) -> Dict[str, int]:
    """``{feature key: positions to keep}`` for the rows ``idx`` (one host sync per sequence group)."""
    cuts: Dict[str, int] = {}
    for mask_key, keys in SEQUENCES:
        if mask_key in lengths and idx.numel():
            n = max(min_length, int(lengths[mask_key].index_select(0, idx).max()))
            for k in (mask_key,) + keys:
                cuts[k] = n
    return cuts


def gather_trimmed(features: Mapping[str, Tensor], idx: Tensor, lengths: Mapping[str, Tensor],
                   min_length: int = 1) -> Dict[str, Tensor]:
    """Rows ``idx`` of ``features``, every sequence group cut to the longest real run among those rows.

    ``lengths``: ``sequence_lengths(features)`` (computed once per data set)."""
    cuts = _cuts(lengths, idx, min_length)
    return {k: (v[:, :cuts[k]] if k in cuts else v).index_select(0, idx) for k, v in features.items()}


def trim_batch(batch: Mapping[str, Tensor], min_length: int = 1) -> Dict[str, Tensor]:
    """An already gathered batch cut like ``gather_trimmed`` (slices are views; nothing is copied)."""
    lengths = sequence_lengths(batch)
    rows = torch.arange(next(iter(batch.values())).shape[0], device=next(iter(batch.values())).device)
    cuts = _cuts(lengths, rows, min_length)
    return {k: (v[:, :cuts[k]] if k in cuts else v) for k, v in batch.items()}


def length_key(lengths: Mapping[str, Tensor]) -> Optional[Tensor]:
    """One sort key per row: text length first, then region count (``None`` without sequences)."""
    key = None
    for mask_key, _ in SEQUENCES:
        if mask_key in lengths:
            v = lengths[mask_key]
            key = v if key is None else key * (int(v.max()) + 1 if v.numel() else 1) + v
    return key


def length_sorted(idx: Tensor, key: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """``(idx sorted by key[idx] (stable), inverse)``: ``out_sorted[inverse]`` is in ``idx``'s order.
    Without a key: ``(idx, None)``."""
    if key is None or idx.numel() < 2:
        return idx, None
    perm = torch.sort(key.index_select(0, idx), stable=True).indices
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return idx[perm], inverse


def bucketed_batches(order: Tensor, key: Optional[Tensor], batch_size: int, window: int,
                     generator: torch.Generator) -> List[Tensor]:
    """Training batches of ``order`` (already shuffled): with ``window > 0`` and a key, each run of
    ``window * batch_size`` rows is sorted by length (stable) and cut into batches, and the batches are then
    shuffled with ``generator``; otherwise plain consecutive batches of ``order``."""
    if window <= 0 or key is None:
        return [order[s:s + batch_size] for s in range(0, order.numel(), batch_size)]
    batches: List[Tensor] = []
    span = window * batch_size
    for s in range(0, order.numel(), span):
        part, _ = length_sorted(order[s:s + span], key)
        batches += [part[i:i + batch_size] for i in range(0, part.numel(), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]
