"""``images.load_image(decode="cv2")`` against OpenCV's own ``cv2.imread`` (IMREAD_COLOR, BGR -> RGB), the
decoder bottom-up-attention's ``generate_tsv.py`` (and its PyTorch ports) read images with, and ``vg-regions``
decoding that way in the run loop, with and without the image cache."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor
from featstore.extractors.images import load_image
from test_extractors_vg import TINY, ckpt  # noqa: F401  (the tiny VG checkpoint fixture)
from test_grid_mmf_preprocess import _exif_rotated_png, _palette_png, _rgba_png


def _cv2_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


def _files(d):
    _rgba_png(d / "rgba.png")
    _palette_png(d / "p.png")
    _exif_rotated_png(d / "exif.png")
    rng = np.random.RandomState(21)
    la = np.stack([rng.randint(0, 256, (20, 24), dtype=np.uint8), rng.randint(0, 256, (20, 24), dtype=np.uint8)], -1)
    Image.fromarray(la, "LA").save(d / "la.png")
    Image.fromarray(rng.randint(0, 65536, (20, 24)).astype(np.uint16)).save(d / "grey16.png")
    img = Image.fromarray(rng.randint(0, 256, (30, 44, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 8
    img.save(d / "exif.jpg", exif=exif, quality=92)
    return ["rgba.png", "p.png", "exif.png", "la.png", "grey16.png", "exif.jpg"]


def test_cv2_decode_equals_cv2_imread(tmp_path):
    for name in _files(tmp_path):
        got = np.asarray(load_image(tmp_path / name, decode="cv2"))
        np.testing.assert_array_equal(got, _cv2_rgb(tmp_path / name), err_msg=name)
    # featstore's own decode composites the alpha on white: it differs where the image is transparent
    assert (np.asarray(load_image(tmp_path / "rgba.png")) != _cv2_rgb(tmp_path / "rgba.png")).any()
    assert load_image(tmp_path / "exif.jpg", decode="cv2").size == (30, 44)  # the orientation applied, as cv2


def _vg_args(data, store, path, *extra):
    t = TINY
    sets = {"width": t["width"], "blocks": list(t["blocks"]), "rpn_channels": t["rpn_channels"],
            "num_classes": t["num_classes"], "num_attrs": t["num_attrs"], "shorter_side": t["shorter_side"],
            "max_side": t["max_side"], "min_boxes": t["min_boxes"], "max_boxes": t["max_boxes"], "dtype": "float32"}
    opts = [a for k, v in sets.items() for a in ("--set", f"{k}={v}".replace(" ", ""))]
    return ["extract", "--dataset", data, "--extractor", "vg-regions", "--store", store, "--workers", 0, "--quiet",
            "--weights", path, *opts, *extra]


def test_vg_regions_decode_as_cv2_in_the_run_loop_and_the_cache(ckpt, tmp_path):  # noqa: F811
    import torch

    from cli.featstore_cli import main as featstore
    from cli_helpers import invoke, make_hm_folder
    from featstore import open_store
    from featstore.runner.image_cache import DecodedImageCache, close_image_caches

    path, _ = ckpt
    data = make_hm_folder(tmp_path / "data")
    _rgba_png(data / "img" / "00000.png")
    store, cache = tmp_path / "store", tmp_path / "cache"
    invoke(featstore, ["cache-images", "--dataset", data, "--image-cache", cache, "--workers", 0, "--quiet",
                       "--extractor", "vg-regions"])
    probe = DecodedImageCache(cache)  # cache-images stored the cv2 decode the extractor will ask for
    probe.load(data / "img" / "00000.png", decode="cv2")
    assert probe.stats() == {"hits": 1, "misses": 0, "corrupt": 0}
    close_image_caches()
    invoke(featstore, _vg_args(data, store, path, "--name", "plain"))
    invoke(featstore, _vg_args(data, store, path, "--name", "cached", "--image-cache", cache))
    ex = create_extractor("vg-regions", weights=path, **TINY).to("cpu", torch.float32)
    assert ex.image_decode() == "cv2" and ex.preprocessing()["decode"] == "cv2"
    want = ex.forward(ex.collate([ex.preprocess(Image.fromarray(np.ascontiguousarray(
        _cv2_rgb(data / "img" / "00000.png"))))]))
    ours = ex.forward(ex.collate([ex.preprocess(load_image(data / "img" / "00000.png"))]))
    assert np.abs(ours["pooled"] - want["pooled"]).max() > 0  # the composite on white is another input
    for name in ("plain", "cached"):
        got = open_store(store).open(name).select(["00000"], ["pooled", "count"])
        np.testing.assert_allclose(got["pooled"], want["pooled"], rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_bad_decode_is_one_line():
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", decode="opencv", **TINY)
    assert str(e.value) == "decode='opencv' is not known; use one of featstore, convert-rgb, cv2"
