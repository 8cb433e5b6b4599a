"""ViLBERT started from a plain BERT: MMF's direct recipe (``projects/vilbert/configs/hateful_memes/direct.yaml``
builds ``ViLBERTForClassification``, whose ``ViLBERTBase.from_pretrained("bert-base-uncased")`` loads BERT's
embeddings and text layers under their own names and leaves the visual stream, co-attention, poolers and
classifier to ``_init_weights``). Facebook's ViLBERT baseline on Hateful Memes (0.7045 test AUROC) is this
recipe.

The BERT here is transformers' own ``BertForPreTraining`` (tiny, every tensor random, LayerNorm weights away
from 1), saved by ``save_pretrained``. Its layer-3 states are cached by the real ``bert`` extractor, the head
is trained through the CLI with ``--init-checkpoint`` on the folder, and its predictions are compared with
test_vilbert_mmf's independent float64 transcription of MMF's forward, given BERT's tensors under the names
MMF's ``from_pretrained`` gives them (``bert.X`` -> ``model.bert.X``) and, for the parts BERT lacks, the
tensors the run started from (read back from its ``model.safetensors``).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_helpers import invoke, invoke_result, make_hm_folder
from featstore.errors import FeatstoreError
from test_vilbert_mmf import MMFViLBERT, TINY, VOCAB, read_predictions, tokenise, write_regions, write_vocab

START = 3  # cached BERT layer = text_start_layer; co-attention after text layers 3 and 4 (TINY's t ids)
VISUAL = ["v_hidden_size=12", "v_intermediate_size=14", "v_num_hidden_layers=3", "bi_hidden_size=8",
          "v_biattention_id=[0,1]", "t_biattention_id=[3,4]", f"text_start_layer={START}",
          "num_attention_heads=2", "v_num_attention_heads=2", "bi_num_attention_heads=2"]
SETS = [a for v in VISUAL for a in ("--set", v)]
SIZES = [a for v in VISUAL if not v.startswith("text_start_layer") for a in ("--set", v)]


def tiny_bert(seed: int = 0):
    """transformers' BertForPreTraining at TINY's text sizes, every parameter random (LayerNorms away from 1)."""
    import transformers

    cfg = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=TINY["hidden_size"], num_attention_heads=2,
                                  intermediate_size=TINY["intermediate_size"],
                                  num_hidden_layers=TINY["num_hidden_layers"], max_position_embeddings=24,
                                  type_vocab_size=2, layer_norm_eps=1e-12)
    torch.manual_seed(seed)
    return randomise(transformers.BertForPreTraining(cfg).eval(), seed + 1)


def randomise(model, seed: int):
    """Every parameter of ``model`` random (in place): LayerNorm weights 1 + N(0, 0.3), matrices scaled
    normal, vectors N(0, 0.1) - so no mapping mistake hides behind an initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "embeddings" in name else 0.5 / p.shape[1] ** 0.5))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from cli.featstore_cli import main as featstore
    from featstore.datasets import load_dataset

    root = tmp_path_factory.mktemp("direct")
    data = make_hm_folder(root / "data")
    bert = tiny_bert()
    folder = root / "tiny-bert"
    bert.save_pretrained(str(folder))
    write_vocab(folder)
    ds = load_dataset(data)
    images = write_regions(root / "store", ds.image_keys())
    invoke(featstore, ["extract", "--dataset", data, "--extractor", "bert", "--store", root / "store", "--name",
                       "btext", "--workers", 0, "--quiet", "--weights", folder, "--set", f"layers=[0,{START}]",
                       "--set", "max_length=16", "--set", "dtype=float32"])
    sd = {k: v.detach().clone() for k, v in bert.state_dict().items()}
    return dict(root=root, data=data, store=root / "store", folder=folder, ds=ds, images=images, sd=sd)


def train(world, out, *extra):
    from cli.heads_cli import main as heads

    return invoke(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--image", "mmfimg",
                          "--text", "btext", "--text-array", f"layer_{START}", "--head", "vilbert", *SETS,
                          "--init-checkpoint", world["folder"], "--epochs", 1, "--lr", 1e-30, "--warmup", 0,
                          "--threads", 1, "--quiet", "--out", out, *extra])


