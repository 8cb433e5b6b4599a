"""MMF's fine-tuned ResNet-152 inside its Hateful Memes baselines' model.pth (concat_bert, late_fusion, mmbt,
unimodal_image over a ResNet-152): ``featstore extract --extractor grid --set weights=model.pth`` computes the image
vectors with it (``featstore.extractors.mmf_resnet``), and ``heads.mmf_checkpoint`` says whether a run's image set
came from that file (concat-bert & co.: the 'whole' note or a WARNING) and loads the Image-Grid file into
``image-only`` only then.

The files are written here from MMF's code, not from featstore's mapping: ``ResNet152ImageEncoder.model`` is
``nn.Sequential(*list(torchvision.models.resnet152().children())[:-2])`` (mmf/modules/encoders.py), so its state
dict is that Sequential's own (``0.weight``, ``4.0.conv1.weight``, ...), kept under ``base.modal.model`` (FusionBase),
``base.encoder.model`` (UnimodalBase) or ``model.bert.mmbt.modal_encoder.encoder.model`` (MMBT's ModalEmbeddings).
The reference is torchvision's ResNet-152 with the same weights -> children()[:-2] -> global average, float64, on
MMF's Hateful Memes pixels (``test_grid_mmf_preprocess._mmf_processor``); the Image-Grid logits are a float64
transcription of MLPClassifer (mmf/modules/layers.py) on that reference.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from cli_helpers import invoke, make_image
from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor
from heads.spec import InputSpec
from test_grid_mmf_preprocess import _mmf_processor
from test_mmf_baseline_checkpoints import bert_tensors, mlp_classifer, mlp_forward, under
from test_text_bert import BINARY, CFG, H, bert_pooled, tiny_bert, token_batch

FUSION, UNIMODAL, MMBT = "base.modal.model.", "base.encoder.model.", "model.bert.mmbt.modal_encoder.encoder.model."
MMF_HM = "mmf-hateful-memes"
READ_BY_HEADS = "read by heads train --init-checkpoint"
NOT_IN_FILE = ("fc: MMF's encoder keeps children()[:-2], so torchvision's fc stays at its seeded random init; grid "
               "and roi never compute it")
RESNET_GROUP = "ignored: fine-tuned ResNet-152 (featstore extract reads it)"
GRID_HIDDEN = [12, 12]  # MLPClassifer(hidden_dim 12, num_layers 2): MMF's hidden_dim is one width


def random_resnet(name: str, seed: int):
    """torchvision ``name`` at random, BatchNorm running statistics away from 0 / 1 (eval-mode affine matters) and
    each residual branch's last BatchNorm scaled down, so 50 blocks keep the activations near 1 (as trained ones)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_((torch.rand(m.running_mean.shape, generator=g) - 0.5) * 0.4)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            last = getattr(m, "bn3", None) or getattr(m, "bn2", None) if hasattr(m, "downsample") else None
            if last is not None:
                last.weight.mul_(0.2)
    return model


def mmf_encoder_tensors(model, prefix: str):
    """MMF's ResNet152ImageEncoder.model state dict: nn.Sequential(*children()[:-2]) under ``prefix``."""
    seq = torch.nn.Sequential(*list(model.children())[:-2])
    return {prefix + k: v.clone() for k, v in seq.state_dict().items()}


def mlp_classifer_f64(x, sd, prefix: str, layers: int):
    """MMF's MLPClassifer.forward in eval mode, float64: ``layers`` x (Linear, BatchNorm1d, ReLU, Dropout) as
    ``<prefix>layers.{4i..4i+3}``, then the Linear ``<prefix>layers.{4 layers}``."""
    p = lambda k: sd[f"{prefix}layers.{k}"].double()  # noqa: E731
    for i in range(layers):
        h = x @ p(f"{4 * i}.weight").T + p(f"{4 * i}.bias")
        bn = f"{4 * i + 1}."
        h = (h - p(bn + "running_mean")) / torch.sqrt(p(bn + "running_var") + 1e-5) * p(bn + "weight") + p(bn + "bias")
        x = torch.relu(h)
    return x @ p(f"{4 * layers}.weight").T + p(f"{4 * layers}.bias")


