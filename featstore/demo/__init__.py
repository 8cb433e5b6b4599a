"""The embedded demo dataset: real photos that ship with scikit-image, with hand-written captions.

It is laid out exactly like Hateful Memes (``img/NNNNN.png`` + ``train.jsonl`` / ``dev_seen.jsonl`` /
``test_seen.jsonl`` with integer ids that drop the file name's leading zeros) and built the way Hateful
Memes is built, from confounders: every caption appears twice, once with its own photo (label 0: the text
fits the image) and once with another photo (label 1: mismatch). Each photo also appears with a caption of
its own and a foreign one, so neither the text alone nor the image alone predicts the label: only a
multimodal model can. Paraphrases 0 and 1 of each caption train; paraphrase 2 is split between dev and
test, so evaluation texts are unseen.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List

CAPTIONS_FILE = Path(__file__).with_name("captions.json")


def captions() -> Dict[str, List[str]]:
    return json.loads(CAPTIONS_FILE.read_text())


def skimage_data_dir() -> Path:
    from ..extras import require

    skimage = require("skimage", "demo", "the demo dataset (scikit-image's photos)")

    return Path(skimage.__file__).parent / "data"


def build_demo_dataset(out_dir: str | os.PathLike, *, shift: int = 7) -> Path:
    """Write the demo dataset to ``out_dir`` (idempotent) and return that folder."""
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    caps = captions()
    src_dir = skimage_data_dir()
    names = sorted(caps)
    missing = [n for n in names if not (src_dir / n).exists()]
    if missing:
        from ..errors import FeatstoreError

        raise FeatstoreError(f"scikit-image's bundled photos {missing[:3]} are missing from {src_dir}; reinstall "
                             f"scikit-image (`pip install --force-reinstall scikit-image`)")
    files = []
    for i, name in enumerate(names):
        ext = Path(name).suffix if Path(name).suffix in (".gif", ".jpg") else ".png"
        dst = out / "img" / f"{i:05d}{ext}"
        if not dst.exists():
            if ext == Path(name).suffix:
                shutil.copyfile(src_dir / name, dst)
            else:
                from PIL import Image

                Image.open(src_dir / name).save(dst)
        files.append(f"img/{dst.name}")
    n = len(names)
    splits: Dict[str, List[dict]] = {"train": [], "dev_seen": [], "test_seen": []}
    next_id = 100
    for p in range(3):
        for i, name in enumerate(names):
            text = caps[name][p]
            for img_idx, label in ((i, 0), ((i + shift) % n, 1)):
                split = "train" if p < 2 else ("dev_seen" if i % 2 == 0 else "test_seen")
                splits[split].append({"id": next_id, "img": files[img_idx], "label": label, "text": text})
                next_id += 1
    for split, rows in splits.items():
        with open(out / f"{split}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return out
