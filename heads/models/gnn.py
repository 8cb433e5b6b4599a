"""``gnn``: a graph per sample over cached nodes, message passing with torch_geometric, pooled to fused.

Nodes of one sample (slot order, ``N = R + T + 2`` slots): region nodes ``0..R-1``, token nodes
``R..R+T-1``, the global image node ``R+T`` (``img_pooled`` or the mean of regions) and the global text node
``R+T+1`` (``txt_pooled`` or the mean of tokens). Every node group has its own ``Linear`` to ``hidden``.

Edges (directed pairs ``src -> dst``; every relation below is added in both directions):
* regions: ``region_edges="full"``: every pair of distinct regions; ``"knn"``: each region receives an
  edge from its ``knn_k`` nearest other regions (Euclidean distance of the input region features; this one
  is directed ``neighbour -> region``);
* tokens: sequential neighbours (slot ``i <-> i+1``);
* cross-modal: global image <-> every token, global text <-> every region, and with ``cross_all`` every
  region <-> every token;
* ``global_own``: global image <-> every region and global text <-> every token;
  ``global_link``: global image <-> global text;
* ``self_loops``: ``i -> i`` for every node (the convolutions add none of their own); by default (None)
  for ``gcn`` and ``gat`` but not ``sage``: GraphSAGE's mean runs over the neighbours only, the node itself
  entering through SAGEConv's root term (``lin_l(mean_{j in N(i)} x_j) + lin_r(x_i)``), so a self loop would
  count it twice. ``True`` / ``False`` force them (a sage run saved before this default records ``True``).
Padded regions/tokens (mask False) are dropped with all their edges; node ids are then renumbered.

The batch graph is built with tensor ops only: the fixed part is a template per ``(R, T)`` (cached),
offset by ``b * N`` for each sample; kNN edges come from one batched ``topk``.

Readout: fused = ``[global_mean_pool(nodes); global image node; global text node]`` -> ``[B, 3*hidden]``.
"""
from __future__ import annotations

import functools
import warnings

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featstore.errors import FeatstoreError
from featstore.extras import require

from ..outputs import PredictionLayers
from .base import Head, image_mask, pooled_image, pooled_text, register_head, text_mask

LAYERS = ("gcn", "sage", "gat")


@functools.lru_cache(maxsize=None)
def pyg_nn():
    """``torch_geometric.nn``, imported on first use: PyG takes seconds to import, and only this head needs
    it (``heads --help``, ``heads list`` and every other head never load it)."""
    with warnings.catch_warnings():  # PyG calls torch.jit.script at import; torch 2.14 warns on every run
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        pyg = require("torch_geometric.nn", "gnn", "the gnn head")

    return pyg


@dataclass
class GnnConfig:
    layer: str = "gcn"  # gcn (GCNConv), sage (SAGEConv) or gat (GATConv)
    num_layers: int = 2
    hidden: int = 256
    gat_heads: int = 4  # GATConv heads (hidden must be a multiple)
    dropout: float = 0.1
    residual: bool = True
    region_edges: str = "full"  # full or knn
    knn_k: int = 5
    cross_all: bool = False  # every region <-> every token
    global_own: bool = True  # global image <-> regions, global text <-> tokens
    global_link: bool = True  # global image <-> global text
    self_loops: Optional[bool] = None  # None: i -> i for gcn / gat, none for sage (GraphSAGE's mean)
    out_hidden: int = 0
    out_dropout: float = 0.0

    def validate(self) -> None:
        if self.layer not in LAYERS:
            raise FeatstoreError(f"gnn layer={self.layer!r} is not known; use one of: {', '.join(LAYERS)}")
        if self.region_edges not in ("full", "knn"):
            raise FeatstoreError(f"gnn region_edges={self.region_edges!r} is not known; use full or knn")
        if self.num_layers < 1 or self.hidden < 1 or self.knn_k < 1:
            raise FeatstoreError("gnn num_layers, hidden and knn_k must be at least 1")
        if self.layer == "gat" and self.hidden % self.gat_heads:
            raise FeatstoreError(f"gnn hidden={self.hidden} is not a multiple of gat_heads={self.gat_heads}; "
                                 "change one of them")


