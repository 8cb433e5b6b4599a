"""Fault suite: damage a small store in every way the issue lists and print what each tool did.

    python benchmarks/faults.py [--out DIR] [--keep] [--no-train]

It builds a tiny Hateful-Memes-style dataset (8 PNGs, train + dev_seen), an image region set on each
backend (zarr, lmdb) and a text set, all written with ``Store.write``. For each damage kind it copies the
store, applies the damage to the image set, then runs, each in its own process (so a signal is seen,
not suffered): ``featstore verify``, a full ``load()`` of the image set compared with the arrays written,
and ``heads train`` (concat head, one epoch). Table columns: damage, what verify said, what the read did,
what heads train did, and the verdict: ``ok`` when no tool returned wrong data, died by a signal or
printed a traceback; ``FAIL`` otherwise. Disk full needs a small filesystem: it is covered by
tests/test_store_inputs.py (a 512 KiB tmpfs, where the platform lets the tests mount one).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featstore import Recipe, open_store  # noqa: E402
from featstore.store.backends import close_lmdb_envs  # noqa: E402

N_IMAGES, R, D, CHUNK = 8, 4, 16, 2
CAPTIONS = ["a cat", "a dog", "two birds", "a red car"]


def build_dataset(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(root / "img" / f"{i:05d}.png")
    sid = 1
    for split, reps in (("train", 3), ("dev_seen", 1)):
        with open(root / f"{split}.jsonl", "w") as f:
            for rep in range(reps):
                for i in range(N_IMAGES):
                    f.write(json.dumps({"id": sid, "img": f"img/{i:05d}.png", "label": (i + rep) % 2,
                                        "text": f"{CAPTIONS[i % 4]} {split} {rep}"}) + "\n")
                    sid += 1
    return root


def build_store(store: Path, data: Path) -> Dict[str, np.ndarray]:
    from featstore.datasets import load_dataset

    ds = load_dataset(data)
    rng = np.random.default_rng(1)
    keys = ds.image_keys()
    arrays = {"regions": rng.standard_normal((len(keys), R, D)).astype(np.float32),
              "count": rng.integers(1, R + 1, len(keys)).astype(np.int32),
              "pooled": rng.standard_normal((len(keys), D)).astype(np.float32)}
    st = open_store(str(store), create=True)
    for backend in ("zarr", "lmdb"):
        st.write(f"img-{backend}", Recipe("faults-regions", manifest_fingerprint=ds.fingerprint), keys, arrays,
                 key_kind="image_key", modality="image", per_item=["regions"], chunk_rows=CHUNK, backend=backend)
    ids = [s.id for s in ds.samples]
    text = {"cls": rng.standard_normal((len(ids), D)).astype(np.float32),
            "mean": rng.standard_normal((len(ids), D)).astype(np.float32)}
    st.write("txt", Recipe("faults-text", manifest_fingerprint=ds.fingerprint), ids, text, key_kind="sample_id",
             modality="text")
    close_lmdb_envs()
    return arrays


# ---- damage kinds ---------------------------------------------------------------------------------------------
def _vdir(store: Path, name: str) -> Path:
    return next((store / "sets" / name).iterdir())


def _chunk(v: Path, array: str, i: int) -> Path:
    base = v / "data.zarr" / array / "c" / str(i)
    return next(p for p in [base, *base.rglob("*")] if p.is_file())


def _flip(p: Path, offset: int = -1) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2 if offset < 0 else offset] ^= 0xFF
    p.write_bytes(bytes(b))


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".swap")
    os.rename(a, tmp), os.rename(b, a), os.rename(tmp, b)


def _edit_json(p: Path, fn: Callable[[dict], None]) -> None:
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def _lmdb_flip_record(v: Path) -> None:
    import lmdb

    env = lmdb.open(str(v / "data.lmdb"), subdir=True)
    with env.begin(write=True) as txn:
        key = b"00003"
        raw = bytearray(txn.get(key))
        raw[-5] ^= 0x01
        txn.put(key, bytes(raw))
    env.close()


ZARR_DAMAGE: List[Tuple[str, Callable[[Path], None]]] = [
    ("byte flip in a regions chunk", lambda v: _flip(_chunk(v, "regions", 1))),
    ("truncated regions chunk", lambda v: _chunk(v, "regions", 1).write_bytes(_chunk(v, "regions", 1).read_bytes()[:40])),
    ("deleted regions chunk", lambda v: os.remove(_chunk(v, "regions", 2))),
    ("swapped regions chunks", lambda v: _swap(_chunk(v, "regions", 0), _chunk(v, "regions", 1))),
    ("swapped count chunks", lambda v: _swap(_chunk(v, "count", 0), _chunk(v, "count", 3))),
    ("deleted ids chunk", lambda v: os.remove(v / "data.zarr" / "ids" / "c" / "0")),
    ("byte flip in ids chunk", lambda v: _flip(v / "data.zarr" / "ids" / "c" / "0")),
    ("pooled zarr.json float32->int32", lambda v: _edit_json(v / "data.zarr" / "pooled" / "zarr.json",
                                                              lambda d: d.update(data_type="int32"))),
    ("half-written regions zarr.json", lambda v: (v / "data.zarr" / "regions" / "zarr.json").write_text(
        (v / "data.zarr" / "regions" / "zarr.json").read_text()[:100])),
    ("garbage version.json", lambda v: (v / "version.json").write_text("{garbage")),
    ("deleted version.json", lambda v: os.remove(v / "version.json")),
    ("edited version.json (failure added)", lambda v: _edit_json(v / "version.json",
                                                                 lambda d: d["failures"].update({"00002": "x"}))),
]
LMDB_DAMAGE: List[Tuple[str, Callable[[Path], None]]] = [
    ("byte flip in a record", _lmdb_flip_record),
    ("truncated data.mdb", lambda v: (v / "data.lmdb" / "data.mdb").write_bytes(
        (v / "data.lmdb" / "data.mdb").read_bytes()[:(v / "data.lmdb" / "data.mdb").stat().st_size * 6 // 10])),
    ("deleted data.mdb", lambda v: os.remove(v / "data.lmdb" / "data.mdb")),
    ("flipped meta pages (MDB_INVALID)", lambda v: (_flip(v / "data.lmdb" / "data.mdb", 16),
                                                    _flip(v / "data.lmdb" / "data.mdb", 4096 + 16))),
    ("garbage version.json", lambda v: (v / "version.json").write_text("{garbage")),
]


# ---- the three tools, each in its own process ----------------------------------------------------------------
READ = """
import sys, numpy as np
from featstore import open_store
from featstore.errors import FeatstoreError
want = np.load(sys.argv[2])
try:
    got = open_store(sys.argv[1]).open(sys.argv[3]).load(["regions", "pooled"])
