"""`--preset NAME`: the shipped recipe files load and fill a run's settings (explicit options win), a copied
and edited file works, and a preset naming an option this toolkit lacks is a one-line error.

Runs use a small planted store (regions + tokens + pooled vectors written with ``store.write``)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli.heads_cli import main as heads
from cli_helpers import invoke, one_line_error
from featstore.errors import FeatstoreError
from featstore.store import Recipe, open_store
from heads.presets import PRESET_DIR, load_preset, preset_names


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    data = root / "data"
    data.mkdir()
    g = np.random.default_rng(1)
    n, sizes = 0, {"train": 48, "dev_seen": 16, "test_seen": 16}
    ids = []
    for split, k in sizes.items():
        with open(data / f"{split}.jsonl", "w") as f:
            for _ in range(k):
                n += 1
                ids.append(str(n))
                f.write(json.dumps({"id": n, "img": f"img/{n:05d}.png", "text": f"t {n}", "label": n % 2}) + "\n")
    keys = [f"{int(i):05d}" for i in ids]
    st = open_store(root / "store", create=True)
    st.write("reg", Recipe("reg"), keys, {"regions": g.normal(size=(n, 4, 8)).astype(np.float32),
                                          "count": np.full(n, 4, np.int32),
                                          "pooled": g.normal(size=(n, 8)).astype(np.float32),
                                          "pooler": g.normal(size=(n, 6)).astype(np.float32)},
             key_kind="image_key", modality="image", per_item=("regions",))
    st.write("tok", Recipe("tok"), ids, {"tokens": g.normal(size=(n, 5, 8)).astype(np.float32),
                                         "count": np.full(n, 5, np.int32),
                                         "cls": g.normal(size=(n, 8)).astype(np.float32),
                                         "pooler": g.normal(size=(n, 7)).astype(np.float32)},
             key_kind="sample_id", modality="text", per_item=("tokens",))
    return {"data": data, "store": root / "store"}


def args(world, out, *extra):
    return ["train", "--store", world["store"], "--dataset", world["data"], "--image", "reg", "--text", "tok",
            "--device", "cpu", "--quiet", "--threads", "1", "--out", out, *extra]


def train_config(out):
    return json.loads((out / "seed_0" / "config.json").read_text())


def test_every_shipped_preset_loads_or_names_the_option_it_waits_for():
    assert len(preset_names()) >= 11
    for name in preset_names():
        try:
            p = load_preset(name)
        except FeatstoreError as err:  # a recipe whose option this toolkit does not have yet says which
            assert "which this toolkit" in str(err) and name in str(err), str(err)
            continue
        assert p.source and p.description and p.head, name
        assert p.path == PRESET_DIR / f"{name}.json"


def test_vilbert_hm_fills_mmfs_settings_and_explicit_options_win(world, tmp_path):
    out = tmp_path / "v"
    text = invoke(heads, args(world, out, "--preset", "vilbert-hm", "--head", "concat", "--epochs", "2",
                              "--text-array", "tokens"))
    assert text.splitlines()[0].startswith("preset vilbert-hm (") and "mmf" in text.splitlines()[0]
    train = train_config(out)["train"]
    preset = load_preset("vilbert-hm").train
    assert train["epochs"] == 2  # explicit
    for k in ("lr", "batch_size", "warmup_ratio", "grad_clip", "patience", "schedule", "weight_decay", "loss"):
        assert train[k] == preset[k], k
    assert (train["lr"], train["batch_size"], train["grad_clip"]) == (1e-5, 32, 0.0)
    assert train_config(out)["head"] == "concat"  # --head given: the preset's vilbert options are not applied


def test_extends_merges_the_parent(world):
    child, parent = load_preset("vilbert-hm-detectron16"), load_preset("vilbert-hm")
    assert child.train == {**parent.train, "batch_size": 16}
    assert load_preset("vilbert-hm-dinov2-ls").train == {**parent.train, "label_smoothing": 0.1}
    assert child.source != parent.source and parent.notes[0] in child.notes


def test_vilbert_small_trains_with_set_overriding_one_option(world, tmp_path):
    out = tmp_path / "s"
    text = invoke(heads, args(world, out, "--preset", "vilbert-small", "--epochs", "1", "--set", "bi_hidden_size=64"))
    cfg = train_config(out)
    small = load_preset("vilbert-small").head_cfg
    assert cfg["head"] == "vilbert"
    assert cfg["head_config"]["bi_hidden_size"] == 64 and cfg["head_config"]["hidden_size"] == small["hidden_size"]
    assert cfg["train"]["lr"] == 1e-4 and "seed 0: best epoch 1" in text


def test_a_copied_and_edited_preset_file_works(world, tmp_path):
    mine = tmp_path / "mine.json"
    raw = json.loads((PRESET_DIR / "refnet-hm.json").read_text())
    raw["head_cfg"]["zeta"] = 0.5
    raw["train"]["epochs"] = 1
    mine.write_text(json.dumps(raw))
    out = tmp_path / "r"
    invoke(heads, args(world, out, "--preset", mine))
    cfg = train_config(out)
    assert cfg["head"] == "refnet" and cfg["head_config"]["zeta"] == 0.5 and cfg["head_config"]["gamma_img"] == 0.1
    y = tmp_path / "mine.yaml"
    y.write_text("name: y\nsource: here\nhead: concat\ntrain: {epochs: 1, lr: 0.002}\n")
    invoke(heads, args(world, tmp_path / "y", "--preset", y))
    assert train_config(tmp_path / "y")["train"]["lr"] == 0.002


@pytest.mark.parametrize("content, needle", [
    ({"head": "cross", "head_cfg": {"fusion_kind": "align"}},
     "sets cross option 'fusion_kind', which this toolkit's cross head does not have; update the toolkit or remove "
     "it from a copy of the preset (cross options: "),
    ({"head": "concat", "train": {"ema_decay": 0.99}},
     "sets train option 'ema_decay', which this toolkit does not have; update the toolkit or remove it from a copy"),
    ({"head": "concat", "train": {"schedule": "polynomial"}},
     "sets schedule 'polynomial', which this toolkit does not have (schedules: "),
    ({"head": "concat", "data": {"image": "roi"}}, "sets data option 'image'; data options are task, task_weights"),
    ({"head": "concat", "optimiser": "sgd"}, "has unknown field 'optimiser'; use name, description, source"),
    ({"head": "concat", "extends": "SELF"}, "extends 'SELF' in a loop; remove one of the extends"),
    ({"head": "concat", "image_features": {"grid": "mmf"}},
     ': image_features must map extractor names to their options, e.g. {"grid": {"preprocess": "mmf-hateful-memes"}}'),
    ({"head": "concat", "image_features": {"resnet": {"preprocess": "whole"}}},
     ": image_features names extractor 'resnet', which featstore does not have (extractors: bert, clip-image, "),
    ({"head": "concat", "image_features": {"grid": {"crop": 224}}},
     ": image_features: extractor 'grid' has no option 'crop'; valid options: backbone, compile, dtype, "),
    ({"head": "concat", "image_features": {"grid": {"preprocess": "mmf"}}},
     ": image_features: preprocess='mmf' is not known; use one of whole, mmf-hateful-memes"),
])
def test_a_preset_with_an_option_this_toolkit_lacks_is_one_line(world, tmp_path, content, needle):
    path = tmp_path / "bad.json"
    text = json.dumps({"name": "bad", "source": "test", **content})
    path.write_text(text.replace("SELF", str(path)))
    needle = needle.replace("SELF", str(path))
    out = tmp_path / "o"
    line = one_line_error(heads, args(world, out, "--preset", path))
    assert needle in line, line
    assert not out.exists()


def test_unknown_preset_and_missing_source_and_no_head(world, tmp_path):
    line = one_line_error(heads, args(world, tmp_path / "o", "--preset", "nope"))
    assert line.startswith("error: preset 'nope' not found; choose one of concat-bert-hm, hateclipper-align, ")
    (tmp_path / "nosrc.json").write_text(json.dumps({"name": "n", "head": "concat"}))
    assert "has no 'source'; say where its numbers come from" in one_line_error(
        heads, args(world, tmp_path / "o", "--preset", tmp_path / "nosrc.json"))
    assert one_line_error(heads, args(world, tmp_path / "o")) == (
        "error: no head given; pass --head NAME (see `heads list`) or --preset NAME")
    assert not (tmp_path / "o").exists()


def test_presets_command_lists_and_shows(world):
    out = invoke(heads, ["presets"])
    assert [line.split(":")[0] for line in out.splitlines()] == preset_names()
    shown = invoke(heads, ["presets", "hateclipper-cross"]) if "not usable" not in out.split("hateclipper-cross:")[1].split("\n")[0] else None
    if shown:
        assert "run.sh" in shown and '"proj_dim": 32' in shown
    shown = invoke(heads, ["presets", "vilbert-hm"])
    assert '"lr": 1e-05' in shown and "note: 22,000 updates" in shown


def test_constant_schedule_keeps_the_learning_rate_after_warmup():
    import torch

    from heads.schedule import build_scheduler

    for warmup, want in ((0.0, [1.0] * 10), (0.2, [0.0, 0.5] + [1.0] * 8)):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
        sched = build_scheduler(opt, 10, warmup, "constant")
        got = []
        for _ in range(10):
            got.append(opt.param_groups[0]["lr"] / 1e-4)
            opt.step()
            sched.step()
        assert got == pytest.approx(want)
    assert load_preset("hateclipper-cross").train["schedule"] == "constant"


def test_schedule_steps_lays_the_decay_over_more_steps_than_the_run(world, tmp_path):
    """MMF's vilbert / visual_bert MM-IMDB yaml decays over num_training_steps 88,000 but stops at 60,000 updates.
    48 train rows, batch 8: 6 updates an epoch, 24 in 4 epochs; over 30 steps with warmup 0.1 (3 steps) the
    multiplier at the start of epoch e (s = 6 (e - 1) updates done) is 0, then (30 - s) / 27, never reaching 0."""
    import csv

    out = tmp_path / "s"
    invoke(heads, args(world, out, "--head", "concat", "--epochs", "4", "--batch-size", "8", "--lr", "1e-3",
                       "--patience", "0", "--warmup", "0.1", "--schedule-steps", "30"))
    lrs = [float(r["lr"]) for r in csv.DictReader(open(out / "seed_0" / "history.csv"))]
    assert lrs == pytest.approx([0.0, 1e-3 * 24 / 27, 1e-3 * 18 / 27, 1e-3 * 12 / 27])
    assert train_config(out)["train"]["schedule_steps"] == 30
    assert one_line_error(heads, args(world, tmp_path / "bad", "--head", "concat", "--schedule-steps", "-1")) == \
        "error: schedule_steps=-1 must be >= 0"
    # fewer steps than the run's 24 updates: the decay would reach 0 (or cosine climb back), refused before --out
    assert one_line_error(heads, args(world, tmp_path / "few", "--head", "concat", "--epochs", "4", "--batch-size",
                                      "8", "--schedule-steps", "10")) == (
        "error: schedule_steps=10 is fewer than the run's 24 updates (4 epochs of 6); pass at least 24, or 0 for "
        "the run's own")
    assert not (tmp_path / "few").exists()


def test_preset_file_and_option_errors(world, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1\n")
    assert one_line_error(heads, args(world, tmp_path / "o", "--preset", bad)).startswith(
        f"error: preset {bad} does not parse (")
    bad.write_text("- 1\n- 2\n")
    assert one_line_error(heads, args(world, tmp_path / "o", "--preset", bad)) == (
        f"error: preset {bad} must hold a mapping (name, source, head, train, ...); it holds list")
    bad.write_text("name: h\nsource: s\ntrain: {epochs: 1}\n")
    assert one_line_error(heads, args(world, tmp_path / "o", "--preset", bad)) == (
        "error: preset 'h' names no head; pass --head NAME")
    assert one_line_error(heads, args(world, tmp_path / "o", "--head", "concat", "--class-weights", "1,x")) == (
        "error: --class-weights '1,x': pass none, auto or comma-separated numbers")
    assert not (tmp_path / "o").exists()


def test_rgcl_presets_train_with_the_rgcl_objective_and_knn_inference(world, tmp_path):
    """rgcl / rgcl-knn: RGCL's objective, CLIP's pooler arrays (the preset's data options), torch's default
    weight decay as run_rac.py's AdamW, and the epoch of the best classifier dev accuracy kept, for the kNN
    predictions too (select_on=classifier: the classifier's metrics are logged beside the kNN ones)."""
    for name in ("rgcl", "rgcl-knn"):
        out = tmp_path / name
        invoke(heads, args(world, out, "--preset", name, "--epochs", "4", "--set", "proj_dim=16"))
        cfg = train_config(out)
        assert cfg["head"] == "cross" and cfg["head_config"]["fusion"] == "align"
        assert cfg["train"]["rgcl"] == load_preset("rgcl").train["rgcl"] and cfg["train"]["schedule"] == "constant"
        assert cfg["train"]["predict"] == ("knn" if name == "rgcl-knn" else "classifier")
        assert (cfg["train"]["weight_decay"], cfg["train"]["monitor"], cfg["train"]["select_on"]) == (
            0.01, "accuracy", "classifier")
        spec = cfg["input_spec"]  # the pooler arrays (6, 7 wide) beside 8-wide regions and tokens
        assert (spec["img_dim"], spec["img_pooled_dim"], spec["txt_dim"], spec["txt_pooled_dim"]) == (8, 6, 8, 7)
        assert cfg["head_config"]["proj_dim"] == 16
        assert cfg["features"]["image"]["pool"] == "pooler" and cfg["features"]["text"]["pool"] == "pooler"
        history = json.loads((out / "seed_0" / "history.json").read_text())
        assert "train_loss_rgcl" in history[0]
        chosen = "val_classifier_label/accuracy" if name == "rgcl-knn" else "val_label/accuracy"
        assert all(chosen in row for row in history)
        scores = [row[chosen] for row in history]
        assert cfg["best_epoch"] == 1 + scores.index(max(scores))
        if name == "rgcl-knn":  # the kNN accuracy is what is reported, and differs from the classifier's
            assert any(row["val_label/accuracy"] != row[chosen] for row in history)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "b", "source": "s", "extends": "rgcl", "train": {"rgcl": {"top_k": 20}}}))
    line = one_line_error(heads, args(world, tmp_path / "o", "--preset", bad))
    assert line.startswith("error: preset 'b' (") and "rgcl has no option 'top_k'; its options are: " in line
    assert line.endswith("; update the toolkit or edit a copy of the preset")


