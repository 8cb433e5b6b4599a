"""Run folders, files only: write (``save_run``, ``write_summary``, ``write_predictions``), reopen
(``load_run``), find (``run_dir_of``) and clear (``prepare_out``) them. Training a run, one per seed, and
evaluating or predicting with a saved one are ``heads.experiment``'s; nothing here trains or evaluates.

``heads train --out DIR`` always writes the same layout, for one seed or many: ``DIR/summary.json`` (mean
+- std over seeds of every labelled split, seconds per seed) and one run folder ``DIR/seed_<k>/`` per seed.
A ``DIR`` that already holds a run is refused unless ``overwrite`` (``prepare_out``); ``run_dir_of``
finds the run folder inside ``DIR`` for eval / predict.

A run folder (``save_run``; ``heads.experiment.train_run``) holds::

    config.json            format_version (``FORMAT_VERSION``; ``load_run`` refuses a newer one, reopens
                           version 1's "visualbert" as "singlestream" and a cross head before
                           version 3 with its two logits), train config,
                           head name + resolved head config, InputSpec, TaskSpec,
                           feature set refs {name, version; the arrays read: image pool, text array
                           + pool}, dataset fingerprint, monitor, best epoch (and best_step with
                           eval_every),
                           checkpoint_load (the init checkpoint's LoadReport: used / ignored / missing)
    history.csv / .json    one row per evaluation (per epoch, or every eval_every updates with their step):
                           train loss since the last one (+ per-task / extra losses), lr, val metrics
    model.safetensors      the best state dict
    metrics.json           {"seed": s, "monitor": key, "best_epoch": e, "<split>": {flat metrics}, ...}
                           (NaN written as null)
    predictions_<split>.csv  by sample id; one binary task called "label": ``id,proba,label`` (Hateful
                           Memes challenge layout, proba = P(class 1), label = argmax); otherwise
                           ``id`` + ``<task>:<class>`` probabilities + ``<task>`` predicted class name
                           (multilabel: the names with p > 0.5 joined by "|")
    roc_<split>.png, learning_curve.png
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from featstore.errors import FeatstoreError
from featstore.jsonio import read_json, write_json

from .data import TrainData
from .metrics import mean_std, predictions
from .plots import plot_learning_curve, plot_roc
from .spec import InputSpec, TaskSpec

CONFIG, METRICS, WEIGHTS = "config.json", "metrics.json", "model.safetensors"
FORMAT_VERSION = 3  # config.json's "format_version"; a config.json without one is version 1
# version 2: "visualbert" is MMF's VisualBERT; the head version 1 saved under that name is now "singlestream"
RENAMED_IN_2 = {"visualbert": "singlestream"}
# version 3: cross's binary output is Hate-CLIPper's one logit; a cross head saved before it had two
BEFORE_3 = {"cross": {"binary_logits": 2}}


def _read_json(path: Path) -> Any:
    return read_json(path, "{path} does not exist; pass a run folder written by `heads train`",
                     "{path} is not valid JSON ({err.msg}); re-run training to rewrite it")


def is_hm_layout(spec: TaskSpec) -> bool:
    return len(spec.tasks) == 1 and spec.tasks[0].name == "label" and spec.tasks[0].kind == "binary"


def write_predictions(path, spec: TaskSpec, ids: Sequence[str], probs: Dict[str, np.ndarray]) -> None:
    """Predictions CSV in the layout described in the module docstring."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if is_hm_layout(spec):
            p = probs["label"]
            w.writerow(["id", "proba", "label"])
            for i, row in zip(ids, p):
                w.writerow([i, repr(float(row[1])), int(row.argmax())])
            return
        header = ["id"]
        for t in spec.tasks:
            names = t.class_names or [str(c) for c in range(t.num_outputs)]
            header += [f"{t.name}:{c}" for c in names] + [t.name]
        w.writerow(header)
        decided = {t.name: predictions(t, probs[t.name]) for t in spec.tasks}
        for r, i in enumerate(ids):
            row: List[Any] = [i]
            for t in spec.tasks:
                names = t.class_names or [str(c) for c in range(t.num_outputs)]
                row += [repr(float(x)) for x in probs[t.name][r]]
                d = decided[t.name][r]
                row.append("|".join(n for n, on in zip(names, d) if on) if t.kind == "multilabel" else names[int(d)])
            w.writerow(row)


