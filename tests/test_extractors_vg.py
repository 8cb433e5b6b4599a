"""vg-regions on a tiny random model saved in the public checkpoint's layout (py-bottom-up-attention's
``faster_rcnn_from_caffe_attr.pkl``: a pickled dict of float32 numpy arrays named as detectron2's modules).

The references below are written from detectron2 / bottom-up-attention's code in float64 numpy (caffe
RoIPool, caffe max-pool, generate_tsv.py's per-class NMS loop with py_cpu_nms), never from our module."""
from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor
from featstore.extractors.vg_model import RPNSettings, grouped_nms
from featstore.extractors.vg_regions import caffe_scale, select_regions
from store_helpers import assert_one_line_error

W, BLOCKS, RPN, C, A = 4, (1, 1, 2, 1), 8, 7, 5
TINY = dict(width=W, blocks=BLOCKS, rpn_channels=RPN, num_classes=C, num_attrs=A, shorter_side=48, max_side=80,
            min_boxes=3, max_boxes=12, dtype="float32")
MEAN = np.array([102.9801, 115.9465, 122.7717])
EPS = 1e-5


# -- the checkpoint layout, transcribed from detectron2's module names -------------------------------------
def layout(w=W, blocks=BLOCKS, rpn=RPN, c=C, a=A):
    shapes = {}

    def conv(p, cin, cout, k):
        shapes[p + ".weight"] = (cout, cin, k, k)
        for s in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{p}.norm.{s}"] = (cout,)

    conv("backbone.stem.conv1", 3, w, 7)
    stages = [("backbone.res2", blocks[0], w, w, 4 * w), ("backbone.res3", blocks[1], 4 * w, 2 * w, 8 * w),
              ("backbone.res4", blocks[2], 8 * w, 4 * w, 16 * w), ("roi_heads.res5", blocks[3], 16 * w, 8 * w, 32 * w)]
    for name, n, cin, mid, cout in stages:
        for j in range(n):
            if j == 0:
                conv(f"{name}.0.shortcut", cin, cout, 1)
            conv(f"{name}.{j}.conv1", cin if j == 0 else cout, mid, 1)
            conv(f"{name}.{j}.conv2", mid, mid, 3)
            conv(f"{name}.{j}.conv3", mid, cout, 1)
    r = "proposal_generator.rpn_head."
    shapes.update({r + "conv.weight": (rpn, 16 * w, 3, 3), r + "conv.bias": (rpn,),
                   r + "objectness_logits.weight": (12, rpn, 1, 1), r + "objectness_logits.bias": (12,),
                   r + "anchor_deltas.weight": (48, rpn, 1, 1), r + "anchor_deltas.bias": (48,)})
    d, p = 32 * w, "roi_heads.box_predictor."
    shapes.update({p + "cls_score.weight": (c + 1, d), p + "cls_score.bias": (c + 1,),
                   p + "bbox_pred.weight": (4 * c, d), p + "bbox_pred.bias": (4 * c,),
                   p + "cls_embedding.weight": (c + 1, d // 8), p + "fc_attr.weight": (d // 4, d + d // 8),
                   p + "fc_attr.bias": (d // 4,), p + "attr_score.weight": (a + 1, d // 4),
                   p + "attr_score.bias": (a + 1,)})
    return shapes


def d2_anchors():
    out = []
    for size in (64, 128, 256, 512):
        for ratio in (0.5, 1.0, 2.0):
            w = math.sqrt(size * size / ratio)
            out.append([-w / 2, -ratio * w / 2, w / 2, ratio * w / 2])
    return np.array(out, dtype=np.float32)


# the input is raw pixels minus the means, so activations reach the hundreds: small heads keep RPN deltas
# near the anchors and class / attribute probabilities away from one-hot
GAINS = {"anchor_deltas": 1e-3, "objectness_logits": 1e-2, "cls_score": 1e-2, "fc_attr": 1e-2}


def random_weights(seed=0, shapes=None, gains=GAINS, **over):
    """Random float32 arrays for ``shapes`` (name -> shape; default this file's ``layout(**over)``)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in (shapes or layout(**over)).items():
        if k.endswith("norm.weight"):
            v = rng.uniform(0.5, 1.5, shape)
        elif k.endswith("running_var"):
            v = rng.uniform(0.5, 2.0, shape)
        elif k.endswith(("norm.bias", "running_mean")):
            v = rng.normal(0, 0.1, shape)
        elif k.endswith("bias"):
            v = rng.normal(0, 0.3, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            gain = next((g for part, g in gains.items() if part in k), 1.0)
            v = rng.normal(0, math.sqrt(2.0 / fan_in) * gain, shape)
        out[k] = v.astype(np.float32)
    return out


def save_checkpoint(path, weights, extra=True):
    model = dict(weights)
    if extra:  # buffers detectron2's GeneralizedRCNN also saves
        model["pixel_mean"] = MEAN.reshape(3, 1, 1).astype(np.float32)
        model["pixel_std"] = np.ones((3, 1, 1), np.float32)
        model["proposal_generator.anchor_generator.cell_anchors.0"] = d2_anchors()
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "test"}, f)
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    weights = random_weights()
    return save_checkpoint(tmp_path_factory.mktemp("vg") / "vg_tiny.pkl", weights), weights


def images():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in
            [(120, 80), (60, 100), (90, 91), (70, 50)]]


# -- float64 reference of the graph ------------------------------------------------------------------------
def t64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def conv_bn(x, Wt, p, stride=1, pad=0, dil=1, relu=True):
    y = F.conv2d(x, t64(Wt[p + ".weight"]), stride=stride, padding=pad, dilation=dil)
    g, b, m, v = (t64(Wt[f"{p}.norm.{s}"])[None, :, None, None] for s in ("weight", "bias", "running_mean",
                                                                         "running_var"))
    y = (y - m) / torch.sqrt(v + EPS) * g + b
    return F.relu(y) if relu else y


def block(x, Wt, p, stride, dil, first):
    out = conv_bn(x, Wt, p + ".conv1", stride=stride)
    out = conv_bn(out, Wt, p + ".conv2", pad=dil, dil=dil)
    out = conv_bn(out, Wt, p + ".conv3", relu=False)
    sc = conv_bn(x, Wt, p + ".shortcut", stride=stride, relu=False) if first else x
    return F.relu(out + sc)


def caffe_maxpool(x):
    """3x3 stride 2, pad 0, output ceil((H - 3) / 2) + 1, windows cut at the border."""
    h, w = x.shape[-2:]
    oh, ow = -(-(h - 3) // 2) + 1, -(-(w - 3) // 2) + 1
    out = torch.empty(x.shape[0], x.shape[1], oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, 2 * i:min(2 * i + 3, h), 2 * j:min(2 * j + 3, w)].amax(dim=(2, 3))
    return out


def ref_c4(x, Wt):
    """x: [1, 3, h, w] float64 (BGR minus the means, scaled), unpadded."""
    x = caffe_maxpool(conv_bn(x, Wt, "backbone.stem.conv1", stride=2, pad=3))
    for s, n, stride in (("res2", BLOCKS[0], 1), ("res3", BLOCKS[1], 2), ("res4", BLOCKS[2], 2)):
        for j in range(n):
            x = block(x, Wt, f"backbone.{s}.{j}", stride if j == 0 else 1, 1, j == 0)
    return x


def caffe_roi_pool(fmap, box, out=14, scale=1 / 16):
    """Caffe's ROIPoolingLayer on one [C, H, W] map (round half away from zero, +1 extents)."""
    c, h, w = fmap.shape
    rnd = lambda v: math.floor(v * scale + 0.5)  # noqa: E731  (coordinates are >= 0)
    x1, y1, x2, y2 = (rnd(v) for v in box)
    rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    bw, bh = rw / out, rh / out
    res = torch.zeros(c, out, out, dtype=fmap.dtype)
    for i in range(out):
        hs = min(max(math.floor(i * bh) + y1, 0), h)
        he = min(max(math.ceil((i + 1) * bh) + y1, 0), h)
        for j in range(out):
            ws = min(max(math.floor(j * bw) + x1, 0), w)
            we = min(max(math.ceil((j + 1) * bw) + x1, 0), w)
            if he > hs and we > ws:
                res[:, i, j] = fmap[:, hs:he, ws:we].amax(dim=(1, 2))
    return res


def ref_region(c4, box, Wt):
    x = caffe_roi_pool(c4[0], box)[None]
    for j in range(BLOCKS[3]):
        x = block(x, Wt, f"roi_heads.res5.{j}", 1, 2, j == 0)
    return x.mean(dim=(2, 3))[0]


def ref_heads(f, Wt):
    p = "roi_heads.box_predictor."
    lin = lambda x, n: x @ t64(Wt[p + n + ".weight"]).T + t64(Wt[p + n + ".bias"])  # noqa: E731
    logits = lin(f, "cls_score")
    emb = t64(Wt[p + "cls_embedding.weight"])[logits.argmax(-1)]
    attr = lin(F.relu(lin(torch.cat([f, emb], -1), "fc_attr")), "attr_score")
    return torch.softmax(logits, -1), torch.softmax(attr, -1)


def cv2_linear_axis(n_in, n_out, s):
    """cv2.resize INTER_LINEAR along one axis for fx = s: source (d + 0.5) / s - 0.5, clamped to the edges."""
    sx = (np.arange(n_out) + 0.5) / s - 0.5
    x0 = np.floor(sx).astype(int)
    f = sx - x0
    f[x0 < 0], x0[x0 < 0] = 0.0, 0
    over = x0 >= n_in - 1
    f[over], x0[over] = 0.0, n_in - 1
    return x0, np.minimum(x0 + 1, n_in - 1), f


def ref_input(img, shorter=48, longest=80):
    """generate_tsv.py's _get_image_blob: BGR minus the means, cv2.resize(None, fx=s, fy=s) (INTER_LINEAR)."""
    bgr = np.asarray(img.convert("RGB"), dtype=np.float64)[:, :, ::-1] - MEAN
    h, w = bgr.shape[:2]
    s = shorter / min(w, h)
    if round(s * max(w, h)) > longest:
        s = longest / max(w, h)
    y0, y1, fy = cv2_linear_axis(h, round(h * s), s)
    x0, x1, fx = cv2_linear_axis(w, round(w * s), s)
    rows = bgr[y0] * (1 - fy)[:, None, None] + bgr[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))[None], s


# -- reference NMS and selection -----------------------------------------------------------------------------
def py_cpu_nms(dets, thresh, plus_one=True):
    """Fast R-CNN's py_cpu_nms: dets [N, 5] (x1 y1 x2 y2 score)."""
    one = 1.0 if plus_one else 0.0
    x1, y1, x2, y2, s = (dets[:, i] for i in range(5))
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = s.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + one) * np.maximum(0.0, yy2 - yy1 + one)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def generate_tsv_select(boxes, fg_probs, conf_thresh, min_boxes, max_boxes, nms_thresh=0.3):
    """bottom-up-attention tools/generate_tsv.py, with fg_probs = cls_prob[:, 1:]."""
    max_conf = np.zeros(len(boxes))
    for c in range(fg_probs.shape[1]):
        s = fg_probs[:, c]
        keep = np.array(py_cpu_nms(np.hstack([boxes, s[:, None]]).astype(np.float64), nms_thresh), dtype=int)
        max_conf[keep] = np.where(s[keep] > max_conf[keep], s[keep], max_conf[keep])
    keep_boxes = np.where(max_conf >= conf_thresh)[0]
    if len(keep_boxes) < min_boxes:
        keep_boxes = np.argsort(max_conf)[::-1][:min_boxes]
    elif len(keep_boxes) > max_boxes:
        keep_boxes = np.argsort(max_conf)[::-1][:max_boxes]
    return keep_boxes.tolist()