def test_task_weights_follow_the_task_order_and_bad_ones_are_one_line(world, tmp_path):
    from heads.experiment import task_weights

    assert task_weights("A=0.4,B=0.3,C=0.3", "C,A,B") == [0.3, 0.4, 0.3]
    assert task_weights(None, "A") is None
    out = tmp_path / "w"
    invoke(heads, args(world, out, "--head", "concat", "--epochs", "1", "--task", "label", "--task-weights", "label=2"))
    assert train_config(out)["task_spec"]["tasks"][0]["weight"] == 2.0
    invoke(heads, args(world, tmp_path / "all", "--head", "concat", "--epochs", "1", "--task", "all",
                       "--task-weights", "label=3"))  # --task all: the weights name the dataset's label keys
    assert train_config(tmp_path / "all")["task_spec"]["tasks"][0]["weight"] == 3.0
    for given, task, line in (
            ("label=x", "label", "error: --task-weights 'label=x': write TASK=WEIGHT pairs, e.g. A=0.4,B=0.3,C=0.3"),
            ("A=1,B=2", "label", "error: --task-weights 'A=1,B=2' weighs A, B; pass --task with the same tasks, "
                                 "e.g. --task A,B"),
            ("label=-1", "label", "error: --task-weights 'label=-1': weight 'label=-1' must be a number >= 0 (0 "
                                  "leaves the task's loss out), e.g. A=0.4,B=0.3,C=0.3"),
            ("label=nan", "label", "error: --task-weights 'label=nan': weight 'label=nan' must be a number >= 0 (0 "
                                   "leaves the task's loss out), e.g. A=0.4,B=0.3,C=0.3"),
            ("A=1", "all", "error: --task-weights weighs A but --task all picks label; give one weight per label key")):
        assert one_line_error(heads, args(world, tmp_path / "o", "--head", "concat", "--task", task,
                                          "--task-weights", given)) == line
    assert not (tmp_path / "o").exists()


