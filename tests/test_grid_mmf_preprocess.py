"""``grid`` with ``preprocess=mmf-hateful-memes`` against an independent float64 transcription of MMF's
Hateful Memes image pipeline and ResNet152ImageEncoder.

The reference is written from MMF's configs and code, not from featstore's module:
mmf/configs/datasets/hateful_memes/defaults.yaml's image_processor (torchvision Resize [256, 256],
CenterCrop [224, 224], ToTensor, GrayScaleTo3Channels, Normalize with the Hateful Memes mean / std typed
below from that file) and mmf/modules/encoders.py's ResNet152ImageEncoder (the torchvision ResNet's
children without avgpool and fc, then AdaptiveAvgPool2d((1, 1)) for num_output_features 1), run here with
torchvision's own transforms and a torchvision ResNet-18 (the same module layout as ResNet-152) in float64.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor

# mmf/configs/datasets/hateful_memes/defaults.yaml, image_processor.transforms Normalize
HM_MEAN = [0.46777044, 0.44531429, 0.40661017]
HM_STD = [0.12221994, 0.12145835, 0.14380469]
MMF = "mmf-hateful-memes"


def _image(w, h, seed, mode="RGB"):
    rng = np.random.RandomState(seed)
    img = Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8))
    return img.convert(mode) if mode != "RGB" else img


def _mmf_processor():
    """MMF's image_processor as its config lists it (GrayScaleTo3Channels is a no-op on RGB input)."""
    return transforms.Compose([transforms.Resize([256, 256]), transforms.CenterCrop([224, 224]),
                               transforms.ToTensor(), transforms.Normalize(HM_MEAN, HM_STD)])


def _mmf_encoder_f64(model):
    """ResNet152ImageEncoder: children()[:-2] (no avgpool / fc) then AdaptiveAvgPool2d((1, 1)), float64."""
    trunk = torch.nn.Sequential(*list(model.children())[:-2]).double().eval()
    return trunk, torch.nn.AdaptiveAvgPool2d((1, 1))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(5)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the eval-mode affine terms matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path, model


def _reference(model, images):
    x = torch.stack([_mmf_processor()(im.convert("RGB")) for im in images]).double()
    trunk, pool = _mmf_encoder_f64(model)
    with torch.no_grad():
        fmap = trunk(x)  # [N, 512, 7, 7]
        pooled = pool(fmap).flatten(1)  # MMF's one 2048-d (here 512-d) image token
    return fmap, pooled


def _extract(ex, items):
    return ex.forward(ex.collate([ex.preprocess(it) for it in items]))


def test_mmf_grid_pooled_and_cells_equal_a_float64_transcription_of_mmf(weights):
    path, model = weights
    images = [_image(400, 300, 0), _image(180, 260, 1), _image(256, 256, 2, mode="L")]
    fmap, pooled = _reference(model, images)
    ex = create_extractor("grid", backbone="resnet18", weights=str(path), preprocess=MMF, grid_size=7,
                          dtype="float32")
    out = _extract(ex, images)
    scale = float(pooled.abs().max())
    np.testing.assert_allclose(out["pooled"], pooled.numpy(), atol=2e-5 * scale, rtol=0)
    cells = fmap.flatten(2).transpose(1, 2).numpy()  # grid 7 over a 7 x 7 map: the cells themselves
    np.testing.assert_allclose(out["regions"], cells, atol=2e-5 * float(np.abs(cells).max()), rtol=0)
    assert out["image_size"].tolist() == [[400, 300], [180, 260], [256, 256]]


def test_mmf_pooled_is_the_global_average_at_the_default_grid_size(weights):
    path, model = weights
    images = [_image(333, 210, 3)]
    _, pooled = _reference(model, images)
    ex = create_extractor("grid", backbone="resnet18", weights=str(path), preprocess=MMF, dtype="float32")
    out = _extract(ex, images)
    assert out["regions"].shape == (1, 36, 512)
    np.testing.assert_allclose(out["pooled"], pooled.numpy(), atol=2e-5 * float(pooled.abs().max()), rtol=0)
    # the mean of the 6 x 6 overlapping bins is a different vector: the option is what makes pooled MMF's
    assert np.abs(out["regions"].mean(axis=1) - out["pooled"]).max() > 1e-3 * float(pooled.abs().max())


def test_cached_resized_pixels_give_the_same_numbers_as_the_pil_path(weights):
    path, _ = weights
    ex = create_extractor("grid", backbone="resnet18", weights=str(path), preprocess=MMF, dtype="float32")
    recipe = ex.resize_recipe()
    assert (recipe.mode, recipe.size, recipe.interpolation) == ("square", 256, "bilinear")
    images = [_image(400, 300, 4), _image(97, 151, 5)]
    from_pil = _extract(ex, images)
    from_cache = _extract(ex, [recipe.apply(im) for im in images])
    for name in from_pil:
        np.testing.assert_array_equal(from_pil[name], from_cache[name])


