"""ReFNet as published: the paper's defaults, and its multi-similarity term against a float64 hand transcription
of the formula (Wang et al. 2019, in ReFNet's / MMF's naming: alpha weights negatives, beta positives)."""
from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from featstore.errors import FeatstoreError
from heads.losses import multi_similarity_loss
from heads.models import create_head
from heads.models.refnet import RefnetConfig
from heads.spec import InputSpec, Task, TaskSpec

BIN = TaskSpec([Task("hate", "binary", 2)])


def ms_by_hand(emb, y, alpha, beta, base, eps):
    """The MS loss written out pair by pair in float64 (python lists, no masks). ``y`` class indices, or genre
    sets as lists of 0/1 (MMF's ``MSLoss(is_multilabel=True)`` rule: a shared genre makes a positive pair)."""
    e = emb.double()
    e = e / e.norm(dim=1, keepdim=True)
    s = (e @ e.T).tolist()
    y = y.tolist()

    def alike(a, b):
        return any(u and v for u, v in zip(a, b)) if isinstance(a, list) else a == b

    total = 0.0
    for i in range(len(y)):
        # MMF's MSLoss keeps a positive only below cosine 1 - 1e-5 ("remove itself"): a duplicate is none
        pos = [s[i][j] for j in range(len(y)) if j != i and alike(y[j], y[i]) and s[i][j] < 1 - 1e-5]
        neg = [s[i][j] for j in range(len(y)) if not alike(y[j], y[i])]
        if not pos or not neg:
            continue
        if eps is not None:
            pos, neg = [v for v in pos if v - eps < max(neg)], [v for v in neg if v + eps > min(pos)]
        total += math.log(1 + sum(math.exp(-beta * (v - base)) for v in pos)) / beta
        total += math.log(1 + sum(math.exp(alpha * (v - base)) for v in neg)) / alpha
    return total / len(y)


def planted(seed=0, n=12, d=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3][:n])  # class 3: an anchor with no positive
    centres = torch.randn(4, d, generator=g)
    return centres[y] + 0.8 * torch.randn(n, d, generator=g), y


def test_defaults_are_the_papers():
    c = RefnetConfig()
    assert (c.gamma_img, c.gamma_txt, c.zeta) == (0.1, 0.1, 0.25)
    assert (c.ms_alpha, c.ms_beta, c.ms_base, c.ms_epsilon) == (50.0, 2.0, 0.5, 0.1)


@pytest.mark.parametrize("eps", [0.1, None])
def test_ms_loss_matches_hand_transcription(eps):
    emb, y = planted()
    got = multi_similarity_loss(emb, y, alpha=50, beta=2, base=0.5, epsilon=eps).item()
    assert got == pytest.approx(ms_by_hand(emb, y, 50, 2, 0.5, eps), rel=1e-5, abs=1e-6)
    assert got > 0


def test_a_duplicate_row_is_no_positive():
    """Rows 0 and 1 the same vector, same class: MMF drops the pair (cosine >= 1 - 1e-5) before mining and
    before the no-positive rule; computed in float64 for float64 input."""
    emb, y = planted()
    emb = emb.double()
    emb[1] = 3.0 * emb[0]
    got = multi_similarity_loss(emb, y, alpha=50, beta=2, base=0.5, epsilon=0.1).item()
    assert got == pytest.approx(ms_by_hand(emb, y, 50, 2, 0.5, 0.1), rel=1e-12, abs=1e-14)
    lone = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # row 1 is row 0, scaled
    assert multi_similarity_loss(lone, torch.tensor([0, 0, 1])).item() == 0.0  # neither has a positive left