def mlp_classifer_layers(in_dim: int, seed: int, hidden: int = GRID_HIDDEN[0], layers: int = 2, labels: int = 2):
    """MMF's MLPClassifer(in_dim, labels, hidden_dim, num_layers) ``layers.N`` tensors as its state dict names them
    (Linear, BatchNorm1d with running statistics, ReLU, Dropout per layer; the final Linear), random."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    sd, d = {}, in_dim
    for i in range(layers):
        lin, bn = f"layers.{4 * i}.", f"layers.{4 * i + 1}."
        sd.update({lin + "weight": r(hidden, d), lin + "bias": r(hidden), bn + "weight": 1 + r(hidden),
                   bn + "bias": r(hidden), bn + "running_mean": r(hidden),
                   bn + "running_var": 0.5 + torch.rand(hidden, generator=g),
                   bn + "num_batches_tracked": torch.tensor(3)})
        d = hidden
    sd.update({f"layers.{4 * layers}.weight": r(labels, d), f"layers.{4 * layers}.bias": r(labels)})
    return sd


def save(path, sd):
    torch.save({"model": sd}, str(path))
    return path


def sha256(path) -> str:
    return "files:sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def fix(path) -> str:
    return f"featstore extract --extractor grid --set weights={path} --set preprocess=mmf-hateful-memes"


def hm_folder(root):
    """Two real PNGs; train: each with label 0 and 1, dev_seen: one each."""
    for i in range(2):
        make_image(root / "img" / f"{i:05d}.png", i, size=(61, 47))
    rows = {"train": [(1, 0, 0), (2, 0, 1), (3, 1, 0), (4, 1, 1)], "dev_seen": [(5, 0, 1), (6, 1, 0)]}
    for split, rs in rows.items():
        with open(root / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps({"id": i, "img": f"img/{img:05d}.png", "label": lab, "text": "a meme"}) + "\n"
                         for i, img, lab in rs)
    return root


# ------------------------------------------------------------------------ one ResNet-152, two MMF files, two sets


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The ResNet-152 in MMF's concat_bert file and in its Image-Grid file, each extracted by `featstore extract`
    through the real grid extractor (preprocess=mmf-hateful-memes), and the float64 reference of its pooled."""
    from cli.featstore_cli import main as featstore

    root = tmp_path_factory.mktemp("mmf-resnet")
    data = hm_folder(root / "data")
    resnet = random_resnet("resnet152", 3)
    bert = tiny_bert()
    concat_sd = {**bert_tensors("base.text.", bert, False), **mmf_encoder_tensors(resnet, FUSION),
                 **under("classifier.", mlp_classifer(H + 2048, 6))}
    grid_sd = {**mmf_encoder_tensors(resnet, UNIMODAL), **under("classifier.", mlp_classifer_layers(2048, 9))}
    files = {"concat": save(root / "concat_bert.pth", concat_sd), "grid": save(root / "image_grid.pth", grid_sd)}
    store = root / "store"
    for name, path in files.items():
        invoke(featstore, ["extract", "--dataset", data, "--extractor", "grid", "--store", store, "--workers", 0,
                           "--quiet", "--set", f"weights={path}", "--set", f"preprocess={MMF_HM}",
                           "--set", "dtype=float32", "--name", f"mmf-{name}"])
    images = [Image.open(data / "img" / f"{i:05d}.png").convert("RGB") for i in range(2)]  # MMF's loader
    x = torch.stack([_mmf_processor()(im) for im in images]).double()
    trunk = torch.nn.Sequential(*list(resnet.children())[:-2]).double().eval()
    with torch.no_grad():
        pooled = trunk(x).mean(dim=(2, 3))  # AdaptiveAvgPool2d((1, 1)), flattened
    return {"root": root, "data": data, "store": store, "files": files, "sd": {"concat": concat_sd, "grid": grid_sd},
            "bert": bert, "pooled": pooled, "n_resnet": len(mmf_encoder_tensors(resnet, ""))}


def featstore_main():
    from cli.featstore_cli import main

    return main


def opened(world, name: str):
    from featstore.store import open_store

    return open_store(str(world["store"])).open(name)


