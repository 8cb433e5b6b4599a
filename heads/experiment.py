"""What `heads train` / `eval` / `predict` do around the training loop: one run or one per seed
(``train_run``, ``iter_seeds``, ``train_seeds``, ``train_heads``) and the lines they print, a saved run
evaluated or predicting on new data (``evaluate_run``, ``predict_run``), and the fused embeddings a run can
save into the store for neighbour search (``save_fused``).

Data flows one way: ``heads.data`` (a ``TrainData``) -> ``heads.train`` (a ``TrainResult``, nothing written)
-> here -> ``heads.runs`` (run-folder files only)."""
from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from featstore.errors import FeatstoreError

from .data import TrainData
from .metrics import compute_metrics, format_mean_std
from .outputs import probabilities
from .runs import CONFIG, METRICS, SUMMARY, _read_json, holds_run, load_run, prepare_out, read_config, save_run, \
    write_predictions, write_summary
from .spec import InputSpec, TaskSpec
from .tasks import tasks_named
from .train import (TrainConfig, TrainResult, evaluate_only, knn_predictions, labelled_train_rows, predict_logits,
                    random_start_note, resolve_monitor, schedule_steps, train, validation_rows)

HEADLINE = ("auroc", "accuracy", "f1", "macro_f1", "micro_auroc", "macro_auroc", "subset_accuracy")
# a multi-label task's also: MMBT / MMF's micro F1 on MM-IMDB, Memotion's Task B (each emotion two-class, averaged)
MULTILABEL_HEADLINE = ("micro_f1", "labelwise_macro_f1")


def headline_keys(keys) -> List[str]:
    """The headline metrics among flat metric ``keys``, sorted: AUROC, accuracy, F1 (a binary task's ``f1``;
    ``macro_f1`` only for a task without one, i.e. multi-class / multi-label, and a group's; a multi-label task's
    ``MULTILABEL_HEADLINE`` too), and ``score`` when there are several tasks (what a multi-task run monitors)."""
    keys = set(keys)
    multilabel = {k.rsplit("/", 1)[0] for k in keys if k.endswith("/subset_accuracy")}
    several = len({k.rsplit("/", 1)[0] for k in keys if "/" in k}) > 1
    return sorted(k for k in keys if (k.rsplit("/", 1)[-1] in HEADLINE and "/" in k
                                      and not (k.endswith("/macro_f1") and k[:-len("macro_f1")] + "f1" in keys))
                  or (k.rsplit("/", 1)[0] in multilabel and k.rsplit("/", 1)[-1] in MULTILABEL_HEADLINE)
                  or (k == "score" and several))


def headline_metrics(flat: dict) -> dict:
    """The numbers the field reports (AUROC, accuracy, F1) from a flat metrics dict."""
    return {k: flat[k] for k in headline_keys(k for k, v in flat.items() if isinstance(v, (int, float)))}


def task_weights(text: Optional[str], task: Optional[str]):
    """``--task-weights A=0.4,B=0.3,C=0.3`` -> the weights in ``--task A,B,C`` order (what
    ``heads.tasks.derive_task_spec`` takes), or with ``--task all`` the mapping (the dataset's label keys are
    checked against it there); one-line errors for a bad pair, a negative weight or tasks that do not match."""
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
        if not math.isfinite(out[k.strip()]) or out[k.strip()] < 0:
            raise FeatstoreError(f"--task-weights {text!r}: weight {part.strip()!r} must be a number >= 0 (0 leaves "
                                 "the task's loss out), e.g. A=0.4,B=0.3,C=0.3")
    if (task or "").strip() == "all":
        return out
    names = [t.strip() for t in (task or "").split(",") if t.strip()]
    if sorted(names) != sorted(out):
        raise FeatstoreError(f"--task-weights {text!r} weighs {', '.join(out)}; pass --task with the same tasks, "
                             f"e.g. --task {','.join(out)}")
    return [out[n] for n in names]


def epoch_line(seed: int, row: dict, monitor: str, epochs: int, split: str = "val") -> str:
    """One line for an epoch: ``seed 0 epoch 3/20: train_loss=0.6123 dev label/auroc=0.7012 (0.4 s)``, naming the
    validation ``split`` as the seed line does."""
    val = row.get(f"val_{monitor}")
    shown = "nan" if val is None else f"{val:.4f}"
    step = f" step {int(row['step'])}" if "step" in row else ""
    return (f"  seed {seed} epoch {int(row['epoch'])}/{epochs}{step}: train_loss={row['train_loss']:.4f} "
            f"{split} {monitor}={shown} ({row['time_s']:.1f} s)")


