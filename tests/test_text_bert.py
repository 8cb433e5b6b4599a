"""``text-bert``, ``concat-bert`` and ``late-fusion`` are MMF's Text BERT (``unimodal_text``), Concat BERT
(``concat_bert``) and Late Fusion (``late_fusion``),
checked against references written outside the heads:

* transformers' own ``BertModel`` (tiny, every tensor random, LayerNorm weights and biases away from 1 / 0)
  computes the pooled output from the same token ids and attention mask;
* ``mlp_reference``: a float64 transcription of MMF's ``MLPClassifer`` (mmf/modules/layers.py: per hidden
  layer Linear, BatchNorm1d, ReLU, Dropout; then Linear) in plain ops, in eval mode (running statistics,
  perturbed here) and in train mode (dropout 0; the batch's mean and biased variance, eps 1e-5).

The BERT reaches the head only through the real checkpoint reader (``heads.text_bert_checkpoint``) from a
``save_pretrained`` folder, so the key mapping is checked by the same comparisons. Also: the load report, the
refusals of ViLBERT / VisualBERT files, MMF's optimiser groups, the input checks, and the CLI end to end
(real ``bert`` extractor -> ``heads train --init-checkpoint``) for both heads.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_helpers import invoke, make_hm_folder, one_line_error
from featstore.errors import FeatstoreError
from heads.models import create_head
from heads.checkpoints import read_weights
from heads.spec import InputSpec, Task, TaskSpec
from heads.text_bert_checkpoint import head_from_checkpoint, load_state, load_text_bert_checkpoint
from test_vilbert_direct import randomise
from test_vilbert_mmf import VOCAB, read_predictions, tokenise, write_vocab

V, H, NH, L, FF, P = 100, 32, 2, 2, 37, 24  # vocab, hidden, heads, layers, ffn, positions
B, T, DI = 5, 9, 6  # rows, tokens, image width
MLP = [12, 10]
BINARY = TaskSpec([Task("label", "binary", 2, ["0", "1"])])
TEXT = InputSpec(img_dim=0, txt_dim=0, txt_ids=True)
BOTH = InputSpec(img_dim=DI, txt_dim=0, txt_ids=True, img_pooled=True)
CFG = dict(num_attention_heads=NH, hidden=MLP, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
SIZES = dict(CFG, hidden_size=H, num_hidden_layers=L, intermediate_size=FF, vocab_size=V, max_position_embeddings=P)


# --------------------------------------------------------------------------------------- the references


def tiny_bert(kind: str = "BertModel", seed: int = 0, vocab: int = V):
    """transformers' ``kind`` at the tiny sizes, every parameter random (LayerNorm weights and biases away from
    1 / 0: ``test_vilbert_direct.randomise``)."""
    import transformers

    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=H, num_attention_heads=NH, num_hidden_layers=L,
                                  intermediate_size=FF, max_position_embeddings=P, type_vocab_size=2,
                                  layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    return randomise(getattr(transformers, kind)(cfg).eval(), seed + 1)


def bert_pooled(model, ids, mask):
    """transformers' pooled output, float64."""
    m = model.double()
    base = getattr(m, "bert", m)
    with torch.no_grad():
        return base(input_ids=ids, attention_mask=mask.long(), token_type_ids=torch.zeros_like(ids)).pooler_output


def mlp_reference(x, sd, prefix="mlp.", out="outputs.layers.label.", train=False, eps=1e-5):
    """MMF's MLPClassifer on ``x [B, D]`` with the tensors of ``sd`` (Linear ``3k``... as MLP with batch_norm stores
    them: ``4i`` Linear, ``4i + 1`` BatchNorm1d), float64, dropout off."""
    p = lambda k: sd[k].double()  # noqa: E731
    i = 0
    while f"{prefix}{4 * i}.weight" in sd:
        lin, bn = f"{prefix}{4 * i}.", f"{prefix}{4 * i + 1}."
        h = x @ p(lin + "weight").T + p(lin + "bias")
        if train:  # the batch's mean and biased variance
            mu, var = h.mean(0), ((h - h.mean(0)) ** 2).mean(0)
        else:
            mu, var = p(bn + "running_mean"), p(bn + "running_var")
        x = torch.clamp((h - mu) / torch.sqrt(var + eps) * p(bn + "weight") + p(bn + "bias"), min=0.0)
        i += 1
    return x @ p(out + "weight").T + p(out + "bias")


