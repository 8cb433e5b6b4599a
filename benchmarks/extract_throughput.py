"""Extraction throughput: images/s per extractor end to end through ``run_extraction``, against the most
the same extractor can do on this hardware (its forward-only ceiling), the loop clip-retrieval uses and a
naive loop.

    python benchmarks/extract_throughput.py [--device auto|cpu|cuda] [--quick] [--n 4096]
        [--extractors grid,roi,dinov2-multilayer] [--batch-size B] [--workers W] [--baseline-n M]
        [--no-image-cache] [--repeats R] [--size tiny|small|full] [--pairs fresh|inline]

Forward-only ceiling (same run, the SAME extractor object): the first ``CEILING_BATCHES`` batches loaded as
the pipeline loads them (decoded and, for grid / roi / dinov2, resized to uint8 pixels that ``forward``
normalises batched on the device), collated into memory beforehand (pinned on CUDA), then only
``extractor.forward`` timed over them: no decode, no resize, no DataLoader, no writer (the copy to the device
and the copy back are inside ``forward``, as in the pipeline; on CUDA the same batches already on the GPU
give the ceiling without the host-to-device copy). It is measured after every pipeline run (interleaved
with them, so under the same load), at the pipeline's batch size and at the intra-op threads that run's
forward used (the default, and the count ``ForwardThreads`` lowered it to, if it did), after two warm-up
batches; best of all. It is never taken below the pipeline's own forward calls (images / seconds inside
``forward`` in its best run): a standalone figure under that means the load moved while it ran (it did for
roi in session 3), and the summary says when the bound was used. Column ``pipeline ... (of ceiling)``: the
pipeline's rate over the ceiling's, cold (decoding PNGs) and over a warm image cache (its resized entries
for the extractor filled beforehand); goal: warm >= 85% for grid, roi, dinov2-multilayer.
Below the table, for each extractor, where the rest goes (``ExtractSummary.timing``): the loop waiting for
inputs, waiting for the writer, its forward calls slower than the ceiling's (cores shared with the decoding
workers), and setup + commit outside the loop; on CUDA the host-to-device copies.

clip-retrieval's loop (same run, all images; ``_clip_loop.py``): DataLoader workers decode and preprocess, a
batched forward, a synchronous copy back and every batch's arrays written with ``np.save`` before the next
batch; the pipeline must be at least as fast (column ``pipeline cold / it``: each round times the cold
pipeline and this loop back to back, in alternating order, and the column is the median over rounds of
their ratio, so the host's drift over the minutes between rounds cannot tilt it; the rate shown is the
loop's best). ``--pairs fresh`` (the default): the pair's two runs each in a fresh process, as a user's
script would run, both warmed up the same way (the pipeline's figure in the pair is that process's, not
the cold column's); ``--pairs inline``: both in this process, with the same extractor object.

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

Models (``--size``), random weights everywhere (no download): ``full`` (the default), the users'
architectures and inputs (ResNet-152 grid 224 px and roi 600 px, DINOv2 ViT-L/14 518 px); ``small``, real
architectures a 2-core CPU runs in minutes (torchvision's ResNet-50, grid at 224 px and roi at a 400 px short
side; DINOv2 ViT-S/14 built from facebook/dinov2-small's config at 224 px, multi-layer 3/6/9/12: the same
quarter-depth spacing as ViT-L's 6/12/18/24), 256 images and a naive loop on 64; ``tiny`` (``--quick``):
ResNet-18 backbones at 64 px and a 4-layer, 64-wide DINOv2. The DINOv2s are written by ``save_pretrained``
to a temporary folder and passed as ``weights``, since the extractor's random init is always ViT-L/14.
Random-init ResNet activations exceed float16's range, so every extractor stores ``dtype=float32`` here
(twice the bytes of the float16 default: a conservative figure).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from _clip_loop import clip_retrieval_loop, fresh_pair, pair_spec
from _common import (Parser, Stopwatch, fmt, format_table, goal_status, header_lines, load_average, name_list,
                     positive_int, resolve_device, run_main, synchronize)

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
FULL_CUDA_BATCH = {"grid": 256, "roi": 64, "dinov2": 64, "dinov2-multilayer": 64}
CEILING_GOAL = 0.85  # pipeline over a warm decoded-image cache / forward-only ceiling
CEILING_BATCHES = 8  # batches decoded into memory for the forward-only ceiling
PAIRINGS = ("fresh", "inline")  # --pairs: the cold pipeline against clip-retrieval's loop in fresh processes or here


@dataclass
class Setup:
    """One extractor to benchmark: registry name, config keyword arguments, a description."""

    name: str
    config: Dict[str, object]
    describe: str


SIZES = ("tiny", "small", "full")
# --size small: real architectures a CPU can run in minutes (ResNet-50 as torchvision builds it, DINOv2 ViT-S/14
# as facebook/dinov2-small's config.json describes it), at the input sizes their users run them at.
SMALL_DINOV2 = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                    image_size=518)


def dinov2_folder(root: Path, name: str, **config) -> Path:
    """A randomly initialised DINOv2 of ``config`` (``Dinov2Config`` fields) written by ``save_pretrained``."""
    from transformers import Dinov2Config, Dinov2Model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's shard bar would break the printed report
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(**config))
    out = root / name
    model.save_pretrained(out)
    return out


def tiny_dinov2_folder(root: Path, image_size: int) -> Path:
    """A randomly initialised 4-layer, 64-wide DINOv2 (patch 14) written by ``save_pretrained``."""
    return dinov2_folder(root, "tiny-dinov2", hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
                         mlp_ratio=2, patch_size=14, image_size=image_size)


def setups(names: Sequence[str], size: str, workdir: Path) -> List[Setup]:
    """Extractor configs at ``size``: ``full`` (the users' architectures and input sizes, random weights),
    ``small`` (real smaller architectures a CPU runs in minutes) or ``tiny`` (``--quick``)."""
    if size not in SIZES:
        raise FeatstoreError(f"size {size!r} is unknown; use one of {', '.join(SIZES)}")
    builders = {"grid": _grid_setup, "roi": _roi_setup, "dinov2": _dinov2_setup, "dinov2-multilayer": _dinov2_setup}
    return [builders[name](name, size, workdir) for name in names]


def _grid_setup(name: str, size: str, workdir: Path) -> Setup:
    cfg = {"tiny": dict(backbone="resnet18", image_size=64), "small": dict(backbone="resnet50", image_size=224),
           "full": dict(backbone="resnet152", image_size=224)}[size]
    return Setup(name, dict(cfg, weights=None, dtype="float32"), f"{cfg['backbone']} {cfg['image_size']}px 6x6")


def _roi_setup(name: str, size: str, workdir: Path) -> Setup:
    cfg = {"tiny": dict(backbone="resnet18", shorter_side=64, max_side=112, roi_output=7),
           "small": dict(backbone="resnet50", shorter_side=400, max_side=667),
           "full": dict(backbone="resnet152", shorter_side=600, max_side=1000)}[size]
    return Setup(name, dict(cfg, weights=None, dtype="float32"),
                 f"{cfg['backbone']} short side {cfg['shorter_side']}px, 36 rois"
                 + (" (roi_output 7)" if size == "tiny" else ""))


def _dinov2_setup(name: str, size: str, workdir: Path) -> Setup:
    multi = name == "dinov2-multilayer"
    if size == "tiny":
        cfg: Dict[str, object] = dict(weights=str(tiny_dinov2_folder(workdir, 84)), image_size=84)  # 6x6 patches
        layers, desc = (1, 2, 3, 4), "tiny ViT (4x64, patch 14) 84px"
    elif size == "small":
        folder = dinov2_folder(workdir, "dinov2-small", **SMALL_DINOV2)
        cfg, layers, desc = dict(weights=str(folder), image_size=224), (3, 6, 9, 12), "ViT-S/14 (dinov2-small) 224px"
    else:
        cfg, layers, desc = dict(weights=None), None, "ViT-L/14 518px"  # random ViT-L/14, the extractor's defaults
    if multi and layers is not None:
        cfg["layers"] = layers
    layer_desc = f", layers {'/'.join(map(str, layers or (6, 12, 18, 24)))}" if multi else ""
    return Setup(name, dict(cfg, dtype="float32"), desc + layer_desc)


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


def _map(batch, fn):
    """``fn`` applied to every tensor of a collated batch (a tensor, or dicts/lists/tuples of them)."""
    if torch.is_tensor(batch):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: _map(v, fn) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map(v, fn) for v in batch)
    return batch


def decoded_batches(ext, paths: Sequence[str], batch_size: int, device: torch.device) -> List[object]:
    """``paths`` loaded as the pipeline loads them (``load_input``: decoded with its pixel limit and, for an
    extractor with a ``resize_recipe()``, resized to uint8 pixels that ``forward`` normalises batched),
    preprocessed and collated into batches in memory, pinned on CUDA as the pipeline's loader pins them."""
    from featstore.runner.image_cache import load_input

    max_pixels, recipe = ExtractOptions().max_pixels, ext.resize_recipe()
    items = [ext.preprocess(load_input(p, recipe, max_pixels)) for p in paths]
    batches = [ext.collate(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    return [_map(b, lambda t: t.pin_memory()) for b in batches] if device.type == "cuda" else batches


def forward_ceiling(ext, batches: Sequence[object], device: torch.device, threads: Sequence[int]) -> Dict[str, float]:
    """Images/s of ``ext.forward`` alone over in-memory batches (the pipeline's batch size and inputs):
    ``host`` (batches in host memory, so the host-to-device copy and the copy back are included, as in the
    pipeline) and on CUDA ``device`` (batches already on the GPU: no host-to-device copy). Two warm-up
    batches first at each intra-op thread count in ``threads`` (the counts the pipeline's forward ran
    with); the best count is kept and the caller's count restored."""
    n = sum(len(next(iter(b.values()))) if isinstance(b, dict) else len(b) for b in batches)
    out: Dict[str, float] = {}
    kinds = [("host", batches)]
    if device.type == "cuda":
        kinds.append(("device", [_map(b, lambda t: t.to(device)) for b in batches]))
    before = torch.get_num_threads()
    counts = sorted(set(threads)) if device.type == "cpu" else [before]
    try:
        with torch.inference_mode():
            for kind, bs in kinds:
                for count in counts:
                    torch.set_num_threads(count)
                    for b in bs[:2]:
                        ext.forward(b)
                    with Stopwatch(device) as sw:
                        for b in bs:
                            ext.forward(b)
                    out[kind] = max(out.get(kind, 0.0), n / sw.seconds)
    finally:
        torch.set_num_threads(before)
    return out


def time_split(summary, n_ceiling_s: float) -> Dict[str, float]:
    """Where a pipeline run's seconds went beyond the forward-only ceiling, as shares of its wall time:
    ``inputs`` / ``writer`` (the loop waiting), ``forward`` (its forward calls slower than alone: cores
    shared with the decoding workers), ``setup`` (worker start, store open, commit: wall time outside the
    loop)."""
    t = summary.timing
    total = summary.seconds
    loop = sum(t.values())
    return {"inputs": t.get("inputs", 0.0) / total, "writer": t.get("writer", 0.0) / total,
            "forward": max(0.0, t.get("forward", 0.0) - n_ceiling_s) / total,
            "setup": max(0.0, total - loop) / total}


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
    ceiling: Dict[str, float] = dataclasses.field(default_factory=dict)  # forward_ceiling, best round
    clip_ips: float = float("nan")  # clip_retrieval_loop over all images, best round
    split_cold: Dict[str, float] = dataclasses.field(default_factory=dict)  # time_split of the best cold run
    split_warm: Dict[str, float] = dataclasses.field(default_factory=dict)  # time_split of the best warm run
    ceiling_alone: float = float("nan")  # forward_ceiling's own best ("host"), before the pipeline's bound
    loop_forward: float = float("nan")  # images / seconds inside forward, the pipeline's best run
    clip_pairs: List[float] = dataclasses.field(default_factory=list)  # cold pipeline / loop, per back-to-back pair
    pairing: str = "in-process"  # where the pairs ran: "in-process" (_cold_pair) or "fresh processes" (fresh_pair)


def same_arrays(store_dir: Path, a: str, b: str) -> bool:
    """Whether feature sets ``a`` and ``b`` of the store hold bitwise-equal arrays under the same keys."""
    st = open_store(store_dir)
    fa, fb = st.open(a), st.open(b)
    return list(fa.keys) == list(fb.keys) and all(np.array_equal(fa.read(n), fb.read(n)) for n in fa.array_names)


def bench_one(setup: Setup, dataset, work: Path, device: torch.device, n_warm: int, batch_size: int,
              workers: int, naive_n: int, image_cache: Optional[Path] = None, repeats: int = 1,
              fresh_pairs: bool = False) -> Result:
    """Time, ``repeats`` rounds interleaved, each path's best round reported: the pipeline cold (decoding
    PNGs) and clip-retrieval's loop, one pair per round, order alternating by round, their ratio kept per
    round (``fresh_pairs``: both in fresh processes, ``_clip_loop.fresh_pair``, beside the cold pipeline
    timed here; else back to back in this process, ``_cold_pair``), then the forward-only ceiling (at the
    intra-op threads that run used), with ``image_cache`` the pipeline over that cache made warm for this
    extractor (its resized entries filled beforehand, untimed) and the ceiling again, then the naive loop."""
    ext = create_extractor(setup.name, **setup.config)
    opts = ExtractOptions(batch_size=batch_size, num_workers=workers, device=device.type, progress=False)
    store_dir = work / f"store-{setup.name}"
    store = open_store(store_dir, create=True)
    # warm-up: same extractor object, the first images, its own feature set (cudnn/cuBLAS init, allocator)
    run_extraction(store, _subset(dataset, n_warm), setup.name, name=f"{setup.name}-warmup", extractor=ext,
                   options=opts)
    if image_cache is not None and ext.resize_recipe() is not None:  # warm for this extractor: resized entries
        prefill_image_cache(dataset, str(image_cache), num_workers=workers, progress=False,
                            recipes=[ext.resize_recipe()])
    items = [(s.image_key, s.image_path) for s in dataset.samples][:naive_n]
    paths = [s.image_path for s in dataset.samples]
    batches = decoded_batches(ext, paths[:min(len(paths), CEILING_BATCHES * batch_size)], batch_size, device)
    naive_dir = work / f"naive-{setup.name}"
    naive_loop(ext, items[: min(3, len(items))], work / f"naive-warmup-{setup.name}")  # warm-up, batch of one
    best = {"pipeline": (0.0, None), "cached": (0.0, None), "naive": 0.0, "clip": 0.0, "loop_forward": 0.0,
            "pairs": []}
    ceiling: Dict[str, float] = {}
    identical = True
    default_threads = torch.get_num_threads()
    for i in range(repeats):
        suffix = "" if i == 0 else f"-r{i}"  # a new feature set each round: the same name would be a no-op
        runs = [("pipeline", opts, setup.name + suffix)]
        if image_cache is not None:
            runs.append(("cached", dataclasses.replace(opts, image_cache=str(image_cache)),
                         f"{setup.name}-cached{suffix}"))
        for kind, run_opts, set_name in runs:
            if kind == "pipeline" and fresh_pairs:
                summary = _pipeline(store, dataset, setup, ext, run_opts, set_name, device)
                _record_pair(best, *fresh_pair(i, pair_spec(setup.name, setup.config, dataset.source, batch_size,
                                                            workers, device, n_warm, work)))
            elif kind == "pipeline":  # the cold pipeline and clip-retrieval's loop back to back, order alternating
                summary = _cold_pair(i, best, lambda: _pipeline(store, dataset, setup, ext, run_opts, set_name, device),
                                     lambda: len(paths) / _timed(device, lambda: clip_retrieval_loop(
                                         ext, paths, work / f"clip-{setup.name}", batch_size, workers, device)))
            else:
                summary = _pipeline(store, dataset, setup, ext, run_opts, set_name, device)
            best[kind] = max(best[kind], (summary.n_written / summary.seconds, summary), key=lambda t: t[0])
            best["loop_forward"] = max(best["loop_forward"], summary.n_written / max(summary.timing["forward"], 1e-9))
            threads = {default_threads, summary.forward_threads or default_threads}
            for k, ips in forward_ceiling(ext, batches, device, sorted(threads)).items():
                ceiling[k] = max(ceiling.get(k, 0.0), ips)
        if image_cache is not None:
            identical = identical and same_arrays(store_dir, setup.name, f"{setup.name}-cached{suffix}")
        best["naive"] = max(best["naive"], len(items) / _timed(device, lambda: naive_loop(ext, items, naive_dir)))
    diff = compare_with_store(store_dir, setup.name, naive_dir, [k for k, _ in items])
    del ext, batches
    synchronize(device)
    result = _result(setup, best, ceiling, identical, diff, batch_size, workers, len(items), default_threads,
                     image_cache is not None)
    return dataclasses.replace(result, pairing="fresh processes" if fresh_pairs else "in-process")


def _cold_pair(round_i: int, best: dict, pipeline, clip_loop):
    """The cold pipeline and clip-retrieval's loop timed back to back (the pipeline first in even rounds,
    the loop first in odd ones), so the host's drift over minutes cannot tilt their ratio; appends the
    pair's pipeline / loop ratio to ``best["pairs"]`` and keeps the loop's best rate. Returns the pipeline's
    summary."""
    if round_i % 2:
        clip_ips = clip_loop()
        summary = pipeline()
    else:
        summary = pipeline()
        clip_ips = clip_loop()
    _record_pair(best, summary.n_written / summary.seconds, clip_ips)
    return summary


def _record_pair(best: dict, pipeline_ips: float, clip_ips: float) -> None:
    """One pair's pipeline / loop ratio appended to ``best["pairs"]``; the loop's best rate kept."""
    best["clip"] = max(best["clip"], clip_ips)
    best["pairs"].append(pipeline_ips / clip_ips)


def _timed(device: torch.device, fn) -> float:
    with Stopwatch(device) as sw:
        fn()
    return sw.seconds


def _result(setup: Setup, best: dict, ceiling: Dict[str, float], identical: bool, diff: float, batch_size: int,
            workers: int, naive_n: int, default_threads: int, cached: bool) -> Result:
    """The Result of one extractor's rounds. The ceiling is never below the pipeline's own forward calls
    (images / seconds in forward, the best run): if the standalone measurement came out lower, the load
    moved while it ran, and the pipeline's figure is the better estimate of what forward alone does."""
    measured = dict(ceiling)
    if best["loop_forward"] > ceiling["host"]:
        ceiling = dict(ceiling, host=best["loop_forward"])
    pipe, warm = best["pipeline"][1], best["cached"][1]
    threads = f"{pipe.forward_threads or default_threads}" + (
        f" / {warm.forward_threads or default_threads}" if cached else "")
    per_image_s = 1.0 / ceiling["host"]
    splits = {k: time_split(s, s.n_written * per_image_s) if s else {} for k, s in (("pipeline", pipe),
                                                                                    ("cached", warm))}
    return Result(setup, pipe.n_written, batch_size, workers, best["pipeline"][0], naive_n, best["naive"], diff,
                  best["cached"][0] if cached else None, identical, threads, ceiling, best["clip"],
                  splits["pipeline"], splits["cached"], measured["host"], best["loop_forward"], best["pairs"])


def _pipeline(store, dataset, setup: Setup, ext, opts, name: str, device: torch.device):
    """One timed ``run_extraction`` into feature set ``name``; its summary with ``seconds`` as measured here."""
    with Stopwatch(device) as sw:
        summary = run_extraction(store, dataset, setup.name, name=name, extractor=ext, options=opts)
    if summary.failures:
        first = next(iter(summary.failures.items()))
        raise FeatstoreError(f"{setup.name}: {len(summary.failures)} synthetic images failed ({first[0]}: {first[1]})")
    return dataclasses.replace(summary, seconds=sw.seconds)


def _subset(dataset, n: int):
    from dataclasses import replace

    return replace(dataset, samples=list(dataset.samples[:n]))


# -------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]]):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_device()
    p.add_argument("--quick", action="store_true", help="tiny models, 1024 images, naive loop on the first 256 (a few minutes on "
                   "2 CPU cores); the same as --size tiny")
    p.add_argument("--size", choices=SIZES, default=None,
                   help="model sizes: full (the users' architectures and inputs; the default), small (ResNet-50 at "
                   "224 / 400 px, DINOv2 ViT-S/14 at 224 px: real architectures a CPU runs in minutes, 256 images) "
                   "or tiny (--quick)")
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
                   help="images for the naive loop, the first of the same set (default: 256; 64 at --size small)")
    p.add_argument("--workdir", default=None, help="where the images and stores go (default: a temp folder)")
    p.add_argument("--repeats", type=positive_int("--repeats"), default=1,
                   help="rounds per extractor (pipeline cold paired with clip-retrieval's loop, cached pipeline, naive "
                   "loop interleaved); best of each, the median of the pairs' ratios")
    p.add_argument("--pairs", choices=PAIRINGS, default="fresh",
                   help="where each round's cold pipeline and clip-retrieval's loop are paired: fresh (each in a "
                   "process of its own, as a user's script runs; the default) or inline (back to back in this "
                   "process, no start-up cost)")
    p.add_argument("--image-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each extractor reading pixels from a decoded-image cache filled beforehand "
                   "(warm: the second and later extractors over the same images); on by default")
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
    size = "tiny" if args.quick else (args.size or "full")
    if args.quick and args.size not in (None, "tiny"):
        raise FeatstoreError(f"--quick is --size tiny; it cannot be combined with --size {args.size}: pass one of them")
    n = args.n or (256 if size == "small" else 1024 if size == "tiny" or not cuda else 4096)
    workers = args.workers if args.workers is not None else min(16, os.cpu_count() or 1)
    naive_n = min(n, args.baseline_n or (64 if size == "small" else 256))  # no fixed costs: a few give its rate
    full = size == "full"

    for line in header_lines("extraction throughput (run_extraction against its forward-only ceiling)", device):
        print(line)
    tmp = tempfile.mkdtemp(prefix="featstore-bench-extract-", dir=args.workdir)
    work = Path(tmp)
    try:
        with Stopwatch(torch.device("cpu")) as sw_gen:
            manifest = make_images(work / "data", n, min(args.unique, n))
        dataset = load_dataset(manifest)
        print(f"data   : {n} synthetic PNGs ({min(args.unique, n)} distinct), ~500x400, written in "
              f"{sw_gen.seconds:.1f} s; sizes {size.upper() if size != 'full' else 'full'}; weights random; "
              f"storage float32; amp {'bf16' if cuda else 'none'}")
        print(f"pipeline: run_extraction, {workers} DataLoader workers; ceiling: the extractor's forward on the "
              f"first {CEILING_BATCHES} batches decoded into memory; clip-retrieval loop over all {n} images, "
              f"paired with the cold pipeline {'each in a fresh process' if args.pairs == 'fresh' else 'in this process'};"
              f" naive loop on the first {naive_n}")
        cache_dir = None
        if args.image_cache:
            cache_dir = work / "image-cache"
            with Stopwatch(torch.device("cpu")) as sw_fill:
                held = prefill_image_cache(dataset, str(cache_dir), num_workers=workers, progress=False).images
            print(f"image cache: {held} decoded images filled in {sw_fill.seconds:.1f} s (`featstore cache-images`, "
                  f"{workers} workers; not timed below); each extractor adds its resized entries (untimed) and also runs "
                  f"the pipeline over this warm cache")
        print()
        results = []
        for s in setups(names, size, work):
            bs = args.batch_size or (FULL_CUDA_BATCH[s.name] if cuda and full else 32)
            results.append(bench_one(s, dataset, work, device, min(n, 2 * bs), bs, workers, naive_n, cache_dir,
                                     args.repeats, args.pairs == "fresh"))
            r = results[-1]
            print(f"  done {s.name}: ceiling {fmt(r.ceiling['host'])} img/s, pipeline {fmt(r.pipeline_ips)} img/s, "
                  f"clip-retrieval loop {fmt(r.clip_ips)} img/s, naive {fmt(r.naive_ips)} img/s"
                  + (f", pipeline with warm image cache {fmt(r.cached_ips)} img/s" if cache_dir else ""), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"load average at the end: {load_average()}")
    tol = 5e-2 if cuda else 1e-3  # bf16 kernels differ between batch sizes; fp32 on CPU only by summation order
    print()
    print(format_table(*result_table(results, cuda, tol)))
    print()
    for r in results:
        for line in rest_lines(r, cuda):
            print(line)
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


def result_table(results: Sequence[Result], cuda: bool, tol: float):
    """(headers, rows) of the summary table: each path's rate, pipeline / ceiling cold and warm with the
    goal, the pipeline against clip-retrieval's loop and the naive loop."""
    rows = []
    for r in results:
        ceil = r.ceiling["host"]
        warm = r.cached_ips / ceil if r.cached_ips else float("nan")
        paired = float(np.median(r.clip_pairs))  # one pair per round: never empty
        rows.append([r.setup.name, r.setup.describe, r.n, r.batch_size, r.workers, r.threads, fmt(ceil),
                     f"{fmt(r.pipeline_ips)} ({r.pipeline_ips / ceil:.0%})",
                     f"{fmt(r.cached_ips)} ({warm:.0%})" + ("" if r.cached_identical else " MISMATCH"),
                     goal_status(warm, CEILING_GOAL, True, r.cached_ips is not None, "needs --image-cache"),
                     f"{fmt(r.clip_ips)} ({paired:.2f}x: {'ok' if paired >= 1.0 else 'SLOWER'}; {r.pairing})",
                     f"{fmt(r.naive_ips)} (n={r.naive_n})",
                     f"{r.max_rel_diff:.1e}" + ("" if r.max_rel_diff <= tol else " MISMATCH")])
    headers = ["extractor", "config", "images", "batch", "workers", "fwd threads", "forward-only ceiling img/s",
               "pipeline cold img/s (of ceiling)", "pipeline warm cache img/s (of ceiling)",
               f"goal warm >= {CEILING_GOAL:.0%}", "clip-retrieval loop img/s (pipeline cold / it, median of back-to-back pairs)",
               "naive img/s", "max rel diff"]
    return headers, rows


def rest_lines(r: Result, cuda: bool) -> List[str]:
    """What costs the pipeline the part of the ceiling it does not reach, cold and warm, as shares of its
    wall time; on CUDA also the host-to-device copies (host ceiling against device-resident batches)."""
    lines = [f"{r.setup.name}: where the pipeline's time goes beyond the forward-only ceiling (share of its wall time)"]
    for label, split in (("cold", r.split_cold), ("warm", r.split_warm)):
        if split:
            lines.append(f"  {label}: waiting for inputs {split['inputs']:.0%}, waiting for the writer "
                         f"{split['writer']:.0%}, forward slower than alone {split['forward']:.0%} (cores shared "
                         f"with the decoding workers), setup + commit {split['setup']:.0%}")
    bound = (f"the pipeline's own forward calls ({fmt(r.loop_forward)} img/s; measured alone "
             f"{fmt(r.ceiling_alone)}: the load moved)" if r.loop_forward > r.ceiling_alone else
             f"measured alone ({fmt(r.ceiling_alone)} img/s; the pipeline's forward calls ran at {fmt(r.loop_forward)})")
    lines.append(f"  ceiling {fmt(r.ceiling['host'])} img/s from {bound}")
    if "device" in r.ceiling:
        h2d = 1.0 - r.ceiling["host"] / r.ceiling["device"]
        lines.append(f"  host-to-device copies: {h2d:.0%} of the ceiling's own time (forward on device-resident "
                     f"batches {fmt(r.ceiling['device'])} img/s vs {fmt(r.ceiling['host'])} from host memory)")
    elif not cuda:
        lines.append("  host-to-device copies: none (CPU device)")
    return lines


if __name__ == "__main__":
    run_main(main)
