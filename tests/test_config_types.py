"""Config values are type-checked against their dataclass fields before anything is built or written
(issue 12 item 10): `--set max_length=abc`, `--set layers=abc`, `heads train --set hidden=abc`, `--seeds abc`,
`--device tpu` are one line each, and a rejected extraction leaves no version behind."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple

import pytest

from cli.featstore_cli import main as featstore
from cli.heads_cli import main as heads
from cli_helpers import build_world, extract_args, one_line_error, tree
from featstore.config_types import check_values
from featstore.errors import FeatstoreError
from featstore.extractors import create_extractor
from heads.train import TrainConfig


@dataclass
class Knobs:
    n: int = 3
    lr: float = 0.1
    flag: bool = False
    name: str = "x"
    maybe: Optional[int] = None
    layers: Tuple[int, ...] = (6,)
    sizes: List[int] = field(default_factory=lambda: [1, 2])
    pair: Tuple[int, str] = (1, "a")
    mode: Literal["a", "b"] = "a"
    extra: Dict[str, float] = field(default_factory=dict)


@pytest.mark.parametrize("values", [
    {"n": 4}, {"lr": 1}, {"lr": 0.5}, {"flag": True}, {"name": "y"}, {"maybe": None}, {"maybe": 2},
    {"layers": [6, 12]}, {"layers": (1,)}, {"sizes": []}, {"pair": [2, "b"]}, {"mode": "b"}, {"extra": {"a": 1}},
])
def test_values_of_the_right_type_pass(values):
    check_values(Knobs, values, "test")


@pytest.mark.parametrize("values, line", [
    ({"n": "abc"}, "test option n='abc' must be an int; e.g. --set n=3"),
    ({"n": True}, "test option n=True must be an int; e.g. --set n=3"),
    ({"n": 1.5}, "test option n=1.5 must be an int; e.g. --set n=3"),
    ({"lr": "fast"}, "test option lr='fast' must be a float; e.g. --set lr=0.1"),
    ({"flag": 1}, "test option flag=1 must be a bool (true or false); e.g. --set flag=false"),
    ({"maybe": "x"}, "test option maybe='x' must be an int or None; e.g. --set maybe=VALUE"),
    ({"layers": "abc"}, "test option layers='abc' must be a list of int; e.g. --set layers='[6]'"),
    ({"layers": [6, "x"]}, "test option layers=[6, 'x'] must be a list of int; e.g. --set layers='[6]'"),
    ({"pair": [1]}, "test option pair=[1] must be a list of int; e.g. --set pair='[1, \"a\"]'"),
    ({"mode": "c"}, "test option mode='c' must be one of 'a', 'b'; e.g. --set mode=a"),
    ({"extra": [1]}, "test option extra=[1] must be a dict; e.g. --set extra='{}'"),
])
def test_values_of_the_wrong_type_are_one_line(values, line):
    with pytest.raises(FeatstoreError) as e:
        check_values(Knobs, values, "test")
    assert str(e.value) == line


def test_extractor_and_train_configs_are_checked():
    with pytest.raises(FeatstoreError, match=r"^extractor 'bert' option max_length='abc' must be an int"):
        create_extractor("bert", weights="demo", max_length="abc")
    with pytest.raises(FeatstoreError, match=r"^extractor 'bert' option layers='abc' must be"):
        create_extractor("bert", weights="demo", layers="abc")
    with pytest.raises(FeatstoreError, match=r"^train option epochs='3' must be an int"):
        TrainConfig.from_dict({"epochs": "3"})
    assert TrainConfig.from_dict({"epochs": 3, "lr": 1}).lr == 1


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("config_types"))


def test_cli_extract_bad_set_values_write_nothing(world, tmp_path):
    store = tmp_path / "store"
    line = one_line_error(featstore, extract_args(world["data"], store, "bert", "--set", "max_length=abc"))
    assert line == "error: extractor 'bert' option max_length='abc' must be an int; e.g. --set max_length=128"
    line = one_line_error(featstore, extract_args(world["data"], store, "grid", "--device", "tpu"))
    assert line == "error: --device 'tpu' is not a device this toolkit runs on; pass auto, cpu, cuda or cuda:N"
    assert not store.exists() or not any(p.name == "version.json" for p in store.rglob("*")), tree(store)


def test_cli_train_bad_values_are_one_line(world, tmp_path):
    base = ["train", "--store", world["store"], "--dataset", world["data"], "--image", "grid", "--text", "bert",
            "--quiet", "--epochs", 1, "--out", tmp_path / "run"]
    line = one_line_error(heads, [*base, "--head", "concat", "--device", "cpu", "--set", "hidden=abc"])
    assert line.startswith("error: head 'concat' option hidden='abc' must be ")
    line = one_line_error(heads, [*base, "--head", "concat", "--device", "cpu", "--seeds", "abc"])
    assert line == "error: --seeds 'abc' is not a comma-separated list of integers; pass e.g. --seeds 0,1,2"
    line = one_line_error(heads, [*base, "--head", "concat", "--device", "tpu"])
    assert line == "error: --device 'tpu' is not a device this toolkit runs on; pass auto, cpu, cuda or cuda:N"
    assert not (tmp_path / "run" / "summary.json").exists()


def _swap_texts(src, dst):
    """A copy of the dataset folder whose train rows 1 and 2 swap texts (same ids, other captions)."""
    import shutil

    shutil.copytree(src, dst)
    lines = (dst / "train.jsonl").read_text().splitlines()
    import json as _json
    a, b = _json.loads(lines[0]), _json.loads(lines[2])
    a["text"], b["text"] = b["text"], a["text"]
    lines[0], lines[2] = _json.dumps(a), _json.dumps(b)
    (dst / "train.jsonl").write_text("\n".join(lines) + "\n")
    return dst


def test_training_on_a_changed_manifest_warns_for_each_feature_set(world, tmp_path):
    """Issue 12 item 11: the same ids moved to other texts are joined silently unless the recorded manifest
    fingerprint is compared; `heads train` says so for both feature sets, and the unchanged dataset is quiet."""
    from cli_helpers import invoke

    moved = _swap_texts(world["data"], tmp_path / "moved")
    args = ["train", "--store", world["store"], "--image", "grid", "--text", "bert", "--head", "concat",
            "--quiet", "--epochs", 1, "--device", "cpu"]
    out = invoke(heads, [*args, "--dataset", moved, "--out", tmp_path / "a"])
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert [w.split(" feature set ")[0] for w in warnings] == ["warning: image", "warning: text"], out
    assert all("was extracted from another version of this dataset" in w for w in warnings)
    out = invoke(heads, [*args, "--dataset", world["data"], "--out", tmp_path / "b"])
    assert "warning: " not in out


def test_train_rows_without_a_label_are_counted_in_the_summary(world, tmp_path):
    """Issue 12 item 14: a train row without a label used to load silently; the run now says how many."""
    import json as _json
    import shutil

    from cli_helpers import invoke

    data = tmp_path / "unlabelled"
    shutil.copytree(world["data"], data)
    lines = [_json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    for row in lines[:3]:
        del row["label"]
    (data / "train.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in lines))
    args = ["train", "--store", world["store"], "--image", "grid", "--text", "bert", "--head", "concat",
            "--quiet", "--epochs", 1, "--device", "cpu"]
    out = invoke(heads, [*args, "--dataset", data, "--out", tmp_path / "a"])
    assert ("note: train rows without a label for any task: 3 (not trained on; check the dataset's label column)"
            in out.splitlines()), out
    out = invoke(heads, [*args, "--dataset", world["data"], "--out", tmp_path / "b"])
    assert "without a label" not in out


def test_cli_feeds_reach_the_task_spec(world, tmp_path):
    """`--feeds` is applied where the task spec is derived (build_train_data): a label feeding itself is the
    cascade's one-line cycle error, before --out is written."""
    line = one_line_error(heads, ["train", "--store", world["store"], "--dataset", world["data"], "--image", "grid",
                                  "--text", "bert", "--head", "concat", "--quiet", "--epochs", 1, "--device", "cpu",
                                  "--feeds", "label>label", "--out", tmp_path / "run"])
    assert line == ("error: task feeds form a cycle (label -> label); feed each task from tasks that do not "
                    "depend on it")
    assert not (tmp_path / "run").exists()