def token_batch(seed: int = 1, vocab: int = V):
    """3..9 real tokens per row ([CLS]-like id first), padding id 0 behind."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([3, 9, 5, 4, 7])
    mask = torch.arange(T)[None] < lengths[:, None]
    ids = torch.where(mask, torch.randint(1, vocab, (B, T), generator=g), 0)
    return {"txt_ids": ids, "txt_mask": mask}


def perturb_running_stats(head, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in head.modules():  # every MLPClassifer's (late-fusion has two)
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    out = {}
    for kind in ("BertModel", "BertForPreTraining"):
        model = tiny_bert(kind)
        model.save_pretrained(str(root / kind))
        out[kind] = (root / kind, model)
    return out


def loaded(name, folder, inputs=TEXT, **cfg):
    head, report = head_from_checkpoint(name, inputs, BINARY, dict(CFG, **cfg), folder)
    return head.double(), report


# ------------------------------------------------------------------------------------------ the forward


@pytest.mark.parametrize("pack", [True, False])
def test_text_bert_eval_equals_transformers_bert_and_mlpclassifer(folders, pack):
    folder, bert = folders["BertModel"]
    head, _ = loaded("text-bert", folder)
    head.pack_positions = pack
    perturb_running_stats(head)
    head.eval()
    bt = token_batch()
    with torch.no_grad():
        out = head(bt)
    pooled = bert_pooled(bert, bt["txt_ids"], bt["txt_mask"])
    torch.testing.assert_close(out["pooled"], pooled, atol=1e-8, rtol=0)
    want = mlp_reference(pooled, head.state_dict())
    torch.testing.assert_close(out["logits"]["label"], want, atol=1e-8, rtol=0)


def test_text_bert_train_mode_uses_the_batch_statistics(folders):
    folder, bert = folders["BertForPreTraining"]
    head, _ = loaded("text-bert", folder, dropout=0.0)
    perturb_running_stats(head)
    sd = {k: v.clone() for k, v in head.state_dict().items()}
    head.train()
    bt = token_batch(seed=4)
    out = head(bt)
    pooled = bert_pooled(bert, bt["txt_ids"], bt["txt_mask"])
    torch.testing.assert_close(out["logits"]["label"].detach(), mlp_reference(pooled, sd, train=True),
                               atol=1e-8, rtol=0)
    h = pooled @ sd["mlp.0.weight"].T + sd["mlp.0.bias"]  # momentum 0.1, unbiased variance for the running one
    torch.testing.assert_close(head.mlp[1].running_mean, 0.9 * sd["mlp.1.running_mean"] + 0.1 * h.mean(0))
    torch.testing.assert_close(head.mlp[1].running_var, 0.9 * sd["mlp.1.running_var"] + 0.1 * h.var(0))


def image_text_run(folders, name: str, seed: int, **cfg):
    """(head in eval mode with perturbed BatchNorm statistics, batch with an image vector, eval outputs, BERT)."""
    folder, bert = folders["BertModel"]
    head, _ = loaded(name, folder, inputs=BOTH, **cfg)
    perturb_running_stats(head)
    head.eval()
    bt = token_batch(seed=seed)
    bt["img_pooled"] = torch.randn(B, DI, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    with torch.no_grad():
        out = head(bt)
    return head, bt, out, bert


def test_concat_bert_concatenates_text_first_then_the_image(folders):
    head, bt, out, bert = image_text_run(folders, "concat-bert", 5)
    assert head.mlp[0].in_features == H + DI
    x = torch.cat([bert_pooled(bert, bt["txt_ids"], bt["txt_mask"]), bt["img_pooled"]], -1)  # ConcatBERT.forward
    torch.testing.assert_close(out["logits"]["label"], mlp_reference(x, head.state_dict()), atol=1e-8, rtol=0)


def late_fusion_reference(text_pooled, image, sd, train=False):
    """MMF's LateFusion.forward: (text_classifier(text) + modal_classifier(image)) / 2, float64."""
    text = mlp_reference(text_pooled, sd, train=train)
    img = mlp_reference(image, sd, prefix="image_mlp.", out="image_outputs.layers.label.", train=train)
    return (text + img) / 2


