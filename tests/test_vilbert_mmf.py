"""ViLBERT against MMF: a checkpoint in MMF's full key layout (``model.bert.*``, ``model.classifier.*``,
``model.cls.*``; every tensor random, LayerNorm weights away from 1) through the real extract / train /
predict path, compared with an independent float64 transcription of MMF's forward written here from
``mmf/models/vilbert.py`` (ViLBERTBase + ViLBERTForClassification) and MMF's ``transformer_bbox``
processor. The key list below is written from MMF's module tree (names and shapes), never from our head.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import CAPTIONS, invoke, invoke_result, make_hm_folder
from featstore.errors import FeatstoreError

# tiny sizes; the layout follows MMF's (co-attention block k after v layers 0..k-1 and t layers 0..N-K+k-1)
TINY = dict(hidden_size=16, num_attention_heads=2, intermediate_size=20, num_hidden_layers=5,
            v_hidden_size=12, v_num_attention_heads=2, v_intermediate_size=14, v_num_hidden_layers=3,
            bi_hidden_size=8, bi_num_attention_heads=2, v_biattention_id=[0, 1], t_biattention_id=[3, 4],
            v_feature_size=10, max_position_embeddings=24, type_vocab_size=2, v_target_size=7,
            layer_norm_eps=1e-12)
BASE = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12,
            v_hidden_size=1024, v_num_attention_heads=8, v_intermediate_size=1024, v_num_hidden_layers=6,
            bi_hidden_size=1024, bi_num_attention_heads=8, v_biattention_id=[0, 1, 2, 3, 4, 5],
            t_biattention_id=[6, 7, 8, 9, 10, 11], v_feature_size=2048, max_position_embeddings=512,
            type_vocab_size=2, v_target_size=1601, vocab_size=30522, layer_norm_eps=1e-12)
HEADS = ["--set", "num_attention_heads=2", "--set", "v_num_attention_heads=2", "--set", "bi_num_attention_heads=2"]
START = 3  # text_start_layer = the first t id


# ------------------------------------------------------------------------------------ MMF's key list


def _linear(name, out_dim, in_dim):
    return {f"{name}.weight": (out_dim, in_dim), f"{name}.bias": (out_dim,)}


def _norm(name, dim):
    return {f"{name}.weight": (dim,), f"{name}.bias": (dim,)}


def _bert_layer(p, h, inter):
    """MMF BertLayer / BertImageLayer: attention.self.{query,key,value}, attention.output.{dense,LayerNorm},
    intermediate.dense, output.{dense,LayerNorm}."""
    d = {}
    for q in ("query", "key", "value"):
        d.update(_linear(f"{p}.attention.self.{q}", h, h))
    d.update(_linear(f"{p}.attention.output.dense", h, h))
    d.update(_norm(f"{p}.attention.output.LayerNorm", h))
    d.update(_linear(f"{p}.intermediate.dense", inter, h))
    d.update(_linear(f"{p}.output.dense", h, inter))
    d.update(_norm(f"{p}.output.LayerNorm", h))
    return d


def _connection(p, c):
    """MMF BertConnectionLayer: biattention (query1/key1/value1 on the image, query2/key2/value2 on the
    text), biOutput (dense1, LayerNorm1, q_dense1, dense2, LayerNorm2, q_dense2), v_/t_ intermediate+output."""
    h, hv, bi = c["hidden_size"], c["v_hidden_size"], c["bi_hidden_size"]
    d = {}
    for q in ("query1", "key1", "value1"):
        d.update(_linear(f"{p}.biattention.{q}", bi, hv))
    for q in ("query2", "key2", "value2"):
        d.update(_linear(f"{p}.biattention.{q}", bi, h))
    d.update(_linear(f"{p}.biOutput.dense1", hv, bi))
    d.update(_norm(f"{p}.biOutput.LayerNorm1", hv))
    d.update(_linear(f"{p}.biOutput.q_dense1", hv, bi))
    d.update(_linear(f"{p}.biOutput.dense2", h, bi))
    d.update(_norm(f"{p}.biOutput.LayerNorm2", h))
    d.update(_linear(f"{p}.biOutput.q_dense2", h, bi))
    d.update(_linear(f"{p}.v_intermediate.dense", c["v_intermediate_size"], hv))
    d.update(_linear(f"{p}.v_output.dense", hv, c["v_intermediate_size"]))
    d.update(_norm(f"{p}.v_output.LayerNorm", hv))
    d.update(_linear(f"{p}.t_intermediate.dense", c["intermediate_size"], h))
    d.update(_linear(f"{p}.t_output.dense", h, c["intermediate_size"]))
    d.update(_norm(f"{p}.t_output.LayerNorm", h))
    return d


def mmf_key_shapes(c: dict, vocab: int, num_labels=2, pretraining=False) -> dict:
    """Every tensor of MMF's ViLBERTForClassification (or ViLBERTForPretraining) state dict, by name."""
    h, hv, bi, b = c["hidden_size"], c["v_hidden_size"], c["bi_hidden_size"], "model.bert."
    d = {b + "embeddings.word_embeddings.weight": (vocab, h),
         b + "embeddings.position_embeddings.weight": (c["max_position_embeddings"], h),
         b + "embeddings.token_type_embeddings.weight": (c["type_vocab_size"], h),
         b + "embeddings.position_ids": (1, c["max_position_embeddings"])}
    d.update(_norm(b + "embeddings.LayerNorm", h))
    d.update(_linear(b + "v_embeddings.image_embeddings", hv, c["v_feature_size"]))
    d.update(_linear(b + "v_embeddings.image_location_embeddings", hv, 5))
    d.update(_norm(b + "v_embeddings.LayerNorm", hv))
    for i in range(c["num_hidden_layers"]):
        d.update(_bert_layer(f"{b}encoder.layer.{i}", h, c["intermediate_size"]))
    for i in range(c["v_num_hidden_layers"]):
        d.update(_bert_layer(f"{b}encoder.v_layer.{i}", hv, c["v_intermediate_size"]))
    for i in range(len(c["v_biattention_id"])):
        d.update(_connection(f"{b}encoder.c_layer.{i}", c))
    d.update(_linear(b + "t_pooler.dense", bi, h))
    d.update(_linear(b + "v_pooler.dense", bi, hv))
    if pretraining:  # BertPreTrainingHeads
        d["model.cls.predictions.bias"] = (vocab,)
        d.update(_linear("model.cls.predictions.transform.dense", h, h))
        d.update(_norm("model.cls.predictions.transform.LayerNorm", h))
        d.update(_linear("model.cls.predictions.decoder", vocab, h))
        d.update(_linear("model.cls.bi_seq_relationship", 2, bi))
        d.update(_linear("model.cls.imagePredictions.transform.dense", hv, hv))
        d.update(_norm("model.cls.imagePredictions.transform.LayerNorm", hv))
        d.update(_linear("model.cls.imagePredictions.decoder", c["v_target_size"], hv))
    else:  # ViLBERTForClassification.classifier: BertPredictionHeadTransform, Linear(bi, num_labels)
        d.update(_linear("model.classifier.0.dense", bi, bi))
        d.update(_norm("model.classifier.0.LayerNorm", bi))
        d.update(_linear("model.classifier.1", num_labels, bi))
    return d


