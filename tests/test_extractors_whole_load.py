"""Hugging Face weights load whole: ``from_pretrained`` fills a tensor the folder lacks with a random init
and only warns, so features would come from a partly random network. bert / clip / dinov2 refuse such a
folder in one line naming the tensors (parts they never read, BERT's pooler and DINOv2's mask token, may be
absent), and the version record's ``meta.weights_load`` keeps what was ignored or absent."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from cli_helpers import invoke, invoke_result, make_hm_folder
from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor
from test_extractors_clip import _save_clip
from test_vilbert_mmf import write_vocab


def drop(folder, *prefixes) -> list:
    """Remove the tensors under ``prefixes`` from ``folder/model.safetensors``; -> the removed names."""
    path = os.path.join(folder, "model.safetensors")
    sd = load_file(path)
    gone = sorted(k for k in sd if k.startswith(prefixes))
    save_file({k: v for k, v in sd.items() if k not in gone}, path, metadata={"format": "pt"})
    return gone


def tiny_bert(folder):
    import transformers

    from test_vilbert_mmf import VOCAB

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_attention_heads=2, intermediate_size=20,
                                  num_hidden_layers=2, max_position_embeddings=24)
    transformers.BertForPreTraining(cfg).save_pretrained(str(folder))
    write_vocab(folder)
    return folder


def test_a_bert_folder_missing_a_layer_is_refused_and_nothing_is_written(tmp_path):
    from cli.featstore_cli import main as featstore

    folder = tiny_bert(tmp_path / "bert")
    gone = drop(folder, "bert.encoder.layer.1.")
    assert len(gone) == 16
    data = make_hm_folder(tmp_path / "data")
    res = invoke_result(featstore, ["extract", "--dataset", data, "--extractor", "bert", "--store", tmp_path / "store",
                                    "--name", "t", "--workers", 0, "--quiet", "--weights", folder, "--set", "max_length=16"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.splitlines()[-1] == (
        f"error: weights {str(folder)!r} lack 16 tensors of the transformers encoder model "
        "(encoder.layer.1.attention.output.LayerNorm.bias, encoder.layer.1.attention.output.LayerNorm.weight, "
        "encoder.layer.1.attention.output.dense.bias, ...), which would start random; pass a folder holding the "
        "whole transformers encoder model as written by save_pretrained")
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("record.json"))


def test_a_bert_without_its_pooler_loads_and_the_record_says_what_was_left_out(tmp_path):
    """The pooler is never read (cls is token 0's last-layer state); the pretraining heads are ignored."""
    from cli.featstore_cli import main as featstore
    from featstore.store import open_store

    folder = tiny_bert(tmp_path / "bert")
    drop(folder, "bert.pooler.")
    data = make_hm_folder(tmp_path / "data")
    invoke(featstore, ["extract", "--dataset", data, "--extractor", "bert", "--store", tmp_path / "store", "--name",
                       "t", "--workers", 0, "--quiet", "--weights", folder, "--set", "max_length=16"])
    fs = open_store(str(tmp_path / "store")).open("t")
    load = fs.record["meta"]["weights_load"]
    assert load["missing_unused"] == ["pooler.dense.bias", "pooler.dense.weight"]
    assert set(load["unexpected"]) == {"cls"} and load["unexpected"]["cls"] >= 5
    shown = invoke(featstore, ["info", "t", "--store", tmp_path / "store"])
    assert '  weights load   {"missing_unused": ["pooler.dense.bias", "pooler.dense.weight"], "unexpected": ' \
           '{"cls": ' in shown


def test_clip_and_dinov2_refuse_a_folder_missing_a_tensor(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    clip = _save_clip(tmp_path / "clip", 224)
    create_extractor("clip-image", weights=str(clip))  # whole: loads
    drop(clip, "visual_projection.")
    with pytest.raises(FeatstoreError) as e:
        create_extractor("clip-image", weights=str(clip))
    assert str(e.value) == (f"weights {str(clip)!r} lack 1 tensors of the CLIPModel (visual_projection.weight), "
                            "which would start random; pass a folder holding the whole CLIPModel as written by "
                            "save_pretrained")
    ex = create_extractor("clip-text", weights=str(clip))  # the text tower's extractor never reads it
    assert ex.weights_load["missing_unused"] == ["visual_projection.weight"]
    dino = tmp_path / "dino"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=14, image_size=56)).save_pretrained(str(dino))
    drop(dino, "embeddings.mask_token")  # used by masked-image pretraining only
    ex = create_extractor("dinov2", weights=str(dino), image_size=56, num_regions=4)
    assert ex.weights_load["missing_unused"] == ["embeddings.mask_token"]
    drop(dino, "layernorm.")
    with pytest.raises(FeatstoreError, match=r"^weights .* lack 2 tensors of the Dinov2Model \(layernorm\.bias, "
                                             r"layernorm\.weight\), which would start random; pass a folder holding "
                                             r"the whole Dinov2Model"):
        create_extractor("dinov2", weights=str(dino), image_size=56, num_regions=4)