except FeatstoreError as e:
    print("one line:", e); raise SystemExit(3)
same = got["regions"].shape == want["regions"].shape and np.array_equal(got["regions"], want["regions"]) \\
    and np.array_equal(got["pooled"], want["pooled"])
print("right data" if same else "WRONG DATA")
"""


def _run(cmd: List[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _outcome(p: subprocess.CompletedProcess) -> Tuple[str, bool]:
    """(short description, bad: a signal or a traceback)."""
    text = (p.stdout + p.stderr).strip()
    if p.returncode < 0:
        return f"killed by signal {-p.returncode}", True
    if "Traceback" in text:
        return "TRACEBACK: " + text.splitlines()[-1][:60], True
    last = text.splitlines()[-1] if text else ""
    return (last if p.returncode else f"exit 0: {last}")[:200], False


def _short(text: str, store: Path) -> str:
    return text.replace(f"{store}/sets/", "").replace(str(store.parent.parent), "…")


def check(store: Path, data: Path, ref: str, want: Path, train: bool) -> Tuple[str, str, str, bool]:
    verify = _run([sys.executable, "-c", "from cli.featstore_cli import main; main()", "verify", "--store",
                   str(store)], ROOT)
    v_lines = [ln.strip() for ln in verify.stdout.splitlines() if ref in ln or ln.startswith("  ")]
    v_text = next((ln for ln in v_lines if not ln.startswith(ref)), v_lines[0] if v_lines else verify.stderr[-60:])
    v_bad = "Traceback" in verify.stderr or verify.returncode < 0
    read = _run([sys.executable, "-c", READ, str(store), str(want), ref], ROOT)
    r_text, r_bad = _outcome(read)
    r_bad = r_bad or "WRONG DATA" in read.stdout
    t_text, t_bad = "not run", False
    if train:
        t = _run([sys.executable, "-c", "from cli.heads_cli import main; main()", "train", "--store", str(store),
                  "--dataset", str(data), "--image", ref, "--text", "txt", "--head", "concat", "--epochs", "1",
                  "--quiet", "--device", "cpu", "--out", str(store.parent / f"run-{ref}")], ROOT)
        t_text, t_bad = _outcome(t)
        t_bad = t_bad or (t.returncode == 0 and "WRONG DATA" in read.stdout)
    return _short(v_text, store)[:90], _short(r_text, store), _short(t_text, store), v_bad or r_bad or t_bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="scratch directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-train", action="store_true", help="skip the heads train column (faster)")
    args = ap.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="featstore-faults-"))
    data = build_dataset(work / "data")
    clean = work / "clean"
    arrays = build_store(clean, data)
    want = work / "want.npz"
    np.savez(want, regions=arrays["regions"] * (np.arange(R)[None, :, None] < arrays["count"][:, None, None]),
             pooled=arrays["pooled"])
    rows = []
    for backend, kinds in (("zarr", ZARR_DAMAGE), ("lmdb", LMDB_DAMAGE)):
        for i, (what, damage) in enumerate(kinds):
            store = work / f"{backend}-{i}" / "store"
            shutil.copytree(clean, store)
            damage(_vdir(store, f"img-{backend}"))
            v, r, t, bad = check(store, data, f"img-{backend}", want, not args.no_train)
            rows.append((f"{backend}: {what}", v, r[:80], t[:80], "FAIL" if bad else "ok"))
            print(" | ".join(rows[-1]), flush=True)
    print()
    widths = [max(len(r[c]) for r in rows + [("damage", "verify said", "read did", "heads train did", "verdict")])
              for c in range(5)]
    for r in [("damage", "verify said", "read did", "heads train did", "verdict")] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    fails = sum(r[4] == "FAIL" for r in rows)
    print(f"\n{len(rows)} damage kinds, {fails} FAIL (goal: 0: no wrong data, no signal, no traceback)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
