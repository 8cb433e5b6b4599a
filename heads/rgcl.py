"""RGCL: retrieval-guided contrastive learning (Mei et al., ACL 2024; JingbiaoMei/RGCL ``src/model/loss.py``,
``src/utils/retrieval.py``, ``src/run_rac.py``, read, not copied) as a training objective for any head whose
``forward`` gives ``fused`` (or ``embed``), and retrieval inference (``predict="knn"``).

Embedding. ``e = out["embed"]`` when the head gives one (``cross``: the last pre-output Linear before its
ReLU, RGCL's ``mlp[:-2]``), else ``out["fused"]``. ``cos(a, b) = a.b / (|a| |b|)`` (0 for a zero vector).

Bank and refresh. The labelled train rows are re-encoded with the current head in eval mode, without
gradients, into a bank ``E [N, H]``: once per epoch before its first step (``refresh=0``, the reference's
``train_feats = None`` per epoch), or every ``refresh`` steps. Bank rows are constants in the loss, except with
``bank_grad=True`` (the ``rgcl`` preset): the reference's GPU path encodes its bank outside ``no_grad`` and
detaches it only after the step that encoded it, so on that step (the first of each epoch) gradients also
flow through the retrieved positive and negative rows into the head, as here.

Retrieval. Each training sample's embedding (train mode, detached) searches the bank for its ``depth =
(k_pos, or k_neg when k_pos = 0) * search_multiple`` most cosine-similar rows (the reference's
``largest_retrieval * hard_negatives_multiple``, 1 x 12 in the published run), exactly:
``featstore.search.build_index(kind="flat")`` (faiss on the CPU) or a torch ``matmul`` + ``topk`` (``backend="torch"``, on the data's device; ``"auto"`` picks torch on a GPU
so no faiss-gpu install is needed). Walking that list best first, the first ``k_pos`` rows with the
sample's label are its pseudo-gold positives ``P_i`` and the first ``k_neg`` with another label its hard
negatives ``H_i``; fewer found leave empty slots. All-zero bank rows are never retrieved; a zero query
retrieves nothing. The sample itself is in the bank (as in the reference) unless ``exclude_self``.

Loss (the reference's ``--loss triplet --metric cos --hybrid_loss True`` run). For a batch ``B`` with
labels ``y`` and ``N_i = {j in B : y_j != y_i}``::

    l_i   = relu( mean_{j in N_i} cos(e_i, e_j)  [0 if N_i is empty; in_batch=False drops it]
                  + sum_{n in H_i} cos(e_i, E_n)
                  - (1 / k_pos) sum_{p in P_i} cos(e_i, E_p)      [an empty slot adds 0]
                  + margin )
    L_rgcl = mean_i l_i
    loss   = (1 - ce_weight) * L_rgcl + ce_weight * L_task      (L_task: the usual task loss)

Defaults are the published run (``scripts/experiments.sh``): ``k_pos = k_neg = 1``, ``search_multiple = 12``,
``margin = 0.1``, ``ce_weight = 0.5``, refresh once per epoch, inference ``knn_k = 20`` with the
``arithmetic`` vote. ``RGCL_SETTINGS`` holds the head and train settings of that run.

Retrieval inference: the ``knn_k`` nearest train rows ``j = 1..k`` (best first, similarities ``s_j``) vote
``v = sum_j w_j (2 y_j - 1) s_j / sum_j w_j`` with ``w_j = k - j + 1`` (``arithmetic``) or ``w_j = 1`` (``mean``);
the positive-class probability is ``(v + 1) / 2`` (binary tasks; the reference's ``use_sim`` vote). A query
never votes for itself. New labelled rows join the vote by being in the train split: no retraining.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from featstore.config_types import build_dataclass
from featstore.errors import FeatstoreError

BACKENDS = ("auto", "faiss", "torch")
VOTES = ("arithmetic", "mean")

# The published RGCL run (JingbiaoMei/RGCL scripts/experiments.sh, Hateful Memes, CLIP ViT-L/14-336 features)
RGCL_SETTINGS = {
    "source": "Mei et al. 2024 (ACL), JingbiaoMei/RGCL scripts/experiments.sh: --batch_size 64 --lr 0.0001 "
              "--epochs 30 --topk 20 --proj_dim 1024 --map_dim 1024 --dropout 0.2 0.4 0.1 --fusion_mode align "
              "--no_hard_negatives 1 --no_pseudo_gold_positives 1 --metric cos --loss triplet --hybrid_loss True; "
              "run_rac.py defaults num_layers 3, grad_clip 0.1, triplet_margin 0.1, ce_weight 0.5, "
              "hard_negatives_multiple 12, no lr scheduler; torch.optim.AdamW(model.parameters(), lr=args.lr), so "
              "torch's weight_decay 0.01 (--weight_decay is never passed); the best classifier dev accuracy's "
              "epoch kept (--hybrid_loss)",
    "head": "cross",
    "head_cfg": {"fusion": "align", "proj_dim": 1024, "pre_output_layers": 3, "proj_dropout": 0.2,
                 "fusion_dropout": 0.4, "dropout": 0.1, "embed_pass": "own"},
    "train": {"lr": 1e-4, "weight_decay": 0.01, "grad_clip": 0.1, "batch_size": 64, "epochs": 30,
              "warmup_ratio": 0.0, "schedule": "constant", "patience": 0, "rgcl": {"bank_grad": True},
              "predict": "classifier",
              "monitor": "accuracy", "select_on": "classifier"},
}


@dataclass
class RGCLConfig:
    k_pos: int = 1  # pseudo-gold positives per sample (no_pseudo_gold_positives)
    k_neg: int = 1  # hard negatives per sample (no_hard_negatives)
    search_multiple: int = 12  # neighbours searched = (k_pos or k_neg) * this (hard_negatives_multiple)
    margin: float = 0.1  # triplet margin
    ce_weight: float = 0.5  # loss = (1 - ce_weight) * L_rgcl + ce_weight * L_task
    in_batch: bool = True  # the in-batch negatives term
    refresh: int = 0  # re-encode the bank every this many steps; 0 = once per epoch (the reference)
    exclude_self: bool = False  # drop the sample's own bank row from its neighbours (the reference keeps it)
    backend: str = "auto"  # auto | faiss (featstore.search flat index) | torch (matmul + topk)
    knn_k: int = 20  # neighbours voting in predict="knn" (topk)
    vote: str = "arithmetic"  # arithmetic (w_j = k - j + 1) | mean
    bank_grad: bool = False  # the refresh step's loss also back-propagates through the bank rows (the reference)

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "RGCLConfig":
        cfg = build_dataclass(cls, d, "rgcl", hint_flag="--rgcl-set")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("k_pos", "k_neg", "search_multiple", "knn_k"):
            if getattr(self, name) < (0 if name in ("k_pos", "k_neg") else 1):
                raise FeatstoreError(f"rgcl {name}={getattr(self, name)} is out of range; use e.g. {name}=1")
        if self.k_pos + self.k_neg == 0:
            raise FeatstoreError("rgcl k_pos=0 and k_neg=0 retrieve nothing; use e.g. k_pos=1, k_neg=1")
        if not 0.0 <= self.ce_weight <= 1.0 or self.refresh < 0:
            raise FeatstoreError(f"rgcl ce_weight={self.ce_weight} must be in [0, 1] and refresh={self.refresh} "
                                 ">= 0; use e.g. ce_weight=0.5, refresh=0")
        if self.backend not in BACKENDS or self.vote not in VOTES:
            raise FeatstoreError(f"rgcl backend={self.backend!r} / vote={self.vote!r} unknown; use backend one of "
                                 f"{', '.join(BACKENDS)} and vote one of {', '.join(VOTES)}")

    @property
    def depth(self) -> int:
        return (self.k_pos or self.k_neg) * self.search_multiple


# --------------------------------------------------------------------------------------------- retrieval


def embedding(out: Dict[str, Tensor]) -> Tensor:
    """The vector RGCL retrieves with: ``out["embed"]`` when the head gives one, else ``out["fused"]``."""
    e = out.get("embed")
    return out["fused"] if e is None else e


class BankIndex:
    """An exact cosine index over ``bank [N, H]``, built once per bank: faiss ``IndexFlatIP`` through
    ``featstore.search.build_index`` or the L2-normalised matrix for torch ``matmul`` + ``topk``. All-zero
    bank rows are left out (never retrieved)."""

    def __init__(self, bank: Tensor, backend: str = "auto"):
        self.n = bank.shape[0]
        self.backend = ("torch" if bank.is_cuda else "faiss") if backend == "auto" else backend
        self.cols = torch.nonzero(bank.norm(dim=1) > 0).squeeze(1)
        self.index = None
        if self.cols.numel() and self.backend == "faiss":
            from featstore.search import build_index

            self.index = build_index(bank[self.cols].float().cpu().numpy(), metric="cosine", kind="flat", use_gpu=False)
        elif self.cols.numel():
            self.index = F.normalize(bank[self.cols].float(), dim=1)

    def search(self, queries: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        """(sims, idx) ``[Q, min(k, N)]`` on the queries' device, best first; idx -1 (sim -inf) where nothing
        is found (a zero query, or fewer non-zero bank rows than k)."""
        k = min(int(k), self.n)
        sims = torch.full((queries.shape[0], k), -float("inf"), device=queries.device)
        idx = torch.full((queries.shape[0], k), -1, dtype=torch.long, device=queries.device)
        rows = torch.nonzero(queries.norm(dim=1) > 0).squeeze(1)
        if rows.numel() == 0 or self.index is None:
            return sims, idx
        kk = min(k, self.cols.numel())
        if self.backend == "faiss":
            s, i = self.index.search(queries[rows].float().cpu().numpy(), kk)
            s, i = torch.from_numpy(s).to(queries.device), torch.from_numpy(i).to(queries.device)
        else:
            s = F.normalize(queries[rows].float(), dim=1) @ self.index.to(queries.device).T
            s, i = s.topk(kk, dim=1)
        sims[rows, :kk], idx[rows, :kk] = s, self.cols.to(queries.device)[i]
        return sims, idx


def nearest(bank: Tensor, queries: Tensor, k: int, backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """Exact cosine top-``k`` of ``queries [Q, H]`` in ``bank [N, H]`` (``BankIndex(bank).search``)."""
    return BankIndex(bank, backend).search(queries, k)


def _first_matches(idx: Tensor, mask: Tensor, k: int) -> Tensor:
    """Per row, the first ``k`` entries of ``idx [Q, D]`` where ``mask`` holds, in order; -1 pads ``[Q, k]``."""
    out = torch.full((idx.shape[0], k + 1), -1, dtype=torch.long, device=idx.device)
    slot = torch.where(mask, mask.long().cumsum(1) - 1, torch.full_like(idx, k)).clamp(max=k)
    out.scatter_(1, slot, torch.where(mask, idx, torch.full_like(idx, -1)))
    return out[:, :k]


def positives_negatives(bank, bank_labels: Tensor, queries: Tensor, labels: Tensor, cfg: RGCLConfig,
                        self_rows: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """(pseudo-gold positives ``[Q, k_pos]``, hard negatives ``[Q, k_neg]``): bank rows, -1 = none found.

    ``bank``: the ``[N, H]`` embeddings or their ``BankIndex``. ``self_rows [Q]``: each query's own bank row
    (-1: not in the bank), skipped when ``cfg.exclude_self``."""
    depth = cfg.depth + (1 if cfg.exclude_self else 0)
    index = bank if isinstance(bank, BankIndex) else BankIndex(bank, cfg.backend)
    _, idx = index.search(queries, depth)
    found = idx >= 0
    if cfg.exclude_self and self_rows is not None:
        found &= idx != self_rows[:, None]
    lab = bank_labels[idx.clamp(min=0)]
    same = lab == labels[:, None]
    return _first_matches(idx, found & same, cfg.k_pos), _first_matches(idx, found & ~same, cfg.k_neg)


# ------------------------------------------------------------------------------------------------- loss


def _cos_to_rows(e: Tensor, bank: Tensor, rows: Tensor) -> Tensor:
    """cos(e_i, bank[rows[i, s]]) ``[Q, S]``; 0 where ``rows`` is -1."""
    got = F.normalize(bank[rows.clamp(min=0)].to(e.dtype), dim=-1)
    c = (F.normalize(e, dim=-1).unsqueeze(1) * got).sum(-1)
    return torch.where(rows >= 0, c, torch.zeros_like(c))


def rgcl_loss(e: Tensor, labels: Tensor, bank: Tensor, pos: Tensor, neg: Tensor, cfg: RGCLConfig) -> Tensor:
    """``L_rgcl`` of the module docstring for batch embeddings ``e [B, H]`` (with gradients), labels ``[B]``,
    the bank ``[N, H]`` and the retrieved rows ``pos [B, k_pos]`` / ``neg [B, k_neg]``."""
    term = torch.full((e.shape[0],), float(cfg.margin), dtype=e.dtype, device=e.device)
    if cfg.in_batch:
        en = F.normalize(e, dim=-1)
        other = (labels[:, None] != labels[None, :]).to(e.dtype)
        count = other.sum(1)
        term = term + ((en @ en.T) * other).sum(1) / count.clamp(min=1)
    if cfg.k_neg:
        term = term + _cos_to_rows(e, bank, neg).sum(1)
    if cfg.k_pos:
        term = term - _cos_to_rows(e, bank, pos).sum(1) / cfg.k_pos
    return torch.relu(term).mean()


# -------------------------------------------------------------------------------------------- objective


def encode(model, data, idx: Tensor, batch_size: int = 512, trim: bool = True, grad: bool = False) -> Tensor:
    """Eval-mode embeddings (``embedding``) of rows ``idx`` -> float32 ``[len(idx), H]``; the mode is restored.
    ``grad``: keep the graph (``bank_grad``), else without gradients."""
    was = model.training
    model.eval()
    with torch.set_grad_enabled(grad):
        out = [embedding(model(data.batch(idx[s:s + batch_size], trim=trim))).float()
               for s in range(0, idx.shape[0], batch_size)]
    model.train(was)
    return torch.cat(out)


def single_label_task(spec):
    """The one binary/multiclass task RGCL works on; a one-line error otherwise."""
    if len(spec.tasks) != 1 or spec.tasks[0].kind == "multilabel":
        raise FeatstoreError("rgcl / predict=knn need one binary or multiclass task; pass --task with one such label")
    return spec.tasks[0]


class RGCLObjective:
    """The training loop's RGCL term: ``start_epoch()`` before each epoch, ``loss(...)`` at each step."""

    def __init__(self, cfg: RGCLConfig, data, train_idx: Tensor, eval_batch_size: int = 512, trim: bool = True):
        self.cfg, self.data, self.train_idx = cfg, data, train_idx
        self.task = single_label_task(data.task_spec)
        self.bank_labels = data.targets[self.task.name].index_select(0, train_idx)
        self.row_of = torch.full((len(data),), -1, dtype=torch.long, device=train_idx.device)
        self.row_of[train_idx] = torch.arange(train_idx.numel(), device=train_idx.device)
        self.batch_size, self.trim = eval_batch_size, trim
        self.bank: Optional[Tensor] = None
        self.index: Optional[BankIndex] = None
        self.steps = 0

    def start_epoch(self) -> None:
        if self.cfg.refresh == 0:
            self.bank = None

    def loss(self, model, out: Dict[str, Tensor], rows: Tensor, task_loss: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """(combined loss, {"rgcl": L_rgcl}) for the batch of data rows ``rows``."""
        bank = self.bank
        if bank is None or (self.cfg.refresh and self.steps % self.cfg.refresh == 0):
            bank = encode(model, self.data, self.train_idx, self.batch_size, self.trim, grad=self.cfg.bank_grad)
            self.bank = bank.detach()  # later steps: constants
            self.index = BankIndex(self.bank, self.cfg.backend)
        self.steps += 1
        e = embedding(out).float()
        labels = self.data.targets[self.task.name].index_select(0, rows)
        pos, neg = positives_negatives(self.index, self.bank_labels, e.detach(), labels, self.cfg, self.row_of[rows])
        term = rgcl_loss(e, labels, bank, pos, neg, self.cfg)
        w = self.cfg.ce_weight
        return (1.0 - w) * term + w * task_loss, {"rgcl": term}


# -------------------------------------------------------------------------------------- knn inference


def knn_vote(sims: Tensor, labels: Tensor, vote: str = "arithmetic") -> Tensor:
    """Positive-class probability ``(v + 1) / 2`` from neighbour similarities / 0-1 labels ``[Q, k]`` (best
    first; sim -inf = no neighbour); the module docstring's vote. A query with no neighbour gets 0.5."""
    k = sims.shape[1]
    ok = torch.isfinite(sims)
    if vote == "arithmetic":
        w = torch.arange(k, 0, -1, device=sims.device, dtype=torch.float32)
    else:
        w = torch.ones(k, device=sims.device)
    w = w[None, :] * ok
    signed = torch.where(ok, (2.0 * labels.float() - 1.0) * sims, torch.zeros_like(sims))
    v = (w * signed).sum(1) / w.sum(1).clamp(min=1e-12)
    return (v + 1.0) / 2.0


def knn_probs(model, data, train_idx: Tensor, idx: Tensor, cfg: RGCLConfig, batch_size: int = 512,
              trim: bool = True) -> np.ndarray:
    """``[len(idx), 2]`` probabilities of rows ``idx`` by a vote of their ``cfg.knn_k`` nearest labelled train
    rows in the head's embedding space (a row never votes for itself)."""
    task = single_label_task(data.task_spec)
    if task.kind != "binary":
        raise FeatstoreError(f"predict=knn votes on a binary task; task {task.name!r} is {task.kind} - "
                             "use predict=classifier")
    bank = encode(model, data, train_idx, batch_size, trim)
    queries = encode(model, data, idx, batch_size, trim)
    sims, rows = nearest(bank, queries, cfg.knn_k + 1, cfg.backend)
    own = (rows >= 0) & (train_idx[rows.clamp(min=0)] == idx[:, None])
    sims = torch.where(own, torch.full_like(sims, -float("inf")), sims)
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :cfg.knn_k]  # own row last, dropped
    sims, rows = sims.gather(1, order), rows.gather(1, order)
    labels = data.targets[task.name].index_select(0, train_idx)[rows.clamp(min=0)]
    p1 = knn_vote(sims, labels, cfg.vote)
    return torch.stack([1.0 - p1, p1], dim=1).cpu().numpy()
