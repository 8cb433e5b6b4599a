"""``--init-checkpoint`` with MMF's own Image-Region and MMBT-Region files (``heads.mmf_checkpoint``): the zoo's
``unimodal_image.hateful_memes.features`` / ``mmbt.hateful_memes.features`` or an MMF run's ``model.pth``.

The files are written here in MMF's module tree, the prefixes taken from MMF's code, not from the heads:

* ``UnimodalModal`` (mmf/models/unimodal.py): ``base`` is ``UnimodalBase`` whose ``encoder`` is the modal
  encoder; with ``direct_features_input`` that is ``build_image_encoder``'s ``ImageFeatureEncoderFactory.module``,
  a ``FinetuneFasterRcnnFpnFc7`` holding ``lc`` (mmf/modules/encoders.py): ``base.encoder.lc.*``;
  ``classifier.layers.N`` the MLPClassifer.
* ``MMBT`` over features: ``model.bert.mmbt.modal_encoder`` (``ModalEmbeddings``) holds ``encoder`` (the same
  FinetuneFasterRcnnFpnFc7: ``...modal_encoder.encoder.lc.*``), ``proj_embeddings`` and BERT's shared
  ``word / position / token_type_embeddings`` and ``LayerNorm`` again.
* ``old_names``: fc7 under ``module.lc`` (the name ``FinetuneFasterRcnnFpnFc7._load_from_state_dict`` renames)
  and a DataParallel ``module.`` before every key.

The references are computed from the file's tensors by the float64 transcriptions of MMF's forwards in
tests/test_fc7_heads.py (``image_region_f64``, ``mmbt_region_reference``) and tests/test_text_bert.py
(``mlp_reference``), never from the head.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_helpers import invoke, one_line_error
from featstore.errors import FeatstoreError
from heads.mmf_checkpoint import HOW_TO_GET_IMAGE_REGION, mmf_layout
from heads.mmf_checkpoint import head_from_checkpoint as image_region_from_checkpoint
from heads.spec import InputSpec
from heads.text_bert_checkpoint import head_from_checkpoint
from test_fc7_heads import (DR, F, RS, mmbt_region_reference, read_probs, region_batch, region_train,  # noqa: F401
                            regions)
from test_mmf_baseline_checkpoints import IMAGE_GROUP, K, bert_tensors, mlp_classifer, mlp_forward, mmbt_file, resnet, \
    under
from test_text_bert import B, BINARY, H, MLP, NH, folders, token_batch, tiny_bert, world  # noqa: F401

FC7 = "used: fc7 (MMF's, fine-tuned)"
SHARED = "ignored: shared copies of BERT's tables"
IMAGE_INPUTS = InputSpec(img_dim=DR, txt_dim=0, img_regions=RS)
REGION_INPUTS = InputSpec(img_dim=DR, txt_dim=0, txt_ids=True, img_regions=RS)
N = 6  # num_regions


def fc7_tensors(prefix: str, old_names: bool, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    lc = prefix + ("module.lc." if old_names else "lc.")
    return {lc + "weight": torch.randn(F, DR, generator=g) * 0.5, lc + "bias": torch.randn(F, generator=g) * 0.5}


def fc7_of(sd):
    """(weight, bias) of the file's fc7, wherever MMF put it."""
    w = next(v for k, v in sd.items() if k.endswith("lc.weight"))
    return w.double(), next(v for k, v in sd.items() if k.endswith("lc.bias")).double()


def image_region_file(old_names: bool, labels: int = K):
    return {**fc7_tensors("base.encoder.", old_names), **under("classifier.", mlp_classifer(F, 5, labels))}


def mmbt_region_file(bert, old_names: bool, labels: int = K):
    return mmbt_file(bert, old_names, labels, encoder=fc7_tensors("model.bert.mmbt.modal_encoder.encoder.", old_names),
                     width=F)


def save(path, sd, data_parallel: bool):
    torch.save({"model": under("module.", sd) if data_parallel else sd}, str(path))
    return path


def image_region_reference(batch, sd, n: int = N):
    """MMF's UnimodalModal on the file's tensors: mean of the zero-padded slots, relu(fc7), MLPClassifer."""
    x, mask = batch["img_regions"].double(), batch["img_mask"]
    w, b = fc7_of(sd)
    mean = torch.where(mask[..., None], x, torch.zeros_like(x)).sum(dim=1) / n
    h = torch.relu(mean @ w.T + b)
    return mlp_forward(h, {k: v.double() for k, v in sd.items()}, "classifier.")