def random_boxes(rng, n, side=200.0):
    xy = rng.uniform(0, side, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(4, side / 2, (n, 2))], 1)


# -- tests ---------------------------------------------------------------------------------------------------
def test_loader_maps_every_key_of_the_checkpoint_layout(ckpt):
    path, weights = ckpt
    ex = create_extractor("vg-regions", weights=path, **TINY)
    rep = ex.load_report
    assert sorted(rep.used) == sorted(layout()) and rep.missing == []
    assert dict(rep.ignored) == {"pixel_mean": "equals pixel_mean", "pixel_std": "ones, as the extractor",
                                 "proposal_generator.anchor_generator.cell_anchors.0": "equals the generated anchors"}
    sd = ex.model.state_dict()
    assert set(sd) == set(layout())
    for k, v in weights.items():
        assert np.array_equal(sd[k].numpy(), v), k
    assert ex.preprocessing()["weights_load"]["used"] == len(layout())
    assert ex.weights_fingerprint().startswith("files:sha256:")


def test_region_features_equal_float64_graph_for_given_boxes(ckpt):
    """A padded two-image batch (landscape + smaller landscape) against each image alone, unpadded, float64."""
    path, Wt = ckpt
    ex = create_extractor("vg-regions", weights=path, **TINY).to("cpu", torch.float32)
    imgs = [images()[0], images()[3]]
    xs, scales = zip(*[ex.prepare(ex.preprocess(im)["image"]) for im in imgs])
    sizes = [tuple(x.shape[-2:]) for x in xs]
    canvas = torch.zeros(2, 3, max(h for h, _ in sizes), max(w for _, w in sizes))
    for i, x in enumerate(xs):
        canvas[i, :, : x.shape[1], : x.shape[2]] = x
    rng = np.random.default_rng(5)
    with torch.no_grad():
        c4, sizes16 = ex.model.backbone(canvas, sizes)
        boxes = []
        for h, w in sizes:
            b = random_boxes(rng, 5, side=min(h, w) / 2)
            boxes.append(torch.from_numpy(np.minimum(b, [w, h, w, h])).float())
        feats = ex.model.region_features(c4, sizes16, boxes)
        probs, attr = ex.model.predict(feats)
    got = feats.split(5)
    for i, im in enumerate(imgs):
        x64, s = ref_input(im)
        assert abs(s - scales[i]) < 1e-12 and tuple(x64.shape[-2:]) == sizes[i]
        np.testing.assert_allclose(xs[i].numpy(), x64[0].numpy(), atol=2e-3)  # float32 pixels vs float64
        r4 = ref_c4(xs[i][None].double(), Wt)  # the same float32 pixels: only the arithmetic differs below
        assert tuple(r4.shape[-2:]) == sizes16[i]
        np.testing.assert_allclose(c4[i, :, : sizes16[i][0], : sizes16[i][1]].numpy(), r4[0].numpy(),
                                   rtol=1e-4, atol=1e-4)
        ref = torch.stack([ref_region(r4, b.double().tolist(), Wt) for b in boxes[i]])
        np.testing.assert_allclose(got[i].numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
        rp, ra = ref_heads(ref, Wt)
        np.testing.assert_allclose(probs[5 * i:5 * i + 5].numpy(), rp.numpy(), atol=1e-5)
        np.testing.assert_allclose(attr[5 * i:5 * i + 5].numpy(), ra.numpy(), atol=1e-5)


def test_rpn_proposals_equal_detectron2_reference(ckpt):
    path, Wt = ckpt
    ex = create_extractor("vg-regions", weights=path, **TINY).to("cpu", torch.float32)
    x64, _ = ref_input(images()[0])
    c4 = ref_c4(x64, Wt).float()
    h, w = x64.shape[-2:]
    s = RPNSettings(pre_nms_topk=150, post_nms_topk=20, nms_thresh=0.7, min_size=0.0)
    with torch.no_grad():
        got = ex.model.proposals(c4, [tuple(c4.shape[-2:])], [(h, w)], s)[0].numpy()
    # detectron2 StandardRPNHead + find_top_rpn_proposals, float64
    r = "proposal_generator.rpn_head."
    t = F.relu(F.conv2d(c4.double(), t64(Wt[r + "conv.weight"]), t64(Wt[r + "conv.bias"]), padding=1))
    lg = F.conv2d(t, t64(Wt[r + "objectness_logits.weight"]), t64(Wt[r + "objectness_logits.bias"]))[0]
    dl = F.conv2d(t, t64(Wt[r + "anchor_deltas.weight"]), t64(Wt[r + "anchor_deltas.bias"]))[0]
    hf, wf = lg.shape[-2:]
    lg = lg.permute(1, 2, 0).reshape(-1).numpy()
    dl = dl.reshape(12, 4, hf, wf).permute(2, 3, 0, 1).reshape(-1, 4).numpy()
    anchors = np.array([[x * 16, y * 16, x * 16, y * 16] + a for y in range(hf) for x in range(wf)
                        for a in d2_anchors().astype(np.float64)])
    top = np.argsort(-lg, kind="stable")[:150]
    a, d = anchors[top], dl[top]
    aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    cx, cy = a[:, 0] + aw / 2, a[:, 1] + ah / 2
    clamp = math.log(1000 / 16)
    pw, ph = np.exp(np.minimum(d[:, 2], clamp)) * aw, np.exp(np.minimum(d[:, 3], clamp)) * ah
    px, py = d[:, 0] * aw + cx, d[:, 1] * ah + cy
    b = np.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], 1)
    b = np.clip(b, 0, [w, h, w, h])
    ok = (b[:, 2] - b[:, 0] > 0) & (b[:, 3] - b[:, 1] > 0)
    b, sc = b[ok], lg[top][ok]
    keep = py_cpu_nms(np.hstack([b, sc[:, None]]), 0.7, plus_one=False)
    assert len(keep) > 20 and len(b) > len(keep)  # NMS removed some and post_nms_topk cuts
    keep = keep[:20]
    assert len(got) == 20
    np.testing.assert_allclose(got, b[keep], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("conf_thresh,min_boxes,max_boxes", [(0.2, 5, 40), (0.05, 5, 12), (0.9, 10, 30),
                                                              (0.2, 1, 3)])
def test_selection_equals_generate_tsv_per_class_nms(conf_thresh, min_boxes, max_boxes):
    """Three images at once (one batched selection) against the reference loop on each alone."""
    rng = np.random.default_rng(11)
    boxes, probs = [], []
    for n in (60, 45, 8):
        b = random_boxes(rng, n)
        p = rng.dirichlet(np.full(C + 1, 0.3), n)  # softmax-like rows, background last
        boxes.append(b)
        probs.append(p[:, :C])
    got = select_regions([torch.from_numpy(b).float() for b in boxes], [torch.from_numpy(p).float() for p in probs],
                         nms_thresh=0.3, conf_thresh=conf_thresh, min_boxes=min_boxes, max_boxes=max_boxes)
    for b, p, g in zip(boxes, probs, got):
        ref = generate_tsv_select(b.astype(np.float32).astype(np.float64), p.astype(np.float32).astype(np.float64),
                                  conf_thresh, min_boxes, max_boxes)
        assert g.tolist() == ref


def test_selection_iou_uses_legacy_plus_one_areas():
    """[0, 0, 9, 9] vs the same box shifted by 5: IoU 4/14 = 0.29 without +1, 5/15 = 0.33 with it (caffe)."""
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], dtype=np.float64)
    probs = np.array([[0.9, 0.05], [0.8, 0.1]])
    ref = generate_tsv_select(boxes, probs, 0.2, 1, 10)
    got = select_regions([torch.from_numpy(boxes).float()], [torch.from_numpy(probs).float()], nms_thresh=0.3,
                         conf_thresh=0.2, min_boxes=1, max_boxes=10)[0]
    assert ref == [0] and got.tolist() == ref  # box 1 is suppressed for class 0 and below 0.2 for class 1