def test_a_presets_init_checkpoint_goes_with_its_head_only():
    """vilbert-hm-direct starts vilbert from bert-base-uncased; --head concat keeps its train numbers but
    neither its vilbert options nor the checkpoint (concat could not load it); an explicit one is kept."""
    from heads.presets import merge

    preset = load_preset("vilbert-hm-direct")
    own = merge(preset, {}, {}, None)
    assert own["train"]["init_checkpoint"] == "bert-base-uncased" and own["head_cfg"] == {"text_start_layer": 0}
    other = merge(preset, {}, {}, "concat")
    assert "init_checkpoint" not in other["train"] and other["head_cfg"] == {}
    assert other["train"]["lr"] == 1e-5
    given = merge(preset, {"init_checkpoint": "x.pth"}, {}, "visualbert")
    assert given["train"]["init_checkpoint"] == "x.pth"


@pytest.mark.parametrize("direct, base, differ", [
    ("vilbert-hm-direct", "vilbert-hm", {"init_checkpoint": "bert-base-uncased"}),
    ("visualbert-hm-direct", "visualbert-hm", {"init_checkpoint": "bert-base-uncased", "batch_size": 128,
                                               "epochs": 329})])
def test_direct_presets_train_as_their_mmf_defaults_but_for_what_direct_yaml_changes(direct, base, differ):
    """The direct presets stand alone (their notes are theirs alone), so their numbers are checked against
    the defaults.yaml preset here: only the init (and VisualBERT's batch 128 with its epoch count) differ."""
    d, b = load_preset(direct), load_preset(base)
    assert d.head == b.head and d.train == {**b.train, **differ}
    assert d.data["task"] == b.data["task"]


