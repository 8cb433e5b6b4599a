"""The dataset read options every `--dataset` command takes (featstore.datasets.options.ReadOptions through
cli.common.dataset_read_options): --dataset-split, --image-root, --id-col / --image-col / --text-col /
--label-cols and --allow-empty-text, which the readers' error hints name. Each is checked by what the command
then reads: the stored keys and rows, the trained run's splits and labels."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.cli_helpers import BERT, CAPTIONS, extract_args, invoke, make_hm_folder, make_image, one_line_error

READ_FLAGS = ["--dataset-split", "--image-root", "--id-col", "--image-col", "--text-col", "--label-cols",
              "--allow-empty-text"]  # written from the readers' hints, not read from ReadOptions


@pytest.mark.parametrize("group, command", [("featstore", "extract"), ("featstore", "preflight"),
                                            ("featstore", "cache-images"), ("featstore", "import"),
                                            ("featstore", "neighbors"), ("featstore", "confounders"),
                                            ("featstore", "map"), ("heads", "train"), ("heads", "eval"),
                                            ("heads", "predict"), ("heads", "sweep")])
def test_every_dataset_command_takes_the_read_options(group, command):
    from cli.featstore_cli import main as featstore
    from cli.heads_cli import main as heads

    out = invoke(featstore if group == "featstore" else heads, [command, "--help"])
    for flag in READ_FLAGS:
        assert flag in out, (command, flag)


def _custom_csv(root: Path) -> Path:
    """A generic CSV with its own column names: key, picture (under pics/), caption, hateful, part."""
    rows = []
    for i, text in enumerate(CAPTIONS * 2):
        make_image(root / "pics" / f"{i % 6:05d}.png", i % 6)
        rows.append({"key": f"m{i}", "picture": f"{i % 6:05d}.png", "caption": text + f" {i}", "hateful": i % 2,
                     "split": "train" if i < 8 else "dev"})
    path = root / "data" / "memes.csv"
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_columns_and_image_root_reach_the_reader(tmp_path):
    from cli.featstore_cli import main as featstore
    from cli.heads_cli import main as heads
    from featstore.store import open_store

    path, store = _custom_csv(tmp_path), tmp_path / "store"
    cols = ["--format", "generic", "--id-col", "key", "--image-col", "picture", "--text-col", "caption",
            "--label-cols", "hateful", "--image-root", tmp_path / "pics"]
    line = one_line_error(featstore, extract_args(path, store, "bert"))
    assert line.startswith(f"error: dataset {path}: 1 problem: missing column")
    assert line.endswith("(fix the file or name the columns with --id-col/--image-col/--text-col/--label-cols)")
    invoke(featstore, extract_args(path, store, "bert", *cols))
    invoke(featstore, extract_args(path, store, "grid", *cols))
    st = open_store(store)
    assert [str(k) for k in st.open("bert").keys] == [f"m{i}" for i in range(12)]
    assert sorted(str(k) for k in st.open("grid").keys) == [f"{i:05d}" for i in range(6)]  # valid rows: all found
    out = invoke(heads, ["train", "--dataset", path, "--store", store, "--image", "grid", "--text", "bert",
                         "--head", "concat", "--epochs", 1, "--quiet", "--out", tmp_path / "run", *cols])
    assert "training head concat on 12 samples" in out
    config = json.loads((tmp_path / "run" / "seed_0" / "config.json").read_text())
    assert [t["name"] for t in config["task_spec"]["tasks"]] == ["hateful"]
    with open(tmp_path / "run" / "seed_0" / "predictions_dev.csv") as f:
        assert [r["id"] for r in csv.DictReader(f)] == [f"m{i}" for i in range(8, 12)]


def test_dataset_split_and_allow_empty_text(tmp_path):
    from cli.featstore_cli import main as featstore
    from featstore.store import open_store

    data = make_hm_folder(tmp_path / "data")
    rows = [json.loads(line) for line in (data / "dev_seen.jsonl").read_text().splitlines()]
    rows[0]["text"] = ""
    (data / "dev_seen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = tmp_path / "store"
    line = one_line_error(featstore, extract_args(data, store, "bert"))
    assert line == (f"error: dataset {data}: 1 problem: dev_seen.jsonl row 1: empty text (fix the rows or pass "
                    "--allow-empty-text)")
    invoke(featstore, extract_args(data, store, "bert", "--dataset-split", "dev_seen", "--allow-empty-text"))
    keys = [str(k) for k in open_store(store).open("bert").keys]
    assert keys == [str(r["id"]) for r in rows]  # dev_seen's 12 rows only, the empty text among them
    line = one_line_error(featstore, extract_args(data, store, "bert", "--dataset-split", "dev_unseen"))
    assert line == (f"error: dataset {data}: no split file dev_unseen.jsonl; choose --dataset-split from: train, "
                    "dev_seen, test_seen")


def test_sweep_reads_the_dataset_with_the_options(tmp_path):
    from cli.featstore_cli import main as featstore
    from cli.heads_cli import main as heads

    path, store = _custom_csv(tmp_path), tmp_path / "store"
    cols = ["--format", "generic", "--id-col", "key", "--image-col", "picture", "--text-col", "caption",
            "--label-cols", "hateful", "--image-root", tmp_path / "pics"]
    invoke(featstore, extract_args(path, store, "bert", *cols))
    out = invoke(heads, ["sweep", "--dataset", path, "--store", store, "--text", "bert", "--head", "text-only",
                         "--grid", "epochs=1", "--seeds", "0", "--out", tmp_path / "sweep", *cols])
    assert "1 bert text-only default: dev=" in out, out
    with open(tmp_path / "sweep" / "leaderboard.csv") as f:
        board = list(csv.DictReader(f))
    assert [(r["head"], r["status"]) for r in board] == [("text-only", "ok")]
    spec = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert spec["data"]["read"]["id_col"] == "key" and spec["data"]["read"]["label_cols"] == "hateful"
