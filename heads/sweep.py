"""``heads sweep``: every feature set x head x setting x seed on cached features, one leaderboard.

A sweep folder::

    sweep.json                      the spec (``SweepSpec.to_dict``), rewritten by every invocation
    runs/<row>/row.json             one leaderboard row: feature refs (name@version), head, its setting,
                                    the resolved train config and head options
    runs/<row>/seed_<k>/            a ``heads.train.train`` run folder (config, metrics, predictions, ...)
    runs/<row>/seed_<k>/done.json   written last: seconds, best epoch, metrics of every split, ROC points
    runs/<row>/seed_<k>/error.json  the one-line error of a failed run (retried by the next invocation)
    runs/<row>/summary.json         mean +- std over the finished seeds (``heads.runs.write_summary``)
    leaderboard.csv / .md / .html   ``heads.leaderboard``

Rows: ``features x heads x product(grid values)``. A grid key is a ``TrainConfig`` field (``lr``,
``batch_size``, ``label_smoothing``, ``loss``, ``epochs``, ...), a head option for every head (``hidden``,
``dropout``), ``HEAD.option`` for one head only (``cross.proj_dim``) or a data option (``GRID_DATA``:
``max_regions`` - the region count -, ``max_tokens``, ``text_array``, ``text_pool``; the features are
loaded once per distinct data setting); a row's setting is the keys that
apply to its head, and rows with the same (features, head, setting) are one row. A row's folder name is a
readable slug plus a hash of everything that determines its runs, so a rerun finds its finished runs
(``done.json``) and skips them: a killed sweep, rerun with the same command, continues; a changed grid adds
rows and keeps the others.

Execution: the features of each feature set are loaded once (``heads.data.build_train_data``) and shared
by all of its runs. ``devices=["cpu"]`` (or one GPU) runs everything in this process, one run after
another; several devices start one worker process per device (``spawn``), each taking every n-th run and
loading each feature set it needs once. A failing run (bad head option, missing inputs, a feature set that
does not open, any exception) records its error and the sweep goes on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from featstore.config_types import deep_merge
from featstore.devices import NO_GPU, check_device
from featstore.errors import FeatstoreError
from featstore.jsonio import canonical_json, write_json

from .sweep_layout import DONE, ERROR, ROW, RUNS, SPEC, features_label, seed_folder, setting_label

NOT_GRID = ("head", "head_cfg", "seed", "device", "init_checkpoint", "trust_checkpoint")
GRID_DATA = ("max_regions", "max_tokens", "text_array", "text_pool")  # swept by loading the features again


@dataclass
class SweepSpec:
    """What to sweep. ``features``: ``[(image_ref or None, text_ref or None)]``; ``grid``: ``{key: [values]}``;
    ``train``: fixed ``TrainConfig`` fields (a preset's, say); ``head_cfg``: fixed options per head;
    ``data``: ``build_train_data`` options (task, task_weights, max_regions, max_tokens, text_array,
    text_pool, image_pool, val_fraction) and the dataset ``format``."""

    store: str
    dataset: str
    features: List[Tuple[Optional[str], Optional[str]]]
    heads: List[str]
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    seeds: List[int] = field(default_factory=lambda: [0])
    train: Dict[str, Any] = field(default_factory=dict)
    head_cfg: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    data: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Row:
    id: str  # folder name under runs/
    features: Tuple[Optional[str], Optional[str]]  # resolved refs name@version
    head: str
    setting: Dict[str, Any]  # the grid keys that apply to this head, as given
    train: Dict[str, Any]  # TrainConfig fields (without head / seed / device)
    head_cfg: Dict[str, Any]
    data: Dict[str, Any] = field(default_factory=dict)  # data options this row changes (max_regions, ...)
    error: Optional[str] = None  # a feature set that did not open

    @property
    def label(self) -> str:
        return f"{features_label(self.features)} {self.head} {setting_label(self.setting)}"


# --------------------------------------------------------------------------------------------- the grid

def parse_grid(pairs: Sequence[str]) -> Dict[str, List[Any]]:
    """``["lr=1e-5,5e-5", "label_smoothing=0,0.1"]`` -> ``{"lr": [1e-5, 5e-5], ...}`` (values as JSON when
    they parse, else strings)."""
    grid: Dict[str, List[Any]] = {}
    for p in pairs:
        key, eq, values = p.partition("=")
        if not eq or not key.strip() or not values.strip():
            raise FeatstoreError(f"--grid {p!r} is not KEY=V1,V2,...; write e.g. --grid lr=1e-5,5e-5")
        grid[key.strip().replace("-", "_")] = [_value(v) for v in values.split(",")]
    return grid


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()


def load_grid_file(path) -> Dict[str, List[Any]]:
    """A JSON or YAML mapping ``{key: value or [values]}`` (a list value is a list of alternatives; write a
    list-valued option as a list of lists, e.g. ``hidden: [[256], [512, 256]]``)."""
    from .presets import read_mapping

    p = Path(path)
    if not p.is_file():
        raise FeatstoreError(f"--grid-file {p} does not exist; pass a JSON or YAML file of KEY: [values]")
    raw = read_mapping(p, "--grid-file", "KEY: [values]")
    return {str(k): (v if isinstance(v, list) else [v]) for k, v in raw.items()}


def _route(key: str, heads: Sequence[str], train_fields: set, head_fields: Dict[str, set]) -> str:
    """"train", "data" (``GRID_DATA``), "head" (all heads) or "head:<name>"; a one-line error for a key
    nothing accepts."""
    if "." in key:
        head, _, opt = key.partition(".")
        if head not in heads:
            raise FeatstoreError(f"grid key {key!r} names head {head!r}, which is not swept; sweep it (--head) or "
                                 "drop the key")
        if opt not in head_fields[head]:
            raise FeatstoreError(f"grid key {key!r}: head {head!r} has no option {opt!r}; its options are "
                                 f"{', '.join(sorted(head_fields[head]))}")
        return f"head:{head}"
    if key in NOT_GRID:
        raise FeatstoreError(f"grid key {key!r} cannot be swept; sweep seeds with --seeds and heads with --head")
    if key in GRID_DATA:
        return "data"
    if key in train_fields:
        return "train"
    if any(key in f for f in head_fields.values()):
        return "head"
    raise FeatstoreError(f"grid key {key!r} is neither a train option nor an option of heads {', '.join(heads)}; "
                         "see `heads list` and `heads train --help`")


def plan_settings(spec: SweepSpec) -> Dict[str, List[Tuple[Dict[str, Any], ...]]]:
    """{head: [(setting, train overrides, head options, data overrides)]}, settings deduplicated per head."""
    from .models import HEADS, list_heads
    from .train import TrainConfig

    list_heads()  # registers every head
    for h in spec.heads:
        HEADS.config_cls(h)  # a one-line error for an unknown head
    train_fields = set(TrainConfig.__dataclass_fields__)
    head_fields = {h: set(HEADS.config_cls(h).__dataclass_fields__) for h in spec.heads}
    routes = {k: _route(k, spec.heads, train_fields, head_fields) for k in spec.grid}
    keys = list(spec.grid)
    out: Dict[str, list] = {}
    for h in spec.heads:
        seen, mine = set(), []
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            setting = {k: v for k, v in zip(keys, combo) if routes[k] in ("train", "data", "head", f"head:{h}")}
            sig = canonical_json(setting, "grid setting")
            if sig in seen:
                continue
            seen.add(sig)
            train = {**spec.train, **{k: v for k, v in setting.items() if routes[k] == "train"}}
            opts = {**spec.head_cfg.get(h, {}), **{k.partition(".")[2] or k: v for k, v in setting.items()
                                                   if routes[k] not in ("train", "data")}}
            data = {k: v for k, v in setting.items() if routes[k] == "data"}
            mine.append((_varying(setting, spec.grid), train, opts, data))
        out[h] = mine
    return out


def _varying(setting: Dict[str, Any], grid: Dict[str, List[Any]]) -> Dict[str, Any]:
    """The keys of ``setting`` that take more than one value in the grid (fixed ones are not a label)."""
    return {k: v for k, v in setting.items() if len(grid[k]) > 1}


def resolve_features(store, features) -> List[Tuple[Tuple[Optional[str], Optional[str]], Optional[str]]]:
    """[(refs with exact versions, error or None)] for each (image, text) pair."""
    out = []
    for pair in features:
        refs, error = [], None
        for ref in pair:
            if ref is None:
                refs.append(None)
                continue
            name, _, version = ref.partition("@")
            try:
                refs.append(store.open(name, version or None).ref)
            except FeatstoreError as err:
                refs.append(ref)
                error = error or str(err)
        out.append(((refs[0], refs[1]), error))
    return out


def plan_rows(spec: SweepSpec, store) -> List[Row]:
    """Every leaderboard row of ``spec`` (features resolved to exact versions in ``store``)."""
    settings = plan_settings(spec)
    rows = []
    for features, error in resolve_features(store, spec.features):
        for h in spec.heads:
            for setting, train, opts, data in settings[h]:
                rows.append(Row(_row_id(features, h, setting, train, opts, {**spec.data, **data}), features, h,
                                setting, train, opts, data=data, error=error))
    return rows


def _row_id(features, head, setting, train, opts, data) -> str:
    key = canonical_json({"features": features, "head": head, "train": train, "head_cfg": opts, "data": data},
                         "sweep row", compact=False)  # the row ids of existing sweeps were hashed with ", " / ": "
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", f"{features_label(features)}_{head}_{setting_label(setting)}")[:80]
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


# ---------------------------------------------------------------------------------------------- running

@dataclass
class Job:
    row: Row
    seed: int

    @property
    def folder(self) -> str:
        return f"{RUNS}/{self.row.id}/seed_{self.seed}"


def pending_jobs(rows: Sequence[Row], seeds: Sequence[int], root: Path) -> List[Job]:
    """The (row, seed) runs without a ``done.json``, grouped by ``loading_key`` (loading order)."""
    jobs = [Job(r, s) for r in rows for s in seeds if not (seed_folder(root, r.id, s) / DONE).is_file()]
    order = {f: i for i, f in enumerate(dict.fromkeys(loading_key(r) for r in rows))}
    return sorted(jobs, key=lambda j: order[loading_key(j.row)])


def loading_key(row: Row) -> Tuple:
    """What a row's ``TrainData`` depends on: its feature sets and the data options it changes."""
    return row.features, canonical_json(row.data, "data options")


def _error_line(err: BaseException) -> str:
    if isinstance(err, FeatstoreError):
        return str(err)
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}"


