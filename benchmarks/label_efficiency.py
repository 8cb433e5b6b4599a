"""Label efficiency: ReFNet against its base head at 5, 10, 20 and 100% of the train labels, with and without
refiner pretraining on every train row; mean +- std of test AUROC over seeds, in one run.

    python benchmarks/label_efficiency.py [--device auto|cpu|cuda] [--quick] [--seeds 0,1,2]
        [--fractions 0.05,0.1,0.2,1] [--base concat|cross] [--n-train N] [--epochs E] [--pretrain-epochs 2,10]

The claim measured (Sankaran et al. 2021, "Multimodal Fusion Refiner Networks"): ReFNet keeps its
performance with 5-20% of the labels, helped by refiner pretraining on the unlabelled rows.

Task (seeded, built so that fusion is needed): every sample has an image concept ``ci`` and a text concept
``ct`` (``K`` each, uniform and independent); its pooled image feature is the image concept's centroid plus
Gaussian noise, its pooled text feature likewise (``dim`` each, centroids drawn once, norm 1 per
dimension on average); the label is ``(ci + ct) mod 2``. Every image concept and every text concept is
hateful exactly half the time, so one modality alone is at chance (the image-only and text-only rows at
100% show it) and only the pair decides the label. Splits: ``N`` train, ``N / 4`` val (always fully
labelled, for early stopping), ``N / 2`` test.

Rows: ``base`` (the base head alone), ``refnet`` (ReFNet over the same base config, the paper's defaults:
gamma 0.1 per modality, MS weight 0.25, alpha 50 / beta 2 / base 0.5 / mining 0.1) and ``refnet+preP``
for each ``P`` of ``--pretrain-epochs`` (the same after ``P`` epochs of the refiner loss alone on every train
row, labelled or not: ``TrainConfig.pretrain_epochs``; the paper gives no epoch count, so two are tried). ``label_fraction`` keeps a stratified subset of the train labels with the
run's seed. Same seeds, same optimiser settings (AdamW lr 1e-3, batch 32, warmup 10%, early stop on val
AUROC with patience 8) for every row. ``d`` columns are that ReFNet row minus base in mean AUROC; ``wins``
says where a ReFNet row's mean beats the base by more than both rows' std.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from _common import Parser, format_table, header_lines, positive_int, resolve_device, run_main

import torch  # noqa: E402

from featstore.errors import FeatstoreError  # noqa: E402
from heads.data import TrainData  # noqa: E402
from heads.spec import Task, TaskSpec  # noqa: E402
from heads.train import TrainConfig, train  # noqa: E402

BASES = {"concat": dict(hidden=[128], dropout=0.1), "cross": dict(proj_dim=16, hidden=[128], dropout=0.1)}


@dataclass
class Sizes:
    n_train: int = 2000
    dim: int = 32
    concepts: int = 4
    noise: float = 1.5
    epochs: int = 40
    pretrain_epochs: Tuple[int, ...] = (2, 10)


def make_task(sizes: Sizes, device: torch.device, seed: int = 1234) -> TrainData:
    """The fusion-needed task of the module docstring, as a ``TrainData`` with train / val / test splits."""
    g = torch.Generator().manual_seed(seed)
    n_val, n_test = sizes.n_train // 4, sizes.n_train // 2
    n = sizes.n_train + n_val + n_test
    k, d = sizes.concepts, sizes.dim
    ci, ct = torch.randint(0, k, (n,), generator=g), torch.randint(0, k, (n,), generator=g)
    img_c, txt_c = torch.randn(k, d, generator=g), torch.randn(k, d, generator=g)
    feats = {"img_pooled": img_c[ci] + sizes.noise * torch.randn(n, d, generator=g),
             "txt_pooled": txt_c[ct] + sizes.noise * torch.randn(n, d, generator=g)}
    labels = (ci + ct) % 2
    cuts = [0, sizes.n_train, sizes.n_train + n_val, n]
    splits = {s: torch.arange(cuts[i], cuts[i + 1], device=device) for i, s in enumerate(("train", "val", "test"))}
    spec = TaskSpec([Task("label", "binary", 2, ["0", "1"])])
    return TrainData({k_: v.to(device) for k_, v in feats.items()}, [f"s{i:05d}" for i in range(n)],
                     {"label": labels.to(device)}, splits, spec)


def run_config(variant: str, base: str, fraction: float, seed: int, sizes: Sizes, device: torch.device,
               threads: int) -> TrainConfig:
    """The ``TrainConfig`` of one cell: ``variant`` one of ``variants(sizes)`` or "text-only" / "image-only"."""
    if variant in ("text-only", "image-only"):
        head, head_cfg = variant, dict(hidden=[128], dropout=0.1)
    elif variant == "base":
        head, head_cfg = base, dict(BASES[base])
    else:
        head, head_cfg = "refnet", dict(base=base, base_cfg=dict(BASES[base]))
    return TrainConfig(head=head, head_cfg=head_cfg, lr=1e-3, batch_size=32, epochs=sizes.epochs, patience=8,
                       seed=seed, device=device.type, label_fraction=None if fraction >= 1 else fraction,
                       pretrain_epochs=int(variant[len("refnet+pre"):] or 0) if variant.startswith("refnet+pre")
                       else 0, threads=threads)


def variants(sizes: Sizes) -> List[str]:
    return ["base", "refnet"] + [f"refnet+pre{p}" for p in sizes.pretrain_epochs]


def test_auroc(cfg: TrainConfig, data: TrainData) -> float:
    return float(train(cfg, data, progress=False).metrics["test"]["label/auroc"])


def mean_std(values: Sequence[float]) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def measure(data: TrainData, base: str, fractions: Sequence[float], seeds: Sequence[int], sizes: Sizes,
            device: torch.device, threads: int) -> Dict[tuple, List[float]]:
    """``{(variant, fraction): [test AUROC per seed]}`` for every variant x fraction, plus the unimodal rows
    at 100%."""
    cells = [(v, f) for f in fractions for v in variants(sizes)] + [(v, 1.0) for v in ("image-only", "text-only")]
    out: Dict[tuple, List[float]] = {}
    for v, f in cells:
        t0 = time.perf_counter()
        out[(v, f)] = [test_auroc(run_config(v, base, f, s, sizes, device, threads), data) for s in seeds]
        m, sd = mean_std(out[(v, f)])
        print(f"  done {v:<12} labels {f:>5.0%}: AUROC {m:.3f} +- {sd:.3f} ({time.perf_counter() - t0:.1f} s)",
              flush=True)
    return out


def wins(res: Dict[tuple, List[float]], variant: str, f: float) -> bool:
    (mr, sr), (mb, sb) = mean_std(res[(variant, f)]), mean_std(res[("base", f)])
    return mr - mb > max(sr, sb)


def report(res: Dict[tuple, List[float]], base: str, fractions: Sequence[float], sizes: Sizes) -> List[str]:
    """The table and the verdict lines."""
    ms = lambda v, f: "{:.3f} +- {:.3f}".format(*mean_std(res[(v, f)]))  # noqa: E731
    delta = lambda v, f: f"{mean_std(res[(v, f)])[0] - mean_std(res[('base', f)])[0]:+.3f}"  # noqa: E731
    refs = variants(sizes)[1:]
    rows = [[f"{f:.0%}", round(f * sizes.n_train), ms("base", f)] + [c for v in refs for c in (ms(v, f), delta(v, f))]
            + [", ".join(v for v in refs if wins(res, v, f)) or "-"] for f in fractions]
    head = ["labels", "n", f"{base} (base)"] + [c for v in refs for c in (v, "d")] + ["wins"]
    lines = [format_table(head, rows)]
    lines.append(f"unimodal at 100%: image-only {ms('image-only', 1.0)}, text-only {ms('text-only', 1.0)} "
                 "(chance = 0.5: the task needs fusion)")
    won = [f"{v} at {f:.0%}" for f in fractions for v in refs if wins(res, v, f)]
    lines.append("ReFNet beats its base (mean gain > both stds) at: " + ", ".join(won) if won else
                 "ReFNet does NOT beat its base anywhere (no mean gain larger than both rows' std).")
    return lines


def parse_args(argv: Optional[Sequence[str]]):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_device()
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run: 400 train rows, 8 epochs, 2 seeds)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--fractions", default="0.05,0.1,0.2,1", help="comma-separated label fractions in (0, 1]")
    p.add_argument("--base", default="concat", help=f"the base head: {', '.join(BASES)}")
    p.add_argument("--n-train", type=positive_int("--n-train"), default=None, help="train rows (default 2000)")
    p.add_argument("--epochs", type=positive_int("--epochs"), default=None, help="max epochs per run (default 40)")
    p.add_argument("--pretrain-epochs", default=None,
                   help="comma-separated refiner pretraining epochs, one refnet+preP row each (default 2,10)")
    p.add_argument("--threads", type=positive_int("--threads"), default=1, help="CPU intra-op threads per run")
    return p.parse_args(argv)


def numbers(flag: str, value: str, kind) -> list:
    try:
        out = [kind(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise FeatstoreError(f"{flag} {value!r} is not a comma-separated list of numbers; pass e.g. {flag} "
                             f"{'0,1,2' if kind is int else '0.05,0.1,0.2,1'}") from None
    if not out:
        raise FeatstoreError(f"{flag} {value!r} names nothing; pass e.g. {flag} {'0,1,2' if kind is int else '0.1,1'}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.base not in BASES:
        raise FeatstoreError(f"--base {args.base!r} is not benchmarked here; choose from {', '.join(BASES)}")
    seeds, fractions = numbers("--seeds", args.seeds, int), numbers("--fractions", args.fractions, float)
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise FeatstoreError(f"--fractions {args.fractions!r}: {bad[0]} is outside (0, 1]; pass e.g. 0.05,0.1,0.2,1")
    sizes = Sizes(n_train=400, epochs=8, pretrain_epochs=(2,)) if args.quick else Sizes()
    if args.quick and args.seeds == "0,1,2":
        seeds = [0, 1]
    for name in ("n_train", "epochs"):
        if getattr(args, name) is not None:
            setattr(sizes, name, getattr(args, name))
    if args.pretrain_epochs is not None:
        sizes.pretrain_epochs = tuple(numbers("--pretrain-epochs", args.pretrain_epochs, int))
        if min(sizes.pretrain_epochs) < 1:
            raise FeatstoreError(f"--pretrain-epochs {args.pretrain_epochs!r} needs positive counts; pass e.g. 2,10")
    for line in header_lines("label efficiency (ReFNet vs its base head)", device):
        print(line)
    print(f"task   : {sizes.n_train} train / {sizes.n_train // 4} val / {sizes.n_train // 2} test rows; "
          f"{sizes.concepts} image x {sizes.concepts} text concepts, label = (ci + ct) mod 2; pooled dim "
          f"{sizes.dim}, noise {sizes.noise}")
    print(f"runs   : base {args.base} {BASES[args.base]}; seeds {seeds}; max {sizes.epochs} epochs (patience 8); "
          f"refnet+preP: P refiner epochs on all train rows first, P in {list(sizes.pretrain_epochs)}")
    t0 = time.perf_counter()
    data = make_task(sizes, device)
    res = measure(data, args.base, fractions, seeds, sizes, device, args.threads)
    print()
    for line in report(res, args.base, fractions, sizes):
        print(line)
    print(f"total  : {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
