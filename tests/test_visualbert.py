"""``visualbert`` is MMF's VisualBERT (``VisualBERTForClassification``), checked against two references written
outside the head:

* ``mmf_reference``: a float64 transcription of MMF's forward (``mmf/models/visual_bert.py`` with
  ``BertVisioLinguisticEmbeddings`` from ``mmf/modules/embeddings.py`` and BERT's layers), written here from
  that code, run on a state dict named as MMF's files are (``model.bert.*``, ``model.classifier.0/1.*``) and
  drawn at random here (never from the head);
* transformers' own ``VisualBertModel`` (the uclanlp port) with MMF's visual token type 0, for the base
  model's sequence and pooled outputs.

The head gets its weights only through ``heads.visualbert_checkpoint``, so the key mapping is checked by
the same comparisons. Also: the loader's report and its refusals, ``special_visual_initialize``, the
vocabulary checks, MMF's optimiser groups and version-1 runs reopened as ``singlestream``.
"""
from __future__ import annotations

import math

import pytest
import torch

from featstore.errors import FeatstoreError
from heads.models import create_head
from heads.spec import InputSpec, Task, TaskSpec
from heads.visualbert_checkpoint import (config_from_checkpoint, head_from_checkpoint, load_state,
                                         load_visualbert_checkpoint)

V, H, NH, L, FF, P, DV = 50, 16, 2, 2, 24, 40, 12  # vocab, hidden, heads, layers, ffn, positions, region width
T, R, B = 7, 5, 4
BINARY = TaskSpec([Task("label", "binary", 2, ["0", "1"])])
INPUTS = InputSpec(img_dim=DV, txt_dim=8, img_regions=R, txt_tokens=T, txt_ids=True, img_pooled=False)
SIZES = dict(hidden_size=H, num_attention_heads=NH, num_hidden_layers=L, intermediate_size=FF, vocab_size=V,
             max_position_embeddings=P)
