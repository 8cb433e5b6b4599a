"""``heads.optimizers``: ``MMFAdamW`` (MMF's ``adam_w``, transformers 3's AdamW with ``correct_bias=True``) against a
float64 numpy transcription of that update written here from transformers' ``AdamW.step``, under heads' warmup
schedule, two groups of different weight decay and a parameter without a gradient on some steps;
``make_optimizer("adamw")`` is still torch's AdamW; the two differ in the first steps on tiny gradients;
``--optimizer`` reaches a run's config.json, the MMF presets set ``adamw-mmf`` and a run without the field loads."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.heads_cli import main as heads
from cli_helpers import build_world, invoke
from featstore.errors import FeatstoreError
from heads.optimizers import MMFAdamW, make_optimizer
from heads.presets import load_preset
from heads.runs import load_run
from heads.schedule import build_scheduler
from heads.train import TrainConfig

BETAS = (0.9, 0.999)
TOTAL, WARMUP = 10, 3  # build_scheduler(..., TOTAL, 0.3, "linear"): lr factor s / 3, then (10 - s) / 7


def warmup_linear(s):
    return s / WARMUP if s < WARMUP else (TOTAL - s) / (TOTAL - WARMUP)


def transformers_adamw_numpy(start, grads, lrs, decay, eps, betas=BETAS):
    """transformers' AdamW(correct_bias=True), one parameter at a time in float64: a parameter whose gradient is
    None at a step is left alone (its own step count t does not advance). ``grads``: one {name: array | None}
    per step; ``lrs``: the lr of each step; ``decay``: {name: weight decay}."""
    b1, b2 = betas
    p = {k: np.array(v, np.float64) for k, v in start.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    t = dict.fromkeys(p, 0)
    for g_step, lr in zip(grads, lrs):
        for k, g in g_step.items():
            if g is None:
                continue
            t[k] += 1
            m[k] = b1 * m[k] + (1 - b1) * g
            v2[k] = b2 * v2[k] + (1 - b2) * g * g
            step_size = lr * math.sqrt(1 - b2 ** t[k]) / (1 - b1 ** t[k])
            p[k] = p[k] - step_size * m[k] / (np.sqrt(v2[k]) + eps)  # eps on the uncorrected sqrt(v)
            p[k] = p[k] - lr * decay[k] * p[k]  # decoupled decay last, on the updated p
    return p


def two_groups(start, decay):
    params = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in start.items()}
    groups = [{"params": [params["a"], params["b"]], "weight_decay": decay["a"]},
              {"params": [params["c"]], "weight_decay": decay["c"]}]
    return params, groups


def drive(opt, params, grads, scheduler=None):
    """Set each step's gradients, step, record the lr each step used."""
    lrs = []
    for g_step in grads:
        for k, g in g_step.items():
            params[k].grad = None if g is None else torch.tensor(g, dtype=torch.float64)
        lrs.append([group["lr"] for group in opt.param_groups])
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return lrs


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    start = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5), "c": rng.normal(size=(2, 2))}
    grads = [{k: rng.normal(size=v.shape) for k, v in start.items()} for _ in range(TOTAL)]
    grads[0]["b"] = None  # b starts one step late: its own t lags the others'
    for s in (2, 5, 6):
        grads[s]["c"] = None
    return start, grads, {"a": 0.1, "b": 0.1, "c": 0.0}


def test_mmf_adamw_matches_transformers_update_under_heads_warmup_schedule(problem):
    start, grads, decay = problem
    params, groups = two_groups(start, decay)
    opt = MMFAdamW(groups, lr=0.05, eps=1e-8)
    lrs = drive(opt, params, grads, build_scheduler(opt, TOTAL, WARMUP / TOTAL, "linear"))
    want_lrs = [0.05 * warmup_linear(s) for s in range(TOTAL)]
    assert [lr for lr, _ in lrs] == pytest.approx(want_lrs, abs=1e-15) and all(a == b for a, b in lrs)
    assert want_lrs[0] == 0.0 and len(set(want_lrs)) > 5  # lr 0 on the first step, then changing
    want = transformers_adamw_numpy(start, grads, want_lrs, decay, eps=1e-8)
    for k, v in want.items():
        np.testing.assert_allclose(params[k].detach().numpy(), v, rtol=1e-12, atol=1e-14, err_msg=k)
        assert not np.allclose(v, start[k]), k
    assert opt.state[params["a"]]["step"] == TOTAL and opt.state[params["b"]]["step"] == TOTAL - 1
    assert opt.state[params["c"]]["step"] == TOTAL - 3


