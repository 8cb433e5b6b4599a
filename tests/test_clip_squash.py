"""``clip-image`` with ``preprocess=squash`` against an independent float64 transcription of Hate-CLIPper's and
RGCL's image input: gokulkarthik/hateclipper datasets.py and JingbiaoMei/RGCL src/data_loader/dataset.py both
feed ``Image.open(path).convert('RGB').resize((s, s))`` (Pillow's default bicubic) to CLIPProcessor, whose
resize / centre crop leave an s x s image unchanged; the reference here normalises those pixels by hand with
CLIP's mean / std (typed from the CLIP release) and runs transformers' CLIP vision tower in float64.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel

from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor
from test_extractors_clip import _save_clip
from test_patch_region_boxes import _ref_boxes
from test_grid_mmf_preprocess import _exif_rotated_png, _rgba_png

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])  # OpenAI CLIP's normalisation
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
PX = 224


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return _save_clip(tmp_path_factory.mktemp("clip_squash"), PX)


def _reference(folder, images, squash=PX):
    """(pooler, pooled) float64: Hate-CLIPper's / RGCL's pixels through CLIP's vision tower and projection;
    ``squash`` < the tower's size: RGCL's train memes, squashed to it, then resized to the tower's size by the
    processor (transformers 4's CLIPImageProcessor: Pillow's resize with BICUBIC, the crop then a no-op)."""
    def pixels(im):
        im = im.convert("RGB").resize((squash, squash))
        return im if squash == PX else im.resize((PX, PX), Image.BICUBIC)

    x = np.stack([(np.asarray(pixels(im), dtype=np.float64) / 255 - CLIP_MEAN) / CLIP_STD
                  for im in images]).transpose(0, 3, 1, 2)
    m = CLIPModel.from_pretrained(str(folder)).double().eval()
    with torch.no_grad():
        pooler = m.vision_model(pixel_values=torch.from_numpy(x)).pooler_output
        return pooler.numpy(), m.visual_projection(pooler).numpy()


def _images():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(350, 200), (150, 450)]]


def _extract(ex, items):
    return ex.forward(ex.collate([ex.preprocess(it) for it in items]))


def _close(got, want):
    np.testing.assert_allclose(got, want, atol=1e-4 * float(np.abs(want).max()), rtol=0)


def test_squash_equals_a_float64_transcription_of_hateclipper_and_rgcl(clip_dir):
    images = _images()
    pooler, pooled = _reference(clip_dir, images)
    ex = create_extractor("clip-image", weights=str(clip_dir), preprocess="squash", dtype="float32")
    out = _extract(ex, images)
    _close(out["pooler"], pooler)
    _close(out["pooled"], pooled)
    for k, im in enumerate(images):  # nothing is cropped: the 6 x 6 regions' patches span the whole image
        np.testing.assert_allclose(out["boxes"][k], _ref_boxes((0.0, 0.0) + im.size, PX // 14, 6, True), rtol=1e-6)
    assert out["image_size"].tolist() == [[350, 200], [150, 450]]
    # the processor's own input (shorter side, centre crop) is another image: the option is what matches
    default = _extract(create_extractor("clip-image", weights=str(clip_dir), dtype="float32"), images)
    assert np.abs(default["pooler"] - pooler).max() > 1e-2 * float(np.abs(pooler).max())


def test_squash_size_is_rgcls_train_split_input(clip_dir):
    """RGCL's get_Dataloader squashes train memes to 224 (its dataset's default) while its processor is the 336
    tower's: ``squash_size`` below the tower's size gives that input (here 112 on a 224 tower), against the
    float64 transcription; the cached pixels give the same numbers, and the record names both resizes."""
    images = _images()
    pooler, pooled = _reference(clip_dir, images, squash=112)
    ex = create_extractor("clip-image", weights=str(clip_dir), preprocess="squash", squash_size=112, dtype="float32")
    out = _extract(ex, images)
    _close(out["pooler"], pooler)
    _close(out["pooled"], pooled)
    for k, im in enumerate(images):
        np.testing.assert_allclose(out["boxes"][k], _ref_boxes((0.0, 0.0) + im.size, PX // 14, 6, True), rtol=1e-6)
    full, _ = _reference(clip_dir, images)
    assert np.abs(full - pooler).max() > 1e-3 * float(np.abs(pooler).max())  # another input than squash at 224
    recipe = ex.resize_recipe()
    assert (recipe.mode, recipe.size) == ("square", 112)
    cached = _extract(ex, [recipe.apply(im) for im in images])
    np.testing.assert_array_equal(cached["pooler"], out["pooler"])
    pre = ex.preprocessing()
    assert (pre["squash"], pre["then_resize"], pre["then_resize_interpolation"]) == ([112, 112], [PX, PX],
                                                                                     "pil-bicubic")
    with pytest.raises(FeatstoreError) as e:
        create_extractor("clip-image", weights=str(clip_dir), squash_size=224)
    assert str(e.value) == ("squash_size=224 needs preprocess=squash and a side >= 16 (0: the tower's size); e.g. "
                            "--set preprocess=squash --set squash_size=224")


def test_resized_pixels_from_the_cache_give_the_pil_paths_numbers(clip_dir):
    ex = create_extractor("clip-image", weights=str(clip_dir), preprocess="squash", dtype="float32")
    recipe = ex.resize_recipe()
    assert (recipe.mode, recipe.size, recipe.interpolation, recipe.decode) == ("square", PX, "bicubic", "convert-rgb")
    from featstore.extractors.base import recipe_for

    assert recipe_for("clip-image", {"weights": str(clip_dir), "preprocess": "squash"}) == recipe  # config alone
    assert recipe_for("clip-image", {"weights": str(clip_dir)}) is None
    images = _images()
    a, b = _extract(ex, images), _extract(ex, [recipe.apply(im) for im in images])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    pre = ex.preprocessing()
    assert pre["squash"] == [PX, PX] and pre["decode"] == "convert-rgb" and pre["squash_interpolation"] == "bicubic"
    assert "then_resize" not in pre  # squashed to the tower's own size: nothing more
    assert "squash" not in create_extractor("clip-image", weights=str(clip_dir)).preprocessing()


def test_bad_preprocess_and_missing_weights_are_one_line(tmp_path):
    from featstore.extractors.base import recipe_for

    with pytest.raises(FeatstoreError) as e:
        create_extractor("clip-image", weights=str(tmp_path), preprocess="crop")
    assert str(e.value) == "preprocess='crop' is not known; use one of processor, squash"
    with pytest.raises(FeatstoreError) as e:
        recipe_for("clip-image", {"weights": str(tmp_path / "nope"), "preprocess": "squash"})
    assert str(e.value).startswith(f"weights path {str(tmp_path / 'nope')!r} does not exist")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(FeatstoreError) as e:
        recipe_for("clip-image", {"weights": str(tmp_path / "broken"), "preprocess": "squash"})
    assert str(e.value).startswith(f"{tmp_path / 'broken' / 'config.json'} does not hold a CLIP config (")


def test_cli_extracts_squashed_clip_features_through_the_image_cache(clip_dir, tmp_path):
    from cli.featstore_cli import main as featstore
    from cli_helpers import invoke, make_hm_folder
    from featstore import open_store

    data = make_hm_folder(tmp_path / "data")
    _rgba_png(data / "img" / "00000.png")  # decoded as Pillow's convert("RGB"): the alpha is dropped
    _exif_rotated_png(data / "img" / "00001.png")  # ... and the EXIF orientation ignored
    keys = [f"{i:05d}" for i in range(6)]
    pooler, _ = _reference(clip_dir, [Image.open(data / "img" / f"{k}.png") for k in keys])
    args = ["extract", "--dataset", data, "--extractor", "clip-image", "--store", tmp_path / "store", "--workers", 0,
            "--quiet", "--weights", clip_dir, "--set", "preprocess=squash", "--set", "dtype=float32",
            "--image-cache", tmp_path / "cache"]
    for name in ("cold", "warm"):  # the warm run reads the squashed pixels back from the cache
        invoke(featstore, [*args, "--name", name])
        fs = open_store(tmp_path / "store").open(name)
        _close(fs.select(keys, ["pooler"])["pooler"], pooler)
        assert fs.select(["00001"], ["image_size"])["image_size"].tolist() == [[40, 70]]
    from featstore.extractors.base import recipe_for
    from featstore.runner.image_cache import DecodedImageCache, close_image_caches

    cache = DecodedImageCache(tmp_path / "cache")
    recipe = recipe_for("clip-image", {"weights": str(clip_dir), "preprocess": "squash"})
    assert cache.load_resized(data / "img" / "00000.png", recipe).pixels.shape == (PX, PX, 3)
    assert cache.stats() == {"hits": 1, "misses": 0, "corrupt": 0}  # stored by the cold run
    close_image_caches()
