"""clip-retrieval's loop, the one a user writes instead of the pipeline, and the two timed in fresh processes.

``clip_retrieval_loop``: DataLoader workers decode and preprocess, a batched forward, a synchronous copy back
(``.cpu().numpy()``, inside ``forward``) and every batch's arrays written with ``np.save`` before the next one.

``fresh_pair``: the pipeline (``run_extraction`` into a new store) and that loop, each in a process of its
own started for the one run (``python benchmarks/_clip_loop.py pipeline|clip SPEC``), one after the other.
Both processes build the extractor from the same config and warm up the same way (one ``run_extraction``
over the first images into a separate feature set), then time one pass over every image; the child prints
its rate as the last line of its output, a JSON object. Timed in the benchmark's own process instead, the
second of two back-to-back runs inherits the first's thread pools, allocator and worker state, which a
user's separate script does not (session 7, dinov2-multilayer ViT-S/14 on 2 cores: in-process pairs 0.98x,
fresh-process pairs 11 of 12 >= 1x, median 1.04x).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from _common import Stopwatch

import torch  # noqa: E402

from featstore.errors import FeatstoreError  # noqa: E402
from featstore.runner import ExtractOptions  # noqa: E402

KINDS = ("pipeline", "clip")
SPEC_KEYS = ("extractor", "config", "dataset", "batch_size", "workers", "device", "n_warm", "workdir")


class _DecodeItems(torch.utils.data.Dataset):
    """clip-retrieval's reader: each worker opens, decodes and preprocesses one image."""

    def __init__(self, ext, paths: Sequence[str]):
        self.ext, self.paths = ext, list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from featstore.extractors.images import load_image

        return self.ext.preprocess(load_image(self.paths[i], max_pixels=ExtractOptions().max_pixels))


def clip_retrieval_loop(ext, paths: Sequence[str], out_dir: Path, batch_size: int, workers: int,
                        device: torch.device) -> None:
    """The loop a user writes instead (clip-retrieval's ``inference``): DataLoader workers decode, a batched
    forward, a synchronous copy back (``.cpu().numpy()``, inside ``forward``) and every batch's arrays
    written with ``np.save`` before the next batch starts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(_DecodeItems(ext, paths), batch_size=batch_size, num_workers=workers,
                                         collate_fn=ext.collate, pin_memory=device.type == "cuda")
    with torch.inference_mode():
        for i, batch in enumerate(loader):
            for name, arr in ext.forward(batch).items():
                np.save(out_dir / f"{i:05d}_{name}.npy", arr)


# -------------------------------------------------------------------------------------------- fresh processes
def pair_spec(extractor: str, config: Dict[str, object], dataset_source: str, batch_size: int, workers: int,
              device: torch.device, n_warm: int, workdir: Path) -> Dict[str, object]:
    """What both processes of a pair run: the extractor and its config (JSON values), the dataset file,
    the loader's batch size and workers, the device, the warm-up images and a folder for their outputs."""
    spec = dict(extractor=extractor, config=dict(config), dataset=str(dataset_source), batch_size=batch_size,
                workers=workers, device=str(device), n_warm=n_warm, workdir=str(workdir))
    try:
        json.dumps(spec)
    except (TypeError, ValueError) as err:  # here, in the caller, not in a child that could not be given it
        raise FeatstoreError(f"{extractor}'s config cannot go to a fresh process as JSON ({err}); pass plain "
                             f"strings, numbers, lists and dicts") from None
    return spec


def fresh_pair(round_i: int, spec: Dict[str, object]) -> Tuple[float, float]:
    """(pipeline img/s, clip-retrieval loop img/s), each timed in a fresh process: the pipeline first in
    even rounds, the loop first in odd ones, so the host's drift cannot tilt their ratio one way."""
    order = KINDS if round_i % 2 == 0 else KINDS[::-1]
    rates = {kind: _run_child(kind, spec) for kind in order}
    return rates["pipeline"], rates["clip"]


def _run_child(kind: str, spec: Dict[str, object]) -> float:
    """One fresh process timing ``kind``; its img/s, or FeatstoreError naming the kind, the exit status and
    the child's last line of output."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), kind, json.dumps(spec)],
                          capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).strip().splitlines() or ["(no output)"]
    if proc.returncode != 0:
        raise FeatstoreError(f"the fresh {kind} process for {spec['extractor']} failed (exit {proc.returncode}): "
                             f"{lines[-1]}")
    try:
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["ips"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise FeatstoreError(f"the fresh {kind} process for {spec['extractor']} printed no rate: {lines[-1]}") from None


def child_main(kind: str, spec: Dict[str, object]) -> Dict[str, float]:
    """In the fresh process: build, warm up, time ``kind`` once over every image; ``{"ips", "seconds", "n"}``."""
    from featstore.datasets import load_dataset
    from featstore.extractors import create_extractor
    from featstore.runner import run_extraction
    from featstore.store import open_store

    if kind not in KINDS or sorted(spec) != sorted(SPEC_KEYS):
        raise FeatstoreError(f"child {kind!r}: expected one of {', '.join(KINDS)} and a spec with keys "
                             f"{', '.join(SPEC_KEYS)}; build it with pair_spec")
    name, device = str(spec["extractor"]), torch.device(str(spec["device"]))
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(spec["config"]).items()}
    ext, dataset = create_extractor(name, **config), load_dataset(str(spec["dataset"]))
    opts = ExtractOptions(batch_size=int(spec["batch_size"]), num_workers=int(spec["workers"]), device=device.type,
                          progress=False)
    out = Path(tempfile.mkdtemp(prefix=f"fresh-{kind}-", dir=str(spec["workdir"])))
    try:
        store = open_store(out / "store", create=True)
        warm = dataclasses.replace(dataset, samples=list(dataset.samples[: int(spec["n_warm"])]))
        run_extraction(store, warm, name, name="warmup", extractor=ext, options=opts)
        with Stopwatch(device) as sw:
            if kind == "pipeline":
                n = run_extraction(store, dataset, name, name="timed", extractor=ext, options=opts).n_written
            else:
                paths = [s.image_path for s in dataset.samples]
                clip_retrieval_loop(ext, paths, out / "clip", int(spec["batch_size"]), int(spec["workers"]), device)
                n = len(paths)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if n != len(dataset.samples):
        raise FeatstoreError(f"the {kind} run wrote {n} of {len(dataset.samples)} images")
    return {"ips": n / sw.seconds, "seconds": sw.seconds, "n": n}


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python {Path(__file__).name} {{{'|'.join(KINDS)}}} SPEC_JSON (started by fresh_pair)",
              file=sys.stderr)
        return 2
    try:
        print(json.dumps(child_main(argv[0], json.loads(argv[1]))), flush=True)
    except (FeatstoreError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(_main(sys.argv[1:]))