def mmf_state(world, run) -> dict:
    """MMF's state dict of the run's starting point: BERT's tensors as ``from_pretrained`` names them, the
    rest (initialised, not in BERT) from the run's weights under MMF's names."""
    from safetensors.torch import load_file

    sd = {"model.bert." + k[len("bert."):]: v for k, v in world["sd"].items() if k.startswith("bert.")}
    for k, v in load_file(str(run / "model.safetensors")).items():
        if k.startswith(("v_embeddings.", "encoder.v_layer.", "encoder.c_layer.", "t_pooler.", "v_pooler.")):
            sd["model.bert." + k] = v
        elif k.startswith("transform."):
            sd["model.classifier.0." + k[len("transform."):]] = v
        elif k.startswith("outputs.layers.label."):
            sd["model.classifier.1." + k[len("outputs.layers.label."):]] = v
    return sd


def test_direct_recipe_predictions_equal_mmf_from_bert(world):
    """The cached layer-3 states + the head = MMF's ViLBERT built on this BERT, in float64 (atol 1e-5)."""
    out = world["root"] / "run"
    printed = train(world, out)
    run = out / "seed_0"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["head_config"]["hidden_size"] == 16 and cfg["head_config"]["num_hidden_layers"] == 5  # from shapes
    summary = cfg["checkpoint_load"]["summary"]
    assert summary[0] in printed and "as MMF's direct recipe" in summary[1]
    assert "starts from random weights" not in printed and "was cached by" not in summary[1]
    got = read_predictions(run / "predictions_test.csv")
    by_id = {s.id: s for s in world["ds"].samples}
    samples = [by_id[i] for i in got]
    ids = [tokenise(s.text) for s in samples]
    L = max(map(len, ids))
    ids = np.array([i + [0] * (L - len(i)) for i in ids])
    rows = [world["images"][s.image_key] for s in samples]
    feats, boxes, size, count = (np.stack([r[j] for r in rows]) for j in range(4))
    want = MMFViLBERT(mmf_state(world, run), TINY).probs(ids, feats, boxes, size,
                                                                                     count)[:, 1]
    np.testing.assert_allclose([got[s.id] for s in samples], want, atol=1e-5, rtol=0)


def test_the_report_says_what_bert_gave_and_what_started_initialised(world):
    from heads.models import create_head
    from heads.spec import InputSpec, Task, TaskSpec
    from heads.vilbert_checkpoint import DIRECT_NOTE, load_vilbert_checkpoint

    inputs = InputSpec(img_dim=10, txt_dim=16, img_regions=7, txt_tokens=16, img_boxes=True)
    cfg = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=5, **{
        k: json.loads(v) for k, v in (s.split("=") for s in VISUAL)})
    head = create_head("vilbert", inputs, TaskSpec([Task("label", "binary", 2)]), v_feature_size=10, **cfg)
    report = load_vilbert_checkpoint(head, world["folder"])
    per_layer = 16  # tensors in one BERT layer
    assert len(report.groups["used: upper text layers"]) == 2 * per_layer
    assert len(report.groups["ignored: lower text layers"]) == START * per_layer
    assert len(report.groups["ignored: text embeddings"]) == 5
    assert report.groups["ignored: BERT pooler"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    assert all(k.startswith("cls.") for k in report.groups["ignored: pretraining heads"])
    assert set(report.missing_keys) == {k for k in head.state_dict() if not k.startswith("encoder.layer.")}
    assert DIRECT_NOTE in report.notes
    for i in range(2):  # head layer i is BERT's layer START + i, every tensor
        for k, v in head.encoder.layer[i].state_dict().items():
            assert torch.equal(v, world["sd"][f"bert.encoder.layer.{START + i}.{k}"]), k


def test_old_layernorm_names_and_a_bare_bertmodel_load_the_same_tensors(world, tmp_path):
    """bert-base-uncased's own ``pytorch_model.bin`` names LayerNorms ``gamma`` / ``beta``; transformers'
    ``BertModel`` saves without the ``bert.`` prefix. Both load as the save_pretrained folder does."""
    from heads.models import create_head
    from heads.spec import InputSpec, Task, TaskSpec
    from heads.vilbert_checkpoint import load_vilbert_checkpoint

    inputs = InputSpec(img_dim=10, txt_dim=16, img_regions=7, txt_tokens=16, img_boxes=True)
    cfg = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=5, v_feature_size=10,
               **{k: json.loads(v) for k, v in (s.split("=") for s in VISUAL)})
    spec = TaskSpec([Task("label", "binary", 2)])
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in world["sd"].items()}
    torch.save(old, tmp_path / "pytorch_model.bin")
    bare = {k[len("bert."):]: v for k, v in world["sd"].items() if k.startswith("bert.")}
    torch.save({"state_dict": bare}, tmp_path / "bare.pt")
    heads = {}
    for name, path in (("folder", world["folder"]), ("old", tmp_path), ("bare", tmp_path / "bare.pt")):
        torch.manual_seed(0)
        heads[name] = create_head("vilbert", inputs, spec, **cfg)
        report = load_vilbert_checkpoint(heads[name], path)
        assert len(report.used_keys) == 2 * 16, name
    for name in ("old", "bare"):
        a, b = heads["folder"].state_dict(), heads[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_visualbert_or_short_berts_are_refused_with_the_fix(world, tmp_path):
    from heads.models import create_head
    from heads.spec import InputSpec, Task, TaskSpec
    from heads.vilbert_checkpoint import load_vilbert_checkpoint

    inputs = InputSpec(img_dim=10, txt_dim=16, img_regions=7, txt_tokens=16, img_boxes=True)
    cfg = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=5, v_feature_size=10,
               **{k: json.loads(v) for k, v in (s.split("=") for s in VISUAL)})
    head = create_head("vilbert", inputs, TaskSpec([Task("label", "binary", 2)]), **cfg)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    visual = dict(world["sd"], **{"bert.embeddings.projection.weight": torch.zeros(16, 10)})
    torch.save(visual, tmp_path / "vb.pth")
    with pytest.raises(FeatstoreError) as e:
        load_vilbert_checkpoint(head, tmp_path / "vb.pth")
    assert str(e.value) == (f"checkpoint {str(tmp_path / 'vb.pth')!r} is a VisualBERT checkpoint (key "
                            "'bert.embeddings.projection.weight'), not ViLBERT or BERT; train it with --head visualbert")
    short = {k: v for k, v in world["sd"].items() if not k.startswith(("bert.encoder.layer.3.", "bert.encoder.layer.4."))}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(FeatstoreError) as e:
        load_vilbert_checkpoint(head, tmp_path / "short.pth")
    assert str(e.value).startswith(f"checkpoint {str(tmp_path / 'short.pth')!r} has no ViLBERT or BERT weights for "
                                   "this head (keys like 'model.bert.encoder.v_layer.0...' or "
                                   "'bert.encoder.layer.3...'); MMF's ViLBERT is https://dl.fbaipublicfiles.com/")
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in before.items())  # a refusal loads nothing


