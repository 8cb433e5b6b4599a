"""detector on a random-init Faster R-CNN: selection = independent greedy class-wise NMS, features = box head."""
import numpy as np
import pytest
import torch
from PIL import Image

from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor
from featstore.extractors.detector import select_detections


def _greedy_classwise_nms(boxes, scores, labels, iou_thresh):
    """float64 textbook NMS per class, merged by decreasing score."""
    boxes = boxes.astype(np.float64)
    keep = []
    for c in np.unique(labels):
        idx = [i for i in np.argsort(-scores, kind="stable") if labels[i] == c]
        while idx:
            i = idx.pop(0)
            keep.append(i)
            rest = []
            for j in idx:
                xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
                xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
                inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
                area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
                if inter / (area(boxes[i]) + area(boxes[j]) - inter) <= iou_thresh:
                    rest.append(j)
            idx = rest
    return sorted(keep, key=lambda i: -scores[i])


def test_select_detections_equals_greedy_reference():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, (300, 2))
    wh = rng.uniform(5, 40, (300, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.permutation(300).astype(np.float32) / 300  # distinct scores
    labels = rng.integers(1, 4, 300)
    ref = _greedy_classwise_nms(boxes, scores, labels, 0.5)
    t = dict(boxes=torch.from_numpy(boxes), scores=torch.from_numpy(scores), labels=torch.from_numpy(labels))
    got = select_detections(t["boxes"], t["scores"], t["labels"], score_thresh=0.0, nms_thresh=0.5, min_boxes=1,
                            max_boxes=1000, pre_nms_topk=10_000)
    assert got.tolist() == ref
    # threshold 0.9 keeps the survivors above it, min_boxes fills up with the next best, max_boxes cuts
    above = [i for i in ref if scores[i] >= 0.9]
    got = select_detections(**t, score_thresh=0.9, nms_thresh=0.5, min_boxes=1, max_boxes=1000, pre_nms_topk=10_000)
    assert got.tolist() == above
    got = select_detections(**t, score_thresh=0.99999, nms_thresh=0.5, min_boxes=10, max_boxes=36, pre_nms_topk=10_000)
    assert got.tolist() == ref[:10]
    got = select_detections(**t, score_thresh=0.0, nms_thresh=0.5, min_boxes=1, max_boxes=7, pre_nms_topk=10_000)
    assert got.tolist() == ref[:7]


def test_detector_random_init_end_to_end():
    ex = create_extractor("detector", min_size=96, max_size=160, max_boxes=8, min_boxes=3, score_thresh=0.0,
                          dtype="float32")
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(120, 80), (60, 100)]]
    batch = ex.collate([ex.preprocess(i) for i in imgs])
    dets = ex.detect(batch)
    out = ex.forward(batch)
    rh = ex.model.roi_heads
    il, _ = ex.model.transform([im.float() / 255 for im in batch["images"]])
    ref = []
    with torch.no_grad():
        for i, d in enumerate(dets):  # each image alone, zero-padded to its orientation's canvas
            h, w = il.image_sizes[i]
            canvas = torch.zeros(1, 3, *ex.canvas(h > w))
            canvas[0, :, :h, :w] = il.tensors[i, :, :h, :w]
            feats = ex.model.backbone(canvas)
            ref.append(rh.box_head(rh.box_roi_pool(feats, [d["boxes"]], [(h, w)])))
    for i, (img, d) in enumerate(zip(imgs, dets)):
        n = int(out["count"][i])
        assert 3 <= n <= 8 and n == len(d["boxes"])
        s = out["scores"][i, :n]
        assert (np.diff(s) <= 0).all()  # sorted by decreasing score
        assert (out["scores"][i, n:] == 0).all() and (out["regions"][i, n:] == 0).all()
        np.testing.assert_allclose(out["regions"][i, :n], ref[i].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["pooled"][i], ref[i].numpy().mean(0), rtol=1e-4, atol=1e-5)
        w, h = img.size
        rh_, rw_ = d["resized"]
        np.testing.assert_allclose(out["boxes"][i, :n], d["boxes"].numpy() * [w / rw_, h / rh_, w / rw_, h / rh_],
                                   rtol=1e-5)
        assert (out["boxes"][i, :n, 2] <= w + 1e-3).all() and (out["boxes"][i, :n, 3] <= h + 1e-3).all()
        assert ((out["class_ids"][i, :n] >= 1) & (out["class_ids"][i, :n] < 91)).all()
    assert out["regions"].shape == (2, 8, 1024) and out["class_ids"].dtype == np.int32
    assert set(out) == set(ex.schema())