def test_grouped_nms_equals_per_group_nms_in_small_calls():
    rng = np.random.default_rng(2)
    b = random_boxes(rng, 90, side=50.0)
    s = rng.permutation(90) / 90.0
    g = rng.integers(0, 9, 90)
    got = grouped_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(g), 0.4, max_boxes=16)
    ref = []
    for grp in range(9):
        idx = np.nonzero(g == grp)[0]
        ref += idx[py_cpu_nms(np.hstack([b[idx], s[idx, None]]), 0.4, plus_one=False)].tolist()
    assert sorted(got.tolist()) == sorted(ref)


def test_batch_rows_equal_single_image_rows(ckpt):
    path, _ = ckpt
    ex = create_extractor("vg-regions", weights=path, **TINY).to("cpu", torch.float32)
    imgs = images()
    batch = ex.forward(ex.collate([ex.preprocess(im) for im in imgs]))
    assert set(batch) == {"regions", "count", "boxes", "image_size", "class_ids", "class_scores", "attr_ids",
                          "attr_scores", "cls_prob", "pooled"}
    assert batch["regions"].shape == (4, 12, 128) and batch["cls_prob"].shape == (4, 12, C + 1)
    for i, im in enumerate(imgs):
        one = ex.forward(ex.collate([ex.preprocess(im)]))
        n = int(one["count"][0])
        assert 3 <= n <= 12 and n == batch["count"][i]
        for k in ("class_ids", "attr_ids", "image_size"):
            assert np.array_equal(batch[k][i], one[k][0]), k
        for k in ("regions", "boxes", "class_scores", "attr_scores", "cls_prob", "pooled"):
            np.testing.assert_allclose(batch[k][i], one[k][0], rtol=1e-4, atol=1e-4, err_msg=k)  # float32 convs
        assert (batch["regions"][i, n:] == 0).all() and (batch["boxes"][i, n:] == 0).all()
        assert np.array_equal(batch["image_size"][i], im.size)
    # what the rows say about themselves: cls_prob is caffe-ordered (background first) and gives the ids
    n = int(batch["count"][0])
    cp = batch["cls_prob"][0, :n]
    np.testing.assert_allclose(cp.sum(-1), 1.0, atol=1e-5)
    assert np.array_equal(cp[:, 1:].argmax(-1), batch["class_ids"][0, :n])
    np.testing.assert_allclose(cp[:, 1:].max(-1), batch["class_scores"][0, :n], atol=1e-6)
    w, h = imgs[0].size
    assert (batch["boxes"][0, :n] >= 0).all() and (batch["boxes"][0, :n, [0, 2]] <= w + 1e-3).all()


