"""The inspection jobs behind `featstore neighbors`, `featstore confounders` and `featstore map`
(featstore.search.inspect), run through the CLI on real grid (ResNet-18) and bert (MiniLM) sets.

References are independent of the code under test: a float64 numpy brute-force cosine search,
``featstore.search.find_confounders`` called directly on vectors read from the store, labels and
predictions compared by hand, the HTML page parsed with the standard library, the PNG opened by PIL."""
from __future__ import annotations

import csv
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import build_world, cosine_neighbours_f64, invoke, one_line_error
from PIL import Image

from cli.featstore_cli import main as featstore
from featstore.search.confounders import KINDS, search_confounders, summary_lines
from featstore.search.inspect import nearest, version_index
from featstore.store import Recipe, open_store

# thresholds that make both kinds of pair exist on the tiny set: the random-weight CNN maps all six images
# to cosines 0.95..0.98, so "same image" must mean the same file (or >= 0.999) and "differs" < 0.99
THRESHOLDS = dict(image_threshold=0.999, text_threshold=0.999, text_diff_max=0.99, image_diff_max=0.99)
CLI_THRESHOLDS = ["--image-threshold", "0.999", "--text-threshold", "0.999", "--differ-below", "0.99"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("inspect"))
    st = open_store(w["store"])
    keys = sorted({s.image_key for s in w["ds"].samples})
    regions = np.random.default_rng(0).standard_normal((6, 2, 8)).astype(np.float32)
    st.write("regions-only", Recipe("t"), keys, {"regions": regions, "count": np.full(6, 2, np.int32)},
             key_kind="image_key", modality="image", per_item=["regions"])
    return w


def neighbour_rows(output: str):
    """(rank, key, cosine) of each body row of the `featstore neighbors` table."""
    lines = output.splitlines()
    assert lines[0].split() == ["rank", "key", "cosine", "label", "text"]
    return [(int(r.split()[0]), r.split()[1], float(r.split()[2])) for r in lines[1:] if r.strip()]


# -- neighbors --------------------------------------------------------------------------------------------------
def test_neighbors_equal_a_float64_brute_force_search_and_reuse_the_cached_index(world):
    fsv = open_store(world["store"]).open("grid")
    keys = [str(k) for k in fsv.keys]
    pooled = fsv.read("pooled")
    aux = Path(world["store"]) / "sets" / "grid" / fsv.version / "aux"
    assert not aux.exists()  # nothing searched yet in this store
    q = keys.index("00002")
    order, sims = cosine_neighbours_f64(pooled, q, 3)
    assert np.min(np.abs(np.diff(sims))) > 1e-3  # distinct scores: the order is well defined
    out = invoke(featstore, ["neighbors", "00002", "--set", "grid", "--store", world["store"], "-k", 3])
    rows = neighbour_rows(out)
    assert [r[0] for r in rows] == [1, 2, 3]
    assert [r[1] for r in rows] == [keys[i] for i in order]
    np.testing.assert_allclose([r[2] for r in rows], sims, atol=6e-5)  # printed with 4 decimals
    cached = sorted(aux.iterdir())
    assert [p.name for p in cached] == ["pooled.cosine.auto.faiss"]
    mtime, data = cached[0].stat().st_mtime_ns, cached[0].read_bytes()
    again = invoke(featstore, ["neighbors", "00002", "--set", "grid", "--store", world["store"], "-k", 3])
    assert again == out
    assert cached[0].stat().st_mtime_ns == mtime and cached[0].read_bytes() == data
    assert version_index(fsv, "pooled", pooled).from_cache is True


def test_neighbors_by_sample_id_show_the_dataset_texts_and_labels(world):
    ds = world["ds"]
    image = next(s.image_key for s in ds.samples if s.id == "5")
    by_id = invoke(featstore, ["neighbors", "5", "--set", "grid", "--store", world["store"], "-k", 2, "--dataset",
                               world["data"]])
    by_key = invoke(featstore, ["neighbors", image, "--set", "grid", "--store", world["store"], "-k", 2])
    assert [r[:2] for r in neighbour_rows(by_id)] == [r[:2] for r in neighbour_rows(by_key)]
    rows, _ = nearest(open_store(world["store"]).open("grid"), "5", 2, dataset=ds)
    for r in rows:  # the first three samples that use the image, in manifest order
        users = [s for s in ds.samples if s.image_key == r["key"]][:3]
        assert r["text"] == " | ".join(s.text for s in users)
        assert r["label"] == ",".join(str(s.labels["label"]) for s in users)
        assert r["label"] in by_id and r["text"][:80] in by_id


