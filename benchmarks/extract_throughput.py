"""Extraction throughput: images/s per extractor end to end through ``run_extraction``, against a naive loop.

    python benchmarks/extract_throughput.py [--device auto|cpu|cuda] [--quick] [--n 4096]
        [--extractors grid,roi,dinov2-multilayer] [--batch-size B] [--workers W] [--baseline-n M]
        [--image-cache] [--repeats R]

Data: ``--n`` synthetic PNG images (random smooth content plus noise; sizes drawn around 500x400, width
450-550, height 350-450), written once into a temporary Hateful-Memes-style folder (``train.jsonl`` +
``img/``) and read through ``featstore.datasets.load_dataset``. ``--unique`` images are distinct; the rest
are byte copies under new names, so every file is still opened and decoded.

Pipeline (what is timed, per extractor): ``run_extraction`` into a fresh temporary store - DataLoader
workers decode + resize, batched ``forward`` on the device (bf16 autocast on CUDA), a writer thread writing
chunks, the final commit. Warm-up: the same call on the first images into a separate feature set first.

Baseline (same run, same images, the SAME extractor object): one image at a time, no DataLoader -
``PIL.Image.open(...).convert("RGB")``, ``extractor.preprocess``, ``extractor.forward`` on a batch of one,
then ``np.save`` per image (MMF layout: ``<key>.npy`` regions + ``<key>_info.npy`` the other arrays).
The store is then reopened and its rows compared with the baseline's files, so both paths provably
computed the same features (column ``max rel diff``; a mismatch fails the run with exit status 1).

Column ``fwd threads``: the forward pass's intra-op threads after ``ForwardThreads`` decided (lowered when
the loop waited on the decoding workers; pipeline / warm-cache pipeline).

``--image-cache``: a ``DecodedImageCache`` (``featstore extract --image-cache``) is filled with every image
once before the extractors run (timed and printed, not part of any rate), and each extractor is timed a
second time with the pipeline reading pixels from that warm cache instead of decoding PNGs - what the
second and later extractors over the same images see. Column ``pipeline img/s (warm image cache)`` and its
speed-up over the naive loop; the cached run's arrays must equal the uncached run's exactly (else exit 1).

Models: full-size architectures with random weights (``weights=None``; no download). Random-init ResNet-152
activations exceed float16's range, so every extractor stores ``dtype=float32`` here (twice the bytes
of the float16 default: a conservative figure). ``--quick``: tiny configurations (ResNet-18 backbones at
64 px; a 4-layer, 64-wide DINOv2 saved with ``save_pretrained`` to a temporary folder and passed as
``weights``, since the extractor's random init is always ViT-L/14).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from _common import (Parser, Stopwatch, fmt, format_table, goal_status, header_lines, name_list, positive_int,
                     resolve_device, run_main, synchronize)

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from featstore.datasets import load_dataset  # noqa: E402
from featstore.errors import FeatstoreError  # noqa: E402
from featstore.extractors import create_extractor  # noqa: E402
from featstore.runner import ExtractOptions, run_extraction  # noqa: E402
from featstore.runner.prefill import prefill_image_cache  # noqa: E402
from featstore.store import open_store  # noqa: E402

IMAGE_EXTRACTORS = ("grid", "roi", "dinov2", "dinov2-multilayer")
DEFAULT_EXTRACTORS = ("grid", "roi", "dinov2-multilayer")
# GPU goals (images/s, full sizes, one GPU): the reference lines printed by every run.
GPU_GOALS = {"dinov2-multilayer": ("DINOv2 ViT-L/14 multilayer 518 px", 400.0),
             "grid": ("ResNet-152 grid 224 px", 6000.0),
             "roi": ("ResNet-152 roi 600 px", 1200.0)}
CPU_SPEEDUP_GOAL = 5.0
FULL_CUDA_BATCH = {"grid": 256, "roi": 64, "dinov2": 64, "dinov2-multilayer": 64}


@dataclass
class Setup:
    """One extractor to benchmark: registry name, config keyword arguments, a description."""

    name: str
    config: Dict[str, object]
    describe: str


def tiny_dinov2_folder(root: Path, image_size: int) -> Path:
    """A randomly initialised 4-layer, 64-wide DINOv2 (patch 14) written by ``save_pretrained``."""
    from transformers import Dinov2Config, Dinov2Model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's shard bar would break the printed report
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                                     patch_size=14, image_size=image_size))
    out = root / "tiny-dinov2"
    model.save_pretrained(out)
    return out


def setups(names: Sequence[str], quick: bool, workdir: Path) -> List[Setup]:
    """Extractor configs: full sizes with random weights, or tiny ones for ``--quick``."""
    out = []
    for name in names:
        if name == "grid":
            cfg = dict(backbone="resnet18", image_size=64) if quick else dict(backbone="resnet152", image_size=224)
            out.append(Setup(name, dict(cfg, weights=None, dtype="float32"),
                             f"{cfg['backbone']} {cfg['image_size']}px 6x6"))
        elif name == "roi":
            cfg = (dict(backbone="resnet18", shorter_side=64, max_side=112, roi_output=7) if quick
                   else dict(backbone="resnet152", shorter_side=600, max_side=1000))
            out.append(Setup(name, dict(cfg, weights=None, dtype="float32"),
                             f"{cfg['backbone']} short side {cfg['shorter_side']}px, 36 rois"
                             + (" (roi_output 7)" if quick else "")))
        else:  # dinov2, dinov2-multilayer
            multi = name == "dinov2-multilayer"
            if quick:
                folder = tiny_dinov2_folder(workdir, 84)
                cfg: Dict[str, object] = dict(weights=str(folder), image_size=84)  # 6x6 patches: 36 regions
                if multi:
                    cfg["layers"] = (1, 2, 3, 4)
                desc = "tiny ViT (4x64, patch 14) 84px"
            else:
                cfg = dict(weights=None)  # random ViT-L/14 at 518 px, the extractor's defaults
                desc = "ViT-L/14 518px"
            out.append(Setup(name, dict(cfg, dtype="float32"), desc + (", 4 layers" if multi else "")))
    return out


# -------------------------------------------------------------------------------------------- data
def make_images(root: Path, n: int, unique: int, seed: int = 0) -> Path:
    """``n`` PNGs (``unique`` distinct, the rest byte copies) and ``train.jsonl``; returns the jsonl path.

    Content: a random 8x6 colour field upsampled bicubically (smooth, photo-like gradients) plus uniform
    noise in +-24 grey levels; size (W, H) uniform in 450..550 x 350..450.
    """
    rng = np.random.default_rng(seed)
    img_dir = root / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = img_dir / f"{i:05d}.png"
        if i < unique:
            w, h = int(rng.integers(450, 551)), int(rng.integers(350, 451))
            base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
            arr = np.asarray(base, dtype=np.int16) + rng.integers(-24, 25, (h, w, 3), dtype=np.int16)
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(name, compress_level=6)
        else:
            shutil.copyfile(img_dir / f"{i % unique:05d}.png", name)
        rows.append({"id": i + 1, "img": f"img/{i:05d}.png", "label": i % 2, "text": f"synthetic meme {i}"})
    manifest = root / "train.jsonl"
    with open(manifest, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return manifest


# -------------------------------------------------------------------------------------------- paths
def naive_loop(ext, items: Sequence[tuple], out_dir: Path) -> None:
    """The users' loop: per image PIL decode, preprocess, forward on a batch of one, ``np.save``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for key, path in items:
            with Image.open(path) as f:
                img = f.convert("RGB")
            out = ext.forward(ext.collate([ext.preprocess(img)]))
            np.save(out_dir / f"{key}.npy", out["regions"][0])
            np.save(out_dir / f"{key}_info.npy", {k: v[0] for k, v in out.items() if k != "regions"},
                    allow_pickle=True)


