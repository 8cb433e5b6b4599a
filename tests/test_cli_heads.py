"""`heads` list / train / eval / predict / compare and the glue behind them (heads.experiment, heads.demo) on tiny
real features (ResNet-18 grid regions + MiniLM tokens extracted by `featstore extract`). Printed and saved
metrics are checked against scikit-learn on the saved predictions; reloaded runs against the files they wrote.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import re

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from cli.heads_cli import main as heads
from cli_helpers import build_world, invoke, one_line_error
from featstore.store import Recipe, open_store


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("heads_cli"))
    keys = sorted({s.image_key for s in w["ds"].samples})
    open_store(w["store"]).write("pooled-only", Recipe("pooled-only"), keys,
                                 {"pooled": np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)},
                                 key_kind="image_key", modality="image")
    return w


def train_args(world, out, *extra, head="concat"):
    return ["train", "--store", world["store"], "--dataset", world["data"], "--image", "grid", "--text", "bert",
            "--head", head, "--epochs", 3, "--quiet", "--device", "cpu", "--out", out, *extra]


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    """One concat run (3 epochs) that also stores its fused embeddings as feature set ``fused-concat``."""
    rd = tmp_path_factory.mktemp("run") / "concat"
    out = invoke(heads, train_args(world, rd, "--save-fused", "fused-concat"))
    return rd, out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# every head: its config dataclass and the inputs it needs, written here (not read from the registry)
HEAD_FACTS = {
    "concat": ("concat", "ConcatConfig", "img_pooled, txt_pooled"),
    "cross": ("cross", "CrossConfig", "img_pooled, txt_pooled"),
    "gnn": ("gnn", "GnnConfig", "img_regions, txt_tokens"),
    "image-only": ("unimodal", "UnimodalConfig", "img_pooled"),
    "image-region": ("image_region", "ImageRegionConfig", "img_regions"),
    "refnet": ("refnet", "RefnetConfig", "img_pooled, txt_pooled"),
    "text-only": ("unimodal", "UnimodalConfig", "txt_pooled"),
    "vilbert": ("vilbert", "VilbertConfig", "img_regions, txt_tokens"),
    "singlestream": ("singlestream", "SingleStreamConfig", "img_regions, txt_tokens"),
    "visualbert": ("visualbert", "VisualBertConfig", "img_regions, txt_ids"),
    "text-bert": ("text_bert", "TextBertConfig", "txt_ids"),
    "concat-bert": ("text_bert", "ConcatBertConfig", "img_pooled, txt_ids"),
    "late-fusion": ("text_bert", "LateFusionConfig", "img_pooled, txt_ids"),
    "mmbt": ("mmbt", "MmbtConfig", "img_pooled, txt_ids"),
    "mmbt-region": ("mmbt", "MmbtRegionConfig", "img_regions, txt_ids"),
}


def test_list_shows_every_head_with_its_options_and_needs():
    import importlib

    out = invoke(heads, ["list"])
    blocks, name = {}, None
    for line in out.splitlines():
        if not line.startswith(" "):
            name = line.split(":")[0]
            blocks[name] = []
        else:
            blocks[name].append(line)
    assert list(blocks) == sorted(HEAD_FACTS)  # every head, by name
    for line in ("layer = 'gcn'", "num_layers = 2", "hidden = 256", "gat_heads = 4", "dropout = 0.1",
                 "residual = True"):  # the gnn head's documented defaults
        assert f"    {line}" in blocks["gnn"], line
    for name, (module, cls_name, needs) in HEAD_FACTS.items():
        cls = getattr(importlib.import_module(f"heads.models.{module}"), cls_name)
        defaults = cls()
        options = [line for line in blocks[name] if not line.startswith("    (")]
        assert options == [f"    {f.name} = {getattr(defaults, f.name)!r}" for f in dataclasses.fields(cls)], name
        assert blocks[name][-1] == f"    (needs {needs})", name


def test_train_writes_a_run_folder_whose_metrics_match_its_predictions(world, run):
    group, out = run
    assert json.loads((group / "summary.json").read_text())["seeds"] == [0]
    rd = group / "seed_0"
    for f in ("config.json", "metrics.json", "model.safetensors", "predictions_test.csv", "history.csv"):
        assert (rd / f).is_file(), f
    config = json.loads((rd / "config.json").read_text())
    st = open_store(world["store"])
    assert config["head"] == "concat" and config["train"]["epochs"] == 3
    assert {k: (v["name"], v["version"]) for k, v in config["features"].items()} == {
        "image": ("grid", st.open("grid").version), "text": ("bert", st.open("bert").version)}
    rows = read_csv(rd / "predictions_test.csv")
    assert rows[0] == ["id", "proba", "label"]
    test = [s for s in world["ds"].samples if s.split == "test_seen"]
    assert [r[0] for r in rows[1:]] == [s.id for s in test]
    proba = np.array([float(r[1]) for r in rows[1:]])
    pred = np.array([int(r[2]) for r in rows[1:]])
    y = np.array([s.labels["label"] for s in test])
    assert ((proba >= 0) & (proba <= 1)).all() and (pred == (proba > 0.5)).all()
    metrics = json.loads((rd / "metrics.json").read_text())["test"]
    assert metrics["label/n"] == len(test) == 12
    assert metrics["label/auroc"] == pytest.approx(roc_auc_score(y, proba), abs=1e-9)
    assert metrics["label/accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-9)
    assert metrics["label/f1"] == pytest.approx(f1_score(y, pred), abs=1e-9)
    line = next(line for line in out.splitlines() if line.strip().startswith("test "))
    assert f"label/auroc={metrics['label/auroc']:.4f}+-0.0000" in line
    assert f"label/f1={metrics['label/f1']:.4f}+-0.0000" in line
    assert out.splitlines()[0] == f"training head concat on 48 samples, seeds 0 -> {group}"
    seed_line = next(line for line in out.splitlines() if line.startswith("seed 0:"))
    assert seed_line.startswith(f"seed 0: best epoch {json.loads((rd / 'metrics.json').read_text())['best_epoch']}, "
                                "dev label/auroc=") and seed_line.endswith(f"-> {rd}")


def test_eval_prints_the_runs_test_metrics(world, run):
    group, _ = run
    rd = group / "seed_0"
    ev = json.loads(invoke(heads, ["eval", group, "--store", world["store"], "--dataset", world["data"], "--device",
                                   "cpu"]))
    assert ev == json.loads(invoke(heads, ["eval", rd, "--store", world["store"], "--dataset", world["data"], "--device",
                                   "cpu"]))
    saved = json.loads((rd / "metrics.json").read_text())["test"]
    assert ev["split"] == "test" and ev["run"] == str(rd)
    assert set(ev["metrics"]) == set(saved)
    for k, v in saved.items():
        assert ev["metrics"][k] == pytest.approx(v, abs=1e-6, nan_ok=True), k


def test_predict_reproduces_the_runs_test_predictions(world, run, tmp_path):
    rd, _ = run  # the --out folder: predict finds its only seed's run
    out = invoke(heads, ["predict", rd, "--store", world["store"], "--dataset", world["data"], "--split", "test",
                         "--out", tmp_path / "p.csv", "--device", "cpu"])
    assert out.strip() == f"wrote {tmp_path / 'p.csv'}"
    assert (tmp_path / "p.csv").read_text() == (rd / "seed_0" / "predictions_test.csv").read_text()
    invoke(heads, ["predict", rd, "--store", world["store"], "--dataset", world["data"], "--out",
                   tmp_path / "all.csv", "--device", "cpu"])
    assert [r[0] for r in read_csv(tmp_path / "all.csv")[1:]] == [s.id for s in world["ds"].samples]


def test_predict_and_eval_use_the_runs_tasks_not_the_datasets(world, run, tmp_path):
    """A test file alone (no labels, no train split: what a challenge's unseen test set is) is predicted with the
    run's own tasks; the probabilities are the run's own test predictions. eval names the split a dataset's own
    split name became (dev_seen -> dev) and refuses a --task naming labels the run does not predict."""
    rd, _ = run
    base = ["--store", world["store"], "--device", "cpu"]
    rows = [json.loads(line) for line in (world["data"] / "test_seen.jsonl").read_text().splitlines()]
    alone = tmp_path / "unseen" / "test_unseen.jsonl"
    alone.parent.mkdir()
    alone.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n" for r in rows))
    invoke(heads, ["predict", rd, "--dataset", alone, "--image-root", world["data"], "--out", tmp_path / "u.csv",
                   *base])
    got, want = read_csv(tmp_path / "u.csv"), read_csv(rd / "seed_0" / "predictions_test.csv")
    assert got[0] == want[0] and [r[0] for r in got[1:]] == [str(r["id"]) for r in rows]
    assert {r[0]: r[1:] for r in got[1:]} == {r[0]: r[1:] for r in want[1:]}
    dev = json.loads(invoke(heads, ["eval", rd, "--dataset", world["data"], "--split", "dev", *base]))["metrics"]
    assert dev["label/n"] == 12
    assert one_line_error(heads, ["eval", rd, "--dataset", world["data"], "--split", "dev_seen", *base]) == (
        "error: split 'dev_seen' does not exist; choose one of train, dev, test (a dataset's 'dev_seen' rows are the "
        "split 'dev' here)")
    line = one_line_error(heads, ["eval", rd, "--dataset", world["data"], "--task", "genres", *base])
    assert line == (f"error: --task 'genres': run {rd / 'seed_0'} predicts label, not 'genres'; eval / predict score "
                    "the run's own tasks, leave --task out")


def test_eval_and_predict_read_the_arrays_and_counts_the_run_was_trained_on(world, tmp_path):
    """A run trained on ``--text-pool mean --image-pool pooled --max-tokens 5``: eval and predict without those
    flags read the same features (its saved metrics and predictions come back exactly; reading cls, the
    default, would give other numbers); a flag that names another array is a one-line error."""
    rd = tmp_path / "mean"
    invoke(heads, train_args(world, rd, "--text-pool", "mean", "--image-pool", "pooled", "--max-tokens", 5))
    config = json.loads((rd / "seed_0" / "config.json").read_text())
    assert (config["features"]["text"]["pool"], config["features"]["text"]["array"]) == ("mean", "tokens")
    assert config["features"]["image"]["pool"] == "pooled" and config["input_spec"]["txt_tokens"] == 5
    base = ["--store", world["store"], "--dataset", world["data"], "--device", "cpu"]
    ev = json.loads(invoke(heads, ["eval", rd, *base]))
    saved = json.loads((rd / "seed_0" / "metrics.json").read_text())["test"]
    assert ev["metrics"] == pytest.approx(saved, abs=1e-6, nan_ok=True)
    invoke(heads, ["predict", rd, *base, "--split", "test", "--out", tmp_path / "p.csv"])
    assert (tmp_path / "p.csv").read_text() == (rd / "seed_0" / "predictions_test.csv").read_text()
    cls = json.loads(invoke(heads, ["eval", tmp_path / "mean", *base, "--max-tokens", 5]))  # same: explicit, same count
    assert cls == ev
    line = one_line_error(heads, ["eval", rd, *base, "--text-pool", "cls"])
    assert line == (f"error: --text-pool 'cls' is not the text array run {rd / 'seed_0'} was trained on ('mean'); "
                    "leave --text-pool out to use the run's")
    line = one_line_error(heads, ["predict", rd, *base, "--image-pool", "pooler", "--out", tmp_path / "q.csv"])
    assert line.startswith("error: --image-pool 'pooler' is not the image array run") and not (tmp_path / "q.csv").exists()


def test_evaluate_run_refuses_data_read_with_other_arrays_than_the_run(world, run):
    from featstore.datasets import load_dataset
    from heads.data import build_train_data
    from heads.experiment import evaluate_run

    group, _ = run
    st, ds = open_store(world["store"]), load_dataset(world["data"])
    data = build_train_data(st, ds, "grid", "bert", text_pool="mean")
    with pytest.raises(Exception) as err:
        evaluate_run(group / "seed_0", data, "test")
    assert str(err.value) == (f"data does not match run {group / 'seed_0'}: its text array (pool) is 'mean', the run "
                              "was trained on 'cls'; build the data with text_pool='cls' (--text-pool cls)")
    assert evaluate_run(group / "seed_0", build_train_data(st, ds, "grid", "bert"), "test") == pytest.approx(
        json.loads((group / "seed_0" / "metrics.json").read_text())["test"], abs=1e-6, nan_ok=True)


def test_a_run_saved_without_its_arrays_evaluates_with_the_flags_given(world, run, tmp_path):
    """Runs saved before the arrays were recorded (no ``pool`` in config.json's features) take the flags' values."""
    import shutil

    group, _ = run
    old = tmp_path / "old"
    shutil.copytree(group, old)
    cfg_path = old / "seed_0" / "config.json"
    config = json.loads(cfg_path.read_text())
    for side in config["features"].values():
        side.pop("pool", None)
    cfg_path.write_text(json.dumps(config))
    base = ["--store", world["store"], "--dataset", world["data"], "--device", "cpu"]
    assert json.loads(invoke(heads, ["eval", old, *base]))["metrics"] == pytest.approx(
        json.loads((group / "seed_0" / "metrics.json").read_text())["test"], abs=1e-6, nan_ok=True)
    for name, flags in (("cls.csv", []), ("mean.csv", ["--text-pool", "mean"])):
        invoke(heads, ["predict", old, *base, "--split", "test", "--out", tmp_path / name, *flags])
    assert (tmp_path / "cls.csv").read_text() == (group / "seed_0" / "predictions_test.csv").read_text()
    assert (tmp_path / "mean.csv").read_text() != (tmp_path / "cls.csv").read_text()  # the flag was used


def test_save_fused_stores_the_heads_fused_embeddings(world, run):
    from heads.data import build_train_data
    from heads.runs import load_run
    from heads.experiment import fused_embeddings

    rd, out = run
    rd = rd / "seed_0"
    st = open_store(world["store"])
    fused = st.open("fused-concat")
    assert f"stored as {fused.ref} (48 x {fused.spec('pooled').shape[0]})" in out
    assert fused.modality == "fused" and fused.key_kind == "sample_id"
    model, _ = load_run(rd)
    data = build_train_data(st, world["ds"], "grid", "bert", "label")
    want = fused_embeddings(model, data)
    assert want.shape == (48, fused.spec("pooled").shape[0])
    np.testing.assert_allclose(fused.select(list(data.ids), ["pooled"])["pooled"], want, rtol=1e-6, atol=1e-6)
    # the fused set is searchable like any other
    from cli.featstore_cli import main as featstore

    assert "rank" in invoke(featstore, ["neighbors", "1", "--set", "fused-concat", "--store", world["store"], "-k", 3])


def test_run_feature_refs_name_the_exact_trained_versions(world, run, tmp_path):
    from heads.experiment import run_feature_refs

    rd, _ = run
    rd = rd / "seed_0"
    st = open_store(world["store"])
    assert run_feature_refs(rd, None, None) == (st.open("grid").ref, st.open("bert").ref)
    assert run_feature_refs(rd, "other", None) == ("other", st.open("bert").ref)
    with pytest.raises(Exception, match="not a run folder"):
        run_feature_refs(tmp_path, None, None)


def test_seeds_write_one_run_each_and_a_mean_std_summary_then_compare(world, tmp_path):
    out = invoke(heads, train_args(world, tmp_path / "a", "--seeds", "0,1"))
    assert (tmp_path / "a" / "seed_0" / "metrics.json").is_file() and (tmp_path / "a" / "seed_1").is_dir()
    per_seed = [json.loads((tmp_path / "a" / f"seed_{s}" / "metrics.json").read_text())["test"] for s in (0, 1)]
    test_line = next(line for line in out.splitlines() if line.strip().startswith("test"))
    got = dict(re.findall(r"(\S+)=(\S+)", test_line))
    assert got and all("+-" in v for v in got.values())
    for k, v in got.items():
        xs = np.array([m[k] for m in per_seed])
        mean, std = (float(x) for x in v.split("+-"))
        assert mean == pytest.approx(xs.mean(), abs=1e-4) and std == pytest.approx(xs.std(ddof=1), abs=1e-4), k
    invoke(heads, train_args(world, tmp_path / "b", "--seeds", "0,1", head="text-only"))
    table = invoke(heads, ["compare", tmp_path / "a", tmp_path / "b"])
    assert "concat" in table and "text-only" in table and "+-" in table and "significance" in table


@pytest.mark.parametrize("case, needle", [
    ("swapped", "swap"),
    ("regions", "needs image regions"),
    ("unknown-head", "unknown head 'nope'"),
    ("task", "'genres'"),
    ("not-a-run", "not a run folder"),
    ("cuda", "no GPU is visible"),
])
def test_bad_input_is_one_line(world, tmp_path, case, needle):
    import torch

    base = ["--store", world["store"], "--dataset", world["data"], "--quiet", "--device", "cpu", "--out", tmp_path / "x"]
    args = {
        "swapped": ["train", "--image", "bert", "--text", "grid", "--head", "concat", *base],
        "regions": ["train", "--image", "pooled-only", "--text", "bert", "--head", "vilbert", *base],
        "unknown-head": ["train", "--image", "grid", "--text", "bert", "--head", "nope", *base],
        "task": ["train", "--image", "grid", "--text", "bert", "--head", "concat", "--task", "genres", *base],
        "not-a-run": ["eval", tmp_path, "--store", world["store"], "--dataset", world["data"], "--device", "cpu"],
        "cuda": ["train", "--image", "grid", "--text", "bert", "--head", "concat", *base[:-4], "--device", "cuda",
                 "--out", tmp_path / "x"],
    }[case]
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = one_line_error(heads, args)
    assert needle in line, line
    assert not (tmp_path / "x").exists()


def test_demo_heads_table_matches_the_run_folders(world, tmp_path):
    from featstore.store import open_store as _open
    from heads.demo import DEMO_HEADS, train_demo_heads

    lines = list(train_demo_heads(_open(world["store"]), world["ds"], "grid", "bert", progress=False,
                                  run_root=str(tmp_path)))
    assert lines[0].startswith(f"heads trained on cached features (runs in {tmp_path}); test split, 12 samples")
    header = lines[1].split()
    assert header[0] == "head" and header[-1] == "seconds"
    assert [line.split()[0] for line in lines[2:]] == [h for h, _ in DEMO_HEADS]
    for line in lines[2:]:
        head, *values = line.split()
        saved = json.loads((tmp_path / head / "metrics.json").read_text())["test"]
        for name, value in zip(header[1:-1], values[:-1]):
            assert float(value) == pytest.approx(saved[f"label/{name}"], abs=5e-5), (head, name)


def test_an_out_that_holds_a_run_is_refused_then_replaced_with_overwrite(world, run, tmp_path):
    import shutil

    src, _ = run
    out = tmp_path / "again"
    shutil.copytree(src, out)
    (out / "notes.txt").write_text("mine")
    before = (out / "seed_0" / "metrics.json").read_text()
    line = one_line_error(heads, train_args(world, out))
    assert line == (f"error: --out {out} already holds a run (summary.json); pass --overwrite to replace it or "
                    "choose another --out")
    assert (out / "seed_0" / "metrics.json").read_text() == before  # nothing lost
    text = invoke(heads, train_args(world, out, "--seeds", "3,4", "--overwrite"))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "seed_3", "seed_4", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["seeds"] == [3, 4]
    assert "seed 4: best epoch" in text
    # a bare run folder (save_run) and a lone seed folder count as runs too
    for holder, name in ((out / "seed_3", "config.json"), (tmp_path / "only-seeds", "seed_9")):
        (holder / name).mkdir(parents=True) if name.startswith("seed_") else None
        assert one_line_error(heads, train_args(world, holder)).startswith(f"error: --out {holder} already holds a run ({name})")


def test_quiet_prints_one_line_per_epoch_and_per_seed(world, tmp_path):
    out = invoke(heads, train_args(world, tmp_path / "q", "--seeds", "0,1", "--patience", "0"))
    lines = out.splitlines()
    # the epoch lines name the split that chooses, as the seed lines do (the dev split of these files)
    epochs = [line for line in lines if re.match(r"  seed \d epoch \d/3: train_loss=\d\.\d{4} dev label/auroc=", line)]
    assert len(epochs) == 6 and all(re.match(r"seed \d: best epoch \d, dev label/auroc=", line)
                                    for line in lines if line.startswith("seed "))
    history = list(csv.DictReader(open(tmp_path / "q" / "seed_1" / "history.csv")))
    for row, line in zip(history, epochs[3:]):
        assert f"train_loss={float(row['train_loss']):.4f} dev label/auroc={float(row['val_label/auroc']):.4f}" in line
    seeds = [i for i, line in enumerate(lines) if re.match(r"seed \d: best epoch", line)]
    assert len(seeds) == 2 and seeds[0] > lines.index(epochs[2]) and seeds[0] < lines.index(epochs[3])


def test_list_says_which_sizes_are_gpu_sized():
    from heads.presets import load_preset, parameter_count

    out = "\n" + invoke(heads, ["list"])
    for head in ("vilbert", "singlestream", "visualbert"):
        block = out.split(f"\n{head}: ")[1].split("\n")[1]
        n = parameter_count(head) / 1e6
        small = parameter_count(head, load_preset(f"{head}-small").head_cfg) / 1e6
        assert block == (f"    (default size: {n:.1f} M parameters at 36 x 2048 regions + 128 x 768 tokens: GPU-sized; "
                         f"--preset {head}-small ({small:.1f} M) trains in minutes on a CPU)")
    assert "GPU-sized" not in out.split("\nconcat: ")[1].split("\n")[1]


def test_visualbert_trains_on_the_bert_sets_token_ids_from_an_mmf_checkpoint(world, tmp_path):
    """`heads train --head visualbert`: the ids it reads are the bert set's stored ``input_ids`` (reopened
    here), the MiniLM tokenizer's vocabulary (30522, bert-base-uncased's) passes the check, an MMF-named
    checkpoint (classifier included) loads with its report, and eval reproduces the run's metrics."""
    import torch
    from test_visualbert import mmf_state

    from heads.data import build_train_data

    data = build_train_data(open_store(world["store"]), world["data"], "grid", "bert", "label")
    stored = open_store(world["store"]).open("bert").select([s.id for s in world["ds"].samples], ["input_ids"],
                                                             torch=True)
    assert torch.equal(data.features["txt_ids"], stored["input_ids"].long())
    assert data.features["txt_ids"].dtype == torch.int64 and data.meta["features"]["text"]["vocab_size"] == 30522
    sd = {k: v for k, v in mmf_state().items()}  # sizes of test_visualbert's, widened to these features
    g = torch.Generator().manual_seed(0)
    sd["model.bert.embeddings.word_embeddings.weight"] = torch.randn(30522, 16, generator=g, dtype=torch.float64)
    sd["model.bert.embeddings.projection.weight"] = torch.randn(16, 512, generator=g, dtype=torch.float64) * 0.05
    torch.save({"model": {k: v.float() for k, v in sd.items()}}, tmp_path / "model.pth")
    rd = tmp_path / "vb"
    invoke(heads, train_args(world, rd, "--init-checkpoint", tmp_path / "model.pth", "--set",
                                   "num_attention_heads=2", "--threads", "1", head="visualbert"))
    config = json.loads((rd / "seed_0" / "config.json").read_text())
    assert config["head_config"]["vocab_size"] == 30522 and config["head_config"]["num_hidden_layers"] == 2
    report = config["checkpoint_load"]
    assert report["summary"][0] == (f"checkpoint {tmp_path / 'model.pth'}: used {len(sd)} tensors "
                                    f"(backbone {len(sd) - 6}, classifier 6); missing 0")
    assert config["input_spec"]["txt_ids"] is True
    saved = json.loads((rd / "seed_0" / "metrics.json").read_text())["test"]
    ev = json.loads(invoke(heads, ["eval", rd, "--store", world["store"], "--dataset", world["data"], "--device", "cpu"]))
    assert ev["metrics"] == pytest.approx(saved, abs=1e-6, nan_ok=True)