def test_mmf_boxes_are_the_bins_inside_the_crop_window_hand_computed(weights):
    path, _ = weights
    img = _image(400, 300, 6)
    # the crop keeps resized pixels 16..240 of 256: x 25..375 of 400, y 18.75..281.25 of 300
    ex7 = create_extractor("grid", backbone="resnet18", weights=str(path), preprocess=MMF, grid_size=7)
    boxes = _extract(ex7, [img])["boxes"][0]
    assert boxes[0].tolist() == [25.0, 18.75, 75.0, 56.25]  # cell width 350 / 7, height 262.5 / 7
    assert boxes[48].tolist() == [325.0, 243.75, 375.0, 281.25]
    ex6 = create_extractor("grid", backbone="resnet18", weights=str(path), preprocess=MMF, grid_size=6)
    boxes6 = _extract(ex6, [img])["boxes"][0]
    # 7 -> 6 bins: bin 0 averages map cells 0-1, bin 1 cells 1-2, bin 5 cells 5-6
    assert boxes6[0].tolist() == [25.0, 18.75, 125.0, 93.75]
    assert boxes6[7].tolist() == [75.0, 56.25, 175.0, 131.25]
    assert boxes6[35].tolist() == [275.0, 206.25, 375.0, 281.25]


def test_whole_preprocessing_record_and_numbers_are_unchanged():
    ex = create_extractor("grid", backbone="resnet18", image_size=64, grid_size=2, dtype="float32", seed=1)
    assert ex.preprocessing() == {"resize": [64, 64], "crop": None, "interpolation": "bilinear-antialias",
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                  "boxes": "adaptive_bin_boxes"}
    out = _extract(ex, [_image(50, 40, 7)])
    np.testing.assert_allclose(out["pooled"], out["regions"].mean(axis=1), rtol=1e-6, atol=1e-6)
    assert out["boxes"][0].tolist() == [[0, 0, 25, 20], [25, 0, 50, 20], [0, 20, 25, 40], [25, 20, 50, 40]]
    mmf = create_extractor("grid", backbone="resnet18", preprocess=MMF).preprocessing()
    assert mmf["resize"] == [256, 256] and mmf["crop"] == {"center": [224, 224], "offset": [16, 16]}
    assert mmf["mean"] == HM_MEAN and mmf["std"] == HM_STD and mmf["pooled"] == "global_average"


@pytest.mark.parametrize("cfg, message", [
    (dict(preprocess="mmf"), "preprocess='mmf' is not known; use one of whole, mmf-hateful-memes"),
    (dict(preprocess=MMF, image_size=256),
     "preprocess='mmf-hateful-memes' is MMF's Resize 256 + CenterCrop 224; it needs image_size=224 (got 256): "
     "drop --set image_size"),
])
def test_bad_preprocess_settings_are_one_line_errors(cfg, message):
    with pytest.raises(FeatstoreError) as e:
        create_extractor("grid", backbone="resnet18", **cfg)
    assert str(e.value) == message


def test_cli_extracts_mmf_grid_through_the_image_cache_and_refuses_bad_settings(tmp_path, weights):
    from cli.featstore_cli import main as featstore
    from featstore import open_store
    from featstore.datasets import load_dataset

    from featstore.runner.image_cache import DecodedImageCache, close_image_caches

    from cli_helpers import invoke, make_hm_folder, one_line_error, tree

    path, model = weights
    data = make_hm_folder(tmp_path / "data")
    _rgba_png(data / "img" / "00000.png")  # MMF's loader drops the alpha; featstore's decode composites it
    _exif_rotated_png(data / "img" / "00001.png")  # ... and ignores the EXIF orientation
    store, cache = tmp_path / "store", tmp_path / "cache"
    args = ["extract", "--dataset", data, "--extractor", "grid", "--store", store, "--workers", 0, "--quiet",
            "--weights", path, "--set", "backbone=resnet18", "--set", f"preprocess={MMF}",
            "--set", "grid_size=7", "--set", "dtype=float32", "--image-cache", cache]
    invoke(featstore, [*args, "--name", "cold"])
    invoke(featstore, [*args, "--name", "warm"])  # the second run reads the 256 x 256 pixels from the cache
    ds = load_dataset(data)
    keys = sorted({s.image_key for s in ds.samples})
    images = [Image.open(data / "img" / f"{k}.png") for k in keys]
    _, pooled = _reference(model, images)
    st = open_store(store)
    for name in ("cold", "warm"):
        fs = st.open(name)
        got = fs.select(keys, ["pooled"])["pooled"]
        np.testing.assert_allclose(got, pooled.numpy(), atol=2e-5 * float(pooled.abs().max()), rtol=0)
        assert fs.recipe.preprocessing["crop"] == {"center": [224, 224], "offset": [16, 16]}
        assert fs.recipe.preprocessing["decode"] == "convert-rgb"
        assert fs.select(["00001"], ["image_size"])["image_size"].tolist() == [[40, 70]]  # as stored, not rotated
    # the cold run stored each image's 256 x 256 resize: the cache serves it (a hit, no decode)
    cached = DecodedImageCache(cache)
    resized = cached.load_resized(data / "img" / f"{keys[0]}.png", ex_recipe())
    assert resized.pixels.shape == (256, 256, 3) and cached.stats() == {"hits": 1, "misses": 0, "corrupt": 0}
    close_image_caches()
    before = tree(store)
    line = one_line_error(featstore, [*args[:-2], "--set", "image_size=192", "--name", "bad"])
    assert line == ("error: preprocess='mmf-hateful-memes' is MMF's Resize 256 + CenterCrop 224; it needs "
                    "image_size=224 (got 192): drop --set image_size")
    assert tree(store) == before