def detect_and_forward(path, image):
    """One image through the float32 extractor: its ``detect`` dict and its ``forward`` rows."""
    ex = create_extractor("vg-regions", weights=path, **TINY).to("cpu", torch.float32)
    b = ex.collate([ex.preprocess(image)])
    return ex.detect(b)[0], ex.forward(b)


def test_selected_rows_are_the_proposals_features(ckpt):
    """The stored rows are the selected proposals' own features, boxes / scale and probabilities."""
    path, _ = ckpt
    det, out = detect_and_forward(path, images()[1])
    keep = det["keep"]
    n = len(keep)
    ref = select_regions([det["boxes"]], [det["probs"][:, :C]], nms_thresh=0.3, conf_thresh=0.2, min_boxes=3,
                         max_boxes=12)[0]
    assert keep.tolist() == ref.tolist() and out["count"][0] == n
    np.testing.assert_allclose(out["regions"][0, :n], det["pooled"][keep].numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][0, :n], det["boxes"][keep].numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["attr_scores"][0, :n], det["attr"][keep, :A].max(-1).values.numpy(), rtol=1e-6)
    w, h = images()[1].size
    scale, _ = caffe_scale(w, h, 48, 80)
    assert scale == 48 / 60


def test_extract_into_a_store_and_resume_noop(ckpt, tmp_path):
    from featstore.datasets import load_dataset
    from featstore.runner import ExtractOptions, run_extraction
    from featstore.store import open_store

    path, _ = ckpt
    (tmp_path / "img").mkdir()
    rows = []
    for i, im in enumerate(images()):
        im.save(tmp_path / "img" / f"{i:05d}.png")
        rows.append({"id": i, "img": f"img/{i:05d}.png", "label": i % 2, "text": f"t{i}"})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset(str(tmp_path / "train.jsonl"))
    store = open_store(str(tmp_path / "store"), create=True)
    cfg = dict(TINY, weights=path)
    opts = ExtractOptions(batch_size=3, num_workers=0, device="cpu", chunk_rows=2, progress=False)
    s1 = run_extraction(store, ds, "vg-regions", extractor_config=cfg, options=opts)
    fs = store.open("vg-regions")
    ex = create_extractor("vg-regions", **cfg).to("cpu", torch.float32)
    ref = ex.forward(ex.collate([ex.preprocess(im) for im in images()]))
    order = [int(k) for k in fs.keys]
    for k in ("regions", "boxes", "class_ids", "attr_ids", "cls_prob", "count", "image_size"):
        np.testing.assert_allclose(fs.read(k).astype(np.float64), ref[k][order].astype(np.float64), rtol=1e-4,
                                   atol=1e-4, err_msg=k)
    s2 = run_extraction(store, ds, "vg-regions", extractor_config=cfg, options=opts)
    assert s2.already_complete and s2.version == s1.version


