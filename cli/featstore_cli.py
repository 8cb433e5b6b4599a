"""`featstore`: extract features into a versioned store, inspect, verify, import and export them.

Every command only parses arguments and calls library functions (featstore.*), which tests call too.
"""
from __future__ import annotations

import json

import click


from .common import (FriendlyGroup, LazyOptionsCommand, dataset_read_options, echo_table, load_cli_dataset,
                     options_from_dataclass, parse_settings, store_option)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featstore-heads")
def main():
    """Extract image and text features once into a versioned store (Zarr + LMDB) and read them fast.

    A store holds feature sets; each has immutable versions whose id is a hash of everything that produced
    them. Set FEATSTORE_STORE to skip --store.
    """


def _maybe_dataset(path):
    return load_cli_dataset(path) if path else None


# -- store management -------------------------------------------------------------------------------------
@main.command()
@click.argument("store_url")
def init(store_url):
    """Create an empty store at STORE_URL (a directory or s3://bucket/prefix)."""
    from featstore.store import open_store

    st = open_store(store_url, create=True)
    click.echo(f"store ready at {st.url}")


@main.command("ls")
@store_option
@click.option("--all", "show_all", is_flag=True, help="Also list incomplete (unfinished) versions.")
def ls_cmd(store_url, show_all):
    """List feature sets and their versions."""
    from featstore.store import open_store

    st = open_store(store_url)
    rows = []
    for name in st.feature_sets():
        for v in st.versions(name, include_incomplete=show_all):
            state = "complete" if v.complete else f"incomplete {v.chunks_done}/{v.chunks_total} chunks"
            rows.append([name, v.version, v.extractor, v.modality, v.n_valid if v.complete else v.n,
                         v.n - v.n_valid if v.complete else "-", v.created or "-", state])
    if not rows:
        click.echo(f"{st.url}: no feature sets")
        return
    echo_table(rows, ["name", "version", "extractor", "modality", "rows", "failed", "created", "state"])


@main.command()
@click.argument("ref")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the full version record as JSON.")
def info(ref, store_url, as_json):
    """Describe a version: NAME[@VERSION] (default: latest complete)."""
    from featstore.store import open_store

    fsv = open_store(store_url).open(ref)
    rec = dict(fsv.record)
    if as_json:
        click.echo(json.dumps(rec, indent=1, sort_keys=True))
        return
    click.echo(f"{fsv.ref}")
    click.echo(f"  extractor      {rec['recipe']['extractor']}  ({fsv.modality}, keyed by {fsv.key_kind})")
    click.echo(f"  rows           {rec['n_valid']} valid, {rec['n_failed']} failed, {len(rec['chunks'])} chunks "
               f"of {rec['chunk_rows']}")
    click.echo(f"  backend        {rec['backend']} {rec.get('backend_options') or ''}")
    click.echo(f"  created        {rec['created']} by featstore {rec['tool_version']}")
    click.echo(f"  weights        {rec['recipe']['weights_fingerprint'] or '-'}")
    load = (rec.get("meta") or {}).get("weights_load")
    if load:
        click.echo(f"  weights load   {json.dumps(load, sort_keys=True)}")
    click.echo(f"  manifest       {rec['recipe']['manifest_fingerprint'] or '-'}")
    click.echo(f"  config         {json.dumps(rec['recipe']['config'], sort_keys=True)}")
    click.echo(f"  preprocessing  {json.dumps(rec['recipe']['preprocessing'], sort_keys=True)}")
    if rec["recipe"].get("compute"):
        click.echo(f"  compute        {json.dumps(rec['recipe']['compute'], sort_keys=True)}")
    click.echo("  arrays")
    for name in fsv.array_names:
        s = fsv.spec(name)
        click.echo(f"    {name:<12} [N{''.join(', ' + str(d) for d in s.shape)}] {s.dtype}"
                   f"{'  (per item, padded; true length in count)' if s.per_item else ''}")
    if rec["failures"]:
        click.echo("  failures (first 10)")
        for k, why in list(rec["failures"].items())[:10]:
            click.echo(f"    {k}: {why}")