def test_ms_loss_under_bf16_autocast_is_the_float32_loss():
    """Under autocast (heads train's amp) the cosines stay float32: in bf16 rows at cosine 0.9996 read as 1.0 and the
    duplicate rule (cosine >= 1 - 1e-5) would drop them as positives."""
    emb = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.03, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # cosine 0.99955
    y = torch.tensor([0, 0, 1, 2])
    want = ms_by_hand(emb, y, 50, 2, 0.5, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = multi_similarity_loss(emb, y, epsilon=None).item()
    assert want > 0.05 and got == pytest.approx(want, rel=1e-5)


def test_ms_mining_matters():
    emb, y = planted()
    mined, every = ms_by_hand(emb, y, 50, 2, 0.5, 0.1), ms_by_hand(emb, y, 50, 2, 0.5, None)
    assert abs(mined - every) > 1e-3  # the planted batch has pairs that mining drops


def test_paper_setting_is_pml_with_alpha_beta_swapped():
    emb, y = planted(seed=3)
    ours = multi_similarity_loss(emb, y, alpha=50, beta=2, base=0.5, epsilon=0.1)
    miner = pml_miners.MultiSimilarityMiner(epsilon=0.1)
    pml_swapped = pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(emb, y, miner(emb, y))
    pml_literal = pml_losses.MultiSimilarityLoss(alpha=50, beta=2, base=0.5)(emb, y, miner(emb, y))
    torch.testing.assert_close(ours, pml_swapped, rtol=1e-5, atol=1e-6)
    assert abs(ours.item() - pml_literal.item()) > 1e-2


def test_ms_loss_gradient_and_degenerate_batches():
    emb, y = planted()
    emb.requires_grad_(True)
    multi_similarity_loss(emb, y).backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    assert multi_similarity_loss(torch.randn(3, 4), torch.tensor([1, 1, 1])).item() == 0.0  # no negatives
    assert multi_similarity_loss(torch.randn(0, 4), torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_head_losses_use_paper_weights():
    torch.manual_seed(0)
    inputs = InputSpec(img_dim=6, txt_dim=5)
    head = create_head("refnet", inputs, BIN, base="concat", base_cfg=dict(hidden=[8], dropout=0.0),
                       refiner_hidden=[6]).eval()
    g = torch.Generator().manual_seed(1)
    batch = dict(img_pooled=torch.randn(8, 6, generator=g), txt_pooled=torch.randn(8, 5, generator=g))
    out = head(batch)
    y = torch.tensor([0, 1, 1, -1, 0, 1, 0, 0])
    losses = head.extra_losses(out, batch, {"hate": y})
    keep = y >= 0
    assert losses["ms"].item() == pytest.approx(0.25 * ms_by_hand(out["fused"][keep], y[keep], 50, 2, 0.5, 0.1),
                                                rel=1e-5, abs=1e-7)

    def cos_gap(r, h):
        r, h = r.double(), h.double()
        return (1 - (r * h).sum(-1) / (r.norm(dim=-1) * h.norm(dim=-1))).mean().item()

    expected = 0.1 * cos_gap(out["refined"]["img"], batch["img_pooled"]) + 0.1 * cos_gap(
        out["refined"]["txt"], batch["txt_pooled"])
    assert losses["refiner"].item() == pytest.approx(expected, rel=1e-5)


def test_multilabel_first_task_pairs_rows_by_shared_genres():
    """refnet-mmimdb's setting: MM-IMDB's genres are the first task; the MS term pairs movies sharing a genre as
    positives (each anchor by its own genres) and leaves unlabelled (NaN) rows out."""
    torch.manual_seed(0)
    genres = TaskSpec([Task("genres", "multilabel", 3, ["Drama", "Comedy", "Horror"])])
    head = create_head("refnet", InputSpec(img_dim=6, txt_dim=5), genres, base="concat", zeta=0.1,
                       base_cfg=dict(hidden=[8], dropout=0.0), refiner_hidden=[6]).eval()
    g = torch.Generator().manual_seed(2)
    batch = dict(img_pooled=torch.randn(7, 6, generator=g), txt_pooled=torch.randn(7, 5, generator=g))
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]], dtype=torch.float)
    y[6] = float("nan")
    out = head(batch)
    got = head.extra_losses(out, batch, {"genres": y})["ms"].item()
    want = 0.1 * ms_by_hand(out["fused"][:6], y[:6].long(), 50, 2, 0.5, 0.1)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7) and got > 0
    # not the loss of the argmax classes (Drama / Comedy / Horror as one label each)
    assert got != pytest.approx(0.1 * ms_by_hand(out["fused"][:6], y[:6].argmax(1), 50, 2, 0.5, 0.1), rel=1e-3)


@pytest.mark.parametrize("opt, msg", [
    (dict(ms_alpha=0), "refnet ms_alpha=0 must be > 0; the paper uses ms_alpha=50 ms_beta=2"),
    (dict(ms_beta=-1.0), "refnet ms_beta=-1.0 must be > 0; the paper uses ms_alpha=50 ms_beta=2"),
    (dict(ms_epsilon=-0.5), "refnet ms_epsilon=-0.5 must be >= 0, or null to mine no pairs; the paper uses 0.1"),
])
def test_bad_ms_options(opt, msg):
    with pytest.raises(FeatstoreError) as e:
        create_head("refnet", InputSpec(img_dim=6, txt_dim=5), BIN, base="concat", **opt)
    assert str(e.value) == msg


# -- benchmarks/label_efficiency.py: the task and its one-line errors -------------------------------------------
def _bench():
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("label_efficiency")


def test_label_efficiency_task_needs_both_modalities():
    le = _bench()
    data = le.make_task(le.Sizes(n_train=400), torch.device("cpu"))
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 400, "val": 100, "test": 200}
    y = data.targets["label"].double()
    # each modality alone is uninformative: the correlation of the label with any feature is at noise level
    for key in ("img_pooled", "txt_pooled"):
        x = data.features[key].double()
        corr = ((x - x.mean(0)) * (y - y.mean())[:, None]).mean(0) / (x.std(0) * y.std())
        assert corr.abs().max() < 0.15  # (an informative feature would correlate at ~0.3 or more)
    cfg = le.run_config("refnet+pre10", "concat", 0.05, 1, le.Sizes(), torch.device("cpu"), 1)
    assert (cfg.head, cfg.pretrain_epochs, cfg.label_fraction, cfg.seed) == ("refnet", 10, 0.05, 1)
    assert le.run_config("base", "concat", 1.0, 0, le.Sizes(), torch.device("cpu"), 1).label_fraction is None


@pytest.mark.parametrize("argv, msg", [
    (["--fractions", "0.1,2"], "--fractions '0.1,2': 2.0 is outside (0, 1]; pass e.g. 0.05,0.1,0.2,1"),
    (["--pretrain-epochs", "0"], "--pretrain-epochs '0' needs positive counts; pass e.g. 2,10"),
    (["--seeds", "a"], "--seeds 'a' is not a comma-separated list of numbers; pass e.g. --seeds 0,1,2"),
    (["--base", "vilbert"], "--base 'vilbert' is not benchmarked here; choose from concat, cross"),
])
def test_label_efficiency_bad_options(argv, msg):
    with pytest.raises(FeatstoreError) as e:
        _bench().main(["--device", "cpu"] + argv)
    assert str(e.value) == msg