def random_checkpoint(shapes: dict, seed: int = 0) -> dict:
    """Random tensors for every key: weights ~ N(0, 0.5 / sqrt(fan_in)), biases ~ N(0, 0.1), LayerNorm
    weights ~ 1 + N(0, 0.3) (away from 1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in shapes.items():
        if k.endswith("position_ids"):
            sd[k] = torch.arange(s[1])[None]
        elif "LayerNorm" in k and k.endswith("weight"):
            sd[k] = 1.0 + 0.3 * torch.randn(s, generator=g)
        elif len(s) == 2:
            sd[k] = torch.randn(s, generator=g) * (0.5 / math.sqrt(s[1]) if "embeddings" not in k or "v_" in k else 0.5)
        else:
            sd[k] = 0.1 * torch.randn(s, generator=g)
    return sd


# ------------------------------------------------------------ MMF's forward in float64 (transcription)


def _erf(x):
    from scipy.special import erf
    return erf(x)


class MMFViLBERT:
    """ViLBERTBase.forward + ViLBERTForClassification's fusion and classifier, eval mode (no dropout),
    float64 numpy on the checkpoint's own tensors (MMF names)."""

    def __init__(self, sd: dict, c: dict):
        self.w = {k: v.double().numpy() for k, v in sd.items()}
        self.c = c

    def lin(self, name, x):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def ln(self, name, x, eps=1e-12):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    @staticmethod
    def gelu(x):
        return x * 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))

    @staticmethod
    def attend(q, k, v, heads, mask):
        b, nq, a = q.shape
        d = a // heads
        sp = lambda x: x.reshape(b, x.shape[1], heads, d).transpose(0, 2, 1, 3)  # noqa: E731
        s = sp(q) @ sp(k).transpose(0, 1, 3, 2) / math.sqrt(d) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        p = s / s.sum(-1, keepdims=True)
        return (p @ sp(v)).transpose(0, 2, 1, 3).reshape(b, nq, a)

    def layer(self, p, x, mask, heads):
        ctx = self.attend(self.lin(p + ".attention.self.query", x), self.lin(p + ".attention.self.key", x),
                          self.lin(p + ".attention.self.value", x), heads, mask)
        a = self.ln(p + ".attention.output.LayerNorm", self.lin(p + ".attention.output.dense", ctx) + x)
        i = self.gelu(self.lin(p + ".intermediate.dense", a))
        return self.ln(p + ".output.LayerNorm", self.lin(p + ".output.dense", i) + a)

    def connect(self, p, img, imask, txt, tmask):
        h = self.c["bi_num_attention_heads"]
        ctx1 = self.attend(self.lin(p + ".biattention.query2", txt), self.lin(p + ".biattention.key1", img),
                           self.lin(p + ".biattention.value1", img), h, imask)  # text over image
        ctx2 = self.attend(self.lin(p + ".biattention.query1", img), self.lin(p + ".biattention.key2", txt),
                           self.lin(p + ".biattention.value2", txt), h, tmask)  # image over text
        a1 = self.ln(p + ".biOutput.LayerNorm1", self.lin(p + ".biOutput.dense1", ctx2) + img)
        a2 = self.ln(p + ".biOutput.LayerNorm2", self.lin(p + ".biOutput.dense2", ctx1) + txt)
        img = self.ln(p + ".v_output.LayerNorm",
                      self.lin(p + ".v_output.dense", self.gelu(self.lin(p + ".v_intermediate.dense", a1))) + a1)
        txt = self.ln(p + ".t_output.LayerNorm",
                      self.lin(p + ".t_output.dense", self.gelu(self.lin(p + ".t_intermediate.dense", a2))) + a2)
        return img, txt

    def text_states(self, ids, upto):
        """BertEmbeddings (token type 0) then text layers 0..upto-1 -> [B, T, H]."""
        b = "model.bert."
        x = (self.w[b + "embeddings.word_embeddings.weight"][ids]
             + self.w[b + "embeddings.position_embeddings.weight"][np.arange(ids.shape[1])][None]
             + self.w[b + "embeddings.token_type_embeddings.weight"][0])
        x = self.ln(b + "embeddings.LayerNorm", x)
        tmask = (1.0 - (ids != 0))[:, None, None, :] * -10000.0
        for i in range(upto):
            x = self.layer(f"{b}encoder.layer.{i}", x, tmask, self.c["num_attention_heads"])
        return x

    def probs(self, ids, feats, boxes, image_wh, rows):
        c, b = self.c, "model.bert."
        w, h = image_wh[:, 0, None].astype(np.float64), image_wh[:, 1, None].astype(np.float64)
        bx = boxes.astype(np.float64)
        loc = np.stack([bx[..., 0] / w, bx[..., 1] / h, bx[..., 2] / w, bx[..., 3] / h,
                        (bx[..., 3] - bx[..., 1]) * (bx[..., 2] - bx[..., 0]) / (w * h)], -1)  # transformer_bbox
        imask = (1.0 - (np.arange(feats.shape[1])[None] < rows[:, None]))[:, None, None, :] * -10000.0
        tmask = (1.0 - (ids != 0))[:, None, None, :] * -10000.0
        img = self.ln(b + "v_embeddings.LayerNorm", self.lin(b + "v_embeddings.image_embeddings", feats.astype(np.float64))
                      + self.lin(b + "v_embeddings.image_location_embeddings", loc))
        txt = self.text_states(ids, 0)
        t_start = v_start = 0
        for count, (v_end, t_end) in enumerate(zip(c["v_biattention_id"], c["t_biattention_id"])):
            for cur in range(c["num_hidden_layers"]):
                if t_start <= cur < t_end:
                    txt = self.layer(f"{b}encoder.layer.{cur}", txt, tmask, c["num_attention_heads"])
            for cur in range(c["v_num_hidden_layers"]):
                if v_start <= cur < v_end:
                    img = self.layer(f"{b}encoder.v_layer.{cur}", img, imask, c["v_num_attention_heads"])
            img, txt = self.connect(f"{b}encoder.c_layer.{count}", img, imask, txt, tmask)
            v_start, t_start = v_end, t_end
        for cur in range(v_start, c["v_num_hidden_layers"]):
            img = self.layer(f"{b}encoder.v_layer.{cur}", img, imask, c["v_num_attention_heads"])
        for cur in range(t_start, c["num_hidden_layers"]):
            txt = self.layer(f"{b}encoder.layer.{cur}", txt, tmask, c["num_attention_heads"])
        pt = np.maximum(self.lin(b + "t_pooler.dense", txt[:, 0]), 0)
        pv = np.maximum(self.lin(b + "v_pooler.dense", img[:, 0]), 0)
        x = self.gelu(self.lin("model.classifier.0.dense", pt * pv))
        logits = self.lin("model.classifier.1", self.ln("model.classifier.0.LayerNorm", x, c["layer_norm_eps"]))
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------------------- the world

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = sorted({w for t in CAPTIONS for w in t.split()} | {"again", "today", "here"})
VOCAB = SPECIALS + WORDS


