"""Helpers for the store tests only (test_store*.py): synthetic feature sets, a reference ``select``
written independently of the store (a per-row Python loop), file snapshots and a writer that runs in a
subprocess (so it can be killed, or run twice at once).

Region sets follow the store's contract: ``regions`` [N, R, D] and ``boxes`` [N, R, 4] are per-item arrays
whose true number of items per row is ``count`` [N] int32; ``image_size`` [N, 2] int32 and ``pooled``
[N, D] are fixed.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from featstore import ArraySpec, FeatstoreError, Recipe  # noqa: E402

PER_ITEM = ("regions", "boxes")


def recipe(**over) -> Recipe:
    """A fixed recipe; keyword arguments replace single fields."""
    fields = dict(extractor="grid", config={"size": 4, "layers": [1, 2]}, weights_fingerprint="w" * 64,
                  preprocessing={"resize": 8, "mean": [0.5, 0.5, 0.5]}, manifest_fingerprint="m" * 64,
                  tool_version="0.1.0")
    fields.update(over)
    return Recipe(**fields)


def make_keys(n: int, prefix: str = "") -> List[str]:
    """Image-key-like strings with leading zeros (``"00042"``)."""
    return [f"{prefix}{i:05d}" for i in range(n)]


def region_data(n: int, r: int = 5, d: int = 8, dtype: str = "float16", seed: int = 0,
                junk_beyond_count: bool = False) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """Keys and arrays of a region feature set.

    Items at positions >= count are zero, unless ``junk_beyond_count`` (then they hold random values the
    store must replace by zeros). Counts cover 0 and r.
    """
    rng = np.random.default_rng(seed)
    count = rng.integers(0, r + 1, size=n).astype(np.int32)
    if n >= 2:
        count[0], count[1] = r, 0
    regions = rng.standard_normal((n, r, d)).astype(dtype)
    xy = rng.uniform(0, 100, size=(n, r, 2))
    wh = rng.uniform(1, 50, size=(n, r, 2))
    boxes = np.concatenate([xy, xy + wh], axis=2).astype(np.float32)
    if not junk_beyond_count:
        beyond = np.arange(r)[None, :] >= count[:, None]
        regions[beyond] = 0
        boxes[beyond] = 0
    image_size = rng.integers(1, 1000, size=(n, 2)).astype(np.int32)
    pooled = rng.standard_normal((n, d)).astype(dtype)
    return make_keys(n), {"regions": regions, "boxes": boxes, "image_size": image_size, "count": count,
                          "pooled": pooled}


def region_schema(r: int = 5, d: int = 8, dtype: str = "float16",
                  names: Optional[Sequence[str]] = None) -> Dict[str, ArraySpec]:
    """The schema of ``region_data`` (only ``names`` when given; ``count`` is implied by per-item arrays)."""
    schema = {"regions": ArraySpec((r, d), dtype, per_item=True), "boxes": ArraySpec((r, 4), "float32", per_item=True),
              "image_size": ArraySpec((2,), "int32"), "pooled": ArraySpec((d,), dtype)}
    return {k: v for k, v in schema.items() if names is None or k in names}


def only(arrays: Dict[str, np.ndarray], names: Optional[Sequence[str]]) -> Dict[str, np.ndarray]:
    """``arrays`` restricted to ``names`` plus ``count`` (all of them when ``names`` is None)."""
    return {k: v for k, v in arrays.items() if names is None or k in names or k == "count"}


def fixed_data(n: int, d: int = 6, dtype: str = "float32", seed: int = 1) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """A set of fixed-width vectors only (no per-item arrays, hence no ``count``), keyed by sample id."""
    rng = np.random.default_rng(seed)
    return [f"id{i}" for i in range(n)], {"cls": rng.standard_normal((n, d)).astype(dtype),
                                          "input_ids": rng.integers(0, 30000, size=(n, 3)).astype(np.int64)}


def chunk_failures(keys: Sequence[str], sl: slice, failures: Dict[str, str]) -> Dict[str, str]:
    return {k: failures[k] for k in keys[sl] if k in failures}


def write_chunks(writer, arrays: Dict[str, np.ndarray], chunks: Sequence[int],
                 failures: Optional[Dict[str, str]] = None) -> None:
    """Write the given chunks of in-memory ``arrays`` (rows in key order) with ``writer.write_chunk``."""
    failures = failures or {}
    for c in chunks:
        sl = writer.chunk_slice(c)
        writer.write_chunk(c, {k: v[sl] for k, v in arrays.items()}, chunk_failures(writer.keys, sl, failures))


def reference_select(all_keys: Sequence[str], arrays: Dict[str, np.ndarray], keys: Sequence[str],
                     width: Optional[int]) -> Dict[str, np.ndarray]:
    """What ``select`` must return, computed row by row: only the first ``count`` items of a row are real."""
    row = {k: i for i, k in enumerate(all_keys)}
    count = arrays["count"]
    stored = arrays["regions"].shape[1]
    width = stored if width is None else width
    out = {name: np.zeros((len(keys),) + a.shape[1:], a.dtype) for name, a in arrays.items() if name not in PER_ITEM}
    for name in PER_ITEM:
        if name in arrays:
            a = arrays[name]
            out[name] = np.zeros((len(keys), width) + a.shape[2:], a.dtype)
    out["mask"] = np.zeros((len(keys), width), bool)
    for j, k in enumerate(keys):
        i = row[k]
        c = min(int(count[i]), width)
        for name, a in arrays.items():
            if name in PER_ITEM:
                out[name][j, :c] = a[i, :c]
            else:
                out[name][j] = a[i]
        out["count"][j] = c
        out["mask"][j, :c] = True
    return out


def snapshot(root) -> Dict[str, Tuple[int, int, str]]:
    """Every file below ``root``: relative path -> (mtime in ns, size, sha256 of the content)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (st.st_mtime_ns, st.st_size, hashlib.sha256(fh.read()).hexdigest())
    return out


