"""`featstore` store-management and extraction commands, run in-process with click's CliRunner on a tiny real
Hateful-Memes-style folder (real PNGs) and real feature sets written by the real extractors (ResNet-18 grid at
64 px, the MiniLM that ships with the project). Results are compared with the store's own records, with the
extractors called directly, and with files reopened from disk; bad input must be one line, exit 2, no traceback.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.featstore_cli import main as featstore
from cli_helpers import (BERT_CFG, GRID_CFG, build_world, extract_args, invoke, invoke_result, one_line_error,
                         small_region_store, table_rows, tree)
from featstore.extractors import create_extractor, load_image
from featstore.store import open_store


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("featstore_cli"))


def test_console_scripts_are_installed_and_answer_help():
    for name in ("featstore", "heads"):
        exe = shutil.which(name) or str(Path(sys.executable).parent / name)
        res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("Usage:") and "Commands:" in res.stdout


def test_init_then_ls(tmp_path):
    url = tmp_path / "new"
    assert f"store ready at" in invoke(featstore, ["init", url])
    assert json.loads((url / "featstore.json").read_text())["format"] == "featstore"
    assert "no feature sets" in invoke(featstore, ["ls", "--store", url])
    invoke(featstore, ["init", url])  # idempotent on an existing store
    small_region_store(url)
    rows = table_rows(invoke(featstore, ["ls", "--store", url]))
    v = open_store(url).versions("small")[0]
    assert rows == [["small", v.version, "test-small", "image", "6", "0", v.created, "complete"]]
    # a directory holding something else is not turned into a store
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert "not a featstore store" in one_line_error(featstore, ["init", tmp_path / "other"])


def test_extract_via_cli_stores_exactly_what_the_extractors_compute(world):
    st = open_store(world["store"])
    ds = world["ds"]
    grid, bert = st.open("grid"), st.open("bert")
    assert f"feature set grid@{grid.version}: 6 rows, 0 failed" in world["out_grid"]
    assert f"feature set bert@{bert.version}: 48 rows, 0 failed" in world["out_bert"]
    assert grid.record["chunk_rows"] == 4 and len(grid.record["chunks"]) == 2
    # image side: keyed by image key (leading zeros), one row per image
    paths = {s.image_key: s.image_path for s in ds.samples}
    keys = sorted(paths)
    assert sorted(grid.keys) == keys == ["00000", "00001", "00002", "00003", "00004", "00005"]
    ext = create_extractor("grid", **GRID_CFG).to("cpu")
    with torch.inference_mode():
        ref = ext.forward(ext.collate([ext.preprocess(load_image(paths[k])) for k in keys]))
    got = grid.select(keys)
    assert got["regions"].shape == (6, 4, 512) and got["pooled"].shape == (6, 512)
    for name in ("regions", "pooled", "boxes", "image_size", "count"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    # text side: keyed by sample id
    ids = [s.id for s in ds.samples]
    tx = create_extractor("bert", **BERT_CFG).to("cpu")
    with torch.inference_mode():
        tref = tx.forward(tx.collate([tx.preprocess(s.text) for s in ds.samples]))
    tgot = bert.select(ids)
    assert tgot["tokens"].shape == (48, 16, 384)
    for name in ("tokens", "cls", "mean", "count", "input_ids"):
        np.testing.assert_allclose(tgot[name], tref[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_rerun_names_the_same_version_and_writes_nothing(world):
    st = open_store(world["store"])
    version = st.open("grid").version
    vdir = Path(world["store"]) / "sets" / "grid" / version
    before = tree(vdir / "data.zarr")
    again = invoke(featstore, extract_args(world["data"], world["store"], "grid", "--chunk-rows", 4))
    assert f"grid@{version}" in again and "already complete" in again
    assert tree(vdir / "data.zarr") == before
    assert [v.version for v in st.versions("grid")] == [version]


def test_info_text_and_json_equal_the_version_record(world):
    fsv = open_store(world["store"]).open("grid")
    info = json.loads(invoke(featstore, ["info", "grid", "--store", world["store"], "--json"]))
    assert info == fsv.record
    on_disk = json.loads((Path(world["store"]) / "sets" / "grid" / fsv.version / "version.json").read_text())
    assert info == on_disk
    text = invoke(featstore, ["info", f"grid@{fsv.version[:6]}", "--store", world["store"]])
    lines = text.splitlines()
    assert lines[0] == f"grid@{fsv.version}"
    assert "grid  (image, keyed by image_key)" in text
    assert f"6 valid, 0 failed, 2 chunks of 4" in text
    assert f"config         {json.dumps(fsv.record['recipe']['config'], sort_keys=True)}" in text
    for name in fsv.array_names:
        shape = fsv.spec(name).shape
        assert any(line.split()[:1] == [name] and f"[N{''.join(', ' + str(d) for d in shape)}]" in line
                   for line in lines), name
    assert "regions      [N, 4, 512] float32  (per item" in text


# every extractor and its config dataclass, written here (not read from the registry or the listing code)
EXTRACTOR_CONFIGS = {
    "bert": ("text", "BertConfig"), "clip-image": ("clip", "ClipImageConfig"), "clip-text": ("clip", "ClipTextConfig"),
    "detector": ("detector", "DetectorConfig"), "dinov2": ("dinov2", "Dinov2Config"),
    "dinov2-multilayer": ("dinov2", "Dinov2MultiConfig"), "distilbert": ("text", "DistilBertConfig"),
    "grid": ("grid", "GridConfig"), "roi": ("roi", "RoiConfig"), "vg-regions": ("vg_regions", "VGRegionsConfig"),
    "vilbert-text": ("vilbert_text", "VilbertTextConfig"),
}


def test_extractors_lists_every_extractor_with_its_config_defaults():
    import dataclasses
    import importlib

    out = invoke(featstore, ["extractors"])
    blocks, name = {}, None
    for line in out.splitlines():
        if not line.startswith(" "):
            name, _, blurb = line.partition(": ")
            blocks[name] = [blurb]
        else:
            blocks[name].append(line)
    assert list(blocks) == sorted(EXTRACTOR_CONFIGS)  # the eleven extractors, by name
    assert blocks["grid"][0] == "CNN last stage pooled to a GxG grid (ResNet-152 default, 36x2048)"
    for line in ("backbone = 'resnet152'", "image_size = 224", "grid_size = 6", "dtype = 'float16'"):  # documented
        assert f"    {line}" in blocks["grid"], line
    assert "    weights = 'facebook/dinov2-large'" in blocks["dinov2"] and "    max_boxes = 36" in blocks["detector"]
    for name, (module, cls_name) in EXTRACTOR_CONFIGS.items():
        cls = getattr(importlib.import_module(f"featstore.extractors.{module}"), cls_name)
        defaults = cls()
        want = [f"    {f.name} = {getattr(defaults, f.name)!r}" for f in dataclasses.fields(cls)]
        assert blocks[name][1:] == want, name  # every option of the extractor's config, in field order


def test_verify_ok_then_names_the_corrupted_chunk(tmp_path, world):
    out = invoke(featstore, ["verify", "--store", world["store"]])
    st = open_store(world["store"])
    for name in st.feature_sets():
        fsv = st.open(name)
        assert f"{fsv.ref}: OK ({len(fsv.record['chunks'])} chunks verified)" in out
    _, fsv, _ = small_region_store(tmp_path / "s")
    assert f"small@{fsv.version}: OK (3 chunks verified)" in invoke(featstore, ["verify", "--store", tmp_path / "s"])
    chunk = tmp_path / "s" / "sets" / "small" / fsv.version / "data.zarr" / "regions" / "c" / "1" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    res = invoke_result(featstore, ["verify", f"small@{fsv.version}", "--store", tmp_path / "s"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = res.output.splitlines()
    assert lines[0] == f"small@{fsv.version}: 1 problem(s)"
    assert lines[1].startswith("  chunk 1 regions: ")  # chunk 1, array regions; 0 and 2 are intact
    assert len(lines) == 2


def test_rm_one_version_then_the_whole_set(tmp_path):
    st, fsv, _ = small_region_store(tmp_path / "s")
    from featstore.store import Recipe

    other = st.write("small", Recipe("test-small-2"), ["00000"], {"pooled": np.ones((1, 4), np.float32)},
                     key_kind="image_key", modality="image")
    assert "name a version" in one_line_error(featstore, ["rm", "small", "--store", tmp_path / "s"])
    out = invoke(featstore, ["rm", f"small@{fsv.version[:8]}", "--store", tmp_path / "s"])
    assert out.strip() == f"removed small: {fsv.version}"
    assert [v.version for v in st.versions("small")] == [other.version]
    assert not (tmp_path / "s" / "sets" / "small" / fsv.version).exists()
    invoke(featstore, ["rm", "small", "--all", "--store", tmp_path / "s"])
    assert st.feature_sets() == [] and not (tmp_path / "s" / "sets" / "small").exists()
    assert "'small' not found" in one_line_error(featstore, ["rm", "small", "--all", "--store", tmp_path / "s"])


def test_preflight_ok_and_exit_1_listing_missing_keys(world, tmp_path):
    out = invoke(featstore, ["preflight", "--store", world["store"], "--dataset", world["data"], "--image", "grid",
                             "--text", "bert"])
    st = open_store(world["store"])
    assert f"{st.open('grid').ref} (image_key): 6 needed, 0 missing, 0 extra" in out
    assert f"{st.open('bert').ref} (sample_id): 48 needed, 0 missing, 0 extra" in out
    small_region_store(tmp_path / "s", n=3)  # keys 00000..00002: images 00003..00005 are missing
    res = invoke_result(featstore, ["preflight", "--store", tmp_path / "s", "--dataset", world["data"], "--image",
                                    "small"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "6 needed, 3 missing ['00003', '00004', '00005'], 0 extra" in res.output


BAD_INPUT = [
    (["ls", "--store", "{root}/nostore"], "no store at"),
    (["info", "nope", "--store", "{store}"], "feature set 'nope' not found"),
    (["verify", "nope", "--store", "{store}"], "feature set 'nope' not found"),
    (["info", "grid@ffffffff", "--store", "{store}"], "has no complete version 'ffffffff'"),
    (["extract", "--dataset", "{data}", "--extractor", "nope", "--store", "{store}"], "unknown extractor 'nope'"),
    (["extract", "--dataset", "{data}", "--extractor", "grid", "--store", "{store}", "--set", "colour=red"],
     "has no option 'colour'"),
    (["extract", "--dataset", "{data}", "--extractor", "grid", "--store", "{store}", "--set", "oops"],
     "--set 'oops' is not KEY=VALUE"),
    (["extract", "--dataset", "{root}/missing.jsonl", "--extractor", "grid", "--store", "{store}"], "missing.jsonl"),
    (["extract", "--dataset", "{data}", "--extractor", "grid", "--store", "{store}", "--device", "cuda",
      "--workers", "0", "--quiet", "--set", "backbone=resnet18", "--set", "image_size=64"], "no GPU is visible"),
]


@pytest.mark.parametrize("args, needle", BAD_INPUT, ids=[f"{a[0]}-{n.split()[0]}" for a, n in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_leaves_the_store_alone(world, args, needle):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    fill = {"root": world["root"], "store": world["store"], "data": world["data"]}
    before = tree(world["store"])
    line = one_line_error(featstore, [a.format(**fill) for a in args])
    assert needle in line, line
    after = tree(world["store"])
    assert {k for k in after if "/aux/" not in k} == {k for k in before if "/aux/" not in k}
    assert not (Path(world["root"]) / "nostore").exists()
