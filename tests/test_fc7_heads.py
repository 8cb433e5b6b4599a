"""Detectron's fc7 (``heads.fc7``) and the heads built on it: ``image-region`` (the Hateful Memes paper's
Image-Region, MMF's ``unimodal_image`` with ``direct_features_input``) and ``mmbt-region`` (MMBT-Region, MMF's
``mmbt`` with ``direct_features_input``).

* ``read_fc7`` on pickles written here with numpy arrays (protocol 2, as Python 2's), and the restricted
  unpickler refusing a pickle that names anything else (``os.system``) with one exact line.
* the image-region forward against an independent float64 transcription of MMF's (mmf/models/unimodal.py
  ``UnimodalModal``: ``torch.mean(image_feature_0, dim=1)`` over the 100 zero-padded slots, fc7 matmul + relu,
  flatten, ``MLPClassifer`` from tests/test_unimodal_mmf.py) in eval mode (perturbed running statistics) and
  train mode (dropout 0).
* ``heads train`` on a real region set: fc7 equals the pickles after training starts (lr 1e-30), the load
  report names them, ``heads predict`` reopens the run with the pickles deleted, the no-fc7 note, and a set
  with more regions than ``num_regions`` refused in one line.
* the mmbt-region forward against MMF's transcribed in float64 (``mmbt_region_reference``: the zero-padded
  regions through fc7 + relu and ``proj_embeddings``, positions 0 .. N + 1 and token type 1 over the modal
  part, a ones mask over it, the text shifted as in tests/test_mmbt.py), its BERT loaded by the real reader,
  and end to end through ``heads train --init-checkpoint`` with the fc7 pickles.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from cli_helpers import invoke, one_line_error
from featstore.errors import FeatstoreError
from heads.fc7 import FC7_NOTE, HOW_TO_GET, read_fc7
from heads.models import create_head
from heads.spec import InputSpec, Task, TaskSpec
from test_mmbt import _ln
from test_text_bert import B, BINARY, NH, V, decay_by_name, folders, token_batch, world  # noqa: F401
from test_vilbert_direct import randomise as randomise_bert
from test_vilbert_mmf import read_predictions, tokenise
from test_unimodal_mmf import mlp_classifer_f64, mmf_params, randomise

SPEC = TaskSpec([Task("hate", "binary", 2)])
DR, RS, F = 6, 4, 5  # region width, stored regions per image, fc7 width


def write_fc7(folder, w: np.ndarray, b: np.ndarray):
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("fc7_w.pkl", w), ("fc7_b.pkl", b)):
        with open(folder / name, "wb") as f:
            pickle.dump(arr, f, protocol=2)
    return folder


def fc7_arrays(out: int = F, ind: int = DR, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((out, ind)).astype(np.float32), rng.standard_normal(out).astype(np.float32)


class _System:
    """Pickles as a call of ``os.system`` (never called: the unpickler refuses to resolve it)."""

    def __reduce__(self):
        return os.system, ("echo unpickled",)


# ------------------------------------------------------------------------------------------ read_fc7


def test_read_fc7_reads_the_pickled_arrays_here_and_one_folder_down(tmp_path):
    w, b = fc7_arrays()
    write_fc7(tmp_path / "vmb" / "detectron", w, b)
    for folder in (tmp_path / "vmb" / "detectron", tmp_path / "vmb"):
        gw, gb = read_fc7(folder)
        assert gw.dtype == gb.dtype == torch.float32
        assert torch.equal(gw, torch.from_numpy(w)) and torch.equal(gb, torch.from_numpy(b))
    f64 = write_fc7(tmp_path / "f64", w.astype(np.float64), b.astype(np.float64))
    assert torch.equal(read_fc7(f64)[0], torch.from_numpy(w))


def test_a_pickle_naming_anything_but_numpy_is_refused_in_one_line(tmp_path):
    w, b = fc7_arrays()
    folder = write_fc7(tmp_path / "evil", w, b)
    with open(folder / "fc7_w.pkl", "wb") as f:
        pickle.dump(_System(), f, protocol=2)
    with pytest.raises(FeatstoreError) as e:
        read_fc7(folder)
    assert str(e.value) == (f"fc7 pickle {str(folder / 'fc7_w.pkl')!r} refers to {os.system.__module__}.system; "
                            "only numpy arrays are read (Detectron's fc7_w.pkl / fc7_b.pkl from "
                            "https://dl.fbaipublicfiles.com/mmf/data/models/detectron/vmb_weights.tar.gz)")


def test_missing_files_and_bad_shapes_are_one_line(tmp_path):
    with pytest.raises(FeatstoreError) as e:
        read_fc7(tmp_path / "nowhere")
    assert str(e.value) == (f"fc7_weights={str(tmp_path / 'nowhere')!r} holds no fc7_w.pkl + fc7_b.pkl (nor one "
                            f"folder down); {HOW_TO_GET}")
    assert "vmb_weights.tar.gz" in HOW_TO_GET and "--set fc7_weights=DIR" in HOW_TO_GET
    w, b = fc7_arrays()
    bad = write_fc7(tmp_path / "bad", w, b[:-1])
    with pytest.raises(FeatstoreError, match=r"weight \(5, 6\) / bias \(4,\); expected weight \[out, in\]"):
        read_fc7(bad)


# ------------------------------------------------------------------------------ image-region forward


def region_batch(rows: int, r: int, d: int, seed: int):
    """``img_regions [rows, r, d]`` with garbage in masked positions, one mask with a hole, one row with all."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(r)[None] < torch.randint(1, r + 1, (rows,), generator=g)[:, None]
    mask[0] = True
    mask[1, 0] = False
    mask[1, 1] = True
    x = torch.randn(rows, r, d, generator=g, dtype=torch.float64) + 0.3
    x = torch.where(mask[..., None], x, 1e3 * torch.randn(x.shape, generator=g, dtype=torch.float64))
    return {"img_regions": x, "img_mask": mask}


