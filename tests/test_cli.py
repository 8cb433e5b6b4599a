"""The `featstore` and `heads` command lines end to end on tiny real data (real extractors, real store), and
the glue behind them (interop bridge, inspection jobs, run folders). Every number is checked against an
independent computation; every bad input must give one line on stderr, exit status 2, no traceback."""
from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.featstore_cli import main as featstore
from cli.heads_cli import main as heads
from featstore.datasets import load_dataset
from featstore.extractors import create_extractor, load_image
from featstore.interop import read_mmf_lmdb, write_mmf_lmdb
from featstore.search import find_confounders
from featstore.store import ArraySpec, Recipe, open_store

GRID = ["--set", "backbone=resnet18", "--set", "image_size=64", "--set", "grid_size=2", "--set", "dtype=float32"]
BERT = ["--weights", "demo", "--set", "max_length=16", "--set", "dtype=float32"]


def run(cli, args, code=0):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == code, f"{args}: exit {res.exit_code}\n{res.output}"
    return res.output


def one_line_error(cli, args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 2, f"{args}: exit {res.exit_code}\n{res.output}"
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A Hateful-Memes-style folder (6 images, 3 splits, confounders) and a store with grid + bert sets."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    (data / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)).save(data / "img" / f"{i:05d}.png")
    texts = ["a red car", "two dogs", "a quiet lake", "old clock", "green field", "city at night"]
    rows = {"train": [], "dev_seen": [], "test_seen": []}
    sid = 1
    for rep, split in ((0, "train"), (1, "train"), (2, "dev_seen"), (3, "test_seen")):
        for i in range(6):
            for img, label in ((i, 0), ((i + 1) % 6, 1)):  # each text with its own image and a foreign one
                rows[split].append({"id": sid, "img": f"img/{img:05d}.png", "label": label,
                                    "text": texts[i] + (" again" * rep)})
                sid += 1
    for split, rs in rows.items():
        with open(data / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rs)
    store = root / "store"
    out_img = run(featstore, ["extract", "--dataset", data, "--extractor", "grid", "--store", store, "--workers", 0,
                              "--quiet", "--chunk-rows", 4, *GRID])
    out_txt = run(featstore, ["extract", "--dataset", data, "--extractor", "bert", "--store", store, "--workers", 0,
                              "--quiet", *BERT])
    return {"root": root, "data": data, "store": store, "ds": load_dataset(data), "out_img": out_img,
            "out_txt": out_txt}


# -- featstore ------------------------------------------------------------------------------------------------
def test_console_scripts_are_installed():
    for name in ("featstore", "heads"):
        exe = shutil.which(name) or str(Path(sys.executable).parent / name)
        res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "Usage:" in res.stdout, res.stderr


def test_extract_cli_stores_what_the_extractor_computes_and_rerun_is_a_noop(world):
    st = open_store(world["store"])
    grid = st.open("grid")
    assert f"grid@{grid.version}" in world["out_img"] and "0 failed" in world["out_img"]
    ext = create_extractor("grid", backbone="resnet18", image_size=64, grid_size=2, dtype="float32").to("cpu")
    paths = {s.image_key: s.image_path for s in world["ds"].samples}
    keys = sorted(paths)
    with torch.inference_mode():
        ref = ext.forward(ext.collate([ext.preprocess(load_image(paths[k])) for k in keys]))
    got = grid.select(keys)
    for name in ("regions", "pooled", "boxes"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5)
    again = run(featstore, ["extract", "--dataset", world["data"], "--extractor", "grid", "--store", world["store"],
                            "--workers", 0, "--quiet", "--chunk-rows", 4, *GRID])
    assert f"grid@{grid.version}" in again and "already complete" in again


def test_ls_info_json_and_extractors(world):
    st = open_store(world["store"])
    out = run(featstore, ["ls", "--store", world["store"]])
    for name in ("grid", "bert"):
        assert name in out and st.open(name).version in out
    info = json.loads(run(featstore, ["info", "grid", "--store", world["store"], "--json"]))
    assert info == st.open("grid").record
    text = run(featstore, ["info", "bert", "--store", world["store"]])
    assert "keyed by sample_id" in text and "tokens" in text
    listed = run(featstore, ["extractors"])
    from featstore.extractors import EXTRACTORS

    for name in EXTRACTORS.names():
        assert f"{name}:" in listed


def _small_store(path, n=6):
    st = open_store(path, create=True)
    rng = np.random.default_rng(3)
    arrays = {"regions": rng.standard_normal((n, 3, 4)).astype(np.float32), "count": np.full(n, 3, np.int32),
              "pooled": rng.standard_normal((n, 4)).astype(np.float32)}
    return st, st.write("small", Recipe("t"), [f"{i:05d}" for i in range(n)], arrays, key_kind="image_key",
                        modality="image", per_item=["regions"], chunk_rows=2)


def test_verify_names_a_corrupted_chunk_and_rm_removes(tmp_path):
    st, fsv = _small_store(tmp_path / "s")
    assert "OK (3 chunks verified)" in run(featstore, ["verify", "--store", tmp_path / "s"])
    chunk = tmp_path / "s/sets/small" / fsv.version / "data.zarr/regions/c/1/0/0"
    raw = bytearray(chunk.read_bytes())
    raw[5] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    res = CliRunner().invoke(featstore, ["verify", "--store", str(tmp_path / "s")])
    assert res.exit_code == 1 and "chunk 1 regions" in res.output
    assert "removed small" in run(featstore, ["rm", f"small@{fsv.version[:6]}", "--store", tmp_path / "s"])
    assert st.feature_sets() == []


def test_preflight_lists_missing_keys(world, tmp_path):
    out = run(featstore, ["preflight", "--store", world["store"], "--dataset", world["data"], "--image", "grid",
                          "--text", "bert"])
    assert "0 missing" in out
    st, _ = _small_store(tmp_path / "s", n=3)  # keys 00000..00002: images 00003..00005 are missing
    res = CliRunner().invoke(featstore, ["preflight", "--store", str(tmp_path / "s"), "--dataset",
                                         str(world["data"]), "--image", "small"])
    assert res.exit_code == 1 and "3 missing" in res.output and "'00003'" in res.output


@pytest.mark.parametrize("args, needle", [
    (["ls", "--store", "{root}/nostore"], "no store at"),
    (["info", "nope", "--store", "{store}"], "feature set 'nope' not found"),
    (["extract", "--dataset", "{data}", "--extractor", "nope", "--store", "{store}"], "unknown extractor 'nope'"),
    (["extract", "--dataset", "{data}", "--extractor", "grid", "--store", "{store}", "--set", "colour=red"],
     "has no option 'colour'"),
    (["extract", "--dataset", "{data}", "--extractor", "grid", "--store", "{store}", "--set", "oops"],
     "is not KEY=VALUE"),
    (["extract", "--dataset", "{root}/missing.jsonl", "--extractor", "grid", "--store", "{store}"], "missing.jsonl"),
    (["extract", "--dataset", "{data}", "--extractor", "grid", "--store", "{store}", "--device", "cuda"],
     "no GPU is visible"),
    (["neighbors", "nope", "--set", "grid", "--store", "{store}"], "'nope'"),
    (["export", "bert", "--store", "{store}", "--format", "npy", "--out", "{root}/bert_npy"], "no region features"),
])
def test_featstore_bad_input_is_one_line(world, args, needle):
    fill = {"root": world["root"], "store": world["store"], "data": world["data"]}
    if args[0] == "extract" and "--device" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = one_line_error(featstore, [a.format(**fill) for a in args])
    assert needle in line


# -- import / export --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["mmf-lmdb", "hdf5", "npy"])
def test_export_then_import_round_trips_by_key(world, tmp_path, fmt):
    out = tmp_path / f"export.{fmt}"
    assert "exported 6 rows" in run(featstore, ["export", "grid", "--store", world["store"], "--format", fmt,
                                                "--out", out])
    one_line_error(featstore, ["export", "grid", "--store", world["store"], "--format", fmt, "--out", out])
    store2 = tmp_path / "s2"
    run(featstore, ["import", out, "--store", store2, "--format", fmt, "--name", "imp", "--dataset", world["data"]])
    a, b = open_store(world["store"]).open("grid"), open_store(store2).open("imp")
    keys = sorted(a.keys)
    assert sorted(b.keys) == keys
    x, y = a.select(keys), b.select(keys)
    for name in ("regions", "boxes", "image_size", "count"):
        np.testing.assert_array_equal(x[name], y[name])


def test_mmf_lmdb_keys_without_leading_zeros_and_with_paths_are_matched(world, tmp_path):
    fsv = open_store(world["store"]).open("grid")
    data = fsv.load(["regions", "boxes", "image_size"])
    names = {0: "0", 1: "img\\00001.png", 2: "img/2.png", 3: "00003.npy", 4: "4", 5: "img\\5.png"}
    recs = []
    for i, k in enumerate(fsv.keys):
        n = int(data["count"][i])
        recs.append((names[int(k)], {"features": data["regions"][i, :n], "bbox": data["boxes"][i, :n], "num_boxes": n,
                                     "image_width": int(data["image_size"][i, 0]),
                                     "image_height": int(data["image_size"][i, 1])}))
    write_mmf_lmdb(tmp_path / "mmf.lmdb", recs)
    out = run(featstore, ["import", tmp_path / "mmf.lmdb", "--store", tmp_path / "s2", "--format", "mmf-lmdb",
                          "--name", "mmf", "--dataset", world["data"]])
    assert "6 image keys matched, 0 without features" in out
    imp = open_store(tmp_path / "s2").open("mmf")
    np.testing.assert_array_equal(imp.select(list(fsv.keys), ["regions"])["regions"], data["regions"])
    one_line_error(featstore, ["import", tmp_path / "mmf.lmdb", "--store", tmp_path / "s3", "--format", "mmf-lmdb",
                               "--name", "cut", "--max-regions", "2"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/featstore-pwned-by-test",))


def test_malicious_pickle_in_mmf_lmdb_is_refused_and_nothing_is_written(tmp_path):
    marker = Path("/tmp/featstore-pwned-by-test")
    marker.unlink(missing_ok=True)
    env = lmdb.open(str(tmp_path / "evil.lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"keys", pickle.dumps([b"00000"]))
        txn.put(b"00000", pickle.dumps({"features": _Evil()}))
    env.close()
    line = one_line_error(featstore, ["import", tmp_path / "evil.lmdb", "--store", tmp_path / "s", "--format",
                                      "mmf-lmdb", "--name", "evil"])
    assert "refus" in line.lower() or "not allowed" in line.lower()
    assert not marker.exists()
    st = open_store(tmp_path / "s", create=True)
    assert st.feature_sets() == []


# -- inspection ----------------------------------------------------------------------------------------------------
def test_neighbors_match_brute_force_and_reuse_the_cached_index(world):
    fsv = open_store(world["store"]).open("bert")
    keys = [str(k) for k in fsv.keys]
    v = fsv.read("cls").astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q = keys.index("5")
    order = [i for i in np.argsort(-(v @ v[q]), kind="stable") if i != q][:4]
    out = run(featstore, ["neighbors", "5", "--set", "bert", "--store", world["store"], "-k", 4, "--dataset",
                          world["data"]])
    rows = [l.split()[:3] for l in out.splitlines()[1:]]
    assert [r[1] for r in rows][:1] == [keys[order[0]]]
    np.testing.assert_allclose([float(r[2]) for r in rows], (v @ v[q])[order], atol=1e-4)
    aux = Path(fsv.loc.path("aux"))
    cached = list(aux.iterdir())
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    run(featstore, ["neighbors", "5", "--set", "bert", "--store", world["store"], "-k", 4])
    assert cached[0].stat().st_mtime_ns == mtime


def test_confounders_csv_equals_library_and_html_is_written(world, tmp_path):
    out = run(featstore, ["confounders", "--image", "grid", "--text", "bert", "--dataset", world["data"],
                          "--store", world["store"], "--out", tmp_path / "rep"])
    st = open_store(world["store"])
    ds = world["ds"]
    img = st.open("grid").select([s.image_key for s in ds.samples], ["pooled"])["pooled"]
    txt = st.open("bert").select([s.id for s in ds.samples], ["cls"])["cls"]
    ref = find_confounders([s.id for s in ds.samples], [s.image_key for s in ds.samples], img, txt,
                           [s.labels["label"] for s in ds.samples])
    with open(tmp_path / "rep/confounders.csv") as f:
        got = list(csv.DictReader(f))
    assert [(r["kind"], r["id_a"], r["id_b"]) for r in got] == [(p.kind, p.id_a, p.id_b) for p in ref]
    assert f"{len(ref)} confounder pairs" in out
    html = (tmp_path / "rep/confounders.html").read_text()
    assert html.count("data:image/jpeg;base64,") >= 2 * min(len(ref), 500)


def test_map_writes_a_png(world, tmp_path):
    run(featstore, ["map", "--set", "bert", "--store", world["store"], "--dataset", world["data"], "--out",
                    tmp_path / "m.png", "--method", "pca"])
    with Image.open(tmp_path / "m.png") as im:
        assert im.size[0] > 200 and im.size[1] > 200


# -- heads --------------------------------------------------------------------------------------------------------
TRAIN = ["--dataset", "{data}", "--image", "grid", "--text", "bert", "--epochs", "3", "--quiet", "--device", "cpu"]


def _train_args(world, *extra):
    return ["train", "--store", str(world["store"])] + [a.format(data=world["data"]) for a in TRAIN] + list(extra)


def test_heads_list_names_every_head():
    from heads.models import HEADS, list_heads

    list_heads()
    out = run(heads, ["list"])
    for name in HEADS.names():
        assert f"{name}:" in out


def test_heads_train_eval_predict_and_save_fused(world, tmp_path):
    from heads.data import build_train_data
    from heads.runs import load_run
    from heads.session import fused_embeddings

    rd = tmp_path / "run"
    out = run(heads, _train_args(world, "--head", "concat", "--out", rd, "--save-fused", "fused-concat"))
    assert "test" in out and "auroc" in out
    for f in ("config.json", "metrics.json", "model.safetensors", "predictions_test.csv", "learning_curve.png"):
        assert (rd / f).exists(), f
    with open(rd / "predictions_test.csv") as f:
        assert next(csv.reader(f)) == ["id", "proba", "label"]
    metrics = json.loads((rd / "metrics.json").read_text())
    ev = json.loads(run(heads, ["eval", rd, "--store", world["store"], "--dataset", world["data"], "--device", "cpu"]))
    for k, v in ev["metrics"].items():
        if isinstance(v, float) and not np.isnan(v):
            assert v == pytest.approx(metrics["test"][k], abs=1e-6), k
    run(heads, ["predict", rd, "--store", world["store"], "--dataset", world["data"], "--split", "test", "--out",
                tmp_path / "p.csv", "--device", "cpu"])
    assert (tmp_path / "p.csv").read_text() == (rd / "predictions_test.csv").read_text()
    st = open_store(world["store"])
    fused = st.open("fused-concat")
    model, _ = load_run(rd)
    data = build_train_data(st, world["ds"], "grid", "bert", "label")
    np.testing.assert_allclose(fused.select(list(data.ids), ["pooled"])["pooled"], fused_embeddings(model, data),
                               rtol=1e-6, atol=1e-6)
    assert fused.modality == "fused" and fused.key_kind == "sample_id"


def test_heads_seeds_and_compare(world, tmp_path):
    out = run(heads, _train_args(world, "--head", "concat", "--out", tmp_path / "a", "--seeds", "0,1"))
    assert "+-" in out and (tmp_path / "a/seed_0").is_dir() and (tmp_path / "a/seed_1").is_dir()
    run(heads, _train_args(world, "--head", "text-only", "--out", tmp_path / "b", "--seeds", "0,1"))
    table = run(heads, ["compare", tmp_path / "a", tmp_path / "b"])
    assert "concat" in table and "text-only" in table and "significance" in table


def test_heads_bad_input_is_one_line(world, tmp_path):
    swapped = ["train", "--store", world["store"], "--dataset", world["data"], "--image", "bert", "--text", "grid",
               "--head", "concat", "--out", tmp_path / "x", "--quiet", "--device", "cpu"]
    assert "swap" in one_line_error(heads, swapped)
    st = open_store(world["store"])
    keys = sorted({s.image_key for s in world["ds"].samples})
    st.write("pooled-only", Recipe("p"), keys, {"pooled": np.random.default_rng(0).standard_normal((6, 8)).astype(
        np.float32)}, key_kind="image_key", modality="image")
    need = ["train", "--store", world["store"], "--dataset", world["data"], "--image", "pooled-only", "--text", "bert",
            "--head", "vilbert", "--out", tmp_path / "y", "--quiet", "--device", "cpu"]
    assert "needs image regions" in one_line_error(heads, need)
    assert "unknown head" in one_line_error(heads, _train_args(world, "--head", "nope", "--out", tmp_path / "z"))
    assert "task" in one_line_error(heads, _train_args(world, "--head", "concat", "--task", "genres",
                                                       "--out", tmp_path / "w"))