def _both(a: Tensor, b: Tensor) -> Tensor:
    """All pairs ``a[i] -> b[j]`` and ``b[j] -> a[i]`` as ``[2, 2 * len(a) * len(b)]``."""
    s, d = torch.meshgrid(a, b, indexing="ij")
    s, d = s.reshape(-1), d.reshape(-1)
    return torch.stack([torch.cat([s, d]), torch.cat([d, s])])


def graph_template(R: int, T: int, cfg: GnnConfig, device=None) -> Tensor:
    """The fixed (feature-independent) edges of one sample with R region and T token slots: ``[2, M]``."""
    reg = torch.arange(R, device=device)
    tok = torch.arange(R, R + T, device=device)
    gi = torch.tensor([R + T], device=device)
    gt = torch.tensor([R + T + 1], device=device)
    parts = []
    if cfg.region_edges == "full" and R > 1:
        s, d = torch.meshgrid(reg, reg, indexing="ij")
        off = s != d
        parts.append(torch.stack([s[off], d[off]]))
    if T > 1:
        parts.append(torch.stack([torch.cat([tok[:-1], tok[1:]]), torch.cat([tok[1:], tok[:-1]])]))
    parts += [_both(gi, tok), _both(gt, reg)]
    if cfg.cross_all:
        parts.append(_both(reg, tok))
    if cfg.global_own:
        parts += [_both(gi, reg), _both(gt, tok)]
    if cfg.global_link:
        parts.append(_both(gi, gt))
    if cfg.self_loops if cfg.self_loops is not None else cfg.layer != "sage":
        n = torch.arange(R + T + 2, device=device)
        parts.append(torch.stack([n, n]))
    return torch.cat(parts, dim=1) if parts else torch.zeros(2, 0, dtype=torch.long, device=device)


def knn_region_edges(regions: Tensor, r_mask: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor]:
    """kNN among the real regions of each sample. ``regions [B, R, D]``, ``r_mask [B, R]``.

    Returns ``(b, src, dst)`` 1-D tensors: in sample ``b``, region slot ``src`` is one of the ``k`` nearest
    real regions (Euclidean, excluding itself) of real region slot ``dst``.
    """
    B, R, _ = regions.shape
    k = min(k, R - 1)
    if k < 1:
        e = regions.new_zeros(0, dtype=torch.long)
        return e, e, e
    dist = torch.cdist(regions.detach().float(), regions.detach().float())  # [B, R, R]
    bad = ~(r_mask[:, :, None] & r_mask[:, None, :]) | torch.eye(R, dtype=torch.bool, device=regions.device)
    dist = dist.masked_fill(bad, float("inf"))
    d, idx = dist.topk(k, dim=-1, largest=False)  # [B, R, k]
    ok = torch.isfinite(d)
    b = torch.arange(B, device=regions.device)[:, None, None].expand(B, R, k)
    dst = torch.arange(R, device=regions.device)[None, :, None].expand(B, R, k)
    return b[ok], idx[ok], dst[ok]