@main.command()
@click.argument("refs", nargs=-1)
@store_option
def verify(refs, store_url):
    """Re-check every chunk checksum of versions (default: every complete version); exit 1 on corruption."""
    from featstore.store import open_store

    st = open_store(store_url)
    reports = [st.verify(ref) for ref in refs] if refs else st.verify_all()
    bad = 0
    for rep in reports:
        for line in rep.lines():
            click.echo(line)
        bad += not rep.ok
    if bad:
        raise SystemExit(1)


@main.command()
@click.argument("ref")
@store_option
@click.option("--all", "all_versions", is_flag=True, help="Remove every version of the feature set.")
def rm(ref, store_url, all_versions):
    """Remove a version NAME@VERSION (or a whole feature set with --all)."""
    from featstore.store import open_store, parse_ref

    name, version = parse_ref(ref)
    removed = open_store(store_url).rm(name, version, all_versions=all_versions)
    click.echo(f"removed {name}: {', '.join(removed)}")


@main.command()
@store_option
@dataset_read_options
@click.option("--dataset", "dataset_path", required=True, help="Dataset manifest (jsonl / csv / folder).")
@click.option("--format", "dataset_format", default="auto", show_default=True)
@click.option("--image", "image_ref", default=None, help="Image feature set NAME[@VERSION] (keyed by image key).")
@click.option("--text", "text_ref", default=None, help="Text feature set NAME[@VERSION] (keyed by sample id).")
def preflight(store_url, dataset_path, dataset_format, image_ref, text_ref):
    """Join a dataset with feature sets by key and report missing / extra keys (exit 1 if any is missing)."""
    from featstore.store import open_store, preflight as run_preflight

    st = open_store(store_url)
    ds = load_cli_dataset(dataset_path, dataset_format)
    rep = run_preflight(ds.samples, st.open(image_ref) if image_ref else None, st.open(text_ref) if text_ref else None)
    for line in rep.lines():
        click.echo(line)
    if not rep.ok:
        raise SystemExit(1)


# -- interop ------------------------------------------------------------------------------------------------
FORMATS = ["mmf-lmdb", "hdf5", "npy"]


@main.command("import")
@click.argument("path")
@store_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="Layout of PATH.")
@click.option("--name", required=True, help="Feature set name to create.")
@dataset_read_options
@click.option("--dataset", "dataset_path", default=None,
              help="Dataset manifest: keys are matched to its image keys (leading zeros, path separators).")
@click.option("--max-regions", type=int, default=None, help="Region axis width (default: the largest count).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float32", show_default=True)
@click.option("--backend", type=click.Choice(["zarr", "lmdb"]), default="zarr", show_default=True)
def import_cmd(path, store_url, fmt, name, dataset_path, max_regions, dtype, backend):
    """Import region features users already have (MMF detectron.lmdb, HDF5, per-image .npy folders)."""
    from featstore.interop.bridge import import_features
    from featstore.store import open_store

    ds = _maybe_dataset(dataset_path)
    st = open_store(store_url, create=True)
    fsv, report = import_features(st, path, fmt, name, dataset=ds, max_regions=max_regions, dtype=dtype,
                                  backend=backend)
    for line in report:
        click.echo(line)
    click.echo(f"imported {len(fsv)} rows into {fsv.ref}")


@main.command("export")
@click.argument("ref")
@store_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True)
@click.option("--out", "out_path", required=True, help="File or folder to write.")
def export_cmd(ref, store_url, fmt, out_path):
    """Export a region feature set to MMF's LMDB layout, HDF5 or a per-image .npy folder."""
    from featstore.interop.bridge import export_features, export_notes
    from featstore.store import open_store

    fsv = open_store(store_url).open(ref)
    n = export_features(fsv, out_path, fmt)
    click.echo(f"exported {n} rows of {fsv.ref} to {out_path} ({fmt})")
    for line in export_notes(fsv, fmt):
        click.echo(line, err=True)


