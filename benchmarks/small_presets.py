"""Small presets: seconds per training epoch of ``--preset vilbert-small`` / ``visualbert-small`` /
``singlestream-small`` against the
heads' default (BERT-base-sized) configs, on CPU-sized runs of Hateful-Memes-shaped cached tensors.

    python benchmarks/small_presets.py [--device cpu|cuda|auto] [--n-train N] [--default-steps S]

Data (seeded random, float32): ``N`` train + 100 dev rows (default 1,000) of 36 x 2048 regions and 64 x 768
tokens (and their token ids, which visualbert embeds itself), a random binary label. Each small preset trains 2 epochs with ``heads.train.train`` (its own
settings: lr 1e-4, batch 32); ``s/epoch`` is the median of the epochs' times. The default configs would take
hours an epoch here, so they are timed over ``S`` training steps (forward + backward + AdamW, batch 32,
after one warm-up step) and that per-step time is scaled to an epoch of ``N`` rows, labelled as such.
The last columns scale the per-epoch time linearly to the issue's 2,500-sample task and to Hateful Memes'
8,500 (20 epochs each): extrapolations, not measurements.
"""
from __future__ import annotations

import math
import time
from typing import Optional, Sequence

from _common import Parser, format_table, fmt, header_lines, median, positive_int, resolve_device, run_main

import torch  # noqa: E402

from heads.data import TrainData  # noqa: E402
from heads.models import create_head  # noqa: E402
from heads.presets import load_preset, parameter_count  # noqa: E402
from heads.spec import Task, TaskSpec  # noqa: E402
from heads.train import TrainConfig, train  # noqa: E402

R, T, DI, DT, BATCH = 36, 64, 2048, 768, 32


def make_data(n_train: int, device: torch.device) -> TrainData:
    g = torch.Generator().manual_seed(0)
    n = n_train + 100
    feats = {"img_regions": torch.randn(n, R, DI, generator=g), "img_mask": torch.ones(n, R, dtype=torch.bool),
             "txt_tokens": torch.randn(n, T, DT, generator=g), "txt_mask": torch.ones(n, T, dtype=torch.bool),
             "txt_ids": torch.randint(1, 30522, (n, T), generator=g)}
    y = torch.randint(0, 2, (n,), generator=g)
    return TrainData({k: v.to(device) for k, v in feats.items()}, [str(i) for i in range(n)], {"label": y.to(device)},
                     {"train": torch.arange(n_train, device=device), "dev": torch.arange(n_train, n, device=device)},
                     TaskSpec([Task("label", "binary", 2, ["0", "1"])]))


def small_epoch_s(name: str, data: TrainData) -> float:
    p = load_preset(name)
    cfg = TrainConfig(head=p.head, head_cfg=p.head_cfg, device=str(data.device),
                      **{**p.train, "epochs": 2, "patience": 0})
    return median([row["time_s"] for row in train(cfg, data, progress=False).history])


def default_step_s(head: str, data: TrainData, steps: int) -> float:
    """Seconds per training step (batch 32) of ``head``'s default config, after one warm-up step."""
    torch.manual_seed(0)
    model = create_head(head, data.input_spec(), data.task_spec).to(data.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = data.split("train")
    times = []
    for s in range(steps + 1):
        b = idx[(s * BATCH) % len(idx):][:BATCH]
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(data.batch(b))["logits"]["label"], data.targets["label"][b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if data.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return median(times[1:])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_device()
    p.add_argument("--n-train", type=positive_int("--n-train"), default=1000)
    p.add_argument("--default-steps", type=positive_int("--default-steps"), default=3)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    for line in header_lines("small presets vs default head sizes", device):
        print(line)
    data = make_data(args.n_train, device)
    steps_per_epoch = math.ceil(args.n_train / BATCH)
    rows = []
    for head in ("vilbert", "visualbert", "singlestream"):
        small = f"{head}-small"
        for label, params, epoch_s in (
                (f"{small} (measured)", parameter_count(head, load_preset(small).head_cfg), small_epoch_s(small, data)),
                (f"{head} default (from {args.default_steps} steps)", parameter_count(head),
                 default_step_s(head, data, args.default_steps) * steps_per_epoch)):
            per_row = epoch_s / args.n_train
            rows.append([label, f"{params / 1e6:.1f} M", fmt(epoch_s), fmt(per_row * 2500 * 20 / 60),
                         fmt(per_row * 8500 * 20 / 3600)])
    print(f"{args.n_train:,} train rows, {R} x {DI} regions, {T} x {DT} tokens, batch {BATCH}")
    print(format_table(["head", "parameters", f"s/epoch @{args.n_train:,}", "20 epochs @2,500 (min, extrapolated)",
                        "20 epochs @8,500 (h, extrapolated)"], rows))
    return 0


if __name__ == "__main__":
    run_main(main)
