"""benchmarks/gpu_check.py --dry-run: every step of the GPU check runs on the CPU at tiny sizes and writes its
table, so the script cannot rot before a GPU is lent; without a GPU the real run refuses in one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_table(tmp_path):
    out = tmp_path / "gpu.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "GPU check (DRY RUN: CPU, tiny sizes)" in text and "FAIL" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    steps = [r.split(" | ")[0][2:] for r in rows]
    assert sum(s.startswith("test test_") for s in steps) == 7  # every cuda-marked test of every file (tests/test_cuda_paths.py 5, test_gpu_check_cuda.py 2)
    assert "test test_pinned_uint8_pixels_normalised_on_the_device_equal_the_cpus" in steps
    for name in ("extract dinov2-multilayer (tiny)", "extract grid (tiny)", "extract roi (tiny)"):
        assert name in steps
    assert any(s.startswith("vilbert head (tiny), 48 + 8 samples") for s in steps)
    assert any(s.startswith("confounder search, 2,000 x 512-d, CPU index") for s in steps)
    assert "planted recall 1.0000" in text and "NCCL under torchrun" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the real run would start")
def test_without_a_gpu_the_real_run_is_a_one_line_error():
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: no GPU is visible to torch; run on a CUDA machine, or pass --dry-run to "
                                   "check the script on the CPU")


def test_a_step_still_running_at_the_budget_is_stopped_and_fails_the_check(tmp_path, monkeypatch):
    import time

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    ran = []

    def step_slow(sizes, work):
        try:
            time.sleep(30)
        except Exception:  # a step's own handler must not swallow the budget
            ran.append("swallowed")
        return []

    def step_after(sizes, work):
        ran.append("after")
        return []

    monkeypatch.setattr(gpu_check, "STEPS", (step_slow, step_after))
    t0 = time.perf_counter()
    rows = gpu_check.run_steps(gpu_check.sizes_for(True), 1, tmp_path)
    assert time.perf_counter() - t0 < 10 and ran == []
    assert [(r.step, r.status) for r in rows] == [("slow", "FAIL: time: still running at the 1 s budget"),
                                                  ("after", "not run: time budget of 1 s spent")]
    assert all(r.failed for r in rows)
