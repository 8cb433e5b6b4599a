"""Resized uint8 pixels (featstore.extractors.pixels) and the image cache's resized entries: the resize is
Pillow's filter byte for byte, the batched normalisation gives the per-image path's float32 input bit for bit,
extraction over no cache, an old decoded-only cache and a warm resized cache stores the per-image path's
features, recipes never share an entry, and a damaged, stale or too-large entry behaves as decoded ones do."""
from __future__ import annotations

import os
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from featstore.datasets import load_dataset
from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor
from featstore.extractors.images import ImageDecodeError, load_image
from featstore.extractors.pixels import ResizedImage, ResizeRecipe, normalize_pixels
from featstore.runner import DecodedImageCache, ExtractOptions, run_extraction
from featstore.runner.prefill import prefill_image_cache
from featstore.store import open_store
from test_image_cache import GRID, _dataset, _rgb_array, _same_stamp_garbage, jpeg_exif_rotated, png_rgb

ROI = dict(backbone="resnet18", shorter_side=48, max_side=80, num_regions=14, dtype="float32", weights=None)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _img(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(_rgb_array(w, h, seed))


# -- the resize and the normalisation against their definitions ------------------------------------------
@pytest.mark.parametrize("recipe, target, pil_filter", [
    (ResizeRecipe("square", 64, "bilinear"), lambda w, h: (64, 64), Image.BILINEAR),
    (ResizeRecipe("square", 42, "bicubic"), lambda w, h: (42, 42), Image.BICUBIC),
    # shorter side 48 unless the longer passes 80: 90x50 -> 80x44 (capped), 50x70 -> 48x67
    (ResizeRecipe("keep_aspect", 48, "bilinear", 80), lambda w, h: {(90, 50): (80, 44), (50, 70): (48, 67)}[w, h],
     Image.BILINEAR)])
def test_resize_is_pillows_antialiased_filter_byte_for_byte(recipe, target, pil_filter):
    for seed, (w, h) in enumerate([(90, 50), (50, 70)]):
        img = _img(w, h, seed)
        tw, th = target(w, h)
        got = recipe.apply(img)
        want = np.asarray(img.resize((tw, th), pil_filter))  # Pillow's own call: the reference resize
        assert got.size == (w, h) and got.pixels.dtype == np.uint8 and got.pixels.shape == (th, tw, 3)
        assert np.array_equal(got.pixels, want)


def test_batched_normalisation_is_to_tensor_then_normalize_bit_for_bit():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8))
    ref = x.permute(0, 3, 1, 2).double() / 255  # float64, written from the definition
    ref = ((ref - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1))
           / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1))
    for channels_last in (True, False):
        got = normalize_pixels(x, MEAN, STD, torch.device("cpu"), channels_last)
        assert got.dtype == torch.float32 and got.shape == (3, 3, 5, 7)
        assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-6)
    import torchvision.transforms.functional as TF

    per_image = torch.stack([TF.normalize(TF.to_tensor(Image.fromarray(a.numpy())), list(MEAN), list(STD)) for a in x])
    assert torch.equal(normalize_pixels(x, MEAN, STD, torch.device("cpu"), False), per_image)  # the old path's
    valid = torch.tensor([[7, 5], [3, 2], [1, 5]])
    got = normalize_pixels(x, MEAN, STD, torch.device("cpu"), True, valid)
    for i, (w, h) in enumerate(valid.tolist()):
        torch.testing.assert_close(got[i, :, :h, :w].double(), ref[i, :, :h, :w], rtol=0, atol=2e-6)
        assert not got[i, :, h:].any() and not got[i, :, :, w:].any()  # 0.0 past the valid area
    with pytest.raises(FeatstoreError) as e:
        normalize_pixels(x.float(), MEAN, STD, torch.device("cpu"), True)
    assert str(e.value) == "normalize_pixels takes uint8 [N, H, W, 3] pixels, got torch.float32 [3, 5, 7, 3]"


@pytest.mark.parametrize("name, cfg", [("grid", GRID), ("roi", ROI)])
def test_resized_input_gives_the_per_image_paths_numbers(name, cfg):
    ex = create_extractor(name, **cfg)
    imgs = [_img(90, 50, 1), _img(50, 70, 2), _img(60, 60, 3)]
    old = ex.collate([ex.preprocess(i) for i in imgs])  # PIL -> resize + normalise per image (as before)
    new = ex.collate([ex.preprocess(ex.resize_recipe().apply(i)) for i in imgs])
    key = "image" if name == "grid" else "landscape"
    assert new[key].dtype == torch.uint8 and old[key].dtype == torch.float32
    a, b = ex.forward(old), ex.forward(new)
    for k in a:  # the same float32 input on the CPU, so the same features exactly
        assert np.array_equal(a[k], b[k]), k


