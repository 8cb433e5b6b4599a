"""A heads run as --init-checkpoint (heads.run_checkpoint): the same head loads whole, every tensor used, for
any head, so `--epochs 0` reproduces the run's own saved probabilities; another head or shape is refused in one
line. (Before, a vilbert run's file went through the MMF reader and half of it was left initialised.)"""
from __future__ import annotations

import csv
import dataclasses

import pytest
from safetensors.torch import load_file

from featstore.errors import FeatstoreError
from heads.experiment import train_run
from heads.train import TrainConfig, train
from tests.test_heads_train import FUSION, xor_data


@pytest.fixture(scope="module")
def data():
    return xor_data()


def _probs(path):
    with open(path) as f:
        return [float(r["proba"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("head", ["vilbert", "cross", "concat"])
def test_a_run_restarts_whole_and_evaluates_to_its_own_predictions(data, tmp_path, head):
    from heads.runs import write_predictions

    cfg = TrainConfig(head=head, head_cfg=FUSION[head], lr=3e-3, epochs=2, batch_size=32, patience=0, threads=1)
    run = tmp_path / "run"
    train_run(cfg, data, run, progress=False, plots=False)
    for given in (run / "model.safetensors", run):  # the file, or its folder
        res = train(dataclasses.replace(cfg, epochs=0, init_checkpoint=str(given)), data, progress=False)
        report = res.load_report
        assert sorted(report["used_keys"]) == sorted(load_file(str(run / "model.safetensors")))
        assert report["missing_keys"] == [] and report["ignored_keys"] == []
        write_predictions(tmp_path / "again.csv", res.task_spec, [data.ids[i] for i in data.splits["test"].tolist()],
                          res.probs["test"])
        assert _probs(tmp_path / "again.csv") == pytest.approx(_probs(run / "predictions_test.csv"), abs=1e-6)


def test_another_head_or_shape_is_one_line(data, tmp_path):
    cfg = TrainConfig(head="concat", head_cfg=FUSION["concat"], lr=3e-3, epochs=1, batch_size=32, threads=1)
    run = tmp_path / "run"
    train_run(cfg, data, run, progress=False, plots=False)
    with pytest.raises(FeatstoreError) as err:
        train(TrainConfig(head="cross", head_cfg=FUSION["cross"], epochs=0, init_checkpoint=str(run)), data,
              progress=False)
    assert str(err.value) == f"checkpoint {run} is a heads run of head 'concat', not 'cross'; pass --head concat"
    with pytest.raises(FeatstoreError) as err:
        train(dataclasses.replace(cfg, head_cfg=dict(hidden=[48], dropout=0.0), epochs=0, init_checkpoint=str(run)),
              data, progress=False)
    assert str(err.value).startswith(f"checkpoint {run} (a heads run) does not fit this head: tensor ")
    assert str(err.value).endswith(f"; pass the run's feature sets, task and head options ({run / 'config.json'})")
    assert "is (32,) there and (48,) here" in str(err.value)  # the first tensor of the changed width


def test_a_hugging_face_folder_is_not_taken_for_a_run(tmp_path):
    """config.json + model.safetensors is also what save_pretrained writes: only a run's keys make a run."""
    import json

    import torch
    from safetensors.torch import save_file

    from heads.run_checkpoint import run_folder

    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    assert run_folder(tmp_path) is None and run_folder(tmp_path / "model.safetensors") is None
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 3, "head": "concat", "input_spec": {},
                                                      "task_spec": {}}))
    assert run_folder(tmp_path) == tmp_path == run_folder(tmp_path / "model.safetensors")
