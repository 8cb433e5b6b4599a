"""`heads sweep` on a Hateful-Memes-shaped folder with all five split files (train, dev_seen, dev_unseen,
test_seen, test_unseen) and small planted feature sets written into a real store: the leaderboard's numbers
are recomputed from the runs' own files (metrics.json, predictions) with numpy / scipy / scikit-learn,
a killed sweep is resumed, a bad combination fails its row only, and `heads compare` reads the sweep."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from cli.heads_cli import main as heads
from cli_helpers import invoke, invoke_result, one_line_error
from featstore.errors import FeatstoreError
from featstore.store import Recipe, open_store

SPLITS = {"train": 160, "dev_seen": 40, "dev_unseen": 30, "test_seen": 40, "test_unseen": 30}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Labels y = [img[0] + txt[0] > 0]; image set ``img`` (pooled [N_img, 6], key = image), a noise image set
    ``noise``, text set ``txt`` (cls [N, 6], key = sample id). 10 images shared by all samples' rows would
    make image features useless, so every sample has its own image key."""
    root = tmp_path_factory.mktemp("sweep")
    data = root / "data"
    data.mkdir()
    g = np.random.default_rng(0)
    ids, keys, rows = [], [], {}
    sid = 1
    for split, n in SPLITS.items():
        rows[split] = []
        for _ in range(n):
            ids.append(str(sid))
            keys.append(f"{sid:05d}")
            rows[split].append({"id": sid, "img": f"img/{sid:05d}.png", "text": f"caption {sid}"})
            sid += 1
    n = len(ids)
    img, txt = g.normal(size=(n, 6)).astype(np.float32), g.normal(size=(n, 6)).astype(np.float32)
    y = (img[:, 0] + txt[:, 0] > 0).astype(int)
    i = 0
    for split, rs in rows.items():
        with open(data / f"{split}.jsonl", "w") as f:
            for r in rs:
                f.write(json.dumps({**r, "label": int(y[i])}) + "\n")
                i += 1
    st = open_store(root / "store", create=True)
    st.write("img", Recipe("img"), keys, {"pooled": img}, key_kind="image_key", modality="image")
    st.write("noise", Recipe("noise"), keys, {"pooled": g.normal(size=(n, 6)).astype(np.float32)},
             key_kind="image_key", modality="image")
    st.write("txt", Recipe("txt"), ids, {"cls": txt}, key_kind="sample_id", modality="text")
    st.write("reg", Recipe("reg"), keys, {"regions": np.repeat(img[:, None], 4, 1), "count": np.full(n, 4, np.int32)},
             key_kind="image_key", modality="image", per_item=("regions",))
    return {"root": root, "data": data, "store": root / "store", "y": dict(zip(ids, y))}


def sweep_args(world, out, *extra, heads_="concat,text-only", image="img,noise"):
    return ["sweep", "--store", world["store"], "--dataset", world["data"], "--image", image, "--text", "txt",
            "--head", heads_, "--grid", "lr=0.01,0.03", "--grid", "epochs=4", "--grid", "batch_size=32",
            "--seeds", "0,1", "--device", "cpu", "--out", out, *extra]