def image_region_f64(batch, n: int, w, b, blocks, final, train: bool):
    """MMF: image_feature_0 = the regions zero-padded to n slots; mean over the n slots; relu(x W^T + b);
    flatten (one feature); MLPClassifer -> (fused, logits)."""
    x, mask = batch["img_regions"], batch["img_mask"]
    feat = torch.zeros(x.shape[0], n, x.shape[2], dtype=torch.float64)
    feat[:, :x.shape[1]] = torch.where(mask[..., None], x, torch.zeros_like(x))
    mean = feat.sum(dim=1) / n
    h = mean @ w.T + b
    h = torch.where(h > 0, h, torch.zeros_like(h)).reshape(x.shape[0], -1)
    return mlp_classifer_f64(h, blocks, final, train)


@pytest.mark.parametrize("n", [RS, 10])
def test_image_region_forward_is_mmfs_in_float64(n):
    head = create_head("image-region", InputSpec(img_dim=DR, txt_dim=0, img_regions=RS), SPEC, num_regions=n,
                       fc7_dim=F, hidden=[7, 3], dropout=0.0).double()
    randomise(head, seed=3)
    batch = region_batch(6, RS, DR, seed=n)
    sd = {k: v.clone() for k, v in head.state_dict().items()}
    blocks, final = mmf_params(sd, 2)
    for train in (False, True):
        head.train(train)
        with torch.no_grad():
            out = head(batch)
        fused, logits = image_region_f64(batch, n, sd["fc7.lc.weight"], sd["fc7.lc.bias"], blocks, final, train)
        torch.testing.assert_close(out["logits"]["hate"], logits, atol=1e-8, rtol=0)
        torch.testing.assert_close(out["fused"], fused, atol=1e-8, rtol=0)


def test_image_region_defaults_are_mmfs_and_more_regions_than_num_regions_are_refused():
    head = create_head("image-region", InputSpec(img_dim=2048, txt_dim=0, img_regions=100), SPEC)
    assert [tuple(m.weight.shape) for m in head.modules() if isinstance(m, torch.nn.Linear)] == [
        (2048, 2048), (768, 2048), (768, 768), (2, 768)]  # fc7.lc, MLPClassifer(2048 -> 768 -> 768 -> 2)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2
    assert {m.p for m in head.mlp if isinstance(m, torch.nn.Dropout)} == {0.5}
    with pytest.raises(FeatstoreError) as e:
        create_head("image-region", InputSpec(img_dim=2048, txt_dim=0, img_regions=101), SPEC)
    assert str(e.value) == ("head 'image-region' reads num_regions=100 regions per image (MMF's max_features 100, "
                            "zero-padded) but the image set has 101; pass --max-regions 100 to keep the first 100 "
                            "as MMF's reader does, or --set num_regions=101")