def mmbt_ours(sd):
    """The file's tensors under the names ``mmbt_region_reference`` reads (written out from MMF's tree)."""
    w, b = fc7_of(sd)
    m = "model.bert.mmbt.modal_encoder.proj_embeddings."
    return {"fc7.lc.weight": w, "fc7.lc.bias": b, "modal_encoder.proj_embeddings.weight": sd[m + "weight"],
            "modal_encoder.proj_embeddings.bias": sd[m + "bias"],
            "outputs.layers.label.weight": sd["model.classifier.1.weight"],
            "outputs.layers.label.bias": sd["model.classifier.1.bias"],
            **{"transform." + k[len("model.classifier.0."):]: v for k, v in sd.items()
               if k.startswith("model.classifier.0.")}}


def test_the_layouts_are_told_apart_by_their_prefixes():
    bert = tiny_bert()
    assert mmf_layout(image_region_file(False)) == mmf_layout(image_region_file(True)) == "unimodal_image"
    assert mmf_layout(mmbt_region_file(bert, True)) == "mmbt_region"
    grid = {**resnet("base.encoder."), **under("classifier.", mlp_classifer(F, 5))}
    assert mmf_layout(grid) == "unimodal_image_grid"
    assert mmf_layout({**bert_tensors("base.encoder.", bert, False), **under("classifier.", mlp_classifer(H, 5))}) \
        == "unimodal_text"
    mmbt_grid = {k: v for k, v in mmbt_region_file(bert, False).items() if ".lc." not in k}
    assert mmf_layout({**mmbt_grid, **resnet("model.bert.mmbt.modal_encoder.encoder.")}) == "mmbt"


@pytest.mark.parametrize("old_names", [False, True])
def test_image_region_loads_mmfs_file_whole_and_computes_its_forward(tmp_path, old_names):
    sd = image_region_file(old_names)
    path = save(tmp_path / "model.pth", sd, data_parallel=old_names)
    head, report = image_region_from_checkpoint("image-region", IMAGE_INPUTS, BINARY, {"num_regions": N}, path)
    assert report.missing_keys == []
    assert head.config.fc7_dim == F and head.config.hidden == MLP  # read from the file's shapes
    assert sorted(report.groups[FC7]) == sorted(k for k in sd if ".lc." in k)
    assert sorted(report.groups["used: classifier"]) == sorted(k for k in sd if k.startswith("classifier."))
    assert not report.ignored_keys
    assert report.notes[-1] == "MMF's own unimodal_image file (model.pth): fc7 and the classifier load"
    batch = region_batch(B, RS, DR, seed=2)
    head = head.double().eval()
    with torch.no_grad():
        out = head(batch)["logits"]["label"]
    torch.testing.assert_close(out, image_region_reference(batch, sd), atol=1e-8, rtol=0)


@pytest.mark.parametrize("old_names", [False, True])
def test_mmbt_region_loads_mmfs_file_whole_and_computes_its_forward(tmp_path, old_names):
    bert = tiny_bert()
    sd = mmbt_region_file(bert, old_names)
    path = save(tmp_path / "model.pth", sd, data_parallel=old_names)
    head, report = head_from_checkpoint("mmbt-region", REGION_INPUTS, BINARY,
                                        dict(num_attention_heads=NH, hidden_dropout_prob=0.0,
                                             attention_probs_dropout_prob=0.0, num_regions=N), path)
    assert report.missing_keys == []
    assert head.config.fc7_dim == F
    assert sorted(report.groups[FC7]) == sorted(k for k in sd if ".lc." in k)
    assert sorted(report.groups[SHARED]) == sorted(
        f"model.bert.mmbt.modal_encoder.{t}" for t in ("word_embeddings.weight", "position_embeddings.weight",
                                                       "token_type_embeddings.weight", "LayerNorm.weight",
                                                       "LayerNorm.bias"))
    assert IMAGE_GROUP not in report.groups
    assert report.notes[-1] == ("MMF's own mmbt_region file (model.pth): BERT (pooler included), fc7 and the "
                                "classifier load")
    batch = dict(token_batch(seed=3), **region_batch(B, RS, DR, seed=4))
    head = head.double().eval()
    with torch.no_grad():
        out = head(batch)["logits"]["label"]
    want, _ = mmbt_region_reference(bert, mmbt_ours(sd), batch["txt_ids"], batch["txt_mask"], batch, N)
    torch.testing.assert_close(out, want, atol=1e-8, rtol=0)


def test_an_image_region_file_of_another_label_count_leaves_the_last_layer_initialised(tmp_path):
    path = save(tmp_path / "model.pth", image_region_file(False, labels=3), data_parallel=False)
    _, report = image_region_from_checkpoint("image-region", IMAGE_INPUTS, BINARY, {"num_regions": N}, path)
    assert report.missing_keys == ["outputs.layers.label.bias", "outputs.layers.label.weight"]
    assert report.groups["ignored: classifier of another label count"] == ["classifier.layers.8.bias",
                                                                              "classifier.layers.8.weight"]