def train_data(world, name: str):
    from featstore.datasets import load_dataset
    from heads.data import build_train_data
    from featstore.store import open_store

    return build_train_data(open_store(str(world["store"])), load_dataset(world["data"]), name, None)


def test_grid_pooled_from_mmfs_file_equals_torchvision_resnet152_children_and_global_average(world):
    ref = world["pooled"].numpy()
    for name in ("mmf-concat", "mmf-grid"):
        got = opened(world, name).select(["00000", "00001"], ["pooled"])["pooled"]
        np.testing.assert_allclose(got, ref, atol=1e-5 * float(np.abs(ref).max()), rtol=0)
    # the same ResNet from two files: the same numbers, two versions (each recipe names its own file)
    a, b = opened(world, "mmf-concat"), opened(world, "mmf-grid")
    np.testing.assert_array_equal(a.read("pooled"), b.read("pooled"))
    assert a.version != b.version
    assert a.recipe.weights_fingerprint == sha256(world["files"]["concat"])
    assert b.recipe.weights_fingerprint == sha256(world["files"]["grid"])


def test_the_load_report_names_what_was_read_and_what_was_left_to_heads(world):
    n, sd = world["n_resnet"], world["sd"]
    count = lambda which, prefix: len([k for k in sd[which] if k.startswith(prefix)])  # noqa: E731
    assert opened(world, "mmf-concat").record["meta"]["weights_load"] == {
        "used": n, "unused": {},
        "mmf": f"MMF concat_bert fine-tuned ResNet-152 from base.modal.model.*: {n} tensors",
        "ignored": f"BERT {count('concat', 'base.text.')} (base.text.*), classifier {count('concat', 'classifier.')} "
                   f"(classifier.*): {READ_BY_HEADS}",
        "not_in_file": NOT_IN_FILE}
    assert opened(world, "mmf-grid").record["meta"]["weights_load"] == {
        "used": n, "unused": {},
        "mmf": f"MMF unimodal_image fine-tuned ResNet-152 from base.encoder.model.*: {n} tensors",
        "ignored": f"classifier 16 (classifier.*): {READ_BY_HEADS}", "not_in_file": NOT_IN_FILE}
    assert n == 930 == len(torchvision.models.resnet152().state_dict()) - 2  # every tensor but fc's weight and bias
    shown = invoke(featstore_main(), ["info", "mmf-concat", "--store", world["store"]])
    load = opened(world, "mmf-concat").record["meta"]["weights_load"]
    assert f"  weights load   {json.dumps(load, sort_keys=True)}\n" in shown  # featstore info shows it


# -------------------------------------------------------------------- heads: concat-bert's note, Image-Grid's load


def concat_head(world):
    from heads.text_bert_checkpoint import head_from_checkpoint

    inputs = InputSpec(img_dim=2048, txt_dim=0, txt_ids=True, img_pooled=True)
    return head_from_checkpoint("concat-bert", inputs, BINARY, dict(CFG), world["files"]["concat"])


def test_concat_bert_on_a_set_from_its_own_file_is_mmfs_model_whole(world):
    from heads.mmf_checkpoint import image_source_note

    head, report = concat_head(world)
    path, data = world["files"]["concat"], train_data(world, "mmf-concat")
    assert sorted(report.groups[RESNET_GROUP]) == sorted(k for k in world["sd"]["concat"] if k.startswith(FUSION))
    note = image_source_note(report, data.meta["features"], path)
    assert note == ("the image vectors come from this file's fine-tuned ResNet-152 (image set 'mmf-concat', weights "
                    f"{sha256(path)[:25]}...): MMF's concat_bert whole, at inference (heads train keeps that ResNet "
                    "frozen)")
    assert report.notes == ["MMF's own concat_bert file (model.pth): BERT (pooler included) and the classifier load",
                            note]
    # ... and the head over the stored vectors computes MMF's concat_bert over its own ResNet, float64
    bt = token_batch(seed=4)
    rows = torch.tensor([0, 1, 0, 1, 1])  # image 00000 or 00001 beside each text
    stored = opened(world, "mmf-concat").select(["00000", "00001"], ["pooled"])["pooled"]
    bt["img_pooled"] = torch.as_tensor(stored)[rows].double()
    with torch.no_grad():
        out = head.double().eval()(bt)["logits"]["label"]
    want = mlp_forward(torch.cat([bert_pooled(world["bert"], bt["txt_ids"], bt["txt_mask"]),
                                  world["pooled"][rows]], -1), world["sd"]["concat"], "classifier.")
    torch.testing.assert_close(out, want, atol=1e-5 * float(want.abs().max()), rtol=0)


