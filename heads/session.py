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
from .train import TrainConfig

HEADLINE = ("auroc", "accuracy", "f1", "macro_f1", "micro_auroc", "macro_auroc", "subset_accuracy")


def headline_keys(keys) -> List[str]:
    """The headline metrics among flat metric ``keys``, sorted: AUROC, accuracy, F1 (a binary task's ``f1``;
    ``macro_f1`` only for a task without one, i.e. multi-class / multi-label)."""
    keys = set(keys)
    return sorted(k for k in keys if k.rsplit("/", 1)[-1] in HEADLINE
                  and not (k.endswith("/macro_f1") and k[:-len("macro_f1")] + "f1" in keys))


def headline_metrics(flat: dict) -> dict:
    """The numbers the field reports (AUROC, accuracy, F1) from a flat metrics dict."""
    return {k: flat[k] for k in headline_keys(k for k, v in flat.items() if isinstance(v, (int, float)))}


def task_weights(text: Optional[str], task: Optional[str]) -> Optional[List[float]]:
    """``--task-weights A=0.4,B=0.3,C=0.3`` -> the weights in ``--task A,B,C`` order (what
    ``heads.tasks.derive_task_spec`` takes); one-line errors for a bad pair or tasks that do not match."""
    if not text:
        return None
    out: dict = {}
    for part in text.split(","):
        k, eq, v = part.partition("=")
        try:
            out[k.strip()] = float(v) if eq else None
        except ValueError:
            out[k.strip()] = None
        if out[k.strip()] is None:
            raise FeatstoreError(f"--task-weights {text!r}: write TASK=WEIGHT pairs, e.g. A=0.4,B=0.3,C=0.3")
    names = [t.strip() for t in (task or "").split(",") if t.strip()]
    if sorted(names) != sorted(out):
        raise FeatstoreError(f"--task-weights {text!r} weighs {', '.join(out)}; pass --task with the same tasks, "
                             f"e.g. --task {','.join(out)}")
    return [out[n] for n in names]


def epoch_line(seed: int, row: dict, monitor: str, epochs: int) -> str:
    """One line for an epoch: ``seed 0 epoch 3/20: train_loss=0.6123 val label/auroc=0.7012 (0.4 s)``."""
    val = row.get(f"val_{monitor}")
    shown = "nan" if val is None else f"{val:.4f}"
    return (f"  seed {seed} epoch {int(row['epoch'])}/{epochs}: train_loss={row['train_loss']:.4f} "
            f"val {monitor}={shown} ({row['time_s']:.1f} s)")


def summary_lines(summary: dict) -> List[str]:
    """One line per labelled split (dev, dev_unseen, test, test_unseen, ...): headline metrics mean +- std."""
    lines = []
    for split, metrics in summary["summary"].items():
        shown = {k: metrics[k] for k in headline_keys(metrics) if metrics[k].get("mean") is not None}
        if shown:
            lines.append(f"  {split:<11} " + "  ".join(f"{k}={v['mean']:.4f}+-{v['std']:.4f}"
                                                         for k, v in sorted(shown.items())))
    return lines


def check_head(cfg: TrainConfig, data: TrainData) -> None:
    """Build ``cfg.head`` for ``data`` on the meta device (no memory, no time): a one-line error for an
    unknown head or option, missing inputs, or a bad train option, before anything is written."""
    from .models import create_head

    cfg.validate()
    with torch.device("meta"):
        create_head(cfg.head, data.input_spec(), data.task_spec, **cfg.head_cfg)


def unlabelled_train_rows(data: TrainData) -> int:
    """How many rows of the train split carry no label for any task (they are skipped by the loss)."""
    if "train" not in data.splits:
        return 0
    idx = data.splits["train"]
    return int(idx.numel() - data.labelled(idx).numel())


def train_heads(cfg: TrainConfig, data: TrainData, out_dir, seeds: Sequence[int], *, progress: bool = True,
                vilbert_checkpoint: Optional[str] = None, trust_checkpoint: bool = False, overwrite: bool = False,
                echo=None) -> Iterator[str]:
    """Train one run per seed into ``out_dir/seed_<k>`` + ``summary.json`` (``heads.runs``); yield report
    lines as they happen: a start line, the CPU threads used (``heads.threads``, one choice for every seed),
    one line per finished seed, then mean +- std per labelled split.
    ``echo``, when given (with ``progress`` off), also receives one line per epoch as it ends."""
    from .runs import SUMMARY, _read_json, check_seeds, holds_run, iter_seeds, prepare_out

    seeds = check_seeds(seeds)
    cfg = dataclasses.replace(cfg, init_checkpoint=vilbert_checkpoint, trust_checkpoint=trust_checkpoint)
    if holds_run(out_dir) and not overwrite:
        prepare_out(out_dir, overwrite)  # the one-line refusal
    check_head(cfg, data)  # a bad head, option or input fails before --out is touched
    out = prepare_out(out_dir, overwrite)
    yield f"training head {cfg.head} on {len(data)} samples, seeds {','.join(map(str, seeds))} -> {out}"
    unlabelled = unlabelled_train_rows(data)
    if unlabelled:
        yield (f"note: train rows without a label for any task: {unlabelled} (not trained on; check the "
               "dataset's label column)")
    from .threads import resolve_threads

    choice = resolve_threads(cfg, data)  # once, so every seed runs with the same count
    cfg = cfg if choice.how == "cuda" else dataclasses.replace(cfg, threads=choice.threads)
    threads_line = f"threads: {choice.describe()}"  # reported once the first seed has trained
    hook = None if echo is None else (lambda s, row, monitor: echo(epoch_line(s, row, monitor, cfg.epochs)))
    for s, result, secs in iter_seeds(cfg, data, seeds, out, progress=progress, on_epoch=hook):
        if threads_line:
            yield threads_line
            threads_line = ""
        val = result.metrics.get(result.val_split, {}).get(result.monitor)
        yield (f"seed {s}: best epoch {result.best_epoch}, {result.val_split} {result.monitor}="
               f"{'nan' if val is None else f'{val:.4f}'} ({secs:.1f} s) -> {out / f'seed_{s}'}")
    yield f"runs {out}/seed_*: head {cfg.head}, seeds {','.join(map(str, seeds))} (mean +- std over {len(seeds)})"
    yield from summary_lines(_read_json(out / SUMMARY))


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