def test_detector_bad_config(tmp_path):
    for cfg in [dict(min_boxes=0), dict(min_boxes=40), dict(score_thresh=2.0), dict(weights="demo")]:
        with pytest.raises(FeatstoreError):
            create_extractor("detector", **cfg)
    with pytest.raises(FeatstoreError, match="does not exist"):
        create_extractor("detector", weights=str(tmp_path / "frcnn.pth"))


def test_detector_batching_does_not_change_results():
    """A row depends only on its own image, not on the sizes of the other images in its batch."""
    ex = create_extractor("detector", min_size=96, max_size=160, max_boxes=6, min_boxes=2, score_thresh=0.0,
                          dtype="float32")
    rng = np.random.default_rng(2)
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for w, h in [(120, 80), (60, 100), (90, 90), (150, 70)]]
    together = ex.forward(ex.collate([ex.preprocess(i) for i in imgs]))
    for i, img in enumerate(imgs):
        alone = ex.forward(ex.collate([ex.preprocess(img)]))
        for name in ("regions", "boxes", "scores", "count", "class_ids"):
            np.testing.assert_allclose(together[name][i], alone[name][0], rtol=1e-3, atol=1e-3, err_msg=f"{i} {name}")


def test_detector_c5_regions_are_roi_align_on_layer4_mean_pooled():
    """region_features='c5': each kept box ROI-aligned (7x7, 1/32, sampling 2, aligned) on the ResNet body's
    layer4 of the image's own canvas, mean-pooled (2048-d); the box-head vectors are kept as box_features."""
    from torchvision.ops import roi_align

    cfg = dict(min_size=96, max_size=160, max_boxes=6, min_boxes=3, score_thresh=0.0, dtype="float32")
    ex = create_extractor("detector", region_features="c5", **cfg)
    plain = create_extractor("detector", **cfg)
    rng = np.random.default_rng(3)
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(120, 80), (60, 100)]]
    batch = ex.collate([ex.preprocess(i) for i in imgs])
    dets = ex.detect(batch)
    out = ex.forward(batch)
    base = plain.forward(batch)
    il, _ = ex.model.transform([im.float() / 255 for im in batch["images"]])
    body = ex.model.backbone.body
    for i, d in enumerate(dets):
        h, w = il.image_sizes[i]
        canvas = torch.zeros(1, 3, *ex.canvas(h > w))
        canvas[0, :, :h, :w] = il.tensors[i, :, :h, :w]
        with torch.no_grad():
            m = body.layer4(body.layer3(body.layer2(body.layer1(body.maxpool(body.relu(body.bn1(body.conv1(canvas))))))))
            ref = roi_align(m, [d["boxes"]], output_size=7, spatial_scale=1 / 32, sampling_ratio=2, aligned=True)
        n = int(out["count"][i])
        assert m.shape[1] == 2048 and n == len(d["boxes"])
        np.testing.assert_allclose(out["regions"][i, :n], ref.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["pooled"][i], ref.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4, atol=1e-5)
        assert (out["regions"][i, n:] == 0).all()
    # same detections as the default setting; its 1024-d features ride along as box_features
    for name in ("boxes", "scores", "class_ids", "count"):
        np.testing.assert_array_equal(out[name], base[name])
    np.testing.assert_allclose(out["box_features"], base["regions"], rtol=1e-5, atol=1e-6)
    s = ex.schema()
    assert s["regions"].shape == (6, 2048) and s["box_features"].shape == (6, 1024) and set(out) == set(s)
    assert ex.preprocessing()["region_features"] != plain.preprocessing()["region_features"]
    for cfg_bad, msg in [(dict(region_features="fc6"), "region_features='fc6' is unknown; use one of box_head, c5"),
                         (dict(c5_output=0), "c5_output=0 is invalid; use a positive size (7 by default)")]:
        with pytest.raises(FeatstoreError) as e:
            create_extractor("detector", **cfg_bad)
        assert str(e.value) == msg
