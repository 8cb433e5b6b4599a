"""Published recipes as presets: plain JSON / YAML files in ``heads/presets/`` that users can copy and change.

A preset file holds::

    name          the preset's name (``--preset NAME``; a path to a copied file works too)
    description   one line
    source        where its numbers come from (paper, file and line of the reference code)
    extends       optional: another preset whose values it starts from
    head          the head to train (``--head`` overrides)
    train         ``heads.train.TrainConfig`` fields (lr, batch_size, epochs, warmup_ratio, schedule, ...)
    head_cfg      options of the head (``--set`` overrides one by one)
    data          data options: task, task_weights, text_array, text_pool, image_pool, max_regions, max_tokens, feeds
    notes         what the preset cannot say by numbers (which features to pass, approximations)
    image_features  optional: ``{extractor: {option: value}}``, the extractor options of the input its source
                  used; ``heads train`` notes an image set of that extractor extracted otherwise
                  (``heads.preset_inputs``)
    text_features   the same for the text set

``load_preset(name_or_path)`` reads and checks it: every train / head / data key must exist in this
toolkit (a preset written for a newer version is a one-line error naming the key, never ignored).
``merge(preset, given)`` is what a run uses: the preset's values, with every option the user passed
explicitly on top.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from featstore.config_types import deep_merge
from featstore.errors import FeatstoreError

PRESET_DIR = Path(__file__).parent / "presets"
DATA_KEYS = ("task", "task_weights", "text_array", "text_pool", "image_pool", "max_regions", "max_tokens", "val_fraction",
             "feeds")
SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class Preset:
    name: str
    description: str
    source: str
    head: Optional[str]
    train: Dict[str, Any] = field(default_factory=dict)
    head_cfg: Dict[str, Any] = field(default_factory=dict)
    data: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    path: Optional[Path] = None
    image_features: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    text_features: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def features(self, side: str) -> Dict[str, Dict[str, Any]]:
        """``image_features`` or ``text_features``."""
        return self.image_features if side == "image" else self.text_features

    def summary_line(self) -> str:
        return f"preset {self.name} ({self.path}): {self.description}. Source: {self.source}"


def preset_names() -> List[str]:
    """The presets that ship with the toolkit, sorted."""
    return sorted(p.stem for p in PRESET_DIR.iterdir() if p.suffix in SUFFIXES)


def _find(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in SUFFIXES and p.is_file():
        return p
    for suffix in SUFFIXES:
        q = PRESET_DIR / f"{name_or_path}{suffix}"
        if q.is_file():
            return q
    raise FeatstoreError(f"preset {name_or_path!r} not found; choose one of {', '.join(preset_names())} "
                         "(`heads presets`) or pass the path of a .json/.yaml preset file")


def read_mapping(path: Path, what: str, holds: str) -> dict:
    """A JSON (``.json``) or YAML file holding a mapping; one-line errors naming ``what`` (e.g. "preset")."""
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
        else:
            import yaml
            raw = yaml.safe_load(path.read_text())
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        raise FeatstoreError(f"{what} {path} does not parse ({str(err).splitlines()[0]}); fix its syntax") from None
    if not isinstance(raw, dict):
        raise FeatstoreError(f"{what} {path} must hold a mapping {holds}; it holds {type(raw).__name__}")
    return raw


def _read(path: Path) -> dict:
    return read_mapping(path, "preset", "(name, source, head, train, ...)")


def _raw_chain(name_or_path: str, seen: tuple = ()) -> dict:
    """The preset's mapping with its ``extends`` chain merged in (the child's values win)."""
    path = _find(name_or_path)
    raw = _read(path)
    parent = raw.get("extends")
    if parent is None:
        return {**raw, "path": path}
    if parent in seen:
        raise FeatstoreError(f"preset {path} extends {parent!r} in a loop; remove one of the extends")
    base = _raw_chain(str(parent), seen + (parent,))
    merged = {**base, **{k: v for k, v in raw.items() if k not in ("train", "head_cfg", "data")}}
    for part in ("train", "head_cfg", "data"):
        merged[part] = {**base.get(part, {}), **raw.get(part, {})}
    merged["notes"] = list(base.get("notes", [])) + list(raw.get("notes", []))
    merged["source"] = raw.get("source", base.get("source", ""))
    return {**merged, "path": path}


def load_preset(name_or_path: str) -> Preset:
    """Read, merge (``extends``) and check a preset (see module docstring)."""
    raw = _raw_chain(name_or_path)
    unknown = sorted(set(raw) - {"name", "description", "source", "extends", "head", "train", "head_cfg", "data",
                                 "notes", "image_features", "text_features", "path"})
    if unknown:
        raise FeatstoreError(f"preset {raw['path']} has unknown field {unknown[0]!r}; use name, description, source, "
                             "extends, head, train, head_cfg, data, notes, image_features, text_features")
    if not raw.get("source"):
        raise FeatstoreError(f"preset {raw['path']} has no 'source'; say where its numbers come from")
    preset = Preset(name=str(raw.get("name", Path(raw["path"]).stem)), description=str(raw.get("description", "")),
                    source=str(raw["source"]), head=raw.get("head"), train=dict(raw.get("train", {})),
                    head_cfg=dict(raw.get("head_cfg", {})), data=dict(raw.get("data", {})),
                    notes=[str(n) for n in raw.get("notes", [])], path=raw["path"])
    from .preset_inputs import check_image_features

    for side in ("image", "text"):
        if f"{side}_features" in raw:
            setattr(preset, f"{side}_features", check_image_features(raw[f"{side}_features"], f"preset "
                                                                     f"{raw['path']}", f"{side}_features"))
    check_preset(preset)
    return preset


def check_preset(preset: Preset, head: Optional[str] = None) -> None:
    """One-line error for a train / head / data key this toolkit does not have, or a bad schedule."""
    from .models import HEADS, list_heads
    from .schedule import SCHEDULES
    from .train import TrainConfig

    where = f"preset {preset.name!r} ({preset.path})"
    fields = set(TrainConfig.__dataclass_fields__) - {"head", "head_cfg", "seed", "device"}
    for k in preset.train:
        if k not in fields:
            raise FeatstoreError(f"{where} sets train option {k!r}, which this toolkit does not have; update the "
                                 f"toolkit or remove it from a copy of the preset (train options: {', '.join(sorted(fields))})")
    if preset.train.get("schedule", "linear") not in SCHEDULES:
        raise FeatstoreError(f"{where} sets schedule {preset.train['schedule']!r}, which this toolkit does not have "
                             f"(schedules: {', '.join(SCHEDULES)}); update the toolkit or edit a copy of the preset")
    try:  # values too (an rgcl option this toolkit lacks, a bad predict mode, ...)
        TrainConfig.from_dict(dict(preset.train)).validate()
    except FeatstoreError as err:
        raise FeatstoreError(f"{where}: {err}; update the toolkit or edit a copy of the preset") from None
    for k in preset.data:
        if k not in DATA_KEYS:
            raise FeatstoreError(f"{where} sets data option {k!r}; data options are {', '.join(DATA_KEYS)}")
    head = head or preset.head
    if head is None or not preset.head_cfg:
        return
    list_heads()
    options = set(HEADS.config_cls(head).__dataclass_fields__)
    for k in preset.head_cfg:
        if k not in options:
            raise FeatstoreError(f"{where} sets {head} option {k!r}, which this toolkit's {head} head does not have; "
                                 f"update the toolkit or remove it from a copy of the preset ({head} options: "
                                 f"{', '.join(sorted(options))})")


def merge(preset: Optional[Preset], given: Dict[str, Any], head_settings: Dict[str, Any],
          head: Optional[str]) -> Dict[str, Any]:
    """``{"head", "train", "head_cfg", "data"}`` for a run: the preset's values with the explicitly ``given``
    train / data options (``TrainConfig`` / ``DATA_KEYS`` names) and ``head_settings`` (``--set``) on top."""
    if preset is None:
        if head is None:
            raise FeatstoreError("no head given; pass --head NAME (see `heads list`) or --preset NAME")
        return {"head": head, "train": {k: v for k, v in given.items() if k not in DATA_KEYS},
                "head_cfg": dict(head_settings), "data": {k: v for k, v in given.items() if k in DATA_KEYS}}
    chosen = head or preset.head
    if chosen is None:
        raise FeatstoreError(f"preset {preset.name!r} names no head; pass --head NAME")
    head_cfg = dict(preset.head_cfg) if chosen == preset.head else {}
    check_preset(Preset(preset.name, "", preset.source, chosen, head_cfg=head_cfg, path=preset.path))
    # the preset's head options and init checkpoint belong to its own head
    train = {k: v for k, v in preset.train.items() if chosen == preset.head or k != "init_checkpoint"}
    return {"head": chosen,
            "train": {**train, **{k: v for k, v in given.items() if k not in DATA_KEYS}},
            "head_cfg": deep_merge(head_cfg, head_settings),
            "data": {**preset.data, **{k: v for k, v in given.items() if k in DATA_KEYS}}}


def head_switch_note(preset: Optional[Preset], head: str) -> Optional[str]:
    """A note when ``--head`` replaces the preset's head: its head options (and init checkpoint) stay with its
    own head (``merge``), so they are not silently lost; None otherwise."""
    if preset is None or preset.head is None or head == preset.head:
        return None
    dropped = [f"head options {json.dumps(preset.head_cfg, sort_keys=True)}"] if preset.head_cfg else []
    dropped += ["init_checkpoint"] if "init_checkpoint" in preset.train else []
    if not dropped:
        return None
    base = (f"; to give them to refnet's base pass --set base={preset.head} --set "
            f"base_cfg='{json.dumps(preset.head_cfg, sort_keys=True)}'" if head == "refnet" and preset.head_cfg else "")
    return (f"note: preset {preset.name}'s {' and '.join(dropped)} are for head {preset.head}; head {head} starts "
            f"from its own defaults (the preset's train settings still apply){base}")


# ------------------------------------------------------------------------------------- sizes for `heads list`

REFERENCE_INPUTS = dict(img_dim=2048, txt_dim=768, img_regions=36, txt_tokens=128, img_boxes=True, txt_ids=True)
GPU_SIZED = 20_000_000  # parameters above which a head is called GPU-sized (hours a seed on a 2-core CPU)
SMALL_PRESETS = {"vilbert": "vilbert-small", "singlestream": "singlestream-small", "visualbert": "visualbert-small",
                 "cross": "hateclipper-cross"}
# heads whose size `heads list` does not count: building one imports a heavy optional package (the gnn head's
# PyTorch Geometric layers take seconds to import), and its default is far below GPU_SIZED
# (tests/test_heads_startup.py checks both)
NOT_COUNTED = ("gnn",)


def parameter_count(head: str, head_cfg: Optional[Dict[str, Any]] = None) -> int:
    """Parameters of ``head`` at the reference input (36 x 2048 regions, 128 x 768 tokens, one binary task),
    counted on the meta device (nothing allocated)."""
    import torch

    from .models import create_head
    from .spec import InputSpec, Task, TaskSpec

    spec = TaskSpec([Task("label", "binary", 2, ["0", "1"])])
    with torch.device("meta"):
        model = create_head(head, InputSpec(**REFERENCE_INPUTS), spec, **(head_cfg or {}))
    return sum(p.numel() for p in model.parameters())


def size_note(head: str) -> Optional[str]:
    """``heads list``'s line about a head's default size, or None when it is small (or in ``NOT_COUNTED``)."""
    if head in NOT_COUNTED:
        return None
    try:
        n = parameter_count(head)
    except FeatstoreError:  # a head that needs options to be built (none today)
        return None
    if n < GPU_SIZED:
        return None
    small = SMALL_PRESETS.get(head)
    tip = f"; --preset {small} ({parameter_count(head, load_preset(small).head_cfg) / 1e6:.1f} M) trains in minutes on a CPU" if small else ""
    return f"(default size: {n / 1e6:.1f} M parameters at 36 x 2048 regions + 128 x 768 tokens: GPU-sized{tip})"


def run_options(preset_name: Optional[str], head: Optional[str], params: Dict[str, Any], explicit: set,
                head_settings: Dict[str, Any]) -> Dict[str, Any]:
    """What ``heads train`` runs: ``{"preset", "head", "train", "head_cfg", "data"}`` from the command's
    ``params`` (its defaults), the preset's values over them, and the ``explicit`` options over both.

    ``params`` are named like ``TrainConfig`` fields and ``DATA_KEYS``; ``class_weights`` may be the CLI text
    ("none", "auto" or "1,2")."""
    from .train import TrainConfig

    preset = load_preset(preset_name) if preset_name else None
    fields = set(TrainConfig.__dataclass_fields__) - {"head", "head_cfg", "seed", "device"}
    train = {k: v for k, v in params.items() if k in fields}
    data = {k: v for k, v in params.items() if k in DATA_KEYS}
    given = {k: v for k, v in {**train, **data}.items() if k in explicit}
    merged = merge(preset, given, head_settings, head)
    merged["train"] = {**train, **merged["train"]}
    merged["data"] = {**data, **merged["data"]}
    cw = merged["train"].get("class_weights")
    if isinstance(cw, str) and cw not in ("none", "auto"):
        try:
            merged["train"]["class_weights"] = [float(x) for x in cw.split(",")]
        except ValueError:
            raise FeatstoreError(f"--class-weights {cw!r}: pass none, auto or comma-separated numbers") from None
    merged["preset"] = preset
    return merged