def test_late_fusion_averages_the_two_classifiers_logits(folders):
    head, bt, out, bert = image_text_run(folders, "late-fusion", 8, dropout=0.0)
    assert head.mlp[0].in_features == H and head.image_mlp[0].in_features == DI
    pooled = bert_pooled(bert, bt["txt_ids"], bt["txt_mask"])
    want = late_fusion_reference(pooled, bt["img_pooled"], head.state_dict())
    torch.testing.assert_close(out["logits"]["label"], want, atol=1e-8, rtol=0)
    assert out["fused"].shape == (B, 2 * MLP[-1])
    head.train()  # train mode: both MLPs normalise with their own batch statistics
    sd = {k: v.clone() for k, v in head.state_dict().items()}
    out = head(bt)
    torch.testing.assert_close(out["logits"]["label"].detach(),
                               late_fusion_reference(pooled, bt["img_pooled"], sd, train=True), atol=1e-8, rtol=0)


# ------------------------------------------------------------------------------------------- the loader


def test_report_uses_all_of_bert_pooler_included_and_misses_the_classifier(folders):
    folder, bert = folders["BertModel"]
    head, report = loaded("text-bert", folder)
    n = len(bert.state_dict())
    assert len(report.used_keys) == n and "pooler.dense.weight" in report.used_keys
    assert report.ignored_keys == []
    assert sorted({k.split(".")[0] for k in report.missing_keys}) == ["mlp", "outputs"]
    assert report.lines()[0] == (f"checkpoint {folder}: used {n} tensors (backbone {n}); missing "
                                 f"{len(report.missing_keys)} (mlp, outputs: left initialised)")
    assert head.config.hidden_size == H and head.config.num_hidden_layers == L and head.config.vocab_size == V


def test_pretraining_heads_are_ignored_and_named(folders):
    folder, bert = folders["BertForPreTraining"]
    head, report = loaded("concat-bert", folder, inputs=BOTH)
    saved = read_weights(folder)  # what save_pretrained wrote (tied tensors once)
    cls = sorted(k for k in saved if k.startswith("cls."))
    assert cls and sorted(report.groups["ignored: other heads (pretraining / task layers)"]) == cls
    assert len(report.used_keys) == len([k for k in bert.state_dict() if k.startswith("bert.")])
    torch.testing.assert_close(head.bert.pooler.dense.weight, bert.bert.pooler.dense.weight.double())
    assert "the MLP classifier keeps PyTorch's default initialisation" in report.lines()[1]


def test_tf_port_names_in_a_pytorch_model_bin_load(tmp_path, folders):
    _, bert = folders["BertForPreTraining"]
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in bert.state_dict().items()}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    head = create_head("text-bert", TEXT, BINARY, **SIZES)
    load_text_bert_checkpoint(head, tmp_path / "pytorch_model.bin")
    assert torch.equal(head.bert.embeddings.LayerNorm.weight, bert.bert.embeddings.LayerNorm.weight)


def test_vilbert_and_visualbert_files_are_refused_naming_their_head(folders):
    from test_visualbert import mmf_state

    head, _ = loaded("text-bert", folders["BertModel"][0])
    vil = {"model.bert.embeddings.word_embeddings.weight": torch.zeros(V, H),
           "model.bert.encoder.v_layer.0.attention.self.query.weight": torch.zeros(4, 4)}
    with pytest.raises(FeatstoreError, match=r"^checkpoint 'vil.pth' is a ViLBERT checkpoint \(key 'model\.bert\."
                                             r"encoder\.v_layer\.0\.attention\.self\.query\.weight'\), not BERT; "
                                             r"train it with --head vilbert$"):
        load_state(head, vil, "vil.pth")
    with pytest.raises(FeatstoreError, match=r"^checkpoint 'vb.pth' is a VisualBERT checkpoint \(key 'model\.bert\."
                                             r"embeddings\.\S+'\), not BERT; train it with --head visualbert$"):
        load_state(head, mmf_state(), "vb.pth")
    with pytest.raises(FeatstoreError, match=r"^checkpoint 'f' has no BERT weights .*huggingface-cli download"):
        load_state(head, {"cls.predictions.bias": torch.zeros(V)}, "f")
    visualbert = create_head("visualbert", InputSpec(img_dim=4, txt_dim=0, img_regions=3, txt_ids=True), BINARY,
                             **{k: v for k, v in SIZES.items() if k != "hidden"})
    with pytest.raises(FeatstoreError, match=r"^checkpoint 'vil.pth' is a ViLBERT checkpoint .* not VisualBERT or "
                                             r"BERT; train it with --head vilbert$"):
        from heads.visualbert_checkpoint import load_state as load_visualbert

        load_visualbert(visualbert, vil, "vil.pth")


