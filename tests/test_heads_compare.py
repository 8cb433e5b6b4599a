"""compare_runs over real seed folders: mean +- std and t-tests equal numpy/scipy on the same numbers."""
from __future__ import annotations

import math

import json

import numpy as np
import pytest
import torch
from scipy import stats

from featstore.errors import FeatstoreError
from heads.compare import compare_runs, significance
from heads.data import TrainData
from heads.experiment import train_seeds
from heads.spec import Task, TaskSpec
from heads.train import TrainConfig


def _data():
    g = np.random.default_rng(0)
    n = 120
    y = g.integers(0, 2, n)
    img = torch.tensor(g.normal(size=(n, 8)) + y[:, None] * 0.8, dtype=torch.float32)
    txt = torch.tensor(g.normal(size=(n, 8)), dtype=torch.float32)
    u = g.permutation(n)
    splits = {"train": torch.tensor(u[:70]), "dev": torch.tensor(u[70:95]), "test": torch.tensor(u[95:])}
    return TrainData({"img_pooled": img, "txt_pooled": txt}, [f"x{i}" for i in range(n)],
                     {"label": torch.tensor(y)}, splits, TaskSpec([Task("label", "binary", 2, ["0", "1"])]),
                     meta={"features": {"image": {"name": "img", "version": "v1"}}})


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    d = _data()
    base = dict(lr=1e-2, epochs=3, batch_size=16, patience=0)
    train_seeds(TrainConfig(head="concat", head_cfg=dict(hidden=[8]), **base), d, [0, 1, 2], root / "concat")
    train_seeds(TrainConfig(head="image-only", head_cfg=dict(hidden=[8]), **base), d, [0, 1, 2], root / "image")
    train_seeds(TrainConfig(head="text-only", head_cfg=dict(hidden=[8]), **base), d, [5, 6], root / "text")
    return root


def _vals(folder, seeds, metric="label/auroc"):
    return [json.loads((folder / f"seed_{s}" / "metrics.json").read_text())["test"][metric] for s in seeds]


def test_rows_and_tests_equal_numpy_scipy(groups):
    cmp = compare_runs([groups / "concat", groups / "image", groups / "text"], split="test", metrics=["label/auroc"])
    a, b, c = _vals(groups / "concat", [0, 1, 2]), _vals(groups / "image", [0, 1, 2]), _vals(groups / "text", [5, 6])
    assert cmp.rows[0]["seeds"] == [0, 1, 2] and cmp.rows[0]["head"] == "concat"
    assert cmp.rows[0]["features"] == "img@v1"
    mean, std = cmp.rows[1]["metrics"]["label/auroc"]
    assert mean == pytest.approx(np.mean(b)) and std == pytest.approx(np.std(b, ddof=1))
    paired, welch = cmp.tests
    ref = stats.ttest_rel(b, a)
    assert paired["test"] == "paired" and paired["t"] == pytest.approx(ref.statistic, nan_ok=True)
    assert paired["p"] == pytest.approx(ref.pvalue, nan_ok=True)
    ref = stats.ttest_ind(c, a, equal_var=False)
    assert welch["test"] == "welch" and welch["t"] == pytest.approx(ref.statistic) and welch["p"] == pytest.approx(ref.pvalue)
    text = cmp.to_text()
    assert "concat" in text and "paired" in text and "welch" in text and f"{np.mean(a):.4f}" in text


def test_single_run_folder_and_default_metrics(groups):
    cmp = compare_runs([groups / "concat" / "seed_1"], split="dev")
    assert cmp.rows[0]["seeds"] == [1] and "label/accuracy" in cmp.metrics and "label/n" not in cmp.metrics
    assert cmp.tests == []


def test_significance_helper_matches_scipy():
    a, b = {0: 0.7, 1: 0.72, 2: 0.69}, {0: 0.75, 1: 0.74, 2: 0.78}
    name, t, p = significance(a, b)
    r = stats.ttest_rel([0.75, 0.74, 0.78], [0.7, 0.72, 0.69])
    assert name == "paired" and (t, p) == pytest.approx((r.statistic, r.pvalue))


