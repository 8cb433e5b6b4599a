"""The end of the README's main job: a fusion head and both unimodal baselines trained on the demo's cached
features, test metrics side by side. The demo task can only be solved by looking at both modalities."""
from __future__ import annotations

import tempfile
from typing import Iterator

from .experiment import headline_metrics

DEMO_HEADS = (("concat", {"hidden": [256], "dropout": 0.1}), ("text-only", {}), ("image-only", {}))


def train_demo_heads(store, dataset, image_ref: str, text_ref: str, *, progress: bool = True,
                     run_root: str | None = None) -> Iterator[str]:
    import time

    from .data import build_train_data
    from .experiment import train_run
    from .train import TrainConfig

    data = build_train_data(store, dataset, image_ref, text_ref, "label")
    root = run_root or tempfile.mkdtemp(prefix="heads-demo-")
    rows = []
    for head, cfg in DEMO_HEADS:
        t0 = time.perf_counter()
        res = train_run(TrainConfig(head=head, head_cfg=cfg, epochs=60, lr=2e-3, batch_size=32, patience=15, seed=0),
                    data, f"{root}/{head}", progress=False)
        rows.append((head, headline_metrics(res.metrics["test"]), time.perf_counter() - t0))
    yield f"heads trained on cached features (runs in {root}); test split, {len(data.split('test'))} samples:"
    keys = sorted({k for _, m, _ in rows for k in m})
    yield "  " + f"{'head':<11}" + "".join(f"{k.rsplit('/', 1)[-1]:>11}" for k in keys) + f"{'seconds':>9}"
    for head, m, secs in rows:
        yield "  " + f"{head:<11}" + "".join(f"{m.get(k, float('nan')):>11.4f}" for k in keys) + f"{secs:>9.1f}"