def save_run(run_dir, result, data: TrainData, plots: bool = True) -> Path:
    """Write ``result`` (a ``heads.train.TrainResult``) trained on ``data`` into ``run_dir`` (``plots``: also
    the ROC / learning-curve PNGs, which take most of the time of a small run; a sweep draws its own)."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    model = result.model
    head_cfg = model.config if dataclasses.is_dataclass(getattr(model, "config", None)) else result.config.head_cfg
    write_json(run / CONFIG, {
        "format_version": FORMAT_VERSION, "train": result.config.to_dict(), "head": result.config.head,
        "head_config": head_cfg,
        "input_spec": data.input_spec().to_dict(), "task_spec": result.task_spec.to_dict(),
        "features": data.meta.get("features", {}), "dataset_fingerprint": data.meta.get("dataset_fingerprint"),
        "monitor": result.monitor, "val_split": result.val_split, "best_epoch": result.best_epoch,
        **({"best_step": result.best_step} if getattr(result, "best_step", None) is not None else {}),
        "checkpoint_load": getattr(result, "load_report", None)})
    keys = list(dict.fromkeys(k for r in result.history for k in r))
    with open(run / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(result.history)
    write_json(run / "history.json", result.history)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}, str(run / WEIGHTS))
    metrics = {"seed": result.config.seed, "monitor": result.monitor, "best_epoch": result.best_epoch,
               **({"best_step": result.best_step} if getattr(result, "best_step", None) is not None else {})}
    metrics.update(result.metrics)
    metrics["warnings"] = {s: w for s, w in result.warnings.items() if w}
    write_json(run / METRICS, metrics)
    for split, probs in result.probs.items():
        idx = data.splits[split]
        write_predictions(run / f"predictions_{split}.csv", result.task_spec, [data.ids[i] for i in idx.tolist()], probs)
        if plots and split in result.metrics:
            plot_roc(result.task_spec, data.targets_numpy(idx), probs, run / f"roc_{split}.png", split)
    if plots and result.history:  # none when the run trained nothing (epochs 0)
        plot_learning_curve(result.history, result.monitor, run / "learning_curve.png")
    return run


def read_config(run_dir) -> Any:
    """A run folder's ``config.json``; one written by a newer run format (``format_version`` above
    ``FORMAT_VERSION``; none means 1) is refused in one line."""
    run = Path(run_dir)
    config = _read_json(run / CONFIG)
    version = config.get("format_version", 1) if isinstance(config, dict) else 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FeatstoreError(f"{run / CONFIG} has format_version {version!r}, not a whole number >= 1; re-run "
                             "`heads train` to rewrite it")
    if version > FORMAT_VERSION:
        raise FeatstoreError(f"run {run} was written in run format {version}, newer than this featstore-heads "
                             f"reads ({FORMAT_VERSION}); upgrade featstore-heads (pip install -U featstore-heads)")
    config = _renamed_heads(config) if version < 2 else config
    return _old_defaults(config) if version < 3 else config


def _old_defaults(config: dict) -> dict:
    """A config before version 3 with the head options its runs had then (``BEFORE_3``), refnet's base too."""
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    for head, cfg in ((config.get("head"), config.get("head_config")), (train.get("head"), train.get("head_cfg"))):
        if not isinstance(cfg, dict):
            continue
        if head == "refnet" and isinstance(cfg.get("base_cfg"), dict):
            cfg["base_cfg"] = {**BEFORE_3.get(cfg.get("base", "concat"), {}), **cfg["base_cfg"]}
        elif head in BEFORE_3:
            cfg.update({k: v for k, v in BEFORE_3[head].items() if k not in cfg})
    return config


def _renamed_heads(config: dict) -> dict:
    """A version-1 config with its heads under their version-2 names (``RENAMED_IN_2``), refnet's base too."""
    rename = lambda name: RENAMED_IN_2.get(name, name)  # noqa: E731
    config = dict(config, head=rename(config.get("head")))
    train = config.get("train")
    if isinstance(train, dict):
        config["train"] = train = dict(train, head=rename(train.get("head")))
    for cfg in (config.get("head_config"), (train or {}).get("head_cfg")):
        if isinstance(cfg, dict) and "base" in cfg:
            cfg["base"] = rename(cfg["base"])
    return config