def test_seeds_read_the_checkpoint_once_and_training_leaves_the_kept_tensors_alone(world, tmp_path, monkeypatch):
    """`heads train --seeds 0,1 --init-checkpoint F` reads F once (the meta-device check and both seeds share
    the read, counted on the real reader); seed 1, started after seed 0 trained, gets the same weights as a
    run of seed 1 alone from a fresh read, so no training step wrote into the kept tensors."""
    import torch
    from safetensors.torch import load_file
    from test_visualbert import mmf_state

    from heads import checkpoints

    sd = dict(mmf_state())
    g = torch.Generator().manual_seed(0)
    sd["model.bert.embeddings.word_embeddings.weight"] = torch.randn(30522, 16, generator=g, dtype=torch.float64)
    sd["model.bert.embeddings.projection.weight"] = torch.randn(16, 512, generator=g, dtype=torch.float64) * 0.05
    torch.save({"model": {k: v.float() for k, v in sd.items()}}, tmp_path / "model.pth")
    real, reads = checkpoints._read_file, []
    monkeypatch.setattr(checkpoints, "_read_file", lambda p, trust: reads.append(p) or real(p, trust))
    checkpoints.forget_read_weights()
    opts = ("--init-checkpoint", tmp_path / "model.pth", "--set", "num_attention_heads=2", "--threads", "1")
    invoke(heads, train_args(world, tmp_path / "both", *opts, "--seeds", "0,1", head="visualbert"))
    assert reads == [tmp_path / "model.pth"]
    checkpoints.forget_read_weights()
    invoke(heads, train_args(world, tmp_path / "one", *opts, "--seeds", "1", head="visualbert"))
    assert len(reads) == 2
    both = load_file(str(tmp_path / "both" / "seed_1" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "seed_1" / "model.safetensors"))
    assert both.keys() == one.keys() and all(torch.equal(both[k], one[k]) for k in both)
    checkpoints.forget_read_weights()


