"""Sweep speed: a 24-run `heads sweep` (4 settings x 2 heads x 3 seeds) against the same 24 runs as separate
`heads train` processes one after another, in one run.

    python benchmarks/heads_sweep.py [--device cpu|cuda|auto] [--quick] [--epochs E] [--heads concat,cross]

Data (generated once, seeded, into a temporary folder): a Hateful-Memes-shaped dataset folder with the
real split sizes (train 8,500, dev_seen 500, dev_unseen 540, test_seen 1,000, test_unseen 2,000 = 12,540
memes; ``--quick``: a tenth of each) and a store holding CLIP-ViT-L-sized cached vectors: ``clip-image``
(``pooled [N, 768]``, keyed by image) and ``clip-text`` (``cls [N, 768]``, keyed by sample id), with a
planted label ``y = [w.x_img + v.x_txt > 0]``.

Grid: ``lr`` in {1e-3, 3e-4} x ``label_smoothing`` in {0, 0.1}, heads ``concat`` and ``cross``, seeds 0, 1, 2,
``E`` epochs (3 by default), batch 64, ``--threads 1`` (CPU) so both ways compute identical numbers.

* sweep: one ``heads sweep`` process: the dataset and each feature set loaded once, 24 runs in it;
* baseline: 24 ``heads train`` processes in a row (each imports torch, reads the dataset and the features,
  trains one seed, writes its run folder with its plots), what the users' scripts did.

Column ``check``: the largest difference in dev AUROC between a sweep run and the separate run with the same
(head, setting, seed); the run fails (exit 1) when it is above 1e-6. Times are wall-clock seconds of this
machine as loaded at the time; compare rows of one run.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from _common import Parser, format_table, fmt, header_lines, name_list, resolve_device, run_main

from featstore.store import Recipe, open_store  # noqa: E402

HM_SPLITS = {"train": 8500, "dev_seen": 500, "dev_unseen": 540, "test_seen": 1000, "test_unseen": 2000}
GRID = {"lr": [1e-3, 3e-4], "label_smoothing": [0, 0.1]}
HEADS = ("concat", "cross")
SEEDS = (0, 1, 2)
CROSS_N = 64  # cross's proj_dim here (its default, the reference's 768, is GPU-sized); the size measured before session 11
DIM = 768
HEADS_CLI = [sys.executable, "-c", "from cli.heads_cli import main; main()"]  # what the `heads` script runs


def make_world(root: Path, scale: float, seed: int = 0) -> Tuple[Path, Path]:
    """The dataset folder and the store (see module docstring)."""
    g = np.random.default_rng(seed)
    data = root / "data"
    data.mkdir(parents=True)
    n = sum(max(8, int(k * scale)) for k in HM_SPLITS.values())
    img = g.normal(size=(n, DIM)).astype(np.float32)
    txt = g.normal(size=(n, DIM)).astype(np.float32)
    y = (img @ g.normal(size=DIM) / 8 + txt @ g.normal(size=DIM) / 8 + g.normal(size=n) > 0).astype(int)
    row = 0
    for split, k in HM_SPLITS.items():
        with open(data / f"{split}.jsonl", "w") as f:
            for _ in range(max(8, int(k * scale))):
                f.write(json.dumps({"id": row + 1, "img": f"img/{row + 1:05d}.png", "text": f"meme {row + 1}",
                                    "label": int(y[row])}) + "\n")
                row += 1
    st = open_store(root / "store", create=True)
    ids = [str(i + 1) for i in range(n)]
    st.write("clip-image", Recipe("clip-image"), [f"{int(i):05d}" for i in ids], {"pooled": img},
             key_kind="image_key", modality="image")
    st.write("clip-text", Recipe("clip-text"), ids, {"cls": txt}, key_kind="sample_id", modality="text")
    return data, root / "store"


def common_args(data: Path, store: Path, device: str) -> List[str]:
    return ["--store", str(store), "--dataset", str(data), "--image", "clip-image", "--text", "clip-text",
            "--device", device]


def settings() -> List[Dict[str, float]]:
    return [{"lr": lr, "label_smoothing": ls} for lr in GRID["lr"] for ls in GRID["label_smoothing"]]


def run_sweep(data: Path, store: Path, out: Path, heads: Sequence[str], epochs: int, device: str) -> float:
    cmd = [*HEADS_CLI, "sweep", *common_args(data, store, device),
           "--head", ",".join(heads), "--grid", "lr=" + ",".join(map(str, GRID["lr"])),
           "--grid", "label_smoothing=" + ",".join(map(str, GRID["label_smoothing"])),
           "--grid", f"epochs={epochs}", "--grid", "batch_size=64", "--grid", "patience=0",
           "--grid", f"cross.proj_dim={CROSS_N}", "--seeds", ",".join(map(str, SEEDS)), "--out", str(out)]
    if device == "cpu":
        cmd += ["--grid", "threads=1"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
    return time.perf_counter() - t0


def run_separately(data: Path, store: Path, out: Path, heads: Sequence[str], epochs: int, device: str) -> float:
    t0 = time.perf_counter()
    for head in heads:
        for s in settings():
            for seed in SEEDS:
                cmd = [*HEADS_CLI, "train", *common_args(data, store, device),
                       "--head", head, "--lr", str(s["lr"]), "--label-smoothing", str(s["label_smoothing"]),
                       "--epochs", str(epochs), "--batch-size", "64", "--patience", "0", "--seeds", str(seed),
                       "--quiet", "--out", str(out / f"{head}_{s['lr']}_{s['label_smoothing']}_{seed}")]
                if head == "cross":
                    cmd += ["--set", f"proj_dim={CROSS_N}"]
                if device == "cpu":
                    cmd += ["--threads", "1"]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
    return time.perf_counter() - t0


def max_dev_auroc_diff(sweep_out: Path, separate_out: Path) -> float:
    worst = 0.0
    for row in (sweep_out / "runs").iterdir():
        r = json.loads((row / "row.json").read_text())
        for seed in SEEDS:
            a = json.loads((row / f"seed_{seed}" / "metrics.json").read_text())["dev"]["label/auroc"]
            s = r["setting"]
            name = f"{r['head']}_{s['lr']}_{s['label_smoothing']}_{seed}"
            b = json.loads((separate_out / name / f"seed_{seed}" / "metrics.json").read_text())["dev"]["label/auroc"]
            worst = max(worst, abs(a - b))
    return worst


def parse_args(argv: Optional[Sequence[str]]):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_device()
    p.add_argument("--quick", action="store_true", help="a tenth of the Hateful Memes sizes")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--heads", default=",".join(HEADS))
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    heads = name_list("--heads", args.heads, ("concat", "cross", "text-only", "image-only", "gnn", "refnet"), "head")
    runs = len(settings()) * len(heads) * len(SEEDS)
    scale = 0.1 if args.quick else 1.0
    for line in header_lines(f"heads sweep vs separate heads train processes ({runs} runs)", device):
        print(line)
    with tempfile.TemporaryDirectory(prefix="heads-sweep-bench-") as tmp:
        root = Path(tmp)
        data, store = make_world(root, scale)
        n = sum(1 for f in data.glob("*.jsonl") for _ in open(f))
        print(f"data: {n:,} memes (splits {', '.join(f'{k} {max(8, int(v * scale)):,}' for k, v in HM_SPLITS.items())}), "
              f"pooled {DIM}-d image and text vectors; {args.epochs} epochs, batch 64, heads {', '.join(heads)}")
        sweep_s = run_sweep(data, store, root / "sweep", heads, args.epochs, device.type)
        sep_s = run_separately(data, store, root / "separate", heads, args.epochs, device.type)
        diff = max_dev_auroc_diff(root / "sweep", root / "separate")
    rows = [["heads sweep (1 process)", fmt(sweep_s), fmt(sweep_s / runs), "1.00x", fmt(diff)],
            [f"{runs} heads train processes", fmt(sep_s), fmt(sep_s / runs), f"{sep_s / sweep_s:.2f}x", ""]]
    print(format_table(["mode", "wall s", "s per run", "time vs sweep", "check (max |d dev AUROC|)"], rows))
    print(f"sweep is {sep_s / sweep_s:.2f}x faster than separate processes "
          f"({'met' if sweep_s < sep_s else 'NOT met'}: the sweep must be faster)")
    if diff > 1e-6:
        print(f"error: the sweep's runs differ from the separate runs (dev AUROC by up to {diff:.3g})")
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