def _roc_points(task, y, probs, most: int = 200) -> Optional[Dict[str, List[float]]]:
    import numpy as np
    from sklearn.metrics import roc_curve

    ok = y >= 0
    if task.kind != "binary" or len(np.unique(y[ok])) < 2:
        return None
    fpr, tpr, _ = roc_curve(y[ok], probs[ok][:, 1])
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), most)).round().astype(int))
    return {"fpr": [round(float(x), 5) for x in fpr[keep]], "tpr": [round(float(x), 5) for x in tpr[keep]]}


def _with_threads(cfg, data, cache: dict):
    """``cfg`` with ``threads="auto"`` resolved once per (head, head options, batch size) and reused by every
    seed of the row, so a row's seeds run with one count and the probe is not paid per run."""
    if cfg.threads != "auto":
        return cfg
    from .threads import resolve_threads

    key = (cfg.head, canonical_json(cfg.head_cfg, "head options"), cfg.batch_size)
    if key not in cache:
        cache[key] = resolve_threads(cfg, data)
    choice = cache[key]
    return cfg if choice.how == "cuda" else dataclasses.replace(cfg, threads=choice.threads)


def run_job(job: Job, data, root: Path, device: str, threads_cache: Optional[dict] = None) -> dict:
    """Train one (row, seed) into its folder; return its ``done.json`` record, or ``{"error": line}``."""
    from .runs import save_run
    from .train import TrainConfig, train

    folder = root / job.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ERROR).unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        if job.row.error:
            raise FeatstoreError(job.row.error)
        if isinstance(data, BaseException):
            raise data
        cfg = TrainConfig.from_dict({**job.row.train, "head": job.row.head, "head_cfg": dict(job.row.head_cfg),
                                     "seed": job.seed, "device": device})
        result = train(_with_threads(cfg, data, {} if threads_cache is None else threads_cache), data,
                       progress=False)
        save_run(folder, result, data, plots=False)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # a bad combination fails its row; the sweep goes on
        record = {"seed": job.seed, "error": _error_line(err)}
        write_json(folder / ERROR, record)
        return record
    first = result.task_spec.tasks[0]
    roc = {}
    for split, probs in result.probs.items():
        if split in result.metrics and split != "train":
            y = data.targets_numpy(data.splits[split])[first.name]
            roc[split] = _roc_points(first, y, probs[first.name])
    record = {"seed": job.seed, "seconds": time.perf_counter() - t0, "best_epoch": result.best_epoch,
              "monitor": result.monitor, "val_split": result.val_split,
              "threads": getattr(result.threads, "threads", None),
              "metrics": {s: m for s, m in result.metrics.items() if s != "train"}, "roc": roc}
    write_json(folder / DONE, record)
    return record