def test_a_resized_image_of_another_recipe_is_refused():
    ex = create_extractor("grid", **GRID)
    other = ResizeRecipe("square", 32, "bilinear").apply(_img(40, 30, 0))
    with pytest.raises(FeatstoreError) as e:
        ex.preprocess(other)
    assert str(e.value) == ("resized image 32x32 (from 40x30) was not made by this extractor's resize (64x64); "
                            "pass the decoded PIL image")
    with pytest.raises(FeatstoreError) as e:
        ResizeRecipe("crop", 32, "bilinear")
    assert "resize recipe" in str(e.value) and "is invalid" in str(e.value)


# -- the cache's resized entries -------------------------------------------------------------------------
def test_recipes_never_share_an_entry(tmp_path):
    path = png_rgb(tmp_path / "a.png", seed=5)
    recipes = [ResizeRecipe("square", 32, "bilinear"), ResizeRecipe("square", 24, "bilinear"),
               ResizeRecipe("square", 32, "bicubic"), ResizeRecipe("keep_aspect", 32, "bilinear", 40)]
    fresh = [r.apply(load_image(path)) for r in recipes]
    cache = DecodedImageCache(tmp_path / "cache")
    for r, want in zip(recipes, fresh):
        assert np.array_equal(cache.load_resized(path, r).pixels, want.pixels)
    assert len(cache) == 1 + len(recipes)  # the decoded record and one entry per recipe
    assert len({r.key() for r in recipes}) == len(recipes)
    _same_stamp_garbage(path)  # only the cache can answer now
    before = cache.stats()
    for r, want in zip(recipes, fresh):
        got = cache.load_resized(path, r)
        assert np.array_equal(got.pixels, want.pixels) and got.size == want.size == (40, 30)
    assert cache.stats()["hits"] == before["hits"] + len(recipes) and cache.stats()["misses"] == before["misses"]


def _damage_resized(cache_dir: Path, how: str) -> None:
    env = lmdb.open(str(cache_dir), map_size=1 << 30, subdir=True)
    try:
        with env.begin(write=True) as txn:
            for key, value in list(txn.cursor()):
                value = bytearray(value)
                if int.from_bytes(value[6:8], "little") != 3:  # the kind field: 3 = resized
                    continue
                if how == "pixel-bit":
                    value[-5] ^= 0x01
                elif how == "length":
                    value = value[:-1]
                elif how == "size-field":
                    value[52] ^= 0x01  # the stored original width (the payload's first bytes, after the header)
                txn.put(key, bytes(value))
    finally:
        env.close()


@pytest.mark.parametrize("how", ["pixel-bit", "length", "size-field"])
def test_damaged_resized_entry_is_resized_again_and_overwritten(tmp_path, how):
    path = png_rgb(tmp_path / "a.png", seed=6)
    recipe = ResizeRecipe("square", 20, "bilinear")
    want = recipe.apply(load_image(path))
    cache = DecodedImageCache(tmp_path / "cache")
    cache.load_resized(path, recipe)
    cache.close()
    _damage_resized(tmp_path / "cache", how)
    got = cache.load_resized(path, recipe)  # from the intact decoded record
    assert np.array_equal(got.pixels, want.pixels) and got.size == want.size
    assert cache.stats()["corrupt"] == 1
    hits = cache.stats()["hits"]
    assert np.array_equal(cache.load_resized(path, recipe).pixels, want.pixels)
    assert cache.stats()["hits"] == hits + 1 and cache.stats()["corrupt"] == 1  # rewritten intact