# ------------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def regions(world):  # noqa: F811
    """A region set ``regions`` (``[N, RS, DR]``, counts 1..RS, zeros beyond) in the world's store, and fc7
    pickles."""
    from featstore import Recipe, open_store

    keys = sorted(world["ds"].image_keys())
    rng = np.random.default_rng(4)
    count = (np.arange(len(keys)) % RS + 1).astype(np.int32)
    arr = rng.standard_normal((len(keys), RS, DR)).astype(np.float32)
    arr[np.arange(RS)[None] >= count[:, None]] = 0
    open_store(str(world["store"])).write("regions", Recipe(extractor="import:test", config={}), keys,
                                         {"regions": arr, "count": count}, key_kind="image_key",
                                         modality="image", per_item=["regions"])
    w, b = fc7_arrays(seed=9)
    fc7 = write_fc7(world["root"] / "vmb_weights" / "detectron", w, b)
    return dict(world, keys=keys, arr=arr, count=count, fc7=fc7, w=w, b=b)


def region_train(world, out, *extra):
    from cli.heads_cli import main as heads

    return ["train", "--dataset", world["data"], "--store", world["store"], "--image", "regions", "--epochs", 1,
            "--lr", 1e-30, "--warmup", 0, "--threads", 1, "--quiet", "--batch-size", 8, "--out", out, *extra], heads


def test_image_region_trains_from_the_pickles_and_predicts_without_them(regions, tmp_path):
    from safetensors.torch import load_file

    fc7 = shutil.copytree(regions["fc7"].parent, tmp_path / "vmb")  # deleted below
    args, heads = region_train(regions, tmp_path / "run", "--head", "image-region", "--set", "num_regions=6",
                               "--set", f"fc7_dim={F}", "--set", "hidden=[4]", "--set", f"fc7_weights={fc7}")
    printed = invoke(heads, args)
    run = tmp_path / "run" / "seed_0"
    sd = load_file(str(run / "model.safetensors"))
    assert torch.equal(sd["fc7.lc.weight"], torch.from_numpy(regions["w"]))
    assert torch.equal(sd["fc7.lc.bias"], torch.from_numpy(regions["b"]))
    load = json.loads((run / "config.json").read_text())["checkpoint_load"]
    assert load["groups"] == {"used: fc7 (Detectron's vmb_weights)": ["fc7.lc.weight", "fc7.lc.bias"]}
    assert load["path"] == str(fc7 / "detectron") and load["summary"][0] in printed
    assert "fc7 starts from random weights" not in printed

    # the run's predictions are MMF's forward of its saved weights on the stored regions (zero-padded to 6)
    got = read_probs(run / "predictions_test.csv")
    by_id = {s.id: s for s in regions["ds"].samples}
    rows = [regions["keys"].index(by_id[i].image_key) for i in got]
    x = torch.from_numpy(regions["arr"][rows]).double()
    mask = torch.arange(RS)[None] < torch.from_numpy(regions["count"][rows])[:, None].long()
    blocks, final = mmf_params({k: v.double() for k, v in sd.items()}, 1, task="label")
    _, logits = image_region_f64({"img_regions": x, "img_mask": mask}, 6, sd["fc7.lc.weight"].double(),
                                 sd["fc7.lc.bias"].double(), blocks, final, train=False)
    np.testing.assert_allclose(list(got.values()), torch.softmax(logits, -1)[:, 1].numpy(), atol=1e-5, rtol=0)

    shutil.rmtree(fc7)  # heads predict rebuilds the head from config.json and its own weights only
    invoke(heads, ["predict", str(run), "--dataset", regions["data"], "--store", regions["store"], "--split", "test",
                   "--out", tmp_path / "p.csv"])
    again = read_probs(tmp_path / "p.csv")
    assert max(abs(again[k] - got[k]) for k in got) < 1e-6


