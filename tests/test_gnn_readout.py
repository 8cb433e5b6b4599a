"""The ``gnn`` head end to end against a float64 transcription written here from the module's documented rules:
one graph per sample over its REAL nodes only (regions, tokens, global image, global text; padded slots are no
nodes), the default edges (every pair of regions, token i <-> i+1, global image <-> tokens and regions, global
text <-> regions and tokens, global image <-> global text, self-loops but for SAGE), two layers of
``x + relu(conv(x))`` with PyG's GCNConv (``D^-1/2 A D^-1/2 (x W) + b`` over incoming edges, degrees counted at
the target, no self-loops added by the layer) or GraphSAGE's mean aggregator (Hamilton et al. 2017, PyG's
SAGEConv: the mean of the in-neighbours, the node itself not among them, through ``lin_l`` plus ``lin_r`` of
the node itself), then the readout ``[mean of the sample's node states; global image node; global
text node]``. Only the parameter values are read from the head."""
from __future__ import annotations

import pytest
import torch

from heads.models import create_head
from heads.spec import InputSpec, Task, TaskSpec

DI, DT, R, T, H = 5, 7, 4, 3, 6
REGION_MASK = [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
TOKEN_MASK = [[1, 1, 0], [1, 1, 1], [1, 0, 0]]


def _batch(pooled: bool) -> dict:
    g = torch.Generator().manual_seed(4)
    r_mask, t_mask = torch.tensor(REGION_MASK, dtype=torch.bool), torch.tensor(TOKEN_MASK, dtype=torch.bool)
    regions, tokens = torch.randn(3, R, DI, generator=g), torch.randn(3, T, DT, generator=g)
    regions[~r_mask] = 1e3 * torch.randn(int((~r_mask).sum()), DI, generator=g)  # padding: huge, must not count
    tokens[~t_mask] = -1e3
    b = dict(img_regions=regions, img_mask=r_mask, txt_tokens=tokens, txt_mask=t_mask)
    if pooled:
        b.update(img_pooled=torch.randn(3, DI, generator=g), txt_pooled=torch.randn(3, DT, generator=g))
    return b


def _edges(nr: int, nt: int, self_loops: bool = True) -> set:
    """(src, dst) of one sample's real nodes: regions 0..nr-1, tokens nr..nr+nt-1, then global image, text."""
    reg, tok = list(range(nr)), list(range(nr, nr + nt))
    gi, gt = nr + nt, nr + nt + 1
    e = {(a, b) for a in reg for b in reg if a != b}
    pairs = list(zip(tok, tok[1:])) + [(gi, n) for n in tok + reg] + [(gt, n) for n in reg + tok] + [(gi, gt)]
    e |= {(a, b) for a, b in pairs} | {(b, a) for a, b in pairs}
    return e | {(n, n) for n in reg + tok + [gi, gt]} if self_loops else e


def _reference(head, batch: dict, layer: str) -> torch.Tensor:
    p = {k: v.detach().double() for k, v in head.state_dict().items()}

    def lin(name, x, bias=True):
        return x @ p[f"{name}.weight"].T + (p[f"{name}.bias"] if bias else 0)

    rows = []
    for b in range(3):
        nr, nt = sum(REGION_MASK[b]), sum(TOKEN_MASK[b])
        regions, tokens = batch["img_regions"][b, :nr].double(), batch["txt_tokens"][b, :nt].double()
        gimg = batch["img_pooled"][b].double() if "img_pooled" in batch else regions.mean(0)
        gtxt = batch["txt_pooled"][b].double() if "txt_pooled" in batch else tokens.mean(0)
        x = torch.cat([lin("region_in", regions), lin("token_in", tokens), lin("gimg_in", gimg)[None],
                       lin("gtxt_in", gtxt)[None]])
        n = len(x)
        a = torch.zeros(n, n, dtype=torch.float64)  # a[dst, src]
        for src, dst in _edges(nr, nt, self_loops=layer != "sage"):  # sage-self-loops: with them
            a[dst, src] = 1.0
        deg = a.sum(1)
        for k in range(2):
            if layer == "gcn":
                conv = (deg.rsqrt()[:, None] * a * deg.rsqrt()[None, :]) @ lin(f"convs.{k}.lin", x, bias=False)
                conv = conv + p[f"convs.{k}.bias"]
            else:
                conv = lin(f"convs.{k}.lin_l", (a @ x) / deg[:, None]) + lin(f"convs.{k}.lin_r", x, bias=False)
            x = x + torch.relu(conv)
        rows.append(torch.cat([x.mean(0), x[n - 2], x[n - 1]]))
    return torch.stack(rows)


@pytest.mark.parametrize("layer", ["gcn", "sage", "sage-self-loops"])
@pytest.mark.parametrize("pooled", [True, False], ids=["pooled", "mean-of-nodes"])
def test_gnn_forward_and_readout_equal_the_float64_transcription(layer, pooled):
    """``sage-self-loops``: ``self_loops=True`` given, as a sage run saved before the sage default records it."""
    torch.manual_seed(0)
    loops = {"self_loops": True} if layer == "sage-self-loops" else {}
    head = create_head("gnn", InputSpec(img_dim=DI, txt_dim=DT, img_regions=R, txt_tokens=T),
                       TaskSpec([Task("hate", "binary", 2)]), hidden=H, num_layers=2, layer=layer[:4].rstrip("-"),
                       **loops).eval()
    batch = _batch(pooled)
    with torch.no_grad():
        fused = head(batch)["fused"].double()
    want = _reference(head, batch, layer)
    assert fused.shape == (3, 3 * H)
    torch.testing.assert_close(fused, want, rtol=1e-5, atol=1e-5)  # padding (+-1e3) entered no node and no mean