def _rgba_png(path):
    rng = np.random.RandomState(11)
    rgba = rng.randint(0, 256, (50, 60, 4), dtype=np.uint8)
    rgba[:, :30, 3] = 0  # fully transparent left half over coloured pixels
    Image.fromarray(rgba, "RGBA").save(path)


def _exif_rotated_png(path, orientation=6):
    rng = np.random.RandomState(12)
    img = Image.fromarray(rng.randint(0, 256, (70, 40, 3), dtype=np.uint8))  # 40 wide, 70 high as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)


def _palette_png(path):
    img = Image.fromarray(np.random.RandomState(13).randint(0, 256, (30, 20, 3), dtype=np.uint8)).convert("P")
    img.save(path, transparency=img.getpixel((0, 0)))  # pixel (0, 0)'s colour is transparent


def test_convert_rgb_decode_is_pillows_convert_and_featstores_differs(tmp_path):
    from featstore.extractors.images import load_image

    makers = {"rgba.png": _rgba_png, "exif.png": _exif_rotated_png, "p.png": _palette_png}
    for name, make in makers.items():
        make(tmp_path / name)
        want = np.asarray(Image.open(tmp_path / name).convert("RGB"))  # MMF's / torchvision's default loader
        got = load_image(tmp_path / name, decode="convert-rgb")
        assert got.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)
        ours = np.asarray(load_image(tmp_path / name))
        assert ours.shape != want.shape or (ours != want).any(), name  # white composite / EXIF rotation
    assert load_image(tmp_path / "exif.png").size == (70, 40)  # featstore's decode applies the orientation
    with pytest.raises(FeatstoreError) as e:
        load_image(tmp_path / "rgba.png", decode="mmf")
    assert str(e.value) == "decode='mmf' is not known; use one of featstore, convert-rgb, cv2"


def test_the_cache_keeps_each_decode_apart_and_the_default_keys_unchanged(tmp_path):
    import PIL
    import torchvision

    from featstore.extractors.images import load_image
    from featstore.extractors.pixels import ResizeRecipe
    from featstore.runner.image_cache import DecodedImageCache, close_image_caches, load_input

    _rgba_png(tmp_path / "a.png")
    cache = DecodedImageCache(tmp_path / "cache")
    ours = np.asarray(cache.load(tmp_path / "a.png"))
    mmfs = np.asarray(cache.load(tmp_path / "a.png", decode="convert-rgb"))
    assert cache.stats() == {"hits": 0, "misses": 2, "corrupt": 0}
    np.testing.assert_array_equal(ours, np.asarray(load_image(tmp_path / "a.png")))
    np.testing.assert_array_equal(mmfs, np.asarray(Image.open(tmp_path / "a.png").convert("RGB")))
    np.testing.assert_array_equal(np.asarray(cache.load(tmp_path / "a.png", decode="convert-rgb")), mmfs)
    np.testing.assert_array_equal(np.asarray(cache.load(tmp_path / "a.png")), ours)
    assert cache.stats() == {"hits": 2, "misses": 2, "corrupt": 0}
    recipe = ex_recipe()
    assert recipe.key() == (f"resize/1 square 256 0 bilinear-antialias torchvision={torchvision.__version__} "
                            f"Pillow={PIL.__version__} decode=convert-rgb")
    assert ResizeRecipe("square", 256, "bilinear").key() == recipe.key()[:-len(" decode=convert-rgb")]
    want = recipe.apply(Image.open(tmp_path / "a.png").convert("RGB")).pixels
    for cached in (None, cache):  # the run loop's input, uncached and through the cache (a miss, then a hit)
        np.testing.assert_array_equal(load_input(tmp_path / "a.png", recipe, 10 ** 8, cached).pixels, want)
    np.testing.assert_array_equal(cache.load_resized(tmp_path / "a.png", recipe).pixels, want)
    with pytest.raises(FeatstoreError) as e:
        cache.load(tmp_path / "a.png", decode="whole")
    assert str(e.value) == "decode='whole' is not known; use one of featstore, convert-rgb, cv2"
    close_image_caches()


def ex_recipe():
    from featstore.extractors.base import recipe_for

    return recipe_for("grid", {"preprocess": MMF})