def test_cli_refusal_is_one_line(world, tmp_path):
    from cli.heads_cli import main as heads

    torch.save({k: v for k, v in world["sd"].items()} | {"bert.embeddings.projection.weight": torch.zeros(16, 10)},
               tmp_path / "vb.pth")
    res = invoke_result(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--image", "mmfimg",
                                "--text", "btext", "--text-array", f"layer_{START}", "--head", "vilbert", *SETS,
                                "--init-checkpoint", tmp_path / "vb.pth", "--epochs", 1, "--quiet", "--out",
                                tmp_path / "run"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.splitlines()[-1].startswith("error: checkpoint ") and "--head visualbert" in res.output
    assert not list((tmp_path / "run").rglob("config.json"))


def test_the_direct_preset_reads_bert_base_uncased_from_the_local_cache(world, tmp_path, monkeypatch):
    """``--preset vilbert-hm-direct``: init from the model id ``bert-base-uncased`` (here the tiny BERT, placed
    in a Hugging Face cache of the documented layout), every text layer fine-tuned from the cached embedding
    output (layer_0, text_start_layer 0). Without the cache the run is one line naming the download command."""
    import shutil

    from cli.heads_cli import main as heads

    rev = "0123456789abcdef0123456789abcdef01234567"
    base = tmp_path / "hub" / "models--bert-base-uncased"
    shutil.copytree(world["folder"], base / "snapshots" / rev)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    args = ["train", "--dataset", world["data"], "--store", world["store"], "--image", "mmfimg", "--text", "btext",
            "--preset", "vilbert-hm-direct", *SIZES, "--epochs", 1, "--batch-size", 8, "--threads", 1, "--quiet"]
    for where in (tmp_path / "empty", tmp_path / "hub"):
        monkeypatch.setenv("HF_HUB_CACHE", str(where))
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(where))
        if where.name == "empty":
            res = invoke_result(heads, args + ["--out", tmp_path / "none"])
            assert res.exit_code == 2 and "Traceback" not in res.output
            last = res.output.splitlines()[-1]
            assert last.startswith("error: weights 'bert-base-uncased' are neither a local path nor in the Hugging "
                                   "Face cache") and "huggingface-cli download bert-base-uncased" in last
            assert not list((tmp_path / "none").rglob("config.json"))
    invoke(heads, args + ["--out", tmp_path / "run"])
    cfg = json.loads((tmp_path / "run" / "seed_0" / "config.json").read_text())
    assert cfg["train"]["init_checkpoint"] == "bert-base-uncased" and cfg["head_config"]["text_start_layer"] == 0
    assert cfg["features"]["text"]["array"] == "layer_0"
    load = cfg["checkpoint_load"]
    assert len(load["groups"]["used: upper text layers"]) == 5 * 16 and "ignored: lower text layers" not in load["groups"]
    printed = invoke(heads, args + ["--init-checkpoint", "none", "--out", tmp_path / "random"])  # the preset's, off
    assert "note: vilbert starts from random weights" in printed
    assert json.loads((tmp_path / "random" / "seed_0" / "config.json").read_text())["checkpoint_load"] is None