def cli_extract(weights, tmp_path):
    """``featstore extract`` of a Hateful-Memes-style folder with the TINY options: (dataset folder, store
    path, the feature set ``vg``)."""
    from cli.featstore_cli import main as featstore
    from cli_helpers import invoke, make_hm_folder
    from featstore.store import open_store

    data, store = make_hm_folder(tmp_path / "hm"), tmp_path / "store"
    tiny = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}")]
    invoke(featstore, ["extract", "--dataset", data / "train.jsonl", "--extractor", "vg-regions", "--weights", weights,
                       "--store", store, "--workers", 0, "--quiet", "--batch-size", 4, "--name", "vg", *tiny])
    return data, store, open_store(str(store)).open("vg")


def test_cli_extract_then_export_a_detectron_lmdb(ckpt, tmp_path):
    from cli.featstore_cli import main as featstore
    from cli_helpers import invoke, one_line_error
    from featstore.interop.mmf_lmdb import MMFLmdbReader

    path, _ = ckpt
    data, store, fs = cli_extract(path, tmp_path)
    assert fs.record["recipe"]["preprocessing"]["weights_load"]["missing"] == []
    invoke(featstore, ["export", "vg", "--store", store, "--format", "mmf-lmdb", "--out", tmp_path / "detectron.lmdb"])
    reader = MMFLmdbReader(tmp_path / "detectron.lmdb")
    got = {k: rec for k, rec in reader}
    assert sorted(got) == sorted(fs.keys)
    per_region = ["class_scores", "attr_ids", "attr_scores", "cls_prob"]
    data_ = fs.select(list(fs.keys), ["regions", "boxes", "class_ids", "image_size", *per_region])
    for i, k in enumerate(fs.keys):
        rec, n = got[k], int(data_["count"][i])
        assert rec["num_boxes"] == n and rec["features"].shape == (n, 128) and rec["cls_prob"].shape == (n, C + 1)
        np.testing.assert_array_equal(rec["features"], data_["regions"][i, :n])
        np.testing.assert_array_equal(rec["bbox"], data_["boxes"][i, :n])
        np.testing.assert_array_equal(rec["objects"], data_["class_ids"][i, :n])
        for name in per_region:  # exported under their own names (MMF's pretraining reads cls_prob)
            np.testing.assert_array_equal(rec[name], data_[name][i, :n])
        assert (rec["image_width"], rec["image_height"]) == tuple(data_["image_size"][i])
    missing = str(tmp_path / "nope.pkl")
    line = one_line_error(featstore, ["extract", "--dataset", data / "train.jsonl", "--extractor", "vg-regions",
                                      "--weights", missing, "--store", store, "--workers", 0, "--quiet"])
    assert line.startswith(f"error: weights file {missing!r} does not exist; pass py-bottom-up-attention's faster_rcnn")