# ----------------------------------------------------------------------------- inputs and optimiser


def test_inputs_needed_are_token_ids_and_for_concat_bert_an_image_vector():
    no_ids = InputSpec(img_dim=0, txt_dim=8, txt_tokens=T)
    with pytest.raises(FeatstoreError, match=r"^head 'text-bert' needs the text's token ids but the text feature set "
                                             r"stores no 'input_ids' array; extract text with --extractor bert"):
        create_head("text-bert", no_ids, BINARY)
    with pytest.raises(FeatstoreError, match=r"^head 'concat-bert' needs an image feature but no image feature set "
                                             r"was given"):
        create_head("concat-bert", TEXT, BINARY)


@pytest.mark.parametrize("name, inputs", [("text-bert", TEXT), ("concat-bert", BOTH)])
def test_ids_of_another_vocabulary_are_refused(name, inputs):
    head = create_head(name, inputs, BINARY, **SIZES)
    ok, beyond = token_batch(), token_batch()
    beyond["txt_ids"][0, 0] = V
    head.check_data(ok, {"name": "bert", "vocab_size": V})
    refused = {
        f"^text feature set 'cased' was tokenised with a 28996-word vocabulary but {name} vocab_size=100; extract "
        r"the text with the checkpoint's tokenizer \(bert-base-uncased for MMF's Text / Concat BERT\)":
            (ok, {"name": "cased", "vocab_size": 28996}),
        f"^text feature set 'bert' holds token id 100, outside {name}'s vocab_size=100": (beyond, {"name": "bert"})}
    for message, (features, meta) in refused.items():
        with pytest.raises(FeatstoreError, match=message):
            head.check_data(features, meta)


def decay_by_name(head, weight_decay: float) -> dict:
    """{parameter name: its weight decay} in the AdamW that ``heads train`` builds for ``head``."""
    from heads.train import TrainConfig, build_optimizer

    opt = build_optimizer(head, TrainConfig(head=head.head_name, weight_decay=weight_decay))
    names = {id(p): n for n, p in head.named_parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)
    return {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}


def test_optimiser_groups_one_for_text_bert_mmfs_bert_groups_for_concat_bert():
    text = decay_by_name(create_head("text-bert", TEXT, BINARY, **SIZES), 0.0)
    assert set(text.values()) == {0.0}  # UnimodalText: model.parameters(), transformers' AdamW default decay
    late = decay_by_name(create_head("late-fusion", BOTH, BINARY, **SIZES), 0.05)
    assert set(late.values()) == {0.05} and "image_mlp.1.weight" in late  # LateFusion: one group too
    concat = decay_by_name(create_head("concat-bert", BOTH, BINARY, **SIZES), 0.01)
    no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")  # mmf/utils/modeling.py get_bert_configured_parameters
    assert concat == {n: 0.0 if any(r in n for r in no_decay) else 0.01 for n in concat}
    assert concat["mlp.1.weight"] == 0.01 and concat["bert.embeddings.LayerNorm.weight"] == 0.0  # BatchNorm decays