def compare_with_store(store_dir: Path, set_name: str, out_dir: Path, keys: Sequence[str]) -> float:
    """Reopen the store; max over ``regions``/``pooled`` of max|store - naive| / max|naive|.

    Also checks ``boxes``/``image_size`` exactly. Raises FeatstoreError when a row is missing.
    """
    fs = open_store(store_dir).open(set_name)
    got = fs.select(list(keys), ["regions", "pooled", "boxes", "image_size"])
    worst = 0.0
    for i, key in enumerate(keys):
        ref_regions = np.load(out_dir / f"{key}.npy")
        info = np.load(out_dir / f"{key}_info.npy", allow_pickle=True).item()
        for name, ref in (("regions", ref_regions), ("pooled", info["pooled"])):
            a, b = got[name][i].astype(np.float64), ref.astype(np.float64)
            worst = max(worst, float(np.abs(a[: b.shape[0]] - b).max() / max(np.abs(b).max(), 1e-12)))
        if not (np.array_equal(got["image_size"][i], info["image_size"])
                and np.allclose(got["boxes"][i], info["boxes"])):
            return float("inf")
    return worst


@dataclass
class Result:
    setup: Setup
    n: int
    batch_size: int
    workers: int
    pipeline_ips: float
    naive_n: int
    naive_ips: float
    max_rel_diff: float
    cached_ips: Optional[float] = None  # pipeline with a warm decoded-image cache (--image-cache)
    cached_identical: bool = True  # the cached run stored exactly the uncached run's arrays
    threads: str = "-"  # forward intra-op threads the run chose (ForwardThreads), pipeline / cached pipeline


