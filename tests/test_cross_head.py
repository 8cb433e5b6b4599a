"""The ``cross`` head against an independent float64 transcription of Hate-CLIPper's forward.

The reference (gokulkarthik/hateclipper ``engine.py`` ``CLIPClassifier``, read, not copied): image_map /
text_map = Linear(d, map_dim) + Dropout(drop_probs[0]) (extra mapping layers: ReLU, Linear, Dropout), then
``F.normalize(p=2, dim=1)``; fusion align = product, concat = cat, cross = flattened outer product; pre_output
= Dropout(drop_probs[1]) then per layer Linear(., map_dim) + ReLU + Dropout(drop_probs[2]); output Linear.
The transcription below is numpy float64 on the head's weights. The reference's single output unit
``Linear(m, 1)`` with ``BCEWithLogitsLoss`` is the head's own (``binary_logits=1``, logits ``[0, z]``): the
probability, the loss and every gradient are checked against it; a ``binary_logits=2`` head is compared
through ``sigmoid((w1 - w0) h + (b1 - b0))``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cli.heads_cli import main as heads
from cli_helpers import hm_store_world, invoke, one_line_error
from featstore.errors import FeatstoreError
from featstore.store import Recipe
from heads.models import create_head
from heads.models.cross import HATECLIPPER_SETTINGS
from heads.spec import InputSpec, Task, TaskSpec

BINARY = TaskSpec([Task("label", "binary", 2, ["0", "1"])])
DI, DT, B = 12, 10, 5


def _np(t):
    return t.detach().double().numpy()


def reference_forward(head, x_img: np.ndarray, x_txt: np.ndarray, fusion: str) -> dict:
    """Hate-CLIPper's eval-mode forward in float64 numpy from the head's parameters."""
    sd = {k: _np(v) for k, v in head.state_dict().items()}

    def mapping(prefix, x):
        lin = sorted({k.rsplit(".", 1)[0] for k in sd if k.startswith(prefix + ".map.")},
                     key=lambda k: int(k.split(".")[-1]))
        for i, name in enumerate(lin):
            if i:
                x = np.maximum(x, 0.0)
            x = x @ sd[name + ".weight"].T + sd[name + ".bias"]
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    pi, pt = mapping("img_proj", x_img), mapping("txt_proj", x_txt)
    if fusion == "align":
        f = pi * pt
    elif fusion == "concat":
        f = np.concatenate([pi, pt], axis=1)
    elif fusion == "align_concat":
        f = np.concatenate([pi * pt, pi, pt], axis=1)
    else:
        outer = [np.outer(a, b) for a, b in zip(pi, pt)]
        if fusion == "cross_nd":  # engine.py: features[eye mask] = 0
            for m in outer:
                np.fill_diagonal(m, 0.0)
        f = np.stack([m.reshape(-1) for m in outer])
    h = f
    n_layers = len({k for k in sd if k.startswith("pre_output.linears.") and k.endswith(".weight")})
    for i in range(n_layers):
        h = np.maximum(h @ sd[f"pre_output.linears.{i}.weight"].T + sd[f"pre_output.linears.{i}.bias"], 0.0)
    w, b = sd["outputs.layers.label.weight"], sd["outputs.layers.label.bias"]
    logit = h @ w[0] + b[0] if len(w) == 1 else h @ (w[1] - w[0]) + (b[1] - b[0])  # the reference's one unit
    return {"pi": pi, "pt": pt, "f": f, "fused": h, "prob": 1.0 / (1.0 + np.exp(-logit))}


def _head(**cfg):
    torch.manual_seed(0)
    return create_head("cross", InputSpec(DI, DT), BINARY, **cfg).double()


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"img_pooled": torch.randn(B, DI, generator=g, dtype=torch.float64),
            "txt_pooled": torch.randn(B, DT, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("fusion,layers,mapping,logits", [
    ("align", 3, 1, 1), ("cross", 1, 1, 1), ("concat", 2, 2, 1), ("align", 0, 1, 1), ("cross_nd", 1, 1, 1),
    ("align_concat", 2, 1, 1), ("align", 3, 1, 2), ("cross", 1, 1, 2)])
def test_forward_equals_float64_transcription(fusion, layers, mapping, logits):
    head = _head(fusion=fusion, proj_dim=6, pre_output_layers=layers, mapping_layers=mapping,
                 binary_logits=logits).eval()
    assert head.outputs.layers["label"].weight.shape == (logits, 6 if layers else head.config.fused_in())
    batch = _batch()
    out = head(batch)
    ref = reference_forward(head, batch["img_pooled"].numpy(), batch["txt_pooled"].numpy(), fusion)
    np.testing.assert_allclose(_np(out["img_proj"]), ref["pi"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(out["fused"]), ref["fused"], rtol=1e-10, atol=1e-12)
    prob = torch.softmax(out["logits"]["label"], -1)[:, 1]
    np.testing.assert_allclose(_np(prob), ref["prob"], rtol=1e-10, atol=1e-12)
    assert out["fused"].shape[1] == (6 if layers else {"align": 6, "cross": 36, "concat": 12}[fusion])
    if fusion in ("cross", "cross_nd"):
        np.testing.assert_allclose(_np(out["interaction"]).reshape(B, -1), ref["f"], rtol=1e-10, atol=1e-12)


def test_one_logit_trains_as_the_references_bce():
    """The reference trains ``output = Linear(m, 1)`` with ``BCEWithLogitsLoss``: the head's softmax cross-entropy
    on ``[0, z]`` gives that loss and the same gradient for every parameter, the output unit's included
    (transcribed in torch float64 from the head's weights, the loss by hand: log(1 + e^z) - y z)."""
    head = _head(fusion="align", proj_dim=6, pre_output_layers=2).eval()
    batch, y = _batch(), torch.tensor([0, 1, 1, 0, 1])
    loss = torch.nn.functional.cross_entropy(head(batch)["logits"]["label"], y)
    loss.backward()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in head.named_parameters()}

    def lin(name, x):
        return x @ params[name + ".weight"].T + params[name + ".bias"]

    def unit(x):
        x = lin(x[0], x[1])
        return x / x.norm(dim=1, keepdim=True)

    h = unit(("img_proj.map.0", batch["img_pooled"])) * unit(("txt_proj.map.0", batch["txt_pooled"]))
    for i in range(2):
        h = torch.relu(lin(f"pre_output.linears.{i}", h))
    z = lin("outputs.layers.label", h)[:, 0]
    ref = (torch.log1p(torch.exp(z)) - y * z).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    assert params["outputs.layers.label.weight"].shape == (1, 6)
    for k, p in head.named_parameters():
        torch.testing.assert_close(p.grad, params[k].grad, rtol=1e-10, atol=1e-13, msg=k)


