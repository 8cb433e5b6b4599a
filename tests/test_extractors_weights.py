"""resolve_weights (local paths, the Hugging Face cache layout, one-line misses), fingerprints, registry."""
import hashlib

import pytest
import torch

from featstore.errors import FeatstoreError
from featstore.extractors import EXTRACTORS, create_extractor, list_extractors
from featstore.extractors.weights import (demo_text_dir, fingerprint_files, fingerprint_state_dict,
                                          load_efficientnet_lite0_demo, resolve_weights)


def _fake_hf_cache(root, repo="someorg/tiny-model", files=None):
    """The documented huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<rev>/...}."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    for name, data in (files or {"config.json": b"{}", "model.safetensors": b"xx"}).items():
        (snap / name).write_bytes(data)
    return snap


def test_resolve_local_dir_file_and_hf_cache(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "w.pth").write_bytes(b"abc")
    assert resolve_weights(str(d), "dir") == d
    assert resolve_weights(str(d), "file") == d / "w.pth"
    assert resolve_weights(str(d / "w.pth"), "file") == d / "w.pth"
    cache = tmp_path / "hub"
    snap = _fake_hf_cache(cache)
    assert resolve_weights("someorg/tiny-model", "dir", cache_dir=str(cache)).resolve() == snap.resolve()
    assert resolve_weights("someorg/tiny-model", "file", cache_dir=str(cache)).name == "model.safetensors"


def test_resolve_misses_are_one_line_with_the_fix(tmp_path):
    with pytest.raises(FeatstoreError) as e:
        resolve_weights("facebook/dinov2-large", "dir", cache_dir=str(tmp_path / "empty"))
    msg = str(e.value)
    assert "\n" not in msg and "huggingface-cli download facebook/dinov2-large" in msg and "--weights DIR" in msg
    assert str(tmp_path / "empty") in msg
    with pytest.raises(FeatstoreError, match="does not exist"):
        resolve_weights(str(tmp_path / "nowhere" / "x.pth"), "file")
    (tmp_path / "f.pth").write_bytes(b"x")
    with pytest.raises(FeatstoreError, match="config.json"):
        resolve_weights(str(tmp_path / "f.pth"), "dir")
    (tmp_path / "noconf").mkdir()
    with pytest.raises(FeatstoreError, match="config.json"):
        resolve_weights(str(tmp_path / "noconf"), "dir")
    with pytest.raises(FeatstoreError, match="exactly one weight file"):
        resolve_weights(str(tmp_path / "noconf"), "file")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FeatstoreError, match="not a state dict"):
        resolve_weights(str(tmp_path / "notes.txt"), "file")
    with pytest.raises(FeatstoreError, match="no weights"):
        resolve_weights("", "dir")


def test_fingerprints_against_hashlib(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"hello")
    assert fingerprint_files(tmp_path / "a.bin") == "files:sha256:" + hashlib.sha256(b"hello").hexdigest()
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_bytes(b"{}")
    (d / "sub" / "w.bin").write_bytes(b"123")
    ref = hashlib.sha256(b"config.json\x00{}" + b"sub/w.bin\x00" + b"123").hexdigest()
    assert fingerprint_files(d) == "files:sha256:" + ref
    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
        lin.bias.fill_(3.0)
    h = hashlib.sha256()
    h.update(b"bias|torch.float32|(1,)\0" + torch.tensor([3.0]).numpy().tobytes())
    h.update(b"weight|torch.float32|(1, 2)\0" + torch.tensor([1.0, 2.0]).numpy().tobytes())
    assert fingerprint_state_dict(lin, 4) == f"random-init(seed=4):sha256:{h.hexdigest()}"


def test_demo_pairing_rejects_a_different_architecture():
    import timm

    with pytest.raises(FeatstoreError, match="tensors"):
        load_efficientnet_lite0_demo(timm.create_model("resnet18"))
    assert (demo_text_dir() / "config.json").is_file()


def test_registry_listing_and_config_errors():
    names = {n for n, _, _ in list_extractors()}
    assert names == {"grid", "roi", "detector", "dinov2", "dinov2-multilayer", "clip-image", "clip-text", "bert",
                     "distilbert", "vilbert-text", "vg-regions"} == set(EXTRACTORS.names())
    opts = dict(dict((n, o) for n, _, o in list_extractors())["roi"])
    assert opts["num_regions"] == 36 and opts["scales"] == (1.0, 0.75, 0.5, 0.25) and opts["dtype"] == "float16"
    with pytest.raises(FeatstoreError, match="unknown extractor"):
        create_extractor("resnet-9000")
    with pytest.raises(FeatstoreError, match="no option 'gird_size'"):
        create_extractor("grid", gird_size=3)
    with pytest.raises(FeatstoreError, match="dtype"):
        create_extractor("grid", backbone="resnet18", dtype="int8")
    ex = create_extractor("roi", backbone="resnet18", scales=[1.0, 0.5], num_regions=10)  # JSON lists -> tuples
    assert ex.config.scales == (1.0, 0.5) and ex.key_kind == "image_key" and ex.modality == "image"
    assert ex.to("cpu") is ex and ex.amp_dtype is None
    assert ex.to("cpu", torch.bfloat16).amp_dtype == torch.bfloat16
    with pytest.raises(FeatstoreError, match="compute dtype"):
        ex.to("cpu", torch.int8)