def test_a_random_start_is_said(world, tmp_path):
    """Without --init-checkpoint the run says that vilbert starts random and where the published rows start."""
    from cli.heads_cli import main as heads

    printed = invoke(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--image", "mmfimg",
                             "--text", "btext", "--text-array", f"layer_{START}", "--head", "vilbert", *SETS,
                             "--epochs", 1, "--threads", 1, "--quiet", "--out", tmp_path / "r"])
    assert ("note: vilbert starts from random weights; the published vilbert rows start from MMF's model.pth "
            "(vilbert.pretrained.cc_original) or bert-base-uncased: pass --init-checkpoint PATH or a cached model "
            "id (--preset vilbert-hm-direct starts from bert-base-uncased)") in printed.splitlines()


def test_text_states_from_another_model_than_the_checkpoints_are_noted(world, tmp_path):
    """The lower text layers ran when the text set was cached: from the checkpoint itself (vilbert-text) for
    a ViLBERT checkpoint, from the same BERT (bert) for a plain one. Anything else is noted in the report."""
    from heads.checkpoints import LoadReport
    from heads.vilbert_checkpoint import DIRECT_NOTE, text_source_note

    folder = str(world["folder"])
    plain = LoadReport(path=folder, notes=[DIRECT_NOTE])
    bert_meta = {"name": "btext", "extractor": "bert", "config": {"weights": folder}}
    assert text_source_note(plain, bert_meta, folder) is None
    assert text_source_note(plain, bert_meta, world["folder"] / "model.safetensors") is None  # the folder's file
    assert text_source_note(plain, {"name": "imported"}, folder) is None  # no recorded source: nothing to say
    vil = str(tmp_path / "vilbert.bin")
    vil_meta = {"name": "vtext", "extractor": "vilbert-text", "config": {"weights": vil}}
    assert text_source_note(LoadReport(path=vil), vil_meta, vil) is None
    same_bert = {"name": "vb", "extractor": "vilbert-text", "config": {"weights": folder}}  # BERT's own layers
    assert text_source_note(plain, same_bert, folder) is None
    assert text_source_note(plain, vil_meta, folder) == (
        f"text set 'vtext' was cached by vilbert-text from {vil!r}, not from the text layers below checkpoint "
        f"{folder!r}; for the checkpoint's own states cache them with `featstore extract --extractor bert "
        f"--weights {folder}`")
    assert text_source_note(LoadReport(path=vil), bert_meta, vil) == (
        f"text set 'btext' was cached by bert from {folder!r}, not from the text layers below checkpoint {vil!r}; "
        f"for the checkpoint's own states cache them with `featstore extract --extractor vilbert-text --weights "
        f"{vil}`")


def test_the_note_reaches_the_run_config_and_a_copy_of_the_same_files_gets_none(world, tmp_path):
    """Another BERT (other weights) is noted in config.json; a copy of the folder the text set was cached
    from is the same files by the recipe's weights fingerprint, so it is not."""
    import shutil

    from cli.heads_cli import main as heads

    copy, other = tmp_path / "copied-bert", tmp_path / "other-bert"
    shutil.copytree(world["folder"], copy)
    tiny_bert(seed=4).save_pretrained(str(other))
    notes = {}
    for name, folder in (("copy", copy), ("other", other)):
        invoke(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--image", "mmfimg", "--text",
                       "btext", "--text-array", f"layer_{START}", "--head", "vilbert", *SETS, "--init-checkpoint",
                       folder, "--epochs", 1, "--threads", 1, "--quiet", "--out", tmp_path / name])
        notes[name] = json.loads((tmp_path / name / "seed_0" / "config.json").read_text())["checkpoint_load"]["notes"]
    assert not any("was cached by" in n for n in notes["copy"])
    assert f"text set 'btext' was cached by bert from {str(world['folder'])!r}, not from the text layers below " \
           f"checkpoint {str(other)!r}" in notes["other"][-1]