def test_neighbors_of_a_text_set_match_brute_force_cosines(world):
    fsv = open_store(world["store"]).open("bert")
    keys = [str(k) for k in fsv.keys]
    cls = fsv.read("cls")
    q = keys.index("1")
    order, sims = cosine_neighbours_f64(cls, q, 5)
    rows = neighbour_rows(invoke(featstore, ["neighbors", "1", "--set", "bert", "--store", world["store"], "-k", 5]))
    # sample 2 has exactly the same caption as sample 1 (its confounder): cosine 1
    assert rows[0][1] == "2" and rows[0][2] == pytest.approx(1.0, abs=1e-4)
    v = cls.astype(np.float64) / np.linalg.norm(cls.astype(np.float64), axis=1, keepdims=True)
    for _, key, cos in rows:  # each printed cosine is that key's true cosine (ties may swap equal keys)
        assert cos == pytest.approx(float(v[keys.index(key)] @ v[q]), abs=6e-5)
    np.testing.assert_allclose([r[2] for r in rows], sims, atol=6e-5)
    # --array picks another pooled vector
    mean_rows = neighbour_rows(invoke(featstore, ["neighbors", "1", "--set", "bert", "--store", world["store"],
                                                  "-k", 3, "--array", "mean"]))
    _, msims = cosine_neighbours_f64(fsv.read("mean"), q, 3)
    np.testing.assert_allclose([r[2] for r in mean_rows], msims, atol=6e-5)


@pytest.mark.parametrize("args, needle", [
    (["neighbors", "nope", "--set", "grid"], "'nope'"),
    (["neighbors", "00000", "--set", "regions-only"], "has no pooled vectors"),
    (["neighbors", "00000", "--set", "grid", "--array", "regions"], "is not a pooled vector"),
    (["neighbors", "00000", "--set", "grid", "-k", "0"], "k must be a positive integer"),
    (["neighbors", "00000", "--set", "missing-set"], "feature set 'missing-set' not found"),
], ids=["unknown-id", "no-pooled", "per-item-array", "k0", "unknown-set"])
def test_neighbors_bad_input_is_one_line(world, args, needle):
    assert needle in one_line_error(featstore, args + ["--store", world["store"]])


# -- confounders ------------------------------------------------------------------------------------------------------
def reference_pairs(world, text_array="cls"):
    """search_confounders called directly on the pooled vectors the store holds, one row per sample."""
    st, ds = open_store(world["store"]), world["ds"]
    img = st.open("grid").select([s.image_key for s in ds.samples], ["pooled"])["pooled"]
    txt = st.open("bert").select([s.id for s in ds.samples], [text_array])[text_array]
    return search_confounders([s.id for s in ds.samples], [s.image_key for s in ds.samples], img, txt,
                              [s.labels["label"] for s in ds.samples], text_vector=text_array, task="label",
                              **THRESHOLDS)


class _Page(HTMLParser):
    """The kinds of the pair blocks (in page order) and the summary lines above the sections."""

    def __init__(self):
        super().__init__()
        self.kinds, self.lines, self._top, self._line = [], [], True, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("class") == "pair":
            self.kinds.append(a.get("data-kind"))
        self._top = self._top and tag != "section"
        self._line = self._top and tag == "div" and a.get("class") in ("meta", "hint")

    def handle_data(self, data):
        if self._line:
            self.lines.append(data)
        self._line = False


