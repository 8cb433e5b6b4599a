"""RGCL's cost: seconds per training epoch of the Hate-CLIPper align head with cross-entropy alone against the
same with the RGCL term (bank re-encoded once per epoch, per-step exact retrieval by faiss's flat index and by
torch matmul + topk), measured in one run on the same tensors.

    python benchmarks/rgcl_overhead.py [--device auto|cpu|cuda] [--n-train N] [--dim D] [--epochs E] [--threads T]

Tensors: random pooled vectors of CLIP ViT-L/14's pooler widths (1024 image, 768 text), binary labels; the
head is ``cross`` with ``fusion=align``, ``proj_dim=D``, 3 pre-output layers (the paper's row at D = 1024).
Each row reports the median epoch time over its epochs (``history[...]["time_s"]``: training steps plus the
validation pass) and its ratio to the cross-entropy row.
"""
from __future__ import annotations

import statistics
from typing import Optional, Sequence

from _common import Parser, format_table, header_lines, positive_int, resolve_device, run_main

import torch  # noqa: E402

from heads.data import TrainData  # noqa: E402
from heads.spec import Task, TaskSpec  # noqa: E402
from heads.train import TrainConfig, train  # noqa: E402

ROWS = (("cross-entropy", None), ("+ rgcl (faiss flat)", {"backend": "faiss"}),
        ("+ rgcl (torch topk)", {"backend": "torch"}))


def make_data(n_train: int, device: torch.device) -> TrainData:
    g = torch.Generator().manual_seed(0)
    n = n_train + n_train // 8
    y = torch.randint(0, 2, (n,), generator=g)
    feats = {"img_pooled": torch.randn(n, 1024, generator=g) + 0.2 * y[:, None],
             "txt_pooled": torch.randn(n, 768, generator=g)}
    splits = {"train": torch.arange(n_train), "dev": torch.arange(n_train, n)}
    return TrainData({k: v.to(device) for k, v in feats.items()}, [f"s{i}" for i in range(n)],
                     {"label": y.to(device)}, {k: v.to(device) for k, v in splits.items()},
                     TaskSpec([Task("label", "binary", 2, ["0", "1"])]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = Parser(description=__doc__.split("\n")[0])
    p.add_device()
    p.add_argument("--n-train", type=positive_int("--n-train"), default=2000, help="train rows (Hateful Memes: 8500)")
    p.add_argument("--dim", type=positive_int("--dim"), default=256, help="proj_dim = pre-output width")
    p.add_argument("--epochs", type=positive_int("--epochs"), default=3)
    p.add_argument("--threads", type=positive_int("--threads"), default=1, help="CPU intra-op threads")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    for line in header_lines("RGCL overhead per epoch (cross align head)", device):
        print(line)
    data = make_data(args.n_train, device)
    head_cfg = {"fusion": "align", "proj_dim": args.dim, "pre_output_layers": 3}
    rows, base = [], None
    for name, rgcl in ROWS:
        cfg = TrainConfig(head="cross", head_cfg=head_cfg, epochs=args.epochs, batch_size=64, lr=1e-4, patience=0,
                          threads=args.threads, rgcl=rgcl)
        res = train(cfg, data, progress=False)
        sec = statistics.median(r["time_s"] for r in res.history)
        base = base or sec
        rows.append([name, f"{sec:.2f}", f"{sec / base:.2f}x"])
    print(f"task   : {args.n_train} train rows, 1024 + 768 pooled dims, proj_dim {args.dim}, batch 64, "
          f"{args.epochs} epochs")
    print(format_table(["objective", "s / epoch (median)", "vs cross-entropy"], rows))
    return 0


if __name__ == "__main__":
    run_main(main)
