"""Run folders carry ``format_version`` in config.json: written as 3, a config.json without one still loads
(version 1), a newer one is refused in one line naming the run and the fix, before anything is rebuilt.
Version 1's "visualbert" head (now ``singlestream``) reopens under its new name with the same outputs, and a
cross head before version 3 (two logits, where cross now has Hate-CLIPper's one) with its two logits."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from featstore.errors import FeatstoreError
from heads.experiment import evaluate_run, run_feature_refs, train_run
from heads.runs import load_run
from heads.train import TrainConfig
from test_heads_train import FAST, xor_data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = xor_data()
    run_dir = tmp_path_factory.mktemp("fmt") / "run"
    train_run(TrainConfig(head="concat", head_cfg=dict(hidden=[8], dropout=0.0), **{**FAST, "epochs": 1}), data,
              run_dir, progress=False, plots=False)
    return run_dir, data


def _rewrite(run_dir, **changes):
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            config.pop(k)
        else:
            config[k] = v
    path.write_text(json.dumps(config))
    return path.read_text()


def test_config_json_says_format_version_3(run):
    run_dir, _ = run
    assert json.loads((run_dir / "config.json").read_text())["format_version"] == 3
    _, config = load_run(run_dir)
    assert config["format_version"] == 3


def test_a_config_json_without_format_version_loads_as_version_1(run, tmp_path):
    run_dir, data = run
    saved = (run_dir / "config.json").read_text()
    try:
        _rewrite(run_dir, format_version=None)
        model, config = load_run(run_dir)
        assert "format_version" not in config
        weights = load_file(str(run_dir / "model.safetensors"))
        assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
        assert set(evaluate_run(run_dir, data, "test")) >= {"label/auroc", "label/accuracy"}
    finally:
        (run_dir / "config.json").write_text(saved)


@pytest.mark.parametrize("version", [4, 7])
def test_a_newer_format_version_is_refused_in_one_line(run, version):
    run_dir, data = run
    saved = (run_dir / "config.json").read_text()
    try:
        written = _rewrite(run_dir, format_version=version)
        want = (f"run {run_dir} was written in run format {version}, newer than this featstore-heads reads (3); "
                "upgrade featstore-heads (pip install -U featstore-heads)")
        for call in (lambda: load_run(run_dir), lambda: evaluate_run(run_dir, data, "test"),
                     lambda: run_feature_refs(run_dir, None, None)):
            with pytest.raises(FeatstoreError) as err:
                call()
            assert str(err.value) == want
        assert (run_dir / "config.json").read_text() == written  # nothing rewritten
    finally:
        (run_dir / "config.json").write_text(saved)


@pytest.mark.parametrize("version", ["1", 0, 1.5, True])
def test_a_format_version_that_is_not_a_whole_number_is_refused(run, version):
    run_dir, _ = run
    saved = (run_dir / "config.json").read_text()
    try:
        _rewrite(run_dir, format_version=version)
        with pytest.raises(FeatstoreError) as err:
            load_run(run_dir)
        assert str(err.value) == (f"{run_dir / 'config.json'} has format_version {version!r}, not a whole number "
                                  ">= 1; re-run `heads train` to rewrite it")
    finally:
        (run_dir / "config.json").write_text(saved)


def test_a_version_1_visualbert_run_reopens_as_singlestream(tmp_path):
    """Before version 2 "visualbert" named the head that is now ``singlestream``: such a run (written here by
    training a singlestream run and putting back what version 1 wrote) reopens, evaluates and predicts the same."""
    from test_trim import CONFIGS, _data

    data = _data()
    run_dir = tmp_path / "run"
    cfg = TrainConfig(head="singlestream", head_cfg=CONFIGS["singlestream"][1], epochs=1, batch_size=4, patience=0,
                      threads=1)
    train_run(cfg, data, run_dir, progress=False, plots=False)
    now = evaluate_run(run_dir, data, "dev")
    config = json.loads((run_dir / "config.json").read_text())
    config["format_version"], config["head"], config["train"]["head"] = 1, "visualbert", "visualbert"
    (run_dir / "config.json").write_text(json.dumps(config))
    model, reread = load_run(run_dir)
    assert type(model).__name__ == "SingleStreamHead" and reread["head"] == "singlestream"
    assert evaluate_run(run_dir, data, "dev") == now
    config["format_version"] = 2  # written by this version, "visualbert" is MMF's VisualBERT: the weights do not fit
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(FeatstoreError, match=r"^head .visualbert. has no option .dropout.; its options are: "):
        load_run(run_dir)


@pytest.mark.parametrize("head", ["cross", "refnet"])
def test_a_version_2_cross_run_reopens_with_its_two_logits(tmp_path, head):
    """Before version 3 a cross head (alone or under refnet) had two free logits: such a run (trained here with
    binary_logits=2, then written back as version 2 wrote it, without the option) reopens with two logits and
    evaluates the same; a version-3 config without the option means one logit, which those weights do not fit."""
    data = xor_data()
    cross = dict(fusion="align", proj_dim=4, binary_logits=2)
    head_cfg = cross if head == "cross" else dict(base="cross", base_cfg=cross)
    run_dir = tmp_path / "run"
    train_run(TrainConfig(head=head, head_cfg=head_cfg, **{**FAST, "epochs": 1}), data, run_dir, progress=False,
              plots=False)
    now = evaluate_run(run_dir, data, "test")
    config = json.loads((run_dir / "config.json").read_text())
    inner = config["head_config"] if head == "cross" else config["head_config"]["base_cfg"]
    assert inner.pop("binary_logits") == 2
    config["format_version"] = 2
    (run_dir / "config.json").write_text(json.dumps(config))
    model, reread = load_run(run_dir)
    base = model if head == "cross" else model.base
    assert base.outputs.layers["label"].weight.shape[0] == 2 and base.config.binary_logits == 2
    assert evaluate_run(run_dir, data, "test") == now
    config["format_version"] = 3
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(FeatstoreError) as err:
        load_run(run_dir)
    layer = "outputs.layers.label.weight" if head == "cross" else "base.outputs.layers.label.weight"
    assert str(err.value).startswith(
        f"{run_dir / 'model.safetensors'} does not fit head {head!r} (Error(s) in loading state_dict for "
        f"{'CrossHead' if head == 'cross' else 'RefnetHead'}: size mismatch for {layer}: copying a param with shape "
        "torch.Size([2, 4]) from checkpoint, the shape in current model is torch.Size([1, 4]).")