def test_concat_bert_on_another_files_set_gets_a_warning_naming_the_fix(world):
    from heads.mmf_checkpoint import image_source_note

    _, report = concat_head(world)
    path, other = world["files"]["concat"], world["files"]["grid"]
    note = image_source_note(report, train_data(world, "mmf-grid").meta["features"], path)
    assert note == ("WARNING: image set 'mmf-grid' was not extracted from this file's fine-tuned ResNet-152 (its "
                    f"weights {sha256(other)[:25]}..., the file's {sha256(path)[:25]}...), so the classifier reads "
                    f"image vectors it was not trained on; extract them from this file with `{fix(path)}`")
    assert report.notes[-1] == note and len(report.notes) == 2
    assert report.lines()[2:] == ["  " + note]  # a line of its own in the load report heads train prints


@pytest.mark.parametrize("change, why", [
    ({"weights_fingerprint": "files:sha256:" + "0" * 64},  # recorded wins over the file now at config.weights
     "was not extracted from this file's fine-tuned ResNet-152 (its weights files:sha256:000000000000..., "
     "the file's {fp}...)"),
    ({"config": {"weights": None}, "weights_fingerprint": None},
     "was not extracted from this file's fine-tuned ResNet-152 (it records no weights file)"),
    ({"config": {"preprocess": "whole"}},
     "comes from this file's ResNet-152 but not through MMF's input (extractor, preprocess, --image-pool: grid, "
     "whole, pooled; MMF's: grid, mmf-hateful-memes, pooled)"),
    ({"pool": "regions_mean"}, "comes from this file's ResNet-152 but not through MMF's input (extractor, "
                               "preprocess, --image-pool: grid, mmf-hateful-memes, regions_mean; MMF's: grid, "
                               "mmf-hateful-memes, pooled)"),
])
def test_each_way_a_set_is_not_mmfs_input_is_named(world, change, why):
    from heads.mmf_checkpoint import image_source_note

    _, report = concat_head(world)
    path = world["files"]["concat"]
    image = dict(train_data(world, "mmf-concat").meta["features"]["image"])
    for k, v in change.items():
        image[k] = dict(image[k], **v) if isinstance(v, dict) else v
    note = image_source_note(report, {"image": image}, path)
    assert note == (f"WARNING: image set 'mmf-concat' {why.format(fp=sha256(path)[:25])}, so the classifier reads "
                    f"image vectors it was not trained on; extract them from this file with `{fix(path)}`")


def test_a_recorded_fingerprint_equal_to_the_files_is_the_whole_note(world):
    from heads.mmf_checkpoint import image_source_note

    _, report = concat_head(world)
    path = world["files"]["concat"]
    image = dict(train_data(world, "mmf-concat").meta["features"]["image"], config={"preprocess": MMF_HM},
                 weights_fingerprint=opened(world, "mmf-concat").recipe.weights_fingerprint)
    assert image_source_note(report, {"image": image}, path).startswith("the image vectors come from this file's")


def grid_head(world, set_name, cfg=None, path=None):
    from heads.mmf_checkpoint import image_grid_head_from_checkpoint

    data = train_data(world, set_name) if set_name else None
    inputs = data.input_spec() if data else InputSpec(img_dim=2048, txt_dim=0)
    head, report = image_grid_head_from_checkpoint("image-only", inputs, BINARY, dict(cfg or {}),
                                                   path or world["files"]["grid"],
                                                   features=data.meta["features"] if data else None)
    return head, report, data


