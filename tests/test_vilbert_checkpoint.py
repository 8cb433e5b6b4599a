"""Loading Facebook/MMF ViLBERT checkpoints into a tiny ``vilbert`` head (files written with torch.save)."""
from __future__ import annotations

import argparse

import pytest
import torch

from featstore.errors import FeatstoreError
from heads.models import create_head
from heads.spec import InputSpec, Task, TaskSpec
from heads.vilbert_checkpoint import LoadReport, load_vilbert_checkpoint, map_key

DI, DT, R, T, B = 12, 16, 5, 6, 3
VIL = dict(hidden_size=DT, num_attention_heads=2, intermediate_size=20, num_hidden_layers=4, text_start_layer=2,
           v_hidden_size=12, v_num_attention_heads=2, v_intermediate_size=14, v_num_hidden_layers=2,
           bi_hidden_size=8, bi_num_attention_heads=2, v_biattention_id=[0, 1], t_biattention_id=[2, 3])
SPEC = TaskSpec([Task("hate", "binary", 2)])
INPUTS = InputSpec(img_dim=DI, txt_dim=DT, img_regions=R, txt_tokens=T, img_boxes=True)


def head(seed: int, **over):
    torch.manual_seed(seed)
    return create_head("vilbert", INPUTS, SPEC, **dict(VIL, **over)).eval()


def batch():
    g = torch.Generator().manual_seed(3)
    return dict(img_regions=torch.randn(B, R, DI, generator=g), img_boxes=torch.rand(B, R, 5, generator=g),
                img_mask=torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [1, 1, 0, 0, 0]], dtype=torch.bool),
                txt_tokens=torch.randn(B, T, DT, generator=g),
                txt_mask=torch.tensor([[1] * 4 + [0] * 2, [1] * 6, [1, 1] + [0] * 4], dtype=torch.bool))


def facebook_state_dict(h, prefix: str) -> dict:
    """The head's encoder weights under Facebook/MMF names, plus keys that have no home in the head."""
    s = h.config.text_start_layer
    sd = {}
    for k, v in h.state_dict().items():
        if k.startswith(("outputs.", "t_proj.", "transform.", "img_proj.")):
            continue
        if k.startswith("encoder.layer."):
            i, _, tail = k[len("encoder.layer."):].partition(".")
            k = f"encoder.layer.{int(i) + s}.{tail}"
        sd[prefix + k] = v.clone()
    # text layers 0..s-1 (ran before caching), embeddings, position ids, a classifier
    layer0 = {k: v for k, v in sd.items() if k.startswith(prefix + f"encoder.layer.{s}.")}
    for i in range(s):
        for k, v in layer0.items():
            sd[k.replace(f"encoder.layer.{s}.", f"encoder.layer.{i}.")] = torch.randn_like(v)
    sd[prefix + "embeddings.word_embeddings.weight"] = torch.randn(30, DT)
    sd[prefix + "embeddings.position_ids"] = torch.arange(40)[None]
    sd["model.classifier.0.dense.weight"] = torch.randn(8, 8)
    return sd


@pytest.mark.parametrize("prefix", ["model.bert.", "bert.bert.", "bert."])
@pytest.mark.parametrize("wrap", [False, True])
def test_prefixes_and_wrapping(tmp_path, prefix, wrap):
    """The older prefixes and the {"model": ...} wrapping load the same tensors (MMF's full key layout is
    checked in test_vilbert_mmf.py against a key list written from MMF's module tree)."""
    src, dst = head(0), head(1)
    sd = facebook_state_dict(src, prefix)
    path = tmp_path / "vilbert.bin"
    torch.save({"model": sd} if wrap else sd, path)
    report = load_vilbert_checkpoint(dst, str(path))
    assert isinstance(report, LoadReport)
    with torch.no_grad():
        torch.testing.assert_close(dst(batch())["fused"], src(batch())["fused"])
    assert {k.split(".", 1)[0] for k in report.missing_keys} == {"outputs", "transform"}
    assert report.groups["ignored: text embeddings"] == [prefix + "embeddings.word_embeddings.weight"]
    assert report.groups["ignored: buffers"] == [prefix + "embeddings.position_ids"]
    assert len(report.groups["ignored: lower text layers"]) == 2 * 16
    assert report.groups["used: classifier"] == ["model.classifier.0.dense.weight"]  # the transform's [bi, bi]
    torch.testing.assert_close(dst.transform.dense.weight, sd["model.classifier.0.dense.weight"])
    assert "transform.dense.weight" not in report.missing_keys and "transform.dense.bias" in report.missing_keys
    assert set(report.used_keys) | set(report.ignored_keys) == set(sd) and not report.notes


