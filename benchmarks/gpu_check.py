"""One GPU check that fits a short loan: the CUDA tests, then every GPU benchmark at a size that finishes in
about 8 minutes altogether on one H100/H200, one table with the goals beside the figures.

    python benchmarks/gpu_check.py [--dry-run] [--out benchmarks/gpu_check_results.md] [--budget-s 480]

Steps, in order (each timed; the table says how long it took):

1. ``pytest -m cuda`` over every test file that marks tests ``cuda`` (``tests/test_cuda_paths.py``,
   ``tests/test_gpu_check_cuda.py``, ...) in a subprocess with ``FEATSTORE_CUDA_TESTS=cuda``: bf16
   autocast, pinned memory and non-blocking copies (float and uint8 pixel batches), channels_last under
   cuDNN, pixels normalised on the device, ``--compile`` on CUDA, a head trained on the GPU with trimmed
   batches, the vector search on the GPU (faiss-gpu, or torch's exact search without it). A skipped test
   counts as a failure here.
2. Extraction (``extract_throughput.bench_one``, random weights, full architectures): DINOv2 ViT-L/14
   multi-layer at 518 px, ResNet-152 grid at 224 px, ResNet-152 roi at 600 px; 2,048 synthetic PNGs each,
   pipeline cold (decoding) and over a warm decoded-image cache, its forward-only ceiling and the clip-
   retrieval loop. Goals (end to end, cold): >= 400, >= 6,000, >= 1,200 images/s.
3. The vilbert head (default MMF sizes) at Hateful Memes size: 8,500 + 500 samples, tokens stored at 128
   with 8-30-token captions, 36 x 2048 regions, trimmed batches, bf16; 3 epochs timed, the 20-epoch figure
   is 20 x the median epoch (goal < 30 s).
4. Confounder search on the GPU (faiss-gpu's IVF when installed, else torch's exact search): 200,000
   samples of 512-d image and text vectors.

NCCL under ``torchrun`` needs two GPUs on one machine; with one it is reported as not run.

``--dry-run``: the same steps on the CPU at tiny sizes (tests on the CPU, tiny models, a few dozen images,
no DataLoader workers), so the script cannot rot before a GPU arrives (``tests/test_gpu_check.py`` runs it).

Time: ``--budget-s`` (480) bounds the whole check, not only when a step may start: a step still running at
the budget is stopped (SIGALRM; the test subprocess by its timeout) and reported ``FAIL: time``, later
steps ``not run: time``.

Exit status: 0 when every step ran; 1 when any step failed (an exception, a failed or skipped test, a
CUDA path that broke) or did not run for lack of time; goals missed are marked ``NOT met`` in the table
but do not fail the run. The table (markdown, with the device, date and command) is printed and written
to ``--out`` for ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from _common import Parser, fmt, goal_status, header_lines, positive_int, run_main

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXTRACT = (("dinov2-multilayer", "DINOv2 ViT-L/14 multi-layer 518 px", 400.0),
           ("grid", "ResNet-152 grid 224 px", 6000.0), ("roi", "ResNet-152 roi 600 px", 1200.0))
VILBERT_GOAL_S, VILBERT_EPOCHS = 30.0, 20


@dataclasses.dataclass
class Row:
    step: str
    figure: str = "-"
    goal: str = "-"
    status: str = "-"  # "met", "NOT met", "ok", "FAIL: ...", "not run: ..."
    seconds: float = float("nan")

    @property
    def failed(self) -> bool:
        return self.status.startswith(("FAIL", "not run: time"))


@dataclasses.dataclass
class Sizes:
    device: torch.device
    images: int
    baseline_n: int
    workers: Optional[int]
    vilbert: tuple  # (n_train, n_val, epochs)
    confounders: int
    quick: bool


def sizes_for(dry_run: bool) -> Sizes:
    if dry_run:
        return Sizes(torch.device("cpu"), 12, 2, 0, (48, 8, 2), 2000, True)
    return Sizes(torch.device("cuda"), 2048, 64, None, (8500, 500, 3), 200_000, False)


# ------------------------------------------------------------------------------------------- steps
def cuda_test_files() -> List[Path]:
    """The test files that mark tests ``cuda`` (``pytest.mark.cuda`` in their text)."""
    return sorted(p for p in (ROOT / "tests").glob("test_*.py") if "pytest.mark.cuda" in p.read_text())


def step_tests(sizes: Sizes, work: Path) -> List[Row]:
    """The CUDA-marked tests in a subprocess; any failure, error or skip is a FAIL."""
    xml = work / "cuda-tests.xml"
    env = dict(os.environ, FEATSTORE_CUDA_TESTS=sizes.device.type)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
           *map(str, cuda_test_files()), f"--junitxml={xml}"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=_left())
    except subprocess.TimeoutExpired:
        return [Row("CUDA tests", status=f"FAIL: time: still running at the {_BUDGET['s']:g} s budget")]
    if not xml.exists():
        last = ((proc.stdout + proc.stderr).strip().splitlines() or [""])[-1]
        return [Row("CUDA tests", status=f"FAIL: pytest wrote no report (exit {proc.returncode}): {last}")]
    rows = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        bad = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        why = ((bad.get("message") or "").splitlines() or [""])[0][:160] if bad is not None else ""
        if bad is None:
            status = "ok"
        elif bad.tag == "skipped" and sizes.device.type == "cpu":
            status = f"skipped on the CPU: {why}"
        else:  # on the GPU a skipped CUDA test is a path that did not run: a failure
            status = f"FAIL: {bad.tag}: {why}"
        rows.append(Row(f"test {case.get('name')}", status=status, seconds=float(case.get("time", "nan"))))
    if not rows:
        rows.append(Row("CUDA tests", status=f"FAIL: no test collected (exit {proc.returncode})"))
    elif proc.returncode != 0 and all(not r.failed for r in rows):
        rows.append(Row("CUDA tests", status=f"FAIL: pytest exit {proc.returncode}"))
    return rows


def step_extraction(sizes: Sizes, work: Path) -> List[Row]:
    """Each extractor through ``extract_throughput.bench_one`` (one round)."""
    import extract_throughput as et
    from featstore.datasets import load_dataset
    from featstore.runner.prefill import prefill_image_cache

    workers = sizes.workers if sizes.workers is not None else min(16, os.cpu_count() or 1)
    dataset = load_dataset(et.make_images(work / "data", sizes.images, min(512, sizes.images)))
    cache = work / "image-cache"
    prefill_image_cache(dataset, str(cache), num_workers=workers, progress=False)
    rows = []
    for setup in et.setups([name for name, _, _ in EXTRACT], "tiny" if sizes.quick else "full", work):
        what, goal = next((w, g) for n, w, g in EXTRACT if n == setup.name)
        bs = 4 if sizes.quick else et.FULL_CUDA_BATCH[setup.name]
        t0 = time.perf_counter()
        try:
            r = et.bench_one(setup, dataset, work, sizes.device, min(sizes.images, 2 * bs), bs, workers,
                             sizes.baseline_n, cache, 1)
        except Exception as err:  # a broken CUDA path: reported, the other steps still run
            rows.append(_failed(f"extract {setup.name} ({setup.describe})", err, t0))
            continue
        ceil = r.ceiling["host"]
        figure = (f"{fmt(r.pipeline_ips)} img/s cold, {fmt(r.cached_ips)} warm ({r.cached_ips / ceil:.0%} of ceiling "
                  f"{fmt(ceil)}); clip-retrieval loop {fmt(r.clip_ips)}" + _rest(r))
        ok = r.max_rel_diff <= 5e-2 and r.cached_identical
        status = (goal_status(r.pipeline_ips, goal, True, not sizes.quick, "dry run") if ok
                  else f"FAIL: stored features differ from the one-image loop ({r.max_rel_diff:.1e})")
        rows.append(Row(f"extract {what if not sizes.quick else setup.name + ' (tiny)'}", figure,
                        f">= {goal:,.0f} img/s", status, time.perf_counter() - t0))
    return rows


def _rest(r) -> str:
    """What the warm run lost to the ceiling: input and writer waits, and on CUDA the host-to-device copies."""
    w = r.split_warm
    out = f"; warm waits: inputs {w['inputs']:.0%}, writer {w['writer']:.0%}" if w else ""
    if "device" in r.ceiling:
        out += f"; H2D {1.0 - r.ceiling['host'] / r.ceiling['device']:.0%} of the ceiling's time"
    return out


def step_vilbert(sizes: Sizes, work: Path) -> List[Row]:
    """vilbert at Hateful Memes size on padded tokens, trimmed batches, a few epochs."""
    import heads_speed as hs
    from heads.train import TrainConfig, train

    n_train, n_val, epochs = sizes.vilbert
    t0 = time.perf_counter()
    data = hs.padded_data(n_train, n_val, 128, 768, "36", 2048, sizes.device)
    cfg = TrainConfig(head="vilbert", head_cfg=hs.TINY_HEAD_CFG["vilbert"] if sizes.quick else {}, epochs=epochs,
                      patience=0, device=sizes.device.type, amp=sizes.device.type == "cuda", threads=torch.get_num_threads())
    res = train(cfg, data, progress=False)
    times = [row["time_s"] for row in res.history]
    per_epoch = hs.median(times[1:] if len(times) > 1 else times)
    projected = VILBERT_EPOCHS * per_epoch
    what = "default MMF sizes" if not sizes.quick else "tiny"
    return [Row(f"vilbert head ({what}), {n_train:,} + {n_val} samples, trimmed, {epochs} epochs",
                f"{fmt(per_epoch)} s/epoch -> {VILBERT_EPOCHS} epochs {fmt(projected)} s",
                f"{VILBERT_EPOCHS} epochs < {VILBERT_GOAL_S:g} s",
                goal_status(projected, VILBERT_GOAL_S, False, not sizes.quick, "dry run"), time.perf_counter() - t0)]


def step_confounders(sizes: Sizes, work: Path) -> List[Row]:
    """find_confounders on the GPU: faiss-gpu's IVF when installed, else torch's exact search (the device
    image's CUDA has no faiss-gpu wheel); required on CUDA."""
    import confounders as cb
    from featstore.search import find_confounders, gpu_backend

    gpu = sizes.device.type == "cuda"
    backend = gpu_backend(True, "flat") if gpu else None
    if gpu and backend is None:
        return [Row("confounder search (GPU)", status="FAIL: neither faiss-gpu nor torch sees the CUDA device")]
    n = sizes.confounders
    img, txt, labels, planted = cb.make_data(n, 512, 0.01)
    ids = [str(i) for i in range(n)]
    t0 = time.perf_counter()
    pairs = find_confounders(ids, ids, img, txt, labels, use_gpu=gpu)
    secs = time.perf_counter() - t0
    found = {(p.row_a, p.row_b) for p in pairs}
    recall = len(found & planted) / len(planted)
    where = {None: "CPU index", "faiss": "GPU, faiss-gpu IVF", "torch": "GPU, torch exact search"}[backend]
    return [Row(f"confounder search, {n:,} x 512-d, {where}",
                f"{secs:.2f} s, {len(pairs)} pairs, planted recall {recall:.4f}", "-",
                "ok" if recall >= 0.95 else f"FAIL: planted recall {recall:.4f} < 0.95", secs)]


def step_nccl(sizes: Sizes, work: Path) -> List[Row]:
    n = torch.cuda.device_count() if sizes.device.type == "cuda" else 0
    return [Row("NCCL under torchrun", status=f"not run: needs 2 GPUs on one machine, this one has {n}")]


STEPS: Sequence[Callable[[Sizes, Path], List[Row]]] = (step_tests, step_extraction, step_vilbert, step_confounders,
                                                      step_nccl)


def _failed(step: str, err: BaseException, t0: float) -> Row:
    print(traceback.format_exc(), file=sys.stderr)
    first = (str(err).splitlines() or [""])[0][:200]
    return Row(step, status=f"FAIL: {type(err).__name__}: {first}", seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------- report
def table(rows: Sequence[Row]) -> str:
    lines = ["| step | figure | goal | status | s |", "| --- | --- | --- | --- | ---: |"]
    lines += [f"| {r.step} | {r.figure} | {r.goal} | {r.status} | {fmt(r.seconds)} |" for r in rows]
    return "\n".join(lines)


_BUDGET = {"s": 480.0, "end": float("inf")}  # the whole check's budget and its perf_counter deadline


class StepTimeout(BaseException):
    """The time budget ran out while a step was running (a BaseException: a step's own ``except Exception``
    around one extractor must not swallow it)."""


def _left() -> float:
    return max(1.0, _BUDGET["end"] - time.perf_counter())


def _on_alarm(signum, frame):
    raise StepTimeout(f"still running at the {_BUDGET['s']:g} s budget")


def run_steps(sizes: Sizes, budget_s: float, work: Path) -> List[Row]:
    """Every step in order; one that raises is a FAIL row, one still running at the budget is stopped."""
    rows: List[Row] = []
    _BUDGET.update(s=float(budget_s), end=time.perf_counter() + budget_s)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for step in STEPS:
            name = step.__name__.replace("step_", "")
            if time.perf_counter() >= _BUDGET["end"]:
                rows.append(Row(name, status=f"not run: time budget of {budget_s:g} s spent"))
                continue
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, _left())
            try:
                rows += step(sizes, work)
            except StepTimeout as err:
                rows.append(Row(name, status=f"FAIL: time: {err}", seconds=time.perf_counter() - t0))
            except Exception as err:  # one broken path must not hide the others
                rows.append(_failed(name, err, t0))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            print(f"  done {name} ({time.perf_counter() - t0:.1f} s)", flush=True)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return rows


def parse_args(argv):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="on the CPU at tiny sizes (CI)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_check_results.md"),
                   help="markdown file for the table (default benchmarks/gpu_check_results.md)")
    p.add_argument("--budget-s", type=positive_int("--budget-s"), default=480,
                   help="seconds after which the remaining steps are not started (default 480)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        from featstore.errors import FeatstoreError

        raise FeatstoreError("no GPU is visible to torch; run on a CUDA machine, or pass --dry-run to check the "
                             "script on the CPU")
    sizes = sizes_for(args.dry_run)
    head = header_lines("GPU check" + (" (DRY RUN: CPU, tiny sizes)" if args.dry_run else ""), sizes.device)
    for line in head:
        print(line)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featstore-gpu-check-") as tmp:
        rows = run_steps(sizes, args.budget_s, Path(tmp))
    text = "\n".join(head) + f"\ntotal  : {time.perf_counter() - t0:.0f} s\n\n" + table(rows) + "\n"
    print()
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"written to {args.out}")
    bad = [r for r in rows if r.failed]
    if bad:
        print(f"error: {len(bad)} step(s) failed: {', '.join(r.step for r in bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