def test_image_grid_loads_into_image_only_on_its_own_files_set_and_computes_mlpclassifer(world):
    head, report, data = grid_head(world, "mmf-grid")
    path, sd = world["files"]["grid"], world["sd"]["grid"]
    assert head.config.hidden == GRID_HIDDEN and head.config.batch_norm is True  # read from the file
    assert sorted(report.used_keys) == sorted(k for k in sd if k.startswith("classifier."))
    assert sorted(report.groups[RESNET_GROUP]) == sorted(k for k in sd if k.startswith(UNIMODAL))
    assert report.missing_keys == []
    assert report.notes == [
        "MMF's own unimodal_image file (model.pth): the classifier loads",
        f"the image vectors come from this file's fine-tuned ResNet-152 (image set 'mmf-grid', weights "
        f"{sha256(path)[:25]}...): MMF's unimodal_image whole, at inference (heads train keeps that ResNet frozen)"]
    with torch.no_grad():
        out = head.double().eval()({"img_pooled": data.features["img_pooled"].double()})["logits"]["label"]
    from featstore.datasets import load_dataset

    rows = [int(s.image_key) for s in load_dataset(world["data"]).samples]  # TrainData's rows: the samples'
    want = mlp_classifer_f64(world["pooled"][rows], sd, "classifier.", 2)
    torch.testing.assert_close(out, want, atol=1e-5 * float(want.abs().max()), rtol=0)


def refusal(call) -> str:
    """The one-line FeatstoreError ``call()`` raises."""
    with pytest.raises(FeatstoreError) as e:
        call()
    return str(e.value)


def test_image_grid_on_another_files_set_or_none_is_refused_with_the_fix(world):
    path, other = world["files"]["grid"], world["files"]["concat"]
    assert refusal(lambda: grid_head(world, "mmf-concat")) == (
        f"checkpoint {str(path)!r} is MMF's Image-Grid, whose classifier reads its own fine-tuned ResNet-152's "
        f"vectors, but image set 'mmf-concat' was not extracted from this file's fine-tuned ResNet-152 (its weights "
        f"{sha256(other)[:25]}..., the file's {sha256(path)[:25]}...); extract them from it with `{fix(path)}` and "
        "pass that set as --image")
    assert refusal(lambda: grid_head(world, None)) == (
        f"checkpoint {str(path)!r} is MMF's Image-Grid, whose classifier reads its own fine-tuned ResNet-152's "
        f"vectors, but the run reads no image set recorded as extracted from this file; extract them from it with "
        f"`{fix(path)}` and pass that set as --image")


def test_image_grid_for_another_head_and_another_file_for_image_only_are_refused(world, tmp_path):
    from heads.text_bert_checkpoint import head_from_checkpoint

    grid, concat = world["files"]["grid"], world["files"]["concat"]
    inputs = InputSpec(img_dim=2048, txt_dim=0, txt_ids=True)
    assert refusal(lambda: head_from_checkpoint("concat-bert", inputs, BINARY, dict(CFG), grid)) == (
        f"checkpoint {str(grid)!r} is MMF's unimodal_image over a ResNet-152 (Image-Grid, model.pth), which the "
        f"'image-only' head reads, not 'concat-bert': extract the image set from it (`{fix(grid)}`) and train "
        f"--preset image-grid-hm --init-checkpoint {grid} (MMF's Image-Region file, "
        "unimodal_image.hateful_memes.features, loads into --head image-region)")
    assert refusal(lambda: grid_head(world, "mmf-concat", path=concat)) == (
        f"checkpoint {str(concat)!r} is MMF's concat_bert (model.pth), which the 'concat-bert' head reads, not "
        "'image-only'; train it with --head concat-bert")
    plain = save(tmp_path / "r18.pth", torchvision.models.resnet18().state_dict())
    with pytest.raises(FeatstoreError) as e:
        grid_head(world, "mmf-grid", cfg={"hidden": [4]}, path=plain)
    assert str(e.value) == (
        f"checkpoint {str(plain)!r} is not an MMF model file; the image-only head reads MMF's Image-Grid model.pth "
        "only: pass MMF's own Image-Grid model.pth (an MMF unimodal_image run over resnet152, or the zoo's "
        "unimodal_image.hateful_memes.images); without one, train --preset image-grid-hm")


