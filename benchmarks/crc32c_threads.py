"""CRC32C of a 64 MiB buffer, 1 thread vs 4 threads, with ``crc32c`` (LGPL-2.1, what the store imports) and
``google-crc32c`` (Apache-2.0, which zarr installs): GB/s and whether 4 threads overlap (the GIL released).

    OMP_NUM_THREADS=1 python benchmarks/crc32c_threads.py
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import crc32c as ici
import google_crc32c as gcrc

MIB = 1 << 20
BUF = os.urandom(64 * MIB)
IMPLS = {"crc32c (ICRAR)": ici.crc32c, "google-crc32c": lambda b: gcrc.value(b)}


def _takes_buffers(fn) -> str:
    """Whether ``fn`` accepts a memoryview and a numpy array (the store checksums views of chunk arrays)."""
    import numpy as np

    try:
        fn(memoryview(BUF)[:16]), fn(np.frombuffer(BUF[:16], np.uint8))
        return "yes"
    except TypeError as e:
        return f"no ({e})"


def _rate(fn, threads: int, reps: int = 3) -> float:
    """Best GB/s over ``reps`` of ``threads`` threads each checksumming the whole 64 MiB ``bytes`` buffer."""
    view = BUF
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(reps):
            t = time.perf_counter()
            list(pool.map(lambda _: fn(view), range(threads)))
            best = max(best, threads * len(BUF) / (time.perf_counter() - t) / 1e9)
    return best


def main() -> None:
    assert ici.crc32c(BUF) == gcrc.value(BUF), "the two libraries disagree"
    print(f"{'library':<16} {'1 thread GB/s':>14} {'4 threads GB/s':>15} {'4t / 1t':>8}   (cores: {os.cpu_count()})")
    for name, fn in IMPLS.items():
        one, four = _rate(fn, 1), _rate(fn, 4)
        print(f"{name:<16} {one:>14.2f} {four:>15.2f} {four / one:>8.2f}   buffers: {_takes_buffers(fn)}")


if __name__ == "__main__":
    main()