def test_files_of_other_models_are_refused_naming_the_head_that_reads_them(tmp_path):
    bert = tiny_bert()
    region = save(tmp_path / "region.pth", mmbt_region_file(bert, False), data_parallel=False)
    cfg = dict(num_attention_heads=NH, num_regions=N)
    with pytest.raises(FeatstoreError) as e:
        head_from_checkpoint("mmbt", InputSpec(img_dim=DR, txt_dim=0, txt_ids=True, img_pooled=True), BINARY,
                             dict(num_attention_heads=NH), region)
    assert str(e.value) == (f"checkpoint {str(region)!r} is MMF's mmbt_region (model.pth), which the 'mmbt-region' "
                            "head reads, not 'mmbt'; train it with --head mmbt-region, or pass a plain BERT")
    grid_sd = {k: v for k, v in mmbt_region_file(bert, False).items() if ".lc." not in k}
    grid = save(tmp_path / "grid.pth", {**grid_sd, **resnet("model.bert.mmbt.modal_encoder.encoder.")}, False)
    with pytest.raises(FeatstoreError, match="which the 'mmbt' head reads, not 'mmbt-region'; train it with --head "
                                             "mmbt, or pass a plain BERT$"):
        head_from_checkpoint("mmbt-region", REGION_INPUTS, BINARY, dict(cfg), grid)
    image = save(tmp_path / "image.pth", image_region_file(False), data_parallel=False)
    with pytest.raises(FeatstoreError) as e:
        head_from_checkpoint("text-bert", InputSpec(img_dim=0, txt_dim=0, txt_ids=True), BINARY,
                             dict(num_attention_heads=NH), image)
    assert str(e.value).endswith("which the 'image-region' head reads, not 'text-bert'; train it with --head "
                                 "image-region, or pass a plain BERT")


def test_image_grid_and_plain_bert_files_are_refused_for_image_region(tmp_path, folders):  # noqa: F811
    grid = save(tmp_path / "grid.pth", {**resnet("base.encoder."), **under("classifier.", mlp_classifer(F, 5))},
                data_parallel=False)
    with pytest.raises(FeatstoreError) as e:
        image_region_from_checkpoint("image-region", IMAGE_INPUTS, BINARY, {"num_regions": N, "fc7_dim": F}, grid)
    assert str(e.value) == (
        f"checkpoint {str(grid)!r} is MMF's unimodal_image over a ResNet-152 (Image-Grid, model.pth), which the "
        "'image-only' head reads, not 'image-region': extract the image set from it (`featstore extract --extractor "
        f"grid --set weights={grid} --set preprocess=mmf-hateful-memes`) and train --preset image-grid-hm "
        f"--init-checkpoint {grid} (MMF's Image-Region file, unimodal_image.hateful_memes.features, loads into "
        "--head image-region)")
    folder, _ = folders["BertModel"]
    with pytest.raises(FeatstoreError) as e:
        image_region_from_checkpoint("image-region", IMAGE_INPUTS, BINARY, {"num_regions": N, "fc7_dim": F}, folder)
    assert str(e.value) == (f"checkpoint {str(folder)!r} is not an MMF model file; the image-region head reads MMF's "
                            f"unimodal_image model.pth only: {HOW_TO_GET_IMAGE_REGION}")


# ------------------------------------------------------------------------------------------ the CLI


def assert_mmfs_predictions(regions, run, sd):  # noqa: F811
    """The run's test predictions are MMF's Image-Region forward (``image_region_reference``) of the MMF-named
    tensors ``sd`` on the stored regions."""
    got = read_probs(run / "predictions_test.csv")
    by_id = {s.id: s for s in regions["ds"].samples}
    rows = [regions["keys"].index(by_id[i].image_key) for i in got]
    batch = {"img_regions": torch.from_numpy(regions["arr"][rows]),
             "img_mask": torch.arange(RS)[None] < torch.from_numpy(regions["count"][rows])[:, None].long()}
    want = torch.softmax(image_region_reference(batch, sd), -1)[:, 1].numpy()
    np.testing.assert_allclose(list(got.values()), want, atol=1e-5, rtol=0)


