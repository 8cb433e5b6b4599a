"""A ``heads train`` run as an ``--init-checkpoint``: its folder, or the ``model.safetensors`` beside its
``config.json``, starts the same head whole (every tensor, the output layer included), for any head.

The head is built from the run's ``head_config`` (updated with the options given now) for the data given now,
and the run's tensors are copied strictly: the report lists every one as used, under "heads run <head>"; a
tensor of another shape (other feature widths, another label count, other sizes) is a one-line error naming
it. Other checkpoint formats (MMF, Facebook, Hugging Face, Hate-CLIPper, RGCL) have their own readers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from featstore.errors import FeatstoreError

from .checkpoints import LoadReport
from .runs import CONFIG, WEIGHTS, read_config
from .spec import InputSpec, TaskSpec


RUN_KEYS = ("format_version", "head", "input_spec", "task_spec")  # what a heads run's config.json holds


def run_folder(path) -> Optional[Path]:
    """The run folder ``path`` names (the folder, or its ``model.safetensors``), or None for anything else (a
    Hugging Face folder has a config.json and a model.safetensors too, without a run's keys)."""
    p = Path(str(path))
    run = p if p.is_dir() else p.parent if p.name == WEIGHTS else None
    if run is None or not (run / CONFIG).is_file() or not (run / WEIGHTS).is_file():
        return None
    try:
        config = json.loads((run / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return run if isinstance(config, dict) and all(k in config for k in RUN_KEYS) else None


def head_from_run(head: str, inputs: InputSpec, task_spec: TaskSpec, head_cfg: Dict[str, Any],
                  path) -> Tuple[torch.nn.Module, LoadReport]:
    """(``head`` built from the run at ``path`` for ``inputs`` / ``task_spec``, its report)."""
    from safetensors.torch import load_file

    from .models import create_head

    run = run_folder(path)
    config = read_config(run)
    if config.get("head") != head:
        raise FeatstoreError(f"checkpoint {path} is a heads run of head {config.get('head')!r}, not {head!r}; pass "
                             f"--head {config.get('head')}")
    model = create_head(head, inputs, task_spec, **{**config.get("head_config", {}), **head_cfg})
    state = load_file(str(run / WEIGHTS))
    have = model.state_dict()
    odd = next((k for k in state if k in have and tuple(state[k].shape) != tuple(have[k].shape)), None)
    missing, unexpected = sorted(set(have) - set(state)), sorted(set(state) - set(have))
    if odd or missing or unexpected:
        why = (f"tensor {odd} is {tuple(state[odd].shape)} there and {tuple(have[odd].shape)} here" if odd else
               f"tensor {(missing or unexpected)[0]} is {'missing there' if missing else 'not in this head'}")
        raise FeatstoreError(f"checkpoint {path} (a heads run) does not fit this head: {why}; pass the run's "
                             f"feature sets, task and head options ({run / CONFIG})")
    model.load_state_dict(state)
    report = LoadReport(str(path))
    for key in state:
        report.add("used", f"heads run {head}", key)
    report.note(f"a heads run: head {head!r} loaded whole from {run / WEIGHTS}")
    return model, report