# -- bad input: one-line errors ------------------------------------------------------------------------------
def test_missing_weights_file_names_the_checkpoint(tmp_path):
    missing = str(tmp_path / "nope.pkl")
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=missing, **TINY)
    assert str(e.value) == (
        f"weights file {missing!r} does not exist; pass py-bottom-up-attention's faster_rcnn_from_caffe_attr.pkl "
        "(detectron2 layout; http://nlp.cs.unc.edu/models/faster_rcnn_from_caffe_attr.pkl) or "
        "bottom-up-attention.pytorch's bua-caffe-frcn-r101_with_attributes.pth, fetched on a connected machine")
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights="demo")
    assert str(e.value) == ("vg-regions has no demo weights; pass --weights faster_rcnn_from_caffe_attr.pkl "
                            "(py-bottom-up-attention's Visual Genome checkpoint)")


def test_checkpoint_missing_keys_and_wrong_shapes(tmp_path):
    weights = random_weights()
    del weights["roi_heads.box_predictor.attr_score.weight"], weights["roi_heads.box_predictor.attr_score.bias"]
    p = save_checkpoint(tmp_path / "noattr.pkl", weights)
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=p, **TINY)
    assert_one_line_error(e, f"weights {p!r} lack 2 of the model's keys (e.g. roi_heads.box_predictor.attr_score."
                          "weight, roi_heads.box_predictor.attr_score.bias); pass py-bottom-up-attention's")
    p = save_checkpoint(tmp_path / "other.pkl", random_weights(c=9))
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=p, **TINY)
    assert str(e.value) == (f"weights {p!r}: roi_heads.box_predictor.bbox_pred.bias has shape (36,), the model "
                            "expects (28,); set the architecture options (width, blocks, rpn_channels, num_classes, "
                            "num_attrs) to the checkpoint's")
    p = save_checkpoint(tmp_path / "caffe2.pkl", {"res2_0_branch2a_w": np.zeros((4, 4), np.float32)}, extra=False)
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=p, **TINY)
    assert str(e.value) == (
        f"weights {p!r} are in no known layout (they have neither roi_heads.box_predictor.fc_attr.weight nor "
        "roi_heads.box_predictor.attr_linear1.weight); pass py-bottom-up-attention's faster_rcnn_from_caffe_attr.pkl "
        "(detectron2 layout; http://nlp.cs.unc.edu/models/faster_rcnn_from_caffe_attr.pkl) or "
        "bottom-up-attention.pytorch's bua-caffe-frcn-r101_with_attributes.pth, fetched on a connected machine, or "
        "--set layout=detectron2|bua-caffe for a file with those modules under other names")
    with pytest.raises(FeatstoreError) as e:  # a forced layout gets as far as the key check
        create_extractor("vg-regions", weights=p, layout="detectron2", **TINY)
    assert_one_line_error(e, f"weights {p!r} have none of the model's keys (e.g. backbone.stem.conv1.weight); pass")


