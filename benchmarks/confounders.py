"""Benchmark: find every confounder pair among N synthetic samples (512-d image and text vectors).

    python benchmarks/confounders.py [--sizes 10000 1000000] [--dim 512] [--planted-frac 0.01]

For each size: random Gaussian vectors plus planted pairs (``planted_frac * N`` same-image pairs and
as many same-text pairs, cosine 0.958..0.9998), then

* ``faiss``: ``featstore.search.find_confounders`` (exact flat index up to 5000 samples, IVF above);
* ``brute``: the naive numpy all-pairs search, one dense ``N x N`` similarity matrix per modality
  (float32), thresholded; run only when the matrix fits in half the free memory.

Printed: seconds for each, pairs found, recall of the planted pairs, agreement with brute force, and
whether the goal "10k samples in under a second on CPU" is met. ``faiss s`` is wall-clock (best of
``--repeat``), ``cpu s`` the process CPU time summed over threads (useful on a shared machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from featstore.search import find_confounders  # noqa: E402


def make_data(n: int, dim: int, planted_frac: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n, dim), dtype=np.float32)
    txt = rng.standard_normal((n, dim), dtype=np.float32)
    m = max(1, int(planted_frac * n))
    rows = rng.choice(n, size=4 * m, replace=False)
    a_img, b_img, a_txt, b_txt = rows[:m], rows[m:2 * m], rows[2 * m:3 * m], rows[3 * m:]
    # noise 0.02..0.3 per dimension: planted cosines from ~0.9998 down to ~0.958, near the 0.95 threshold
    scale = rng.uniform(0.02, 0.3, (m, 1)).astype(np.float32)
    img[b_img] = img[a_img] + scale * rng.standard_normal((m, dim), dtype=np.float32)
    scale = rng.uniform(0.02, 0.3, (m, 1)).astype(np.float32)
    txt[b_txt] = txt[a_txt] + scale * rng.standard_normal((m, dim), dtype=np.float32)
    planted = {tuple(sorted(p)) for p in zip(a_img.tolist(), b_img.tolist())} | \
              {tuple(sorted(p)) for p in zip(a_txt.tolist(), b_txt.tolist())}
    labels = rng.integers(0, 2, n)
    return img, txt, labels, planted


def brute_force(img, txt, it=0.95, tt=0.95, diff=0.9):
    """Dense all-pairs: one N x N cosine matrix per modality, then the same rules as find_confounders."""
    xi = img / np.linalg.norm(img, axis=1, keepdims=True)
    xt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    si = xi @ xi.T
    st = xt @ xt.T
    upper = np.triu(np.ones(si.shape, dtype=bool), k=1)
    same_image = upper & (si >= it) & (st < diff)
    same_text = upper & (st >= tt) & (si < diff)
    return {tuple(p) for p in np.argwhere(same_image | same_text).tolist()}


def free_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--planted-frac", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per size (best is reported)")
    args = ap.parse_args(argv)

    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs, dim {args.dim}")
    header = f"{'N':>9} | {'faiss s':>8} | {'cpu s':>7} | {'pairs':>6} | {'planted recall':>14} | {'brute s':>8} | {'same as brute':>13} | note"
    print(header)
    print("-" * len(header))
    goal_met = None
    for n in args.sizes:
        img, txt, labels, planted = make_data(n, args.dim, args.planted_frac)
        ids = [str(i) for i in range(n)]
        keys = ids
        best, cpu, pairs = float("inf"), float("inf"), None
        for _ in range(args.repeat if n <= 100_000 else 1):
            t0, c0 = time.perf_counter(), time.process_time()
            pairs = find_confounders(ids, keys, img, txt, labels)
            best = min(best, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        found = {(p.row_a, p.row_b) for p in pairs}
        recall = len(found & planted) / len(planted)
        dense_bytes = 2 * n * n * 4 + n * n  # two float32 matrices and a bool mask
        if dense_bytes <= free_memory() // 2:
            t0 = time.perf_counter()
            ref = brute_force(img, txt)
            brute_s = f"{time.perf_counter() - t0:8.2f}"
            same = "yes" if ref == found else f"no ({len(ref ^ found)} differ)"
            note = ""
        else:
            brute_s, same = f"{'skipped':>8}", "-"
            note = (f"brute force skipped: two dense {n}x{n} float32 matrices need "
                    f"{dense_bytes / 2**30:.0f} GiB (> half of the {free_memory() / 2**30:.0f} GiB free)")
        print(f"{n:>9} | {best:8.2f} | {cpu:7.2f} | {len(found):>6} | {recall:>14.4f} | {brute_s} | {same:>13} | {note}")
        if n == 10_000:
            goal_met = best < 1.0
        del img, txt
    if goal_met is not None:
        print(f"goal '10k samples in under a second on CPU': {'MET' if goal_met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