def test_a_changed_file_is_resized_anew(tmp_path):
    path = png_rgb(tmp_path / "a.png", seed=7)
    recipe = ResizeRecipe("square", 16, "bicubic")
    cache = DecodedImageCache(tmp_path / "cache")
    old = cache.load_resized(path, recipe).pixels
    Image.fromarray(_rgb_array(40, 30, seed=8)).save(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    new = cache.load_resized(path, recipe).pixels
    assert np.array_equal(new, recipe.apply(load_image(path)).pixels) and not np.array_equal(new, old)


def test_resized_hits_check_max_pixels_and_failures_stay_cached(tmp_path):
    path = jpeg_exif_rotated(tmp_path / "r.jpg")  # declared 40x30, displayed 30x40
    recipe = ResizeRecipe("square", 16, "bilinear")
    cache = DecodedImageCache(tmp_path / "cache")
    assert cache.load_resized(path, recipe).size == (30, 40)
    with pytest.raises(ImageDecodeError) as direct:
        load_image(path, max_pixels=1199)
    with pytest.raises(ImageDecodeError) as cached:
        cache.load_resized(path, recipe, max_pixels=1199)
    assert str(cached.value) == str(direct.value)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageDecodeError) as direct:
        load_image(bad)
    for _ in range(2):  # decoded once, then the cached failure
        with pytest.raises(ImageDecodeError) as cached:
            cache.load_resized(bad, recipe)
        assert str(cached.value) == str(direct.value)
    with pytest.raises(ImageDecodeError, match="file not found"):
        cache.load_resized(tmp_path / "missing.png", recipe)


# -- extraction: no cache, an old decoded-only cache, a warm resized cache ---------------------------------
def _run(store_dir: Path, ds, cache, name: str, cfg: dict):
    st = open_store(store_dir, create=True)
    opts = ExtractOptions(batch_size=3, num_workers=0, chunk_rows=4, progress=False, image_cache=cache)
    run_extraction(st, ds, name, extractor_config=cfg, options=opts)
    return open_store(store_dir).open(name)


@pytest.mark.parametrize("name, cfg", [("grid", GRID), ("roi", ROI)])
def test_cold_old_cache_and_warm_cache_store_the_per_image_paths_features(tmp_path, name, cfg):
    ds = load_dataset(_dataset(tmp_path / "data"), check_images=False)
    paths = {s.image_key: s.image_path for s in ds.samples}
    cold = _run(tmp_path / "cold", ds, None, name, cfg)
    ex = create_extractor(name, **cfg)
    keys = list(cold.keys)
    with torch.inference_mode():  # the per-image path: PIL resize + normalise in preprocess, one image a batch
        ref = [ex.forward(ex.collate([ex.preprocess(load_image(paths[k]))])) for k in keys]
    cache_dir = tmp_path / "cache"
    prefill_image_cache(ds, str(cache_dir), num_workers=0, progress=False)  # decoded records only (old cache)
    assert len(DecodedImageCache(cache_dir)) == 10
    for p in sorted((tmp_path / "data" / "img").glob("*.png")):
        _same_stamp_garbage(p)  # only the cache can supply pixels from now on
    old = _run(tmp_path / "old", ds, DecodedImageCache(cache_dir), name, cfg)
    assert len(DecodedImageCache(cache_dir)) == 19  # the run stored each image resized for this extractor
    warm_cache = DecodedImageCache(cache_dir)
    warm = _run(tmp_path / "warm", ds, warm_cache, name, cfg)
    assert warm_cache.stats() == {"hits": 10, "misses": 0, "corrupt": 0}  # 9 resized entries + 1 failure
    assert cold.version == old.version == warm.version and list(warm.keys) == keys
    assert cold.failures == old.failures == warm.failures and list(cold.failures) == ["00090"]
    for arr in cold.array_names:
        assert np.array_equal(old.read(arr), cold.read(arr)) and np.array_equal(warm.read(arr), cold.read(arr))
        for i, k in enumerate(keys):  # a batch of images vs one: float32 convolutions summed in another order
            # (oneDNN picks its kernel by batch size), 1.1e-5 apart once at a value of 0.11; a resize differs by 1e-2
            np.testing.assert_allclose(cold.read(arr)[i], ref[i][arr][0], rtol=1e-4, atol=1e-4, err_msg=arr)


def test_prefill_with_a_recipe_fills_the_resized_entries(tmp_path):
    ds = load_dataset(_dataset(tmp_path / "data"), check_images=False)
    ex = create_extractor("grid", **GRID)
    cache_dir = tmp_path / "cache"
    first = prefill_image_cache(ds, str(cache_dir), num_workers=2, progress=False, recipes=[ex.resize_recipe()])
    assert (first.images, first.decoded, first.already, list(first.failures)) == (10, 10, 0, ["00090"])
    assert len(DecodedImageCache(cache_dir)) == 19
    again = prefill_image_cache(ds, str(cache_dir), num_workers=0, progress=False, recipes=[ex.resize_recipe()])
    assert (again.decoded, again.already) == (0, 10)
    cache = DecodedImageCache(cache_dir)
    _run(tmp_path / "warm", ds, cache, "grid", GRID)
    assert cache.stats() == {"hits": 10, "misses": 0, "corrupt": 0}