def summary_lines(summary: dict) -> List[str]:
    """One line per labelled split (dev, dev_unseen, test, test_unseen, ...): headline metrics mean +- std."""
    lines = []
    for split, metrics in summary["summary"].items():
        shown = {k: metrics[k] for k in headline_keys(metrics) if metrics[k].get("mean") is not None}
        if shown:
            lines.append(f"  {split:<11} " + "  ".join(f"{k}={format_mean_std(v['mean'], v['std'], sep='+-')}"
                                                         for k, v in sorted(shown.items())))
    return lines


def _rows_text(data: TrainData) -> str:
    """``"48 samples"``, or ``"12540 rows (12140 samples, 400 of them in more than one split)"`` when splits share
    samples (Hateful Memes' dev_seen and dev_unseen share 400 memes)."""
    counts = Counter(data.ids)
    shared = sum(1 for n in counts.values() if n > 1)
    if not shared:
        return f"{len(data)} samples"
    return f"{len(data)} rows ({len(counts)} samples, {shared} of them in more than one split)"


def check_head(cfg: TrainConfig, data: TrainData) -> int:
    """Build ``cfg.head`` for ``data`` on the meta device (``heads.train.head_on_meta``: from the init
    checkpoint where there is one): a one-line error for an unknown head or option, missing inputs, a bad train
    option or checkpoint, before anything is written; -> its parameter count."""
    from .train import head_on_meta

    cfg.validate()
    validation_rows(cfg, data)
    resolve_monitor(cfg, data.task_spec)
    model = head_on_meta(cfg, data)
    if not evaluate_only(cfg):  # epochs 0 trains nothing (the init checkpoint evaluated as loaded)
        schedule_steps(cfg, labelled_train_rows(cfg, data).numel())
        refuse_single_row_batch(cfg, data, model)
    return sum(p.numel() for p in model.parameters())