def test_embed_is_last_pre_output_linear_before_relu():
    head = _head(fusion="align", proj_dim=6, pre_output_layers=2).eval()
    out = head(_batch())
    lin = head.pre_output.linears[1]
    h1 = torch.relu(head.pre_output.linears[0](out["img_proj"] * out["txt_proj"]))
    torch.testing.assert_close(out["embed"], lin(h1))
    assert (out["embed"] < 0).any() and torch.equal(out["fused"], torch.relu(out["embed"]))


def _rgcl_classifier(head, batch, embed_first: bool):
    """RGCL's classifier.py forward written with functional dropout on the head's tensors: projections (Linear,
    Dropout), L2 norm, align; ``embed = mlp[:-2](x)`` (the last ReLU and Dropout not run, so no mask drawn for
    them) then ``output_layer(mlp(x))``, each pass drawing its own dropout, in that order (``embed_first=False``:
    one pass gives both)."""
    import torch.nn.functional as F

    c, p = head.config, dict(head.named_parameters())

    def proj(x, name):
        x = F.dropout(x @ p[f"{name}.map.0.weight"].T + p[f"{name}.map.0.bias"], c.proj_dropout, True)
        return F.normalize(x, dim=1)

    x = proj(batch["img_pooled"], "img_proj") * proj(batch["txt_pooled"], "txt_proj")

    def mlp(h, upto=0):  # the Sequential [Dropout, (Linear, ReLU, Dropout) x L] without its last ``upto`` modules
        h, pre = F.dropout(h, c.fusion_dropout, True), None
        for k in range(c.pre_output_layers):
            pre = h @ p[f"pre_output.linears.{k}.weight"].T + p[f"pre_output.linears.{k}.bias"]
            if upto == 2 and k == c.pre_output_layers - 1:
                return None, pre
            h = F.dropout(torch.relu(pre), c.dropout, True)
        return h, pre

    embed = mlp(x, upto=2)[1] if embed_first else None  # RGCL's self.mlp[:-2](x)
    h, pre = mlp(x)
    out = h @ p["outputs.layers.label.weight"].T + p["outputs.layers.label.bias"]
    return out[:, 0], pre if embed is None else embed


