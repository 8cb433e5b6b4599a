"""Shared builders for the CLI / glue tests (test_cli_featstore, test_cli_heads, test_interop_bridge,
test_inspect): a tiny Hateful-Memes-style folder made of real PNGs, real feature sets written by the real
extractors through the CLI, and helpers that run a click command in-process and check its result.

Tiny extractor configs (real architectures, random weights for the CNN, the MiniLM that ships with the
project for text):

* ``GRID``: ResNet-18, 64 x 64 input, 2 x 2 grid -> ``regions [N, 4, 512]``, ``pooled [N, 512]``, float32.
* ``BERT``: MiniLM-L6 (``weights=demo``), ``max_length=16`` -> ``tokens [N, 16, 384]``, ``cls``/``mean [N, 384]``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image

GRID = ["--set", "backbone=resnet18", "--set", "image_size=64", "--set", "grid_size=2", "--set", "dtype=float32"]
GRID_CFG = dict(backbone="resnet18", image_size=64, grid_size=2, dtype="float32")
BERT = ["--weights", "demo", "--set", "max_length=16", "--set", "dtype=float32"]
BERT_CFG = dict(weights="demo", max_length=16, dtype="float32")

N_IMAGES = 6
CAPTIONS = ["a red car on a wet road", "two dogs play in the snow", "a quiet lake at dawn",
            "an old clock on a brick wall", "a green field under clouds", "a city street at night"]
# image i is drawn with its own colour and stripe pattern, so the images differ in content (and features)
COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (230, 200, 40), (150, 40, 170), (20, 200, 200)]


def invoke(cli, args: Sequence, code: int = 0) -> str:
    """Run a click command in-process; assert its exit status; return stdout + stderr."""
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == code, f"{[str(a) for a in args]}: exit {res.exit_code}\n{res.output}"
    return res.output


def invoke_result(cli, args: Sequence) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(cli, args: Sequence) -> str:
    """Assert the command fails like a user error: exit 2, exactly one ``error: ...`` line, no traceback.

    Returns that line."""
    res = invoke_result(cli, args)
    assert res.exit_code == 2, f"{[str(a) for a in args]}: exit {res.exit_code}\n{res.output}"
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def make_image(path: Path, i: int, size=(56, 48)) -> None:
    """A real PNG: image ``i``'s colour with vertical stripes every ``i + 2`` pixels."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = COLOURS[i % len(COLOURS)]
    arr[:, :: i + 2] = 255 - np.asarray(COLOURS[i % len(COLOURS)], np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_hm_folder(root: Path) -> Path:
    """A Hateful-Memes-style folder: ``img/0000i.png`` (6 images) and train / dev_seen / test_seen jsonl.

    Built from confounders like the real set: every caption appears with its own image (label 0) and with
    the next image (label 1), so every image also carries both labels. Ids are integers without leading
    zeros (1, 2, ...); image keys keep them ("00003"). Train holds the captions twice (plain and with
    " again"), dev and test once each with their own suffix: 24 / 12 / 12 samples.
    """
    data = Path(root)
    for i in range(N_IMAGES):
        make_image(data / "img" / f"{i:05d}.png", i)
    rows: Dict[str, List[dict]] = {"train": [], "dev_seen": [], "test_seen": []}
    sid = 1
    for suffix, split in (("", "train"), (" again", "train"), (" today", "dev_seen"), (" here", "test_seen")):
        for i, text in enumerate(CAPTIONS):
            for img, label in ((i, 0), ((i + 1) % N_IMAGES, 1)):
                rows[split].append({"id": sid, "img": f"img/{img:05d}.png", "label": label, "text": text + suffix})
                sid += 1
    for split, rs in rows.items():
        with open(data / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rs)
    return data


def hm_store_world(root: Path) -> dict:
    """``make_hm_folder(root / "data")`` with its manifest and an empty store: ``{"root", "data", "ds", "store",
    "st", "keys" (unique image keys, sorted), "ids" (sample ids)}``, for tests that write feature sets by hand."""
    from featstore.datasets import load_dataset
    from featstore.store import open_store

    data = make_hm_folder(Path(root) / "data")
    ds = load_dataset(data)
    return {"root": Path(root), "data": data, "ds": ds, "store": Path(root) / "store",
            "st": open_store(Path(root) / "store", create=True), "keys": sorted({s.image_key for s in ds.samples}),
            "ids": [s.id for s in ds.samples]}


def extract_args(data: Path, store: Path, extractor: str, *extra) -> list:
    """``featstore extract`` arguments for the tiny grid / bert configs (no worker processes, no bar)."""
    cfg = GRID if extractor == "grid" else BERT if extractor == "bert" else []
    return ["extract", "--dataset", data, "--extractor", extractor, "--store", store, "--workers", 0, "--quiet",
            *cfg, *extra]


def build_world(root: Path) -> dict:
    """Folder + store with ``grid`` (chunks of 4 rows) and ``bert`` sets, both written by `featstore extract`.

    Returns ``{"root", "data", "store", "ds" (the loaded manifest), "out_grid", "out_bert" (CLI output)}``.
    """
    from cli.featstore_cli import main as featstore
    from featstore.datasets import load_dataset

    root = Path(root)
    data = make_hm_folder(root / "data")
    store = root / "store"
    out_grid = invoke(featstore, extract_args(data, store, "grid", "--chunk-rows", 4))
    out_bert = invoke(featstore, extract_args(data, store, "bert"))
    return {"root": root, "data": data, "store": store, "ds": load_dataset(data), "out_grid": out_grid,
            "out_bert": out_bert}


def small_region_store(path: Path, n: int = 6, chunk_rows: int = 2, seed: int = 3):
    """A store with one region set ``small`` written by ``Store.write`` (no extractor): keys ``00000``..,
    ``regions [n, 3, 4]`` (per item, all 3 real), ``pooled [n, 4]``, float32, ``chunk_rows`` rows per chunk.

    Returns (store, version, arrays)."""
    from featstore.store import Recipe, open_store

    st = open_store(path, create=True)
    rng = np.random.default_rng(seed)
    arrays = {"regions": rng.standard_normal((n, 3, 4)).astype(np.float32), "count": np.full(n, 3, np.int32),
              "pooled": rng.standard_normal((n, 4)).astype(np.float32)}
    fsv = st.write("small", Recipe("test-small"), [f"{i:05d}" for i in range(n)], arrays, key_kind="image_key",
                   modality="image", per_item=["regions"], chunk_rows=chunk_rows)
    return st, fsv, arrays


def tree(root: Path) -> Dict[str, int]:
    """Every file below ``root`` -> its mtime in ns (empty when ``root`` does not exist)."""
    root = Path(root)
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} \
        if root.exists() else {}


def table_rows(output: str) -> List[List[str]]:
    """The body rows of a table printed by ``cli.common.echo_table`` (header dropped), split on 2+ spaces."""
    import re

    lines = [line for line in output.splitlines() if line.strip()]
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


def cosine_neighbours_f64(vectors: np.ndarray, q: int, k: int):
    """Reference search: float64 cosine of row ``q`` with every row, ``q`` excluded, best ``k`` first.

    Returns (rows, cosines); ties are broken by row (stable sort)."""
    v = np.asarray(vectors, np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v[q]
    order = [int(i) for i in np.argsort(-sims, kind="stable") if i != q][:k]
    return order, sims[order]
