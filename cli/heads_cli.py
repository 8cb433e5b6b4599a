"""`heads`: train fusion heads on cached features, evaluate, predict and compare runs.

Every command only parses arguments and calls library functions (heads.*), which tests call too.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from featstore.errors import FeatstoreError

from .common import (FriendlyGroup, LazyOptionsCommand, dataset_read_options, load_cli_dataset,
                     options_from_dataclass, parse_seeds, parse_settings, read_options, store_option)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featstore-heads")
def main():
    """Train fusion heads (ViLBERT, ReFNet, concat, GNN, cross, ...) on features cached by `featstore extract`.

    Features are joined to labels by id, loaded once onto the device and batched by index.
    """


@main.command("list")
def list_cmd():
    """List the registered heads with their options and defaults."""
    from heads.models import HEADS, list_heads
    from heads.presets import size_note

    for name, help_text, cfg in list_heads():
        click.echo(f"{name}: {help_text}")
        note = size_note(name)
        if note:
            click.echo(f"    {note}")
        needs = HEADS.info(name).meta["needs"]
        for f in dataclasses.fields(cfg):
            click.echo(f"    {f.name} = {getattr(cfg, f.name)!r}")
        if needs:
            click.echo(f"    (needs {', '.join(sorted(needs))})")


@main.command("presets")
@click.argument("name", required=False)
def presets_cmd(name):
    """List the published recipes (`--preset NAME`), or show one preset's settings and sources."""
    from heads.presets import load_preset, preset_names

    if name is None:
        for n in preset_names():
            try:
                p = load_preset(n)
                click.echo(f"{n}: {p.description} [{p.head}]")
            except FeatstoreError as err:
                click.echo(f"{n}: not usable with this version: {err}")
        return
    p = load_preset(name)
    click.echo(p.summary_line())
    for part in ("train", "head_cfg", "data"):
        click.echo(f"  {part}: {json.dumps(getattr(p, part), sort_keys=True)}")
    for note in p.notes:
        click.echo(f"  note: {note}")


RUNS_OWN = "; heads eval / predict: the run's own unless given"


def data_options(f):
    opts = [
        store_option,
        click.option("--dataset", "dataset_path", required=True, help="Dataset manifest (labels and splits)."),
        click.option("--format", "dataset_format", default="auto", show_default=True),
        click.option("--image", "image_ref", default=None, help="Image feature set NAME[@VERSION]."),
        click.option("--text", "text_ref", default=None, help="Text feature set NAME[@VERSION]."),
        click.option("--task", default=None, help="Label key(s) to predict: e.g. label, A, A,B,C, genres, all "
                     "(default: every label the dataset has)."),
        click.option("--task-weights", default=None, help="Loss weights per task, e.g. A=0.4,B=0.3,C=0.3."),
        click.option("--max-regions", type=int, default=None, help=f"Pad/cut regions to this many{RUNS_OWN}."),
        click.option("--max-tokens", type=int, default=None, help=f"Pad/cut tokens to this many{RUNS_OWN}."),
        click.option("--text-array", default="tokens",
                     help="Text token array to use, e.g. tokens or layer_6 (ViLBERT starts after BERT layer 6). "
                          f"Default: tokens{RUNS_OWN}."),
        click.option("--text-pool", default="cls",
                     help="Pooled text vector: cls, mean, or an array the set has (pooler: CLIP's pre-projection). "
                          f"Default: cls{RUNS_OWN}."),
        click.option("--image-pool", default="pooled", expose_value=False, is_eager=True,
                     callback=lambda ctx, _p, v: ctx.meta.__setitem__("image_pool", v),
                     help="Image array used as the pooled vector: pooled, or e.g. pooler (CLIP's pre-projection; "
                          f"Hate-CLIPper). Default: pooled{RUNS_OWN}."),
        click.option("--train-image", default=None, expose_value=False, is_eager=True, metavar="NAME[@VERSION]",
                     callback=lambda ctx, _p, v: ctx.meta.__setitem__("train_image", v),
                     help="Image feature set the train split's samples read instead of --image's rows (RGCL: "
                          "train memes squashed to 224 px, dev / test at 336; eval / predict: the run's)."),
        click.option("--val-fraction", type=float, default=None,
                     help="Carve a stratified validation split from train (default: the dataset's dev split)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]."),
    ]
    for o in reversed(opts):
        f = o(f)
    return dataset_read_options(f)


def _device(device: str) -> str:
    from featstore.devices import resolve_device

    return resolve_device(device)


def _weights(text, task=None):
    from heads.experiment import task_weights

    return task_weights(text, task)


