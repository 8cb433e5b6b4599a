"""The search commands' audit defects (featstore neighbors / confounders / map), each checked against an
independent reference: labels and flips counted by hand from the jsonl / CSV files, cosines by numpy, the
stale-features line as heads train words it, the files left on disk listed before and after.

Feature sets are written by hand (``Store.write``) with planted vectors, so every pair is known in advance:
image vectors are random per image key (no two images alike unless planted), text vectors random per sample.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import hm_store_world, invoke, invoke_result, one_line_error, tree
from test_datasets_memotion import memotion2_folder
from test_datasets_mmimdb import release_folder

from cli.featstore_cli import main as featstore
from featstore.datasets import load_dataset
from featstore.errors import FeatstoreError
from featstore.search.confounders import K_MAX, search_confounders, summary_lines
from featstore.search.report import write_html_report
from featstore.store import Recipe, open_store

HM_SPLITS = ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen")


def write_sets(st, ds, name: str, fingerprint: str = "", seed: int = 0, dim: int = 32, image_arrays=None):
    """``{name}-img`` (keyed by image key: ``pooled`` random per key, plus ``image_arrays``) and ``{name}-txt``
    (keyed by sample id: ``cls`` / ``mean`` random per sample), recording ``fingerprint`` as their manifest."""
    rng = np.random.default_rng(seed)
    keys = list(dict.fromkeys(s.image_key for s in ds.samples))
    ids = list(dict.fromkeys(s.id for s in ds.samples))
    arrays = {"pooled": rng.standard_normal((len(keys), dim)).astype(np.float32), **(image_arrays or {})}
    st.write(f"{name}-img", Recipe(f"img-{name}", manifest_fingerprint=fingerprint), keys, arrays,
             key_kind="image_key", modality="image")
    text = {"cls": rng.standard_normal((len(ids), dim)).astype(np.float32),
            "mean": rng.standard_normal((len(ids), dim)).astype(np.float32)}
    st.write(f"{name}-txt", Recipe(f"txt-{name}", manifest_fingerprint=fingerprint), ids, text,
             key_kind="sample_id", modality="text")
    return keys, arrays, ids, text


def jsonl_samples(data: Path):
    """{id: (image key, label or None)} read straight from the Hateful Memes files (first listing wins)."""
    out = {}
    for split in HM_SPLITS:
        path = data / f"{split}.jsonl"
        for line in (path.read_text().splitlines() if path.exists() else []):
            r = json.loads(line)
            out.setdefault(str(r["id"]), (Path(r["img"]).stem, r.get("label")))
    return out


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def confounders_args(w, name, out, *extra):
    return ["confounders", "--image", f"{name}-img", "--text", f"{name}-txt", "--dataset", w["data"], "--store",
            w["store"], "--out", out, *extra]


@pytest.fixture
def hm(tmp_path):
    """The tiny Hateful Memes folder plus 4 unlabelled test_unseen memes on images 0-3 (as HM's phase-1 test)."""
    root = tmp_path / "hm"
    w = hm_store_world(root)
    rows = [{"id": 9001 + i, "img": f"img/{i:05d}.png", "text": f"an unlabelled caption {i}"} for i in range(4)]
    (w["data"] / "test_unseen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    w["ds"] = load_dataset(w["data"])
    write_sets(w["st"], w["ds"], "hm", w["ds"].fingerprint)
    return w


# -- 1. an unlabelled side is no label flip ---------------------------------------------------------------------
def test_a_pair_with_an_unlabelled_side_has_no_flip(hm, tmp_path):
    out = invoke(featstore, confounders_args(hm, "hm", tmp_path / "rep"))
    truth = jsonl_samples(hm["data"])
    ids = list(truth)
    expected = {}  # every two samples of one image file (texts are random: they differ)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            if truth[a][0] == truth[b][0]:
                la, lb = truth[a][1], truth[b][1]
                expected[frozenset((a, b))] = "" if la is None or lb is None else str(la != lb)
    rows = read_csv(tmp_path / "rep" / "confounders.csv")
    assert {frozenset((r["id_a"], r["id_b"])): r["label_flip"] for r in rows} == expected
    assert len(expected) == 4 * 9 * 8 // 2 + 2 * 8 * 7 // 2
    flips, blank = sum(v == "True" for v in expected.values()), sum(v == "" for v in expected.values())
    assert blank == 4 * 8 and flips == 6 * 16  # each unlabelled meme with the 8 others of its image
    for r in rows:
        if r["label_flip"] == "":
            assert "" in (r["label_a"], r["label_b"])
    assert (f"same image file, different text: {len(expected)} pairs, {flips} with a label flip, {blank} with an "
            "unlabelled side") in out.splitlines()
    page = (tmp_path / "rep" / "confounders.html").read_text()
    assert page.count('<span class="badge flip">') == flips
    assert page.count('<span class="badge same">same label') == len(expected) - flips - blank


def test_library_counts_and_page_leave_unlabelled_pairs_unflipped(tmp_path):
    rng = np.random.default_rng(0)
    img, txt = rng.standard_normal((4, 16)), rng.standard_normal((4, 16))
    keys = ["a", "a", "b", "b"]
    res = search_confounders(["s0", "s1", "s2", "s3"], keys, img, txt, [0, None, 1, 0], task="label")
    by = {(p.id_a, p.id_b): p.label_flip for p in res.pairs}
    assert by == {("s0", "s1"): None, ("s2", "s3"): True}
    assert res.summary.flips["same_image"] == 1 and res.summary.unlabelled["same_image"] == 1
    assert summary_lines(res.summary)[0] == "same image file, different text: 2 pairs, 1 with a label flip, 1 with " \
                                            "an unlabelled side"
    paths = {}
    for i in range(4):
        paths[f"s{i}"] = str(tmp_path / f"{i}.png")
        from PIL import Image
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(paths[f"s{i}"])
    page = tmp_path / "p.html"
    write_html_report(res.pairs, page, texts={f"s{i}": f"t{i}" for i in range(4)},
                      labels={"s0": 0, "s1": None, "s2": 1, "s3": 0}, image_paths=paths)
    html = page.read_text()
    assert html.count('<span class="badge flip">') == 1 and html.count('badge same">same label') == 0


# -- 2. --task -----------------------------------------------------------------------------------------------------
@pytest.fixture
def memo(tmp_path):
    data = memotion2_folder(tmp_path / "memo" / "data")
    ds = load_dataset(data)
    st = open_store(tmp_path / "memo" / "store", create=True)
    rng = np.random.default_rng(3)
    pooled = rng.standard_normal((5, 32)).astype(np.float32)
    pooled[1] = pooled[0] + 0.01 * rng.standard_normal(32)  # 11 / 12: look-alike images
    pooled[4] = pooled[2] + 0.01 * rng.standard_normal(32)  # 13 / 31: look-alike, 31 unlabelled
    write_sets(st, ds, "m", ds.fingerprint, image_arrays={"pooled": pooled})
    return {"data": data, "store": tmp_path / "memo" / "store", "ds": ds}


MEMO_TASKS = "pass --task with one of: A, C_humour, C_sarcasm, C_offense, C_motivation, or --task none"


def test_memotion_needs_a_task_and_refuses_list_or_dict_labels(memo, tmp_path):
    out = tmp_path / "rep"
    base = confounders_args(memo, "m", out)
    src = memo["data"]
    assert one_line_error(featstore, base) == f"error: dataset {src} has several label keys (A, B, C); say which " \
                                             f"one to show: {MEMO_TASKS}"
    assert one_line_error(featstore, base + ["--task", "B"]) == (
        f"error: --task 'B': its values are lists of classes (a multi-label task), not one class per sample; "
        f"{MEMO_TASKS}")
    assert one_line_error(featstore, base + ["--task", "C"]) == (
        "error: --task 'C': its values are dicts of tasks (C_humour, C_sarcasm, C_offense, C_motivation), not one "
        f"class per sample; {MEMO_TASKS}")
    assert one_line_error(featstore, base + ["--task", "nope"]) == (
        f"error: --task 'nope': dataset {src} has no such label key; {MEMO_TASKS}")
    map_args = ["map", "--set", "m-img", "--store", memo["store"], "--dataset", src, "--out", tmp_path / "m.png"]
    assert one_line_error(featstore, map_args).startswith(f"error: dataset {src} has several label keys")
    assert not out.exists() and not (tmp_path / "m.png").exists()
    assert invoke(featstore, map_args + ["--task", "none", "--method", "pca"]).strip() == \
        f"wrote {tmp_path / 'm.png'} (5 points, pca)"


@pytest.mark.parametrize("task, flip_11_12", [("A", "True"), ("C_humour", "True"), ("C_motivation", "True")])
def test_memotion_flips_on_the_chosen_task(memo, tmp_path, task, flip_11_12):
    out = invoke(featstore, confounders_args(memo, "m", tmp_path / "rep", "--task", task))
    rows = {(r["id_a"], r["id_b"]): r for r in read_csv(tmp_path / "rep" / "confounders.csv")}
    assert set(rows) == {("11", "12"), ("13", "31")}  # the planted look-alikes (texts differ)
    labels = {"A": ("positive", "negative", "neutral"), "C_humour": ("hilarious", "not_funny", "funny"),
              "C_motivation": ("motivational", "not_motivational", "not_motivational")}[task]
    assert (rows[("11", "12")]["label_a"], rows[("11", "12")]["label_b"]) == labels[:2]
    assert rows[("11", "12")]["label_flip"] == flip_11_12
    assert (rows[("13", "31")]["label_a"], rows[("13", "31")]["label_b"], rows[("13", "31")]["label_flip"]) == \
        (labels[2], "", "")
    assert f"different labels of task {task!r}" in out
    assert "similar-looking image (another file), different text: 2 pairs, 1 with a label flip, 1 with an " \
           "unlabelled side" in out.splitlines()


def test_neighbors_show_the_chosen_task(memo):
    args = ["neighbors", "11", "--set", "m-img", "--store", memo["store"], "--dataset", memo["data"], "-k", 4]
    assert one_line_error(featstore, args).startswith(f"error: dataset {memo['data']} has several label keys")
    lines = invoke(featstore, args + ["--task", "A"]).splitlines()
    assert lines[0].split() == ["rank", "key", "cosine", "A", "text"]
    label = {"11": "positive", "12": "negative", "13": "neutral", "21": "neutral", "31": ""}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        key = cells[1]
        assert (cells[3] if label[key] else "") == label[key], line
    assert re.split(r"\s{2,}", lines[1].strip())[1] == "12"  # the planted look-alike is nearest


def test_mmimdb_genres_are_refused_and_task_none_searches_without_labels(tmp_path):
    data = release_folder(tmp_path / "imdb" / "data")
    ds = load_dataset(data)
    st = open_store(tmp_path / "imdb" / "store", create=True)
    write_sets(st, ds, "i", ds.fingerprint)
    w = {"data": data, "store": tmp_path / "imdb" / "store"}
    base = confounders_args(w, "i", tmp_path / "rep")
    res = invoke_result(featstore, base)
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.splitlines()[-1] == (
        f"error: dataset {data}: its label key 'genres' holds lists of classes (a multi-label task), not one class "
        "per sample; pass --task none to search without labels")
    out = invoke(featstore, base + ["--task", "none"])
    assert "same image file, different text: 0 pairs" in out.splitlines()
    assert all(r["label_flip"] == "" for r in read_csv(tmp_path / "rep" / "confounders.csv"))


# -- 3. predictions from another dataset -------------------------------------------------------------------------
def test_predictions_of_another_dataset_are_refused_before_the_search(hm, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("id,proba,label\n70001,0.9,1\n70002,0.1,0\n")
    base = confounders_args(hm, "hm", tmp_path / "rep")
    # -k 0 would fail in the search: the predictions file is refused first
    assert one_line_error(featstore, base + ["--predictions", other, "-k", 0]) == (
        f"error: predictions file '{other}': none of its 2 ids is a sample of the dataset (its first: '70001', "
        "'70002'); pass the predictions of a run on this dataset")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,label\n1,positive\n2,negative\n3,1\n")
    assert one_line_error(featstore, base + ["--predictions", wrong]) == (
        f"error: predictions file '{wrong}': predicted labels 'positive', 'negative' are not a class of task "
        "'label' (not_hateful, hateful); pass the predictions of a run on this dataset and task")
    assert not (tmp_path / "rep").exists()


def test_predictions_report_how_many_pair_sides_they_cover(hm, tmp_path):
    preds = tmp_path / "p.csv"
    covered = [str(i) for i in range(1, 11)]
    preds.write_text("id,proba,label\n" + "".join(f"{i},0.8,1\n" for i in covered) + "70001,0.2,0\n")
    out = invoke(featstore, confounders_args(hm, "hm", tmp_path / "rep", "--predictions", preds))
    rows = read_csv(tmp_path / "rep" / "confounders.csv")
    sides = sum((r["id_a"] in covered) + (r["id_b"] in covered) for r in rows)
    assert 0 < sides < 2 * len(rows)
    assert sum((r["pred_a"] != "") + (r["pred_b"] != "") for r in rows) == sides
    assert (f"predictions: {sides} of {2 * len(rows)} pair sides have a prediction; the file covers 10 of the 52 "
            "samples") in out.splitlines()
    truth = jsonl_samples(hm["data"])
    for r in rows:
        if r["id_a"] in covered:
            assert r["wrong_a"] == str(truth[r["id_a"]][1] != 1)


def test_memotion_predictions_in_heads_multi_task_layout(memo, tmp_path):
    preds = tmp_path / "p.csv"
    preds.write_text("id,A:negative,A:neutral,A:positive,A\n11,0.1,0.2,0.7,positive\n12,0.2,0.7,0.1,neutral\n")
    invoke(featstore, confounders_args(memo, "m", tmp_path / "rep", "--task", "A", "--predictions", preds))
    row = next(r for r in read_csv(tmp_path / "rep" / "confounders.csv") if r["id_a"] == "11")
    assert (row["pred_a"], row["wrong_a"], row["pred_b"], row["wrong_b"]) == ("positive", "False", "neutral", "True")
    hm_file = tmp_path / "hm.csv"
    hm_file.write_text("id,proba,label\n11,0.9,1\n")
    assert one_line_error(featstore, confounders_args(memo, "m", tmp_path / "r2", "--task", "A", "--predictions",
                                                      hm_file)) == (
        f"error: predictions file '{hm_file}' gives `proba` (one binary probability) but task 'A' has 3 classes "
        "(negative, neutral, positive); pass a predictions file with a `A` column (heads predict writes one per "
        "task)")


# -- 4 / 5. nothing written on failure; --out --------------------------------------------------------------------
def test_a_failing_report_leaves_no_new_file(hm, tmp_path):
    out = tmp_path / "rep"
    assert one_line_error(featstore, confounders_args(hm, "hm", out, "--max-pairs", 0)) == \
        "error: --max-pairs must be a positive integer, got 0"
    assert not out.exists()
    # an image the page cannot read: the earlier report stays as it was, no temporary file is left
    data = tmp_path / "broken"
    shutil.copytree(hm["data"], data)
    (data / "img" / "00002.png").write_bytes(b"not a png")
    write_sets(hm["st"], load_dataset(data), "plain")  # no recorded manifest: no stale-features warning
    w = dict(hm, data=hm["data"])
    invoke(featstore, confounders_args(w, "plain", out))
    before = {p: (out / p).read_bytes() for p in tree(out)}
    assert sorted(before) == ["confounders.csv", "confounders.html"]
    w["data"] = data
    assert one_line_error(featstore, confounders_args(w, "plain", out)) == (
        f"error: image '{data / 'img' / '00002.png'}' cannot be read (UnidentifiedImageError); replace or drop it")
    assert {p: (out / p).read_bytes() for p in tree(out)} == before


def test_out_paths_that_cannot_be_written_are_one_line(hm, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    folder = tmp_path / "adir"
    folder.mkdir()
    assert one_line_error(featstore, confounders_args(hm, "hm", afile)) == (
        f"error: --out '{afile}' is a file, not a folder; pass a folder for confounders.csv and confounders.html "
        "(it is created if missing)")
    assert one_line_error(featstore, confounders_args(hm, "hm", afile / "sub")) == (
        f"error: --out '{afile / 'sub'}': '{afile}' is a file, so no folder can be created below it; pass another "
        "folder")
    map_args = ["map", "--set", "hm-img", "--store", hm["store"], "--out"]
    assert one_line_error(featstore, map_args + [folder]) == (
        f"error: --out '{folder}' is a folder; pass a file path, e.g. {folder / 'map.png'}")
    assert afile.read_text() == "keep" and list(folder.iterdir()) == []
    if Path("/proc/self").exists():
        for args in (confounders_args(hm, "hm", "/proc/nope"), map_args + ["/proc/x.png"]):
            line = one_line_error(featstore, args)
            pattern = (r"error: --out '/proc/(nope|x\.png)' cannot be written \((No such file or directory|"
                       r"Permission denied) in '/proc'\); pass a path in a folder you can write to")
            assert re.fullmatch(pattern, line), line
    # a map into a folder that does not exist yet creates it
    png = tmp_path / "new" / "deeper" / "m.png"
    assert invoke(featstore, map_args + [png, "--method", "pca"]).strip() == f"wrote {png} (6 points, pca)"
    assert sorted(p.name for p in png.parent.iterdir()) == ["m.png"]


# -- 6. stale features -------------------------------------------------------------------------------------------
def test_sets_extracted_from_another_manifest_are_flagged(hm, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(hm["data"], edited)
    rows = (edited / "train.jsonl").read_text().splitlines()
    rows[0] = json.dumps(dict(json.loads(rows[0]), text="a caption that changed"))
    (edited / "train.jsonl").write_text("\n".join(rows) + "\n")
    st, new = hm["st"], load_dataset(edited)
    img, txt = st.open("hm-img"), st.open("hm-txt")
    want = [f"{m} feature set {fs.name}@{fs.version} was extracted from another version of this dataset (manifest "
            f"fingerprint {fs.recipe.manifest_fingerprint[:12]}, now {new.fingerprint[:12]}): texts, labels or images "
            "changed, so rows joined by id may belong to other samples; re-extract it, or ignore this if only labels "
            "or the set of samples changed" for m, fs in (("image", img), ("text", txt))]  # typed as heads words it
    assert img.recipe.manifest_fingerprint != new.fingerprint != txt.recipe.manifest_fingerprint
    res = invoke_result(featstore, ["neighbors", "1", "--set", "hm-txt", "--store", hm["store"], "--dataset", edited])
    assert res.exit_code == 0 and res.stderr.splitlines() == [f"warning: {want[1]}"]
    res = invoke_result(featstore, ["confounders", "--image", "hm-img", "--text", "hm-txt", "--dataset", edited,
                                    "--store", hm["store"], "--out", tmp_path / "rep"])
    assert res.exit_code == 0 and res.stderr.splitlines() == [f"warning: {w}" for w in want]
    res = invoke_result(featstore, ["map", "--set", "hm-img", "--store", hm["store"], "--dataset", edited, "--out",
                                    tmp_path / "m.png", "--method", "pca"])
    assert res.exit_code == 0 and res.stderr.splitlines() == [f"warning: {want[0]}"]
    same = invoke_result(featstore, ["neighbors", "1", "--set", "hm-txt", "--store", hm["store"], "--dataset",
                                     hm["data"]])
    assert same.exit_code == 0 and same.stderr == ""


# -- 7. all-zero rows --------------------------------------------------------------------------------------------
def test_a_zero_vector_is_never_a_neighbour_and_a_zero_query_is_one_line(hm):
    keys = hm["keys"]
    x = np.random.default_rng(5).standard_normal((6, 16)).astype(np.float32)
    x[2] = 0
    hm["st"].write("zimg", Recipe("zimg"), keys, {"pooled": x}, key_kind="image_key", modality="image")
    args = ["neighbors", "--set", "zimg", "--store", hm["store"], "-k", 10]
    assert one_line_error(featstore, [*args[:1], keys[2], *args[1:]]) == (
        f"error: '{keys[2]}' has an all-zero vector: cosine similarity is undefined for it, so there are no "
        "neighbours to show; re-extract its features or query another key")
    live = [i for i in range(6) if i != 2]
    v = x[live].astype(np.float64) / np.linalg.norm(x[live].astype(np.float64), axis=1, keepdims=True)
    for _ in range(2):  # built, then from the store's cached index
        lines = invoke(featstore, [*args[:1], keys[0], *args[1:]]).splitlines()[1:]
        got = [(line.split()[1], float(line.split()[2])) for line in lines]
        sims = v @ v[0]
        order = [int(i) for i in np.argsort(-sims, kind="stable") if i != 0]
        assert [k for k, _ in got] == [keys[live[i]] for i in order]
        np.testing.assert_allclose([c for _, c in got], sims[order], atol=6e-5)


# -- 8. choosing the arrays ------------------------------------------------------------------------------------
def test_image_and_text_arrays_can_be_chosen_and_non_vectors_are_refused(hm, tmp_path):
    rng = np.random.default_rng(8)
    pooler = rng.standard_normal((6, 16)).astype(np.float32)
    pooler[1] = pooler[0] + 0.01 * rng.standard_normal(16)  # images 0 and 1 alike in `pooler` only
    sizes = np.tile(np.array([[48, 56]], np.int32), (6, 1))
    write_sets(hm["st"], hm["ds"], "arr", hm["ds"].fingerprint, seed=9,
               image_arrays={"pooler": pooler, "image_size": sizes, "small_int": np.ones((6, 16), np.int32)})
    plain = read_csv_after(confounders_args(hm, "arr", tmp_path / "a"), tmp_path / "a")
    assert not [r for r in plain if r["kind"] == "similar_image"]
    chosen = read_csv_after(confounders_args(hm, "arr", tmp_path / "b", "--image-array", "pooler"), tmp_path / "b")
    similar = [r for r in chosen if r["kind"] == "similar_image"]
    truth = jsonl_samples(hm["data"])
    keys = hm["keys"]
    assert len(similar) == 9 * 9  # each of the 9 memes of image 0 with each of the 9 of image 1 (texts differ)
    u = pooler.astype(np.float64) / np.linalg.norm(pooler.astype(np.float64), axis=1, keepdims=True)
    for r in similar:
        ka, kb = keys.index(truth[r["id_a"]][0]), keys.index(truth[r["id_b"]][0])
        assert {ka, kb} == {0, 1} and float(r["image_sim"]) == pytest.approx(float(u[ka] @ u[kb]), abs=1e-6)
    ref = open_store(hm["store"]).open("arr-img").ref
    assert one_line_error(featstore, confounders_args(hm, "arr", tmp_path / "c", "--image-array", "image_size")) == (
        f"error: array 'image_size' of {ref} is not a pooled vector ([N, D] floats) but int32 [2] per row; pass "
        "--image-array with one of pooled")
    assert "'small_int'" in one_line_error(featstore, ["neighbors", keys[0], "--set", "arr-img", "--store",
                                                       hm["store"], "--array", "small_int"])
    by_mean = read_csv_after(confounders_args(hm, "arr", tmp_path / "d", "--text-array", "mean"), tmp_path / "d")
    by_pool = read_csv_after(confounders_args(hm, "arr", tmp_path / "e", "--text-pool", "mean"), tmp_path / "e")
    assert by_mean == by_pool and by_mean != plain
    assert one_line_error(featstore, confounders_args(hm, "arr", tmp_path / "f", "--text-pool", "mean",
                                                      "--text-array", "cls")) == \
        "error: --text-pool mean and --text-array cls name different text vectors; pass one of them"
    hm["st"].write("regions-only", Recipe("r"), keys, {"regions": rng.standard_normal((6, 2, 4)).astype(np.float32),
                                                       "count": np.full(6, 2, np.int32)},
                   key_kind="image_key", modality="image", per_item=["regions"])
    regions_ref = open_store(hm["store"]).open("regions-only").ref
    line = one_line_error(featstore, ["confounders", "--image", "regions-only", "--text", "arr-txt", "--dataset",
                                      hm["data"], "--store", hm["store"], "--out", tmp_path / "g"])
    assert line == (f"error: {regions_ref} has no pooled vectors (regions, count); extract with an extractor that "
                    "stores pooled/cls/mean, or pass --image-array NAME of an [N, D] float array")


def read_csv_after(args, out):
    invoke(featstore, args)
    return read_csv(out / "confounders.csv")


# -- 9. a saturated search stops at k_max ---------------------------------------------------------------------
def test_a_saturated_search_stops_at_k_max_with_a_hint():
    """400 near-identical image vectors (the audit's case) plus planted look-alike pairs among 100 others."""
    rng = np.random.default_rng(0)
    n, cluster, k_max = 500, 400, 32
    img = rng.standard_normal((n, 64))
    img[:cluster] = rng.standard_normal(64) + 0.01 * rng.standard_normal((cluster, 64))
    for a in range(cluster, n, 10):  # 10 look-alike pairs below the cap
        img[a + 1] = img[a] + 0.05 * rng.standard_normal(64)
    txt = rng.standard_normal((n, 64))
    ids = [f"s{i}" for i in range(n)]
    hints = []
    res = search_confounders(ids, ids, img, txt, k=8, k_max=k_max, on_hint=hints.append)
    want = (f"hint: the image search stopped at {k_max} neighbours per sample (k_max): {cluster} samples still had "
            f"{k_max} neighbours at image cosine >= 0.95, so their pairs beyond the {k_max} nearest are not listed; "
            "raise --image-threshold (e.g. 0.99) until it singles out copies")
    assert hints == [want] and res.summary.capped == {"image": cluster} and res.summary.k_max == k_max
    assert summary_lines(res.summary)[5] == want
    u = img / np.linalg.norm(img, axis=1, keepdims=True)
    sims = u @ u.T
    got = {(p.row_a, p.row_b) for p in res.pairs}
    assert all(sims[a, b] >= 0.95 for a, b in got)  # every pair listed is a real one
    partners = np.bincount(np.array(sorted(got)).ravel(), minlength=n)
    assert (partners[:cluster] >= k_max).all() and len(got) < cluster * (cluster - 1) // 2
    below = {(a, b) for a, b in np.argwhere(np.triu(sims >= 0.95, k=1)).tolist() if a >= cluster}
    assert {(a, b) for a, b in got if a >= cluster} == below and len(below) == 10
    assert K_MAX == 256 and search_confounders(ids, ids, img, txt).summary.capped == {"image": cluster}


# -- 10. smaller -------------------------------------------------------------------------------------------------
def test_threshold_flags_and_swapped_sets_are_named(hm, tmp_path):
    base = confounders_args(hm, "hm", tmp_path / "rep")
    assert one_line_error(featstore, base + ["--differ-below", "-2"]) == \
        "error: --differ-below -2 is not a cosine similarity; pass a value between -1 and 1, e.g. --differ-below 0.9"
    assert one_line_error(featstore, base + ["--image-threshold", "1.5"]) == (
        "error: --image-threshold 1.5 is not a cosine similarity; pass a value between -1 and 1, e.g. "
        "--image-threshold 0.9")
    ref = open_store(hm["store"]).open("hm-img").ref
    swapped = ["confounders", "--image", "hm-img", "--text", "hm-img", "--dataset", hm["data"], "--store",
               hm["store"], "--out", tmp_path / "rep"]
    assert one_line_error(featstore, swapped) == (
        f"error: {ref} is keyed by image_key (image features) but was passed as the text set; pass a text feature "
        "set (did you swap --image and --text?)")
    with pytest.raises(FeatstoreError, match="k_max must be a positive integer, got 0"):
        search_confounders(["a", "b"], ["a", "b"], np.eye(2), np.eye(2), k_max=0)


def test_atomic_outputs_refuse_a_folder_in_the_way_and_turn_write_errors_into_one_line(tmp_path):
    from featstore.search.outputs import AtomicOutputs

    (tmp_path / "report" / "confounders.html").mkdir(parents=True)
    (tmp_path / "report" / "confounders.csv").write_text("old\n")
    out = AtomicOutputs()
    with pytest.raises(FeatstoreError) as e:
        with out:
            for name in ("confounders.csv", "confounders.html"):
                with open(out.path(tmp_path / "report" / name), "w") as f:
                    f.write("new\n")
    assert str(e.value) == (f"cannot write {str(tmp_path / 'report' / 'confounders.html')!r}: a folder has that "
                            "name; move it away or pass another --out")
    assert (tmp_path / "report" / "confounders.csv").read_text() == "old\n"  # no rename happened
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["confounders.csv", "confounders.html"]
    with pytest.raises(FeatstoreError) as e:
        with AtomicOutputs() as out2:
            out2.path(tmp_path / "new" / "a.csv")
            raise OSError(28, "No space left on device", str(tmp_path / "new" / "a.csv"))
    assert str(e.value) == (f"cannot write {str(tmp_path / 'new' / 'a.csv')!r} (No space left on device); free "
                            "space or pass another --out")
    assert not (tmp_path / "new").exists()  # the folder it made is gone with the temporary file
