"""What `heads train` does around the training loop: one run or one per seed, the summary lines it prints,
and the fused embeddings it can save into the store for neighbour search."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from featstore.errors import FeatstoreError

from .data import TrainData
from .train import TrainConfig, train

HEADLINE = ("auroc", "accuracy", "f1", "f1_macro", "f1_micro")


def headline_metrics(flat: dict) -> dict:
    """The numbers the field reports (AUROC, accuracy, F1) from a flat metrics dict."""
    return {k: v for k, v in flat.items() if isinstance(v, (int, float)) and k.rsplit("/", 1)[-1] in HEADLINE}


def train_heads(cfg: TrainConfig, data: TrainData, out_dir, seeds: Sequence[int], *, progress: bool = True,
                vilbert_checkpoint: Optional[str] = None, trust_checkpoint: bool = False) -> Iterator[str]:
    """Train one run per seed (a single seed writes straight into ``out_dir``); yield report lines."""
    from .runs import train_seeds

    if not seeds:
        raise FeatstoreError("no seeds given; pass e.g. --seeds 0 or --seeds 0,1,2,3,4")
    cfg = dataclasses.replace(cfg, init_checkpoint=vilbert_checkpoint, trust_checkpoint=trust_checkpoint)
    out = Path(out_dir)
    if len(seeds) == 1:
        result = train(dataclasses.replace(cfg, seed=int(seeds[0])), data, out, progress=progress)
        yield f"run {out}: head {cfg.head}, seed {seeds[0]}, best epoch {result.best_epoch} ({result.monitor} on {result.val_split})"
        for split in ("dev", "val", "test"):
            if split in result.metrics:
                yield f"  {split:<5} " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(headline_metrics(result.metrics[split]).items()))
        return
    summary = train_seeds(cfg, data, [int(s) for s in seeds], out, progress=progress)
    yield f"runs {out}/seed_*: head {cfg.head}, seeds {','.join(map(str, seeds))} (mean +- std)"
    for split, metrics in summary["summary"].items():
        shown = {k: v for k, v in metrics.items() if k.rsplit("/", 1)[-1] in HEADLINE and v.get("mean") is not None}
        yield f"  {split:<5} " + "  ".join(f"{k}={v['mean']:.4f}+-{v['std']:.4f}" for k, v in sorted(shown.items()))


def run_feature_refs(run_dir, image_ref: Optional[str], text_ref: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """Feature set refs for evaluating a run: the ones given, else the exact versions it was trained on."""
    cfg_path = Path(run_dir) / "config.json"
    if not cfg_path.exists():
        raise FeatstoreError(f"{run_dir} is not a run folder (no config.json); pass the --out folder of `heads train`")
    feats = json.loads(cfg_path.read_text()).get("features", {})

    def ref(side, given):
        if given:
            return given
        f = feats.get(side)
        return f"{f['name']}@{f['version']}" if f else None

    return ref("image", image_ref), ref("text", text_ref)


@torch.no_grad()
def fused_embeddings(model: torch.nn.Module, data: TrainData, batch_size: int = 512) -> np.ndarray:
    """The head's fused embedding ([N, H] float32) for every row of ``data``, in ``data.ids`` order."""
    model.eval()
    out: List[np.ndarray] = []
    idx = torch.arange(len(data), device=data.device)
    for s in range(0, len(data), batch_size):
        out.append(model(data.batch(idx[s:s + batch_size]))["fused"].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def save_fused(store, name: str, run_dir, data: TrainData):
    """Store a run's fused embeddings as a feature set keyed by sample id (modality "fused")."""
    from featstore.store import Recipe

    from .runs import load_run

    model, config = load_run(run_dir)
    model = model.to(data.device)
    emb = fused_embeddings(model, data)
    weights = Path(run_dir) / "model.safetensors"
    import hashlib

    recipe = Recipe(extractor=f"heads:{config['head']}", config={"run": Path(run_dir).name, "head_config": config.get("head_config")},
                    weights_fingerprint="sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest(),
                    manifest_fingerprint=str(data.meta.get("dataset_fingerprint") or ""))
    return store.write(name, recipe, list(data.ids), {"pooled": emb}, key_kind="sample_id", modality="fused")