def _load_data(store_url, dataset_path, dataset_format, image_ref, text_ref, task, task_weights, max_regions,
               max_tokens, text_array, text_pool, val_fraction, device, seed=0, feeds=None, image_pool=None,
               train_image=None, need_train=True):
    from featstore.store import open_store
    from heads.data import build_train_data

    st = open_store(store_url)
    ds = load_cli_dataset(dataset_path, dataset_format)
    ctx = click.get_current_context(silent=True)
    if image_pool is None:  # --image-pool
        image_pool = ctx.meta.get("image_pool", "pooled") if ctx is not None else "pooled"
    if train_image is None and ctx is not None:  # --train-image
        train_image = ctx.meta.get("train_image")
    return build_train_data(st, ds, image_ref, text_ref, task, device=device, max_regions=max_regions,
                            max_tokens=max_tokens, val_fraction=val_fraction, seed=seed,
                            task_weights=_weights(task_weights, task), text_array=text_array, text_pool=text_pool,
                            image_pool=image_pool, feeds=feeds, train_image_ref=train_image, need_train=need_train)


def _train_options():
    """``heads train``'s options made from ``TrainConfig``'s fields (their defaults, types, choices and help)."""
    from heads.train import TrainConfig

    return options_from_dataclass(TrainConfig)


@main.command(cls=LazyOptionsCommand, lazy_options=_train_options)
@data_options
@click.option("--head", "head_name", default=None, help="Head name (see `heads list`; default: the preset's).")
@click.option("--preset", default=None, metavar="NAME",
              help="Published settings (see `heads presets`; or a copied .json/.yaml file); explicit options override.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Head option, repeatable.")
@click.option("--out", "out_dir", required=True, help="Run folder to write.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds; one run per seed.")
@click.option("--save-fused", default=None, metavar="NAME",
              help="Also store the head's fused embeddings as feature set NAME (for `featstore neighbors`).")
@click.option("--quiet", is_flag=True, help="No progress bars: one line per epoch and per seed instead.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out (refused otherwise).")
@click.option("--rgcl", "rgcl_on", is_flag=True,
              help="Add RGCL's retrieval-guided contrastive term (pseudo-gold positives, hard negatives; heads.rgcl).")
@click.option("--rgcl-set", "rgcl_settings", multiple=True, metavar="KEY=VALUE",
              help="RGCL option, repeatable (implies --rgcl): k_pos, k_neg, margin, ce_weight, refresh, knn_k, ...")
@click.option("--feeds", default=None, metavar="SRC>DST,...",
              help="Fan-out cascade: feed label SRC's task probabilities into every task of label DST (B>C).")
def train(store_url, dataset_path, dataset_format, image_ref, text_ref, task, task_weights, max_regions, max_tokens,
          text_array, text_pool, val_fraction, device, head_name, settings, out_dir, seeds, save_fused, quiet,
          overwrite, preset, rgcl_on, rgcl_settings, feeds, threads, init_checkpoint, trust_checkpoint,
          **train_options):
    """Train a head on cached features and write a run folder (config, history, checkpoint, predictions, metrics)."""
    from heads.experiment import train_heads
    from heads.threads import parse_threads

    threads = parse_threads(threads)  # a bad value fails before any data is loaded

    from heads.presets import run_options
    from heads.train import TrainConfig

    ctx = click.get_current_context()
    rgcl = parse_settings(rgcl_settings, "--rgcl-set") if rgcl_on or rgcl_settings else None
    params = {**ctx.params, "threads": threads, "rgcl": rgcl, "image_pool": ctx.meta.get("image_pool", "pooled")}
    explicit = {k for k in params if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT}
    if rgcl is None:  # not a click parameter: explicit only when --rgcl / --rgcl-set was given
        explicit.discard("rgcl")
    opts = run_options(preset, head_name, params, explicit, parse_settings(settings))
    if opts["preset"] is not None:
        from heads.presets import head_switch_note

        click.echo(opts["preset"].summary_line())
        note = head_switch_note(opts["preset"], opts["head"])
        if note:
            click.echo(note)
    seed_list = parse_seeds(seeds)
    dev = _device(device)
    d = opts["data"]
    data = _load_data(store_url, dataset_path, dataset_format, image_ref, text_ref, d["task"], d["task_weights"],
                      d["max_regions"], d["max_tokens"], d["text_array"], d["text_pool"], d["val_fraction"], dev,
                      seed=seed_list[0] if seed_list else 0, feeds=d.get("feeds"), image_pool=d["image_pool"])
    for warning in data.meta.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if opts["preset"] is not None:
        from heads.preset_inputs import image_feature_notes

        for side in ("image", "text"):
            for note in image_feature_notes(opts["preset"].name, opts["preset"].features(side),
                                            data.meta.get("features"), side):
                click.echo(note)
    cfg = TrainConfig(head=opts["head"], head_cfg=opts["head_cfg"], device=dev, **opts["train"])
    for line in train_heads(cfg, data, out_dir, seed_list, progress=not quiet, overwrite=overwrite,
                            echo=click.echo if quiet else None):
        click.echo(line)
    if save_fused:
        from featstore.store import open_store
        from heads.experiment import save_fused as store_fused

        from heads.runs import run_dir_of

        run = run_dir_of(out_dir, seed_list[0])
        fsv = store_fused(open_store(store_url), save_fused, run, data)
        click.echo(f"fused embeddings of {run} stored as {fsv.ref} ({len(fsv)} x {fsv.spec('pooled').shape[0]})")