def test_checkpoint_constants_must_agree(tmp_path):
    p = save_checkpoint(tmp_path / "m.pkl", random_weights())
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=p, pixel_mean=(103.53, 116.28, 123.675), **TINY)
    assert_one_line_error(e, f"weights {p!r} were trained with pixel_mean [102.98010", "(BGR), the extractor uses "
                          "[103.53, 116.28, 123.675]; pass --set pixel_mean=...")


def test_stored_std_and_anchors_must_agree(tmp_path):
    weights = dict(random_weights(), pixel_std=np.full((3, 1, 1), 57.0, np.float32))
    p = save_checkpoint(tmp_path / "std.pkl", weights, extra=False)
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=p, **TINY)
    assert str(e.value) == (f"weights {p!r} expect pixel_std [57.0, 57.0, 57.0], the caffe model divides by nothing; "
                            "pass the caffe-converted attribute checkpoint")
    key = "proposal_generator.anchor_generator.cell_anchors.0"
    p = save_checkpoint(tmp_path / "anchors.pkl", dict(random_weights(), **{key: d2_anchors()[::-1].copy()}),
                        extra=False)
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=p, **TINY)
    assert str(e.value) == (f"weights {p!r}: {key} differs from the anchors the extractor generates (sizes [64.0, "
                            "128.0, 256.0, 512.0], ratios [0.5, 1.0, 2.0])")