def refuse_single_row_batch(cfg: TrainConfig, data: TrainData, model: torch.nn.Module) -> None:
    """A one-line error when a head with BatchNorm layers would meet a last training batch of one row (batch
    statistics of one row are undefined: torch raises mid-run)."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    n = len(labelled_train_rows(cfg, data))
    if n % cfg.batch_size != 1:
        return
    fix = next(b for b in (cfg.batch_size + 1, cfg.batch_size - 1, cfg.batch_size + 2) if b > 1 and n % b != 1)
    raise FeatstoreError(f"head {cfg.head!r} has BatchNorm layers and its {n} train rows at --batch-size "
                         f"{cfg.batch_size} leave a last batch of one row, which BatchNorm cannot train on; pass "
                         f"--batch-size {fix}")


def cpu_size_note(cfg: TrainConfig, data: TrainData, parameters: int) -> Optional[str]:
    """A one-line note when a head of at least ``presets.GPU_SIZED`` parameters is about to train on a CPU."""
    from .presets import GPU_SIZED, SMALL_PRESETS

    if parameters < GPU_SIZED or data.device.type != "cpu":
        return None
    small = SMALL_PRESETS.get(cfg.head)
    return (f"note: {cfg.head} has {parameters / 1e6:.1f} M parameters at these options: GPU-sized, hours a seed on "
            f"a CPU{f'; --preset {small} trains in minutes here' if small else ''}")


def unlabelled_train_rows(data: TrainData) -> int:
    """How many rows of the train split carry no label for any task (they are skipped by the loss)."""
    if "train" not in data.splits:
        return 0
    idx = data.splits["train"]
    return int(idx.numel() - data.labelled(idx).numel())


def check_seeds(seeds: Sequence[int]) -> List[int]:
    if not seeds:
        raise FeatstoreError("no seeds given; pass e.g. --seeds 0 or --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise FeatstoreError(f"seeds {list(seeds)} repeat a value; pass distinct seeds")
    return [int(s) for s in seeds]


def train_run(cfg: TrainConfig, data: TrainData, run_dir, *, progress: bool = True, on_epoch=None,
              plots: bool = True) -> TrainResult:
    """``heads.train.train`` and its run folder (``heads.runs.save_run``) in ``run_dir``."""
    result = train(cfg, data, progress=progress, on_epoch=on_epoch)
    save_run(run_dir, result, data, plots=plots)
    return result


def iter_seeds(cfg, data: TrainData, seeds: Sequence[int], out_dir, progress: bool = False, on_epoch=None):
    """Train one run per seed into ``out_dir/seed_<k>``, yielding ``(seed, TrainResult, seconds)`` as each
    finishes; ``summary.json`` is rewritten after every seed (so it always covers the finished ones).
    ``on_epoch(seed, history_row, monitor)`` is called at the end of every epoch when given."""
    out = Path(out_dir)
    per_seed, runs = {}, {}
    seeds = check_seeds(seeds)
    for s in seeds:
        t0 = time.perf_counter()
        hook = None if on_epoch is None else (lambda row, monitor, s=s: on_epoch(s, row, monitor))
        result = train_run(dataclasses.replace(cfg, seed=s), data, out / f"seed_{s}", progress=progress,
                           on_epoch=hook)
        secs = time.perf_counter() - t0
        per_seed[s] = _read_json(out / f"seed_{s}" / METRICS)
        runs[s] = {"dir": f"seed_{s}", "best_epoch": result.best_epoch, "seconds": secs}
        write_summary(out, per_seed, runs, head=cfg.head)
        yield s, result, secs


def train_seeds(cfg, data: TrainData, seeds: Sequence[int], out_dir, progress: bool = False,
                overwrite: bool = False) -> Dict[str, Any]:
    """One run per seed into ``out_dir/seed_<k>`` (the same layout for one seed or many); writes and returns
    ``summary.json``. An ``out_dir`` that already holds a run is refused unless ``overwrite``."""
    seeds = check_seeds(seeds)
    out = prepare_out(out_dir, overwrite)
    for _ in iter_seeds(cfg, data, seeds, out, progress):
        pass
    return _read_json(out / SUMMARY)


def train_heads(cfg: TrainConfig, data: TrainData, out_dir, seeds: Sequence[int], *, progress: bool = True,
                overwrite: bool = False, echo=None) -> Iterator[str]:
    """Train one run per seed into ``out_dir/seed_<k>`` + ``summary.json`` (``heads.runs``); yield report
    lines as they happen: a start line, the CPU threads used (``heads.threads``, one choice for every seed),
    one line per finished seed, then mean +- std per labelled split. The init checkpoint is
    ``cfg.init_checkpoint`` (a preset's or the command line's).
    ``echo``, when given (with ``progress`` off), also receives one line per epoch as it ends."""
    seeds = check_seeds(seeds)
    if holds_run(out_dir) and not overwrite:
        prepare_out(out_dir, overwrite)  # the one-line refusal
    parameters = check_head(cfg, data)  # a bad head, option or input fails before --out is touched
    out = prepare_out(out_dir, overwrite)
    rgcl = " with RGCL's retrieval-guided contrastive loss" if cfg.rgcl is not None else ""
    yield f"training head {cfg.head}{rgcl} on {_rows_text(data)}, seeds {','.join(map(str, seeds))} -> {out}"
    for note in (random_start_note(cfg), cpu_size_note(cfg, data, parameters)):
        if note:
            yield note
    unlabelled = unlabelled_train_rows(data)
    if unlabelled:
        yield (f"note: train rows without a label for any task: {unlabelled} (not trained on; check the "
               "dataset's label column)")
    from .threads import resolve_threads

    choice = resolve_threads(cfg, data)  # once, so every seed runs with the same count
    cfg = cfg if choice.how == "cuda" else dataclasses.replace(cfg, threads=choice.threads)
    threads_line = f"threads: {choice.describe()}"  # reported once the first seed has trained
    split = validation_rows(cfg, data)[0]
    hook = None if echo is None else (lambda s, row, monitor: echo(epoch_line(s, row, monitor, cfg.epochs, split)))
    for s, result, secs in iter_seeds(cfg, data, seeds, out, progress=progress, on_epoch=hook):
        if threads_line:
            yield threads_line
            threads_line = ""
        val = result.metrics.get(result.val_split, {}).get(result.monitor)
        step = f" (step {result.best_step})" if result.best_step is not None else ""
        yield (f"seed {s}: best epoch {result.best_epoch}{step}, {result.val_split} {result.monitor}="
               f"{'nan' if val is None else f'{val:.4f}'} ({secs:.1f} s) -> {out / f'seed_{s}'}")
    yield f"runs {out}/seed_*: head {cfg.head}, seeds {','.join(map(str, seeds))} (mean +- std over {len(seeds)})"
    yield from summary_lines(_read_json(out / SUMMARY))


def run_feature_refs(run_dir, image_ref: Optional[str], text_ref: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """Feature set refs for evaluating a run: the ones given, else the exact versions it was trained on."""
    if not (Path(run_dir) / CONFIG).exists():
        raise FeatstoreError(f"{run_dir} is not a run folder (no config.json); pass the --out folder of `heads train`")
    feats = read_config(run_dir).get("features", {})
    return _given_or_recorded(feats, "image", image_ref), _given_or_recorded(feats, "text", text_ref)


def run_train_image(run_dir, given: Optional[str]) -> Optional[str]:
    """The ``--train-image`` set for a saved run: the one given, else the exact version it was trained with
    (None for a run without one)."""
    return _given_or_recorded(read_config(run_dir).get("features", {}), "train_image", given)


def _given_or_recorded(feats: Dict[str, Any], side: str, given: Optional[str]) -> Optional[str]:
    """``given``, else ``name@version`` of the set a run's config ``feats`` records under ``side``, else None."""
    if given:
        return given
    f = feats.get(side)
    return f"{f['name']}@{f['version']}" if f else None