def same_arrays(store_dir: Path, a: str, b: str) -> bool:
    """Whether feature sets ``a`` and ``b`` of the store hold bitwise-equal arrays under the same keys."""
    st = open_store(store_dir)
    fa, fb = st.open(a), st.open(b)
    return list(fa.keys) == list(fb.keys) and all(np.array_equal(fa.read(n), fb.read(n)) for n in fa.array_names)


def bench_one(setup: Setup, dataset, work: Path, device: torch.device, n_warm: int, batch_size: int,
              workers: int, naive_n: int, image_cache: Optional[Path] = None, repeats: int = 1) -> Result:
    """Time the pipeline (and, with ``image_cache``, the pipeline over that warm cache) and the naive loop,
    ``repeats`` rounds interleaved (pipeline, cached pipeline, naive); each path's best round is reported."""
    ext = create_extractor(setup.name, **setup.config)
    opts = ExtractOptions(batch_size=batch_size, num_workers=workers, device=device.type, progress=False)
    store_dir = work / f"store-{setup.name}"
    store = open_store(store_dir, create=True)
    # warm-up: same extractor object, the first images, its own feature set (cudnn/cuBLAS init, allocator)
    warm = _subset(dataset, n_warm)
    run_extraction(store, warm, setup.name, name=f"{setup.name}-warmup", extractor=ext, options=opts)
    items = [(s.image_key, s.image_path) for s in dataset.samples][:naive_n]
    naive_dir = work / f"naive-{setup.name}"
    naive_loop(ext, items[: min(3, len(items))], work / f"naive-warmup-{setup.name}")  # warm-up, batch of one
    best = {"pipeline": (0.0, None), "cached": (0.0, None), "naive": 0.0}
    identical, n = True, 0
    for i in range(repeats):
        suffix = "" if i == 0 else f"-r{i}"  # a new feature set each round: the same name would be a no-op
        with Stopwatch(device) as sw:
            summary = run_extraction(store, dataset, setup.name, name=setup.name + suffix, extractor=ext, options=opts)
        if summary.failures:
            first = next(iter(summary.failures.items()))
            raise FeatstoreError(f"{setup.name}: {len(summary.failures)} synthetic images failed "
                                 f"({first[0]}: {first[1]})")
        n = summary.n_written
        best["pipeline"] = max(best["pipeline"], (n / sw.seconds, summary.forward_threads), key=lambda t: t[0])
        if image_cache is not None:
            cached_opts = dataclasses.replace(opts, image_cache=str(image_cache))
            with Stopwatch(device) as sw_cached:
                cached = run_extraction(store, dataset, setup.name, name=f"{setup.name}-cached{suffix}", extractor=ext,
                                        options=cached_opts)
            best["cached"] = max(best["cached"], (cached.n_written / sw_cached.seconds, cached.forward_threads),
                                 key=lambda t: t[0])
            identical = identical and not cached.failures and same_arrays(store_dir, setup.name,
                                                                           f"{setup.name}-cached{suffix}")
        with Stopwatch(device) as sw_naive:
            naive_loop(ext, items, naive_dir)
        best["naive"] = max(best["naive"], len(items) / sw_naive.seconds)
    diff = compare_with_store(store_dir, setup.name, naive_dir, [k for k, _ in items])
    del ext
    synchronize(device)
    default = torch.get_num_threads()
    threads = f"{best['pipeline'][1] or default}" + (f" / {best['cached'][1] or default}" if image_cache else "")
    return Result(setup, n, batch_size, workers, best["pipeline"][0], len(items), best["naive"], diff,
                  best["cached"][0] if image_cache is not None else None, identical, threads)