def test_image_grid_classifier_of_another_width_is_refused_naming_the_sizes(world, tmp_path):
    from heads.mmf_checkpoint import image_grid_head_from_checkpoint

    data = train_data(world, "mmf-grid")
    narrow = InputSpec(img_dim=512, txt_dim=0)
    with pytest.raises(FeatstoreError) as e:
        image_grid_head_from_checkpoint("image-only", narrow, BINARY, {}, world["files"]["grid"],
                                        features=data.meta["features"])
    assert str(e.value) == (
        "checkpoint key 'classifier.layers.0.weight' has shape (12, 2048) but the head's 'mlp.0.weight' has (12, 512); "
        "build the head with the checkpoint's sizes (hidden_size, intermediate_size, vocab_size, hidden, fc7_dim)")


# ------------------------------------------------- featstore: every MMF layout, over resnet18, and each refusal


def mmf_file(tmp_path, prefix: str, model=None, extra=None, drop=(), name="model.pth"):
    """An MMF model.pth with a resnet18 under ``prefix`` (MMF's rule), plus ``extra`` tensors, ``drop`` left out."""
    model = model or random_resnet("resnet18", 5)
    sd = {k: v for k, v in mmf_encoder_tensors(model, prefix).items() if not k.startswith(drop or "\0")}
    return save(tmp_path / name, {**sd, **(extra or {})}), model


T = torch.zeros(2)
LAYOUTS = {  # prefix, MMF's other tensors -> (model name, ignored line)
    "concat_bert": (FUSION, {"base.text.embeddings.word_embeddings.weight": T, "classifier.layers.0.weight": T},
                    "BERT 1 (base.text.*), classifier 1 (classifier.*)"),
    "late_fusion": (FUSION, {"base.text.pooler.dense.bias": T, "text_classifier.layers.0.bias": T,
                             "modal_classifier.layers.0.bias": T},
                    "BERT 1 (base.text.*), classifier 2 (modal_classifier.*, text_classifier.*)"),
    "unimodal_image": (UNIMODAL, {"classifier.layers.4.bias": T}, "classifier 1 (classifier.*)"),
    "mmbt": (MMBT, {"model.bert.mmbt.transformer.embeddings.word_embeddings.weight": T,
                    "model.bert.mmbt.modal_encoder.proj_embeddings.weight": T, "model.classifier.1.bias": T,
                    "losses.x": T},
             "BERT 1 (model.bert.mmbt.transformer.*), classifier 1 (model.classifier.*), MMBT modal embeddings 1 "
             "(model.bert.mmbt.modal_encoder.*), other 1 (losses.*)"),
}


@pytest.mark.parametrize("model", sorted(LAYOUTS))
@pytest.mark.parametrize("extractor", ["grid", "roi"])
def test_each_mmf_layout_loads_its_resnet_whole_into_grid_and_roi(tmp_path, model, extractor):
    prefix, extra, ignored = LAYOUTS[model]
    path, ref = mmf_file(tmp_path, prefix, extra=extra)
    size = dict(image_size=64) if extractor == "grid" else dict(shorter_side=64, max_side=100)
    ex = create_extractor(extractor, backbone="resnet18", weights=str(path), **size)
    n = len(mmf_encoder_tensors(ref, ""))
    assert ex.weights_load == {"used": n, "unused": {},
                               "mmf": f"MMF {model} fine-tuned ResNet-18 from {prefix}*: {n} tensors",
                               "ignored": f"{ignored}: {READ_BY_HEADS}", "not_in_file": NOT_IN_FILE}
    own = ex.backbone.model.state_dict()
    for k, v in ref.state_dict().items():
        if not k.startswith("fc."):
            torch.testing.assert_close(own[k], v, atol=0, rtol=0)
    assert ex.weights_fingerprint() == sha256(path)


def test_a_data_parallel_file_loads_the_same(tmp_path):
    model = random_resnet("resnet18", 5)
    sd = {"module." + k: v for k, v in mmf_encoder_tensors(model, FUSION).items()}
    path = save(tmp_path / "dp.pth", {**sd, "module.classifier.layers.0.bias": T})
    ex = create_extractor("grid", backbone="resnet18", weights=str(path), image_size=64)
    assert ex.weights_load["mmf"] == f"MMF concat_bert fine-tuned ResNet-18 from {FUSION}*: 120 tensors"