def test_explicit_pool_options_win_over_the_presets_pooler_arrays(world, tmp_path):
    """hateclipper-cross sets image_pool / text_pool to CLIP's pooler arrays; --image-pool / --text-pool on the
    command line still win (the run records the arrays it read)."""
    out = tmp_path / "hc"
    invoke(heads, args(world, out, "--preset", "hateclipper-cross", "--epochs", "1", "--image-pool", "pooled"))
    feats = train_config(out)["features"]
    assert (feats["image"]["pool"], feats["text"]["pool"]) == ("pooled", "pooler")
    assert train_config(out)["input_spec"]["img_pooled_dim"] == 8


def test_pooled_vectors_narrower_than_the_regions_train_and_old_runs_still_evaluate(world, tmp_path):
    """An image set whose pooled array is narrower than its regions (a CLIP set: 768 projected beside 1024-wide
    patch regions; here pooler 6 beside regions 8) builds heads on the pooled width (this used to fail in the
    first step: mat1 and mat2 shapes cannot be multiplied); a run saved before the pooled widths were recorded
    still evaluates, its one width standing for both."""
    for head in ("concat", "cross", "image-only"):
        out = tmp_path / head
        invoke(heads, args(world, out, "--head", head, "--epochs", "1", "--image-pool", "pooler",
                           *(("--set", "proj_dim=4") if head == "cross" else ())))
        assert train_config(out)["input_spec"]["img_pooled_dim"] == 6
        ev = json.loads(invoke(heads, ["eval", out, "--store", world["store"], "--dataset", world["data"],
                                       "--device", "cpu"]))
        assert "label/auroc" in ev["metrics"]
    out = tmp_path / "old"
    invoke(heads, args(world, out, "--head", "concat", "--epochs", "1"))
    path = out / "seed_0" / "config.json"
    config = json.loads(path.read_text())
    for key in ("img_pooled_dim", "txt_pooled_dim"):
        assert config["input_spec"].pop(key) == 8
    path.write_text(json.dumps(config))
    ev = json.loads(invoke(heads, ["eval", out, "--store", world["store"], "--dataset", world["data"],
                                   "--device", "cpu"]))
    saved = json.loads((out / "seed_0" / "metrics.json").read_text())["test"]
    assert ev["metrics"] == pytest.approx(saved, abs=1e-6, nan_ok=True)