def test_no_fc7_weights_prints_the_note_and_too_many_regions_are_refused(regions, tmp_path):
    args, heads = region_train(regions, tmp_path / "run", "--head", "image-region", "--set", f"fc7_dim={F}",
                               "--set", "hidden=[4]", "--set", "num_regions=6")
    printed = invoke(heads, args)
    assert FC7_NOTE in printed and "--set fc7_weights=DIR" in FC7_NOTE
    assert json.loads((tmp_path / "run" / "seed_0" / "config.json").read_text())["checkpoint_load"] is None
    args, heads = region_train(regions, tmp_path / "o", "--head", "image-region", "--set", "num_regions=3")
    assert one_line_error(heads, args) == (
        f"error: head 'image-region' reads num_regions=3 regions per image (MMF's max_features 100, zero-padded) "
        f"but the image set has {RS}; pass --max-regions 3 to keep the first 3 as MMF's reader does, or "
        f"--set num_regions={RS}")


def test_bad_fc7_weights_are_refused_before_the_run_folder_is_made(regions, tmp_path):
    """fc7_weights is read with the head checks (``check_init_files``), before --out is created."""
    args, heads = region_train(regions, tmp_path / "a", "--head", "image-region", "--set", "num_regions=6",
                               "--set", f"fc7_dim={F + 1}", "--set", f"fc7_weights={regions['fc7']}")
    assert one_line_error(heads, args) == (
        f"error: fc7 weight in {str(regions['fc7'])!r} is ({F}, {DR}) but the head's fc7.lc is ({F + 1}, {DR}) "
        f"[out, in]: set fc7_dim={F} or feed {DR}-d regions")
    args, heads = region_train(regions, tmp_path / "b", "--head", "image-region", "--set", "num_regions=6",
                               "--set", f"fc7_dim={F}", "--set", f"fc7_weights={tmp_path / 'nowhere'}")
    assert one_line_error(heads, args) == (f"error: fc7_weights={str(tmp_path / 'nowhere')!r} holds no fc7_w.pkl + "
                                           f"fc7_b.pkl (nor one folder down); {HOW_TO_GET}")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    args, heads = region_train(regions, tmp_path / "c", "--head", "mmbt-region", "--set", "num_regions=6")
    assert one_line_error(heads, args) == ("error: head 'mmbt-region' needs text token ids but no text feature set "
                                           "was given; pass a text feature set (--text NAME) or use --head image-only")


def read_probs(path):
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {r[0]: float(r[1]) for r in rows[1:]}


def test_image_region_hm_preset_holds_mmfs_numbers():
    from heads.presets import load_preset

    p = load_preset("image-region-hm")
    assert p.head == "image-region"
    assert p.train == {"lr": 5e-5, "weight_decay": 0.0, "batch_size": 32, "epochs": 83, "warmup_ratio": 0.0909,
                       "schedule": "linear", "grad_clip": 0.0, "loss": "ce", "label_smoothing": 0.0,
                       "monitor": "auroc", "patience": 0, "optimizer": "adamw-mmf", "eval_every": 1000}
    assert p.head_cfg == {"hidden": [768, 768], "activation": "relu", "dropout": 0.5, "batch_norm": True,
                          "out_hidden": 0, "out_dropout": 0.0, "num_regions": 100, "fc7_dim": 2048,
                          "fc7_weights": ""}
    assert p.data == {"task": "label", "max_regions": 100}
    assert "projects/others/unimodal/configs/hateful_memes/with_features.yaml" in p.source
    assert any("--set fc7_weights=DIR" in n for n in p.notes)
    assert any("featstore import detectron.lmdb --format mmf-lmdb" in n for n in p.notes)


# ------------------------------------------------------------------------------------------ mmbt-region