def test_hostile_or_broken_pickles_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"model": {"x": Evil()}}))
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=str(p), **TINY)
    assert_one_line_error(e, f"{p}: refused to unpickle global posix.system")
    p = tmp_path / "list.pkl"
    p.write_bytes(pickle.dumps({"model": {"backbone.stem.conv1.weight": [1, 2]}}))
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=str(p), **TINY)
    assert_one_line_error(e, f"weights file {str(p)!r}: entry 'backbone.stem.conv1.weight' is not a numpy array")
    p = tmp_path / "array.pkl"
    p.write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=str(p), **TINY)
    assert_one_line_error(e, f"weights file {str(p)!r} does not hold a dict of arrays by name; pass py-bottom")
    p = tmp_path / "cut.pkl"
    p.write_bytes(pickle.dumps({"model": random_weights()})[:5000])
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=str(p), **TINY)
    assert_one_line_error(e, f"{p}: not a readable pickle (", "the file is damaged or not a pickle, re-create it")


def test_bad_options_are_one_line_errors():
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", min_boxes=20, max_boxes=10)
    assert str(e.value) == "min_boxes=20, max_boxes=10 are invalid; use 1 <= min_boxes <= max_boxes"
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", nms_thresh=0.0)
    assert str(e.value) == ("conf_thresh=0.2, nms_thresh=0.0, rpn_nms_thresh=0.7 must be in [0, 1] (NMS thresholds "
                            "above 0)")
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", shorter_side=20)
    assert str(e.value) == "shorter_side=20, max_side=1000 are invalid; use 32 <= shorter_side <= max_side"
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", blocks=(3, 4, 23))
    assert str(e.value) == ("blocks=(3, 4, 23) / pixel_mean=(102.9801, 115.9465, 122.7717) are invalid; give four "
                            "block counts (res2..res5) >= 1 and three BGR means")


def test_too_thin_image_is_a_recorded_one_line_failure():
    ex = create_extractor("vg-regions", **TINY)
    with pytest.raises(FeatstoreError) as e:
        ex.preprocess(Image.new("RGB", (400, 4)))
    assert str(e.value) == ("image 400x4 scales to 80x1, thinner than the detector's 32 pixels; crop or pad such "
                            "extreme aspect ratios")