def test_foreach_buckets_give_the_per_tensor_loops_numbers():
    """The default foreach update (one call per op over the tensors of a step count) against foreach=False, bit
    for bit, with a parameter skipped on some steps so its step count differs (two buckets)."""
    g = torch.Generator().manual_seed(4)
    start = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g), torch.randn(2, 2, generator=g)]
    grads = [[torch.randn_like(t) * 10 ** -k for t in start] for k in range(6)]
    runs = []
    for foreach in (True, False):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = MMFAdamW([{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "weight_decay": 0.0}], lr=1e-2,
                       foreach=foreach)
        for step, gs in enumerate(grads):
            for k, (p, gr) in enumerate(zip(ps, gs)):
                p.grad = None if (k == 1 and step in (0, 3)) else gr.clone()
            opt.step()
        assert [opt.state[p]["step"] for p in ps] == [6, 4, 6]
        runs.append(ps)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_adamw_kind_is_torchs_adamw(problem):
    start, grads, decay = problem
    params, groups = two_groups(start, decay)
    opt = make_optimizer("adamw", groups, 0.05)
    assert type(opt) is torch.optim.AdamW
    direct_params, direct_groups = two_groups(start, decay)
    direct = torch.optim.AdamW(direct_groups, lr=0.05)
    drive(opt, params, grads, build_scheduler(opt, TOTAL, WARMUP / TOTAL, "linear"))
    drive(direct, direct_params, grads, build_scheduler(direct, TOTAL, WARMUP / TOTAL, "linear"))
    for k in start:
        assert torch.equal(params[k], direct_params[k]), k
    assert [(g["eps"], g["betas"], g["weight_decay"]) for g in opt.param_groups] == [(1e-8, BETAS, 0.1),
                                                                                      (1e-8, BETAS, 0.0)]


def test_adamw_mmf_kind_is_mmfs_with_eps_1e8():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = make_optimizer("adamw-mmf", [{"params": [p], "weight_decay": 0.01}], 1e-5)
    assert type(opt) is MMFAdamW
    g = opt.param_groups[0]
    assert (g["lr"], g["eps"], g["betas"], g["weight_decay"], g["correct_bias"]) == (1e-5, 1e-8, BETAS, 0.01, True)


def test_the_two_differ_in_the_first_steps_on_tiny_gradients():
    """eps 1e-8 against gradients of 1e-7 .. 2e-7: torch's first step moves 0.91 .. 0.95 lr, transformers' 0.24
    .. 0.39 lr (its eps is not divided by sqrt(1 - beta2^t)); the numpy transcription follows MMFAdamW."""
    rng = np.random.default_rng(1)
    start = {"a": rng.normal(size=8)}
    grads = [{"a": 1e-7 * (1.0 + rng.random(8))} for _ in range(3)]
    moved = {}
    for kind in ("adamw", "adamw-mmf"):
        p = torch.nn.Parameter(torch.tensor(start["a"], dtype=torch.float64))
        opt = make_optimizer(kind, [{"params": [p], "weight_decay": 0.0}], 1e-3)
        path = []
        for g in grads:
            p.grad = torch.tensor(g["a"], dtype=torch.float64)
            opt.step()
            path.append(start["a"] - p.detach().numpy())
        moved[kind] = np.array(path)
    ratio = moved["adamw-mmf"] / moved["adamw"]
    assert (ratio < 0.5).all(), ratio  # every one of the first three steps
    want = [start["a"] - transformers_adamw_numpy(start, grads[:n], [1e-3] * n, {"a": 0.0}, eps=1e-8)["a"]
            for n in (1, 2, 3)]
    np.testing.assert_allclose(moved["adamw-mmf"], np.array(want), rtol=1e-12)


