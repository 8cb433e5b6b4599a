"""``image-only`` / ``text-only`` as MMF's unimodal classifier (the Hateful Memes paper's Image-Grid row).

* ``batch_norm=true`` heads against an independent float64 transcription of MMF's ``MLPClassifer`` forward
  (mmf/modules/layers.py: per hidden layer Linear, BatchNorm1d, activation, Dropout; then Linear), written
  here with plain tensor ops; the head's own parameters and running statistics (set to random values) are the
  inputs, in eval mode (running statistics) and train mode (batch statistics, dropout 0).
* ``--preset image-grid-hm`` trains end to end through the CLI on a real grid set of the tiny Hateful-Memes
  folder; its saved weights, fed to the same transcription, give the run's test probabilities.
* Bad values are one-line errors; the default (batch_norm=false) state-dict layout is the one runs saved
  before the option have, written out here from torch.nn's layer order.
"""
from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from cli.featstore_cli import main as featstore
from cli.heads_cli import main as heads
from cli_helpers import extract_args, invoke, invoke_result, make_hm_folder, one_line_error
from featstore.errors import FeatstoreError
from heads.models import create_head
from heads.models.unimodal import UnimodalConfig
from heads.presets import load_preset
from heads.spec import InputSpec, Task, TaskSpec

SPEC = TaskSpec([Task("hate", "binary", 2)])
BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # torch's BatchNorm1d defaults, which MMF's MLPClassifer uses
# MMF's Hateful Memes image.yaml numbers, converted for 8,500 train memes (written here, not read from the preset)
MMF_IMAGE_TRAIN = {"lr": 1e-5, "weight_decay": 0.0, "batch_size": 32, "epochs": 83, "warmup_ratio": 0.0909,
                   "schedule": "linear", "grad_clip": 0.0, "loss": "ce", "label_smoothing": 0.0,
                   "monitor": "auroc", "patience": 0, "optimizer": "adamw-mmf",  # MMF's adam_w
                   "eval_every": 1000}  # MMF's training.evaluation_interval
MMF_IMAGE_HEAD = {"hidden": [768, 768], "activation": "relu", "dropout": 0.5, "batch_norm": True,
                  "out_hidden": 0, "out_dropout": 0.0}


# ---------------------------------------------------------------------------------- MMF's forward, float64


def mlp_classifer_f64(x: torch.Tensor, blocks, final, train: bool):
    """MMF ``MLPClassifer.forward`` with relu and dropout 0 -> (hidden output, logits), float64.

    ``blocks``: per hidden layer ``(W, b, gamma, beta, running_mean, running_var)``; ``final``: ``(W, b)``.
    Batch norm: ``(h - mean) / sqrt(var + eps) * gamma + beta`` with the batch's mean and biased variance in
    train mode, the running ones in eval mode."""
    for w, b, gamma, beta, running_mean, running_var in blocks:
        h = x @ w.T + b
        if train:
            mean = h.sum(0) / h.shape[0]
            var = ((h - mean) ** 2).sum(0) / h.shape[0]
        else:
            mean, var = running_mean, running_var
        h = (h - mean) / torch.sqrt(var + BN_EPS) * gamma + beta
        x = torch.where(h > 0, h, torch.zeros_like(h))
    w, b = final
    return x, x @ w.T + b


def mmf_params(state: dict, n_hidden: int, task: str = "hate"):
    """The transcription's inputs from a head's state dict, by MMF's module order: hidden layer i is
    ``mlp.{4i}`` (Linear) and ``mlp.{4i+1}`` (BatchNorm1d); the last Linear is the task's prediction layer."""
    blocks = []
    for i in range(n_hidden):
        lin, bn = f"mlp.{4 * i}", f"mlp.{4 * i + 1}"
        blocks.append(tuple(state[k].double() for k in (f"{lin}.weight", f"{lin}.bias", f"{bn}.weight",
                                                        f"{bn}.bias", f"{bn}.running_mean", f"{bn}.running_var")))
    final = (state[f"outputs.layers.{task}.weight"].double(), state[f"outputs.layers.{task}.bias"].double())
    return blocks, final


