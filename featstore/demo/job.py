"""The README's main job on the embedded default: build the demo dataset, extract image and text features
with the small real backbones that install with the project, and (with heads) train a fusion head and both
unimodal baselines on the cached features."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

DEMO_IMAGE = dict(extractor="grid", name="demo-grid", config={"weights": "demo"})
DEMO_TEXT = dict(extractor="bert", name="demo-minilm", config={"weights": "demo", "layers": [3], "max_length": 32})


def run_demo(store_url: str, data_dir: str, *, with_heads: bool = True, progress: bool = True) -> Iterator[str]:
    from ..datasets import load_dataset
    from ..runner import ExtractOptions, run_extraction
    from ..store import open_store
    from . import build_demo_dataset

    folder = build_demo_dataset(data_dir)
    ds = load_dataset(folder)
    yield f"demo dataset: {len(ds.samples)} samples, {len(ds.image_keys())} photos in {Path(folder).resolve()}"
    st = open_store(store_url, create=True)
    opts = ExtractOptions(batch_size=16, num_workers=0, progress=progress, chunk_rows=64)
    refs = {}
    for spec in (DEMO_IMAGE, DEMO_TEXT):
        summary = run_extraction(st, ds, spec["extractor"], name=spec["name"], extractor_config=spec["config"],
                                 options=opts)
        refs[spec["name"]] = f"{summary.name}@{summary.version}"
        yield from summary.lines()
    if with_heads:
        from heads.demo import train_demo_heads

        yield from train_demo_heads(st, ds, refs[DEMO_IMAGE["name"]], refs[DEMO_TEXT["name"]], progress=progress)
