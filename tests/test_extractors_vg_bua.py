"""vg-regions on bottom-up-attention.pytorch's (MILVLG) checkpoint layout: a tiny random model saved as that
repository's ``GeneralizedBUARCNN`` state dict (``bua-caffe-frcn-r101_with_attributes.pth``, config
``configs/caffe/test-caffe-r101.yaml``, scaled down) with torch.save.

The layout and the references below are transcribed from that repository's code (bua/caffe/modeling:
backbone.py, rpn.py, rpn_outputs.py ``find_top_bua_rpn_proposals`` / ``predict_objectness_logits``,
box_regression.py ``BUABox2BoxTransform`` / ``BUABoxes``, fast_rcnn.py ``BUACaffeFastRCNNOutputLayers``,
layers/csrc nms_cpu.cpp; utils/extract_utils.py ``save_roi_features``) and py-faster-rcnn's
``generate_anchors``, in float64 numpy, never from our module. The backbone / RoIPool / res5 references are
shared with test_extractors_vg.py (the same graph in both layouts)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor
from featstore.extractors.vg_model import RPNSettings
from test_extractors_vg import (BLOCKS, RPN, TINY, A, C, W, block, caffe_roi_pool, cli_extract, detect_and_forward,
                                images, random_boxes, random_weights, ref_c4, ref_input, t64)

NA = 12  # 3 ratios x 4 scales


# -- the checkpoint layout, transcribed from bottom-up-attention.pytorch's module names --------------------------
def bua_layout(w=W, blocks=BLOCKS, rpn=RPN, c=C, a=A):
    """name -> shape. detectron2 v0.2.1 ResNet names; FREEZE_AT 3 makes the stem, res2 and res3 norms
    FrozenBatchNorm2d, res4 and roi_heads.res5 keep nn.BatchNorm2d (with num_batches_tracked, shape ());
    StandardBUARPNHead: objectness 2A; the anchor generator's persistent cell_anchors buffer;
    BUACaffeFastRCNNOutputLayers with NUM_CLASSES 1601 (background included, so 1601 x 4 box rows),
    cls_embed 256 / attr_linear1 512 at full size (d / 8, d / 4), attr_linear2 NUM_CLASSES 401."""
    shapes = {}

    def conv(p, cin, cout, k, bn):
        shapes[p + ".weight"] = (cout, cin, k, k)
        for s in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{p}.norm.{s}"] = (cout,)
        if bn:
            shapes[f"{p}.norm.num_batches_tracked"] = ()

    conv("backbone.stem.conv1", 3, w, 7, False)
    stages = [("backbone.res2", blocks[0], w, w, 4 * w, False),
              ("backbone.res3", blocks[1], 4 * w, 2 * w, 8 * w, False),
              ("backbone.res4", blocks[2], 8 * w, 4 * w, 16 * w, True),
              ("roi_heads.res5", blocks[3], 16 * w, 8 * w, 32 * w, True)]
    for name, n, cin, mid, cout, bn in stages:
        for j in range(n):
            if j == 0:
                conv(f"{name}.0.shortcut", cin, cout, 1, bn)
            conv(f"{name}.{j}.conv1", cin if j == 0 else cout, mid, 1, bn)
            conv(f"{name}.{j}.conv2", mid, mid, 3, bn)
            conv(f"{name}.{j}.conv3", mid, cout, 1, bn)
    r = "proposal_generator."
    shapes.update({r + "rpn_head.conv.weight": (rpn, 16 * w, 3, 3), r + "rpn_head.conv.bias": (rpn,),
                   r + "rpn_head.objectness_logits.weight": (2 * NA, rpn, 1, 1),
                   r + "rpn_head.objectness_logits.bias": (2 * NA,),
                   r + "rpn_head.anchor_deltas.weight": (4 * NA, rpn, 1, 1),
                   r + "rpn_head.anchor_deltas.bias": (4 * NA,),
                   r + "anchor_generator.cell_anchors.0": (NA, 4)})
    d, p = 32 * w, "roi_heads.box_predictor."
    shapes.update({p + "cls_score.weight": (c + 1, d), p + "cls_score.bias": (c + 1,),
                   p + "bbox_pred.weight": (4 * (c + 1), d), p + "bbox_pred.bias": (4 * (c + 1),),
                   p + "cls_embed.weight": (c + 1, d // 8), p + "attr_linear1.weight": (d // 4, d + d // 8),
                   p + "attr_linear1.bias": (d // 4,), p + "attr_linear2.weight": (a + 1, d // 4),
                   p + "attr_linear2.bias": (a + 1,)})
    return shapes


def generate_anchors(base=16, ratios=(0.5, 1, 2), scales=(4, 8, 16, 32)):
    """py-faster-rcnn lib/rpn/generate_anchors.py: _ratio_enum then _scale_enum of [0, 0, base-1, base-1]."""
    def mk(ws, hs, xc, yc):
        return np.stack([xc - 0.5 * (ws - 1), yc - 0.5 * (hs - 1), xc + 0.5 * (ws - 1), yc + 0.5 * (hs - 1)], 1)

    w = h = float(base)
    xc = yc = 0.5 * (base - 1)
    ws = np.round(np.sqrt(w * h / np.array(ratios, dtype=np.float64)))
    hs = np.round(ws * np.array(ratios, dtype=np.float64))
    out = []
    for rw, rh in zip(ws, hs):
        out.append(mk(rw * np.array(scales, dtype=np.float64), rh * np.array(scales, dtype=np.float64), xc, yc))
    return np.vstack(out)


GAINS = {"anchor_deltas": 1e-3, "objectness_logits": 1e-2, "cls_score": 1e-2, "attr_linear1": 1e-2}


def bua_weights(seed=1, **over):
    """Random weights in the layout; the BatchNorm counters int64 (as torch saves them), the anchors caffe's."""
    out = random_weights(seed, bua_layout(**over), GAINS)
    for k in out:
        if k.endswith("num_batches_tracked"):
            out[k] = np.array(270000, dtype=np.int64)
    out["proposal_generator.anchor_generator.cell_anchors.0"] = generate_anchors().astype(np.float32)
    return out