def load_run(run_dir) -> Tuple[torch.nn.Module, dict]:
    """Rebuild the head from ``config.json`` and load ``model.safetensors`` -> (model in eval mode, config)."""
    from .models import create_head

    run = Path(run_dir)
    config = read_config(run)
    if not (run / WEIGHTS).is_file():
        raise FeatstoreError(f"{run / WEIGHTS} does not exist; the run did not finish - re-run `heads train`")
    try:
        inputs = InputSpec(**config["input_spec"])
        spec = TaskSpec.from_dict(config["task_spec"])
        model = create_head(config["head"], inputs, spec, **config["head_config"])
    except (KeyError, TypeError) as err:
        raise FeatstoreError(f"{run / CONFIG} lacks or mangles {err}; re-run `heads train` to rewrite it") from None
    try:
        state = load_file(str(run / WEIGHTS))
        model.load_state_dict(state)
    except Exception as err:  # safetensors header errors, missing/unexpected keys, shape mismatches
        why = " ".join(line.strip() for line in str(err).splitlines()[:2])  # torch: a title, then the first key
        raise FeatstoreError(f"{run / WEIGHTS} does not fit head {config['head']!r} ({why[:240]}); re-run "
                             "`heads train`") from None
    model.eval()
    return model, config


def summarise(per_seed: Dict[int, dict]) -> Dict[str, Dict[str, dict]]:
    """{split: {metric: {"mean", "std" (sample std, ddof=1; 0 for one seed), "n", "values"}}} from
    {seed: metrics.json content}; NaN/None values are left out of mean and std."""
    out: Dict[str, Dict[str, dict]] = {}
    for seed, m in per_seed.items():
        for split, vals in m.items():
            if not isinstance(vals, dict) or split == "warnings":
                continue
            for k, v in vals.items():
                out.setdefault(split, {}).setdefault(k, {"values": {}})["values"][seed] = v
    for split in out.values():
        for stat in split.values():
            stat["mean"], stat["std"], stat["n"] = mean_std(stat["values"].values())
    return out


SUMMARY = "summary.json"


def run_dir_of(group_dir, seed: Optional[int] = None) -> Path:
    """The single-run folder inside a ``heads train`` output: ``group_dir`` itself when it is one (a bare
    ``train()`` folder), else ``seed_<seed>`` (default: the only seed, or the first of ``summary.json``)."""
    root = Path(group_dir)
    if (root / CONFIG).is_file():
        return root
    seeds = sorted(int(p.name[5:]) for p in root.glob("seed_*") if p.name[5:].isdigit() and (p / CONFIG).is_file())
    if not seeds:
        raise FeatstoreError(f"{root} is not a run folder (no config.json nor seed_*/config.json); pass the --out "
                             "folder of `heads train`")
    if seed is None:
        summary = root / SUMMARY
        listed = _read_json(summary).get("seeds", []) if summary.is_file() else []
        seed = next((s for s in listed if s in seeds), seeds[0])
    if seed not in seeds:
        raise FeatstoreError(f"{root} has no run for seed {seed} (it has {', '.join(map(str, seeds))}); pass one of them")
    return root / f"seed_{seed}"


def holds_run(out_dir) -> Optional[str]:
    """The first file or folder that makes ``out_dir`` a run (summary, run files, seed folders), or None."""
    root = Path(out_dir)
    if not root.is_dir():
        return None
    for name in (SUMMARY, CONFIG, METRICS, WEIGHTS):
        if (root / name).exists():
            return name
    seeds = sorted(p.name for p in root.glob("seed_*") if p.is_dir())
    return seeds[0] if seeds else None


def prepare_out(out_dir, overwrite: bool = False) -> Path:
    """Refuse (one line) an ``out_dir`` that holds a run unless ``overwrite``; then remove that run's files
    (``summary.json``, the run files and ``seed_*`` folders; nothing else in the folder is touched)."""
    import shutil

    root = Path(out_dir)
    found = holds_run(root)
    if found and not overwrite:
        raise FeatstoreError(f"--out {root} already holds a run ({found}); pass --overwrite to replace it or "
                             "choose another --out")
    if found:
        for p in root.glob("seed_*"):
            if p.is_dir():
                shutil.rmtree(p)
        for p in [root / n for n in (SUMMARY, CONFIG, METRICS, WEIGHTS, "history.csv", "history.json",
                                     "learning_curve.png")] + list(root.glob("predictions_*.csv")) + \
                list(root.glob("roc_*.png")):
            if p.is_file():
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_summary(out_dir, per_seed: Dict[int, dict], runs: Dict[int, dict], head: Optional[str] = None) -> dict:
    """``summary.json``: {"head", "seeds", "runs": {seed: {dir, best_epoch, seconds}}, "summary":
    summarise(...)} covering every labelled split."""
    summary = {"head": head, "seeds": sorted(per_seed), "runs": {str(s): r for s, r in sorted(runs.items())},
               "summary": summarise(per_seed)}
    write_json(Path(out_dir) / SUMMARY, summary)
    return summary