def test_presets_are_mmfs_numbers():
    from heads.presets import load_preset

    text, concat = load_preset("text-bert-hm"), load_preset("concat-bert-hm")
    assert (text.head, concat.head) == ("text-bert", "concat-bert")
    pick = lambda p: tuple(p.train[k] for k in ("lr", "batch_size", "epochs", "weight_decay", "warmup_ratio"))  # noqa
    late = load_preset("late-fusion-hm")
    assert pick(text) == (5e-5, 128, 329, 0.0, 0.0909) and pick(concat) == (1e-5, 64, 166, 0.01, 0.0909)
    assert pick(late) == (5e-5, 64, 166, 0.0, 0.0909)  # late_fusion/hateful_memes/defaults.yaml, one group
    assert text.train["init_checkpoint"] == concat.train["init_checkpoint"] == late.train["init_checkpoint"] == \
        "bert-base-uncased"
    assert text.head_cfg == concat.head_cfg == late.head_cfg == {"hidden": [768, 768], "activation": "relu",
                                                                 "dropout": 0.5, "batch_norm": True}


# ----------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from cli.featstore_cli import main as featstore
    from featstore import Recipe, open_store
    from featstore.datasets import load_dataset

    root = tmp_path_factory.mktemp("cli")
    data = make_hm_folder(root / "data")
    bert = tiny_bert("BertForPreTraining", seed=7, vocab=len(VOCAB))
    folder = root / "tiny-bert"
    bert.save_pretrained(str(folder))
    write_vocab(folder)
    ds = load_dataset(data)
    keys = ds.image_keys()
    pooled = np.random.default_rng(2).standard_normal((len(keys), DI)).astype(np.float32)
    store = open_store(str(root / "store"), create=True)
    store.write("img", Recipe(extractor="import:test", config={}), list(keys), {"pooled": pooled},
                key_kind="image_key", modality="image")
    invoke(featstore, ["extract", "--dataset", data, "--extractor", "bert", "--store", root / "store", "--name",
                       "btext", "--workers", 0, "--quiet", "--weights", folder, "--set", "max_length=16",
                       "--set", "dtype=float32"])
    return dict(root=root, data=data, store=root / "store", folder=folder, ds=ds, bert=bert,
                images=dict(zip(keys, pooled)))


def train(world, out, head, *extra):
    from cli.heads_cli import main as heads

    return invoke(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--text", "btext",
                          "--text-array", "input_ids", "--head", head, "--set", f"num_attention_heads={NH}",
                          "--set", f"hidden={MLP}", "--init-checkpoint", world["folder"], "--epochs", 1,
                          "--lr", 1e-30, "--warmup", 0, "--threads", 1, "--quiet", "--out", out, *extra])


def reference(world, run, samples, head: str):
    """P(label 1) by transformers' BERT (the folder's) + the MLP(s) the run saved (their initialisation and the
    running statistics of its one epoch), float64."""
    from safetensors.torch import load_file

    ids = [tokenise(s.text) for s in samples]
    width = max(map(len, ids))
    ids = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    x = bert_pooled(world["bert"], ids, ids != 0)
    image = torch.tensor(np.stack([world["images"][s.image_key] for s in samples])).double()
    sd = load_file(str(run / "model.safetensors"))
    logits = {"text-bert": lambda: mlp_reference(x, sd),
              "concat-bert": lambda: mlp_reference(torch.cat([x, image], -1), sd),
              "late-fusion": lambda: late_fusion_reference(x, image, sd)}[head]()
    return torch.softmax(logits, -1)[:, 1].numpy()


@pytest.mark.parametrize("head, image", [("text-bert", False), ("concat-bert", True), ("late-fusion", True)])
def test_cli_predictions_equal_the_reference(world, head, image):
    out = world["root"] / head
    printed = train(world, out, head, *(["--image", "img"] if image else []))
    run = out / "seed_0"
    cfg = json.loads((run / "config.json").read_text())
    load = cfg["checkpoint_load"]
    n_bert = len([k for k in world["bert"].state_dict() if k.startswith("bert.")])
    assert len(load["used_keys"]) == n_bert and load["summary"][0] in printed
    assert any(k.startswith("cls.") for k in load["ignored_keys"])
    assert sorted({k.split(".")[0] for k in load["missing_keys"]}) == (
        ["image_mlp", "image_outputs", "mlp", "outputs"] if head == "late-fusion" else ["mlp", "outputs"])
    assert "starts from random weights" not in printed
    got = read_predictions(run / "predictions_test.csv")
    by_id = {s.id: s for s in world["ds"].samples}
    samples = [by_id[i] for i in got]
    want = reference(world, run, samples, head)
    np.testing.assert_allclose([got[s.id] for s in samples], want, atol=1e-5, rtol=0)
    from cli.heads_cli import main as heads  # heads predict rebuilds the head from config.json alone

    invoke(heads, ["predict", str(run), "--dataset", world["data"], "--store", world["store"], "--text-array",
                   "input_ids", "--split", "test", "--out", out / "pred.csv"])
    again = read_predictions(out / "pred.csv")
    np.testing.assert_allclose([again[s.id] for s in samples], want, atol=1e-5, rtol=0)