def _subset(dataset, n: int):
    from dataclasses import replace

    return replace(dataset, samples=list(dataset.samples[:n]))


# -------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]]):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_device()
    p.add_argument("--quick", action="store_true", help="tiny models, 1024 images, naive loop on the first 256 (a few minutes on 2 CPU cores)")
    p.add_argument("--n", type=positive_int("--n"), default=None,
                   help="images (default: 4096 on CUDA, 1024 on CPU)")
    p.add_argument("--unique", type=positive_int("--unique"), default=512, help="distinct images among --n")
    p.add_argument("--extractors", default=",".join(DEFAULT_EXTRACTORS),
                   help=f"comma-separated, from {', '.join(IMAGE_EXTRACTORS)}")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                   help="pipeline batch size (default: 32 on CPU; on CUDA grid 256, roi/dinov2 64)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers (default: min(16, CPU count))")
    p.add_argument("--baseline-n", type=positive_int("--baseline-n"), default=None,
                   help="images for the naive loop, the first of the same set (default: 256)")
    p.add_argument("--workdir", default=None, help="where the images and stores go (default: a temp folder)")
    p.add_argument("--repeats", type=positive_int("--repeats"), default=1,
                   help="rounds per extractor (pipeline, cached pipeline, naive loop interleaved); best of each")
    p.add_argument("--image-cache", action="store_true",
                   help="also time each extractor reading pixels from a decoded-image cache filled beforehand "
                   "(warm: the second and later extractors over the same images)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    names = name_list("--extractors", args.extractors, IMAGE_EXTRACTORS, "extractor")
    if args.workers is not None and args.workers < 0:
        raise FeatstoreError(f"--workers {args.workers} must be >= 0; pass 0 for no DataLoader workers")
    if args.workdir is not None and not Path(args.workdir).is_dir():
        raise FeatstoreError(f"--workdir {args.workdir!r} is not an existing folder; create it or leave it out")
    cuda = device.type == "cuda"
    n = args.n or (1024 if args.quick or not cuda else 4096)
    workers = args.workers if args.workers is not None else min(16, os.cpu_count() or 1)
    naive_n = min(n, args.baseline_n or 256)  # the naive loop has no fixed costs: 256 images give its rate
    full = not args.quick

    for line in header_lines("extraction throughput (run_extraction vs a naive per-image loop)", device):
        print(line)
    tmp = tempfile.mkdtemp(prefix="featstore-bench-extract-", dir=args.workdir)
    work = Path(tmp)
    try:
        with Stopwatch(torch.device("cpu")) as sw_gen:
            manifest = make_images(work / "data", n, min(args.unique, n))
        dataset = load_dataset(manifest)
        print(f"data   : {n} synthetic PNGs ({min(args.unique, n)} distinct), ~500x400, written in "
              f"{sw_gen.seconds:.1f} s; sizes {'TINY (--quick)' if args.quick else 'full'}; weights random; "
              f"storage float32; amp {'bf16' if cuda else 'none'}")
        print(f"pipeline: run_extraction, {workers} DataLoader workers; baseline: naive loop on the first "
              f"{naive_n} of the same images")
        cache_dir = None
        if args.image_cache:
            cache_dir = work / "image-cache"
            with Stopwatch(torch.device("cpu")) as sw_fill:
                held = prefill_image_cache(dataset, str(cache_dir), num_workers=workers, progress=False).images
            print(f"image cache: {held} decoded images filled in {sw_fill.seconds:.1f} s (`featstore cache-images`, "
                  f"{workers} workers; not timed below); each extractor also runs the pipeline over this warm cache")
        print()
        results = []
        for s in setups(names, args.quick, work):
            bs = args.batch_size or (FULL_CUDA_BATCH[s.name] if cuda and full else 32)
            results.append(bench_one(s, dataset, work, device, min(n, 2 * bs), bs, workers, naive_n, cache_dir,
                                     args.repeats))
            r = results[-1]
            print(f"  done {s.name}: pipeline {fmt(r.pipeline_ips)} img/s, naive {fmt(r.naive_ips)} img/s"
                  + (f", pipeline with warm image cache {fmt(r.cached_ips)} img/s" if cache_dir else ""), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    tol = 5e-2 if cuda else 1e-3  # bf16 kernels differ between batch sizes; fp32 on CPU only by summation order
    rows = []
    for r in results:
        speedup = r.pipeline_ips / r.naive_ips
        row = [r.setup.name, r.setup.describe, r.n, r.batch_size, r.workers, r.threads, fmt(r.pipeline_ips),
               f"{fmt(r.naive_ips)} (n={r.naive_n})", f"{speedup:.2f}x",
               goal_status(speedup, CPU_SPEEDUP_GOAL, True, not cuda, "CPU goal"),
               f"{r.max_rel_diff:.1e}" + ("" if r.max_rel_diff <= tol else " MISMATCH")]
        if args.image_cache:
            row += [fmt(r.cached_ips) + ("" if r.cached_identical else " MISMATCH"),
                    f"{r.cached_ips / r.naive_ips:.2f}x"]
        rows.append(row)
    headers = ["extractor", "config", "images", "batch", "workers", "fwd threads", "pipeline img/s", "naive img/s",
               "speed-up",
               f"CPU goal >={CPU_SPEEDUP_GOAL:g}x", "max rel diff"]
    if args.image_cache:
        headers += ["pipeline img/s (warm image cache)", "speed-up (cache)"]
    print()
    print(format_table(headers, rows))
    print()
    print("GPU goals (one GPU, full sizes; reference):")
    measured = {r.setup.name: r.pipeline_ips for r in results}
    for name, (what, goal) in GPU_GOALS.items():
        got = measured.get(name)
        status = ("not run" if got is None else
                  goal_status(got, goal, True, cuda and full, "needs CUDA and full sizes"))
        print(f"  {what}: >= {goal:,.0f} images/s; measured {fmt(got)}: {status}")
    if any(r.max_rel_diff > tol for r in results):
        print(f"error: the store and the naive loop disagree beyond {tol:g} (relative); see 'max rel diff'")
        return 1
    if not all(r.cached_identical for r in results):
        print("error: the run over the warm image cache stored other arrays than the run without it")
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