def test_recipe_for_reads_the_config_alone():
    from featstore.extractors.base import recipe_for

    assert recipe_for("grid", {"image_size": 64}) == ResizeRecipe("square", 64, "bilinear")
    assert recipe_for("roi", {"shorter_side": 48, "max_side": 80}) == ResizeRecipe("keep_aspect", 48, "bilinear", 80)
    # dinov2's default weights name a model folder that is not here: the recipe does not need it
    assert recipe_for("dinov2-multilayer") == ResizeRecipe("square", 518, "bicubic")
    assert recipe_for("detector") is None and recipe_for("clip-image") is None  # they take PIL images
    assert create_extractor("grid", **GRID).resize_recipe() == recipe_for("grid", {"image_size": 64})


def test_cli_cache_images_for_an_extractor(tmp_path):
    from cli.featstore_cli import main as featstore
    from cli_helpers import invoke, one_line_error

    manifest = _dataset(tmp_path / "data")
    args = ["cache-images", "--dataset", manifest, "--image-cache", tmp_path / "cache", "--workers", "0", "--quiet"]
    out = invoke(featstore, args + ["--extractor", "grid", "--set", "image_size=64"])
    assert "image cache: 10 images, 10 decoded now, 0 already cached, 1 unreadable" in out
    assert len(DecodedImageCache(tmp_path / "cache")) == 19  # 9 decoded, 9 resized to 64 x 64, 1 failure
    cache = DecodedImageCache(tmp_path / "cache")
    _run(tmp_path / "warm", load_dataset(manifest, check_images=False), cache, "grid", GRID)
    assert cache.stats() == {"hits": 10, "misses": 0, "corrupt": 0}
    line = one_line_error(featstore, args + ["--extractor", "grid", "--set", "image_sise=64"])
    assert line == ("error: extractor 'grid' has no option 'image_sise'; valid options: backbone, compile, dtype, "
                    "grid_size, image_size, preprocess, seed, weights")
    before = len(DecodedImageCache(tmp_path / "cache"))
    line = one_line_error(featstore, args + ["--extractor", "bert"])  # a text extractor caches nothing
    assert line == ("error: featstore cache-images --extractor bert: bert reads text, not images; pass an image "
                    "extractor (clip-image, detector, dinov2, dinov2-multilayer, grid, roi, vg-regions)")
    assert len(DecodedImageCache(tmp_path / "cache")) == before


def test_cache_images_for_an_extractor_with_its_own_decode_stores_that_decode_only(tmp_path):
    """grid's preprocess=mmf-hateful-memes decodes as MMF's loader (convert-rgb) and resizes to 256: cache-images
    stores that decode and the resized pixels, not featstore's own decode as well (it used to, decoding every
    image twice); the extraction then reads every image from the cache."""
    from cli.featstore_cli import main as featstore
    from cli_helpers import invoke

    manifest = _dataset(tmp_path / "data")
    cfg = {**GRID, "image_size": 224, "preprocess": "mmf-hateful-memes"}
    invoke(featstore, ["cache-images", "--dataset", manifest, "--image-cache", tmp_path / "cache", "--workers", "0",
                       "--quiet", "--extractor", "grid", "--set", "image_size=224", "--set",
                       "preprocess=mmf-hateful-memes"])
    cache = DecodedImageCache(tmp_path / "cache")
    assert len(cache) == 19  # 9 convert-rgb decodes, 9 resized to 256 x 256, 1 failure; no featstore decodes
    ds = load_dataset(manifest, check_images=False)
    path = next(s.image_path for s in ds.samples if s.image_key != "00090")
    cache.load(path, decode="convert-rgb")
    assert cache.stats()["misses"] == 0
    cache.load(path)  # featstore's decode was not stored
    assert cache.stats()["misses"] == 1
    cache = DecodedImageCache(tmp_path / "cache")
    _run(tmp_path / "warm", ds, cache, "grid", cfg)
    assert cache.stats() == {"hits": 10, "misses": 0, "corrupt": 0}
