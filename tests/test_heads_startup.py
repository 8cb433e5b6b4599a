"""`heads --help` and `heads list` start without PyTorch Geometric (seconds to import; only the gnn head needs it)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

RUN_CLI = """
    import sys
    from click.testing import CliRunner
    from cli.heads_cli import main
    for args in {args!r}:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        print(res.output)
    print("MODULES", " ".join(sorted({{m.split('.')[0] for m in sys.modules}})))
"""


def _run(args) -> tuple:
    """``heads ARGS...`` (each list in ``args``) in a fresh interpreter: (output, top-level modules imported)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN_CLI.format(args=args))], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out, _, mods = proc.stdout.rpartition("MODULES ")
    return out, set(mods.split())


@pytest.mark.slow
def test_heads_help_and_list_do_not_import_torch_geometric():
    out, mods = _run([["--help"], ["list"]])
    assert "torch_geometric" not in mods and "torch" in mods
    # `heads list` did list every head, gnn included, and still counted the GPU-sized ones
    assert "gnn: " in out and "vilbert: " in out
    assert "(default size: " in out.split("vilbert: ")[1].split("\n", 2)[1]


def test_heads_list_skips_only_small_heads():
    """A head `heads list` does not count (it would import an optional package) must be small at its defaults,
    so skipping it hides no size note; counting it here does build it (PyG imported in this process)."""
    from heads.presets import GPU_SIZED, NOT_COUNTED, parameter_count, size_note

    for head in NOT_COUNTED:
        assert size_note(head) is None
        assert 0 < parameter_count(head) < GPU_SIZED / 10
    assert "torch_geometric" in sys.modules