def test_hateclipper_presets_choose_the_epoch_by_batch_averaged_auroc(world, tmp_path):
    """hateclipper-cross monitors batch_auroc over runs of 16 dev rows (its batch size), as the reference's
    Lightning val/auroc: every epoch logs it, the best epoch is its argmax, the test split reports it beside
    the whole split's AUROC, and eval gives it again from the saved run."""
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "hc"
    invoke(heads, args(world, out, "--preset", "hateclipper-cross", "--epochs", "3", "--image-pool", "pooled",
                       "--text-pool", "cls", "--set", "proj_dim=4"))
    cfg = train_config(out)
    assert (cfg["train"]["monitor"], cfg["train"]["auroc_batch"], cfg["monitor"]) == ("batch_auroc", 16,
                                                                                       "label/batch_auroc")
    history = json.loads((out / "seed_0" / "history.json").read_text())
    scores = [row["val_label/batch_auroc"] for row in history]
    assert cfg["best_epoch"] == 1 + scores.index(max(scores))
    metrics = json.loads((out / "seed_0" / "metrics.json").read_text())["test"]
    with open(out / "seed_0" / "predictions_test.csv") as f:  # 16 test rows: one batch, the whole split
        rows = [line.strip().split(",") for line in f][1:]
    labels = {str(i): i % 2 for i in range(1, 81)}
    want = roc_auc_score([labels[r[0]] for r in rows], [float(r[1]) for r in rows])
    assert metrics["label/batch_auroc"] == pytest.approx(want, abs=1e-6) == pytest.approx(metrics["label/auroc"])
    ev = json.loads(invoke(heads, ["eval", out, "--store", world["store"], "--dataset", world["data"],
                                   "--device", "cpu"]))
    assert ev["metrics"]["label/batch_auroc"] == pytest.approx(metrics["label/batch_auroc"], abs=1e-6)


