"""vilbert's packed positions (heads.models.vilbert.Layout): per-position work on real positions only gives the
dense forward's outputs and gradients; padded positions change nothing; layouts by hand."""
from __future__ import annotations

import torch

from heads.models import create_head
from heads.models.vilbert import Layout, VilbertHead
from heads.spec import InputSpec, Task, TaskSpec

DI, DT, R, T, N = 12, 16, 10, 24, 6
SPEC = TaskSpec([Task("label", "binary", 2, ["0", "1"])])
VIL = dict(hidden_size=DT, num_attention_heads=2, intermediate_size=20, num_hidden_layers=4, text_start_layer=2,
           v_hidden_size=12, v_num_attention_heads=2, v_intermediate_size=14, v_num_hidden_layers=2,
           bi_hidden_size=8, bi_num_attention_heads=2, v_biattention_id=[0, 1], t_biattention_id=[2, 3],
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, v_hidden_dropout_prob=0.0,
           v_attention_probs_dropout_prob=0.0)


def batch(seed: int = 0, garbage: float = 100.0) -> dict:
    """Rows of 2..7 real tokens of 24 and 1..6 real regions of 10 (row 2's regions have a hole, row 4's first
    region is padding); padded positions hold large garbage."""
    g = torch.Generator().manual_seed(seed)
    t_mask = torch.arange(T)[None] < torch.tensor([2, 5, 7, 3, 4, 6])[:, None]
    r_mask = torch.arange(R)[None] < torch.tensor([1, 4, 6, 2, 3, 5])[:, None]
    r_mask[2, 3] = False
    r_mask[4, 0] = False
    f = dict(txt_tokens=torch.randn(N, T, DT, generator=g), txt_mask=t_mask, img_regions=torch.randn(N, R, DI, generator=g),
             img_mask=r_mask, img_boxes=torch.rand(N, R, 5, generator=g))
    for k, m in (("txt_tokens", t_mask), ("img_regions", r_mask), ("img_boxes", r_mask)):
        f[k] = torch.where(m[..., None], f[k], garbage * torch.randn(f[k].shape, generator=g))
    return f


def head(pack: bool, **cfg) -> VilbertHead:
    torch.manual_seed(0)
    h = create_head("vilbert", InputSpec(img_dim=DI, txt_dim=DT, img_regions=R, txt_tokens=T, img_boxes=True), SPEC,
                    **dict(VIL, **cfg))
    h.pack_positions = pack
    return h


def run(h: VilbertHead, f: dict):
    out = h(f)
    (out["logits"]["label"].sum() + out["fused"].pow(2).sum()).backward()
    return out, {n: p.grad.clone() for n, p in h.named_parameters() if p.grad is not None}


def test_layout_by_hand():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    lay = Layout.of(mask, pack=True)
    assert lay.idx.tolist() == [0, 1, 4, 5, 7, 8]  # real positions and every row's position 0
    x = torch.arange(24.0).view(3, 4, 2)
    assert lay.pack(x)[:, 0].tolist() == [0.0, 2.0, 8.0, 10.0, 14.0, 16.0]
    back = lay.pad(lay.pack(x))
    assert back[0, :2].equal(x[0, :2]) and back[0, 2:].abs().sum() == 0 and back[1, 3].equal(x[1, 3])
    assert Layout.of(mask, pack=False).idx is None
    assert Layout.of(torch.ones(3, 4, dtype=torch.bool), pack=True).idx is None  # nothing to skip
    assert Layout.of(mask[:, :1] & False, pack=True).idx is None  # a row with no real position: dense
    assert Layout.of(mask, pack=False).pack(x).shape == (12, 2)


def test_packed_forward_gives_the_dense_outputs_and_gradients():
    for cfg in ({}, dict(fusion_method="concat", global_region=True)):
        f = batch()
        (a, ga), (b, gb) = run(head(False, **cfg).train(), f), run(head(True, **cfg).train(), f)
        for k in ("fused", "pooled_t", "pooled_v"):
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b["logits"]["label"], a["logits"]["label"], atol=1e-5, rtol=1e-4)
        # real positions of the sequences agree; padded ones are zeros when packed
        t_real = f["txt_mask"]
        torch.testing.assert_close(b["sequence_t"][t_real], a["sequence_t"][t_real], atol=1e-5, rtol=1e-4)
        assert b["sequence_t"][~t_real].abs().sum() == 0 and a["sequence_t"][~t_real].abs().sum() > 0
        assert ga.keys() == gb.keys() and ga
        for n in ga:
            torch.testing.assert_close(gb[n], ga[n], atol=1e-4, rtol=1e-3, msg=f"gradient of {n}")


def test_packed_outputs_ignore_padded_values_and_follow_real_ones():
    h = head(True).eval()
    with torch.no_grad():
        a, b = h(batch()), h(batch(garbage=-7.0))  # same real values, other garbage in the padding
        moved = batch()
        shift = torch.randn(moved["txt_tokens"].shape, generator=torch.Generator().manual_seed(5))
        moved["txt_tokens"] = moved["txt_tokens"] + 3 * shift * moved["txt_mask"][..., None]
        c = h(moved)
    rows = torch.tensor([0, 1, 2, 3, 5])  # row 4's region 0 is padding, which v_pooler reads (as MMF's does)
    for k in ("fused", "sequence_t", "sequence_v"):
        torch.testing.assert_close(b[k][rows], a[k][rows], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(b["sequence_v"][4, 0], a["sequence_v"][4, 0], atol=1e-3)
    # the real positions do count
    assert (c["pooled_t"] - a["pooled_t"]).abs().max() > 0.05 * a["pooled_t"].abs().max()
    assert not torch.allclose(c["sequence_t"], a["sequence_t"], atol=1e-3)


def test_cpu_packs_by_default():
    h = head(None).eval()
    seen = []
    orig = Layout.of.__func__
    Layout.of = classmethod(lambda cls, m, pack: seen.append(pack) or orig(cls, m, pack))
    try:
        with torch.no_grad():
            h(batch())
    finally:
        Layout.of = classmethod(orig)
    assert seen == [True, True]
