"""``mmbt`` is MMF's MMBT-Grid (mmf/models/mmbt.py, ``MMBTForClassification``), checked against a reference
written outside the heads:

* ``mmbt_reference``: MMF's forward transcribed in float64 plain ops, MMF's dense layout kept: the modal part
  ``[word([CLS]), proj_embeddings(image), word(last real token)]`` at positions 0, 1, 2 with token type 1
  (``MMBTBase``'s rule for one text segment), LayerNorm; the text shifted left by one (``[:, 1:]`` then the
  last column again, its mask shifted with a 0 behind) at positions 0..T-1, token type 0, LayerNorm; the
  joint mask ``cat(ones(3), shifted mask)``, additive ``-10000``; then transformers' own ``BertEncoder`` and
  ``BertPooler`` of the tiny BERT fed that embedding output (as ``MMBTModel`` feeds ``transformer.encoder``);
  then ``BertPredictionHeadTransform`` (dense, erf GELU, LayerNorm) and the Linear in plain ops.

The BERT reaches the head only through the real checkpoint reader (``heads.text_bert_checkpoint``) from a
``save_pretrained`` folder. Also: the load report, MMF's optimiser groups, the inputs, the preset's numbers, and
the CLI end to end (real ``bert`` extractor -> ``heads train --head mmbt --init-checkpoint``).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cli_helpers import invoke
from featstore.errors import FeatstoreError
from heads.models import create_head
from heads.spec import InputSpec
from heads.text_bert_checkpoint import head_from_checkpoint
from test_text_bert import B, BINARY, DI, H, L, NH, P, V, folders, tiny_bert, token_batch, world  # noqa: F401
from test_vilbert_direct import randomise
from test_vilbert_mmf import read_predictions, tokenise

BOTH = InputSpec(img_dim=DI, txt_dim=0, txt_ids=True, img_pooled=True)
CFG = dict(num_attention_heads=NH, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
SIZES = dict(CFG, hidden_size=H, num_hidden_layers=L, intermediate_size=37, vocab_size=V, max_position_embeddings=P)


# --------------------------------------------------------------------------------------- the reference


def _ln(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps) * w + b


def mmf_embeddings(bert, proj_w, proj_b, ids, mask, image):
    """``MMBTBase.forward`` + ``ModalEmbeddings`` + ``MMBTModel``'s embedding part, MMF's dense layout:
    (embedding output ``[B, 3 + T, H]``, additive mask ``[B, 1, 1, 3 + T]``)."""
    emb = bert.embeddings
    word, pos, typ = (t.weight.double() for t in (emb.word_embeddings, emb.position_embeddings,
                                                  emb.token_type_embeddings))
    ln = lambda x: _ln(x, emb.LayerNorm.weight.double(), emb.LayerNorm.bias.double())  # noqa: E731
    b, t = ids.shape
    segment_ids = torch.zeros_like(ids)  # one sentence
    start = ids[:, 0]
    end = torch.gather(ids, 1, mask.long().sum(1, keepdim=True) - 1).squeeze(1)  # extract_modal_end_token
    txt = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
    txt_mask = torch.cat([mask.long()[:, 1:], torch.zeros(b, 1, dtype=torch.long)], dim=1)
    token_value = 1 if segment_ids.max() == segment_ids.min() == 0 else 0  # MMF's rule, one segment
    modal = torch.stack([word[start], image @ proj_w.T + proj_b, word[end]], dim=1)
    modal = ln(modal + pos[torch.arange(3)][None] + typ[torch.full((b, 1), token_value)])
    text = ln(word[txt] + pos[torch.arange(t)][None] + typ[segment_ids])
    full = torch.cat([torch.ones(b, 3, dtype=torch.long), txt_mask], dim=1).double()
    return torch.cat([modal, text], dim=1), (1.0 - full)[:, None, None, :] * -10000.0


def mmbt_reference(model, sd, ids, mask, image):
    """MMF's MMBTForClassification.forward in eval mode, float64 -> (logits [B, 2], pooled [B, H])."""
    p = lambda k: sd[k].double()  # noqa: E731
    bert = getattr(model, "bert", model).double()
    x, ext = mmf_embeddings(bert, p("modal_encoder.proj_embeddings.weight"), p("modal_encoder.proj_embeddings.bias"),
                            ids, mask, image.double())
    with torch.no_grad():
        seq = bert.encoder(x, attention_mask=ext)[0]
        pooled = bert.pooler(seq)
    h = pooled @ p("transform.dense.weight").T + p("transform.dense.bias")
    h = _ln(0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0))), p("transform.LayerNorm.weight"),
            p("transform.LayerNorm.bias"))
    return h @ p("outputs.layers.label.weight").T + p("outputs.layers.label.bias"), pooled