def test_another_head_than_the_presets_is_noted_not_silent(tmp_path):
    """--head other than the preset's drops its head options (they belong to its head); heads train says so,
    and for refnet how to hand them to its base."""
    import json as _json

    from heads.presets import head_switch_note, load_preset

    path = tmp_path / "mine.json"
    path.write_text(_json.dumps({"name": "mine", "source": "here", "head": "concat", "train": {"lr": 0.01},
                                 "head_cfg": {"hidden": [8]}}))
    p = load_preset(str(path))
    assert head_switch_note(p, "concat") is None
    assert head_switch_note(p, "cross") == ('note: preset mine\'s head options {"hidden": [8]} are for head concat; '
                                            "head cross starts from its own defaults (the preset's train settings "
                                            "still apply)")
    assert head_switch_note(p, "refnet").endswith("; to give them to refnet's base pass --set base=concat --set "
                                                  "base_cfg='{\"hidden\": [8]}'")
    bare = tmp_path / "bare.json"
    bare.write_text(_json.dumps({"name": "bare", "source": "here", "head": "concat", "train": {"lr": 0.01}}))
    assert head_switch_note(load_preset(str(bare)), "cross") is None  # nothing of the head's to lose


def test_dotted_set_keys_reach_into_nested_options_and_merge_with_the_preset():
    """``--set base_cfg.hidden=[256]`` sets one option of refnet's base head: refnet-mmimdb keeps its other base
    options (base concat); a dict given whole replaces the preset's; a dotted key under a plain value, or an empty
    name, is one line."""
    from cli.common import parse_settings
    from heads.presets import merge

    got = parse_settings(("base_cfg.hidden=[256]", "base_cfg.dropout=0.2", "zeta=0"))
    assert got == {"base_cfg": {"hidden": [256], "dropout": 0.2}, "zeta": 0}
    assert parse_settings(("base_cfg={\"hidden\": [8], \"activation\": \"gelu\"}", "base_cfg.hidden=[4]")) == \
        {"base_cfg": {"hidden": [4], "activation": "gelu"}}
    run = merge(load_preset("refnet-mmimdb"), {}, got, None)
    assert run["head_cfg"]["base"] == "concat" and run["head_cfg"]["zeta"] == 0
    assert run["head_cfg"]["base_cfg"] == {"hidden": [256], "dropout": 0.2}  # the preset's hidden [512] replaced
    assert merge(load_preset("refnet-mmimdb"), {}, parse_settings(("base_cfg.dropout=0.2",)), None)[
        "head_cfg"]["base_cfg"] == {"hidden": [512], "dropout": 0.2}  # the preset's hidden kept
    # a dict given whole replaces the preset's (so a preset's base options can be cleared for another base)
    cleared = merge(load_preset("refnet-mmimdb"), {}, parse_settings(("base=vilbert", "base_cfg={}")), None)
    assert cleared["head_cfg"]["base"] == "vilbert" and cleared["head_cfg"]["base_cfg"] == {}
    with pytest.raises(FeatstoreError) as e:
        parse_settings(("zeta=1", "zeta.x=2"))
    assert str(e.value) == ("--set 'zeta.x=2': zeta is set to a value, not a dict of options; give it whole "
                            "(--set zeta='{...}') or by dotted keys only")
    for bad in (".x=1", "x.=1", "a..b=2"):
        with pytest.raises(FeatstoreError) as e:
            parse_settings((bad,))
        assert str(e.value) == (f"--set {bad!r}: an empty option name; write KEY=VALUE or OPTION.KEY=VALUE, e.g. "
                                "--set base_cfg.hidden=[512]")