def test_a_bad_init_checkpoint_is_refused_before_the_run_folder_is_made(world, tmp_path):
    """The checkpoint is read (on the meta device) with the head and option checks, so its refusals come before
    --out is created: a missing file, and a ViLBERT file given to the visualbert reader."""
    import torch

    missing = tmp_path / "nowhere.pth"
    line = one_line_error(heads, train_args(world, tmp_path / "a", "--init-checkpoint", missing, head="visualbert"))
    assert line.startswith(f"error: checkpoint {str(missing)!r} does not exist; ")
    vil = tmp_path / "vilbert.pth"
    torch.save({"model": {"model.bert.v_embeddings.image_embeddings.weight": torch.zeros(4, 8)}}, vil)
    line = one_line_error(heads, train_args(world, tmp_path / "b", "--init-checkpoint", vil, head="visualbert"))
    assert line == (f"error: checkpoint {str(vil)!r} is a ViLBERT checkpoint (key "
                    "'model.bert.v_embeddings.image_embeddings.weight'), not VisualBERT or BERT; train it with --head "
                    "vilbert")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_visualbert_on_the_token_ids_alone_loads_no_token_states(world, tmp_path):
    """``--text-array input_ids`` (the visualbert presets' choice): the ids and mask only, no float token
    states in memory; the run records it, and eval / predict read the same without the flag."""
    import torch

    from heads.data import build_train_data

    data = build_train_data(open_store(world["store"]), world["data"], "grid", "bert", "label", text_array="input_ids")
    assert "txt_tokens" not in data.features and data.features["txt_ids"].dtype == torch.int64
    full = build_train_data(open_store(world["store"]), world["data"], "grid", "bert", "label")
    assert torch.equal(data.features["txt_ids"], full.features["txt_ids"])
    assert torch.equal(data.features["txt_mask"], full.features["txt_mask"])
    rd = tmp_path / "ids"
    invoke(heads, train_args(world, rd, "--preset", "visualbert-small", "--threads", "1", head="visualbert"))
    config = json.loads((rd / "seed_0" / "config.json").read_text())
    assert config["features"]["text"]["array"] == "input_ids" and config["input_spec"]["txt_tokens"] == 0
    base = ["--store", world["store"], "--dataset", world["data"], "--device", "cpu"]
    ev = json.loads(invoke(heads, ["eval", rd, *base]))
    assert ev["metrics"] == pytest.approx(json.loads((rd / "seed_0" / "metrics.json").read_text())["test"], abs=1e-6,
                                          nan_ok=True)
    invoke(heads, ["predict", rd, *base, "--split", "test", "--out", tmp_path / "p.csv"])
    assert (tmp_path / "p.csv").read_text() == (rd / "seed_0" / "predictions_test.csv").read_text()
    line = one_line_error(heads, train_args(world, tmp_path / "vil", "--text-array", "input_ids", head="vilbert"))
    assert line == ("error: head 'vilbert' needs text tokens but the text feature set gives pooled vectors only; "
                    "extract text with a token-level text extractor (per-token states) or use --head concat")