EVAL = dict(SIZES, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


# ----------------------------------------------------------------------------------- the MMF reference


def mmf_state(seed: int = 0, num_labels: int = 2, classifier: bool = True, pretraining: bool = False) -> dict:
    """Random float64 tensors under the names of an MMF VisualBERT ``model.pth`` (BERT layers' names)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, s=0.3: torch.randn(*shape, generator=g, dtype=torch.float64) * s  # noqa: E731
    sd = {"model.bert.embeddings.word_embeddings.weight": rnd(V, H),
          "model.bert.embeddings.position_embeddings.weight": rnd(P, H),
          "model.bert.embeddings.token_type_embeddings.weight": rnd(2, H),
          "model.bert.embeddings.token_type_embeddings_visual.weight": rnd(2, H),
          "model.bert.embeddings.position_embeddings_visual.weight": rnd(P, H),
          "model.bert.embeddings.projection.weight": rnd(H, DV), "model.bert.embeddings.projection.bias": rnd(H),
          "model.bert.embeddings.LayerNorm.weight": 1 + rnd(H), "model.bert.embeddings.LayerNorm.bias": rnd(H),
          "model.bert.pooler.dense.weight": rnd(H, H), "model.bert.pooler.dense.bias": rnd(H)}
    for i in range(L):
        pre = f"model.bert.encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (H, H), "attention.self.key": (H, H),
                             "attention.self.value": (H, H), "attention.output.dense": (H, H),
                             "intermediate.dense": (FF, H), "output.dense": (H, FF)}.items():
            sd[pre + name + ".weight"], sd[pre + name + ".bias"] = rnd(o, n), rnd(o)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[pre + ln + ".weight"], sd[pre + ln + ".bias"] = 1 + rnd(H), rnd(H)
    if classifier:
        sd.update({"model.classifier.0.dense.weight": rnd(H, H), "model.classifier.0.dense.bias": rnd(H),
                   "model.classifier.0.LayerNorm.weight": 1 + rnd(H), "model.classifier.0.LayerNorm.bias": rnd(H),
                   "model.classifier.1.weight": rnd(num_labels, H), "model.classifier.1.bias": rnd(num_labels)})
    if pretraining:  # VisualBERTForPretraining's masked-LM head and a buffer
        sd.update({"model.cls.predictions.bias": rnd(V), "model.cls.predictions.transform.dense.weight": rnd(H, H),
                   "model.bert.embeddings.position_ids": torch.arange(P)[None]})
    return sd


def _ln(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu(x):  # BERT's erf GELU
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def mmf_reference(sd, ids, input_mask, feats, image_mask, strategy="default"):
    """MMF's VisualBERTForClassification.forward in eval mode, float64 -> (logits [B, labels], pooled, sequence)."""
    p = lambda k: sd["model." + k]  # noqa: E731
    lin = lambda x, k: x @ p(k + ".weight").T + p(k + ".bias")  # noqa: E731
    b, t = ids.shape
    r = feats.shape[1]
    # encode_text: word + position(arange) + token type (segment_ids: 0 for one sentence)
    text = (p("bert.embeddings.word_embeddings.weight")[ids] + p("bert.embeddings.position_embeddings.weight")[
        torch.arange(t)][None] + p("bert.embeddings.token_type_embeddings.weight")[torch.zeros_like(ids)])
    # encode_image: projection + visual position (zeros without alignment) + visual token type (zeros_like mask)
    zeros = torch.zeros(b, r, dtype=torch.long)
    vis = (lin(feats, "bert.embeddings.projection") + p("bert.embeddings.position_embeddings_visual.weight")[zeros]
           + p("bert.embeddings.token_type_embeddings_visual.weight")[zeros])
    x = _ln(torch.cat([text, vis], 1), p("bert.embeddings.LayerNorm.weight"), p("bert.embeddings.LayerNorm.bias"))
    ext = (1.0 - torch.cat([input_mask, image_mask], 1).double())[:, None, None, :] * -10000.0
    d = H // NH
    for i in range(L):
        pre = f"bert.encoder.layer.{i}."
        q, k, v = (lin(x, pre + "attention.self." + n).view(b, -1, NH, d).transpose(1, 2)
                   for n in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + ext, dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(b, -1, H)
        a = _ln(lin(ctx, pre + "attention.output.dense") + x, p(pre + "attention.output.LayerNorm.weight"),
                p(pre + "attention.output.LayerNorm.bias"))
        x = _ln(lin(_gelu(lin(a, pre + "intermediate.dense")), pre + "output.dense") + a,
                p(pre + "output.LayerNorm.weight"), p(pre + "output.LayerNorm.bias"))
    if strategy == "default":
        pooled = torch.tanh(lin(x[:, 0], "bert.pooler.dense"))
    else:  # "vqa": the sequence output at input_mask.sum(1) - 2, no pooler
        pooled = x[torch.arange(b), input_mask.long().sum(1) - 2]
    h = _ln(_gelu(lin(pooled, "classifier.0.dense")), p("classifier.0.LayerNorm.weight"),
            p("classifier.0.LayerNorm.bias"))
    return lin(h, "classifier.1"), pooled, x


def batch(seed: int = 1):
    """Text of 3..7 real tokens and 2..5 real regions (padding ids 0, padded regions large garbage)."""
    g = torch.Generator().manual_seed(seed)
    t_len, r_len = torch.tensor([3, 7, 5, 4]), torch.tensor([2, 5, 3, 4])
    t_mask = torch.arange(T)[None] < t_len[:, None]
    r_mask = torch.arange(R)[None] < r_len[:, None]
    ids = torch.where(t_mask, torch.randint(1, V, (B, T), generator=g), 0)
    feats = torch.where(r_mask[..., None], torch.randn(B, R, DV, generator=g, dtype=torch.float64),
                        50 * torch.randn(B, R, DV, generator=g, dtype=torch.float64))
    return {"txt_ids": ids, "txt_mask": t_mask, "img_regions": feats, "img_mask": r_mask,
            "txt_tokens": torch.randn(B, T, 8, generator=g, dtype=torch.float64)}


def loaded_head(sd, **cfg):
    head = create_head("visualbert", INPUTS, BINARY, **dict(EVAL, **cfg)).double()
    report = load_state(head, sd, "mmf.pth")
    return head.eval(), report


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("strategy", ["default", "vqa"])
def test_forward_equals_mmfs_transcribed_in_float64(pack, strategy):
    sd = mmf_state()
    head, report = loaded_head(sd, pooler_strategy=strategy)
    head.pack_positions = pack
    bt = batch()
    want, pooled, seq = mmf_reference(sd, bt["txt_ids"], bt["txt_mask"], bt["img_regions"], bt["img_mask"], strategy)
    with torch.no_grad():
        out = head(bt)
    torch.testing.assert_close(out["logits"]["label"], want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out["pooled"], pooled, atol=1e-10, rtol=1e-10)
    real = torch.cat([bt["txt_mask"], bt["img_mask"]], 1)
    torch.testing.assert_close(out["sequence"][real], seq[real], atol=1e-10, rtol=1e-10)
    assert report.missing_keys == [] and report.ignored_keys == []
    assert len(report.used_keys) == len(sd)


def test_base_model_equals_transformers_visualbert():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.VisualBertConfig(
        vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH, intermediate_size=FF,
        max_position_embeddings=P, visual_embedding_dim=DV, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, hidden_act="gelu")
    torch.manual_seed(5)
    hf = transformers.VisualBertModel(hf_cfg).double().eval()
    with torch.no_grad():  # every tensor away from its initial value, so no mapping mistake can hide
        for prm in hf.parameters():
            prm.add_(torch.randn_like(prm) * 0.2)
    sd = {"visual_bert." + k: v for k, v in hf.state_dict().items()}
    sd["cls.predictions.bias"] = torch.zeros(V, dtype=torch.float64)  # a pretraining head, to be ignored
    head, report = loaded_head(sd)
    bt = batch(seed=2)
    with torch.no_grad():
        ref = hf(input_ids=bt["txt_ids"], attention_mask=bt["txt_mask"].long(),
                 token_type_ids=torch.zeros_like(bt["txt_ids"]), visual_embeds=bt["img_regions"],
                 visual_attention_mask=bt["img_mask"].long(),
                 visual_token_type_ids=torch.zeros(B, R, dtype=torch.long))  # MMF's visual type 0
        out = head(bt)
    real = torch.cat([bt["txt_mask"], bt["img_mask"]], 1)
    torch.testing.assert_close(out["pooled"], ref.pooler_output, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out["sequence"][real], ref.last_hidden_state[real], atol=1e-10, rtol=1e-10)
    assert "cls.predictions.bias" in report.groups["ignored: other heads (pretraining / task layers)"]
    assert sorted({k.split(".")[0] for k in report.missing_keys}) == ["outputs", "transform"]


# ------------------------------------------------------------------------------------------- the loader


def test_pretraining_file_loads_the_backbone_and_reports_the_rest(tmp_path):
    sd = mmf_state(classifier=False, pretraining=True)
    torch.save({"model": {k: v.float() for k, v in sd.items()}}, tmp_path / "model.pth")
    head = create_head("visualbert", INPUTS, BINARY, **EVAL)
    report = load_visualbert_checkpoint(head, tmp_path)  # the folder: its model.pth
    torch.testing.assert_close(head.bert.encoder.layer[1].output.dense.weight,
                               sd["model.bert.encoder.layer.1.output.dense.weight"].float())
    lines = report.lines()
    n_backbone = len(sd) - 3
    assert lines[0] == (f"checkpoint {tmp_path}: used {n_backbone} tensors (backbone {n_backbone}); missing 6 "
                        "(outputs, transform: left initialised)")
    assert lines[1] == "  ignored 3 (buffers 1, other heads (pretraining / task layers) 2)"


def test_finetuned_classifier_of_another_label_count_is_left_initialised():
    head, report = loaded_head(mmf_state(num_labels=3))
    assert "classifier: the checkpoint's final layer has shape [3, 16], the head's [2, 16]; it was left " \
           "initialised" in report.notes
    assert {"outputs.layers.label.weight", "outputs.layers.label.bias"} <= set(report.missing_keys)
    assert not any(k.startswith("transform.") for k in report.missing_keys)  # classifier.0 did load


def test_plain_bert_starts_the_visual_tables_from_the_text_ones():
    """MMF's "direct" recipe: VisualBERT from bert-base-uncased; old TF-port LayerNorm names read too."""
    sd = {k.replace("model.bert.", "bert."): v for k, v in mmf_state(classifier=False).items()
          if "visual" not in k and "projection" not in k}
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in sd.items()}
    sd["cls.predictions.bias"] = torch.zeros(V, dtype=torch.float64)
    head, report = loaded_head(sd)
    emb = head.bert.embeddings
    assert torch.equal(emb.token_type_embeddings_visual.weight, sd["bert.embeddings.token_type_embeddings.weight"])
    assert torch.equal(emb.position_embeddings_visual.weight, sd["bert.embeddings.position_embeddings.weight"])
    assert torch.equal(emb.LayerNorm.weight, sd["bert.embeddings.LayerNorm.gamma"])
    assert ("bert.embeddings.token_type_embeddings_visual.weight: not in the checkpoint; copied from "
            "bert.embeddings.token_type_embeddings.weight (special_visual_initialize)") in report.notes
    assert "bert.embeddings.projection.weight" in report.missing_keys
    off, _ = loaded_head(sd, special_visual_initialize=False)
    assert not torch.equal(off.bert.embeddings.position_embeddings_visual.weight,
                           sd["bert.embeddings.position_embeddings.weight"])


def test_build_copies_the_visual_tables_as_mmf():
    on = create_head("visualbert", INPUTS, BINARY, **SIZES).bert.embeddings
    assert torch.equal(on.position_embeddings_visual.weight, on.position_embeddings.weight)
    assert torch.equal(on.token_type_embeddings_visual.weight, on.token_type_embeddings.weight)
    off = create_head("visualbert", INPUTS, BINARY, special_visual_initialize=False, **SIZES).bert.embeddings
    assert not torch.equal(off.position_embeddings_visual.weight, off.position_embeddings.weight)


def test_image_width_mismatch_project_reinit_or_refuse():
    sd = mmf_state()
    wide = InputSpec(img_dim=DV + 4, txt_dim=8, img_regions=R, txt_tokens=T, txt_ids=True)
    cfg = config_from_checkpoint({k: tuple(v.shape) for k, v in sd.items()}, {})
    assert cfg == dict(vocab_size=V, hidden_size=H, max_position_embeddings=P, type_vocab_size=2, intermediate_size=FF,
                       visual_embedding_dim=DV, num_hidden_layers=L)
    cfg["num_attention_heads"] = NH  # not readable from shapes
    with pytest.raises(FeatstoreError, match=r"^visualbert visual_embedding_dim=12 \(the checkpoint's projection "
                                             r"input\) differs from the image features' width 16; pass --set "
                                             r"img_dim_mismatch=project"):
        create_head("visualbert", wide, BINARY, **cfg)
    head = create_head("visualbert", wide, BINARY, img_dim_mismatch="project", **cfg).double()
    load_state(head, sd, "f")
    assert torch.equal(head.bert.embeddings.projection.weight, sd["model.bert.embeddings.projection.weight"])
    assert head.img_proj.weight.shape == (DV, DV + 4)
    head = create_head("visualbert", wide, BINARY, img_dim_mismatch="reinit", **dict(cfg, visual_embedding_dim=0))
    report = load_state(head, sd, "f")
    # the bias has the same shape and loads; the weight is left to its initialisation, and said so
    assert report.reinitialised_keys == ["model.bert.embeddings.projection.weight (checkpoint [16, 12], head [16, 16])"]


def test_refusals_are_one_line(tmp_path):
    sd = mmf_state()
    small = create_head("visualbert", INPUTS, BINARY, **dict(SIZES, intermediate_size=FF + 1))
    with pytest.raises(FeatstoreError, match=r"^checkpoint key 'model\.bert\.encoder\.layer\.0\.intermediate\.dense"
                                             r"\.bias' has shape \(24,\) but the head's 'bert\.encoder\.layer\.0\."
                                             r"intermediate\.dense\.bias' has \(25,\); build the head"):
        load_state(small, sd, "f")
    one = create_head("visualbert", INPUTS, BINARY, **dict(SIZES, num_hidden_layers=1))
    with pytest.raises(FeatstoreError, match=r"^checkpoint 'f' key 'model\.bert\.encoder\.layer\.1\..*' has no "
                                             r"counterpart .* in the head; build the head with the checkpoint's "
                                             r"layer count \(num_hidden_layers\)$"):
        load_state(one, sd, "f")
    head = create_head("visualbert", INPUTS, BINARY, **SIZES)
    with pytest.raises(FeatstoreError, match=r"^checkpoint 'f' has no VisualBERT or BERT weights .*visual_bert\."
                                             r"pretrained\.coco\.tar\.gz"):
        load_state(head, {"model.cls.predictions.bias": torch.zeros(V)}, "f")
    with pytest.raises(FeatstoreError, match=r"^checkpoint '.*nowhere\.pth' does not exist; MMF's VisualBERT is "
                                             r"https://dl\.fbaipublicfiles\.com/mmf/data/models/visual_bert/"):
        load_visualbert_checkpoint(head, tmp_path / "nowhere.pth")
    with pytest.raises(FeatstoreError, match=r"^checkpoint folder .* holds none of model\.safetensors, "
                                             r"pytorch_model\.bin, model\.pth, model\.pt; pass the weight file"):
        load_visualbert_checkpoint(head, tmp_path)
    vil = create_head("concat", InputSpec(img_dim=4, txt_dim=4), BINARY)
    with pytest.raises(FeatstoreError, match=r"^load_visualbert_checkpoint needs a 'visualbert' head"):
        load_state(vil, sd, "f")


def test_safetensors_file_and_sizes_read_from_it(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.float().contiguous() for k, v in mmf_state().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    head, report = head_from_checkpoint("visualbert", INPUTS, BINARY, {"num_attention_heads": NH},
                                        tmp_path / "model.safetensors")
    assert head.config.num_hidden_layers == L and head.config.vocab_size == V and report.missing_keys == []
    torch.testing.assert_close(head.bert.pooler.dense.weight, sd["model.bert.pooler.dense.weight"])


# ----------------------------------------------------------------------------- inputs, optimiser, runs


def test_needs_token_ids_and_checks_the_vocabulary():
    no_ids = InputSpec(img_dim=DV, txt_dim=8, img_regions=R, txt_tokens=T)
    with pytest.raises(FeatstoreError, match=r"^head 'visualbert' needs the text's token ids but the text feature set "
                                             r"stores no 'input_ids' array; extract text with --extractor bert"):
        create_head("visualbert", no_ids, BINARY, **SIZES)
    head = create_head("visualbert", INPUTS, BINARY, **SIZES)
    f = batch()
    head.check_data(f, {"name": "bert", "vocab_size": V})
    with pytest.raises(FeatstoreError, match=r"^text feature set 'cased' was tokenised with a 28996-word vocabulary "
                                             r"but visualbert vocab_size=50; extract the text with the checkpoint's "
                                             r"tokenizer \(bert-base-uncased for MMF's VisualBERT\)"):
        head.check_data(f, {"name": "cased", "vocab_size": 28996})
    f["txt_ids"][0, 0] = V
    with pytest.raises(FeatstoreError, match=r"^text feature set 'bert' holds token id 50, outside visualbert's "
                                             r"vocab_size=50; extract the text with the checkpoint's tokenizer$"):
        head.check_data(f, {"name": "bert"})


def test_optimiser_groups_are_mmfs_bert_groups():
    from heads.train import TrainConfig, build_optimizer

    head = create_head("visualbert", INPUTS, BINARY, **SIZES)
    opt = build_optimizer(head, TrainConfig(head="visualbert", weight_decay=0.01))
    names = {id(p): n for n, p in head.named_parameters()}
    groups = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    rule = ("bias", "LayerNorm.bias", "LayerNorm.weight")  # mmf/utils/modeling.py get_bert_configured_parameters
    assert groups[0.0] == {n for n in names.values() if any(r in n for r in rule)}
    assert groups[0.01] == set(names.values()) - groups[0.0]
    assert "bert.embeddings.LayerNorm.weight" in groups[0.0] and "transform.LayerNorm.weight" in groups[0.0]
    assert "bert.embeddings.word_embeddings.weight" in groups[0.01]


def test_train_data_pairs_token_ids_with_their_mask():
    from heads.data import TrainData

    y = {"label": torch.tensor([0, 1])}
    splits = {"train": torch.tensor([0]), "dev": torch.tensor([1])}
    ids, mask = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool)
    ok = TrainData({"txt_ids": ids, "txt_mask": mask, "img_pooled": torch.zeros(2, 4)}, ["a", "b"], y, splits, BINARY)
    assert ok.input_spec().txt_ids and ok.input_spec().txt_tokens == 0
    with pytest.raises(FeatstoreError, match=r"^feature 'txt_ids' needs 'txt_mask' \(its real items\); pass both$"):
        TrainData({"txt_ids": ids}, ["a", "b"], y, splits, BINARY)
    with pytest.raises(FeatstoreError, match=r"^feature 'txt_mask' masks nothing: pass 'txt_tokens' or 'txt_ids' "
                                             r"with it$"):
        TrainData({"txt_mask": mask, "img_pooled": torch.zeros(2, 4)}, ["a", "b"], y, splits, BINARY)


def test_a_model_id_is_read_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    """``--init-checkpoint bert-base-uncased``: the snapshot in the local cache (the documented layout, built
    here), never the network; a model id that is not cached is a one-line error with the download command."""
    from safetensors.torch import save_file

    rev = "0123456789abcdef0123456789abcdef01234567"
    base = tmp_path / "hub" / "models--someorg--tiny-bert"
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    (snap / "config.json").write_text("{}")
    sd = {k.replace("model.bert.", "bert."): v.float() for k, v in mmf_state(classifier=False).items()}
    save_file(sd, str(snap / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    head = create_head("visualbert", INPUTS, BINARY, **SIZES)
    report = load_visualbert_checkpoint(head, "someorg/tiny-bert")
    assert report.groups["used: backbone"] and torch.equal(head.bert.pooler.dense.bias, sd["bert.pooler.dense.bias"])
    with pytest.raises(FeatstoreError, match=r"^weights 'someorg/not-cached' are neither a local path nor in the "
                                             r"Hugging Face cache .*huggingface-cli download someorg/not-cached"):
        load_visualbert_checkpoint(head, "someorg/not-cached")
