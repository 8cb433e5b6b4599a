"""`heads train` CPU threads (heads.threads: --threads N takes effect and is restored, auto measures, the
summary names the count) and start-up (`heads --help`, the commands' help and non-GNN heads never import PyG)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from cli.heads_cli import main as heads
from cli_helpers import one_line_error
from featstore.errors import FeatstoreError
from heads import threads as heads_threads
from heads.experiment import train_heads
from heads.threads import ThreadChoice, parse_threads, resolve_threads
from heads.train import TrainConfig, train
from test_extract_compute import two_threads  # noqa: F401  (fixture)
from test_trim import CONFIGS, _data

VB = CONFIGS["singlestream"][1]


@pytest.mark.parametrize("n", [1, 2])
def test_threads_option_takes_effect_during_training_and_is_restored(two_threads, n):
    seen = []
    cfg = TrainConfig(head="singlestream", head_cfg=VB, epochs=2, batch_size=4, patience=0, threads=n)
    res = train(cfg, _data(), progress=False, on_epoch=lambda row, monitor: seen.append(torch.get_num_threads()))
    assert seen == [n, n]
    assert torch.get_num_threads() == 2
    assert res.threads == ThreadChoice(n, "given")
    assert res.threads.describe() == f"{n} thread{'s' if n > 1 else ''} (--threads)"


def test_auto_times_one_thread_and_every_core(two_threads, monkeypatch):
    for var in heads_threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(heads_threads, "available_cores", lambda: 2)
    cfg = TrainConfig(head="singlestream", head_cfg=VB, batch_size=4)
    choice = resolve_threads(cfg, _data())
    assert choice.how == "auto" and set(choice.step_s) == {1, 2}
    assert all(s > 0 for s in choice.step_s.values())
    fastest = min(choice.step_s, key=choice.step_s.get)
    assert choice.threads == (1 if choice.step_s[1] <= choice.step_s[fastest] * 1.05 else fastest)
    assert choice.describe().startswith(f"{choice.threads} thread") and "auto, measured 1: " in choice.describe()
    assert torch.get_num_threads() == 2  # probing restored the caller's count
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_threads(cfg, _data()) == ThreadChoice(2, "environment")


def test_summary_names_the_threads_used(two_threads, tmp_path):
    cfg = TrainConfig(head="singlestream", head_cfg=VB, epochs=1, batch_size=4, patience=0, threads=1)
    lines = list(train_heads(cfg, _data(), tmp_path / "run", [0, 1], progress=False))
    assert "threads: 1 thread (--threads)" in lines


def test_bad_threads_are_one_line_errors():
    msg = "threads={!r} is neither 'auto' nor a positive count; pass --threads auto or e.g. --threads 1"
    for text, value in (("0", 0), ("many", "many"), ("-2", "-2")):
        with pytest.raises(FeatstoreError) as err:
            parse_threads(text)
        assert str(err.value) == msg.format(value)
    assert parse_threads("AUTO") == "auto" and parse_threads(" 3 ") == 3
    line = one_line_error(heads, ["train", "--store", "nowhere", "--dataset", "nowhere", "--head", "concat", "--out", "x",
                                  "--threads", "0"])
    assert line == "error: " + msg.format(0)


def _modules_after(code: str) -> set:
    """Run ``code`` in a fresh interpreter; the top-level module names it imported."""
    script = textwrap.dedent(code) + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


@pytest.mark.slow
def test_heads_help_and_other_heads_do_not_import_pyg():
    mods = _modules_after("""
        from click.testing import CliRunner
        from cli.heads_cli import main
        for args in (["--help"], ["train", "--help"], ["eval", "--help"], ["compare", "--help"]):
            res = CliRunner().invoke(main, args)
            assert res.exit_code == 0, res.output
        from heads.models import create_head
        from heads.spec import InputSpec, Task, TaskSpec
        spec = TaskSpec([Task("label", "binary", 2)])
        create_head("concat", InputSpec(img_dim=4, txt_dim=4), spec)
        create_head("singlestream", InputSpec(img_dim=4, txt_dim=4, img_regions=2, txt_tokens=3), spec, hidden=8, heads=2)
    """)
    assert "heads" in mods and "torch_geometric" not in mods
    # the gnn head itself does load it (so the check above can fail)
    mods = _modules_after("""
        from heads.models import create_head
        from heads.spec import InputSpec, Task, TaskSpec
        create_head("gnn", InputSpec(img_dim=4, txt_dim=4, img_regions=2, txt_tokens=3), TaskSpec([Task("y", "binary", 2)]))
    """)
    assert "torch_geometric" in mods