def _explicit(names) -> set:
    """Which of these parameters (``--image-pool`` included) the command line gave."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {n for n in names if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)}


def _run_arrays(run_dir, values: dict) -> dict:
    """eval / predict's arrays and counts (``heads.experiment.run_data_options``): the run's, except those
    passed on the command line."""
    from heads.experiment import run_data_options

    ctx = click.get_current_context()
    values = dict(values, image_pool=ctx.meta.get("image_pool", "pooled"))  # --image-pool: not a parameter value
    names = ("text_array", "text_pool", "image_pool", "max_regions", "max_tokens")
    given = {n: values[n] for n in _explicit(names)}
    return run_data_options(run_dir, given, {n: values[n] for n in names})


def _saved_run_data(run_dir, seed, store_url, dataset_path, dataset_format, image_ref, text_ref, task, max_regions,
                    max_tokens, text_array, text_pool, val_fraction, device):
    """(the run folder of ``seed``, the ``TrainData`` eval / predict read for it): the run's feature sets,
    arrays, counts and train-split image set unless the command line names others; always the run's own tasks
    (its ``task_spec``: labels and a train split are not needed, so a test file alone is predicted)."""
    from heads.experiment import run_feature_refs, run_task_spec, run_train_image
    from heads.runs import run_dir_of

    run_dir = run_dir_of(run_dir, seed)
    task = run_task_spec(run_dir, task if "task" in _explicit(("task",)) else None)
    image_ref, text_ref = run_feature_refs(run_dir, image_ref, text_ref)
    arrays = _run_arrays(run_dir, dict(text_array=text_array, text_pool=text_pool, max_regions=max_regions,
                                       max_tokens=max_tokens))
    train_image = run_train_image(run_dir, click.get_current_context().meta.get("train_image"))
    return run_dir, _load_data(store_url, dataset_path, dataset_format, image_ref, text_ref, task, None,
                               val_fraction=val_fraction, device=_device(device), train_image=train_image,
                               need_train=False, **arrays)


@main.command("eval")
@click.argument("run_dir")
@data_options
@click.option("--split", default="test", show_default=True)
@click.option("--seed", type=int, default=None, help="Which seed's run in RUN_DIR (default: the first).")
def eval_cmd(run_dir, store_url, dataset_path, dataset_format, image_ref, text_ref, task, task_weights, max_regions,
             max_tokens, text_array, text_pool, val_fraction, device, split, seed):
    """Evaluate a saved run on a split (feature sets, arrays and region / token counts default to the run's)."""
    from heads.experiment import evaluate_run

    run_dir, data = _saved_run_data(run_dir, seed, store_url, dataset_path, dataset_format, image_ref, text_ref, task,
                                    max_regions, max_tokens, text_array, text_pool, val_fraction, device)
    metrics = evaluate_run(run_dir, data, split)
    click.echo(json.dumps({"run": str(run_dir), "split": split, "metrics": metrics}, indent=1, sort_keys=True))


@main.command()
@click.argument("run_dir")
@data_options
@click.option("--split", default=None, help="Only this split (default: every sample).")
@click.option("--out", "out_csv", required=True, help="CSV to write (Hateful Memes: id,proba,label).")
@click.option("--seed", type=int, default=None, help="Which seed's run in RUN_DIR (default: the first).")
def predict(run_dir, store_url, dataset_path, dataset_format, image_ref, text_ref, task, task_weights, max_regions,
            max_tokens, text_array, text_pool, val_fraction, device, split, out_csv, seed):
    """Write a saved run's predictions for a dataset (features read as for eval: the run's by default)."""
    from heads.experiment import predict_run

    run_dir, data = _saved_run_data(run_dir, seed, store_url, dataset_path, dataset_format, image_ref, text_ref, task,
                                    max_regions, max_tokens, text_array, text_pool, val_fraction, device)
    path = predict_run(run_dir, data, out_csv, split)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--split", "splits", multiple=True,
              help="Split(s) to show, repeatable (default: every labelled split the runs share).")