def tokenise(text: str, max_length: int = 16) -> list:
    """[CLS] + word ids + [SEP] (every caption word is in the tiny vocabulary), cut to max_length."""
    ids = [VOCAB.index(w) for w in text.lower().split()][: max_length - 2]
    return [VOCAB.index("[CLS]")] + ids + [VOCAB.index("[SEP]")]


def write_vocab(folder: Path) -> Path:
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    return folder


def write_regions(store_path: Path, image_keys, seed: int = 5, dim: int = 10, r: int = 7):
    """An image feature set as MMF's reader sees it: ``regions`` rows (2..7 per image), pixel ``boxes``,
    ``image_size``; stored float32."""
    from featstore import Recipe, open_store

    rng = np.random.default_rng(seed)
    n = len(image_keys)
    count = rng.integers(2, r + 1, n).astype(np.int32)
    count[0] = r
    regions = rng.standard_normal((n, r, dim)).astype(np.float32)
    xy = rng.uniform(0, 30, (n, r, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 20, (n, r, 2))], 2).astype(np.float32)
    beyond = np.arange(r)[None] >= count[:, None]
    regions[beyond], boxes[beyond] = 0, 0
    size = np.stack([rng.integers(56, 90, n), rng.integers(48, 80, n)], 1).astype(np.int32)
    arrays = {"regions": regions, "boxes": boxes, "image_size": size, "count": count}
    store = open_store(str(store_path), create=True)
    store.write("mmfimg", Recipe(extractor="import:mmf-lmdb", config={}), list(image_keys), arrays,
                key_kind="image_key", modality="image", per_item=("regions", "boxes"))
    return dict(zip(image_keys, zip(regions, boxes, size, count)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from cli.featstore_cli import main as featstore
    from featstore.datasets import load_dataset

    root = tmp_path_factory.mktemp("mmf")
    data = make_hm_folder(root / "data")
    shapes = mmf_key_shapes(TINY, len(VOCAB))
    sd = random_checkpoint(shapes)
    ckpt = root / "vilbert_hm.bin"
    torch.save({"model": sd}, ckpt)
    vocab = write_vocab(root / "vocab")
    ds = load_dataset(data)
    images = write_regions(root / "store", ds.image_keys())
    invoke(featstore, ["extract", "--dataset", data, "--extractor", "vilbert-text", "--store", root / "store",
                       "--name", "vtext", "--workers", 0, "--quiet", "--weights", ckpt, "--set", f"vocab={vocab}",
                       "--set", "layers=[0,3]", "--set", "max_length=16", "--set", "dtype=float32",
                       "--set", "num_attention_heads=2"])
    return dict(root=root, data=data, store=root / "store", ckpt=ckpt, sd=sd, vocab=vocab, ds=ds, images=images)


def reference_probs(world, samples):
    ref = MMFViLBERT(world["sd"], TINY)
    ids = [tokenise(s.text) for s in samples]
    L = max(map(len, ids))
    ids = np.array([i + [0] * (L - len(i)) for i in ids])
    rows = [world["images"][s.image_key] for s in samples]
    feats, boxes, size, count = (np.stack([r[j] for r in rows]) for j in range(4))
    return ref.probs(ids, feats, boxes, size, count)


def read_predictions(path: Path) -> dict:
    with open(path) as f:
        return {r["id"]: float(r["proba"]) for r in csv.DictReader(f)}


# ------------------------------------------------------------------------------------------------ tests


def test_text_extractor_states_equal_mmf_text_path(world):
    from featstore import open_store

    fs = open_store(str(world["store"])).open("vtext")
    keys = list(fs.keys)
    by_id = {s.id: s for s in world["ds"].samples}
    ref = MMFViLBERT(world["sd"], TINY)
    count = fs.read("count")
    ids_stored = fs.read("input_ids")
    for layer in (0, 3):
        got = fs.read(f"layer_{layer}")
        for row, key in enumerate(keys[:12]):
            ids = np.array([tokenise(by_id[key].text)])
            n = ids.shape[1]
            assert count[row] == n and list(ids_stored[row, :n]) == list(ids[0])
            want = ref.text_states(ids, layer)[0]
            np.testing.assert_allclose(got[row, :n], want, atol=2e-5, rtol=1e-5)
            assert not got[row, n:].any()
    np.testing.assert_array_equal(fs.read("tokens"), fs.read("layer_3"))
    assert fs.recipe.extractor == "vilbert-text" and fs.recipe.config["layers"] == [0, 3]


def test_prediction_parity_with_mmf_through_train_and_predict(world):
    """`heads train --vilbert-checkpoint` with only the head counts given: the sizes, layer ids and
    text_start_layer come from the checkpoint. lr=1e-30 leaves every float32 weight as loaded, so the
    run's predictions are the checkpoint's function (the real train path: load, best state, CSV)."""
    from cli.heads_cli import main as heads

    run = world["root"] / "run"
    out = invoke(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--image", "mmfimg",
                         "--text", "vtext", "--text-array", f"layer_{START}", "--head", "vilbert", *HEADS,
                         "--vilbert-checkpoint", world["ckpt"], "--epochs", 1, "--lr", 1e-30, "--warmup", 0,
                         "--quiet", "--out", run])
    run = run / "seed_0"
    cfg = json.loads((run / "config.json").read_text())
    hc = cfg["head_config"]
    assert (hc["num_hidden_layers"], hc["text_start_layer"], hc["v_num_hidden_layers"]) == (5, 3, 3)
    assert hc["v_biattention_id"] == [0, 1] and hc["t_biattention_id"] == [3, 4] and hc["v_feature_size"] == 10
    assert hc["classifier"] == "mmf" and hc["global_region"] is False
    load = cfg["checkpoint_load"]
    assert load["missing_keys"] == []
    assert len(load["groups"]["used: classifier"]) == 6
    assert len(load["groups"]["ignored: lower text layers"]) == 3 * 16
    assert len(load["groups"]["ignored: text embeddings"]) == 5
    assert load["groups"]["ignored: buffers"] == ["model.bert.embeddings.position_ids"]
    assert load["summary"][0] in out and "missing 0" in load["summary"][0]
    got = read_predictions(run / "predictions_test.csv")
    by_id = {s.id: s for s in world["ds"].samples}
    samples = [by_id[i] for i in got]
    assert len(samples) == 12
    want = reference_probs(world, samples)[:, 1]
    np.testing.assert_allclose([got[s.id] for s in samples], want, atol=1e-5, rtol=0)
    # heads predict rebuilds the head from config.json alone
    csv_path = world["root"] / "pred.csv"
    invoke(heads, ["predict", str(run), "--dataset", world["data"], "--store", world["store"],
                   "--text-array", f"layer_{START}", "--split", "test", "--out", csv_path])
    again = read_predictions(csv_path)
    np.testing.assert_allclose([again[s.id] for s in samples], want, atol=1e-5, rtol=0)


def test_text_layer_mismatch_is_refused_unless_allowed(world):
    from cli.heads_cli import main as heads

    base = ["train", "--dataset", world["data"], "--store", world["store"], "--image", "mmfimg", "--text", "vtext",
            "--head", "vilbert", *HEADS, "--vilbert-checkpoint", world["ckpt"], "--epochs", 1, "--quiet"]
    res = invoke_result(heads, base + ["--text-array", "layer_0", "--out", world["root"] / "bad"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "checkpoint " not in res.output  # no load report for a refused run
    assert res.output.splitlines()[-1] == ("error: text feature set 'vtext' array 'layer_0' holds layer 0 states, but vilbert "
                   "text_start_layer=3 runs text layers 3.. on states after layer 3; pass --text-array layer_3 "
                   "(extract it with --set layers='[3]'), set text_start_layer to the cached layer, or "
                   "--set allow_text_layer_mismatch=true to train on them anyway")
    assert not (world["root"] / "bad").exists()  # refused with the head checks, before the run folder is made
    invoke(heads, base + ["--text-array", "layer_0", "--set", "text_start_layer=0", "--out", world["root"] / "t0"])
    cfg = json.loads((world["root"] / "t0" / "seed_0" / "config.json").read_text())
    assert cfg["head_config"]["text_start_layer"] == 0
    assert len(cfg["checkpoint_load"]["groups"]["used: upper text layers"]) == 5 * 16
    invoke(heads, base + ["--text-array", "layer_0", "--set", "allow_text_layer_mismatch=true",
                          "--out", world["root"] / "forced"])


def test_real_mmf_key_list_maps_onto_the_head():
    """MMF's full BERT-base key list (shapes only, meta tensors): the sizes read from it are MMF's defaults,
    every head tensor gets a checkpoint tensor of its shape, and what is left out is grouped."""
    from heads.models import create_head
    from heads.spec import InputSpec, Task, TaskSpec
    from heads.vilbert_checkpoint import config_from_checkpoint, load_state

    for pretraining in (False, True):
        shapes = mmf_key_shapes(BASE, BASE["vocab_size"], pretraining=pretraining)
        cfg = config_from_checkpoint(shapes, {})
        assert cfg == {k: BASE[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "v_hidden_size",
                                             "v_intermediate_size", "v_num_hidden_layers", "bi_hidden_size",
                                             "v_feature_size", "v_biattention_id", "t_biattention_id")} | {
            "text_start_layer": 6}
        spec = TaskSpec([Task("label", "binary", 2)])
        with torch.device("meta"):
            head = create_head("vilbert", InputSpec(img_dim=2048, txt_dim=768, img_regions=100, txt_tokens=128,
                                                    img_boxes=True), spec, **cfg)
            sd = {k: torch.empty(s) for k, s in shapes.items()}
        report = load_state(head, sd, "vilbert.bin")
        assert set(report.used_keys) | set(report.ignored_keys) == set(shapes)
        g = {k: len(v) for k, v in report.groups.items()}
        assert g["ignored: lower text layers"] == 6 * 16 and g["ignored: text embeddings"] == 5
        assert g["used: upper text layers"] == 6 * 16 and g["ignored: buffers"] == 1
        assert g["used: backbone"] == 6 * 16 + 6 * 36 + 6 + 4
        if pretraining:
            assert g["ignored: pretraining heads"] == 15 and report.missing_keys == [
                "outputs.layers.label.bias", "outputs.layers.label.weight", "transform.LayerNorm.bias",
                "transform.LayerNorm.weight", "transform.dense.bias", "transform.dense.weight"]
        else:
            assert g["used: classifier"] == 6 and report.missing_keys == []


def test_a_data_parallel_file_loads_as_the_bare_one(world, tmp_path):
    """A model saved while wrapped in DataParallel (every key under ``module.``) loads the same tensors, with the
    same report, as MMF's own unwrapped save."""
    from heads.spec import InputSpec, Task, TaskSpec
    from heads.vilbert_checkpoint import head_from_checkpoint

    wrapped = tmp_path / "dp.bin"
    torch.save({"model": {"module." + k: v for k, v in world["sd"].items()}}, wrapped)
    spec = TaskSpec([Task("label", "binary", 2)])
    inputs = InputSpec(img_dim=10, txt_dim=16, img_regions=7, txt_tokens=16, img_boxes=True)
    sizes = dict(num_attention_heads=2, v_num_attention_heads=2, bi_num_attention_heads=2)
    bare, bare_report = head_from_checkpoint("vilbert", inputs, spec, dict(sizes), str(world["ckpt"]))
    dp, dp_report = head_from_checkpoint("vilbert", inputs, spec, dict(sizes), str(wrapped))
    assert dp.config == bare.config
    for key, value in bare.state_dict().items():
        torch.testing.assert_close(dp.state_dict()[key], value, rtol=0, atol=0)
    assert len(dp_report.used_keys) == len(bare_report.used_keys) and dp_report.missing_keys == bare_report.missing_keys
    assert [ln.replace(str(wrapped), "F") for ln in dp_report.lines()] == \
        [ln.replace(str(world["ckpt"]), "F") for ln in bare_report.lines()]


def test_tiny_checkpoint_tensors_land_where_mmf_keeps_them(world):
    from heads.spec import InputSpec, Task, TaskSpec
    from heads.vilbert_checkpoint import head_from_checkpoint

    spec = TaskSpec([Task("label", "binary", 2)])
    inputs = InputSpec(img_dim=10, txt_dim=16, img_regions=7, txt_tokens=16, img_boxes=True)
    head, report = head_from_checkpoint("vilbert", inputs, spec, dict(num_attention_heads=2, v_num_attention_heads=2,
                                        bi_num_attention_heads=2), str(world["ckpt"]))
    own = head.state_dict()
    for key, value in world["sd"].items():
        tail = key[len("model.bert."):] if key.startswith("model.bert.") else None
        if key.startswith("model.classifier.0."):
            target = "transform." + key[len("model.classifier.0."):]
        elif key.startswith("model.classifier.1."):
            target = "outputs.layers.label." + key[len("model.classifier.1."):]
        elif tail.startswith("encoder.layer."):
            i, _, rest = tail[len("encoder.layer."):].partition(".")
            if int(i) < START:
                assert key in report.ignored_keys
                continue
            target = f"encoder.layer.{int(i) - START}.{rest}"
        elif tail.startswith("embeddings."):
            assert key in report.ignored_keys
            continue
        else:
            target = tail
        torch.testing.assert_close(own[target], value, rtol=0, atol=0)
    assert len(report.lines()) == 2 and report.lines()[0].startswith(f"checkpoint {world['ckpt']}: used ")


def test_label_count_mismatch_keeps_transform_and_says_so(tmp_path):
    from heads.models import create_head
    from heads.spec import InputSpec, Task, TaskSpec
    from heads.vilbert_checkpoint import config_from_checkpoint, load_vilbert_checkpoint

    shapes = mmf_key_shapes(TINY, len(VOCAB), num_labels=3)
    sd = random_checkpoint(shapes, seed=1)
    torch.save(sd, tmp_path / "three.bin")
    cfg = config_from_checkpoint(shapes, dict(num_attention_heads=2, v_num_attention_heads=2, bi_num_attention_heads=2))
    head = create_head("vilbert", InputSpec(img_dim=10, txt_dim=16, img_regions=7, txt_tokens=16),
                       TaskSpec([Task("label", "binary", 2)]), **cfg)
    report = load_vilbert_checkpoint(head, str(tmp_path / "three.bin"))
    assert report.notes == ["classifier: the checkpoint's final layer has 3 labels, the head's task 2 outputs; "
                            "it was left initialised"]
    assert report.groups["ignored: classifier"] == ["model.classifier.1.bias", "model.classifier.1.weight"]
    torch.testing.assert_close(head.transform.dense.weight, sd["model.classifier.0.dense.weight"])
    assert report.missing_keys == ["outputs.layers.label.bias", "outputs.layers.label.weight"]
    assert report.notes[0] in report.lines()[1]


@pytest.mark.parametrize("mode", ["error", "project", "reinit"])
def test_image_features_of_another_width(tmp_path, mode):
    from heads.spec import InputSpec, Task, TaskSpec
    from heads.vilbert_checkpoint import head_from_checkpoint

    sd = random_checkpoint(mmf_key_shapes(TINY, len(VOCAB)), seed=2)
    torch.save(sd, tmp_path / "ckpt.bin")
    inputs = InputSpec(img_dim=6, txt_dim=16, img_regions=7, txt_tokens=16, img_boxes=True)
    cfg = dict(num_attention_heads=2, v_num_attention_heads=2, bi_num_attention_heads=2, img_dim_mismatch=mode)
    spec = TaskSpec([Task("label", "binary", 2)])
    if mode == "error":
        with pytest.raises(FeatstoreError) as e:
            head_from_checkpoint("vilbert", inputs, spec, cfg, str(tmp_path / "ckpt.bin"))
        assert str(e.value) == (
            "vilbert v_feature_size=10 (the checkpoint's image embedding input) differs from the image features' "
            "width 6; pass --set img_dim_mismatch=project (learn a Linear(6, 10) in front of the checkpoint's "
            "embedding) or --set img_dim_mismatch=reinit (a new image embedding)")
        return
    head, report = head_from_checkpoint("vilbert", inputs, spec, cfg, str(tmp_path / "ckpt.bin"))
    emb = head.v_embeddings.image_embeddings
    torch.testing.assert_close(emb.bias, sd["model.bert.v_embeddings.image_embeddings.bias"])
    if mode == "project":
        assert (head.img_proj.in_features, head.img_proj.out_features) == (6, 10)
        torch.testing.assert_close(emb.weight, sd["model.bert.v_embeddings.image_embeddings.weight"])
        assert report.missing_keys == ["img_proj.bias", "img_proj.weight"] and not report.reinitialised_keys
    else:
        assert tuple(emb.weight.shape) == (12, 6) and isinstance(head.img_proj, torch.nn.Identity)
        assert report.reinitialised_keys == ["model.bert.v_embeddings.image_embeddings.weight "
                                             "(checkpoint [12, 10], head [12, 6])"]
        assert report.missing_keys == ["v_embeddings.image_embeddings.weight"]
        assert "re-initialised model.bert.v_embeddings.image_embeddings.weight" in report.lines()[1]


def test_text_extractor_errors(world, tmp_path):
    from featstore.extractors import create_extractor

    ck, vocab = str(world["ckpt"]), str(world["vocab"])
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vilbert-text", weights=ck, vocab="nobody/no-such-vocab", layers=[1], num_attention_heads=2)
    msg = str(e.value)
    assert msg.startswith("vilbert-text tokenises with bert-base-uncased's vocabulary (vocab='nobody/no-such-vocab'), "
                          "which is not here: weights 'nobody/no-such-vocab' are neither a local path nor in the "
                          "Hugging Face cache ")
    assert msg.endswith("on a connected machine run `huggingface-cli download nobody/no-such-vocab` (or save the "
                        "weights to a folder) and pass --set vocab=DIR") and "\n" not in msg
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vilbert-text", weights=ck, vocab=vocab, layers=[6], num_attention_heads=2)
    assert str(e.value) == f"checkpoint {ck!r} has 5 text layers, too few for layer 6; choose layers within 0..5"
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vilbert-text", weights=ck, vocab=vocab, num_attention_heads=3, layers=[1])
    assert str(e.value) == ("num_attention_heads=3 does not divide the checkpoint's text width 16; pass the "
                            "checkpoint's head count (12 for BERT-base)")
    no_text = {k: v for k, v in world["sd"].items() if "embeddings.word" not in k}
    torch.save(no_text, tmp_path / "no_text.bin")
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vilbert-text", weights=str(tmp_path / "no_text.bin"), vocab=vocab, layers=[1])
    assert str(e.value) == (f"checkpoint {str(tmp_path / 'no_text.bin')!r} has no text embeddings (model.bert."
                            "embeddings.word_embeddings.weight); pass a ViLBERT checkpoint that includes its BERT "
                            "embeddings")
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vilbert-text", vocab=vocab)
    assert str(e.value) == "vilbert-text needs the ViLBERT checkpoint; pass --weights vilbert_pretrained_cc.bin"


def test_checkpoint_on_another_head_is_refused(world):
    from cli.heads_cli import main as heads

    res = invoke_result(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--image", "mmfimg",
                                "--text", "vtext", "--head", "concat", "--vilbert-checkpoint", world["ckpt"],
                                "--out", world["root"] / "concat"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.splitlines()[-1] == (
        "error: --init-checkpoint initialises a vilbert, visualbert, text-bert, concat-bert, late-fusion, mmbt, "
        "mmbt-region, image-region, cross, image-only head, not 'concat'; pass --head vilbert / visualbert / "
        "text-bert / concat-bert / late-fusion / mmbt / mmbt-region / image-region / cross / image-only (or --head "
        "refnet --set base=vilbert)")


def test_refnet_over_vilbert_loads_the_checkpoint_into_its_base(world):
    from heads.spec import InputSpec, Task, TaskSpec
    from heads.vilbert_checkpoint import head_from_checkpoint

    inputs = InputSpec(img_dim=10, txt_dim=16, img_regions=7, txt_tokens=16, img_boxes=True)
    cfg = dict(base="vilbert", base_cfg=dict(num_attention_heads=2, v_num_attention_heads=2, bi_num_attention_heads=2))
    head, report = head_from_checkpoint("refnet", inputs, TaskSpec([Task("label", "binary", 2)]), cfg,
                                        str(world["ckpt"]))
    assert head.base.config.text_start_layer == START and report.missing_keys == []
    torch.testing.assert_close(head.base.encoder.c_layer[1].biattention.query2.weight,
                               world["sd"]["model.bert.encoder.c_layer.1.biattention.query2.weight"], rtol=0, atol=0)