def save_pth(path, weights, wrap=True):
    sd = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    torch.save({"model": sd, "iteration": 270000} if wrap else sd, str(path))
    return str(path)


@pytest.fixture(scope="module")
def bua(tmp_path_factory):
    weights = bua_weights()
    return save_pth(tmp_path_factory.mktemp("bua") / "bua_tiny.pth", weights), weights


# -- float64 references transcribed from bottom-up-attention.pytorch ---------------------------------------------
def maskrcnn_nms(boxes, scores, thresh):
    """nms_cpu.cpp: by decreasing score, +1 areas, suppress when IoU >= thresh; survivors in index order."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    gone = np.zeros(len(boxes), bool)
    for n, i in enumerate(order):
        if gone[i]:
            continue
        for j in order[n + 1:]:
            if gone[j]:
                continue
            iw = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1)
            ih = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1)
            inter = iw * ih
            if inter / (areas[i] + areas[j] - inter) >= thresh:
                gone[j] = True
    return np.nonzero(~gone)[0]


def bua_rpn(c4, Wt, hw, scale, pre, post, nms_thresh, min_size):
    """StandardBUARPNHead + BUARPNOutputs.predict_* + find_top_bua_rpn_proposals, one image, float64."""
    r = "proposal_generator.rpn_head."
    t = F.relu(F.conv2d(c4, t64(Wt[r + "conv.weight"]), t64(Wt[r + "conv.bias"]), padding=1))
    obj = F.conv2d(t, t64(Wt[r + "objectness_logits.weight"]), t64(Wt[r + "objectness_logits.bias"]))[0].numpy()
    dl = F.conv2d(t, t64(Wt[r + "anchor_deltas.weight"]), t64(Wt[r + "anchor_deltas.bias"]))[0].numpy()
    hf, wf = obj.shape[-2:]
    o = obj.reshape(2, NA, hf, wf)  # view(N, 2, A, H, W), softmax over dim 1, keep [1:]
    prob = np.exp(o[1]) / (np.exp(o[0]) + np.exp(o[1]))
    score = prob.transpose(1, 2, 0).reshape(-1)
    d = dl.reshape(NA, 4, hf, wf).transpose(2, 3, 0, 1).reshape(-1, 4)
    cell = Wt["proposal_generator.anchor_generator.cell_anchors.0"].astype(np.float64)
    a = np.array([[x * 16, y * 16, x * 16, y * 16] + c for y in range(hf) for x in range(wf) for c in cell])
    aw, ah = a[:, 2] - a[:, 0] + 1, a[:, 3] - a[:, 1] + 1
    cx, cy = a[:, 0] + 0.5 * aw, a[:, 1] + 0.5 * ah
    clamp = math.log(1000 / 16)
    pw, ph = np.exp(np.minimum(d[:, 2], clamp)) * aw, np.exp(np.minimum(d[:, 3], clamp)) * ah
    px, py = d[:, 0] * aw + cx, d[:, 1] * ah + cy
    b = np.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], 1)
    h, w = hw
    b = np.clip(b, 0, [w - 1, h - 1, w - 1, h - 1])
    ok = (b[:, 3] > b[:, 1]) & (b[:, 2] > b[:, 0])
    b, score = b[ok], score[ok]
    thr = min_size * scale
    ok = (b[:, 2] - b[:, 0] + 1 > thr) & (b[:, 3] - b[:, 1] + 1 > thr)
    removed = int((~ok).sum())
    b, score = b[ok], score[ok]
    top = np.argsort(-score, kind="stable")[:pre]
    b, score = b[top], score[top]
    keep = maskrcnn_nms(b, score, nms_thresh)
    return b[keep[:post]], removed, len(b) - len(keep), len(keep)


def bua_heads(f, Wt):
    """BUACaffeFastRCNNOutputLayers (attr_on) + predict_probs: caffe order, background / no-attribute first."""
    p = "roi_heads.box_predictor."
    lin = lambda x, n: x @ t64(Wt[p + n + ".weight"]).T + t64(Wt[p + n + ".bias"])  # noqa: E731
    scores = lin(f, "cls_score")
    emb = t64(Wt[p + "cls_embed.weight"])[scores.argmax(1)]
    attr = torch.softmax(lin(F.relu(lin(torch.cat([f, emb], 1), "attr_linear1")), "attr_linear2"), -1)
    return torch.softmax(scores, -1), attr


def bua_region(c4, box, Wt):
    x = caffe_roi_pool(c4[0], box)[None]
    for j in range(BLOCKS[3]):
        x = block(x, Wt, f"roi_heads.res5.{j}", 1, 2, j == 0)
    return x.mean(dim=(2, 3))[0]


def save_roi_features_select(dets, scores, conf_thresh, min_boxes, max_boxes):
    """utils/extract_utils.py save_roi_features: per class 1.., nms 0.3, max_conf, 10-100 by confidence."""
    max_conf = np.zeros(len(dets))
    for c in range(1, scores.shape[1]):
        keep = maskrcnn_nms(dets, scores[:, c], 0.3)
        max_conf[keep] = np.where(scores[keep, c] > max_conf[keep], scores[keep, c], max_conf[keep])
    keep = np.nonzero(max_conf >= conf_thresh)[0]
    if len(keep) < min_boxes:
        keep = np.argsort(-max_conf, kind="stable")[:min_boxes]
    elif len(keep) > max_boxes:
        keep = np.argsort(-max_conf, kind="stable")[:max_boxes]
    return keep.tolist()


# -- tests ---------------------------------------------------------------------------------------------------
def test_loader_detects_the_layout_and_maps_every_key(bua):
    path, weights = bua
    ex = create_extractor("vg-regions", weights=path, **TINY)
    rep = ex.load_report
    assert ex.layout == "bua-caffe" and rep.layout == "bua-caffe" and rep.anchors == "checkpoint"
    counters = sorted(k for k in weights if k.endswith("num_batches_tracked"))
    assert len(counters) == 3 * (BLOCKS[2] + BLOCKS[3]) + 2  # conv1-3 of each block, one shortcut a stage
    assert sorted(rep.used) == sorted(k for k in weights if k not in counters) and rep.missing == []
    assert dict(rep.ignored) == {k: "BatchNorm step counter, unused at inference" for k in counters}
    sd = ex.model.state_dict()
    assert set(sd) == set(weights) - set(counters) - {"proposal_generator.anchor_generator.cell_anchors.0"}
    for k in sd:
        assert np.array_equal(sd[k].numpy(), weights[k]), k
    assert np.array_equal(ex.model.cell_anchors.numpy(), weights["proposal_generator.anchor_generator.cell_anchors.0"])
    assert ex.model.roi_heads["box_predictor"].bbox_pred.out_features == 4 * (C + 1)  # 6404 at full size
    pre = ex.preprocessing()
    assert pre["layout"] == "bua-caffe" and pre["rpn"]["min_size"] == 16.0
    assert pre["weights_load"]["anchors"] == "checkpoint"


def test_generated_anchors_are_caffe_generate_anchors(bua, tmp_path):
    """A file without the anchors buffer runs with py-faster-rcnn's anchors (what the caffe model used)."""
    weights = dict(bua[1])
    del weights["proposal_generator.anchor_generator.cell_anchors.0"]
    p = save_pth(tmp_path / "noanchors.pth", weights, wrap=False)
    ex = create_extractor("vg-regions", weights=p, **TINY)
    assert ex.load_report.anchors == "generated" and ex.load_report.missing == []
    np.testing.assert_array_equal(ex.model.cell_anchors.numpy(), generate_anchors())
    assert generate_anchors()[0].tolist() == [-38.0, -16.0, 53.0, 31.0]  # ratio 0.5 (23 x 12 base) x scale 4