def _load_data(spec: SweepSpec, dataset, row: Row, device: str):
    """The ``TrainData`` of a row's feature sets and data options, or the exception that stopped it (its
    rows fail with it)."""
    from featstore.store import open_store

    from .data import build_train_data

    features, d = row.features, {**spec.data, **row.data}
    try:
        return build_train_data(open_store(spec.store), dataset, features[0], features[1], d.get("task"),
                                device=device, max_regions=d.get("max_regions"), max_tokens=d.get("max_tokens"),
                                val_fraction=d.get("val_fraction"), task_weights=d.get("task_weights"),
                                text_array=d.get("text_array", "tokens"), text_pool=d.get("text_pool", "cls"),
                                image_pool=d.get("image_pool", "pooled"), feeds=d.get("feeds"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:
        return err


def load_sweep_dataset(spec: SweepSpec):
    """The sweep's dataset: its format, and the command's dataset read options (``spec.data["read"]``, a
    ``featstore.datasets.options.ReadOptions`` dict, present only when one was given)."""
    from featstore.datasets import load_dataset
    from featstore.datasets.options import ReadOptions

    read = ReadOptions(**spec.data.get("read", {}))
    return load_dataset(spec.dataset, spec.data.get("format", "auto"), **read.load_kwargs())


def run_jobs(spec: SweepSpec, jobs: Sequence[Job], root: Path, device: str, echo: Callable[[str], None],
             total: int, done_before: int = 0) -> None:
    """Run ``jobs`` one after another on ``device``, loading each ``loading_key`` once (jobs come grouped)."""
    import gc

    dataset = load_sweep_dataset(spec)
    for note in dataset.notes:  # what the reader left out on purpose, as every --dataset command says
        echo(f"note: dataset {spec.dataset}: {note}")
    current, data, threads, noted = None, None, {}, set()
    for n, job in enumerate(jobs, 1):
        if loading_key(job.row) != current:
            data, current, threads = None, loading_key(job.row), {}
            gc.collect()
            data = _load_data(spec, dataset, job.row, device)
        if job.row.id not in noted:  # once a row, before its first seed trains
            noted.add(job.row.id)
            note = size_note(job, data)
            if note:
                echo(note)
        record = run_job(job, data, root, device, threads)
        echo(job_line(job, record, done_before + n, total, device))


def size_note(job: Job, data) -> Optional[str]:
    """``heads train``'s note for a GPU-sized head on a CPU (``experiment.cpu_size_note``), for a sweep row; None
    for a row that will fail (its own line says why) or fits."""
    from .experiment import cpu_size_note
    from .train import TrainConfig, head_on_meta

    if isinstance(data, BaseException) or job.row.error:
        return None
    try:
        cfg = TrainConfig.from_dict({**job.row.train, "head": job.row.head, "head_cfg": dict(job.row.head_cfg)})
        note = cpu_size_note(cfg, data, sum(p.numel() for p in head_on_meta(cfg, data).parameters()))
    except Exception:  # the row's run reports it
        return None
    return f"{job.row.label}: {note}" if note else None


def job_line(job: Job, record: dict, n: int, total: int, device: str) -> str:
    where = f" [{device}]" if device != "cpu" else ""
    if "error" in record:
        return f"[{n}/{total}]{where} {job.row.label} seed {job.seed}: FAILED: {record['error']}"
    val = record["metrics"].get(record["val_split"], {}).get(record["monitor"])
    shown = "nan" if val is None or (isinstance(val, float) and math.isnan(val)) else f"{val:.4f}"
    return (f"[{n}/{total}]{where} {job.row.label} seed {job.seed}: {record['val_split']} {record['monitor']}={shown} "
            f"({record['seconds']:.1f} s)")


def _worker(spec_dict: dict, jobs: List[Job], root: str, device: str, total: int) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    run_jobs(SweepSpec(**spec_dict), jobs, Path(root), device, lambda line: print(line, flush=True), total)


def run_parallel(spec: SweepSpec, jobs: List[Job], root: Path, devices: Sequence[str]) -> None:
    """One worker process per device (spawned), each taking every n-th job (still grouped by features)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = []
    for i, dev in enumerate(devices):
        share = jobs[i::len(devices)]
        if share:
            p = ctx.Process(target=_worker, args=(spec.to_dict(), share, str(root), dev, len(jobs)))
            p.start()
            procs.append((dev, p))
    failed = []
    for dev, p in procs:
        p.join()
        if p.exitcode != 0:
            failed.append(f"{dev} (exit {p.exitcode})")
    if failed:
        raise FeatstoreError(f"sweep worker(s) {', '.join(failed)} stopped; finished runs are kept - rerun the same "
                             "command to continue")


def run_sweep(spec: SweepSpec, out_dir, devices: Sequence[str] = ("cpu",), echo: Callable[[str], None] = print,
              top: int = 5) -> Iterator[str]:
    """Plan, run what is not finished, write the leaderboard; yield report lines (runs echo as they end)."""
    from featstore.store import open_store

    from .leaderboard import build_leaderboard, leaderboard_lines, write_leaderboard

    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise FeatstoreError(f"seeds {spec.seeds} are empty or repeat a value; pass distinct seeds, e.g. --seeds 0,1,2")
    rows = plan_rows(spec, open_store(spec.store))
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / SPEC, spec.to_dict())
    for r in rows:
        (root / RUNS / r.id).mkdir(parents=True, exist_ok=True)
        write_json(root / RUNS / r.id / ROW, dataclasses.asdict(r))
    jobs = pending_jobs(rows, spec.seeds, root)
    total = len(rows) * len(spec.seeds)
    yield (f"sweep {root}: {len(rows)} rows x {len(spec.seeds)} seeds = {total} runs; {total - len(jobs)} finished "
           f"before, {len(jobs)} to run on {', '.join(devices)}")
    if len(devices) > 1 and jobs:
        run_parallel(spec, jobs, root, devices)
    elif jobs:
        run_jobs(spec, jobs, root, devices[0], echo, total, total - len(jobs))
    board = build_leaderboard(root, rows, spec.seeds)
    paths = write_leaderboard(root, board, top)
    yield from leaderboard_lines(board, top)
    yield "leaderboard: " + ", ".join(str(p) for p in paths)


def sweep_devices(text: str) -> List[str]:
    """``auto`` (every visible GPU, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or a comma list of them."""
    import torch

    if text == "auto":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] if n > 1 else (["cuda"] if n == 1 else ["cpu"])
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for d in devices:
        check_device(d, "--device {device!r} is not a device; pass auto, cpu, cuda, cuda:N or a comma list", NO_GPU)
    if not devices:
        raise FeatstoreError("--device is empty; pass auto, cpu, cuda or e.g. cuda:0,cuda:1")
    return devices


def feature_pairs(images: Optional[str], texts: Optional[str]) -> List[Tuple[Optional[str], Optional[str]]]:
    """Every (image, text) pair of the comma lists ``--image A,B`` x ``--text T`` ("-" leaves a modality out)."""
    def split(v):
        return [None if x.strip() == "-" else x.strip() for x in v.split(",") if x.strip()] if v else [None]

    pairs = [(i, t) for i in split(images) for t in split(texts) if i or t]
    if not pairs:
        raise FeatstoreError("no feature set given; pass --image A,B and/or --text T")
    return pairs


def preset_base(preset: Optional[str], heads: Sequence[str], settings: Dict[str, Any]):
    """(fixed train options, {head: fixed options}) of a sweep: ``--set`` options for every head, a preset's
    train settings for every row and its head options for its own head (``--set`` wins)."""
    from .presets import load_preset

    head_cfg = {h: dict(settings) for h in heads}
    if not preset:
        return {}, head_cfg
    p = load_preset(preset)
    if p.head in head_cfg:
        head_cfg[p.head] = deep_merge(p.head_cfg, settings)
    return dict(p.train), head_cfg


def preset_data(preset: Optional[str], data: Dict[str, Any], explicit: set) -> Dict[str, Any]:
    """A sweep's data options: the command's ``data``, with the preset's data options (``text_pool``,
    ``image_pool``, ``feeds``, ...) over those the command line did not give (``explicit``), as ``heads train``
    does."""
    if not preset:
        return data
    from .experiment import task_weights
    from .presets import load_preset

    given = {k: v for k, v in load_preset(preset).data.items() if (k in data or k == "feeds") and k not in explicit}
    if "task_weights" in given:
        given["task_weights"] = task_weights(given["task_weights"], given.get("task", data.get("task")))
    return {**data, **given}


def with_checkpoint(train: Dict[str, Any], heads: Sequence[str], head_cfg: Dict[str, Dict[str, Any]],
                    init_checkpoint: Optional[str], trust_checkpoint: bool = False,
                    preset: Optional[str] = None) -> Dict[str, Any]:
    """``train`` (``preset_base``'s) with ``--init-checkpoint`` / ``--trust-checkpoint`` on top (``none``: a
    random start over the preset's checkpoint); refused when a swept head cannot load the checkpoint the
    rows would start from (``heads.train.loads_checkpoint``)."""
    from .train import CHECKPOINT_HEADS, loads_checkpoint, start_checkpoint

    out = dict(train, **({"init_checkpoint": init_checkpoint} if init_checkpoint else {}),
               **({"trust_checkpoint": True} if trust_checkpoint else {}))
    start = start_checkpoint(out.get("init_checkpoint"))
    others = [h for h in heads if not loads_checkpoint(h, head_cfg.get(h, {}))]
    if start and others:
        source = f"--init-checkpoint {start}" if init_checkpoint else f"preset {preset!r}'s checkpoint {start!r}"
        fix = "without it" if init_checkpoint else "without --preset, or pass --init-checkpoint none"
        raise FeatstoreError(f"{source} initialises {', '.join(CHECKPOINT_HEADS)} heads; {', '.join(others)} cannot "
                             f"load it: sweep those {fix}")
    return out
