"""featstore.devices.check_device: the one device validator behind extraction's / heads' --device, heads sweep's
device list and TrainConfig.device; each caller's one-line messages, byte for byte."""
from __future__ import annotations

import pytest
import torch

from featstore.devices import check_device, resolve_device
from featstore.errors import FeatstoreError
from heads.data import TrainData
from heads.spec import Task, TaskSpec
from heads.sweep import sweep_devices
from heads.train import TrainConfig
from heads.train import resolve_device as train_device


def _cpu_data() -> TrainData:
    spec = TaskSpec([Task("label", "binary", 2, ["0", "1"])])
    return TrainData({"img_pooled": torch.zeros(4, 3)}, [f"s{i}" for i in range(4)], {"label": torch.tensor([0, 1, 0, 1])},
                     {"train": torch.arange(4)}, spec)


def _train(device: str) -> str:
    return train_device(TrainConfig(device=device), _cpu_data()).device


NOT_A_DEVICE = [
    (resolve_device, "tpu", "--device 'tpu' is not a device this toolkit runs on; pass auto, cpu, cuda or cuda:N"),
    (resolve_device, "cuda:01", "--device 'cuda:01' is not a device this toolkit runs on; pass auto, cpu, cuda or "
                                "cuda:N"),
    (sweep_devices, "cpu,tpu:0", "--device 'tpu:0' is not a device; pass auto, cpu, cuda, cuda:N or a comma list"),
    (sweep_devices, "cpu, CUDA", "--device 'CUDA' is not a device; pass auto, cpu, cuda, cuda:N or a comma list"),
    (_train, "gpu0", "train device='gpu0' is not a device; pass auto, cpu or cuda[:N]"),
    (_train, "cuda:x", "train device='cuda:x' is not a device; pass auto, cpu or cuda[:N]"),
]


@pytest.mark.parametrize("call, text, message", NOT_A_DEVICE)
def test_not_a_device_is_each_callers_line(call, text, message):
    with pytest.raises(FeatstoreError) as e:
        call(text)
    assert str(e.value) == message


NO_GPU = [
    (resolve_device, "cuda:1", "--device cuda:1 asked for CUDA but no GPU is visible; use --device cpu"),
    (sweep_devices, "cpu,cuda", "--device cuda asked for CUDA but no GPU is visible; use --device cpu"),
    # training compares with where the data is (on the CPU here), whether or not a GPU is visible
    (_train, "cuda:0", "train device='cuda:0' but the training data is on cpu; load the data with device='cuda:0' "
                       "(--device) or pass device='auto'"),
]


@pytest.mark.parametrize("call, text, message", NO_GPU)
def test_cuda_without_a_gpu_is_each_callers_line(call, text, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FeatstoreError) as e:
        call(text)
    assert str(e.value) == message


def test_valid_devices_pass_as_given(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for text in ("cpu", "cuda", "cuda:0", "cuda:12"):
        assert check_device(text, "bad {device}", "no gpu {device}") == text
    assert resolve_device(" cuda:3 ") == "cuda:3" and resolve_device("auto", local_rank=2) == "cuda:2"
    assert sweep_devices("cuda:0, cuda:1,") == ["cuda:0", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("cuda:5", "bad {device}") == "cuda:5"  # no GPU check unless a message for it is given
    assert resolve_device("auto", local_rank=2) == "cpu" and sweep_devices("auto") == ["cpu"]
    assert _train("cpu") == "cpu" and _train("auto") == "cpu"