@pytest.mark.parametrize("image,nms_thresh,post", [(0, 0.7, 12), (2, 0.5, 3)])  # each has a pair the +1 IoU decides
def test_rpn_proposals_equal_bottom_up_attention_pytorch(bua, image, nms_thresh, post):
    path, Wt = bua
    ex = create_extractor("vg-regions", weights=path, **TINY).to("cpu", torch.float32)
    x64, scale = ref_input(images()[image])
    c4 = ref_c4(x64, Wt)
    h, w = x64.shape[-2:]
    s = RPNSettings(pre_nms_topk=60, post_nms_topk=post, nms_thresh=nms_thresh, min_size=30.0)
    with torch.no_grad():
        got = ex.model.proposals(c4.float(), [tuple(c4.shape[-2:])], [(h, w)], s, [scale])[0].numpy()
    ref, removed, suppressed, survivors = bua_rpn(c4, Wt, (h, w), scale, 60, post, nms_thresh, 30.0)
    assert removed > 0 and suppressed > 0 and survivors > len(ref) == post  # min size, NMS, post_nms_topk act
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)
    assert (got[:, 2] <= w - 1).all() and (got[:, 3] <= h - 1).all()


def test_region_features_and_heads_equal_float64_graph(bua):
    path, Wt = bua
    ex = create_extractor("vg-regions", weights=path, **TINY).to("cpu", torch.float32)
    x, _ = ex.prepare(ex.preprocess(images()[1])["image"])
    rng = np.random.default_rng(7)
    h, w = x.shape[-2:]
    boxes = torch.from_numpy(np.minimum(random_boxes(rng, 6, side=min(h, w) / 2), [w - 1, h - 1] * 2)).float()
    with torch.no_grad():
        c4, sizes16 = ex.model.backbone(x[None], [(h, w)])
        feats = ex.model.region_features(c4, sizes16, [boxes])
        probs, attr = ex.model.predict(feats)
    r4 = ref_c4(x[None].double(), Wt)
    ref = torch.stack([bua_region(r4, b.double().tolist(), Wt) for b in boxes])
    np.testing.assert_allclose(feats.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
    rp, ra = bua_heads(ref, Wt)  # caffe order; ours has column 0 moved last
    np.testing.assert_allclose(np.roll(probs.numpy(), 1, axis=1), rp.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.roll(attr.numpy(), 1, axis=1), ra.numpy(), atol=1e-5)


def test_stored_rows_follow_save_roi_features(bua):
    """Selection, cls_prob (background first), class / attribute ids and scores as save_roi_features."""
    path, Wt = bua
    det, out = detect_and_forward(path, images()[2])
    caffe = np.roll(det["probs"].numpy().astype(np.float64), 1, axis=1)
    ref = save_roi_features_select(det["boxes"].numpy().astype(np.float64), caffe, 0.2, 3, 12)
    n = int(out["count"][0])
    assert det["keep"].tolist() == ref and n == len(ref)
    rp, ra = bua_heads(torch.from_numpy(out["regions"][0, :n].astype(np.float64)), Wt)
    np.testing.assert_allclose(out["cls_prob"][0, :n], rp.numpy(), atol=1e-5)
    assert np.array_equal(out["class_ids"][0, :n], rp.numpy()[:, 1:].argmax(1))
    np.testing.assert_allclose(out["class_scores"][0, :n], rp.numpy()[:, 1:].max(1), atol=1e-5)
    assert np.array_equal(out["attr_ids"][0, :n], ra.numpy()[:, 1:].argmax(1))
    np.testing.assert_allclose(out["attr_scores"][0, :n], ra.numpy()[:, 1:].max(1), atol=1e-5)


def test_batch_rows_equal_single_image_rows(bua):
    path, _ = bua
    ex = create_extractor("vg-regions", weights=path, **TINY).to("cpu", torch.float32)
    imgs = images()
    batch = ex.forward(ex.collate([ex.preprocess(im) for im in imgs]))
    for i, im in enumerate(imgs):
        one = ex.forward(ex.collate([ex.preprocess(im)]))
        assert np.array_equal(batch["class_ids"][i], one["class_ids"][0]) and batch["count"][i] == one["count"][0]
        for k in ("regions", "boxes", "cls_prob", "attr_scores"):
            np.testing.assert_allclose(batch[k][i], one[k][0], rtol=1e-4, atol=1e-4, err_msg=k)


# -- bad input -----------------------------------------------------------------------------------------------
def test_forced_layout_must_match_the_file(bua):
    path, _ = bua
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=path, layout="detectron2", **TINY)
    assert str(e.value) == (f"weights {path!r} are in the bua-caffe layout (they have roi_heads.box_predictor."
                            "attr_linear1.weight), not layout=detectron2; drop --set layout or set layout=bua-caffe")
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", layout="caffe")
    assert str(e.value) == "layout='caffe' is not a checkpoint layout; use auto, detectron2, bua-caffe"


class Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_bad_pth_files_are_one_line_errors(bua, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "cut.pth"
    p.write_bytes(open(bua[0], "rb").read()[:3000])
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=str(p), **TINY)
    assert str(e.value).startswith(f"weights file {str(p)!r} cannot be read (")
    assert str(e.value).endswith("); pass a torch state dict (.pth) or a .safetensors file")
    p = tmp_path / "evil.pth"
    torch.save({"model": {"x": Evil()}}, str(p))  # weights_only refuses the global before calling it
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=str(p), **TINY)
    assert str(e.value) == (f"weights file {str(p)!r} cannot be read (UnpicklingError); pass a torch state dict "
                            "(.pth) or a .safetensors file")
    assert not (tmp_path / "pwned").exists()
    weights = dict(bua[1], **{"proposal_generator.anchor_generator.cell_anchors.0": np.zeros((9, 4), np.float32)})
    p = save_pth(tmp_path / "anchors.pth", weights)
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=p, **TINY)
    assert str(e.value) == (f"weights {p!r}: proposal_generator.anchor_generator.cell_anchors.0 has shape (9, 4), "
                            "the RPN has 12 anchors of 4 coordinates; pass the checkpoint's own anchors")
    p = save_pth(tmp_path / "d2rpn.pth", dict(bua[1], **{
        "proposal_generator.rpn_head.objectness_logits.weight": np.zeros((NA, RPN, 1, 1), np.float32)}))
    with pytest.raises(FeatstoreError) as e:
        create_extractor("vg-regions", weights=p, **TINY)
    assert str(e.value) == (f"weights {p!r}: proposal_generator.rpn_head.objectness_logits.weight has shape "
                            "(12, 8, 1, 1), the model expects (24, 8, 1, 1); set the architecture options (width, "
                            "blocks, rpn_channels, num_classes, num_attrs) to the checkpoint's")


def test_cli_extracts_from_the_pth_and_records_the_layout(bua, tmp_path):
    _, _, fs = cli_extract(bua[0], tmp_path)
    pre = fs.record["recipe"]["preprocessing"]
    assert pre["layout"] == "bua-caffe" and pre["rpn"]["min_size"] == 16.0
    assert pre["weights_load"]["missing"] == [] and pre["weights_load"]["anchors"] == "checkpoint"
    counts = fs.read("count")
    assert len(counts) == len(fs.keys) and ((counts >= 3) & (counts <= 12)).all()
