"""Fusion heads: shapes, gradients, padding invariance, references recomputed independently, input errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from featstore.errors import FeatstoreError
from heads.models import HEADS, create_head, list_heads
from heads.models.gnn import GnnConfig, build_batch_graph, graph_template
from heads.outputs import PredictionLayers
from heads.spec import InputSpec, Task, TaskSpec

DI, DT, R, T, B = 12, 16, 5, 6, 4

VIL = dict(hidden_size=DT, num_attention_heads=2, intermediate_size=20, num_hidden_layers=4, text_start_layer=2,
           v_hidden_size=12, v_num_attention_heads=2, v_intermediate_size=14, v_num_hidden_layers=2,
           bi_hidden_size=8, bi_num_attention_heads=2, v_biattention_id=[0, 1], t_biattention_id=[2, 3])
TINY = {
    "concat": dict(hidden=[8]),
    "text-only": dict(hidden=[8]),
    "image-only": dict(hidden=[8]),
    "image-region": dict(hidden=[8], num_regions=8),  # the padding test's 5 + 3 regions
    "cross": dict(proj_dim=4, hidden=[8]),
    "vilbert": VIL,
    "singlestream": dict(hidden=8, heads=2, layers=2, ffn=16, max_text_len=32),
    "gnn": dict(hidden=8, num_layers=2),
    "gnn-gat-knn": dict(hidden=8, layer="gat", gat_heads=2, region_edges="knn", knn_k=2, cross_all=True),
    "gnn-sage": dict(hidden=8, layer="sage"),
    "refnet": dict(base="vilbert", base_cfg=VIL, refiner_hidden=[6], zeta=0.5),
}
HEAD_NAMES = list(TINY)


def head_name(key: str) -> str:
    return key.split("-gat")[0].split("-sage")[0] if key.startswith("gnn") else key


SPECS = {
    "binary": TaskSpec([Task("hate", "binary", 2)]),
    "multiclass": TaskSpec([Task("sent", "multiclass", 4)]),
    "multilabel": TaskSpec([Task("genre", "multilabel", 3)]),
    "cascade": TaskSpec([Task("A", "binary", 2), Task("B", "multiclass", 3), Task("C", "multilabel", 2)],
                        cascade=["B", "C"]),
}


def inputs() -> InputSpec:
    return InputSpec(img_dim=DI, txt_dim=DT, img_regions=R, txt_tokens=T, img_boxes=True)


def make_batch(seed: int = 0, pooled: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    img_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    txt_mask = torch.tensor([[1] * 4 + [0] * 2, [1] * 6, [1, 1] + [0] * 4, [1] * 3 + [0] * 3], dtype=torch.bool)
    b = dict(img_regions=torch.randn(B, R, DI, generator=g), img_mask=img_mask, img_boxes=torch.rand(B, R, 5, generator=g),
             txt_tokens=torch.randn(B, T, DT, generator=g), txt_mask=txt_mask)
    if pooled:
        b["img_pooled"] = torch.randn(B, DI, generator=g)
        b["txt_pooled"] = torch.randn(B, DT, generator=g)
    return b


def build(key: str, spec: TaskSpec, seed: int = 0):
    torch.manual_seed(seed)
    cfg = dict(TINY[key])
    if key == "refnet" and spec.tasks[0].kind == "multilabel":
        cfg["zeta"] = 0.0  # the multi-similarity term needs class labels (tested in test_refnet_*)
    return create_head(head_name(key), inputs(), spec, **cfg)


def targets_for(spec: TaskSpec) -> dict:
    out = {}
    for t in spec.tasks:
        out[t.name] = (torch.tensor([0, 1, 1, 0]) if t.kind == "binary" else
                       torch.tensor([0, 1, 2, 1]) % t.num_classes if t.kind == "multiclass" else
                       torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float)[:, :t.num_classes])
    return out


def test_every_head_is_registered_and_listed():
    assert set(HEADS.names()) == {"concat", "text-only", "image-only", "cross", "vilbert", "singlestream", "visualbert", "gnn", "refnet",
                                  "text-bert", "concat-bert", "late-fusion", "mmbt", "image-region",
                                  "mmbt-region"}
    listed = {n: (h, c) for n, h, c in list_heads()}
    assert set(listed) == set(HEADS.names())
    assert all(h for h, _ in listed.values())
    assert listed["vilbert"][1].v_hidden_size == 1024 and listed["vilbert"][1].fusion_method == "mul"


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("key", HEAD_NAMES)
def test_output_shapes(key, spec_name):
    spec = SPECS[spec_name]
    head = build(key, spec).eval()
    out = head(make_batch())
    assert list(out["logits"]) == [t.name for t in spec.tasks]
    for t in spec.tasks:
        assert out["logits"][t.name].shape == (B, t.num_outputs)
        assert torch.isfinite(out["logits"][t.name]).all()
    assert out["fused"].dim() == 2 and out["fused"].shape[0] == B


@pytest.mark.parametrize("key", HEAD_NAMES)
def test_gradients_reach_every_trainable_parameter(key):
    spec = SPECS["cascade"]
    head = build(key, spec).train()
    batch = make_batch()
    out = head(batch)
    g = torch.Generator().manual_seed(1)
    loss = sum((v * torch.randn(v.shape, generator=g)).sum() for v in out["logits"].values())
    if hasattr(head, "extra_losses"):
        loss = loss + sum(head.extra_losses(out, batch, targets_for(spec)).values())
    loss.backward()
    params = [(n, p) for n, p in head.named_parameters() if p.requires_grad]
    assert params
    for n, p in params:
        assert p.grad is not None, f"{n} got no gradient"
        assert p.grad.abs().sum() > 0, f"{n} got an all-zero gradient"


@pytest.mark.parametrize("key", HEAD_NAMES)
def test_padding_does_not_change_outputs(key):
    head = build(key, SPECS["cascade"]).eval()
    batch = make_batch(pooled=False)  # pooled vectors come from the masked means, so padding is exercised
    g = torch.Generator().manual_seed(5)
    padded = dict(batch)
    padded["img_regions"] = torch.cat([batch["img_regions"], 100 * torch.randn(B, 3, DI, generator=g)], 1)
    padded["img_boxes"] = torch.cat([batch["img_boxes"], torch.rand(B, 3, 5, generator=g)], 1)
    padded["img_mask"] = torch.cat([batch["img_mask"], torch.zeros(B, 3, dtype=torch.bool)], 1)
    padded["txt_tokens"] = torch.cat([batch["txt_tokens"], 100 * torch.randn(B, 2, DT, generator=g)], 1)
    padded["txt_mask"] = torch.cat([batch["txt_mask"], torch.zeros(B, 2, dtype=torch.bool)], 1)
    with torch.no_grad():
        a, b = head(batch), head(padded)
    torch.testing.assert_close(b["fused"], a["fused"], atol=1e-5, rtol=1e-4)
    for name in a["logits"]:
        torch.testing.assert_close(b["logits"][name], a["logits"][name], atol=1e-5, rtol=1e-4)
    # and the padding values are really ignored: changing a real region does change the output
    changed = dict(batch)
    changed["img_regions"] = batch["img_regions"].clone()
    changed["img_regions"][:, 0] += 3.0
    changed["txt_tokens"] = batch["txt_tokens"].clone()
    changed["txt_tokens"][:, 0] += 3.0
    with torch.no_grad():
        c = head(changed)
    assert not torch.allclose(c["fused"], a["fused"], atol=1e-4)


# ------------------------------------------------------------------------------------- prediction layers


def test_prediction_layers_cascade_and_shared_by_hand():
    spec = SPECS["cascade"]
    torch.manual_seed(0)
    layers = PredictionLayers(spec, in_dim=5, hidden=0, dropout=0.0).eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    layers.double()
    out = layers(x)
    lin = lambda name, inp: inp @ layers.layers[name].weight.T + layers.layers[name].bias  # noqa: E731
    torch.testing.assert_close(out["A"], lin("A", x))
    torch.testing.assert_close(out["B"], lin("B", x))
    pb = torch.exp(out["B"]) / torch.exp(out["B"]).sum(-1, keepdim=True)
    torch.testing.assert_close(out["C"], lin("C", torch.cat([x, pb], -1)))
    assert layers.layers["C"].weight.shape == (2, 5 + 3)

    shared = PredictionLayers(TaskSpec(spec.tasks, shared_outputs=True, cascade=["B", "C"]), 5, hidden=7).eval().double()
    out = shared(x)
    h = torch.relu(x @ shared.shared[0].weight.T + shared.shared[0].bias)
    pb = torch.softmax(out["B"], -1)
    torch.testing.assert_close(out["C"], torch.cat([h, pb], -1) @ shared.layers["C"].weight.T + shared.layers["C"].bias)
    torch.testing.assert_close(out["A"], h @ shared.layers["A"].weight.T + shared.layers["A"].bias)

    separate = PredictionLayers(SPECS["multilabel"], 5, hidden=4)
    assert isinstance(separate.layers["genre"], torch.nn.Sequential) and separate.layers["genre"][0].out_features == 4


@pytest.mark.parametrize("spec, match", [
    (TaskSpec([]), "no tasks"),
    (TaskSpec([Task("a", "regression", 1)]), "kind 'regression'"),
    (TaskSpec([Task("a", "multiclass", 1)]), "at least 2"),
    (TaskSpec([Task("a", "binary", 2), Task("a", "binary", 2)]), "appears twice"),
    (TaskSpec([Task("a", "binary", 2)], cascade=["a", "zz"]), "'zz' which is not a task"),
    (TaskSpec([Task("a", "binary", 2)], cascade=["a"]), "at least two"),
])
def test_prediction_layers_bad_spec(spec, match):
    with pytest.raises(FeatstoreError, match=match):
        PredictionLayers(spec, 4)


# ------------------------------------------------------------------------------------- references


def test_concat_fused_is_mlp_of_concatenation():
    head = build("concat", SPECS["binary"]).eval().double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in make_batch().items()}
    x = torch.cat([batch["img_pooled"], batch["txt_pooled"]], -1)
    lin = head.mlp[0]
    torch.testing.assert_close(head(batch)["fused"], torch.relu(x @ lin.weight.T + lin.bias))
    # without pooled vectors: masked means of regions / tokens, computed here directly
    del batch["img_pooled"], batch["txt_pooled"]
    m = batch["img_mask"].double()
    img = (batch["img_regions"] * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    mt = batch["txt_mask"].double()
    txt = (batch["txt_tokens"] * mt[..., None]).sum(1) / mt.sum(1, keepdim=True)
    torch.testing.assert_close(head(batch)["fused"], torch.relu(torch.cat([img, txt], -1) @ lin.weight.T + lin.bias))


@pytest.mark.parametrize("norm", ["l2", "none", "layernorm"])
def test_cross_interaction_matrix_is_outer_product(norm):
    torch.manual_seed(0)
    head = create_head("cross", inputs(), SPECS["binary"], proj_dim=4, hidden=[8], norm=norm).eval().double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in make_batch().items()}
    out = head(batch)

    def proj(p, x):
        y = x @ p.map[0].weight.T + p.map[0].bias
        if norm == "l2":
            y = y / y.norm(dim=-1, keepdim=True)
        elif norm == "layernorm":
            y = F.layer_norm(y, (4,), p.norm.weight, p.norm.bias)
        return y

    pi, pt = proj(head.img_proj, batch["img_pooled"]), proj(head.txt_proj, batch["txt_pooled"])
    inter = torch.einsum("bi,bj->bij", pi, pt)
    torch.testing.assert_close(out["interaction"], inter)
    lin = head.pre_output.linears[0]
    torch.testing.assert_close(out["fused"], torch.relu(inter.reshape(B, 16) @ lin.weight.T + lin.bias))


def _mmf_vilbert_reference(head, batch):
    """A float64 transcription of MMF's ViLBERTBase.forward after the text embeddings, written against the
    head's state dict (plain matmul/softmax attention, MMF's cursor loop over full layer indices)."""
    c = head.config
    sd = {k: v.double() for k, v in head.state_dict().items()}
    lin = lambda p, x: x @ sd[p + ".weight"].T + sd[p + ".bias"]  # noqa: E731
    ln = lambda p, x: F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-12)  # noqa: E731
    gelu = lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))  # noqa: E731

    def attn(q, k, v, heads, mask):
        b, nq, a = q.shape
        sp = lambda x: x.view(b, x.shape[1], heads, a // heads).permute(0, 2, 1, 3)  # noqa: E731
        s = sp(q) @ sp(k).transpose(-1, -2) / math.sqrt(a // heads) + mask
        return (torch.softmax(s, -1) @ sp(v)).permute(0, 2, 1, 3).reshape(b, nq, a)

    def layer(p, x, mask, heads):
        ctx = attn(lin(p + ".attention.self.query", x), lin(p + ".attention.self.key", x),
                   lin(p + ".attention.self.value", x), heads, mask)
        a = ln(p + ".attention.output.LayerNorm", lin(p + ".attention.output.dense", ctx) + x)
        return ln(p + ".output.LayerNorm", lin(p + ".output.dense", gelu(lin(p + ".intermediate.dense", a))) + a)

    def connect(p, img, imask, txt, tmask):
        h = c.bi_num_attention_heads
        ctx1 = attn(lin(p + ".biattention.query2", txt), lin(p + ".biattention.key1", img),
                    lin(p + ".biattention.value1", img), h, imask)
        ctx2 = attn(lin(p + ".biattention.query1", img), lin(p + ".biattention.key2", txt),
                    lin(p + ".biattention.value2", txt), h, tmask)
        a1 = ln(p + ".biOutput.LayerNorm1", lin(p + ".biOutput.dense1", ctx2) + img)
        a2 = ln(p + ".biOutput.LayerNorm2", lin(p + ".biOutput.dense2", ctx1) + txt)
        img = ln(p + ".v_output.LayerNorm", lin(p + ".v_output.dense", gelu(lin(p + ".v_intermediate.dense", a1))) + a1)
        txt = ln(p + ".t_output.LayerNorm", lin(p + ".t_output.dense", gelu(lin(p + ".t_intermediate.dense", a2))) + a2)
        return img, txt

    regions, rmask = batch["img_regions"].double(), batch["img_mask"].double()
    g = (regions * rmask[..., None]).sum(1, keepdim=True) / rmask.sum(1)[:, None, None]
    regions = torch.cat([g, regions], 1)
    boxes = torch.cat([torch.tensor([0, 0, 1, 1, 1.0], dtype=torch.float64).expand(B, 1, 5), batch["img_boxes"].double()], 1)
    rmask = torch.cat([torch.ones(B, 1, dtype=torch.float64), rmask], 1)
    img = ln("v_embeddings.LayerNorm", lin("v_embeddings.image_embeddings", regions)
             + lin("v_embeddings.image_location_embeddings", boxes))
    txt = batch["txt_tokens"].double()
    tm = (1.0 - batch["txt_mask"].double())[:, None, None, :] * -10000.0
    im = (1.0 - rmask)[:, None, None, :] * -10000.0
    s = c.text_start_layer
    v_start, t_start = 0, s  # MMF's cursors, with the cached text layers already done
    for count, (v_end, t_end) in enumerate(zip(c.v_biattention_id, c.t_biattention_id)):
        for cur in range(c.num_hidden_layers):
            if t_start <= cur < t_end:
                txt = layer(f"encoder.layer.{cur - s}", txt, tm, c.num_attention_heads)
        for cur in range(c.v_num_hidden_layers):
            if v_start <= cur < v_end:
                img = layer(f"encoder.v_layer.{cur}", img, im, c.v_num_attention_heads)
        img, txt = connect(f"encoder.c_layer.{count}", img, im, txt, tm)
        v_start, t_start = v_end, t_end
    for cur in range(c.v_num_hidden_layers):
        if cur >= v_start:
            img = layer(f"encoder.v_layer.{cur}", img, im, c.v_num_attention_heads)
    for cur in range(c.num_hidden_layers):
        if cur >= t_start:
            txt = layer(f"encoder.layer.{cur - s}", txt, tm, c.num_attention_heads)
    pt = torch.relu(lin("t_pooler.dense", txt[:, 0]))
    pv = torch.relu(lin("v_pooler.dense", img[:, 0]))
    return pt, pv


@pytest.mark.parametrize("cfg", [
    VIL,
    # co-attention at a different place: two text layers before the first co-attention block, visual last
    dict(VIL, num_hidden_layers=5, text_start_layer=1, v_num_hidden_layers=3, v_biattention_id=[1, 2],
         t_biattention_id=[3, 4], fusion_method="sum"),
])
def test_vilbert_matches_mmf_forward_in_float64(cfg):
    torch.manual_seed(0)
    # the optional vilbert-multi-task mean region and plain prediction layers (MMF's defaults: test_vilbert_mmf.py)
    head = create_head("vilbert", inputs(), SPECS["binary"], **dict(cfg, global_region=True, classifier="layers"))
    head = head.eval().double()
    batch = make_batch()
    out = head({k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()})
    pt, pv = _mmf_vilbert_reference(head, batch)
    torch.testing.assert_close(out["pooled_t"], pt)
    torch.testing.assert_close(out["pooled_v"], pv)
    torch.testing.assert_close(out["fused"], pt * pv if cfg.get("fusion_method", "mul") == "mul" else pt + pv)
    w = head.outputs.layers["hate"]
    torch.testing.assert_close(out["logits"]["hate"], out["fused"] @ w.weight.T + w.bias)


def test_vilbert_module_names_mirror_mmf():
    head = build("vilbert", SPECS["binary"])
    keys = set(head.state_dict())
    for k in ["encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.output.dense.weight",
              "encoder.layer.1.attention.output.LayerNorm.weight", "encoder.layer.0.intermediate.dense.weight",
              "encoder.layer.0.output.dense.weight", "encoder.layer.0.output.LayerNorm.bias",
              "encoder.v_layer.1.attention.self.value.bias", "encoder.c_layer.1.biattention.query1.weight",
              "encoder.c_layer.0.biattention.value2.weight", "encoder.c_layer.0.biOutput.q_dense1.weight",
              "encoder.c_layer.0.biOutput.LayerNorm2.weight", "encoder.c_layer.0.biOutput.q_dense2.bias",
              "encoder.c_layer.0.v_intermediate.dense.weight", "encoder.c_layer.0.v_output.LayerNorm.weight",
              "encoder.c_layer.0.t_intermediate.dense.weight", "encoder.c_layer.0.t_output.dense.weight",
              "v_embeddings.image_embeddings.weight", "v_embeddings.image_location_embeddings.weight",
              "v_embeddings.LayerNorm.weight", "t_pooler.dense.weight", "v_pooler.dense.weight"]:
        assert k in keys, k
    assert not any(k.startswith("encoder.layer.2.") for k in keys)  # only layers text_start_layer..3 are built
    # txt_dim != hidden_size: a projection appears
    proj = create_head("vilbert", InputSpec(img_dim=DI, txt_dim=10, img_regions=R, txt_tokens=T), SPECS["binary"], **VIL)
    assert proj.t_proj.in_features == 10 and proj.t_proj.out_features == DT


def test_refnet_refiner_loss_matches_formula():
    spec = SPECS["cascade"]
    torch.manual_seed(0)
    head = create_head("refnet", inputs(), spec, base="concat", base_cfg=dict(hidden=[8], dropout=0.0),
                       refiner_hidden=[6], gamma_img=0.7, gamma_txt=1.3, zeta=0.25).eval()
    batch = make_batch()
    out = head(batch)
    y = torch.tensor([0, 1, -1, 1])  # -1: unlabeled row, left out of the MS term
    losses = head.extra_losses(out, batch, {"A": y})

    def cos_term(r, h):
        r, h = r.double(), h.double()
        return (1 - (r * h).sum(-1) / (r.norm(dim=-1) * h.norm(dim=-1))).mean()

    expected = (0.7 * cos_term(out["refined"]["img"], batch["img_pooled"])
                + 1.3 * cos_term(out["refined"]["txt"], batch["txt_pooled"]))
    assert abs(losses["refiner"].item() - expected.item()) < 1e-6
    # refined vectors are the refiner MLPs applied to the fused embedding
    r = head.refiners["img"]
    torch.testing.assert_close(out["refined"]["img"], r[2](torch.relu(r[0](out["fused"]))))

    # the MS term (paper settings, rows with label -1 left out) is checked by hand in tests/test_refnet.py
    assert losses["ms"].item() > 0
    assert abs(head.pretrain_loss(out, batch).item() - expected.item()) < 1e-6


def test_refnet_projected_targets_and_errors():
    torch.manual_seed(0)
    head = create_head("refnet", inputs(), SPECS["binary"], base="cross", base_cfg=dict(proj_dim=4, hidden=[8]),
                       target_dim=5, zeta=0.0).eval()
    batch = make_batch()
    out = head(batch)
    assert out["refined"]["img"].shape == (B, 5) and out["refine_target"]["txt"].shape == (B, 5)
    p = head.target_proj["img"]
    torch.testing.assert_close(out["refine_target"]["img"], batch["img_pooled"] @ p.weight.T + p.bias)
    assert head.extra_losses(out, batch, {})["ms"].item() == 0.0
    create_head("refnet", inputs(), SPECS["multilabel"], base="concat")  # genres pair by sharing one (test_refnet)
    with pytest.raises(FeatstoreError, match="nest"):
        create_head("refnet", inputs(), SPECS["binary"], base="refnet")
    with pytest.raises(FeatstoreError, match="not a head"):
        create_head("refnet", inputs(), SPECS["binary"], base="nope")
    h2 = create_head("refnet", inputs(), SPECS["binary"], base="concat", base_cfg=dict(hidden=[8]))
    with pytest.raises(FeatstoreError, match="labels of task 'hate'"):
        h2.extra_losses(h2(batch), batch, {})
    # the base head's own input checks still apply
    with pytest.raises(FeatstoreError, match="needs image regions"):
        create_head("refnet", InputSpec(img_dim=DI, txt_dim=DT, txt_tokens=T), SPECS["binary"], base="vilbert")


# ------------------------------------------------------------------------------------- graph


def _reference_edges(n_reg, tok_valid, cfg, regions=None):
    """Edges of ONE sample by the documented rules, as a set of (src_slot, dst_slot), with plain loops."""
    Rs, Ts = len(n_reg), len(tok_valid)
    reg = [i for i in range(Rs) if n_reg[i]]
    tok = [Rs + j for j in range(Ts) if tok_valid[j]]
    gi, gt = Rs + Ts, Rs + Ts + 1
    e = set()

    def both(a, b):
        e.add((a, b))
        e.add((b, a))

    if cfg.region_edges == "full":
        e |= {(a, b) for a in reg for b in reg if a != b}
    else:
        for i in reg:
            d = sorted((float(torch.dist(regions[i], regions[j])), j) for j in reg if j != i)
            e |= {(j, i) for _, j in d[:cfg.knn_k]}
    for j in range(Ts - 1):
        if tok_valid[j] and tok_valid[j + 1]:
            both(Rs + j, Rs + j + 1)
    for t in tok:
        both(gi, t)
    for r in reg:
        both(gt, r)
    if cfg.cross_all:
        for r in reg:
            for t in tok:
                both(r, t)
    if cfg.global_own:
        for r in reg:
            both(gi, r)
        for t in tok:
            both(gt, t)
    if cfg.global_link:
        both(gi, gt)
    if cfg.layer != "sage" if cfg.self_loops is None else cfg.self_loops:  # the default: gcn / gat, not sage
        e |= {(n, n) for n in reg + tok + [gi, gt]}
    return e


def _edge_sets(ei, slots, N, nb):
    sets = [set() for _ in range(nb)]
    for s, d in ei.T.tolist():
        a, b = int(slots[s]), int(slots[d])
        assert a // N == b // N, "edge crosses samples"
        sets[a // N].add((a % N, b % N))
    return sets


@pytest.mark.parametrize("cfg", [
    GnnConfig(),
    GnnConfig(region_edges="knn", knn_k=2, cross_all=True, global_own=False),
    GnnConfig(region_edges="knn", knn_k=10, global_link=False, self_loops=False),
    GnnConfig(layer="sage"),
    GnnConfig(layer="sage", self_loops=True),
])
def test_gnn_batched_graph_equals_per_sample_graphs(cfg):
    batch = make_batch()
    N = R + T + 2
    ei, bvec, slots = build_batch_graph(batch["img_mask"], batch["txt_mask"], cfg, graph_template(R, T, cfg),
                                        batch["img_regions"])
    assert ei.shape[1] == len({tuple(x) for x in ei.T.tolist()}), "duplicate edges"
    assert bvec.tolist() == (slots // N).tolist()
    batched = _edge_sets(ei, slots, N, B)
    for b in range(B):
        ref = _reference_edges(batch["img_mask"][b].tolist(), batch["txt_mask"][b].tolist(), cfg, batch["img_regions"][b])
        assert batched[b] == ref
        # the same builder on this sample alone gives the same graph
        one = build_batch_graph(batch["img_mask"][b:b + 1], batch["txt_mask"][b:b + 1], cfg,
                                graph_template(R, T, cfg), batch["img_regions"][b:b + 1])
        assert _edge_sets(one[0], one[2], N, 1)[0] == ref
    # masked nodes are dropped: node count = real regions + real tokens + 2 globals per sample
    assert slots.numel() == int(batch["img_mask"].sum() + batch["txt_mask"].sum()) + 2 * B


# ------------------------------------------------------------------------------------- errors


def test_missing_inputs_are_one_line_errors():
    pooled_only = InputSpec(img_dim=DI, txt_dim=DT, txt_tokens=T)
    with pytest.raises(FeatstoreError, match=r"head 'vilbert' needs image regions .*--extractor roi/grid/dinov2 or use --head concat"):
        create_head("vilbert", pooled_only, SPECS["binary"], **VIL)
    # no image set at all (heads train --text only): named as missing, not as pooled-only
    with pytest.raises(FeatstoreError) as err:
        create_head("vilbert", InputSpec(img_dim=0, txt_dim=DT, txt_tokens=T), SPECS["binary"], **VIL)
    assert str(err.value) == ("head 'vilbert' needs image regions but no image feature set was given; pass an "
                              "image feature set (--image NAME) or use --head text-only")
    with pytest.raises(FeatstoreError) as err:
        create_head("vilbert", InputSpec(img_dim=DI, txt_dim=0, img_regions=R), SPECS["binary"], **VIL)
    assert str(err.value) == ("head 'vilbert' needs text tokens but no text feature set was given; pass a text "
                              "feature set (--text NAME) or use --head image-only")
    with pytest.raises(FeatstoreError) as err:
        create_head("vilbert", InputSpec(img_dim=DI, txt_dim=0, img_regions=R, txt_tokens=T, txt_ids=True,
                                         txt_pooled=False), SPECS["binary"], **VIL)
    assert str(err.value) == ("head 'vilbert' needs text token states but the text array read gives token ids "
                              "only; pass --text-array tokens (or layer_N)")
    no_tokens = InputSpec(img_dim=DI, txt_dim=DT, img_regions=R)
    for name in ("vilbert", "singlestream", "gnn"):
        with pytest.raises(FeatstoreError, match=f"head '{name}' needs text tokens"):
            create_head(name, no_tokens, SPECS["binary"], **TINY[name])
    no_image = InputSpec(img_dim=DI, txt_dim=DT, img_pooled=False)
    with pytest.raises(FeatstoreError, match="needs an image feature.*--head text-only"):
        create_head("concat", no_image, SPECS["binary"])
    with pytest.raises(FeatstoreError, match="needs an image feature but no image feature set"):
        create_head("concat", InputSpec(img_dim=0, txt_dim=DT), SPECS["binary"])  # dim 0: no image set at all
    no_text = InputSpec(img_dim=DI, txt_dim=DT, txt_pooled=False)
    with pytest.raises(FeatstoreError, match="needs a text feature.*--head image-only"):
        create_head("cross", no_text, SPECS["binary"])
    # regions alone satisfy a pooled-image need (masked mean)
    h = create_head("image-only", InputSpec(img_dim=DI, txt_dim=DT, img_regions=R, img_pooled=False), SPECS["binary"],
                    hidden=[4])
    assert h(make_batch(pooled=False))["fused"].shape == (B, 4)
    with pytest.raises(FeatstoreError) as e:
        create_head("vilbert", pooled_only, SPECS["binary"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, cfg, match", [
    ("nope", {}, "unknown head 'nope'"),
    ("concat", {"hiden": [3]}, "no option 'hiden'"),
    ("concat", {"hidden": [0]}, "non-positive"),
    ("concat", {"activation": "swoosh"}, "unknown activation"),
    ("cross", {"norm": "batch"}, "norm='batch'"),
    ("vilbert", dict(VIL, fusion_method="max"), "fusion_method='max'"),
    ("vilbert", dict(VIL, bi_hidden_size=9), "not a multiple"),
    ("vilbert", dict(VIL, t_biattention_id=[1, 3]), "cannot run again"),
    ("vilbert", dict(VIL, v_biattention_id=[0]), "equal length"),
    ("singlestream", dict(TINY["singlestream"], max_text_len=3), "max_text_len=6"),
    ("gnn", dict(layer="cheb"), "layer='cheb'"),
    ("gnn", dict(layer="gat", hidden=6, gat_heads=4), "gat_heads"),
    ("gnn", dict(region_edges="delaunay"), "region_edges"),
    ("concat", {"dropout": 1.5}, r"head 'concat' dropout=1.5 is a dropout probability outside \[0, 1\]; "
                                 r"use e.g. --set dropout=0.1$"),
    ("cross", {"fusion_dropout": -0.2}, r"fusion_dropout=-0.2 is a dropout probability outside"),
    ("vilbert", dict(VIL, v_attention_probs_dropout_prob=2), r"v_attention_probs_dropout_prob=2 is a dropout"),
    ("refnet", dict(base="concat", base_cfg={"out_dropout": 7.0}), r"head 'concat' out_dropout=7.0 is a dropout"),
])
def test_bad_config_errors(name, cfg, match):
    with pytest.raises(FeatstoreError, match=match):
        create_head(name, inputs(), SPECS["binary"], **cfg)


@pytest.mark.parametrize("key", ["vilbert", "singlestream", "cross", "gnn-sage", "refnet"])
def test_heads_run_under_bf16_autocast(key):
    spec = SPECS["binary"]
    head = build(key, spec)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(make_batch())
        if hasattr(head, "extra_losses"):
            head.extra_losses(out, make_batch(), targets_for(spec))
    assert torch.isfinite(out["logits"]["hate"].float()).all()


def test_batch_without_any_image_input_is_an_error():
    head = build("concat", SPECS["binary"])
    batch = make_batch()
    del batch["img_pooled"], batch["img_regions"]
    with pytest.raises(FeatstoreError, match="neither 'img_pooled' nor 'img_regions'"):
        head(batch)


# ------------------------------------------------------------------------------------- learning


def test_concat_overfits_xor_needing_both_modalities():
    """Same image with two texts and opposite labels: neither modality alone can reach more than 50%."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    imgs, txts = torch.randn(2, DI, generator=g), torch.randn(2, DT, generator=g)
    idx = torch.tensor([(i, t) for i in range(2) for t in range(2)] * 4)
    y = (idx[:, 0] ^ idx[:, 1]).long()
    batch = {"img_pooled": imgs[idx[:, 0]] + 0.05 * torch.randn(16, DI, generator=g),
             "txt_pooled": txts[idx[:, 1]] + 0.05 * torch.randn(16, DT, generator=g)}
    head = create_head("concat", InputSpec(img_dim=DI, txt_dim=DT), SPECS["binary"], hidden=[32], dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = F.cross_entropy(head(batch)["logits"]["hate"], y)
        loss.backward()
        opt.step()
    acc = (head.eval()(batch)["logits"]["hate"].argmax(-1) == y).float().mean().item()
    assert acc > 0.9
