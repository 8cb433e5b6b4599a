"""vg-regions speed: batched box selection against the references' per-class NMS loop, and the detector's
images/s at batch 1 against batch 8, in one run.

    python benchmarks/vg_regions.py [--device auto|cpu|cuda] [--images 8] [--proposals 300] [--classes 1600]
        [--forward-images 8] [--width 16] [--blocks 2,2,2,1] [--shorter-side 240] [--max-side 400]
        [--post-nms-topk 100] [--full] [--repeats 2]

Selection (``vg_regions.select_regions``, the step that turns the 300 proposals' 1,601-way class
probabilities into 10-100 regions): ``--images`` images of ``--proposals`` random boxes (clusters in a
600 x 800 image) whose probabilities are softmaxes peaked on a few classes, as a trained detector's are.
Timed: ours, all images in one call (every (box, class) pair at or above the confidence floor through one
``batched`` NMS on the device), against the loop of bottom-up-attention's ``generate_tsv.py`` /
bottom-up-attention.pytorch's ``save_roi_features``: per image, for every class, one NMS call
(``torchvision.ops.nms`` on the +1 boxes, i.e. the compiled NMS those scripts call, without their
Python-level NMS) and the running max. Both must select the same boxes (checked). Best of ``--repeats``.

Forward (``VGRegionsExtractor.forward``: preprocessing on the device, backbone, RPN, RoIPool + res5 on every
proposal, heads, selection): random weights (no checkpoint is bundled) at a small architecture by default
(``--width 16``: 512-d regions, ``--blocks``, ``--shorter-side 240``), since the full ResNet-101 runs res5 on
300 crops of 14 x 14 x 1024 per image (about 1.4 TFLOP) and is for a GPU: ``--full`` sets the public
checkpoint's sizes (width 64, blocks 3,4,23,3, 600 / 1000, 300 proposals). ``--forward-images`` images of
random sizes around 500 x 375 (a quarter portrait) as batches of 1 and of 8, after one warm-up batch of each;
best of ``--repeats``; images/s and the batch-8 speed-up. Random weights give flat class probabilities, so
selection takes its slowest path (few confident boxes; the floor is lowered to every pair).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.ops import nms  # noqa: E402

from _common import (Parser, Stopwatch, fmt, format_table, header_lines, positive_int, resolve_device,  # noqa: E402
                     run_main)
from featstore.errors import FeatstoreError  # noqa: E402
from featstore.extractors import create_extractor  # noqa: E402
from featstore.extractors.vg_regions import pick, select_regions  # noqa: E402

CONF_THRESH, MIN_BOXES, MAX_BOXES, NMS_THRESH = 0.2, 10, 100, 0.3


def selection_inputs(n_images: int, n_boxes: int, n_classes: int, device: torch.device, seed: int = 0):
    """Boxes in clusters and peaked class probabilities (foreground columns only) per image."""
    g = torch.Generator().manual_seed(seed)
    boxes, probs = [], []
    for _ in range(n_images):
        centres = torch.rand(12, 2, generator=g) * torch.tensor([800.0, 600.0])
        c = centres[torch.randint(0, 12, (n_boxes,), generator=g)] + torch.randn(n_boxes, 2, generator=g) * 20
        half = 20 + torch.rand(n_boxes, 2, generator=g) * 120
        boxes.append(torch.cat([c - half, c + half], 1).clamp(0, 800).to(device))
        logits = torch.randn(n_boxes, n_classes + 1, generator=g)
        likely = torch.randint(0, 40, (n_boxes, 3), generator=g)  # a few plausible classes per box
        logits.scatter_add_(1, likely, 3.0 + 4.0 * torch.rand(n_boxes, 3, generator=g))
        probs.append(torch.softmax(logits, -1)[:, :n_classes].to(device))
    return boxes, probs


def reference_selection(boxes: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """generate_tsv.py / save_roi_features: for each class, NMS 0.3 on the +1 boxes and a running max."""
    b = torch.cat([boxes[:, :2], boxes[:, 2:] + 1.0], 1)
    max_conf = torch.zeros(len(boxes), dtype=probs.dtype, device=probs.device)
    for c in range(probs.shape[1]):
        s = probs[:, c]
        keep = nms(b, s, NMS_THRESH)
        max_conf[keep] = torch.where(s[keep] > max_conf[keep], s[keep], max_conf[keep])
    return pick(max_conf.double(), CONF_THRESH, MIN_BOXES, MAX_BOXES)


def time_best(fn, device: torch.device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        with Stopwatch(device) as sw:
            fn()
        best = min(best, sw.seconds)
    return best


def bench_selection(args, device: torch.device) -> List[List[str]]:
    boxes, probs = selection_inputs(args.images, args.proposals, args.classes, device)

    def ours():
        return select_regions(boxes, probs, nms_thresh=NMS_THRESH, conf_thresh=CONF_THRESH, min_boxes=MIN_BOXES,
                              max_boxes=MAX_BOXES)

    def loop():
        return [reference_selection(b, p) for b, p in zip(boxes, probs)]

    got, ref = ours(), loop()
    if [g.tolist() for g in got] != [r.tolist() for r in ref]:
        raise FeatstoreError("batched selection differs from the per-class loop; the benchmark compares equal work")
    kept = sum(len(g) for g in got) / len(got)
    t_ours, t_loop = time_best(ours, device, args.repeats), time_best(loop, device, args.repeats)
    n = args.images
    return [["per-class NMS loop (reference)", n, fmt(kept), fmt(1000 * t_loop / n), "1.00x"],
            ["batched (select_regions)", n, fmt(kept), fmt(1000 * t_ours / n), f"{fmt(t_loop / t_ours)}x"]]


def forward_images(n: int, seed: int = 1) -> List[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(450, 550)), int(rng.integers(330, 420))
        if i % 4 == 3:
            w, h = h, w
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        out.append(img)
    return out


def bench_forward(args, device: torch.device) -> List[List[str]]:
    cfg = dict(width=64, blocks=(3, 4, 23, 3), shorter_side=600, max_side=1000, post_nms_topk=300) if args.full else \
        dict(width=args.width, blocks=tuple(args.blocks), shorter_side=args.shorter_side, max_side=args.max_side,
             post_nms_topk=args.post_nms_topk)
    ex = create_extractor("vg-regions", **cfg).to(device)
    items = [ex.preprocess(im) for im in forward_images(args.forward_images)]
    rows, rates = [], {}
    for bs in (1, 8):
        batches = [ex.collate(items[i:i + bs]) for i in range(0, len(items), bs)]
        ex.forward(batches[0])  # warm-up

        def run():
            for b in batches:
                ex.forward(b)

        t = time_best(run, device, args.repeats)
        rates[bs] = len(items) / t
        rows.append([f"batch {bs}", len(items), fmt(rates[bs]), f"{fmt(rates[bs] / rates[1])}x"])
    return rows


def parse_blocks(s: str) -> List[int]:
    try:
        blocks = [int(v) for v in s.split(",")]
    except ValueError:
        raise FeatstoreError(f"--blocks {s!r} is not four comma-separated integers (res2..res5), e.g. 2,2,2,1") from None
    if len(blocks) != 4 or min(blocks) < 1:
        raise FeatstoreError(f"--blocks {s!r} is not four comma-separated integers >= 1 (res2..res5), e.g. 2,2,2,1")
    return blocks


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = Parser(description=__doc__.split("\n")[0])
    p.add_device()
    for flag, default in (("--images", 8), ("--proposals", 300), ("--classes", 1600), ("--forward-images", 8),
                          ("--width", 16), ("--shorter-side", 240), ("--max-side", 400), ("--post-nms-topk", 100),
                          ("--repeats", 2)):
        p.add_argument(flag, type=positive_int(flag), default=default)
    p.add_argument("--blocks", type=parse_blocks, default=[2, 2, 2, 1])
    p.add_argument("--full", action="store_true", help="the public checkpoint's sizes (for a GPU)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    print("\n".join(header_lines("vg-regions: selection and batched forward", device)))
    print()
    print(f"Selection: {args.proposals} proposals x {args.classes} classes per image, NMS {NMS_THRESH}, "
          f"conf >= {CONF_THRESH}, {MIN_BOXES}-{MAX_BOXES} boxes")
    print(format_table(["method", "images", "boxes kept / image", "ms / image", "speed-up"],
                       bench_selection(args, device)))
    print()
    arch = "full (64, 3,4,23,3, 600/1000, 300 proposals)" if args.full else \
        f"width {args.width}, blocks {args.blocks}, {args.shorter_side}/{args.max_side}, {args.post_nms_topk} proposals"
    print(f"Forward (random weights, {arch}, float32 on CPU / bf16 autocast on CUDA):")
    print(format_table(["batch", "images", "images / s", "vs batch 1"], bench_forward(args, device)))
    return 0


if __name__ == "__main__":
    run_main(main)