def test_confounders_csv_equals_the_library_and_the_html_shows_the_pairs(world, tmp_path):
    out = invoke(featstore, ["confounders", "--image", "grid", "--text", "bert", "--dataset", world["data"],
                             "--store", world["store"], "--out", tmp_path / "rep", "--max-pairs", 5, *CLI_THRESHOLDS])
    found = reference_pairs(world)
    ref, summary = found.pairs, found.summary
    assert summary.found["same_image"] > 0 and summary.found["same_text"] > 0
    # the CLI prints the library's summary: counts and label flips per kind, definition, thresholds, hints
    lines = out.splitlines()
    assert lines[0] == f"{len(ref)} confounder pairs"
    assert lines[1:-1] == summary_lines(summary)
    assert lines[1].startswith(f"same image file, different text: {summary.found['same_image']} pairs, "
                               f"{sum(p.label_flip for p in ref if p.kind == 'same_image')} with a label flip")
    with open(tmp_path / "rep" / "confounders.csv", newline="") as f:
        got = list(csv.DictReader(f))
    texts = {s.id: s.text for s in world["ds"].samples}
    assert len(got) == len(ref)
    for row, p in zip(got, ref):
        assert (row["kind"], row["id_a"], row["id_b"]) == (p.kind, p.id_a, p.id_b)
        assert float(row["image_sim"]) == pytest.approx(p.image_sim, abs=1e-6)
        assert float(row["text_sim"]) == pytest.approx(p.text_sim, abs=1e-6)
        assert (row["label_a"], row["label_b"], row["label_flip"]) == (str(p.label_a), str(p.label_b),
                                                                      str(p.label_flip))
        assert (row["text_a"], row["text_b"]) == (texts[p.id_a], texts[p.id_b])
        assert row["pred_a"] == row["wrong_a"] == ""  # no predictions given
    # every same-text pair of this set is a caption shown with its own and a foreign image: a label flip
    assert all(r["label_flip"] == "True" for r in got if r["kind"] == "same_text")
    page = _Page()
    page.feed((tmp_path / "rep" / "confounders.html").read_text())
    # a section per kind, each with its own cap of 5; the page's lines are the CLI's, with "showing the first 5"
    assert page.kinds == [k for k in KINDS for _ in range(min(5, summary.found[k]))]
    shown = {k: min(5, summary.found[k]) for k in KINDS}
    assert page.lines == summary_lines(summary, shown)


def test_confounders_text_pool_mean_compares_mean_vectors(world, tmp_path):
    args = ["confounders", "--image", "grid", "--text", "bert", "--dataset", world["data"], "--store",
            world["store"], "--out", tmp_path / "rep", *CLI_THRESHOLDS]
    out = invoke(featstore, args + ["--text-pool", "mean"])
    found = reference_pairs(world, "mean")
    assert out.splitlines()[1:-1] == summary_lines(found.summary) and "(mean vectors)" in out
    with open(tmp_path / "rep" / "confounders.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [(r["kind"], r["id_a"], r["id_b"]) for r in got] == [(p.kind, p.id_a, p.id_b) for p in found.pairs]
    np.testing.assert_allclose([float(r["text_sim"]) for r in got], [p.text_sim for p in found.pairs], atol=1e-6)
    cls = reference_pairs(world, "cls").pairs
    assert [p.text_sim for p in cls] != [p.text_sim for p in found.pairs]  # a different text vector was compared


def test_confounders_overlay_marks_the_sides_a_model_gets_wrong(world, tmp_path):
    ds = world["ds"]
    preds = tmp_path / "predictions.csv"
    proba = {s.id: (0.8 if int(s.id) % 3 == 0 else 0.2) for s in ds.samples}  # predicted 1 for every third id
    with open(preds, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "proba", "label"])
        w.writerows([i, p, int(p >= 0.5)] for i, p in proba.items())
    out = invoke(featstore, ["confounders", "--image", "grid", "--text", "bert", "--dataset", world["data"],
                             "--store", world["store"], "--out", tmp_path / "rep", "--predictions", preds,
                             *CLI_THRESHOLDS])
    truth = {s.id: s.labels["label"] for s in ds.samples}
    with open(tmp_path / "rep" / "confounders.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(reference_pairs(world).pairs)
    wrong_pairs = 0
    for row in got:
        for side in "ab":
            sid = row[f"id_{side}"]
            pred = int(proba[sid] >= 0.5)
            assert row[f"pred_{side}"] == str(pred)
            assert row[f"wrong_{side}"] == str(pred != truth[sid])
        wrong_pairs += row["wrong_a"] == "True" or row["wrong_b"] == "True"
    assert 0 < wrong_pairs < len(got)
    assert f"{wrong_pairs} pairs have a side the model gets wrong" in out.splitlines()


def test_confounders_bad_input_is_one_line(world, tmp_path):
    base = ["confounders", "--image", "grid", "--text", "bert", "--dataset", world["data"], "--store",
            world["store"], "--out", tmp_path / "rep"]
    bad = tmp_path / "bad.csv"
    bad.write_text("sample,score\n1,0.3\n")
    assert "needs `id` and `proba`" in one_line_error(featstore, base + ["--predictions", bad])
    assert "does not exist" in one_line_error(featstore, base + ["--predictions", tmp_path / "none.csv"])
    # a text set covering only some samples cannot be joined
    st = open_store(world["store"])
    ids = [s.id for s in world["ds"].samples][:10]
    st.write("text-part", Recipe("t"), ids, {"cls": np.random.default_rng(1).standard_normal((10, 8)).astype(
        np.float32)}, key_kind="sample_id", modality="text")
    line = one_line_error(featstore, base[:3] + ["--text", "text-part"] + base[5:])
    assert "do not cover the dataset" in line and "38 missing" in line
    assert not (tmp_path / "rep" / "confounders.csv").exists()
    # --text-pool mean on a text set that stores only cls vectors
    all_ids = [s.id for s in world["ds"].samples]
    st.write("text-cls", Recipe("t"), all_ids, {"cls": np.random.default_rng(2).standard_normal(
        (len(all_ids), 8)).astype(np.float32)}, key_kind="sample_id", modality="text")
    line = one_line_error(featstore, base[:3] + ["--text", "text-cls"] + base[5:] + ["--text-pool", "mean"])
    assert line.endswith(f"{st.open('text-cls').ref} has no array 'mean' (it has cls); pass --text-pool with one "
                         "of cls")
    assert not (tmp_path / "rep" / "confounders.csv").exists()


# -- map ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, set_name, with_dataset, points", [("pca", "bert", True, 48),
                                                                    ("tsne", "grid", False, 6)])