def test_bad_compare_inputs(groups, tmp_path):
    with pytest.raises(FeatstoreError, match="no run folders"):
        compare_runs([])
    with pytest.raises(FeatstoreError, match="holds no metrics.json"):
        compare_runs([tmp_path])
    with pytest.raises(FeatstoreError, match="no metrics for split 'holdout'"):
        compare_runs([groups / "concat"], split="holdout")
    with pytest.raises(FeatstoreError, match="not in every run"):
        compare_runs([groups / "concat"], metrics=["label/bleu"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{oops")
    with pytest.raises(FeatstoreError, match="cannot read"):
        compare_runs([tmp_path / "bad"])


def test_unreadable_runs_are_exact_one_line_errors(tmp_path):
    from heads.compare import common_splits

    for call in (compare_runs, common_splits):  # both paths share one check and one reader
        with pytest.raises(FeatstoreError) as e:
            call([tmp_path])
        assert str(e.value) == (f"{tmp_path} holds no metrics.json nor seed_*/metrics.json; pass run folders of "
                                "`heads train`")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{oops")
    with pytest.raises(FeatstoreError) as e:
        common_splits([bad])
    assert str(e.value) == (f"cannot read {bad / 'metrics.json'} (Expecting property name enclosed in double quotes: "
                            "line 1 column 2 (char 1)); pass run folders written by `heads train`")
    with pytest.raises(FeatstoreError) as e:  # a run folder without its config.json
        compare_runs([bad])
    assert str(e.value) == (f"cannot read {bad / 'config.json'} ([Errno 2] No such file or directory: "
                            f"'{bad / 'config.json'}'); pass run folders written by `heads train`")


def test_verdict_says_which_side_is_better_in_words(groups):
    from heads.compare import verdict

    cmp = compare_runs([groups / "concat", groups / "image"], split="test", metrics=["label/auroc"])
    (t,) = cmp.tests
    a, b = _vals(groups / "concat", [0, 1, 2]), _vals(groups / "image", [0, 1, 2])
    winner, loser = ("image", "concat") if np.mean(b) > np.mean(a) else ("concat", "image")
    assert t["verdict"].startswith(f"{winner} is ")
    assert f" {loser}" in t["verdict"]
    assert ("significant, p < 0.05" in t["verdict"]) == (t["p"] < 0.05)
    assert t["verdict"] in cmp.to_text()
    assert verdict("a", "b", "label/auroc", -83.0, 1e-5) == "a is better than b (significant, p < 0.05)"
    assert verdict("a", "b", "label/auroc", 1.2, 0.3) == "b is ahead of a, not significant (p >= 0.05)"
    assert verdict("a", "b", "loss", 5.0, 0.001) == "a is better than b (significant, p < 0.05)"  # lower loss wins
    assert verdict("a", "b", "label/auroc", float("nan"), float("nan")) == \
        "no test (identical values, differences that do not vary, or too few)"


def test_differences_that_do_not_vary_have_no_test():
    """Every seed 0.1 apart: scipy's paired t is infinite and p 0, which would read as significant; there is no
    test. Varying differences are tested as scipy tests them."""
    from scipy import stats

    from heads.compare import significance, verdict

    a, b = {0: 0.50, 1: 0.60, 2: 0.70}, {0: 0.75, 1: 0.85, 2: 0.95}
    name, t, p = significance(a, b)
    assert name == "paired" and math.isnan(t) and math.isnan(p)
    assert verdict("a", "b", "label/auroc", t, p).startswith("no test")
    # 0.1 apart up to float rounding (scipy: t = 5e15, p = 4e-32), and Welch on two constant groups
    assert all(math.isnan(v) for v in significance({0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.2, 1: 0.3, 2: 0.4})[1:])
    assert all(math.isnan(v) for v in significance({0: 0.5, 1: 0.5}, {2: 0.6, 3: 0.6})[1:])
    c = {0: 0.61, 1: 0.64, 2: 0.90}
    want = stats.ttest_rel([c[s] for s in (0, 1, 2)], [a[s] for s in (0, 1, 2)])
    assert significance(a, c)[1:] == pytest.approx((want.statistic, want.pvalue))


def test_against_best_and_every_split(groups):
    from heads.compare import compare_splits

    tables = compare_splits([groups / "concat", groups / "image", groups / "text"], metrics=["label/auroc"],
                            against="best")
    assert [c.split for c in tables] == ["dev", "test"]
    for c in tables:
        means = [r["metrics"]["label/auroc"][0] for r in c.rows]
        best = c.rows[int(np.argmax(means))]["name"]
        assert c.reference.startswith(best) and all(t["a"] == best for t in c.tests)


def test_score_of_runs_saved_before_task_groups_is_noted(groups, tmp_path):
    """A run saved before task groups (its task_spec has no "groups") averaged every task into ``score``; next
    to a run whose spec groups tasks, comparing ``score`` says the two are not the same quantity."""
    import shutil

    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(groups / "concat", old)
    shutil.copytree(groups / "image", new)
    for folder, change in ((old, lambda spec: spec.pop("groups", None)),
                           (new, lambda spec: spec.update(groups={"C": ["C_humour", "C_sarcasm"]}))):
        for cfg in folder.glob("seed_*/config.json"):
            config = json.loads(cfg.read_text())
            change(config["task_spec"])
            cfg.write_text(json.dumps(config))
    cmp = compare_runs([old, new], split="test", metrics=["score", "label/auroc"])
    assert cmp.notes == ["score is not the same quantity in every run: old (saved before task groups) average "
                         "every task, new each label key once (a group such as C by its macro F1); compare the "
                         "tasks' own metrics instead"]
    assert cmp.to_text().endswith("note: " + cmp.notes[0])
    assert compare_runs([old, new], split="test", metrics=["label/auroc"]).notes == []
    assert compare_runs([groups / "concat", new], split="test", metrics=["score"]).notes == []  # both know groups