@pytest.mark.parametrize("embed_pass", ["own", "shared"])
def test_rgcl_embed_pass_draws_its_own_dropout_as_rgcl_classifier(embed_pass):
    """``embed_pass="own"`` (the rgcl presets): in training the embedding and the logit come from two passes
    with their own dropout, as RGCL's classifier.py; eval mode is one deterministic pass either way."""
    head = _head(fusion="align", proj_dim=8, pre_output_layers=2, proj_dropout=0.2, fusion_dropout=0.4,
                 dropout=0.1, embed_pass=embed_pass).train()
    batch = _batch()
    torch.manual_seed(7)
    out = head(batch)
    torch.manual_seed(7)
    logit, embed = _rgcl_classifier(head, batch, embed_first=embed_pass == "own")
    torch.testing.assert_close(out["logits"]["label"][:, 1] - out["logits"]["label"][:, 0], logit)
    torch.testing.assert_close(out["embed"], embed)
    head.eval()
    ev = head(batch)
    torch.testing.assert_close(torch.relu(ev["embed"]), ev["fused"])


def test_dropout_sits_before_the_l2_norm_and_fusion_dropout_before_the_first_layer():
    # projection dropout before normalisation: rows stay unit length in train mode
    head = _head(fusion="align", proj_dim=64, proj_dropout=0.5, fusion_dropout=0.0, dropout=0.0).train()
    out = head(_batch())
    torch.testing.assert_close(out["img_proj"].norm(dim=1), torch.ones(B, dtype=torch.float64))
    # fusion dropout = 1 zeroes the fused vector before the first Linear: fused = relu(bias), not 0
    head = _head(fusion="cross", proj_dim=4, proj_dropout=0.0, fusion_dropout=1.0, dropout=0.0).train()
    out = head(_batch())
    bias = head.pre_output.linears[0].bias
    torch.testing.assert_close(out["fused"], torch.relu(bias).expand(B, -1))


def test_published_align_row_has_about_5m_parameters():
    cfg = HATECLIPPER_SETTINGS["align"]["head_cfg"]
    with torch.device("meta"):
        head = create_head("cross", InputSpec(1024, 768), BINARY, **cfg)  # CLIP ViT-L/14 pooler widths
    n = sum(p.numel() for p in head.parameters())
    # maps 1024*1024+1024 + 768*1024+1024, 3 x (1024*1024+1024), the one output unit 1025: the reference's count
    assert n == 1024 * 1025 + 769 * 1024 + 3 * 1025 * 1024 + 1025
    assert 4.9e6 < n < 5.1e6


def test_defaults_are_the_reference_main_py():
    """gokulkarthik/hateclipper main.py (read by hand): --map_dim 768, --num_mapping_layers 1,
    --num_pre_output_layers 1, --drop_probs 0.1 0.4 0.2; the pre-output width is map_dim."""
    with torch.device("meta"):
        head = create_head("cross", InputSpec(1024, 768), BINARY)
    c = head.config
    assert (c.proj_dim, c.mapping_layers, c.pre_output_layers, c.widths()) == (768, 1, 1, [768])
    assert (c.proj_dropout, c.fusion_dropout, c.dropout, c.norm, c.fusion) == (0.1, 0.4, 0.2, "l2", "cross")
    # the reference's sizes at these defaults: image_map 1024x768, text_map 768x768, the 768^2-wide
    # pre-output Linear to 768, the output Linear(768, 1)
    n = sum(p.numel() for p in head.parameters())
    assert n == 1025 * 768 + 769 * 768 + (768 * 768 + 1) * 768 + 769
    assert c.binary_logits == 1
    assert [type(m).__name__ for m in head.img_proj.map] == ["Linear", "Dropout"]


@pytest.mark.parametrize("cfg,msg", [
    ({"fusion": "outer"},
     "cross fusion='outer' is not known; use one of: cross, align, concat, cross_nd, align_concat"),
    ({"pre_output_layers": -1}, "cross pre_output_layers=-1 must be >= 0"),
    ({"hidden": [8, 0]}, "cross hidden=[8, 0] has a non-positive width"),
    ({"embed_pass": "twice"}, "cross embed_pass='twice' is invalid; use shared or own (RGCL's separate pass)"),
    ({"binary_logits": 3}, "cross binary_logits=3 is invalid; use 1 (Hate-CLIPper's one BCE logit) or 2 (two softmax "
                           "logits)"),
])
def test_bad_options_are_one_line_errors(cfg, msg):
    with pytest.raises(FeatstoreError) as e:
        create_head("cross", InputSpec(DI, DT), BINARY, **cfg)
    assert msg in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ --image-pool / --text-pool pooler