@pytest.mark.parametrize("prefix, change, message", [
    (FUSION, dict(drop=(FUSION + "7.",)),  # no layer4
     "MMF concat_bert's ResNet (base.modal.model.*) lacks 30 of torchvision resnet18's 120 tensors (first: "
     "base.modal.model.7.0.conv1.weight, torchvision's layer4.0.conv1.weight); pass the whole model.pth MMF saved"),
    (MMBT, dict(extra={MMBT + "4.0.conv1.weight": torch.zeros(64, 64, 1, 1)}),
     f"{MMBT}4.0.conv1.weight has shape (64, 64, 1, 1), torchvision resnet18's layer1.0.conv1.weight expects "
     "(64, 64, 3, 3); the backbone must be the file's ResNet (MMF's baselines: --set backbone=resnet152)"),
    (UNIMODAL, dict(extra={UNIMODAL + "3.weight": T, UNIMODAL + "8.bias": T}),
     "2 keys of MMF unimodal_image's ResNet (base.encoder.model.*) have no place in torchvision resnet18 (first: "
     "base.encoder.model.3.weight); the backbone must be the file's ResNet (MMF's baselines: --set "
     "backbone=resnet152)"),
], ids=["truncated", "another-shape", "no-place"])
def test_a_resnet_that_does_not_fit_is_refused_naming_the_tensor(tmp_path, prefix, change, message):
    path, _ = mmf_file(tmp_path, prefix, **change)
    with pytest.raises(FeatstoreError) as e:
        create_extractor("grid", backbone="resnet18", weights=str(path), image_size=64)
    assert str(e.value) == f"weights {str(path)!r}: {message}"


def test_resnet152s_file_for_a_resnet18_backbone_is_refused_at_its_first_misfit(world):
    with pytest.raises(FeatstoreError) as e:
        create_extractor("grid", backbone="resnet18", weights=str(world["files"]["grid"]), image_size=64)
    assert str(e.value) == (
        f"weights {str(world['files']['grid'])!r}: base.encoder.model.4.0.conv1.weight has shape (64, 64, 1, 1), "
        "torchvision resnet18's layer1.0.conv1.weight expects (64, 64, 3, 3); the backbone must be the file's ResNet "
        "(MMF's baselines: --set backbone=resnet152)")


def test_two_resnets_in_one_file_and_a_timm_backbone_are_refused(tmp_path):
    model = random_resnet("resnet18", 5)
    path, _ = mmf_file(tmp_path, FUSION, model=model, extra=mmf_encoder_tensors(model, MMBT))
    with pytest.raises(FeatstoreError) as e:
        create_extractor("grid", backbone="resnet18", weights=str(path), image_size=64)
    assert str(e.value) == (f"weights {str(path)!r} hold ResNets under both base.modal.model.* and {MMBT}*; pass the "
                            "model.pth of one MMF model")
    single, _ = mmf_file(tmp_path, FUSION, model=model, name="single.pth")
    with pytest.raises(FeatstoreError) as e:
        create_extractor("grid", backbone="tf_efficientnet_lite0", weights=str(single), image_size=64)
    assert str(e.value) == (f"weights {str(single)!r} are MMF concat_bert's model.pth, whose ResNet "
                            "(base.modal.model.*) is torchvision's, not timm 'tf_efficientnet_lite0'; pass --set "
                            "backbone=resnet152")


def test_a_file_without_an_mmf_resnet_keeps_todays_refusal(tmp_path):
    # MMF's unimodal_text (BERT under base.encoder, no .model.) and MMBT-Region (fc7 in its modal encoder)
    for name, sd in (("text.pth", {"base.encoder.embeddings.word_embeddings.weight": T, "classifier.layers.0.bias": T}),
                     ("region.pth", {"model.bert.mmbt.modal_encoder.encoder.lc.weight": T})):
        path = save(tmp_path / name, sd)
        with pytest.raises(FeatstoreError) as e:
            create_extractor("grid", backbone="resnet18", weights=str(path), image_size=64)
        assert str(e.value) == (
            f"weights {str(path)!r} do not fit torchvision resnet18: 122 missing keys (e.g. ['conv1.weight', "
            f"'bn1.weight']), {len(sd)} unexpected (e.g. {list(sd)[:2]}); pass weights saved from "
            "torchvision resnet18")