def chunk_objects(version_dir, array: str) -> List[str]:
    """The chunk (or shard) files of one Zarr array of a version, sorted by chunk index."""
    base = Path(version_dir) / "data.zarr" / array / "c"
    files = [p for p in base.rglob("*") if p.is_file()]
    return [str(p) for p in sorted(files, key=lambda p: int(p.relative_to(base).parts[0]))]


def flip_byte(path, offset: Optional[int] = None) -> None:
    data = bytearray(Path(path).read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def truncate(path, keep: float = 0.5) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def assert_one_line_error(excinfo, *needles: str) -> str:
    """The raised error is a FeatstoreError whose message is one line containing every needle."""
    err = excinfo.value
    assert isinstance(err, FeatstoreError), type(err)
    msg = str(err)
    assert "\n" not in msg and msg.strip() == msg and msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


@dataclass
class Sample:
    """The two fields ``preflight`` needs from a manifest sample."""

    id: str
    image_key: str


# ---- a writer process ------------------------------------------------------------------------------------
def writer_main(argv: Sequence[str]) -> None:
    """Entry point of a writer subprocess; ``argv[0]`` is a JSON object of the arguments below.

    url, storage_options, name, n, r, d, dtype, seed, chunk_rows, backend, names (optional subset of the
    arrays): the region set to write;
    parity (optional): write only chunks with ``chunk % 2 == parity``; kill_after (optional): SIGKILL this
    process after that many chunks; go_file (optional): wait until that file exists before writing (so two
    writers start at the same moment); commit: commit at the end. Prints the chunks it wrote as JSON.
    """
    import time

    from featstore import open_store

    a = json.loads(argv[0])
    store = open_store(a["url"], create=True, storage_options=a.get("storage_options"))
    keys, arrays = region_data(a["n"], a["r"], a["d"], a["dtype"], a["seed"])
    arrays = only(arrays, a.get("names"))
    if a.get("go_file"):
        while not os.path.exists(a["go_file"]):
            time.sleep(0.005)
    w = store.writer(a["name"], recipe(), keys, region_schema(a["r"], a["d"], a["dtype"], a.get("names")),
                     key_kind="image_key", modality="image", chunk_rows=a["chunk_rows"], backend=a["backend"])
    todo = [c for c in w.pending_chunks() if a.get("parity") is None or c % 2 == a["parity"]]
    done = []
    for c in todo:
        if a.get("kill_after") is not None and len(done) == a["kill_after"]:
            os.kill(os.getpid(), 9)
        write_chunks(w, arrays, [c])
        done.append(c)
    if a.get("commit"):
        w.commit()
    print(json.dumps(done))


def writer_command(**args) -> List[str]:
    """argv of a ``python -c`` writer process (see ``writer_main``)."""
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(TESTS)!r}]; import store_helpers; "
            f"store_helpers.writer_main(sys.argv[1:])")
    return [sys.executable, "-c", code, json.dumps(args)]


def writer_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_writer(timeout: float = 60, **args) -> subprocess.CompletedProcess:
    return subprocess.run(writer_command(**args), env=writer_env(), capture_output=True, text=True, timeout=timeout)