def test_a_sweep_starts_its_rows_from_the_checkpoint(world, tmp_path):
    """`heads sweep --init-checkpoint`: every row of a checkpoint head loads it (the report in each run's
    config.json); a head that cannot load one is refused before any row runs."""
    from cli.heads_cli import main as heads

    base = ["sweep", "--dataset", world["data"], "--store", world["store"], "--image", "mmfimg", "--text", "btext",
            "--text-array", f"layer_{START}", *SETS, "--grid", "epochs=1", "--grid", "lr=1e-30,1e-4", "--seeds", "0",
            "--device", "cpu", "--init-checkpoint", world["folder"]]
    invoke(heads, base + ["--head", "vilbert", "--out", tmp_path / "s"])
    configs = [json.loads(p.read_text()) for p in sorted((tmp_path / "s" / "runs").glob("*/seed_0/config.json"))]
    assert len(configs) == 2
    for cfg in configs:
        assert cfg["train"]["init_checkpoint"] == str(world["folder"])
        assert len(cfg["checkpoint_load"]["groups"]["used: upper text layers"]) == 2 * 16
    res = invoke_result(heads, base + ["--head", "vilbert,concat", "--out", tmp_path / "bad"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.splitlines()[-1] == (f"error: --init-checkpoint {world['folder']} initialises vilbert, "
                                           "visualbert, text-bert, concat-bert, late-fusion, mmbt, mmbt-region, "
                                           "image-region, cross, image-only heads; concat cannot load it: sweep those without it")
    assert not (tmp_path / "bad" / "runs").exists()


def test_vilbert_text_names_the_extractor_for_a_bert_folder(world):
    """vilbert-text reads one ViLBERT checkpoint file; a folder gets a one-line error naming the fix."""
    from cli.featstore_cli import main as featstore

    res = invoke_result(featstore, ["extract", "--dataset", world["data"], "--extractor", "vilbert-text", "--store",
                                    world["store"], "--name", "vt", "--workers", 0, "--quiet", "--weights",
                                    world["folder"]])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.splitlines()[-1] == (f"error: checkpoint {str(world['folder'])!r} is a folder; pass the "
                                           "ViLBERT .pt/.bin/.pth file itself (a plain BERT folder's states come "
                                           "from --extractor bert)")


@pytest.mark.parametrize("start", [0, START])
def test_cached_embeddings_get_mmf_embedding_dropout_in_training(start):
    """From the embedding output (text_start_layer 0) MMF's BertEmbeddings drops out what the text stream reads
    (p = hidden_dropout_prob, in training only); from a later layer the cached states go in as they are."""
    from heads.models import create_head
    from heads.spec import InputSpec, Task, TaskSpec

    cfg = {k: v for k, v in TINY.items() if k not in ("max_position_embeddings", "type_vocab_size", "v_target_size")}
    head = create_head("vilbert", InputSpec(img_dim=10, txt_dim=16, img_regions=7, txt_tokens=40),
                       TaskSpec([Task("label", "binary", 2)]),
                       **dict(cfg, text_start_layer=start, t_biattention_id=[3, 4], hidden_dropout_prob=0.25))
    seen = []
    head.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(6, 40, 16, generator=g) + 3.0  # no exact zeros
    batch = dict(img_regions=torch.randn(6, 7, 10, generator=g), txt_tokens=tokens,
                 txt_mask=torch.ones(6, 40, dtype=torch.bool), img_mask=torch.ones(6, 7, dtype=torch.bool))
    head.train()(batch)
    head.eval()(batch)
    real = tokens.reshape(-1, 16)
    trained, evaluated = seen[0].reshape(-1, 16), seen[1].reshape(-1, 16)
    torch.testing.assert_close(evaluated, real, rtol=0, atol=0)
    if start != 0:
        torch.testing.assert_close(trained, real, rtol=0, atol=0)
        return
    dropped = trained == 0
    assert 0.2 < dropped.float().mean().item() < 0.3  # 3,840 values, p = 0.25
    torch.testing.assert_close(trained[~dropped], real[~dropped] / 0.75)