# -- extraction ---------------------------------------------------------------------------------------------
@main.command()
def extractors():
    """List the registered extractors with their options and defaults."""
    from featstore.extractors import list_extractors

    for name, help_text, opts in list_extractors():
        click.echo(f"{name}: {help_text}")
        for opt, default in opts:
            click.echo(f"    {opt} = {default!r}")


def _extract_options():
    """``featstore extract``'s options made from ``ExtractOptions``' fields (defaults, types, choices, help)."""
    from featstore.runner import ExtractOptions

    return options_from_dataclass(ExtractOptions)


@main.command(cls=LazyOptionsCommand, lazy_options=_extract_options)
@dataset_read_options
@click.option("--dataset", "dataset_path", required=True, help="Dataset manifest (Hateful Memes jsonl or folder, "
              "Memotion CSV, MM-IMDB folder, generic CSV/JSONL).")
@click.option("--format", "dataset_format", default="auto", show_default=True)
@click.option("--extractor", "extractor_name", required=True, help="Extractor name (see `featstore extractors`).")
@click.option("--weights", default=None, help="Local weights directory/file, a model id in the local Hugging Face "
              "cache, or 'demo' (the small real backbones installed with the project).")
@store_option
@click.option("--name", default=None, help="Feature set name (default: the extractor name).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Extractor option, repeatable (e.g. --set image_size=448 --set regions=100).")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(dataset_path, dataset_format, extractor_name, weights, store_url, name, settings, compile_model, quiet,
            **extract_options):
    """Materialise one feature set version: run an extractor over a dataset into the store.

    Rerunning the same command resumes an interrupted run, or names the finished version. Inputs that fail
    are recorded in the version (see --on-error); when every input fails nothing is committed and the command
    exits 2 naming the first failure. Under `torchrun --nproc_per_node N featstore extract ...` every rank
    writes its share of the same version.
    """
    from featstore.runner import ExtractOptions, run_extraction
    from featstore.store import open_store

    cfg = parse_settings(settings)
    if weights is not None:
        cfg["weights"] = weights
    if compile_model:
        cfg["compile"] = True
    # missing or broken images are not a manifest error here: the --on-error policy records or stops on them
    ds = load_cli_dataset(dataset_path, dataset_format)
    st = open_store(store_url, create=True)
    opts = ExtractOptions(**extract_options, progress=not quiet)
    summary = run_extraction(st, ds, extractor_name, name=name, extractor_config=cfg, options=opts)
    for line in summary.lines():
        click.echo(line)


@main.command("cache-images")
@dataset_read_options
@click.option("--dataset", "dataset_path", required=True, help="Dataset manifest whose images to decode.")
@click.option("--format", "dataset_format", default="auto", show_default=True)
@click.option("--image-cache", "image_cache", required=True, metavar="DIR",
              help="Cache directory (created if missing); pass the same to `featstore extract --image-cache`.")