def randomise(head: nn.Module, seed: int) -> None:
    """Every Linear and BatchNorm1d of ``head`` to random values: weights and biases, gammas around 1, betas,
    running means, and running variances in [0.2, 1.7]."""
    g = torch.Generator().manual_seed(seed)

    def rand(t, lo, hi):
        t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=g, dtype=torch.float64))

    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, nn.Linear):
                rand(m.weight, -0.3, 0.3)
                rand(m.bias, -1.0, 1.0)
            elif isinstance(m, nn.BatchNorm1d):
                rand(m.weight, 0.5, 1.5)
                rand(m.bias, -1.0, 1.0)
                rand(m.running_mean, -1.0, 1.0)
                rand(m.running_var, 0.2, 1.7)


CASES = {  # head, input width, hidden widths: MMF's sizes for Image-Grid, and tiny ones for both heads
    "image-grid": ("image-only", 2048, [768, 768]),
    "image-tiny": ("image-only", 10, [7, 5, 6]),
    "text-tiny": ("text-only", 9, [4]),
}


def bn_head(case: str):
    name, dim, hidden = CASES[case]
    inputs = InputSpec(img_dim=dim, txt_dim=0) if name == "image-only" else InputSpec(img_dim=0, txt_dim=dim)
    head = create_head(name, inputs, SPEC, hidden=hidden, batch_norm=True, dropout=0.0).double()
    randomise(head, seed=len(hidden))
    return head, dim, hidden


def batch_for(name: str, dim: int, rows: int = 6) -> dict:
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(dim), dtype=torch.float64) * 1.3 + 0.4
    return {"img_pooled": x} if name == "image-only" else {"txt_pooled": x}