def mmbt_region_reference(bert, sd, ids, mask, batch, n: int):
    """MMF's MMBTForClassification.forward with direct_features_input, eval mode, float64 -> (logits, pooled).

    ``MMBTBase``: input_modal = the regions zero-padded to n; start = ids[:, 0], end = the last real id, the
    text shifted left (its last column again, its mask with a 0 behind). ``ModalEmbeddings``:
    proj(relu(fc7(input_modal))) between the start and end words, + positions 0 .. n + 1 + token type 1,
    LayerNorm. ``MMBTModel``: mask = cat(ones(n + 2), shifted mask)."""
    p = lambda k: sd[k].double()  # noqa: E731
    bert = copy.deepcopy(getattr(bert, "bert", bert)).double()
    emb = bert.embeddings
    word, pos, typ = (t.weight.double() for t in (emb.word_embeddings, emb.position_embeddings,
                                                  emb.token_type_embeddings))
    ln = lambda x: _ln(x, emb.LayerNorm.weight.double(), emb.LayerNorm.bias.double())  # noqa: E731
    b, t = ids.shape
    x, rmask = batch["img_regions"].double(), batch["img_mask"]
    feat = torch.zeros(b, n, x.shape[2], dtype=torch.float64)
    feat[:, :x.shape[1]] = torch.where(rmask[..., None], x, torch.zeros_like(x))
    h = feat @ p("fc7.lc.weight").T + p("fc7.lc.bias")
    tokens = torch.where(h > 0, h, torch.zeros_like(h)) @ p("modal_encoder.proj_embeddings.weight").T \
        + p("modal_encoder.proj_embeddings.bias")
    end = torch.gather(ids, 1, mask.long().sum(1, keepdim=True) - 1).squeeze(1)
    modal = torch.cat([word[ids[:, 0]][:, None], tokens, word[end][:, None]], dim=1)
    modal = ln(modal + pos[torch.arange(n + 2)][None] + typ[torch.ones(b, 1, dtype=torch.long)])
    txt = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
    txt_mask = torch.cat([mask.long()[:, 1:], torch.zeros(b, 1, dtype=torch.long)], dim=1)
    text = ln(word[txt] + pos[torch.arange(t)][None] + typ[torch.zeros_like(ids)])
    full = torch.cat([torch.ones(b, n + 2, dtype=torch.long), txt_mask], dim=1).double()
    with torch.no_grad():
        seq = bert.encoder(torch.cat([modal, text], dim=1), attention_mask=(1.0 - full)[:, None, None, :] * -1e4)[0]
        pooled = bert.pooler(seq)
    h = pooled @ p("transform.dense.weight").T + p("transform.dense.bias")
    h = _ln(0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0))), p("transform.LayerNorm.weight"),
            p("transform.LayerNorm.bias"))
    return h @ p("outputs.layers.label.weight").T + p("outputs.layers.label.bias"), pooled


REGION_INPUTS = InputSpec(img_dim=DR, txt_dim=0, txt_ids=True, img_regions=RS)
MMBT_CFG = dict(num_attention_heads=NH, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_regions=6,
                fc7_dim=F)


@pytest.mark.parametrize("pack", [True, False])
def test_mmbt_region_forward_equals_mmfs_transcribed_in_float64(folders, pack):  # noqa: F811
    from heads.text_bert_checkpoint import head_from_checkpoint

    folder, bert = folders["BertModel"]
    head, report = head_from_checkpoint("mmbt-region", REGION_INPUTS, BINARY, dict(MMBT_CFG), folder)
    assert {k.split(".")[0] for k in report.missing_keys} == {"fc7", "modal_encoder", "transform", "outputs"}
    randomise_bert(head.transform, 11)
    head = head.double().eval()
    head.pack_positions = pack
    batch = dict(token_batch(seed=3), **region_batch(B, RS, DR, seed=4))
    with torch.no_grad():
        out = head(batch)
    logits, pooled = mmbt_region_reference(bert, head.state_dict(), batch["txt_ids"], batch["txt_mask"], batch, 6)
    torch.testing.assert_close(out["pooled"], pooled, atol=1e-8, rtol=0)
    torch.testing.assert_close(out["logits"]["label"], logits, atol=1e-8, rtol=0)
    assert out["sequence"].shape == (B, 6 + 1 + batch["txt_ids"].shape[1], head.config.hidden_size)
    with torch.no_grad():  # the zero-padded slots are tokens (MMF's ones mask): a sixth slot is not nothing
        fewer = head.__class__(REGION_INPUTS, BINARY, dataclasses.replace(head.config, num_regions=5))
        fewer.load_state_dict(head.state_dict())
        assert not torch.allclose(fewer.double().eval()(batch)["logits"]["label"], out["logits"]["label"])