def loaded(folder, **cfg):
    head, report = head_from_checkpoint("mmbt", BOTH, BINARY, dict(CFG, **cfg), folder)
    randomise(head.transform, 11)  # the transform's LayerNorm away from 1 / 0 as well
    return head.double(), report


def image_batch(seed: int):
    bt = token_batch(seed=seed)
    bt["img_pooled"] = torch.randn(B, DI, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return bt


# ------------------------------------------------------------------------------------------ the forward


@pytest.mark.parametrize("pack", [True, False])
def test_forward_equals_mmfs_transcribed_in_float64(folders, pack):
    folder, bert = folders["BertModel"]
    head, _ = loaded(folder)
    head.pack_positions = pack
    head.eval()
    bt = image_batch(5)
    with torch.no_grad():
        out = head(bt)
    logits, pooled = mmbt_reference(bert, head.state_dict(), bt["txt_ids"], bt["txt_mask"], bt["img_pooled"])
    torch.testing.assert_close(out["pooled"], pooled, atol=1e-8, rtol=0)
    torch.testing.assert_close(out["logits"]["label"], logits, atol=1e-8, rtol=0)
    assert out["sequence"].shape == (B, 2 + bt["txt_ids"].shape[1], H) and out["fused"].shape == (B, H)


def test_the_image_the_end_token_and_the_padding_are_read_as_mmf(folders):
    folder, bert = folders["BertForPreTraining"]
    head, _ = loaded(folder)
    head.eval()
    bt = image_batch(8)
    with torch.no_grad():
        base = head(bt)["logits"]["label"]
        other = dict(bt, txt_ids=torch.where(bt["txt_mask"], bt["txt_ids"], (bt["txt_ids"] + 7) % V))
        torch.testing.assert_close(head(other)["logits"]["label"], base, atol=1e-10, rtol=0)  # padding: nothing
        moved = dict(bt, img_pooled=bt["img_pooled"] + 1.0)
        assert not torch.allclose(head(moved)["logits"]["label"], base)
    logits, _ = mmbt_reference(bert, head.state_dict(), bt["txt_ids"], bt["txt_mask"], bt["img_pooled"])
    torch.testing.assert_close(base, logits, atol=1e-8, rtol=0)


# ------------------------------------------------------------------------------------------- the loader


def test_report_uses_all_of_bert_and_misses_the_modal_projection_and_classifier(folders):
    folder, bert = folders["BertModel"]
    head, report = loaded(folder)
    n = len(bert.state_dict())
    assert len(report.used_keys) == n and "pooler.dense.weight" in report.used_keys
    assert report.ignored_keys == []
    assert sorted({k.split(".")[0] for k in report.missing_keys}) == ["modal_encoder", "outputs", "transform"]
    assert report.lines()[0] == (f"checkpoint {folder}: used {n} tensors (backbone {n}); missing "
                                 f"{len(report.missing_keys)} (modal_encoder, outputs, transform: left initialised)")
    assert "the modal projection (modal_encoder.proj_embeddings) and the classifier" in report.lines()[1]
    torch.testing.assert_close(head.bert.pooler.dense.weight, bert.pooler.dense.weight.double())


def test_pretraining_heads_are_ignored(folders):
    folder, bert = folders["BertForPreTraining"]
    _, report = loaded(folder)
    assert report.ignored_keys and all(k.startswith("cls.") for k in report.ignored_keys)
    assert len(report.used_keys) == len([k for k in bert.state_dict() if k.startswith("bert.")])


# ------------------------------------------------------------------------------ inputs, groups, preset


def test_needs_token_ids_and_an_image_vector_and_checks_the_vocabulary():
    with pytest.raises(FeatstoreError, match=r"^head 'mmbt' needs an image feature but no image feature set"):
        create_head("mmbt", InputSpec(img_dim=0, txt_dim=0, txt_ids=True), BINARY)
    head = create_head("mmbt", BOTH, BINARY, **SIZES)
    bt = token_batch()
    bt["txt_ids"][0, 0] = V
    with pytest.raises(FeatstoreError, match=f"holds token id {V}, outside mmbt's vocab_size={V}"):
        head.check_data(bt, {"name": "bert"})
    with pytest.raises(FeatstoreError, match=r"^mmbt type_vocab_size=1; the image tokens take token type 1"):
        create_head("mmbt", BOTH, BINARY, **dict(SIZES, type_vocab_size=1))


def test_optimiser_groups_are_mmfs_bert_groups():
    from test_text_bert import decay_by_name

    decay = decay_by_name(create_head("mmbt", BOTH, BINARY, **SIZES), 0.01)
    no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")  # get_bert_configured_parameters
    assert decay == {n: 0.0 if any(r in n for r in no_decay) else 0.01 for n in decay}
    assert decay["modal_encoder.proj_embeddings.weight"] == 0.01 and decay["transform.LayerNorm.weight"] == 0.0


def test_preset_is_mmfs_hateful_memes_mmbt_numbers():
    from heads.presets import load_preset

    p = load_preset("mmbt-grid-hm")
    assert p.head == "mmbt" and p.head_cfg == {}
    assert {k: p.train[k] for k in ("lr", "batch_size", "epochs", "weight_decay", "warmup_ratio", "loss",
                                    "monitor", "patience", "grad_clip", "init_checkpoint")} == dict(
        lr=1e-5, batch_size=32, epochs=83, weight_decay=0.01, warmup_ratio=0.0909, loss="ce", monitor="auroc",
        patience=0, grad_clip=0.0, init_checkpoint="bert-base-uncased")
    assert math.ceil(8500 / 32) * 83 >= 22000 > math.ceil(8500 / 32) * 82  # max_updates 22000 of batch 32
    assert round(2000 / 22000, 4) == p.train["warmup_ratio"]


def test_mmimdb_preset_is_mmfs_mmimdb_mmbt_numbers():
    """projects/mmbt/configs/mmimdb/defaults.yaml, typed here: the Hateful Memes preset's optimisation with
    max_seq_length 256, logit_bce over the genres and early stopping on dev micro F1; 22,000 updates of 32 on
    MM-IMDB's 15,552 train movies."""
    from heads.presets import load_preset

    hm, p = load_preset("mmbt-grid-hm"), load_preset("mmbt-grid-mmimdb")
    assert p.head == "mmbt" and p.data == {"task": "genres", "text_array": "input_ids"}
    assert p.text_features == {"bert": {"max_length": 256}} and p.image_features == hm.image_features
    same = ("lr", "weight_decay", "optimizer", "batch_size", "warmup_ratio", "schedule", "grad_clip", "loss",
            "patience", "eval_every", "init_checkpoint")
    assert {k: p.train[k] for k in same} == {k: hm.train[k] for k in same}
    assert p.train["monitor"] == "micro_f1"
    assert math.ceil(15552 / 32) * p.train["epochs"] >= 22000 > math.ceil(15552 / 32) * (p.train["epochs"] - 1)


@pytest.mark.parametrize("name, hm", [("vilbert-mmimdb", "vilbert-hm"), ("visualbert-mmimdb", "visualbert-hm")])
def test_vilbert_and_visualbert_mmimdb_presets_are_mmfs_yaml_numbers(name, hm):
    """projects/{vilbert,visual_bert}/configs/mmimdb/defaults.yaml, typed here: adam_w lr 5e-5, batch 480,
    max_updates 60000, warmup 2000 over num_training_steps 88000, early stopping on dev micro F1, 256 tokens."""
    from heads.presets import load_preset
    from heads.schedule import warmup_steps

    p, base = load_preset(name), load_preset(hm)
    assert p.head == base.head and p.data["task"] == "genres" and p.data["text_array"] == base.data["text_array"]
    t = p.train
    assert (t["lr"], t["batch_size"], t["schedule_steps"], t["monitor"], t["optimizer"]) == (
        5e-5, 480, 88000, "micro_f1", "adamw-mmf")
    assert warmup_steps(t["schedule_steps"], t["warmup_ratio"]) == 2000
    steps = math.ceil(15552 / 480)
    assert steps * t["epochs"] >= 60000 > steps * (t["epochs"] - 1)
    assert next(iter(p.text_features.values()))["max_length"] == 256


def test_a_random_start_names_the_preset_that_starts_from_bert():
    from heads.train import TrainConfig, random_start_note

    assert random_start_note(TrainConfig(head="mmbt")).endswith(
        "(--preset mmbt-grid-hm starts from bert-base-uncased)")
    assert random_start_note(TrainConfig(head="mmbt", init_checkpoint="some/bert")) is None


# ----------------------------------------------------------------------------------------- the CLI


def cli_reference(world, run, samples):
    """P(label 1) of MMF's MMBT on the folder's BERT and the run's saved modal projection / classifier."""
    from safetensors.torch import load_file

    ids = [tokenise(s.text) for s in samples]
    width = max(map(len, ids))
    ids = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    image = torch.tensor(np.stack([world["images"][s.image_key] for s in samples]))
    sd = load_file(str(run / "model.safetensors"))
    logits, _ = mmbt_reference(world["bert"], sd, ids, ids != 0, image)
    return torch.softmax(logits, -1)[:, 1].numpy()


def test_cli_predictions_equal_the_reference(world):
    from cli.heads_cli import main as heads

    out = world["root"] / "mmbt"
    printed = invoke(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--text", "btext",
                             "--text-array", "input_ids", "--image", "img", "--head", "mmbt", "--set",
                             f"num_attention_heads={NH}", "--init-checkpoint", world["folder"], "--epochs", 1,
                             "--lr", 1e-30, "--warmup", 0, "--threads", 1, "--quiet", "--out", out])
    run = out / "seed_0"
    load = json.loads((run / "config.json").read_text())["checkpoint_load"]
    assert len(load["used_keys"]) == len([k for k in world["bert"].state_dict() if k.startswith("bert.")])
    assert load["summary"][0] in printed and "starts from random weights" not in printed
    assert sorted({k.split(".")[0] for k in load["missing_keys"]}) == ["modal_encoder", "outputs", "transform"]
    got = read_predictions(run / "predictions_test.csv")
    by_id = {s.id: s for s in world["ds"].samples}
    samples = [by_id[i] for i in got]
    want = cli_reference(world, run, samples)
    np.testing.assert_allclose([got[s.id] for s in samples], want, atol=1e-5, rtol=0)
    invoke(heads, ["predict", str(run), "--dataset", world["data"], "--store", world["store"], "--text-array",
                   "input_ids", "--split", "test", "--out", out / "pred.csv"])
    again = read_predictions(out / "pred.csv")
    np.testing.assert_allclose([again[s.id] for s in samples], want, atol=1e-5, rtol=0)