def build_batch_graph(r_mask: Tensor, t_mask: Tensor, cfg: GnnConfig, template: Tensor,
                      regions: Tensor = None) -> Tuple[Tensor, Tensor, Tensor]:
    """One graph for the whole batch. ``r_mask [B, R]``, ``t_mask [B, T]`` bool; ``template [2, M]`` from
    ``graph_template(R, T, cfg)``; ``regions [B, R, D]`` needed for ``region_edges="knn"``.

    Returns ``(edge_index [2, E], batch [V], slots [V])`` over the ``V`` kept nodes: ``slots[v] = b * N + s``
    is the node's sample and slot (``N = R + T + 2``), ``batch[v] = b``.
    """
    B, R = r_mask.shape
    T = t_mask.shape[1]
    N = R + T + 2
    dev = r_mask.device
    valid = torch.cat([r_mask, t_mask, r_mask.new_ones(B, 2)], dim=1).reshape(-1)  # [B*N]
    offs = (torch.arange(B, device=dev) * N)[:, None, None]
    ei = (template.to(dev)[None] + offs).permute(1, 0, 2).reshape(2, -1)  # [2, B*M]
    if cfg.region_edges == "knn":
        b, s, d = knn_region_edges(regions, r_mask, cfg.knn_k)
        ei = torch.cat([ei, torch.stack([b * N + s, b * N + d])], dim=1)
    ei = ei[:, valid[ei[0]] & valid[ei[1]]]
    new_id = torch.cumsum(valid.long(), 0) - 1
    slots = torch.nonzero(valid).squeeze(1)
    return new_id[ei], slots // N, slots


@register_head("gnn", GnnConfig, help="graph over regions, tokens and two global nodes (GCN/SAGE/GAT)")
class GnnHead(Head):
    """fused ``[B, 3 * hidden]``; outputs also ``"graph"``: ``(edge_index, batch, slots)``."""

    needs = frozenset({"img_regions", "txt_tokens"})

    def __init__(self, inputs, task, config: GnnConfig):
        super().__init__(inputs, task, config)
        c, h = config, config.hidden
        self.region_in = nn.Linear(inputs.img_dim, h)
        self.token_in = nn.Linear(inputs.txt_dim, h)
        self.gimg_in = nn.Linear(inputs.img_pooled_width, h)
        self.gtxt_in = nn.Linear(inputs.txt_pooled_width, h)
        pyg = pyg_nn()
        GATConv, GCNConv, SAGEConv = pyg.GATConv, pyg.GCNConv, pyg.SAGEConv
        convs = []
        for _ in range(c.num_layers):
            if c.layer == "gcn":
                convs.append(GCNConv(h, h, add_self_loops=False))
            elif c.layer == "sage":
                convs.append(SAGEConv(h, h))
            else:
                convs.append(GATConv(h, h // c.gat_heads, heads=c.gat_heads, add_self_loops=False))
        self.convs = nn.ModuleList(convs)
        self.fused_dim = 3 * h
        self.outputs = PredictionLayers(task, self.fused_dim, c.out_hidden, c.out_dropout)
        self._templates: Dict[tuple, Tensor] = {}

    def template(self, R: int, T: int, device) -> Tensor:
        key = (R, T, str(device))
        if key not in self._templates:
            self._templates[key] = graph_template(R, T, self.config, device)
        return self._templates[key]

    def forward(self, batch: Dict[str, Tensor]) -> dict:
        regions, tokens = batch["img_regions"], batch["txt_tokens"]
        r_mask, t_mask = image_mask(batch), text_mask(batch)
        B, R, _ = regions.shape
        T = tokens.shape[1]
        N = R + T + 2
        ei, bvec, slots = build_batch_graph(r_mask, t_mask, self.config, self.template(R, T, regions.device), regions)
        x = torch.cat([self.region_in(regions), self.token_in(tokens),
                       self.gimg_in(pooled_image(batch)).unsqueeze(1),
                       self.gtxt_in(pooled_text(batch)).unsqueeze(1)], dim=1)  # [B, N, h]
        x = x.reshape(B * N, -1)[slots]
        for conv in self.convs:
            y = F.dropout(F.relu(conv(x, ei)), self.config.dropout, self.training)
            x = x + y if self.config.residual else y
        pos = torch.full((B * N,), -1, dtype=torch.long, device=x.device)
        pos[slots] = torch.arange(slots.numel(), device=x.device)
        base = torch.arange(B, device=x.device) * N
        gi, gt = x[pos[base + R + T]], x[pos[base + R + T + 1]]
        fused = torch.cat([pyg_nn().global_mean_pool(x, bvec, size=B), gi, gt], dim=-1)
        return {"logits": self.outputs(fused), "fused": fused, "graph": (ei, bvec, slots)}