@pytest.fixture(scope="module")
def pooler_world(tmp_path_factory):
    w = hm_store_world(tmp_path_factory.mktemp("pooler"))
    root, data, ds, st, keys, ids = w["root"], w["data"], w["ds"], w["st"], w["keys"], w["ids"]
    g = np.random.default_rng(0)
    st.write("clip-img", Recipe("clip-image"), keys, {"pooled": g.normal(size=(6, 4)).astype(np.float32),
                                                       "pooler": g.normal(size=(6, 7)).astype(np.float32)},
             key_kind="image_key", modality="image")
    st.write("clip-txt", Recipe("clip-text"), ids, {"pooled": g.normal(size=(len(ids), 4)).astype(np.float32),
                                                     "pooler": g.normal(size=(len(ids), 5)).astype(np.float32)},
             key_kind="sample_id", modality="text")
    return {"root": root, "data": data, "store": root / "store", "ds": ds, "st": st}


def test_pooler_arrays_become_the_pooled_inputs(pooler_world):
    from heads.data import build_train_data

    w = pooler_world
    d = build_train_data(w["st"], w["ds"], "clip-img", "clip-txt", "label", image_pool="pooler", text_pool="pooler")
    img = w["st"].open("clip-img").select([s.image_key for s in w["ds"].samples], ["pooler"])["pooler"]
    np.testing.assert_array_equal(d.features["img_pooled"].numpy(), img)
    assert d.input_spec().img_dim == 7 and d.input_spec().txt_dim == 5
    with pytest.raises(FeatstoreError) as e:
        build_train_data(w["st"], w["ds"], "clip-img", "clip-txt", "label", image_pool="pre_proj")
    assert str(e.value) == ("image feature set 'clip-img' has no array 'pre_proj' for --image-pool (it has pooled, "
                            "pooler); pass one of those")
    with pytest.raises(FeatstoreError) as e:
        build_train_data(w["st"], w["ds"], "clip-img", "clip-txt", "label", text_pool="pre_proj")
    assert str(e.value) == ("text feature set 'clip-txt' has no array 'pre_proj' for --text-pool (it has pooled, "
                            "pooler); pass one of those")


def test_cli_trains_hateclipper_align_on_pooler_arrays(pooler_world, tmp_path):
    import json

    w = pooler_world
    args = ["train", "--store", w["store"], "--dataset", w["data"], "--image", "clip-img", "--text", "clip-txt",
            "--image-pool", "pooler", "--text-pool", "pooler", "--head", "cross", "--set", "fusion=align",
            "--set", "proj_dim=8", "--set", "pre_output_layers=3", "--epochs", 2, "--quiet", "--device", "cpu",
            "--threads", 1, "--out", tmp_path / "run"]
    invoke(heads, args)
    cfg = json.loads(next((tmp_path / "run").rglob("config.json")).read_text())
    assert cfg["input_spec"]["img_dim"] == 7 and cfg["input_spec"]["txt_dim"] == 5
    assert cfg["head_config"]["fusion"] == "align" and cfg["head_config"]["pre_output_layers"] == 3
    bad = [a if a != "pooler" else "pre_proj" for a in args[:-1]] + [tmp_path / "run2"]
    assert one_line_error(heads, bad).startswith("error: image feature set 'clip-img' has no array 'pre_proj'")


def test_one_logit_applies_to_binary_tasks_only():
    """A multi-task cross head: the binary task's layer is one unit shown as [0, z]; a multiclass task keeps a
    logit per class; ``PredictionLayers`` refuses another logit count in one line."""
    from heads.outputs import PredictionLayers

    spec = TaskSpec([Task("hate", "binary", 2, ["0", "1"]), Task("sent", "multiclass", 3, ["a", "b", "c"])])
    torch.manual_seed(0)
    head = create_head("cross", InputSpec(DI, DT), spec, fusion="align", proj_dim=6).double().eval()
    out = head(_batch())
    z = head.outputs.layers["hate"](out["fused"])
    assert head.outputs.layers["hate"].weight.shape == (1, 6) and head.outputs.layers["sent"].weight.shape == (3, 6)
    assert torch.equal(out["logits"]["hate"], torch.cat([torch.zeros_like(z), z], 1))
    torch.testing.assert_close(out["logits"]["sent"], head.outputs.layers["sent"](out["fused"]))
    with pytest.raises(FeatstoreError) as e:
        PredictionLayers(spec, 6, binary_logits=0)
    assert str(e.value) == ("binary_logits=0 is invalid; use 1 (one BCE logit, shown as [0, z]) or 2 (two softmax "
                            "logits)")