def test_heads_train_loads_image_grid_on_its_own_set_and_refuses_another(world, tmp_path):
    """Through the CLI (heads.train's --init-checkpoint path): --preset image-grid-hm with MMF's Image-Grid
    file trains image-only from it on the set extracted from that file, with the whole note; on the set of
    another file it is one line naming the fix, and nothing is written."""
    from cli.heads_cli import main as heads
    from cli_helpers import invoke_result

    path = world["files"]["grid"]
    args = ["train", "--dataset", world["data"], "--store", world["store"], "--preset", "image-grid-hm",
            "--init-checkpoint", path, "--epochs", 0, "--threads", 1, "--quiet",
            "--set", f"hidden={json.dumps(GRID_HIDDEN)}"]  # the preset's 768 is MMF's; the tiny file's width here
    out = invoke(heads, [*args, "--image", "mmf-grid", "--out", tmp_path / "run"])
    assert (f"the image vectors come from this file's fine-tuned ResNet-152 (image set 'mmf-grid', weights "
            f"{sha256(path)[:25]}...): MMF's unimodal_image whole, at inference") in out
    cfg = json.loads((tmp_path / "run" / "seed_0" / "config.json").read_text())
    assert cfg["head"] == "image-only" and cfg["features"]["image"]["weights_fingerprint"] == sha256(path)
    res = invoke_result(heads, [*args, "--image", "mmf-concat", "--out", tmp_path / "run2"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: checkpoint {str(path)!r} is MMF's Image-Grid, whose classifier reads its own fine-tuned "
                    f"ResNet-152's vectors, but image set 'mmf-concat' was not extracted from this file's fine-tuned "
                    f"ResNet-152 (its weights {sha256(world['files']['concat'])[:25]}..., the file's "
                    f"{sha256(path)[:25]}...); extract them from it with `{fix(path)}` and pass that set as --image"]
    assert not (tmp_path / "run2").exists()


def test_heads_train_warns_when_concat_berts_image_set_is_not_its_resnets(world, tmp_path):
    """Through the CLI: MMF's concat_bert file loads into concat-bert (BERT and classifier), and the load report
    warns, naming the fix, when the run's image set was extracted from another file's ResNet-152."""
    from cli.featstore_cli import main as featstore
    from cli.heads_cli import main as heads
    from test_text_bert import NH
    from test_vilbert_mmf import VOCAB, write_vocab

    bert = tiny_bert("BertModel", seed=4, vocab=len(VOCAB))
    folder = tmp_path / "bert"
    bert.save_pretrained(str(folder))
    write_vocab(folder)
    invoke(featstore, ["extract", "--dataset", world["data"], "--extractor", "bert", "--store", world["store"],
                       "--name", "btext-concat", "--workers", 0, "--quiet", "--weights", folder,
                       "--set", "max_length=16", "--set", "dtype=float32"])
    sd = {k: v for k, v in world["sd"]["concat"].items() if not k.startswith("base.text.")}
    path = save(tmp_path / "concat_bert.pth", {**sd, **bert_tensors("base.text.", bert, False)})
    out = invoke(heads, ["train", "--dataset", world["data"], "--store", world["store"], "--image", "mmf-grid",
                         "--text", "btext-concat", "--text-array", "input_ids", "--head", "concat-bert",
                         "--set", f"num_attention_heads={NH}", "--init-checkpoint", path, "--epochs", 0,
                         "--threads", 1, "--quiet", "--out", tmp_path / "run"])
    assert (f"  WARNING: image set 'mmf-grid' was not extracted from this file's fine-tuned ResNet-152 (its weights "
            f"{sha256(world['files']['grid'])[:25]}..., the file's {sha256(path)[:25]}...), so the classifier reads "
            f"image vectors it was not trained on; extract them from this file with `{fix(path)}`") in out.splitlines()
