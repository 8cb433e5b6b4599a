"""A Hate-CLIPper / RGCL checkpoint against the cached features it is trained on
(``heads.hateclipper_checkpoint.check_features``).

A Hate-CLIPper file keeps engine.py's frozen ``image_encoder`` / ``text_encoder`` (``copy.deepcopy`` of
``CLIPModel.vision_model`` / ``text_model``), so it names its CLIP. The files here hold the real transformers
towers (tiny random configs, and the four openai configs on the meta device for the geometry); the features are
extracted by the real ``clip-image`` / ``clip-text`` through ``featstore extract``, so the recorded geometry the
check reads is the extractor's own. ViT-L/14 at 224 px and at 336 px have the same pooler widths; only this check
tells them apart.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import BertTokenizerFast, CLIPConfig, CLIPModel

from cli.featstore_cli import main as featstore
from cli.heads_cli import main as heads
from cli_helpers import CAPTIONS, extract_args, invoke, make_hm_folder, one_line_error
from featstore.errors import FeatstoreError
from featstore.store import open_store
from featstore.store.spec import Recipe
from heads.clip_provenance import check_features, compare_encoders, describe_clip, vision_geometry

N = 3  # map_dim of the files
WIDTH = 16  # the tiny CLIP's vision and text widths (their pooler_output)
OPENAI = {"openai/clip-vit-large-patch14": (1024, 24, 14, 224),  # width, layers, patch, px
          "openai/clip-vit-large-patch14-336": (1024, 24, 14, 336),
          "openai/clip-vit-base-patch32": (768, 12, 32, 224), "openai/clip-vit-base-patch16": (768, 12, 16, 224)}


def tiny_clip_config(px: int, vocab: int = 64) -> CLIPConfig:
    return CLIPConfig(text_config=dict(vocab_size=vocab, hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=40, eos_token_id=3,
                                       pad_token_id=0, bos_token_id=2),
                      vision_config=dict(hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=px, patch_size=14),
                      projection_dim=8)


def save_clip_folder(d, px: int):
    """A CLIPModel folder (tiny, random) with its processor at ``px`` and a word-piece tokenizer of the captions."""
    from transformers import CLIPImageProcessor

    words = sorted({w for c in CAPTIONS for w in c.split()} | {"again", "today", "here"})
    d.mkdir(parents=True)
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(d)
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config(px, tok.vocab_size)).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": px}, crop_size={"height": px, "width": px}).save_pretrained(d)
    return d


def hateclipper_file(path, px: int, clip_folder=None):
    """engine.py's CLIPClassifier state_dict (map_dim N, one mapping and one pre-output layer, fusion cross) with
    real CLIP vision and text towers: those of ``clip_folder`` (frozen, as main.py's defaults leave them), else a
    fresh random CLIP at ``px``; saved as main.py does."""
    torch.manual_seed(1)
    clip = CLIPModel.from_pretrained(str(clip_folder)) if clip_folder else CLIPModel(tiny_clip_config(px))
    sd = {f"image_encoder.{k}": v for k, v in clip.vision_model.state_dict().items()}
    sd.update({f"text_encoder.{k}": v for k, v in clip.text_model.state_dict().items()})
    parts = {"image_map.0": nn.Linear(WIDTH, N), "text_map.0": nn.Linear(WIDTH, N), "pre_output.1": nn.Linear(N * N, N),
             "output": nn.Linear(N, 1)}
    for name, layer in parts.items():
        sd.update({f"{name}.{k}": v for k, v in layer.state_dict().items()})
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 90}, str(path))
    return path


@pytest.fixture(scope="module")
def clip_world(tmp_path_factory):
    """A Hateful-Memes-style folder and a store holding clip-image / clip-text (28 px, 14 px patches) extracted by
    the real extractors, plus a grid and a bert set (other extractors, for the refusals)."""
    root = tmp_path_factory.mktemp("provenance")
    data, store = make_hm_folder(root / "data"), root / "store"
    folder = save_clip_folder(root / "clip28", 28)
    for extractor in ("clip-image", "clip-text"):
        invoke(featstore, extract_args(data, store, extractor, "--weights", folder, "--set", "dtype=float32",
                                       *(["--set", "num_regions=0"] if extractor == "clip-image" else [])))
    invoke(featstore, extract_args(data, store, "grid"))
    invoke(featstore, extract_args(data, store, "bert"))
    return {"root": root, "data": data, "store": store, "clip": folder}


def train_args(w, ckpt, out, image="clip-image", text="clip-text", image_pool="pooler", text_pool="pooler"):
    return ["train", "--store", w["store"], "--dataset", w["data"], "--image", image, "--text", text,
            "--image-pool", image_pool, "--text-pool", text_pool, "--head", "cross", "--init-checkpoint", ckpt,
            "--epochs", 0, "--quiet", "--device", "cpu", "--threads", 1, "--out", out]


@pytest.mark.parametrize("model_id", sorted(OPENAI))
def test_the_geometry_of_each_openai_vision_tower_is_read_from_its_shapes(model_id):
    width, layers, patch, px = OPENAI[model_id]
    cfg = CLIPConfig(vision_config=dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=16,
                                        intermediate_size=4 * width, image_size=px, patch_size=patch))
    with torch.device("meta"):
        tower = CLIPModel(cfg).vision_model
    shapes = {f"image_encoder.{k}": tuple(v.shape) for k, v in tower.state_dict().items()}
    assert vision_geometry(shapes) == (width, patch, px)
    assert describe_clip((width, patch, px)) == (f"{width}-wide CLIP ViT seeing {px} px in {patch} px patches "
                                                 f"({model_id})")
    assert vision_geometry({k: v for k, v in shapes.items() if "position_embedding" not in k}) is None


def test_a_file_of_the_features_clip_loads_and_says_it_matches(clip_world, tmp_path):
    w = clip_world
    ckpt = hateclipper_file(tmp_path / "hc.ckpt", 28, clip_folder=w["clip"])
    printed = invoke(heads, train_args(w, ckpt, tmp_path / "run"))
    report = json.loads((tmp_path / "run" / "seed_0" / "config.json").read_text())["checkpoint_load"]
    matches = ["its CLIP vision encoder, a 16-wide CLIP ViT seeing 28 px in 14 px patches, matches image feature set "
               "'clip-image'",
               f"image_encoder equals the CLIP that feature set 'clip-image' was extracted with ({w['clip']})",
               f"text_encoder equals the CLIP that feature set 'clip-text' was extracted with ({w['clip']})"]
    assert all(m in report["notes"] and m in printed for m in matches)
    assert not any(n.startswith("warning") for n in report["notes"])
    assert "GPU-sized" not in printed  # the size note counts the file's head (n = 3), not cross's default n = 768
    assert report["missing_keys"] == [] and len(report["used_keys"]) == 8
    meta = json.loads((tmp_path / "run" / "seed_0" / "config.json").read_text())["features"]["image"]
    assert meta["extractor"] == "clip-image" and meta["preprocessing"]["grid"] == 2


def test_a_file_of_another_resolution_is_refused_in_one_line(clip_world, tmp_path):
    w = clip_world
    ckpt = hateclipper_file(tmp_path / "hc42.ckpt", 42)
    assert one_line_error(heads, train_args(w, ckpt, tmp_path / "run")) == (
        f"error: checkpoint {str(ckpt)!r} was trained on the pooler features of a 16-wide CLIP ViT seeing 42 px in "
        "14 px patches, but image feature set 'clip-image' was extracted at 28 px in 14 px patches; extract "
        "clip-image with that CLIP (featstore extract --extractor clip-image --weights FOLDER) and train with "
        "--image-pool pooler")
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_features_of_another_extractor_are_refused_in_one_line(clip_world, tmp_path):
    w = clip_world
    ckpt = hateclipper_file(tmp_path / "hc.ckpt", 28)
    assert one_line_error(heads, train_args(w, ckpt, tmp_path / "run", text="bert", text_pool="cls")) == (
        f"error: checkpoint {str(ckpt)!r} was trained on CLIP text pooler features, but text feature set 'bert' was "
        "made by 'bert'; extract clip-text with the same CLIP and train with --text-pool pooler")
    assert one_line_error(heads, train_args(w, ckpt, tmp_path / "run2", image="grid", image_pool="pooled")) == (
        f"error: checkpoint {str(ckpt)!r} was trained on the pooler features of a 16-wide CLIP ViT seeing 28 px in "
        "14 px patches, but image feature set 'grid' was made by 'grid'; extract clip-image with that CLIP "
        "(featstore extract --extractor clip-image --weights FOLDER) and train with --image-pool pooler")


def test_a_non_clip_text_encoder_takes_any_text_set():
    """Hate-CLIPper's --text_encoder <AutoModel> (the Tamil runs): its text tower is not CLIP's, nothing to check."""
    assert check_features({"text_encoder.embeddings.word_embeddings.weight": (30, 16)},
                          {"text": {"name": "bert", "extractor": "bert"}}, "hateclipper", "f.ckpt") == []


GEOMETRY = {"image_encoder.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
            "image_encoder.embeddings.position_embedding.weight": (577, 1024)}  # ViT-L/14 at 336 px


def clip_set(px: int, grid: int, extractor: str = "clip-image"):
    return {"name": "img", "extractor": extractor,
            "preprocessing": {"crop_size": {"height": px, "width": px}, "grid": grid}}


def test_imported_features_are_noted_as_not_checked():
    notes = check_features(GEOMETRY, {"image": {"name": "img", "extractor": "import:npy"}}, "hateclipper", "f.ckpt")
    assert notes == ["image feature set 'img' records no CLIP geometry: not checked against the file's 1024-wide "
                     "CLIP ViT seeing 336 px in 14 px patches (openai/clip-vit-large-patch14-336)"]


def test_the_published_pair_224_against_336_is_told_apart():
    with pytest.raises(FeatstoreError) as e:
        check_features(GEOMETRY, {"image": clip_set(224, 16)}, "hateclipper", "rgcl.ckpt")
    assert str(e.value) == (
        "checkpoint 'rgcl.ckpt' was trained on the pooler features of a 1024-wide CLIP ViT seeing 336 px in 14 px "
        "patches (openai/clip-vit-large-patch14-336), but image feature set 'img' was extracted at 224 px in 14 px "
        "patches; extract clip-image with that CLIP (featstore extract --extractor clip-image --weights "
        "openai/clip-vit-large-patch14-336) and train with --image-pool pooler")
    assert check_features(GEOMETRY, {"image": clip_set(336, 24)}, "hateclipper", "f.ckpt") == [
        "its CLIP vision encoder, a 1024-wide CLIP ViT seeing 336 px in 14 px patches "
        "(openai/clip-vit-large-patch14-336), matches image feature set 'img'"]


def test_an_rgcl_file_notes_features_off_its_published_resolution(clip_world, tmp_path):
    """RGCL's run_rac.py saves no encoders; its features are openai/clip-vit-large-patch14-336's (336 px)."""
    assert check_features({}, {"image": clip_set(336, 24)}, "rgcl", "r.pt") == []
    assert check_features({}, {"image": clip_set(224, 16)}, "rgcl", "r.pt") == [
        "RGCL's published run reads openai/clip-vit-large-patch14-336 features (336 px, 14 px patches); image "
        "feature set 'img' was extracted at 224 px in 14 px patches"]
    assert check_features({}, {"image": {"name": "img", "extractor": "import:npy"}}, "rgcl", "r.pt") == []
    w = clip_world
    torch.manual_seed(2)
    sd = {}
    for name, layer in {"img_proj.0": nn.Linear(WIDTH, N), "text_proj.0": nn.Linear(WIDTH, N),
                        "mlp.1": nn.Linear(N * N, 5), "output_layer": nn.Linear(5, 1)}.items():
        sd.update({f"{name}.{k}": v for k, v in layer.state_dict().items()})
    torch.save(sd, str(tmp_path / "best_model.pt"))
    printed = invoke(heads, train_args(w, tmp_path / "best_model.pt", tmp_path / "run"))
    assert ("RGCL's published run reads openai/clip-vit-large-patch14-336 features (336 px, 14 px patches); image "
            "feature set 'clip-image' was extracted at 28 px in 14 px patches") in printed
    report = json.loads((tmp_path / "run" / "seed_0" / "config.json").read_text())["checkpoint_load"]
    assert report["missing_keys"] == [] and len(report["used_keys"]) == 8


def test_encoders_of_another_clip_of_the_same_shapes_are_warned_about(clip_world, tmp_path):
    """Same geometry, other weights (another CLIP, or a run that fine-tuned its encoders): loads, with a warning."""
    w = clip_world
    ckpt = hateclipper_file(tmp_path / "other.ckpt", 28)  # a fresh random CLIP, not the folder's
    printed = invoke(heads, train_args(w, ckpt, tmp_path / "run"))
    for tower, name in (("image_encoder", "clip-image"), ("text_encoder", "clip-text")):
        assert (f"warning: {tower} differs from the CLIP that feature set {name!r} was extracted with ({w['clip']}): "
                "another CLIP of the same shapes, or a run that fine-tuned it (--freeze_image_encoder / "
                "--freeze_text_encoder False); the head reads features its projections were not trained on") in printed


def test_the_comparison_reads_the_recorded_folder_and_says_when_it_cannot(clip_world, tmp_path):
    w = clip_world
    clip = CLIPModel.from_pretrained(str(w["clip"]))
    sd = {f"image_encoder.{k}": v.clone() for k, v in clip.vision_model.state_dict().items()}
    meta = {"image": {"name": "img", "extractor": "clip-image", "config": {"weights": str(w["clip"])}}}
    assert compare_encoders(sd, meta) == [f"image_encoder equals the CLIP that feature set 'img' was extracted with "
                                          f"({w['clip']})"]
    sd["image_encoder.encoder.layers.0.mlp.fc2.weight"] += 0.01  # layer 0 is the tiny tower's last: compared
    assert compare_encoders(sd, meta)[0].startswith("warning: image_encoder differs")
    gone = {"image": dict(meta["image"], config={"weights": str(tmp_path / "deleted")})}
    assert compare_encoders(sd, gone) == [f"image_encoder not compared with the CLIP weights of feature set 'img' "
                                          f"({str(tmp_path / 'deleted')!r} is not here)"]
    imported = {"image": {"name": "img", "extractor": "import:npy"}}
    assert compare_encoders(sd, imported) == []


@pytest.mark.parametrize("safe", [True, False])
def test_a_sharded_clip_folder_is_compared_shard_by_shard(clip_world, tmp_path, safe):
    """transformers writes a large CLIP as shards and an index (``save_pretrained(max_shard_size=...)``); the
    compared tensors are read from the shards the index names."""
    clip = CLIPModel.from_pretrained(str(clip_world["clip"]))
    folder = tmp_path / "sharded"
    if safe:
        clip.save_pretrained(folder, max_shard_size="20KB")
    else:  # transformers 4's torch shards (5 writes safetensors only): pytorch_model-0000k-of-00003.bin + index
        clip.config.save_pretrained(folder)
        items = sorted(clip.state_dict().items())
        weight_map = {}
        for k in range(3):
            shard = f"pytorch_model-{k + 1:05d}-of-00003.bin"
            part = dict(items[k::3])
            torch.save({n: t.clone() for n, t in part.items()}, str(folder / shard))
            weight_map.update({n: shard for n in part})
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    index = folder / ("model.safetensors.index.json" if safe else "pytorch_model.bin.index.json")
    weight_map = json.loads(index.read_text())["weight_map"]
    single = folder / ("model.safetensors" if safe else "pytorch_model.bin")
    assert len(set(weight_map.values())) > 2 and not single.exists()
    sd = {f"image_encoder.{k}": v.clone() for k, v in clip.vision_model.state_dict().items()}
    meta = {"image": {"name": "img", "extractor": "clip-image", "config": {"weights": str(folder)}}}
    assert compare_encoders(sd, meta) == [f"image_encoder equals the CLIP that feature set 'img' was extracted with "
                                          f"({folder})"]
    sd["image_encoder.post_layernorm.weight"] += 0.01
    assert compare_encoders(sd, meta)[0].startswith("warning: image_encoder differs")
    (folder / weight_map["vision_model.post_layernorm.weight"]).unlink()  # a shard gone: said, not compared
    assert compare_encoders(sd, meta) == [f"image_encoder not compared with the CLIP weights of feature set 'img' "
                                          f"({str(folder)!r} lacks them)"]


def test_the_hateclipper_preset_notes_a_set_extracted_without_its_squash(clip_world, tmp_path):
    """hateclipper-cross's image_features: Hate-CLIPper squashes the whole meme before CLIPProcessor; a set
    extracted with the processor's centre crop gets the note, a squashed one does not."""
    w = clip_world
    base = ["train", "--store", w["store"], "--dataset", w["data"], "--text", "clip-text", "--image-pool", "pooler",
            "--text-pool", "pooler", "--preset", "hateclipper-cross", "--epochs", 1, "--quiet", "--device", "cpu",
            "--threads", 1]
    version = open_store(w["store"]).open("clip-image").version
    printed = invoke(heads, [*base, "--image", "clip-image", "--out", tmp_path / "a"])
    assert [line for line in printed.splitlines() if line.startswith("note: preset")] == [
        f"note: preset hateclipper-cross reads clip-image sets extracted with preprocess=squash (its source's input); "
        f"image set clip-image@{version} has preprocess=processor: extract one with `featstore extract --extractor "
        f"clip-image --set preprocess=squash` to train on that input"]
    invoke(featstore, extract_args(w["data"], w["store"], "clip-image", "--weights", w["clip"], "--set",
                                   "dtype=float32", "--set", "num_regions=0", "--set", "preprocess=squash",
                                   "--name", "clip-squash"))
    printed = invoke(heads, [*base, "--image", "clip-squash", "--out", tmp_path / "b"])
    assert "note: preset" not in printed
