"""The batch extraction job behind `featstore extract`: manifest in, one committed feature set version out.

Pipeline (one process per GPU, never DataParallel)::

    DataLoader workers: decode + resize/tokenise (failures become records, not exceptions)
        -> main process: extractor.forward on the device (autocast on CUDA), rows gathered per store chunk
        -> writer thread: finished chunks written to the store while the device computes the next batches

Chunks are the unit of resume and of sharding: a rerun with the same arguments opens the same version and
skips finished chunks; under ``torchrun`` rank r takes the pending chunks ``c % world == r`` and rank 0
commits once every rank is done.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..config_types import cli_field
from ..devices import resolve_device
from ..errors import FeatstoreError
from ..extractors.images import FEATSTORE_DECODE
from ..jsonio import to_jsonable
from ..store import Recipe, Store
from . import dist
from .image_cache import DecodedImageCache, ImageCacheError, load_input
from .threads import ForwardThreads, available_cores


@dataclass
class ExtractOptions:
    """How an extraction runs. Fields made with ``cli_field`` are also ``featstore extract`` options (flag, help,
    choices in the field's metadata; the option's default is the field's: ``cli.common.options_from_dataclass``)."""

    batch_size: int = cli_field(32, "Inputs per forward batch.")
    num_workers: Optional[int] = cli_field(  # None: one per CPU core this process may use (per rank on a node), <= 16
        None, "DataLoader worker processes (decode + resize). Default: one per CPU core (shared by the torchrun ranks "
        "of a node), at most 16; 0 decodes in the main process.", flag="--workers")
    device: str = cli_field("auto", "auto, cpu, cuda or cuda:N.")  # "auto" = cuda when available, else cpu
    amp: str = cli_field(  # auto (bf16 on CUDA, none on CPU) | bf16 (CUDA or CPU) | fp16 (CUDA) | none; in the recipe
        "auto", "Autocast dtype: auto = bf16 on CUDA (fp16 where unsupported), none on CPU; bf16 also runs on CPU, "
        "fp16 needs CUDA. Part of the version id.", choices=("auto", "bf16", "fp16", "none"))
    chunk_rows: int = cli_field(64, "Rows per store chunk (resume unit).")
    on_error: str = cli_field(  # skip (record id + reason in the version's failures) | fail
        "skip", "Bad inputs: skip records them in the version's failures; fail stops at the first.",
        choices=("skip", "fail"))
    backend: str = cli_field("zarr", "zarr: bulk loads; lmdb: fastest per-sample random reads (local stores only).",
                             choices=("zarr", "lmdb"))  # featstore.store.backends.BACKENDS
    compression: str = cli_field(  # zarr codec: auto | blosc | zstd | none (see featstore.store.backends)
        "auto", "Zarr codec; auto keeps dense image features raw, compresses padded text.",
        choices=("auto", "blosc", "zstd", "none"))
    max_pixels: int = 89_478_485  # PIL's decompression-bomb limit
    progress: bool = True  # the CLI's --quiet turns it off
    # decoded-image cache shared by extractors: a directory or a DecodedImageCache (featstore.runner.image_cache);
    # None = decode every image. Never part of the recipe: cached pixels are exactly load_image's.
    image_cache: Optional[Any] = cli_field(
        None, "Decoded-image cache shared by extractors: the first run decodes and fills it, later runs over the same "
        "images read pixels from it; safe to delete.", metavar="DIR")

    def validate(self) -> None:
        """One line per bad option, before anything is written (a bad value must not leave a version behind)."""
        from ..store.backends import BACKENDS

        for flag, value in (("--batch-size", self.batch_size), ("--chunk-rows", self.chunk_rows),
                            ("--max-pixels", self.max_pixels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FeatstoreError(f"{flag} {value!r} is invalid; pass a whole number >= 1")
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise FeatstoreError(f"--workers {self.num_workers!r} is invalid; pass 0 (load in the main process) or more")
        if self.on_error not in ("skip", "fail"):
            raise FeatstoreError(f"--on-error {self.on_error!r} is unknown; use skip or fail")
        if self.backend not in BACKENDS:
            raise FeatstoreError(f"--backend {self.backend!r} is unknown; use one of {', '.join(BACKENDS)}")
        if self.compression not in ("auto", "blosc", "zstd", "none"):
            raise FeatstoreError(f"--compression {self.compression!r} is unknown; use auto, blosc, zstd or none")


@dataclass
class ExtractSummary:
    name: str
    version: str
    n: int
    n_written: int
    failures: Dict[str, str]
    seconds: float
    shapes: Dict[str, tuple]
    already_complete: bool = False
    chunks_written: int = 0
    # seconds of the main loop spent waiting for decoded inputs, in the forward pass, waiting for the writer
    timing: Dict[str, float] = dataclasses.field(default_factory=dict)
    modality: str = "image"
    forward_threads: Optional[int] = None  # set when the CPU forward pass left its cores to the workers
    stopped_early: bool = False  # an identical extraction committed the version while this one ran
    notes: List[str] = dataclasses.field(default_factory=list)  # e.g. texts cut to max_length (text extractors)

    def _done_note(self) -> str:
        if self.stopped_early:
            return (f" (an identical extraction committed it while this one ran: stopped early after "
                    f"{self.chunks_written} chunks)")
        return " (already complete: nothing to do; `featstore verify` re-reads its chunks)"

    def lines(self) -> List[str]:
        rate = self.n_written / self.seconds if self.seconds > 0 else float("nan")
        out = [f"feature set {self.name}@{self.version}: {self.n - len(self.failures)} rows, "
               f"{len(self.failures)} failed" + (self._done_note() if self.already_complete else
                                                 f", {self.chunks_written} chunks written in {self.seconds:.1f} s "
                                                 f"({rate:.1f} items/s)")]
        for k, shape in self.shapes.items():
            out.append(f"  {k}: [{', '.join(map(str, shape))}]")
        out += [f"  note: {n}" for n in self.notes]
        out += self.timing_lines()
        if self.failures:
            out.append(f"  failures (first 5 of {len(self.failures)}; all in `featstore info {self.name}`):")
            out += [f"    {k}: {why}" for k, why in list(self.failures.items())[:5]]
            out.append(retry_hint(f"{self.name}@{self.version}"))
        return out

    def timing_lines(self) -> List[str]:
        """Where the main loop's time went, and what to change when the device waited on decoding."""
        total = sum(self.timing.values())
        if total <= 0:
            return []
        share = {k: v / total for k, v in self.timing.items()}
        out = [f"  time: forward {share.get('forward', 0):.0%}, waiting for inputs {share.get('inputs', 0):.0%}, "
               f"waiting for the writer {share.get('writer', 0):.0%}"
               + (f" (forward threads lowered to {self.forward_threads}: the decoding workers needed the cores)"
                  if self.forward_threads else "")]
        if share.get("inputs", 0) > INPUT_BOUND_SHARE and self.n_written >= HINT_MIN_ITEMS:
            if self.modality == "image":
                out.append("  the device waited on decoding: raise --workers, or decode once with --image-cache "
                           "(featstore cache-images) when several extractors read the same images")
            else:
                out.append("  the device waited on tokenisation: raise --workers")
        return out


def retry_hint(ref: str) -> str:
    """How to retry a version's failed rows: a version is immutable, so the same command does nothing, but the
    dataset fingerprint (in the version id) covers the texts and the image bytes, so fixed inputs make a new one."""
    return (f"  to retry the failed rows: fix those inputs and run the same command again (the version id covers the "
            f"texts and image bytes, so it extracts a new version); if they were fine (a passing read error), "
            f"`featstore rm {ref}` first")


def all_failed_error(name: str, keys: List[str], failures: Dict[str, str], modality: str,
                     committed: Optional[str] = None) -> FeatstoreError:
    """Every row failed: one line with the count, the first failure (key, path, reason) and the likely fix.
    ``committed``: the ref of such a version an earlier featstore committed (this one commits none)."""
    first = next(k for k in keys if k in failures)
    reason, _, own_fix = failures[first].partition("; ")
    if "file not found" in reason:
        fix = "check the dataset's image paths, or pass --image-root DIR (the folder they are relative to)"
    else:
        fix = own_fix or "fix the inputs"
    unit = "images" if modality == "image" else "texts"
    if committed is None:
        return FeatstoreError(f"all {len(keys)} {unit} failed, so no version of {name} was committed (first: "
                              f"{first}: {reason}); {fix}, then run the same command again")
    return FeatstoreError(f"{committed} holds no rows: all {len(keys)} {unit} failed at extraction (first: {first}: "
                          f"{reason}); {fix}, then run the same command again; remove the empty version with "
                          f"`featstore rm {committed}`")


INPUT_BOUND_SHARE = 0.25  # above this share of the loop waiting for inputs, the summary says what to change
HINT_MIN_ITEMS = 256  # below this, worker start-up dominates the wait and the hint would mislead


# -- the items an extractor sees ----------------------------------------------------------------------------
def extraction_items(dataset, modality: str) -> List[tuple]:
    """(key, payload) per row: image sets are keyed by image key (one row per image, however many samples
    use it), text sets by sample id (one row per id, however many splits list it:
    ``DatasetManifest.distinct_samples``)."""
    if modality == "image":
        seen: Dict[str, Any] = {}
        for s in dataset.samples:
            if s.image_key not in seen:
                seen[s.image_key] = s.image_path
        return list(seen.items())
    return [(s.id, s.text) for s in dataset.distinct_samples()]


class _CacheBroken(str):
    """A failure message that stops the run: the image cache itself failed, not the input."""


class _ItemDataset(torch.utils.data.Dataset):
    """Rows of the pending chunks; __getitem__ runs in DataLoader workers and never raises for bad data.

    With ``image_cache`` (a ``DecodedImageCache``) images are loaded through it: same pixels, same failure
    reasons; a failing cache yields a ``_CacheBroken`` message that the run loop turns into an error.
    """

    def __init__(self, extractor, items: List[tuple], rows: List[int], modality: str, max_pixels: int,
                 image_cache=None):
        self.extractor, self.items, self.rows = extractor, items, rows
        self.modality, self.max_pixels = modality, max_pixels
        self.image_cache = image_cache if modality == "image" else None
        # resized uint8 pixels for extractors that normalise batched on the device (pixels.ResizeRecipe)
        recipe = getattr(extractor, "resize_recipe", None)
        self.recipe = recipe() if recipe is not None and modality == "image" else None
        decode = getattr(extractor, "image_decode", None)  # how files are decoded (images.load_image)
        self.decode = decode() if decode is not None and modality == "image" else FEATSTORE_DECODE

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        key, payload = self.items[row]
        try:
            if self.modality == "image":
                if payload is None:
                    raise FeatstoreError("no image path in the manifest")
                payload = load_input(payload, self.recipe, self.max_pixels, self.image_cache, self.decode)
            return row, self.extractor.preprocess(payload), None
        except ImageCacheError as e:
            return row, None, _CacheBroken(str(e))
        except FeatstoreError as e:
            return row, None, str(e)
        except Exception as e:  # a decoder or transform failing on one bad file must not stop the job
            return row, None, f"{type(e).__name__}: {e}"


class _Collate:
    def __init__(self, extractor):
        self.extractor = extractor

    def __call__(self, batch):
        ok = [(r, x) for r, x, err in batch if err is None]
        failed = [(r, err) for r, _, err in batch if err is not None]
        collated = self.extractor.collate([x for _, x in ok]) if ok else None
        return [r for r, _ in ok], collated, failed


def _resolve_device(device: str) -> torch.device:
    return torch.device(resolve_device(device, dist.local_rank()))


_AMP_NAMES = {torch.float32: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _compute_dtype(amp: str, device: torch.device) -> torch.dtype:
    """The autocast dtype the forward pass runs in (float32 = no autocast). ``auto``: bf16 on CUDA (fp16
    where bf16 is unsupported), none on CPU; ``bf16`` also runs on CPU; ``fp16`` needs CUDA."""
    choices = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "none": torch.float32}
    if amp not in choices:
        raise FeatstoreError(f"--amp {amp!r} is unknown; use auto, bf16, fp16 or none")
    dtype = choices[amp]
    if device.type == "cuda":
        if dtype is None:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dtype
    if dtype == torch.float16:
        raise FeatstoreError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or --amp none")
    return torch.float32 if dtype is None else dtype


class _ChunkBuffer:
    """Collects one chunk's rows (in any order) until all of them have arrived."""

    def __init__(self, chunk: int, rows: range):
        self.chunk, self.rows = chunk, rows
        self.outputs: Dict[int, Dict[str, np.ndarray]] = {}
        self.failed: Dict[int, str] = {}

    @property
    def done(self) -> bool:
        return len(self.outputs) + len(self.failed) == len(self.rows)

    def assemble(self, names: List[str]):
        ok_rows = [r for r in self.rows if r in self.outputs]
        arrays = {n: np.stack([self.outputs[r][n] for r in ok_rows]) if ok_rows else None for n in names}
        return ok_rows, arrays


@dataclass
class _Plan:
    """An extraction resolved before any work: the extractor, its rows, where it runs and the open version."""

    ext: Any
    set_name: str
    items: List[tuple]
    keys: List[str]
    device: torch.device
    compute_dtype: torch.dtype
    workers: int
    image_cache: Optional[DecodedImageCache]
    writer: Any
    rank: int
    world: int

    @property
    def modality(self) -> str:
        return self.ext.modality

    def my_chunks(self) -> List[int]:
        """The pending chunks this rank writes: ``c % world == rank``."""
        return [c for c in self.writer.pending_chunks() if c % self.world == self.rank]

    def chunk_range(self, chunk: int) -> range:
        return range(*self.writer.chunk_slice(chunk).indices(len(self.keys)))


def run_extraction(store: Store, dataset, extractor_name: str, *, name: Optional[str] = None,
                   extractor_config: Optional[Dict[str, Any]] = None, options: Optional[ExtractOptions] = None,
                   extractor=None) -> ExtractSummary:
    """Materialise ``extractor_name`` over ``dataset`` into ``store`` as one version (resuming if started).

    ``extractor`` may be passed already built (tests); otherwise it is created from the registry with
    ``extractor_config`` (which carries ``weights``). Steps: plan (``_plan``: extractor, recipe, device,
    the version's writer), the loop over this rank's pending chunks (``_ExtractLoop``), commit (``_commit``).
    """
    opts = options or ExtractOptions()
    opts.validate()
    workers = _resolve_workers(opts.num_workers)
    t0 = time.perf_counter()
    plan = _plan(store, dataset, extractor_name, name, extractor_config, extractor, opts, workers)
    if plan.writer.complete:
        fsv = store.open(plan.set_name, plan.writer.version)
        if len(fsv) == 0 and fsv.failures:  # committed by a featstore that committed all-failed versions
            raise all_failed_error(plan.set_name, plan.keys, fsv.failures, plan.modality, committed=fsv.ref)
        return ExtractSummary(plan.set_name, plan.writer.version, len(plan.keys), 0, fsv.failures,
                              time.perf_counter() - t0, _shapes(fsv), already_complete=True)
    chunks = plan.my_chunks()
    rows = [r for c in chunks for r in plan.chunk_range(c)]
    plan.ext.to(plan.device, plan.compute_dtype)
    loop = _ExtractLoop(plan, chunks, opts.on_error)
    loop.run(rows, opts)
    dist.barrier()
    summary = _commit(store, plan, loop, len(rows), t0)
    summary.notes += _truncation_notes(plan)
    return summary


def _truncation_notes(plan: _Plan) -> List[str]:
    """Rank 0's count of the texts the tokenizer cut to max_length (one more tokenizer pass over the set's texts,
    about 0.5 ms a 250-word plot, after the version is committed; a failure there is said, not raised)."""
    note = getattr(plan.ext, "truncation_note", None)
    if note is None or plan.rank != 0:
        return []
    try:
        found = note([text for _, text in plan.items])
    except (FeatstoreError, ValueError, TypeError, RuntimeError) as err:
        return [f"the texts cut to max_length were not counted ({type(err).__name__}: {err}); the version is complete"]
    return [found] if found else []


# -- plan: everything that can be refused is checked before the version's writer exists ---------------------
def _plan(store: Store, dataset, extractor_name: str, name: Optional[str], extractor_config, extractor,
          opts: ExtractOptions, workers: int) -> _Plan:
    """Build the extractor, list its rows, resolve the device and compute dtype, open the image cache, then
    open (or reopen, to resume) the version; a bad argument leaves no version behind."""
    from ..extractors import create_extractor

    if not opts.progress:  # --quiet: no transformers "Loading weights" bar either
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    ext = extractor if extractor is not None else create_extractor(extractor_name, **(extractor_config or {}))
    items = extraction_items(dataset, ext.modality)
    if not items:
        raise FeatstoreError("the dataset has no samples to extract; check the manifest and split")
    keys = [k for k, _ in items]
    schema = ext.schema()
    rank, world = dist.init()
    device = _resolve_device(opts.device)  # before the writer: a bad --device must not leave a version behind
    compute_dtype = _compute_dtype(opts.amp, device)
    recipe = _recipe(ext, extractor_name, dataset, compute_dtype)
    set_name = name or extractor_name
    image_cache = _open_image_cache(opts.image_cache, ext.modality)  # likewise a bad cache directory
    writer = _open_writer(store, set_name, recipe, keys, schema, ext, extractor_name, opts, rank)
    return _Plan(ext, set_name, items, keys, device, compute_dtype, workers, image_cache, writer, rank, world)


def _recipe(ext, extractor_name: str, dataset, compute_dtype: torch.dtype) -> Recipe:
    """What names the version; the autocast dtype changes the numbers (bf16 vs float32), so it is part of it."""
    return Recipe(extractor=extractor_name, config=recipe_config(ext.config, extractor_name),
                  weights_fingerprint=ext.weights_fingerprint(),
                  preprocessing=to_jsonable(ext.preprocessing(), where=f"{extractor_name} preprocessing"),
                  manifest_fingerprint=dataset.fingerprint, compute={"autocast": _AMP_NAMES[compute_dtype]})


def recipe_config(config, extractor_name: str) -> dict:
    """The config a recipe records: every option, but one at the value its config class's ``ABSENT_MEANS`` gives
    (what sets recorded before the option existed computed, e.g. clip-text's ``fix_text=False``) is left out,
    so such a set keeps the version id it had."""
    out = to_jsonable(config, where=f"{extractor_name} config")
    absent = getattr(type(config), "ABSENT_MEANS", {})
    return {k: v for k, v in out.items() if k not in absent or v != absent[k]}


def _open_writer(store: Store, set_name: str, recipe: Recipe, keys: List[str], schema, ext, extractor_name: str,
                 opts: ExtractOptions, rank: int):
    """The version's writer: rank 0 creates (or reopens) it first, the other ranks reopen it after."""
    kw = dict(key_kind=ext.key_kind, modality=ext.modality, chunk_rows=opts.chunk_rows, backend=opts.backend,
              backend_options={"compression": opts.compression} if opts.backend == "zarr" else None,
              meta={"extractor": extractor_name, **({"weights_load": ext.weights_load} if ext.weights_load else {})})
    if rank == 0:
        writer = store.writer(set_name, recipe, keys, schema, **kw)
    dist.barrier()
    if rank != 0:
        writer = store.writer(set_name, recipe, keys, schema, **kw)
    return writer


def _loader(plan: _Plan, rows: List[int], opts: ExtractOptions) -> torch.utils.data.DataLoader:
    """``rows`` decoded and preprocessed in ``plan.workers`` DataLoader workers, collated per batch there."""
    workers = plan.workers
    return torch.utils.data.DataLoader(
        _ItemDataset(plan.ext, plan.items, rows, plan.modality, opts.max_pixels, plan.image_cache),
        batch_size=opts.batch_size, shuffle=False, num_workers=workers, collate_fn=_Collate(plan.ext),
        pin_memory=plan.device.type == "cuda",  # pinned in the loader's background thread; copies are non_blocking
        persistent_workers=False, prefetch_factor=4 if workers > 0 else None)


# -- the loop: forward, buffer per chunk, hand finished chunks to the writer thread -------------------------
class _ExtractLoop:
    """The main loop and its state: rows buffered per chunk, failures so far, the writer thread, the timing.

    ``timing`` splits the loop's seconds into waiting for inputs, the forward pass and waiting for the writer.
    """

    def __init__(self, plan: _Plan, chunks: List[int], on_error: str):
        self.plan, self.on_error = plan, on_error
        self.buffers = {c: _ChunkBuffer(c, plan.chunk_range(c)) for c in chunks}
        self.chunk_of = {r: c for c in chunks for r in self.buffers[c].rows}
        self.names = [n for n in plan.writer.schema if n != "valid"]
        self.failures: Dict[str, str] = {}
        self.written = 0
        self.pending_writes: List[cf.Future] = []
        self.timing = {"inputs": 0.0, "forward": 0.0, "writer": 0.0}
        self.pool: Optional[cf.ThreadPoolExecutor] = None
        self.threads: Optional[ForwardThreads] = None

    def run(self, rows: List[int], opts: ExtractOptions) -> None:
        """Extract ``rows`` (this rank's pending chunks) and wait until every finished chunk is written."""
        plan = self.plan
        self.pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="featstore-writer")
        loader = _loader(plan, rows, opts)
        bar = _progress(len(rows), opts.progress and plan.rank == 0, "images" if plan.modality == "image" else "texts")
        self.threads = ForwardThreads(plan.device, plan.workers)
        try:
            self._drive(iter(loader), bar)  # iter() starts the workers: counted as waiting for inputs
            self._flush_done(sorted(self.buffers))  # chunks with no pending rows at all
            tick = time.perf_counter()
            for f in self.pending_writes:
                f.result()
            self.timing["writer"] += time.perf_counter() - tick
        finally:
            self.threads.close()
            bar.close()
            self.pool.shutdown(wait=True)

    def _drive(self, batches, bar) -> None:
        while not self.plan.writer.committed_elsewhere():  # an identical extraction finished first: stop, say so
            tick = time.perf_counter()
            try:
                ok_rows, batch, failed = next(batches)
            except StopIteration:
                break
            wait = time.perf_counter() - tick
            self.timing["inputs"] += wait
            self._record_failures(failed)
            if ok_rows:
                self._forward(ok_rows, batch, wait)
            touched = {self.chunk_of[r] for r in ok_rows} | {self.chunk_of[r] for r, _ in failed}
            self._flush_done(sorted(touched))
            bar.update(len(ok_rows) + len(failed))

    def _record_failures(self, failed: List[tuple]) -> None:
        keys = self.plan.keys
        for r, why in failed:
            if isinstance(why, _CacheBroken):
                raise FeatstoreError(why)
            if self.on_error == "fail":
                raise FeatstoreError(f"{keys[r]}: {why} (--on-error fail stops at the first bad input; "
                                     f"use --on-error skip to record it and go on)")
            self.buffers[self.chunk_of[r]].failed[r] = why
            self.failures[keys[r]] = why

    def _forward(self, ok_rows: List[int], batch, wait: float) -> None:
        tick = time.perf_counter()
        with torch.inference_mode():
            out = self.plan.ext.forward(batch)  # autocast (on CUDA) inside; returns host arrays, so synchronised
        spent = time.perf_counter() - tick
        self.timing["forward"] += spent
        self.threads.observe(wait, spent)
        for i, r in enumerate(ok_rows):
            self.buffers[self.chunk_of[r]].outputs[r] = {n: out[n][i] for n in self.names}

    def _flush_done(self, chunks: List[int]) -> None:
        for c in chunks:
            if self.buffers[c].done:
                self._flush(self.buffers.pop(c))
                self.written += 1

    def _flush(self, buf: _ChunkBuffer) -> None:
        writer, names = self.plan.writer, self.names
        ok_rows, arrays = buf.assemble(names)
        failures = {self.plan.keys[r]: why for r, why in buf.failed.items()}
        if writer.chunk_taken(buf.chunk):  # an identical extraction wrote it meanwhile: keep its bytes
            return
        if not ok_rows:
            arrays = {n: np.zeros((0,) + tuple(writer.schema[n].shape), writer.schema[n].dtype) for n in names}
        self.pending_writes.append(self.pool.submit(writer.write_chunk, buf.chunk, arrays, failures))
        tick = time.perf_counter()
        while len(self.pending_writes) > 2:  # bound memory: at most two chunks queued behind the device
            self.pending_writes.pop(0).result()
        self.timing["writer"] += time.perf_counter() - tick


# -- commit ----------------------------------------------------------------------------------------------------
def _commit(store: Store, plan: _Plan, loop: _ExtractLoop, n_rows: int, t0: float) -> ExtractSummary:
    """Rank 0 commits the version (every rank is done) unless an identical extraction committed it first."""
    writer, n = plan.writer, len(plan.keys)
    if writer.committed_elsewhere():
        fsv = store.open(plan.set_name, writer.version)
        return ExtractSummary(plan.set_name, writer.version, n, 0, fsv.failures, time.perf_counter() - t0,
                              _shapes(fsv), already_complete=True, chunks_written=loop.written, timing=loop.timing,
                              modality=plan.modality, stopped_early=True)
    if len(loop.failures) == n_rows:  # no row of this run has features: has any chunk (other runs', ranks') one?
        _refuse_all_failed(store, plan)
    failures, shapes = loop.failures, {}
    if plan.rank == 0:
        fsv = writer.commit()
        failures, shapes = fsv.failures, _shapes(fsv)
    summary = ExtractSummary(plan.set_name, writer.version, n, n_rows, failures, time.perf_counter() - t0,
                             shapes, chunks_written=loop.written, timing=loop.timing, modality=plan.modality,
                             forward_threads=loop.threads.lowered_to)
    dist.barrier()
    return summary


def _refuse_all_failed(store: Store, plan: _Plan) -> None:
    """When no row of the version has features (every chunk marker, other runs' and ranks' included, lists all
    its keys as failed), remove the unfinished version and raise: a committed one would hold nothing and make
    the same command say "already complete". Its chunks hold only failure records, so nothing usable is lost."""
    failures = {k: v for m in plan.writer.chunk_markers() for k, v in m["failures"].items()}
    if len(failures) < len(plan.keys):
        return
    dist.barrier()  # every rank reads the markers before rank 0 removes them
    if plan.rank == 0:
        store.rm(plan.set_name, plan.writer.version)
    dist.barrier()  # and no rank exits before: torchrun stops the others when one exits non-zero
    raise all_failed_error(plan.set_name, plan.keys, failures, plan.modality)


MAX_AUTO_WORKERS = 16


def _resolve_workers(num_workers: Optional[int]) -> int:
    """DataLoader workers: as given, or (None) one per CPU core this process may use, shared between the
    ranks torchrun starts on this node (LOCAL_WORLD_SIZE), at most ``MAX_AUTO_WORKERS``: decoding is what
    keeps a GPU waiting."""
    if num_workers is not None:
        if int(num_workers) < 0:
            raise FeatstoreError(f"--workers {num_workers} is invalid; pass 0 (decode in the main process) or more")
        return int(num_workers)
    per_rank = available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_AUTO_WORKERS, per_rank))


def _open_image_cache(path, modality: str) -> Optional[DecodedImageCache]:
    """The decoded-image cache for an image extraction (opened here once, so a broken directory fails
    before any work; each DataLoader worker reopens it after the fork); None without one or for text."""
    if path is None or modality != "image":
        return None
    cache = path if isinstance(path, DecodedImageCache) else DecodedImageCache(path)
    cache.check()
    return cache


def _shapes(fsv) -> Dict[str, tuple]:
    return {n: (len(fsv),) + fsv.spec(n).shape for n in fsv.array_names}


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool, unit: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit[:-1], unit_scale=False, desc="extract", dynamic_ncols=True, smoothing=0.1)