def test_heads_train_reads_mmfs_image_region_file_and_refuses_the_pickles_beside_it(regions, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    sd = image_region_file(False)
    path = save(tmp_path / "model.pth", sd, data_parallel=True)
    args, heads = region_train(regions, tmp_path / "run", "--head", "image-region", "--set", f"num_regions={N}",
                               "--init-checkpoint", path)
    printed = invoke(heads, args)
    run = tmp_path / "run" / "seed_0"
    saved = load_file(str(run / "model.safetensors"))
    w, b = fc7_of(sd)
    assert torch.equal(saved["fc7.lc.weight"].double(), w) and torch.equal(saved["fc7.lc.bias"].double(), b)
    load = json.loads((run / "config.json").read_text())["checkpoint_load"]
    assert load["missing_keys"] == [] and sorted(load["groups"][FC7]) == ["base.encoder.lc.bias",
                                                                          "base.encoder.lc.weight"]
    assert load["summary"][0] in printed
    assert "fc7 starts from random weights" not in printed and "starts from random weights" not in printed

    # the run's predictions are MMF's model on the stored regions: the file's tensors, with the BatchNorm running
    # statistics the epoch of training moved (lr 1e-30 leaves every parameter as the file has it)
    ran = dict(sd)
    for k, v in sd.items():
        leaf = k[len("classifier.layers."):]
        if k.startswith("classifier.layers.") and int(leaf.split(".")[0]) < 8:
            mine = saved[f"mlp.{leaf}"]
            if "running" in k or "num_batches" in k:
                ran[k] = mine
            else:
                torch.testing.assert_close(mine, v, atol=1e-6, rtol=0)
    assert_mmfs_predictions(regions, run, ran)

    args, heads = region_train(regions, tmp_path / "again", "--head", "image-region", "--set", f"num_regions={N}",
                               "--init-checkpoint", path, "--set", f"fc7_weights={regions['fc7']}")
    assert one_line_error(heads, args) == (  # refused with the head checks, before the run folder is made
        f"error: fc7_weights={str(regions['fc7'])!r} would replace the fine-tuned fc7 that the init checkpoint "
        f"{str(path)!r} holds (MMF's, trained with its classifier); drop --set fc7_weights")
    assert not (tmp_path / "again").exists()


def test_image_region_loads_a_checkpoint_but_gets_no_random_start_note():
    """image-region starts from Detectron's fc7 (heads.fc7's note), not from a pretrained checkpoint: the
    random-start note, which names a BERT to start from, is not for it."""
    from heads.train import TrainConfig, loads_checkpoint, random_start_note

    assert loads_checkpoint("image-region", {})
    assert random_start_note(TrainConfig(head="image-region")) is None
    assert random_start_note(TrainConfig(head="mmbt-region")).startswith("note: mmbt-region starts from random weights")


def test_epochs_0_evaluates_mmfs_fine_tuned_file_as_loaded(regions, tmp_path):  # noqa: F811
    """``--epochs 0``: the zoo's fine-tuned model is evaluated as it is, BatchNorm statistics included, so the
    run's predictions are MMF's forward of the file itself."""
    from safetensors.torch import load_file

    sd = image_region_file(False)
    path = save(tmp_path / "model.pth", sd, data_parallel=False)
    n = sum(1 for s in regions["ds"].samples if s.split == "train" and s.labels.get("label") is not None)
    one_left = ["--init-checkpoint", path, "--batch-size", n - 1]  # a last train batch of one row
    args, heads = region_train(regions, tmp_path / "no", "--head", "image-region", "--set", f"num_regions={N}",
                               *one_left)
    assert "leave a last batch of one row" in one_line_error(heads, args)  # refused when it would train
    args, heads = region_train(regions, tmp_path / "run", "--head", "image-region", "--set", f"num_regions={N}",
                               *one_left, "--epochs", 0)
    printed = invoke(heads, args)  # nothing trains, so it is not refused
    run = tmp_path / "run" / "seed_0"
    saved = load_file(str(run / "model.safetensors"))
    assert torch.equal(saved["mlp.1.running_var"], sd["classifier.layers.1.running_var"])
    assert torch.equal(saved["outputs.layers.label.weight"], sd["classifier.layers.8.weight"])
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] == 0
    assert json.loads((run / "history.json").read_text()) == [] and not (run / "learning_curve.png").exists()
    assert "best epoch 0" in printed
    assert_mmfs_predictions(regions, run, sd)


def test_epochs_0_needs_a_checkpoint_and_no_pretraining(regions, tmp_path):  # noqa: F811
    from heads.train import TrainConfig

    args, heads = region_train(regions, tmp_path / "run", "--head", "image-region", "--set", f"num_regions={N}",
                               "--epochs", 0)
    assert one_line_error(heads, args) == ("error: epochs=0 must be > 0 (0 evaluates an --init-checkpoint as loaded, "
                                           "and none is given); pass a positive value")
    assert not (tmp_path / "run").exists()
    with pytest.raises(FeatstoreError, match=r"^epochs=-1 must be > 0"):
        TrainConfig(head="concat", epochs=-1, init_checkpoint="x.pth").validate()
    with pytest.raises(FeatstoreError) as e:
        TrainConfig(head="refnet", epochs=0, init_checkpoint="x.pth", pretrain_epochs=2).validate()
    assert str(e.value) == ("epochs=0 evaluates the --init-checkpoint as loaded, so pretrain_epochs=2 would change "
                            "it; pass pretrain_epochs=0 or epochs >= 1")
    TrainConfig(head="cross", epochs=0, init_checkpoint="x.pth").validate()