@pytest.fixture(scope="module")
def swept(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("sw") / "x"
    text = invoke(heads, sweep_args(world, out))
    return out, text


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_leaderboard_rows_equal_the_runs_files(world, swept):
    out, text = swept
    assert text.splitlines()[0] == (f"sweep {out}: 8 rows x 2 seeds = 16 runs; 0 finished before, 16 to run on cpu")
    board = read_csv(out / "leaderboard.csv")
    assert len(board) == 8  # (img, noise) x (concat, text-only) x lr 0.01/0.03; epochs, batch fixed
    assert {(r["features"].split("@")[0], r["head"], r["setting"]) for r in board} == {
        (f, h, f"lr={lr}") for f in ("img", "noise") for h in ("concat", "text-only") for lr in (0.01, 0.03)}
    for r in board:
        runs = [json.loads((out / "runs" / r["row_id"] / f"seed_{s}" / "metrics.json").read_text()) for s in (0, 1)]
        for split in ("dev", "dev_unseen", "test", "test_unseen"):
            for m in ("label/auroc", "label/accuracy", "label/f1"):
                xs = np.array([run[split][m] for run in runs])
                assert float(r[f"{split} {m} mean"]) == pytest.approx(xs.mean(), abs=1e-4), (split, m)
                assert float(r[f"{split} {m} std"]) == pytest.approx(xs.std(ddof=1), abs=1e-4), (split, m)
        # the test AUROC of each seed equals scikit-learn on that seed's saved predictions
        with open(out / "runs" / r["row_id"] / "seed_0" / "predictions_test_unseen.csv", newline="") as f:
            preds = list(csv.DictReader(f))
        auc = roc_auc_score([world["y"][p["id"]] for p in preds], [float(p["proba"]) for p in preds])
        assert runs[0]["test_unseen"]["label/auroc"] == pytest.approx(auc, abs=1e-9)
        assert float(r["seconds per run"]) > 0 and r["status"] == "ok" and r["seeds"] == "0,1"


def test_ranking_and_p_values_against_the_best_row(swept):
    out, _ = swept
    board = read_csv(out / "leaderboard.csv")
    dev = [float(r["dev label/auroc mean"]) for r in board]
    assert dev == sorted(dev, reverse=True) and [r["rank"] for r in board] == [str(i) for i in range(1, 9)]
    assert board[0]["features"].startswith("img@") and board[0]["head"] == "concat"  # needs both modalities
    best = board[0]

    def per_seed(r, split):
        return [json.loads((out / "runs" / r["row_id"] / f"seed_{s}" / "metrics.json").read_text())[split]["label/auroc"]
                for s in (0, 1)]

    assert best["dev p vs best (label/auroc)"] == "best"
    for r in board[1:]:
        for split in ("dev", "test_unseen"):
            want = stats.ttest_rel(per_seed(r, split), per_seed(best, split)).pvalue
            d = np.subtract(per_seed(r, split), per_seed(best, split))
            if np.ptp(d) <= 1e-9 * max(1.0, np.abs(d).max()):  # the same difference on both seeds: no test
                want = np.nan
            got = r[f"{split} p vs best (label/auroc)"]
            assert (got == "" and not np.isfinite(want)) or float(got) == pytest.approx(want, abs=1e-3)


def test_markdown_and_html_show_every_split_and_the_roc_of_the_top_rows(swept):
    out, text = swept
    md = (out / "leaderboard.md").read_text()
    header = md.splitlines()[4]
    for split in ("dev", "dev_unseen", "test", "test_unseen"):
        assert f"| {split} label/auroc |" in header
    assert md.count("\n| ") == 9 and "+-" in md
    assert "macro_f1" not in header  # a binary task reports its F1, not also the macro average
    page = (out / "leaderboard.html").read_text()
    assert "<script" in page and "sortBy" in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    assert page.count("<polyline") == 4 * 5  # 4 labelled splits x top 5 rows
    assert page.count("<tr>") == 9
    # the printed summary shows the top rows with every split
    top = next(line for line in text.splitlines() if line.strip().startswith("1 "))
    assert "dev=" in top and "test_unseen=" in top and "s/run" in top


def test_resume_skips_finished_runs_and_reruns_a_lost_one(world, swept, tmp_path):
    import shutil

    out, _ = swept
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    board = read_csv(copy / "leaderboard.csv")
    lost = copy / "runs" / board[3]["row_id"] / "seed_1"
    before = (copy / "runs" / board[0]["row_id"] / "seed_0" / "model.safetensors").read_bytes()
    (lost / "done.json").unlink()  # as if the sweep was killed during this run
    text = invoke(heads, sweep_args(world, copy))
    assert text.splitlines()[0].endswith("15 finished before, 1 to run on cpu")
    assert len([line for line in text.splitlines() if line.startswith("[")]) == 1
    assert (lost / "done.json").is_file()
    assert (copy / "runs" / board[0]["row_id"] / "seed_0" / "model.safetensors").read_bytes() == before
    # a third seed only adds runs
    text = invoke(heads, sweep_args(world, copy)[:-6] + ["--seeds", "0,1,2", "--device", "cpu", "--out", copy])
    assert text.splitlines()[0].endswith("16 finished before, 8 to run on cpu")
    assert all(r["seeds"] == "0,1,2" for r in read_csv(copy / "leaderboard.csv"))


def test_a_bad_combination_fails_its_row_and_the_sweep_goes_on(world, tmp_path):
    out = tmp_path / "bad"
    # vilbert needs regions (pooled-only sets here); cross.proj_dim only reaches cross rows
    text = invoke(heads, ["sweep", "--store", world["store"], "--dataset", world["data"], "--image", "img,missing",
                          "--text", "txt", "--head", "concat,vilbert,cross", "--grid", "cross.proj_dim=4,8",
                          "--grid", "epochs=2", "--seeds", "0", "--device", "cpu", "--out", out])
    board = read_csv(out / "leaderboard.csv")
    by = {(r["features"].split("+")[0].split("@")[0], r["head"], r["setting"]): r for r in board}
    assert len(board) == 8  # (img, missing) x (concat, vilbert, cross x 2)
    assert by[("img", "concat", "default")]["status"] == "ok"
    assert by[("img", "cross", "cross.proj_dim=4")]["status"] == "ok"
    vil = by[("img", "vilbert", "default")]
    assert vil["status"] == "failed" and "needs image regions" in vil["errors"] and vil["rank"] == ""
    missing = [r for k, r in by.items() if k[0] == "missing"]
    assert len(missing) == 4 and all(r["status"] == "failed" and "'missing'" in r["errors"] for r in missing)
    assert [r["status"] for r in board[:3]] == ["ok"] * 3  # failures are ranked last
    assert len(re.findall(r"FAILED: ", text)) == 5


@pytest.mark.parametrize("args, needle", [
    (["--grid", "lr_rate=1,2"], "grid key 'lr_rate' is neither a train option nor an option of heads concat"),
    (["--grid", "vilbert.hidden_size=8"], "grid key 'vilbert.hidden_size' names head 'vilbert', which is not swept"),
    (["--grid", "concat.nope=1"], "grid key 'concat.nope': head 'concat' has no option 'nope'"),
    (["--grid", "seed=1,2"], "grid key 'seed' cannot be swept; sweep seeds with --seeds"),
    (["--grid", "lr"], "--grid 'lr' is not KEY=V1,V2,...; write e.g. --grid lr=1e-5,5e-5"),
    (["--grid-file", "nowhere.yaml"], "--grid-file nowhere.yaml does not exist"),
])
def test_bad_sweep_input_is_one_line_and_writes_nothing(world, tmp_path, args, needle):
    out = tmp_path / "s"
    line = one_line_error(heads, ["sweep", "--store", world["store"], "--dataset", world["data"], "--image", "img",
                                  "--text", "txt", "--head", "concat", "--device", "cpu", "--out", out, *args])
    assert needle in line, line
    assert not out.exists()


def test_grid_file_and_setting_rows(world, tmp_path):
    from heads.sweep import SweepSpec, plan_rows

    f = tmp_path / "grid.yaml"
    f.write_text("label_smoothing: [0, 0.1]\nhidden: [[8], [16, 8]]\nepochs: 3\n")
    from heads.sweep import load_grid_file

    grid = load_grid_file(f)
    assert grid == {"label_smoothing": [0, 0.1], "hidden": [[8], [16, 8]], "epochs": [3]}
    spec = SweepSpec(str(world["store"]), str(world["data"]), [("img", "txt")], ["concat", "text-only"], grid)
    rows = plan_rows(spec, open_store(world["store"]))
    assert len(rows) == 8 and len({r.id for r in rows}) == 8
    r = rows[1]
    assert r.train == {"label_smoothing": 0, "epochs": 3} and r.head_cfg == {"hidden": [16, 8]}
    assert r.label == "img+txt concat label_smoothing=0 hidden=[16, 8]"
    with pytest.raises(FeatstoreError, match="--grid-file .* must hold a mapping"):
        (tmp_path / "list.json").write_text("[1, 2]")
        load_grid_file(tmp_path / "list.json")


def test_compare_reads_the_sweep_against_its_best_row(swept):
    out, _ = swept
    text = invoke(heads, ["compare", out, "--split", "test_unseen", "--metric", "label/auroc"])
    board = read_csv(out / "leaderboard.csv")
    assert f"significance of each run against img+txt concat {board[0]['setting']} (rank 1 of the sweep's " \
           "leaderboard)" in text
    every = invoke(heads, ["compare", out])  # every split and metric: still the leaderboard's rank 1, on each
    refs = [line for line in every.splitlines() if line.startswith("significance of each run against")]
    assert len(refs) == 4 and set(refs) == {f"significance of each run against img+txt concat "
                                            f"{board[0]['setting']} (rank 1 of the sweep's leaderboard) (t > 0: b "
                                            "is higher)"}
    lines = [line for line in text.splitlines() if " paired " in line]
    assert len(lines) == 7
    best = f"img+txt concat {board[0]['setting']}"
    for line in lines:  # the verdict agrees with the sign of t (b - a): the best row is a
        t = float(line.split(" paired ")[1].split()[0])
        if np.isnan(t):
            assert line.rstrip().endswith("no test (identical values, differences that do not vary, or too few)")
            continue
        verdict = re.split(r"\s{2,}", line.strip())[-1]
        assert re.fullmatch(r".+ is (better than|ahead of) .+\(.*p .*0\.05\)", verdict), verdict
        winner = verdict.split(" is ")[0]
        assert (winner == best) == (t < 0), line


@pytest.mark.slow
def test_two_worker_processes_give_the_same_leaderboard(world, swept, tmp_path):
    out, _ = swept
    text = invoke(heads, sweep_args(world, tmp_path / "par", heads_="concat", image="img")[:-4]
                  + ["--device", "cpu,cpu", "--out", tmp_path / "par"])
    assert "to run on cpu, cpu" in text.splitlines()[0]
    one = {r["row_id"]: r for r in read_csv(out / "leaderboard.csv")}
    for r in read_csv(tmp_path / "par" / "leaderboard.csv"):
        assert r["dev label/auroc mean"] == one[r["row_id"]]["dev label/auroc mean"]


def test_train_summary_and_compare_show_every_labelled_split(world, tmp_path):
    out = tmp_path / "t"
    text = invoke(heads, ["train", "--store", world["store"], "--dataset", world["data"], "--image", "img", "--text",
                          "txt", "--head", "concat", "--epochs", "2", "--seeds", "0,1", "--quiet", "--threads", "1",
                          "--device", "cpu", "--out", out])
    summary = json.loads((out / "summary.json").read_text())["summary"]
    for split in ("dev", "dev_unseen", "test", "test_unseen"):
        line = next(line for line in text.splitlines() if line.startswith(f"  {split} "))
        auc = summary[split]["label/auroc"]
        assert f"label/auroc={auc['mean']:.4f}+-{auc['std']:.4f}" in line
    table = invoke(heads, ["compare", out, out])
    assert [line.split(":")[1].split("(")[0].strip() for line in table.splitlines() if line.startswith("split:")] == [
        "dev", "dev_unseen", "test", "test_unseen"]


def test_a_preset_gives_every_row_its_train_settings_and_its_head_its_options(world, tmp_path):
    from heads.presets import load_preset

    out = tmp_path / "p"
    invoke(heads, ["sweep", "--store", world["store"], "--dataset", world["data"], "--image", "img", "--text", "txt",
                   "--head", "cross,concat", "--preset", "hateclipper-cross", "--grid", "epochs=1", "--set",
                   "dropout=0.3", "--seeds", "0", "--device", "cpu", "--out", out, "--image-pool", "pooled",
                   "--text-pool", "cls"])  # explicit: over the preset's pooler arrays, which these sets lack
    preset = load_preset("hateclipper-cross")
    rows = {r["head"]: r for r in (json.loads((d / "row.json").read_text()) for d in (out / "runs").iterdir())}
    for head, row in rows.items():
        assert row["train"] == {**preset.train, "epochs": 1}
        cfg = json.loads((out / "runs" / row["id"] / "seed_0" / "config.json").read_text())
        assert cfg["train"]["schedule"] == "constant" and cfg["train"]["lr"] == 1e-4
        assert cfg["head_config"]["dropout"] == 0.3
        assert (cfg["features"]["image"]["pool"], cfg["features"]["text"]["pool"]) == ("pooled", "cls")
    assert rows["cross"]["head_cfg"] == {**preset.head_cfg, "dropout": 0.3}
    assert rows["concat"]["head_cfg"] == {"dropout": 0.3}


def test_a_presets_data_options_fill_what_the_command_line_left_out():
    """heads sweep --preset applies the preset's data options (hateclipper-cross: CLIP's pooler arrays) as heads
    train does: over the command's defaults, under what the command line gave."""
    from heads.sweep import preset_data

    data = {"format": "auto", "task": None, "task_weights": None, "max_regions": None, "max_tokens": None,
            "text_array": "tokens", "text_pool": "cls", "val_fraction": None, "image_pool": "pooled"}
    assert preset_data("hateclipper-cross", data, set()) == {**data, "task": "label", "image_pool": "pooler",
                                                              "text_pool": "pooler"}
    assert preset_data("hateclipper-cross", dict(data, text_pool="mean"), {"text_pool"}) == {
        **data, "task": "label", "image_pool": "pooler", "text_pool": "mean"}
    assert preset_data(None, data, set()) == data
    weighted = preset_data("memotion2-multitask", dict(data), set())  # its "A=0.4,..." in --task A,B,C order
    assert (weighted["task"], weighted["task_weights"], weighted["feeds"]) == ("A,B,C", [0.4, 0.3, 0.3], "B>C")


def test_a_preset_with_an_init_checkpoint_sweeps_its_own_head_only(world, tmp_path):
    """vilbert-hm-direct starts vilbert from bert-base-uncased: a concat row could not load it, so the sweep
    is refused before any row runs, naming the fix."""
    res = invoke_result(heads, ["sweep", "--store", world["store"], "--dataset", world["data"], "--image", "img",
                                "--text", "txt", "--head", "vilbert,concat", "--preset", "vilbert-hm-direct",
                                "--seeds", "0", "--device", "cpu", "--out", tmp_path / "s"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.splitlines()[-1] == (
        "error: preset 'vilbert-hm-direct''s checkpoint 'bert-base-uncased' initialises vilbert, visualbert, "
        "text-bert, concat-bert, late-fusion, mmbt, mmbt-region, image-region, cross, image-only heads; concat cannot load it: "
        "sweep those without --preset, or pass --init-checkpoint none")
    assert not (tmp_path / "s" / "runs").exists()
    from heads.sweep import with_checkpoint  # --init-checkpoint none: random starts, so every head can run

    assert with_checkpoint({"init_checkpoint": "bert-base-uncased"}, ["vilbert", "concat"], {}, "none") == {
        "init_checkpoint": "none"}


def test_more_bad_input_messages(world, tmp_path, swept):
    from heads.compare import compare_runs
    from heads.sweep_layout import read_leaderboard_order
    from heads.runs import run_dir_of
    from heads.sweep import SweepSpec, feature_pairs, load_grid_file, run_sweep, sweep_devices

    (tmp_path / "g.yaml").write_text("lr: [1, 2\n")
    with pytest.raises(FeatstoreError, match=r"^--grid-file .*g.yaml does not parse \(.*\); fix its syntax$"):
        load_grid_file(tmp_path / "g.yaml")
    with pytest.raises(FeatstoreError, match=r"^--device 'tpu:0' is not a device; pass auto, cpu, cuda, cuda:N or a comma list$"):
        sweep_devices("tpu:0")
    with pytest.raises(FeatstoreError, match=r"^--device is empty; pass auto, cpu, cuda or e.g. cuda:0,cuda:1$"):
        sweep_devices(" , ")
    with pytest.raises(FeatstoreError, match=r"^no feature set given; pass --image A,B and/or --text T$"):
        feature_pairs("-", None)
    assert feature_pairs("a,-", "t") == [("a", "t"), (None, "t")]
    spec = SweepSpec(str(world["store"]), str(world["data"]), [("img", "txt")], ["concat"], seeds=[1, 1])
    with pytest.raises(FeatstoreError, match=r"^seeds \[1, 1\] are empty or repeat a value; pass distinct seeds"):
        list(run_sweep(spec, tmp_path / "s"))
    assert not (tmp_path / "s").exists()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "sweep.json").write_text("{}")
    with pytest.raises(FeatstoreError, match=r"leaderboard.csv does not exist; run `heads sweep` into .*half first$"):
        read_leaderboard_order(tmp_path / "half")
    out, _ = swept
    row = out / "runs" / read_csv(out / "leaderboard.csv")[0]["row_id"]
    assert run_dir_of(row) == row / "seed_0" and run_dir_of(row, 1) == row / "seed_1"
    with pytest.raises(FeatstoreError, match=r"^.* has no run for seed 7 \(it has 0, 1\); pass one of them$"):
        run_dir_of(row, 7)
    with pytest.raises(FeatstoreError, match=r"^metric 'label/bleu' is not in every run"):
        compare_runs([out], split="dev", metrics=["label/bleu"])


def test_a_data_option_in_the_grid_loads_the_features_once_per_value(world, tmp_path):
    out = tmp_path / "r"
    text = invoke(heads, ["sweep", "--store", world["store"], "--dataset", world["data"], "--image", "reg", "--text",
                          "txt", "--head", "concat,text-only", "--grid", "max_regions=2,3", "--grid", "epochs=1",
                          "--seeds", "0,1", "--device", "cpu", "--out", out])
    assert text.splitlines()[0].startswith(f"sweep {out}: 4 rows x 2 seeds = 8 runs")
    for d in (out / "runs").iterdir():
        row = json.loads((d / "row.json").read_text())
        assert row["data"] == {"max_regions": row["setting"]["max_regions"]} and row["train"] == {"epochs": 1}
        for s in (0, 1):
            spec = json.loads((d / f"seed_{s}" / "config.json").read_text())["input_spec"]
            assert spec["img_regions"] == row["setting"]["max_regions"]
    from heads.sweep import SweepSpec, loading_key, pending_jobs, plan_rows

    spec = SweepSpec(str(world["store"]), str(world["data"]), [("reg", "txt")], ["concat", "text-only"],
                     {"max_regions": [2, 3]}, seeds=[0, 1])
    jobs = pending_jobs(plan_rows(spec, open_store(world["store"])), [0, 1], tmp_path / "fresh")
    keys = [loading_key(j.row) for j in jobs]
    assert len(set(keys)) == 2  # one load per max_regions value, the jobs of each value in one block:
    assert [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k] == list(dict.fromkeys(keys))


def test_a_damaged_run_record_is_one_line_naming_it(world, swept, tmp_path):
    import shutil

    out, _ = swept
    copy = tmp_path / "damaged"
    shutil.copytree(out, copy)
    done = copy / "runs" / read_csv(copy / "leaderboard.csv")[0]["row_id"] / "seed_0" / "done.json"
    done.write_text('{"seconds": 1.0, ')  # cut off mid-write by a full disk
    res = invoke_result(heads, sweep_args(world, copy))  # the plan line, then the error, no traceback
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.splitlines()[1:] == [
        f"error: {done} is not valid JSON (Expecting property name enclosed in double quotes); remove it and rerun "
        "the same `heads sweep` command to redo that run"]
    done.unlink()  # what the message says: the run is redone and the leaderboard is whole again
    invoke(heads, sweep_args(world, copy))
    assert done.is_file() and len(read_csv(copy / "leaderboard.csv")) == len(read_csv(out / "leaderboard.csv"))


def test_row_ids_keep_their_hash_and_numpy_values_hash_like_python():
    import hashlib

    from heads.sweep import _row_id

    text = ('{"data": {"max_regions": 2}, "features": ["img@abc", null], "head": "concat", '
            '"head_cfg": {"dropout": 0.3, "hidden": [256]}, "train": {"epochs": 4, "lr": 0.01}}')  # written by hand
    rid = _row_id(("img@abc", None), "concat", {"lr": 0.01}, {"lr": 0.01, "epochs": 4}, {"dropout": 0.3, "hidden": [256]},
                  {"max_regions": 2})
    assert rid == f"img_concat_lr=0.01-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
    assert _row_id(("img@abc", None), "concat", {"lr": 0.01}, {"lr": np.float64(0.01), "epochs": np.int64(4)},
                   {"dropout": 0.3, "hidden": (256,)}, {"max_regions": np.int32(2)}) == rid
    with pytest.raises(FeatstoreError) as e:
        _row_id(("img@abc", None), "concat", {}, {"lr": object()}, {}, {})
    assert str(e.value) == ("sweep row['train']['lr'] is a builtins.object, which JSON cannot hold; pass a str, number, "
                            "bool, None, list or dict")


def test_a_sweep_row_of_the_memotion_preset_loads_its_cascade(tmp_path):
    """memotion2-multitask's feeds (B>C: the emotions' probabilities into every intensity task) reach a sweep row's
    TrainData through preset_data, as heads train applies them."""
    from conftest_data import make_image, write_csv
    from featstore.datasets import load_dataset
    from featstore.store import Recipe, open_store
    from heads.sweep import SweepSpec, _load_data, plan_rows, preset_data

    header = ["Id", "Image_name", "OCR_text", "Humour", "Sarcastic", "Offensive", "Motivational", "Overall_Sentiment"]
    levels = [("funny", "general", "slight", "motivational", "positive"),
              ("not_funny", "not_sarcastic", "not_offensive", "not_motivational", "negative"),
              ("hilarious", "twisted_meaning", "very_offensive", "not_motivational", "neutral")]
    rows = []
    for i in range(12):
        make_image(tmp_path / "images" / f"image_{i}.png")
        rows.append([str(i), f"image_{i}.png", f"caption {i}", *levels[i % 3]])
    ds = load_dataset(write_csv(tmp_path / "train.csv", header, rows), image_root=tmp_path / "images")
    st = open_store(tmp_path / "store", create=True)
    g = np.random.default_rng(0)
    st.write("img", Recipe("img"), [s.image_key for s in ds.samples],
             {"pooled": g.normal(size=(12, 4)).astype(np.float32)}, key_kind="image_key", modality="image")
    st.write("txt", Recipe("txt"), [s.id for s in ds.samples], {"cls": g.normal(size=(12, 4)).astype(np.float32)},
             key_kind="sample_id", modality="text")
    data = {"format": "auto", "task": None, "task_weights": None, "max_regions": None, "max_tokens": None,
            "text_array": "tokens", "text_pool": "cls", "val_fraction": 0.25, "image_pool": "pooled"}
    spec = SweepSpec(store=str(tmp_path / "store"), dataset=str(tmp_path / "train.csv"), features=[("img", "txt")],
                     heads=["concat"], data=preset_data("memotion2-multitask", data, set()))
    loaded = _load_data(spec, ds, plan_rows(spec, st)[0], "cpu")
    assert not isinstance(loaded, Exception), loaded
    intensities = [t.name for t in loaded.task_spec.tasks if t.name.startswith("C_")]
    assert intensities and loaded.task_spec.feeds == {name: ["B"] for name in intensities}


def test_a_gpu_sized_row_on_a_cpu_is_noted_before_it_trains():
    """heads sweep says what heads train says before a GPU-sized head starts on a CPU, once per row (cross at
    the reference's n = 768 is 453 M parameters); a small row and a row that will fail get no note."""
    from heads.sweep import Job, Row, size_note
    from tests.test_heads_train import FUSION, xor_data

    data = xor_data()
    big = Row("r1", ("img@v1", "txt@v2"), "cross", {}, {"epochs": 1}, {})
    n = (16 * 768 + 768) * 2 + (768 * 768 + 1) * 768 + 769 * 2  # both maps, the pre-output Linear, the output
    assert size_note(Job(big, 0), data) == (f"{big.label}: note: cross has {n / 1e6:.1f} M parameters at these "
                                            "options: GPU-sized, hours a seed on a CPU; --preset hateclipper-cross "
                                            "trains in minutes here")
    small = Row("r2", ("img@v1", "txt@v2"), "cross", {}, {"epochs": 1}, FUSION["cross"])
    assert size_note(Job(small, 0), data) is None
    broken = Row("r3", ("img@v1", "txt@v2"), "cross", {}, {"epochs": 1}, {"nope": 1})
    assert size_note(Job(broken, 0), data) is None