@click.option("--workers", type=int, default=None, help="Decoding processes (default: one per CPU core, at most 16).")
@click.option("--extractor", "extractors", multiple=True, metavar="NAME",
              help="Also store each image resized for this extractor (grid, roi, dinov2, ...), repeatable.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Option of those extractors, as for `featstore extract` (e.g. --set image_size=448).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def cache_images(dataset_path, dataset_format, image_cache, workers, extractors, settings, quiet):
    """Decode a dataset's images into a decoded-image cache ahead of extraction (e.g. before GPU time)."""
    from featstore.extractors.base import check_image_extractor, decode_for, recipe_for
    from featstore.runner.prefill import prefill_image_cache

    for name in extractors:
        check_image_extractor(name, "featstore cache-images")
    cfg = parse_settings(settings)
    recipes = [r for r in (recipe_for(name, cfg) for name in extractors) if r is not None]
    decodes = [decode_for(name, cfg) for name in extractors if recipe_for(name, cfg) is None]  # the rest: recipes
    ds = load_cli_dataset(dataset_path, dataset_format)
    for line in prefill_image_cache(ds, image_cache, num_workers=workers, progress=not quiet,
                                    recipes=recipes, decodes=decodes).lines():
        click.echo(line)


@main.command()
@click.option("--store", "store_url", default="demo_store", show_default=True, help="Where to put the demo store.")
@click.option("--data", "data_dir", default="demo_data", show_default=True, help="Where to write the demo dataset.")
@click.option("--heads/--no-heads", "with_heads", default=True, show_default=True,
              help="Also train a fusion head and both unimodal baselines on the cached features.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(store_url, data_dir, with_heads, quiet):
    """The main job on the embedded default: real photos + captions, real small backbones, end to end."""
    from featstore.demo.job import run_demo

    for line in run_demo(store_url, data_dir, with_heads=with_heads, progress=not quiet):
        click.echo(line)


# -- confounder inspection ----------------------------------------------------------------------------------
def _task_option(f):
    return click.option("--task", default=None, metavar="NAME",
                        help="Label key of the dataset whose class to show (flips, labels, colours); default: the "
                             "dataset's only label key; `none`: no labels.")(f)


def _warn_line(line: str) -> None:
    click.echo(f"warning: {line}", err=True)


def _cosine_flags(**flags) -> None:
    """A threshold option outside [-1, 1] (or NaN) is one line naming the option."""
    from featstore.errors import FeatstoreError

    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is not None and not -1.0 <= value <= 1.0:
            raise FeatstoreError(f"{flag} {value:g} is not a cosine similarity; pass a value between -1 and 1, "
                                 f"e.g. {flag} 0.9")


@main.command()
@click.argument("query")
@click.option("--set", "set_ref", required=True, help="Feature set NAME[@VERSION] (image, text or a head's fused set).")
@store_option
@click.option("-k", "k", type=int, default=10, show_default=True)
@click.option("--array", default=None, help="Pooled array to search (default: pooled, cls or mean).")
@dataset_read_options
@click.option("--dataset", "dataset_path", default=None, help="Dataset manifest, to show texts and labels.")
@_task_option
def neighbors(query, set_ref, store_url, k, array, dataset_path, task):
    """Nearest samples of QUERY (a key of the set, or a sample id) by cosine, with texts and labels."""
    from featstore.search.inspect import nearest
    from featstore.store import open_store

    fsv = open_store(store_url).open(set_ref)
    rows, task = nearest(fsv, query, k, array=array, dataset=_maybe_dataset(dataset_path), task=task,
                         warn=_warn_line)
    echo_table([[r["rank"], r["key"], f"{r['cosine']:.4f}", r["label"], r["text"][:80]] for r in rows],
               ["rank", "key", "cosine", task or "label", "text"])


@main.command()
@click.option("--image", "image_ref", required=True, help="Image feature set NAME[@VERSION].")
@click.option("--text", "text_ref", required=True, help="Text feature set NAME[@VERSION].")
@dataset_read_options
@click.option("--dataset", "dataset_path", required=True, help="Dataset manifest (ids, texts, images, labels).")
@store_option
@click.option("--out", "out_dir", required=True, help="Folder for confounders.csv and confounders.html.")
@click.option("--predictions", default=None, help="A heads predictions CSV (id,proba,label, or id and a --task "
                                                  "column) to overlay.")
@_task_option
@click.option("--image-threshold", type=float, default=0.95, show_default=True,
              help="Image cosine at or above which two images count as the same.")
@click.option("--text-threshold", type=float, default=0.95, show_default=True,
              help="Text cosine at or above which two texts count as the same.")
@click.option("--differ-below", type=float, default=0.9, show_default=True,
              help="The other modality must be below this cosine for a pair to count (both sides).")
@click.option("--text-differ-below", type=float, default=None,
              help="Same-image pairs: texts must be below this cosine (default --differ-below).")
@click.option("--image-differ-below", type=float, default=None,
              help="Same-text pairs: images must be below this cosine (default --differ-below).")
@click.option("--image-array", default=None, metavar="NAME",
              help="Image vector compared: an [N, D] array of the image set (default: pooled, cls or mean).")
@click.option("--text-array", default=None, metavar="NAME",
              help="Text vector compared: an [N, D] array of the text set (default: pooled, cls or mean).")
@click.option("--text-pool", type=click.Choice(["cls", "mean"]), default=None,
              help="Shorthand for --text-array cls / mean.")
@click.option("-k", "k", type=int, default=20, show_default=True,
              help="Neighbours searched per sample (widened up to 256 where all are above a threshold).")
@click.option("--max-pairs", type=int, default=500, show_default=True,
              help="Pairs shown in the HTML page per kind (the CSV has every pair).")
def confounders(image_ref, text_ref, dataset_path, store_url, out_dir, predictions, task, image_threshold,
                text_threshold, differ_below, text_differ_below, image_differ_below, image_array, text_array,
                text_pool, k, max_pairs):
    """Pairs of the same image file, a similar-looking image, or the same text, whose other side differs: counts,
    label flips and hints printed; CSV + HTML page (a section per kind)."""
    from featstore.errors import FeatstoreError
    from featstore.search.confounders import summary_lines
    from featstore.search.inspect import confounder_report
    from featstore.store import open_store

    _cosine_flags(image_threshold=image_threshold, text_threshold=text_threshold, differ_below=differ_below,
                  text_differ_below=text_differ_below, image_differ_below=image_differ_below)
    if text_pool and text_array and text_pool != text_array:
        raise FeatstoreError(f"--text-pool {text_pool} and --text-array {text_array} name different text vectors; "
                             "pass one of them")
    def hint(line):  # as soon as the search knows it (stderr); the summary below repeats it on stdout
        click.echo(line, err=True)

    report = confounder_report(
        open_store(store_url), _maybe_dataset(dataset_path), image_ref, text_ref, out_dir, predictions=predictions,
        image_array=image_array, text_array=text_array or text_pool,
        text_flag="--text-pool" if text_pool and not text_array else "--text-array", max_pairs=max_pairs,
        task=task, warn=_warn_line, on_hint=hint, image_threshold=image_threshold, text_threshold=text_threshold,
        text_diff_max=differ_below if text_differ_below is None else text_differ_below,
        image_diff_max=differ_below if image_differ_below is None else image_differ_below, k=k)
    found = report.found
    click.echo(f"{len(found.pairs)} confounder pairs")
    for line in summary_lines(found.summary):
        click.echo(line)
    for line in report.prediction_lines:
        click.echo(line)
    if predictions:
        wrong = sum(bool(p.wrong_a) or bool(p.wrong_b) for p in found.pairs)
        click.echo(f"{wrong} pairs have a side the model gets wrong")
    click.echo(f"wrote {report.csv} and {report.html}")


@main.command("map")
@click.option("--set", "set_ref", required=True, help="Feature set NAME[@VERSION].")
@store_option
@click.option("--out", "out_png", required=True, help="PNG to write.")
@dataset_read_options
@click.option("--dataset", "dataset_path", default=None, help="Dataset manifest, to colour points by label.")
@_task_option
@click.option("--method", type=click.Choice(["tsne", "pca"]), default="tsne", show_default=True)
@click.option("--array", default=None, help="Pooled array to map (default: pooled, cls or mean).")
@click.option("--seed", type=int, default=0, show_default=True)
def map_cmd(set_ref, store_url, out_png, dataset_path, task, method, array, seed):
    """A 2-D map (t-SNE or PCA) of a feature set or fused embedding, coloured by label."""
    from featstore.search.inspect import embedding_map
    from featstore.search.outputs import check_out_file
    from featstore.store import open_store

    check_out_file(out_png)
    n, task = embedding_map(open_store(store_url).open(set_ref), out_png, dataset=_maybe_dataset(dataset_path),
                            method=method, array=array, seed=seed, task=task, warn=_warn_line)
    click.echo(f"wrote {out_png} ({n} points, {method}" + (f", coloured by {task})" if task else ")"))