def test_mmbt_region_options_groups_and_preset():
    from heads.presets import load_preset

    head = create_head("mmbt-region", REGION_INPUTS, BINARY, **dict(MMBT_CFG, hidden_size=8, num_hidden_layers=1,
                                                                      intermediate_size=8, vocab_size=V))
    decay = decay_by_name(head, 0.01)
    assert decay["fc7.lc.weight"] == 0.01 and decay["fc7.lc.bias"] == 0.0  # MMF's BERT groups, fc7 inside
    with pytest.raises(FeatstoreError, match=r"max_position_embeddings=8; the modal part takes positions 0..101"):
        create_head("mmbt-region", InputSpec(img_dim=DR, txt_dim=0, txt_ids=True, img_regions=100), BINARY,
                    max_position_embeddings=8, vocab_size=V)
    p = load_preset("mmbt-region-hm")
    assert p.head == "mmbt-region" and p.head_cfg == {"num_regions": 100, "fc7_dim": 2048, "fc7_weights": ""}
    assert {k: p.train[k] for k in ("lr", "weight_decay", "batch_size", "epochs", "warmup_ratio", "init_checkpoint")} \
        == {"lr": 5e-5, "weight_decay": 0.01, "batch_size": 32, "epochs": 83, "warmup_ratio": 0.0909,
            "init_checkpoint": "bert-base-uncased"}
    assert p.data == {"task": "label", "text_array": "input_ids", "max_regions": 100}
    assert "projects/mmbt/configs/hateful_memes/with_features.yaml" in p.source
    assert any("--set fc7_weights=DIR" in n for n in p.notes)


def test_mmbt_region_trains_through_the_cli_from_bert_and_the_pickles(regions, tmp_path):
    from safetensors.torch import load_file

    fc7 = shutil.copytree(regions["fc7"].parent, tmp_path / "vmb")
    args, heads = region_train(regions, tmp_path / "run", "--text", "btext", "--text-array", "input_ids",
                               "--head", "mmbt-region", "--set", f"num_attention_heads={NH}", "--set", "num_regions=6",
                               "--set", f"fc7_dim={F}", "--set", f"fc7_weights={fc7}", "--init-checkpoint",
                               regions["folder"])
    printed = invoke(heads, args)
    run = tmp_path / "run" / "seed_0"
    sd = load_file(str(run / "model.safetensors"))
    assert torch.equal(sd["fc7.lc.weight"], torch.from_numpy(regions["w"]))
    load = json.loads((run / "config.json").read_text())["checkpoint_load"]
    assert load["groups"]["used: fc7 (Detectron's vmb_weights)"] == ["fc7.lc.weight", "fc7.lc.bias"]
    assert sorted({k.split(".")[0] for k in load["missing_keys"]}) == ["modal_encoder", "outputs", "transform"]
    assert load["summary"][0] in printed and "starts from random weights" not in printed

    got = read_predictions(run / "predictions_test.csv")
    by_id = {s.id: s for s in regions["ds"].samples}
    samples = [by_id[i] for i in got]
    ids = [tokenise(s.text) for s in samples]
    ids = torch.tensor([i + [0] * (max(map(len, ids)) - len(i)) for i in ids])
    rows = [regions["keys"].index(s.image_key) for s in samples]
    batch = {"img_regions": torch.from_numpy(regions["arr"][rows]),
             "img_mask": torch.arange(RS)[None] < torch.from_numpy(regions["count"][rows])[:, None].long()}
    logits, _ = mmbt_region_reference(regions["bert"], sd, ids, ids != 0, batch, 6)
    want = torch.softmax(logits, -1)[:, 1].numpy()
    np.testing.assert_allclose([got[s.id] for s in samples], want, atol=1e-5, rtol=0)
    shutil.rmtree(fc7)
    invoke(heads, ["predict", str(run), "--dataset", regions["data"], "--store", regions["store"], "--text-array",
                   "input_ids", "--split", "test", "--out", tmp_path / "p.csv"])
    again = read_predictions(tmp_path / "p.csv")
    np.testing.assert_allclose([again[s.id] for s in samples], want, atol=1e-5, rtol=0)