def test_map_key_examples():
    assert map_key("model.bert.encoder.layer.7.output.dense.weight", 6) == ("encoder.layer.1.output.dense.weight",
                                                                            "upper text layers")
    assert map_key("model.classifier.0.LayerNorm.bias", 6) == ("transform.LayerNorm.bias", "classifier")
    assert map_key("model.classifier.1.weight", 6, ["label"]) == ("outputs.layers.label.weight", "classifier")
    assert map_key("model.classifier.1.weight", 6, ["a", "b"]) == (None, "classifier")
    assert map_key("model.cls.predictions.decoder.weight", 6) == (None, "pretraining heads")
    assert map_key("bert.encoder.layer.3.output.dense.weight", 6)[0] is None
    assert map_key("bert.bert.encoder.c_layer.5.biOutput.q_dense2.bias", 6)[0] == "encoder.c_layer.5.biOutput.q_dense2.bias"
    assert map_key("bert.v_embeddings.image_location_embeddings.weight", 6)[0] == "v_embeddings.image_location_embeddings.weight"
    assert map_key("model.bert.embeddings.position_ids", 6)[0] is None
    assert map_key("model.cls.predictions.bias", 6)[0] is None


def test_pickle_with_objects_needs_trust(tmp_path):
    src, dst = head(0), head(1)
    path = tmp_path / "with_args.pt"
    torch.save({"model": facebook_state_dict(src, "model.bert."), "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(FeatstoreError, match="--trust-checkpoint") as e:
        load_vilbert_checkpoint(dst, str(path))
    assert "\n" not in str(e.value)
    report = load_vilbert_checkpoint(dst, str(path), trust_pickle=True)
    assert report.used_keys
    with torch.no_grad():
        torch.testing.assert_close(dst(batch())["fused"], src(batch())["fused"])


def test_shape_mismatch_names_the_key(tmp_path):
    src = head(0, v_intermediate_size=10)
    path = tmp_path / "big.pt"
    torch.save(facebook_state_dict(src, "model.bert."), path)
    with pytest.raises(FeatstoreError, match=r"key 'model\.bert\.encoder\.(c_layer|v_layer)\.\d\.\S+' has shape"):
        load_vilbert_checkpoint(head(1), str(path))


def test_checkpoint_with_more_layers_than_head(tmp_path):
    src = head(0, v_num_hidden_layers=3)
    path = tmp_path / "deeper.pt"
    torch.save(facebook_state_dict(src, "bert."), path)
    with pytest.raises(FeatstoreError, match=r"'bert\.encoder\.v_layer\.2\.\S+' has no counterpart"):
        load_vilbert_checkpoint(head(1), str(path))


def test_unusable_files(tmp_path):
    h = head(0)
    with pytest.raises(FeatstoreError, match="does not exist"):
        load_vilbert_checkpoint(h, str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(FeatstoreError, match="cannot be read|cannot be unpickled|trust"):
        load_vilbert_checkpoint(h, str(junk))
    other = tmp_path / "other.pt"
    torch.save({"model": {"resnet.conv1.weight": torch.zeros(2)}}, other)
    with pytest.raises(FeatstoreError, match="no ViLBERT or BERT weights for this head"):
        load_vilbert_checkpoint(h, str(other))
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(FeatstoreError, match="no state dict"):
        load_vilbert_checkpoint(h, str(empty))
    torch.manual_seed(0)
    concat = create_head("concat", INPUTS, SPEC, hidden=[8])
    with pytest.raises(FeatstoreError, match="needs a 'vilbert' head"):
        load_vilbert_checkpoint(concat, str(other))