@click.option("--metric", "metrics", multiple=True, help="Metrics to show (default: the common ones).")
@click.option("--against", type=click.Choice(["first", "best", "ranked"]), default=None,
              help="Test every run against the first one, the best one by the first metric, or a sweep's "
                   "leaderboard rank 1 (default: ranked for a sweep, else first).")
def compare(run_dirs, splits, metrics, against):
    """Tables of runs (heads x seeds, mean +- std) per split, with t-tests and which side is better in words.

    RUN_DIRS are `heads train --out` folders, run folders, or `heads sweep --out` folders (their leaderboard)."""
    from heads.compare import compare_splits

    if against is None:
        against = "ranked" if any((Path(r) / "sweep.json").is_file() or Path(r).name == "leaderboard.csv"
                                for r in run_dirs) else "first"
    tables = compare_splits([Path(r) for r in run_dirs], list(splits) or None, list(metrics) or None, against)
    click.echo("\n\n".join(c.to_text() for c in tables))


def _sweep_checkpoint_options():
    from heads.train import TrainConfig

    return options_from_dataclass(TrainConfig, skip=[f for f in TrainConfig.__dataclass_fields__
                                                     if f not in ("init_checkpoint", "trust_checkpoint")])


@main.command(cls=LazyOptionsCommand, lazy_options=_sweep_checkpoint_options)
@data_options
@click.option("--head", "head_names", required=True, help="Comma-separated heads, e.g. vilbert,concat,cross.")
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2",
              help="Values to sweep, repeatable: a train option (lr, batch_size, label_smoothing, loss, epochs, ...), "
                   "a head option, or HEAD.option for one head. One value fixes a setting.")
@click.option("--grid-file", default=None, help="JSON/YAML mapping KEY: [values] (added to --grid).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Head option for every head, repeatable.")
@click.option("--preset", default=None, help="Start every row from a preset (its train settings; its head options for its head).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds; one run per seed per row.")
@click.option("--out", "out_dir", required=True, help="Sweep folder (rerun the same command to resume).")
@click.option("--top", type=int, default=5, show_default=True, help="Rows printed and drawn as ROC curves.")
def sweep(store_url, dataset_path, dataset_format, image_ref, text_ref, task, task_weights, max_regions, max_tokens,
          text_array, text_pool, val_fraction, device, head_names, grid, grid_file, settings, preset, seeds, out_dir,
          top, init_checkpoint, trust_checkpoint):
    """Train every feature set x head x setting x seed on cached features; write a leaderboard.

    --image A,B,C and --text T give the feature sets (every pair; "-" leaves a modality out). Finished runs
    are skipped, so a killed sweep continues when rerun; a failing combination fails its row only.
    One process per device: runs go one after another on a CPU or one GPU; several GPUs get a worker each."""
    from heads.sweep import (SweepSpec, feature_pairs, load_grid_file, parse_grid, preset_base, preset_data,
                             run_sweep, sweep_devices, with_checkpoint)

    ctx = click.get_current_context()
    grid_values = {**(load_grid_file(grid_file) if grid_file else {}), **parse_grid(grid)}
    heads_list = [h.strip() for h in head_names.split(",") if h.strip()]
    train_base, head_fixed = preset_base(preset, heads_list, parse_settings(settings))
    train_base = with_checkpoint(train_base, heads_list, head_fixed, init_checkpoint, trust_checkpoint, preset)
    spec = SweepSpec(store=str(store_url), dataset=str(dataset_path), features=feature_pairs(image_ref, text_ref),
                     heads=heads_list, grid=grid_values, seeds=parse_seeds(seeds),
                     train=train_base, head_cfg=head_fixed,
                     data={"format": dataset_format, "task": task, "task_weights": _weights(task_weights, task),
                           "max_regions": max_regions, "max_tokens": max_tokens, "text_array": text_array,
                           "text_pool": text_pool, "val_fraction": val_fraction,
                           "image_pool": ctx.meta.get("image_pool", "pooled")})
    if ctx.meta.get("train_image"):
        raise FeatstoreError("--train-image is for heads train / eval / predict (one image set); a sweep over "
                             "several image sets takes none: train that row with heads train")
    spec.data = preset_data(preset, spec.data, _explicit(spec.data))
    read = read_options()
    if read != type(read)():  # only when given, so a sweep's row ids stay as they were without them
        spec.data["read"] = dataclasses.asdict(read)
    if preset:
        from heads.preset_inputs import store_image_notes
        from heads.presets import load_preset

        p = load_preset(preset)
        for side, refs in (("image", [i for i, _ in spec.features]), ("text", [t for _, t in spec.features])):
            for note in store_image_notes(p.name, p.features(side), str(store_url), refs, side):
                click.echo(note)
    for line in run_sweep(spec, out_dir, sweep_devices(device), echo=click.echo, top=top):
        click.echo(line)