# data option -> (modality, key in the run's config.json "features", the flag that sets it)
RUN_ARRAYS = {"text_array": ("text", "array", "--text-array"), "text_pool": ("text", "pool", "--text-pool"),
              "image_pool": ("image", "pool", "--image-pool")}


def run_data_options(run_dir, given: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    """The data options that evaluate a saved run on what it was trained on: the arrays (``RUN_ARRAYS``)
    and the region / token counts (``max_regions`` / ``max_tokens``, from its InputSpec) of the run, for
    each option not in ``given`` (the ones the user passed); ``defaults`` for a run that recorded none (a
    run saved before the arrays were recorded). A given array that differs from the run's is a one-line
    error: the head would read other features than it learned from."""
    config = read_config(run_dir)
    feats, spec = config.get("features", {}), config.get("input_spec", {})
    out = dict(defaults)
    for option, (side, key, flag) in RUN_ARRAYS.items():
        recorded = feats.get(side, {}).get(key)
        if option in given and recorded is not None and given[option] != recorded:
            raise FeatstoreError(f"{flag} {given[option]!r} is not the {side} array run {run_dir} was trained on "
                                 f"({recorded!r}); leave {flag} out to use the run's")
        out[option] = given[option] if option in given else recorded if recorded is not None else out.get(option)
    for option, count in (("max_regions", spec.get("img_regions")), ("max_tokens", spec.get("txt_tokens"))):
        out[option] = given[option] if option in given else count or out.get(option)
    return out


def _spec_to_compare(config: dict, spec: dict) -> dict:
    """``spec`` (an InputSpec dict; older runs lack later fields, which take their defaults; the pooled widths
    as the head sees them, so a run saved before they were recorded compares by its one width) without
    ``txt_ids`` unless the run's head reads token ids (the other heads never see them)."""
    from .models.base import HEADS, _register_all

    _register_all()
    inputs = InputSpec(**spec)
    full = dict(inputs.to_dict(), img_pooled_dim=inputs.img_pooled_width, txt_pooled_dim=inputs.txt_pooled_width)
    head = config.get("head")
    if head not in HEADS or "txt_ids" not in HEADS.info(head).meta["needs"]:
        full.pop("txt_ids")
    return full


def _check_compatible(config: dict, data: TrainData, run_dir, model=None) -> None:
    """Refuse (one line) data whose shapes or arrays differ from the run's; then the head's ``check_data``."""
    have = _spec_to_compare(config, data.input_spec().to_dict())
    want = _spec_to_compare(config, config["input_spec"])
    if have != want:
        diff = [k for k in want if want[k] != have.get(k)]
        raise FeatstoreError(f"data does not match run {run_dir}: input {diff[0]} is {have.get(diff[0])!r}, the "
                             f"run was trained with {want[diff[0]]!r}; pass the feature sets of the run "
                             f"({config.get('features')})")
    feats, used = config.get("features", {}), data.meta.get("features", {})
    for option, (side, key, flag) in RUN_ARRAYS.items():
        trained, now = feats.get(side, {}).get(key), used.get(side, {}).get(key)
        if trained is not None and now is not None and trained != now:
            raise FeatstoreError(f"data does not match run {run_dir}: its {side} array ({key}) is {now!r}, the run "
                                 f"was trained on {trained!r}; build the data with {option}={trained!r} "
                                 f"({flag} {trained})")
    if model is not None:
        model.check_data(data.features, used.get("text"))


def _run_probs(model, data: TrainData, idx: torch.Tensor, config: dict) -> Dict[str, np.ndarray]:
    """Probabilities of rows ``idx`` by the run's own predictor: its classifier, or for a ``predict="knn"``
    run the vote of its nearest labelled train rows of ``data`` (``heads.rgcl.knn_probs``)."""
    spec = TaskSpec.from_dict(config["task_spec"])
    model.to(data.device)
    if config["train"].get("predict") == "knn":
        if "train" not in data.splits:
            raise FeatstoreError("this run predicts by a vote of its nearest labelled train rows (predict='knn'); "
                                 "pass a dataset that includes its train split")
        cfg = TrainConfig.from_dict(config["train"])
        return knn_predictions(cfg, model, data, labelled_train_rows(cfg, data), idx)
    logits = predict_logits(model, data, idx, config["train"].get("eval_batch_size", 512))
    return probabilities(spec, logits)


def run_task_spec(run_dir, task: Optional[str] = None) -> TaskSpec:
    """The tasks a saved run predicts (its ``config.json``'s ``task_spec``), which eval and predict score and
    write whatever ``--task`` says; a ``task`` given that names other label keys is a one-line error."""
    spec = TaskSpec.from_dict(read_config(run_dir)["task_spec"])
    if task is not None and task != "all":
        other = [k for k in (k.strip() for k in task.split(",")) if k and not tasks_named(spec, k)]
        if other:
            raise FeatstoreError(f"--task {task!r}: run {run_dir} predicts {', '.join(t.name for t in spec.tasks)}, "
                                 f"not {other[0]!r}; eval / predict score the run's own tasks, leave --task out")
    return spec


def evaluate_run(run_dir, data: TrainData, split: str) -> Dict[str, float]:
    """Flat metrics (``heads.metrics.compute_metrics``) of a saved run on ``data``'s ``split``."""
    model, config = load_run(run_dir)
    _check_compatible(config, data, run_dir, model)
    spec = TaskSpec.from_dict(config["task_spec"])
    missing = [t.name for t in spec.tasks if t.name not in data.targets]
    if missing:
        raise FeatstoreError(f"data has no labels for task {missing[0]!r} of run {run_dir}; pass the run's --task")
    idx = data.labelled(data.split(split))
    if idx.numel() == 0:
        raise FeatstoreError(f"split {split!r} has no labels; evaluate a labelled split or use predict")
    probs = _run_probs(model, data, idx, config)
    metrics, _ = compute_metrics(spec, data.targets_numpy(idx), probs, int(config["train"].get("auroc_batch", 0)))
    return metrics


def predict_run(run_dir, data: TrainData, out_csv, split: Optional[str] = None) -> Path:
    """Write predictions of a saved run for ``split`` (default: every row of ``data``) to ``out_csv``."""
    model, config = load_run(run_dir)
    _check_compatible(config, data, run_dir, model)
    spec = TaskSpec.from_dict(config["task_spec"])
    idx = data.split(split) if split is not None else torch.arange(len(data), device=data.device)
    probs = _run_probs(model, data, idx, config)
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(out, spec, [data.ids[i] for i in idx.tolist()], probs)
    return out


def fused_embeddings(model: torch.nn.Module, data: TrainData, batch_size: int = 512) -> np.ndarray:
    """The head's fused embedding ([N, H] float32) for every row of ``data``, in ``data.ids`` order: the
    ``"fused"`` output of ``heads.train.predict_logits``, the loop evaluation uses (eval mode, rows in length
    order, each batch trimmed to its real tokens / regions)."""
    if len(data) == 0:
        return np.zeros((0, 0), np.float32)
    return predict_logits(model, data, torch.arange(len(data), device=data.device), batch_size)["fused"].cpu().numpy()


def save_fused(store, name: str, run_dir, data: TrainData):
    """Store a run's fused embeddings as a feature set keyed by sample id (modality "fused")."""
    from featstore.store import Recipe

    model, config = load_run(run_dir)
    model = model.to(data.device)
    emb = fused_embeddings(model, data)
    weights = Path(run_dir) / "model.safetensors"
    import hashlib

    recipe = Recipe(extractor=f"heads:{config['head']}", config={"run": Path(run_dir).name, "head_config": config.get("head_config")},
                    weights_fingerprint="sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest(),
                    manifest_fingerprint=str(data.meta.get("dataset_fingerprint") or ""))
    rows: Dict[str, int] = {}
    for r, i in enumerate(data.ids):  # one row per id: a sample in two splits has the same features in both
        rows.setdefault(i, r)
    first = list(rows.values())
    return store.write(name, recipe, [data.ids[r] for r in first], {"pooled": emb[first]}, key_kind="sample_id",
                       modality="fused")