def test_cli_refuses_a_text_set_without_token_ids(world, tmp_path):
    from cli.heads_cli import main as heads
    from featstore import Recipe, open_store

    ids = [s.id for s in world["ds"].samples]
    open_store(str(world["store"])).write("clsonly", Recipe(extractor="import:test", config={}), ids,
                                          {"cls": np.zeros((len(ids), 8), np.float32)}, key_kind="sample_id",
                                          modality="text")
    line = one_line_error(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--text",
                                  "clsonly", "--head", "text-bert", "--out", tmp_path / "o"])
    assert line == ("error: head 'text-bert' needs the text's token ids but the text feature set stores no "
                    "'input_ids' array; extract text with --extractor bert (ids of the checkpoint's tokenizer, "
                    "e.g. bert-base-uncased)")
    line = one_line_error(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--text",
                                  "clsonly", "--text-array", "input_ids", "--head", "text-bert", "--out",
                                  tmp_path / "p"])
    assert "has no array 'input_ids' for --text-array" in line


@pytest.mark.parametrize("head, preset", [("text-bert", "text-bert-hm"), ("concat-bert", "concat-bert-hm"),
                                          ("late-fusion", "late-fusion-hm")])
def test_a_random_start_names_the_preset_that_starts_from_bert(head, preset):
    from heads.presets import load_preset
    from heads.train import TrainConfig, random_start_note

    note = random_start_note(TrainConfig(head=head))
    assert note.endswith(f"(--preset {preset} starts from bert-base-uncased)")
    assert load_preset(preset).train["init_checkpoint"] == "bert-base-uncased"
    assert random_start_note(TrainConfig(head=head, init_checkpoint="some/bert")) is None
    assert random_start_note(TrainConfig(head="refnet", head_cfg={"base": head})) is None  # refnet cannot load it


@pytest.mark.parametrize("name", ["text-bert", "concat-bert", "late-fusion", "mmbt", "mmbt-region", "image-region"])
def test_defaults_are_mmfs(name):
    """Written out from MMF by hand: bert-base-uncased sizes (mmf/configs/models/unimodal/bert.yaml,
    fusions/*.yaml, mmbt/defaults.yaml: hidden 768, 12 layers, 12 heads) with BERT's own 3072 / 30522 / 512 / 2
    / 0.1 / 1e-12; MLPClassifer as the Hateful Memes configs build it (hidden_dim 768, num_layers 2, dropout 0.5,
    relu, batch_norm); the region heads' 100 regions (max_features) into a 2048-wide fc7."""
    from heads.models.base import HEADS, _register_all

    _register_all()
    c = HEADS.config_cls(name)()
    if name != "image-region":
        bert = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.vocab_size,
                c.max_position_embeddings, c.type_vocab_size, c.hidden_dropout_prob, c.attention_probs_dropout_prob,
                c.layer_norm_eps, c.hidden_act)
        assert bert == (768, 12, 12, 3072, 30522, 512, 2, 0.1, 0.1, 1e-12, "gelu")
    if name in ("text-bert", "concat-bert", "late-fusion", "image-region"):
        assert (c.hidden, c.dropout, c.activation, c.batch_norm) == ([768, 768], 0.5, "relu", True)
    if name in ("mmbt-region", "image-region"):
        assert (c.num_regions, c.fc7_dim, c.fc7_weights) == (100, 2048, "")