def test_map_writes_a_png(world, tmp_path, method, set_name, with_dataset, points):
    png = tmp_path / "maps" / "m.png"
    args = ["map", "--set", set_name, "--store", world["store"], "--out", png, "--method", method]
    out = invoke(featstore, args + (["--dataset", world["data"]] if with_dataset else []))
    coloured = ", coloured by label" if with_dataset else ""  # the dataset's only label key
    assert out.strip() == f"wrote {png} ({points} points, {method}{coloured})"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
        im.verify()


def test_an_image_set_is_mapped_one_point_per_image(world, tmp_path):
    """With --dataset an image set gives one point per image, not one per sample drawn on top of each other: the
    fixture's 6 images each carry captions of both labels (confounders), so each is 'several labels'; an image
    whose samples share a label keeps it. Labels grouped here from the jsonl files by image."""
    import json

    from featstore.search.inspect import image_points
    from featstore.store import open_store

    png = tmp_path / "img.png"
    out = invoke(featstore, ["map", "--set", "grid", "--store", world["store"], "--out", png, "--method", "pca",
                             "--dataset", world["data"]])
    assert out.strip() == f"wrote {png} (6 points, pca, coloured by label)"
    rows = [json.loads(line) for split in ("train", "dev_seen", "test_seen")
            for line in (world["data"] / f"{split}.jsonl").read_text().splitlines()]
    by_image = {}
    for r in rows:
        by_image.setdefault(r["img"].split("/")[-1].split(".")[0], set()).add(str(r["label"]))
    fsv = open_store(world["store"]).open("grid")
    samples = world["ds"].distinct_samples()
    vectors, labels = image_points(fsv, samples, "pooled", "label")
    keys = list(dict.fromkeys(s.image_key for s in samples))
    np.testing.assert_array_equal(vectors, fsv.select(keys, ["pooled"])["pooled"].astype(np.float32))
    assert labels == [next(iter(by_image[k])) if len(by_image[k]) == 1 else "several labels" for k in keys]
    assert set(labels) == {"several labels"}
    one = [s for s in samples if s.image_key == keys[0]][:1] + [s for s in samples if s.image_key == keys[1]]
    _, mixed = image_points(fsv, one, "pooled", "label")
    assert mixed == [str(one[0].labels["label"]), "several labels"]


def test_map_of_a_set_without_pooled_vectors_is_one_line(world, tmp_path):
    line = one_line_error(featstore, ["map", "--set", "regions-only", "--store", world["store"], "--out",
                                      tmp_path / "m.png"])
    assert "has no pooled vectors" in line and not (tmp_path / "m.png").exists()