@pytest.mark.parametrize("case", list(CASES))
def test_batch_norm_head_computes_mmfs_mlp_classifer_in_eval_and_train_mode(case):
    head, dim, hidden = bn_head(case)
    name = CASES[case][0]
    batch = batch_for(name, dim)
    x = next(iter(batch.values()))
    before = {k: v.clone() for k, v in head.state_dict().items()}
    blocks, final = mmf_params(before, len(hidden))

    for train in (False, True):  # eval first: the train-mode pass moves the running statistics
        head.train(train)
        with torch.no_grad():
            out = head(batch)
        fused, logits = mlp_classifer_f64(x, blocks, final, train=train)
        torch.testing.assert_close(out["logits"]["hate"], logits, rtol=0, atol=1e-10)
        torch.testing.assert_close(out["fused"], fused, rtol=0, atol=1e-10)

    # the train-mode pass moved the running statistics as BatchNorm1d does: momentum 0.1, unbiased variance
    h = x
    for i, (w, b, gamma, beta, rm, rv) in enumerate(blocks):
        pre = h @ w.T + b
        n = pre.shape[0]
        mean, biased = pre.sum(0) / n, ((pre - pre.sum(0) / n) ** 2).sum(0) / n
        state = head.state_dict()
        torch.testing.assert_close(state[f"mlp.{4 * i + 1}.running_mean"], (1 - BN_MOMENTUM) * rm + BN_MOMENTUM * mean,
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(state[f"mlp.{4 * i + 1}.running_var"],
                                   (1 - BN_MOMENTUM) * rv + BN_MOMENTUM * biased * n / (n - 1), rtol=0, atol=1e-12)
        normed = (pre - mean) / torch.sqrt(biased + BN_EPS) * gamma + beta
        h = torch.where(normed > 0, normed, torch.zeros_like(normed))


def test_batch_norm_blocks_are_in_mmfs_order_with_the_configured_dropout():
    head = create_head("image-only", InputSpec(img_dim=2048, txt_dim=0), SPEC, **MMF_IMAGE_HEAD)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 2
    assert [m.p for m in head.mlp if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert [(m.in_features, m.out_features) for m in head.modules() if isinstance(m, nn.Linear)] == [
        (2048, 768), (768, 768), (768, 2)]  # MLPClassifer(in_dim 2048, out_dim 2, hidden_dim 768, num_layers 2)
    bns = [m for m in head.mlp if isinstance(m, nn.BatchNorm1d)]
    assert all(m.eps == BN_EPS and m.momentum == BN_MOMENTUM and m.affine and m.track_running_stats for m in bns)


# ---------------------------------------------------------------------------------- default layout


def test_default_layout_is_unchanged_and_an_old_state_dict_loads():
    """batch_norm=false: Linear, ReLU, Dropout per width (``mlp.0``, ``mlp.3``, ...), no buffers, and a state
    dict in the layout runs saved before the option loads strictly into a head built without it."""
    di = 12
    reference = nn.ModuleDict({
        "mlp": nn.Sequential(nn.Linear(di, 512), nn.ReLU(), nn.Dropout(0.1)),  # UnimodalConfig's default hidden
        "outputs": nn.ModuleDict({"shared": nn.Dropout(0.0),
                                  "layers": nn.ModuleDict({"hate": nn.Linear(512, 2)})})})
    head = create_head("image-only", InputSpec(img_dim=di, txt_dim=0), SPEC)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert list(head.buffers()) == []

    two = nn.Sequential(nn.Linear(di, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 6), nn.ReLU(), nn.Dropout(0.0))
    old = {f"mlp.{k}": v for k, v in two.state_dict().items()}
    old.update({"outputs.layers.hate.weight": torch.randn(2, 6), "outputs.layers.hate.bias": torch.randn(2)})
    head = create_head("text-only", InputSpec(img_dim=0, txt_dim=di), SPEC, hidden=[8, 6], dropout=0.0)  # no batch_norm key
    head.load_state_dict(old)  # strict
    x = torch.randn(3, di)
    want = torch.relu(two[3](torch.relu(two[0](x)))) @ old["outputs.layers.hate.weight"].T + old["outputs.layers.hate.bias"]
    torch.testing.assert_close(head.eval()({"txt_pooled": x})["logits"]["hate"], want)


# ---------------------------------------------------------------------------------- the preset, end to end


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny Hateful-Memes folder (24 train / 12 dev / 12 test) and a real ``grid`` set (ResNet-18, random
    weights, 64 px, 2 x 2 grid: ``pooled [N, 512]``) written by `featstore extract`."""
    root = tmp_path_factory.mktemp("unimodal")
    data = make_hm_folder(root / "data")
    invoke(featstore, extract_args(data, root / "store", "grid"))
    invoke(featstore, extract_args(data, root / "store", "grid", "--set", "image_size=224",  # MMF's input
                                   "--set", "preprocess=mmf-hateful-memes", "--name", "grid-mmf"))
    return {"data": data, "store": root / "store"}


def train_args(world, out, *extra):
    return ["train", "--store", world["store"], "--dataset", world["data"], "--image", "grid", "--device", "cpu",
            "--quiet", "--threads", "1", "--out", out, *extra]


def read_probs(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "proba", "label"]
    return {r[0]: float(r[1]) for r in rows[1:]}


def test_image_grid_hm_preset_holds_mmfs_numbers():
    p = load_preset("image-grid-hm")
    assert p.head == "image-only" and p.train == MMF_IMAGE_TRAIN and p.head_cfg == MMF_IMAGE_HEAD
    assert p.data == {"task": "label"}
    assert "projects/others/unimodal/configs/hateful_memes/image.yaml" in p.source
    assert "mmf/modules/layers.py MLPClassifer" in p.source and "mmf/configs/defaults.yaml" in p.source
    assert any("frozen" in n for n in p.notes) and any("--set preprocess=mmf-hateful-memes" in n for n in p.notes)


def test_image_grid_hm_trains_through_the_cli_and_its_run_computes_mmfs_classifier(world, tmp_path):
    from safetensors.torch import load_file

    from featstore.datasets import load_dataset
    from featstore.store import open_store

    out = tmp_path / "grid-hm"
    text = invoke(heads, train_args(world, out, "--preset", "image-grid-hm", "--epochs", "2"))
    assert text.splitlines()[0].startswith("preset image-grid-hm (")
    version = open_store(world["store"]).open("grid").version
    notes = [line for line in text.splitlines() if line.startswith("note: preset")]
    assert notes == [  # the tiny set is a ResNet-18 of the whole image: both differences from MMF's input named
        f"note: preset image-grid-hm reads grid sets extracted with backbone=resnet152 (its source's input); image "
        f"set grid@{version} has backbone=resnet18: extract one with `featstore extract --extractor grid --set "
        f"backbone=resnet152` to train on that input",
        f"note: preset image-grid-hm reads grid sets extracted with preprocess=mmf-hateful-memes (its source's "
        f"input); image set grid@{version} has preprocess=whole: extract one with `featstore extract --extractor "
        f"grid --set preprocess=mmf-hateful-memes` to train on that input"]
    run = out / "seed_0"
    config = json.loads((run / "config.json").read_text())
    assert config["head"] == "image-only"
    assert config["head_config"] == MMF_IMAGE_HEAD
    assert config["train"]["head_cfg"] == MMF_IMAGE_HEAD
    assert {k: config["train"][k] for k in MMF_IMAGE_TRAIN} == {**MMF_IMAGE_TRAIN, "epochs": 2}  # explicit wins
    history = json.loads((run / "history.json").read_text())  # eval_every 1000 > this run's updates: one
    assert [row["epoch"] for row in history] == [2]  # evaluation, after the last update

    # the saved weights (best epoch, BatchNorm running statistics included) through MMF's forward
    state = load_file(str(run / "model.safetensors"))
    assert {f"mlp.{i}.running_mean" for i in (1, 5)} <= set(state)
    blocks, final = mmf_params(state, 2, task="label")
    fsv = open_store(world["store"]).open("grid")
    test = [s for s in load_dataset(world["data"]).samples if s.split == "test_seen"]
    pooled = torch.from_numpy(fsv.read("pooled")).double()[fsv.rows_of([s.image_key for s in test])]
    _, logits = mlp_classifer_f64(pooled, blocks, final, train=False)
    want = torch.softmax(logits, dim=-1)[:, 1]
    got = read_probs(run / "predictions_test.csv")
    torch.testing.assert_close(torch.tensor([got[s.id] for s in test], dtype=torch.float64), want,
                               rtol=0, atol=1e-5)

    # the run reopens (heads predict rebuilds the head from config.json) and predicts the same
    invoke(heads, ["predict", out, "--store", world["store"], "--dataset", world["data"], "--split", "test",
                   "--device", "cpu", "--out", tmp_path / "p.csv"])
    again = read_probs(tmp_path / "p.csv")
    assert again.keys() == got.keys()
    assert max(abs(again[k] - got[k]) for k in got) < 1e-6


def test_an_mmf_preprocessed_grid_set_gets_no_preprocess_note(world, tmp_path):
    out = invoke(heads, [*train_args(world, tmp_path / "o", "--preset", "image-grid-hm", "--epochs", "1"),
                         "--image", "grid-mmf"])
    notes = [line for line in out.splitlines() if line.startswith("note: preset")]
    assert len(notes) == 1 and "has backbone=resnet18" in notes[0]  # the preprocessing is MMF's: no note on it


def test_a_sweep_from_the_preset_notes_each_image_set_once(world, tmp_path):
    from featstore.store import open_store

    st = open_store(world["store"])
    out = invoke(heads, ["sweep", "--store", world["store"], "--dataset", world["data"],
                         "--image", "grid,grid-mmf,grid", "--head", "image-only", "--preset", "image-grid-hm",
                         "--grid", "epochs=1", "--seeds", "0", "--device", "cpu", "--out", tmp_path / "sw"])
    notes = [line for line in out.splitlines() if line.startswith("note: preset image-grid-hm reads grid sets")]
    grid, mmf = f"grid@{st.open('grid').version}", f"grid-mmf@{st.open('grid-mmf').version}"
    expected = [(grid, "backbone=resnet18"), (grid, "preprocess=whole"), (mmf, "backbone=resnet18")]
    assert len(notes) == 3, out
    assert all(f"image set {ref} has {option}: extract one with" in n for n, (ref, option) in zip(notes, expected))


# ---------------------------------------------------------------------------------- errors


def test_bad_batch_norm_values_are_one_line(world, tmp_path):
    o = tmp_path / "o"
    assert one_line_error(heads, train_args(world, o, "--head", "image-only", "--set", "batch_norm=yes")) == (
        "error: head 'image-only' option batch_norm='yes' must be a bool (true or false); e.g. --set batch_norm=false")
    assert one_line_error(heads, train_args(world, o, "--head", "image-only", "--set", "batch_norm=true",
                                            "--set", "hidden=[]")) == (
        "error: batch_norm=true normalises the hidden layers but hidden=[] has none; pass e.g. "
        "--set hidden='[768, 768]' or --set batch_norm=false")
    # 24 train rows in batches of 23 leave one row, which BatchNorm1d cannot train on: refused before the run
    # starts (nothing written), one error line and no traceback
    res = invoke_result(heads, train_args(world, o, "--head", "image-only", "--set", "batch_norm=true",
                                          "--epochs", "1", "--batch-size", "23"))
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.strip().splitlines()[-1] == (
        "error: head 'image-only' has BatchNorm layers and its 24 train rows at --batch-size 23 leave a last batch "
        "of one row, which BatchNorm cannot train on; pass --batch-size 24")
    assert not o.exists()
    with pytest.raises(FeatstoreError) as err:
        UnimodalConfig(batch_norm="yes").validate()  # built directly, without the CLI's type check
    assert str(err.value) == "batch_norm='yes' must be true or false; e.g. --set batch_norm=true"