def test_unknown_kind_and_sparse_gradients_are_one_line_errors():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(FeatstoreError) as err:
        make_optimizer("sgd", [{"params": [p], "weight_decay": 0.0}], 1e-3)
    assert str(err.value) == "optimizer 'sgd' is unknown; pass --optimizer adamw or adamw-mmf"
    with pytest.raises(FeatstoreError) as err:
        TrainConfig(optimizer="adam_w").validate()
    assert str(err.value) == "optimizer 'adam_w' is unknown; pass --optimizer adamw or adamw-mmf"
    emb = torch.nn.Embedding(4, 3, sparse=True)
    opt = MMFAdamW(emb.parameters(), lr=1e-3)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(FeatstoreError, match="^MMFAdamW does not take sparse gradients; ") as err:
        opt.step()
    assert "\n" not in str(err.value)


def test_mmf_presets_set_adamw_mmf_and_the_others_do_not():
    mmf = ["vilbert-hm", "vilbert-hm-direct", "vilbert-hm-detectron16", "vilbert-hm-dinov2-ls", "visualbert-hm",
           "visualbert-hm-direct", "mmbt-grid-hm", "mmbt-region-hm", "text-bert-hm", "concat-bert-hm",
           "late-fusion-hm", "image-grid-hm", "image-region-hm", "mmbt-grid-mmimdb",
           "vilbert-mmimdb", "visualbert-mmimdb"]
    assert load_preset("mmbt-grid-hm").train["optimizer"] == "adamw-mmf"
    for name in mmf:
        preset = load_preset(name)
        assert preset.train["optimizer"] == "adamw-mmf", name
        assert not any("torch's default" in n for n in preset.notes), name
    for name in ("hateclipper-cross", "hateclipper-align", "rgcl", "vilbert-small", "refnet-hm"):
        assert "optimizer" not in load_preset(name).train, name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("optimizers_cli"))


def test_heads_train_records_the_optimizer_and_a_run_without_it_loads(world, tmp_path):
    out = tmp_path / "mmf"
    invoke(heads, ["train", "--store", world["store"], "--dataset", world["data"], "--image", "grid", "--text",
                   "bert", "--head", "concat", "--epochs", 1, "--quiet", "--device", "cpu", "--threads", 1,
                   "--optimizer", "adamw-mmf", "--out", out])
    config_path = out / "seed_0" / "config.json"
    assert json.loads(config_path.read_text())["train"]["optimizer"] == "adamw-mmf"
    old = tmp_path / "old"  # a run written before the field existed
    shutil.copytree(out / "seed_0", old)
    config = json.loads((old / "config.json").read_text())
    del config["train"]["optimizer"]
    (old / "config.json").write_text(json.dumps(config))
    _, loaded = load_run(old)
    assert "optimizer" not in loaded["train"] and TrainConfig.from_dict(loaded["train"]).optimizer == "adamw"
    ev = json.loads(invoke(heads, ["eval", old, "--store", world["store"], "--dataset", world["data"],
                                   "--device", "cpu"]))
    assert ev["run"] == str(old) and ev["metrics"]


def test_heads_train_refuses_an_unknown_optimizer(world, tmp_path):
    """click refuses it (a usage error, exit 2) before any data is read or --out is made."""
    out = CliRunner().invoke(heads, ["train", "--store", str(world["store"]), "--dataset", str(world["data"]),
                                     "--out", str(tmp_path / "x"), "--optimizer", "adam_w"])
    assert out.exit_code == 2 and "'adam_w' is not one of 'adamw', 'adamw-mmf'" in out.output
    assert not (tmp_path / "x").exists()
