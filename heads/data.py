"""All features, targets and splits of one training set, as tensors on the device (loaded once).

``TrainData.features`` holds the batch keys of ``heads.spec.InputSpec`` (each ``[N, ...]``, rows aligned
with ``ids``); ``targets`` holds per task an int64 ``[N]`` class index (-1 = missing) or a float
``[N, C]`` multi-hot (NaN row = missing); ``splits`` maps a split name to a LongTensor of row indices.
A batch is one ``index_select`` per key on the device: no per-sample Python, no DataLoader.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from featstore.errors import FeatstoreError

from .batching import gather_trimmed, sequence_lengths
from .spec import InputSpec, TaskSpec

FEATURE_KEYS = ("img_regions", "img_mask", "img_boxes", "img_pooled", "txt_tokens", "txt_mask", "txt_pooled",
                "txt_ids")


@dataclass
class TrainData:
    """Features ``{batch key: Tensor[N, ...]}``, ``ids`` (N sample ids), ``targets``, ``splits``, ``task_spec``.

    One row per dataset row: a sample listed in two splits (Hateful Memes' dev_seen and dev_unseen share 400)
    has a row in each; within a split ids are unique.

    ``meta`` carries provenance for run folders: ``{"features": {"image": {"name", "version"}, "text": ...},
    "dataset_fingerprint": str}``.
    """

    features: Dict[str, Tensor]
    ids: List[str]
    targets: Dict[str, Tensor]
    splits: Dict[str, Tensor]
    task_spec: TaskSpec
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.ids)
        if n == 0:
            raise FeatstoreError("training data has no samples; pass a dataset with at least one sample")
        unknown = sorted(set(self.features) - set(FEATURE_KEYS))
        if unknown:
            raise FeatstoreError(f"feature key {unknown[0]!r} is not a batch key; use one of {', '.join(FEATURE_KEYS)}")
        if not self.features:
            raise FeatstoreError("training data has no features; pass an image and/or a text feature set")
        for k, v in self.features.items():
            if v.shape[0] != n:
                raise FeatstoreError(f"feature {k!r} has {v.shape[0]} rows for {n} ids; rebuild the data so they match")
        self._check_masks()
        for t in self.task_spec.tasks:
            y = self.targets.get(t.name)
            if y is None:
                raise FeatstoreError(f"no targets for task {t.name!r}; encode targets for every task of the spec")
            want = (n, t.num_classes) if t.kind == "multilabel" else (n,)
            if tuple(y.shape) != want:
                raise FeatstoreError(f"targets of task {t.name!r} have shape {tuple(y.shape)}, expected {want}")
        for s, idx in self.splits.items():
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise FeatstoreError(f"split {s!r} has row indices outside 0..{n - 1}; rebuild the splits")
            self._check_split_ids(s, idx)

    def _check_split_ids(self, split: str, idx: Tensor) -> None:
        """An id may repeat across splits (Hateful Memes lists 400 memes in dev_seen and in dev_unseen: one
        row in each), never within one, where predictions and metrics are per sample."""
        counts = Counter(self.ids[i] for i in idx.tolist())
        if len(counts) != idx.numel():
            dup = next(i for i, n in counts.items() if n > 1)
            raise FeatstoreError(f"split {split!r} lists sample id {dup!r} twice; give every sample of a split "
                                 "a unique id")

    def _check_masks(self) -> None:
        """Every item array has its mask and every mask an item array (text: token states and/or ids)."""
        f = self.features
        pairs = (("img_mask", ("img_regions",)), ("txt_mask", ("txt_tokens", "txt_ids")))
        for mask, items in pairs:
            for a in items:
                if a in f and mask not in f:
                    raise FeatstoreError(f"feature {a!r} needs {mask!r} (its real items); pass both")
            if mask in f and not any(a in f for a in items):
                raise FeatstoreError(f"feature {mask!r} masks nothing: pass {' or '.join(map(repr, items))} with it")

    # ------------------------------------------------------------------------------------------- access
    @property
    def device(self) -> torch.device:
        return next(iter(self.features.values())).device

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: Tensor, trim: bool = False) -> Dict[str, Tensor]:
        """Feature batch for row indices ``idx`` (LongTensor [B] on the device): one gather per key.

        ``trim``: tokens and regions cut to the batch's longest real run first (``heads.batching``)."""
        if trim:
            return gather_trimmed(self.features, idx, self.sequence_lengths())
        return {k: v.index_select(0, idx) for k, v in self.features.items()}

    def sequence_lengths(self) -> Dict[str, Tensor]:
        """``{mask key: [N] last real position + 1}`` (``heads.batching.sequence_lengths``), computed once."""
        masks = tuple(self.features.get(m) for m in ("txt_mask", "img_mask"))
        cached = self.__dict__.get("_lengths")
        if cached is None or any(a is not b for a, b in zip(cached[0], masks)):
            cached = (masks, sequence_lengths(self.features))
            self.__dict__["_lengths"] = cached
        return cached[1]

    def batch_targets(self, idx: Tensor) -> Dict[str, Tensor]:
        """Targets for row indices ``idx``: {task: [B] int64 or [B, C] float}."""
        return {k: v.index_select(0, idx) for k, v in self.targets.items()}

    def split(self, name: str) -> Tensor:
        """Row indices of split ``name``; a one-line error naming the splits there are (and, for a dataset's own
        name that ``dataset_splits`` renamed, ``val`` / ``dev_seen`` -> ``dev``, the name to pass)."""
        if name not in self.splits:
            renamed = SPLIT_ALIASES.get(name.lower())
            hint = f" (a dataset's {name!r} rows are the split {renamed!r} here)" if renamed in self.splits else ""
            raise FeatstoreError(f"split {name!r} does not exist; choose one of "
                                 f"{', '.join(self.splits) or '(none)'}{hint}")
        idx = self.splits[name]
        if idx.numel() == 0:
            raise FeatstoreError(f"split {name!r} is empty; check the dataset's split column or pass --val-fraction")
        return idx

    def labelled(self, idx: Tensor) -> Tensor:
        """The subset of ``idx`` with at least one task label present."""
        ok = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for t in self.task_spec.tasks:
            y = self.targets[t.name].index_select(0, idx)
            ok |= ~torch.isnan(y).any(dim=1) if t.kind == "multilabel" else (y >= 0)
        return idx[ok]

    def input_spec(self) -> InputSpec:
        """Shapes of ``features`` as an ``InputSpec`` (dims 0 for an absent modality)."""
        f = self.features
        img = f.get("img_regions", f.get("img_pooled"))
        txt = f.get("txt_tokens", f.get("txt_pooled"))
        return InputSpec(
            img_dim=int(img.shape[-1]) if img is not None else 0,
            txt_dim=int(txt.shape[-1]) if txt is not None else 0,
            img_regions=int(f["img_regions"].shape[1]) if "img_regions" in f else 0,
            txt_tokens=int(f["txt_tokens"].shape[1]) if "txt_tokens" in f else 0,
            img_pooled="img_pooled" in f, txt_pooled="txt_pooled" in f, img_boxes="img_boxes" in f,
            txt_ids="txt_ids" in f, img_pooled_dim=int(f["img_pooled"].shape[-1]) if "img_pooled" in f else 0,
            txt_pooled_dim=int(f["txt_pooled"].shape[-1]) if "txt_pooled" in f else 0)

    def targets_numpy(self, idx: Tensor) -> Dict[str, np.ndarray]:
        return {k: v.index_select(0, idx).cpu().numpy() for k, v in self.targets.items()}


def normalise_boxes(boxes: Tensor, image_size: Tensor) -> Tensor:
    """Pixel boxes ``[N, R, 4]`` (x1 y1 x2 y2) and ``image_size [N, 2]`` (W, H) -> ``[N, R, 5]``:
    x1/W, y1/H, x2/W, y2/H, ``(x2 - x1) * (y2 - y1) / (W * H)``: MMF's ``TransformerBboxProcessor``, whose area
    is not clamped (an inverted box has a negative one; a zero image size counts as 1 here, not a division by 0)."""
    wh = image_size.to(boxes.dtype).clamp_min(1)
    w, h = wh[:, 0, None], wh[:, 1, None]
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = ((x2 - x1) * (y2 - y1)) / (w * h)
    return torch.stack([x1 / w, y1 / h, x2 / w, y2 / h, area], dim=-1)


# ------------------------------------------------------------------------------------------------ splits

SPLIT_ALIASES = {"dev_seen": "dev", "val": "dev", "valid": "dev", "validation": "dev", "test_seen": "test"}


def dataset_splits(samples: Sequence[Any], targets: Dict[str, np.ndarray], spec: TaskSpec,
                   val_fraction: Optional[float] = None, seed: int = 0,
                   need_train: bool = True) -> Dict[str, np.ndarray]:
    """Row indices per split from ``Sample.split`` (``None`` -> train); a dataset without a train split is a
    one-line error unless ``need_train`` is False (a saved run's eval / predict on a test file alone).

    Hateful Memes names map to dev/test (dev_seen -> dev; test_seen -> test when it has labels, else it
    keeps its name); dev_unseen/test_unseen keep theirs. With ``val_fraction`` a stratified (first task's
    classes, single-label tasks) ``val`` split is drawn from train with ``seed`` (sklearn
    ``train_test_split``) and train shrinks accordingly; training monitors ``val`` when it exists.
    """
    from sklearn.model_selection import train_test_split

    names = []
    for s in samples:
        raw = (s.split or "train").lower()
        name = SPLIT_ALIASES.get(raw, raw)
        if raw == "test_seen" and not s.labels:
            name = "test_seen"
        names.append(name)
    names_arr = np.array(names)
    splits = {n: np.where(names_arr == n)[0] for n in dict.fromkeys(names)}
    if "train" not in splits and (need_train or val_fraction is not None):
        raise FeatstoreError(f"the dataset has no train split (it has {', '.join(splits)}); "
                             "pass a dataset whose samples include split 'train'")
    if val_fraction is not None:
        if not 0.0 < val_fraction < 1.0:
            raise FeatstoreError(f"val_fraction {val_fraction} is out of range; pass a value in (0, 1), e.g. 0.1")
        train = splits["train"]
        first = spec.tasks[0]
        y = targets[first.name][train] if first.kind != "multilabel" else None
        strat = y if y is not None and len(np.unique(y)) > 1 and np.bincount(y - y.min()).min() >= 2 else None
        try:
            tr, va = train_test_split(train, test_size=val_fraction, random_state=seed, stratify=strat)
        except ValueError as err:
            raise FeatstoreError(f"val_fraction {val_fraction} cannot split {len(train)} train rows ({err}); "
                                 "pass a larger dataset or another fraction") from None
        splits["train"], splits["val"] = np.sort(tr), np.sort(va)
    return splits


VAL_SPLITS = ("val", "dev", "dev_unseen")  # val (carved by --val-fraction), dev (dev_seen), else dev_unseen


def validation_split(splits: Dict[str, Any], name: str = "auto") -> str:
    """The split training monitors (``TrainConfig.val_split``). ``"auto"``: ``val`` when carved, else the
    dataset's dev split (``dev`` = dev_seen, as Hate-CLIPper, RGCL and the Hateful Memes paper's phase-1 tables
    validate; else ``dev_unseen``), ``"dev"`` when none. A name (``dev_unseen``: MMF's phase-2 yaml validates on
    it) is that split, Hateful Memes' names mapped as ``dataset_splits`` maps them (dev_seen -> dev)."""
    if name == "auto":
        return next((n for n in VAL_SPLITS if n in splits and len(splits[n])), "dev")
    chosen = name.lower() if name.lower() in splits else SPLIT_ALIASES.get(name.lower(), name.lower())
    if chosen == "train" or chosen not in splits:
        others = [s for s in splits if s != "train"]
        why = "training rows cannot choose the epoch" if chosen == "train" else "the dataset has no such split"
        raise FeatstoreError(f"val_split {name!r}: {why}; pass auto or one of: {', '.join(others) or '(none)'}")
    return chosen


# ------------------------------------------------------------------------------------------ from a store

def _parse_ref(ref: Union[str, Sequence[str]]) -> tuple:
    if isinstance(ref, str):
        name, _, version = ref.partition("@")
        return name, version or None
    name, version = ref
    return name, version


def _open_feature_sets(store, image_ref, text_ref) -> Dict[str, Any]:
    """``{"image": FeatureSetVersion, "text": ...}`` for the refs given; a set of the other modality is a
    one-line error."""
    opened: Dict[str, Any] = {}
    for modality, ref, flag in (("image", image_ref, "--image"), ("text", text_ref, "--text")):
        if ref is None:
            continue
        name, version = _parse_ref(ref)
        fs = store.open(name, version)
        if fs.modality != modality:
            raise FeatstoreError(f"feature set {name!r} passed as {flag} holds {fs.modality} features; swap "
                                 "--image and --text (or pass a " + modality + " feature set)")
        opened[modality] = fs
    return opened


def _image_features(fs, keys, image_pool: str, max_regions, device, dtype) -> Dict[str, Tensor]:
    """``img_regions`` / ``img_mask`` / ``img_boxes`` and ``img_pooled`` (from ``image_pool``) of rows ``keys``."""
    name, names, features = fs.name, set(fs.array_names), {}
    if image_pool != "pooled" and image_pool not in names:
        raise FeatstoreError(f"image feature set {name!r} has no array {image_pool!r} for --image-pool "
                             f"(it has {', '.join(sorted(names))}); pass one of those")
    want = [n for n in ("regions", "boxes", "image_size", image_pool) if n in names]
    if "regions" not in names and image_pool not in names:
        raise FeatstoreError(f"image feature set {name!r} has neither 'regions' nor 'pooled' "
                             f"(it has {', '.join(sorted(names))}); pass an image feature set")
    got = fs.select(keys, want, max_items=max_regions, torch=True, device=device, dtype=dtype)
    if "regions" in got:
        features["img_regions"], features["img_mask"] = got["regions"], got["mask"].bool()
        if "boxes" in got and "image_size" in got:
            features["img_boxes"] = normalise_boxes(got["boxes"].to(dtype), got["image_size"]).to(dtype)
    if image_pool in got:
        features["img_pooled"] = got[image_pool]
    return features


def _box_warnings(fs) -> List[str]:
    """A note when an image set has ``boxes`` but no ``image_size``: its boxes cannot be normalised, so heads
    get no ``img_boxes`` (ViLBERT's location embedding then reads zeros)."""
    if fs is None or "boxes" not in fs.array_names or "image_size" in fs.array_names:
        return []
    return [f"image feature set {fs.ref} has boxes but no image_size, so heads get no box locations (ViLBERT's "
            "location embedding reads zeros); re-import it with --dataset and its images, which reads the sizes "
            "from the image files"]


def _text_features(fs, keys, text_array: str, text_pool: str, max_tokens, device, dtype) -> Dict[str, Tensor]:
    """``txt_tokens`` / ``txt_mask`` (from ``text_array``), ``txt_pooled`` (``text_pool``, else cls / mean) and
    ``txt_ids`` (int64, from ``input_ids`` when the set has it). ``text_array="input_ids"``: the ids and mask
    alone, no token states (for a head that embeds the ids itself, visualbert: no memory on unused states)."""
    name, names, features = fs.name, set(fs.array_names), {}
    if text_pool not in ("cls", "mean") and text_pool not in names:
        raise FeatstoreError(f"text feature set {name!r} has no array {text_pool!r} for --text-pool "
                             f"(it has {', '.join(sorted(names))}); pass one of those")
    if text_array != "tokens" and text_array not in names:  # an explicit --text-array is never ignored
        raise FeatstoreError(f"text feature set {name!r} has no array {text_array!r} for --text-array "
                             f"(it has {', '.join(sorted(names))}); pass one of those")
    pool = text_pool if text_pool in names else next((p for p in ("cls", "mean") if p in names), None)
    want = [n for n in (text_array, pool) if n is not None and n in names]
    if text_array in want and text_array != "input_ids" and "input_ids" in names:
        want.append("input_ids")
    if not want:
        raise FeatstoreError(f"text feature set {name!r} has neither {text_array!r} nor cls/mean "
                             f"(it has {', '.join(sorted(names))}); pass a text feature set")
    got = fs.select(keys, want, max_items=max_tokens, torch=True, device=device, dtype=dtype)
    if text_array in got and text_array != "input_ids":
        features["txt_tokens"], features["txt_mask"] = got[text_array], got["mask"].bool()
    if "input_ids" in got:
        features["txt_ids"], features["txt_mask"] = got["input_ids"].long(), got["mask"].bool()
    if pool in got:
        features["txt_pooled"] = got[pool]
    return features


def train_image_rows(store, ref: str, samples, features: Dict[str, Tensor], image_pool: str, max_regions,
                     device, dtype) -> Dict[str, Any]:
    """Replace the image rows of the ``train``-split samples in ``features`` by image set ``ref``'s (same
    arrays and shapes: one-line errors otherwise) -> its ref record (name, version, pool, recipe)."""
    from featstore.store import preflight

    fs = _open_feature_sets(store, ref, None)["image"]
    rows = [i for i, s in enumerate(samples) if s.split == "train"]
    if not rows:
        raise FeatstoreError(f"--train-image {ref}: the dataset has no 'train' split samples to read it for; "
                             "leave --train-image out")
    chosen = [samples[i] for i in rows]
    preflight(chosen, image=fs).raise_if_missing()
    keys = [s.image_key if fs.key_kind == "image_key" else s.id for s in chosen]
    got = _image_features(fs, keys, image_pool, max_regions, device, dtype)
    for name, value in features.items():
        if not name.startswith("img_"):
            continue
        if name not in got or got[name].shape[1:] != value.shape[1:]:
            have = tuple(got[name].shape[1:]) if name in got else "none"
            raise FeatstoreError(f"--train-image {ref} gives {name} of shape {have} per row where --image gives "
                                 f"{tuple(value.shape[1:])}; pass a set of the same extractor and options (and "
                                 "--max-regions when their region counts differ)")
        value[torch.as_tensor(rows, device=value.device)] = got[name].to(value.dtype)
    return image_ref_record(fs, image_pool)


def image_ref_record(fs, image_pool: str) -> Dict[str, Any]:
    """What a run records of an image set it read: name, version, the ``--image-pool`` array (eval / predict
    reuse it) and what made it (the recipe's extractor, config, preprocessing)."""
    return {"name": fs.name, "version": fs.version, "pool": image_pool, "extractor": fs.recipe.extractor,
            "config": fs.recipe.config, "preprocessing": fs.recipe.preprocessing,
            "weights_fingerprint": fs.recipe.weights_fingerprint}


def _text_ref_record(fs, text_array: str, text_pool: str) -> Dict[str, Any]:
    """What a run records of its text set: name, version, the arrays read, what made it (which layer the states
    are from is checked against vilbert's text_start_layer) and the tokenizer's vocabulary size when known (a
    visualbert head checks it)."""
    ref = {"name": fs.name, "version": fs.version, "array": text_array, "pool": text_pool,
           "extractor": fs.recipe.extractor, "config": fs.recipe.config,
           "weights_fingerprint": fs.recipe.weights_fingerprint}
    if "vocab_size" in fs.recipe.preprocessing:
        ref["vocab_size"] = fs.recipe.preprocessing["vocab_size"]
    return ref


def _check_refs(image_ref, text_ref, train_image_ref) -> None:
    if image_ref is None and text_ref is None:
        raise FeatstoreError("no feature set given; pass --image NAME and/or --text NAME")
    if train_image_ref is not None and image_ref is None:
        raise FeatstoreError(f"--train-image {train_image_ref} replaces the train split's rows of --image, but no "
                             "--image is given; pass --image NAME too")


def _task_spec(dataset, tasks: Union[TaskSpec, str, None], task_weights, feeds: Optional[str]) -> TaskSpec:
    """``tasks`` as given, or derived from the dataset's labels in its format's class order; ``feeds`` added."""
    from .tasks import derive_task_spec, with_feeds

    if not isinstance(tasks, TaskSpec):
        tasks = derive_task_spec(dataset.samples, tasks, task_weights, getattr(dataset, "tasks", None))
    return with_feeds(tasks, feeds)


def build_train_data(store, dataset, image_ref, text_ref, tasks: Union[TaskSpec, str, None] = None, *,
                     device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                     max_regions: Optional[int] = None, max_tokens: Optional[int] = None,
                     val_fraction: Optional[float] = None, seed: int = 0, task_weights=None,
                     text_array: str = "tokens", text_pool: str = "cls", image_pool: str = "pooled",
                     feeds: Optional[str] = None, train_image_ref: Optional[str] = None,
                     need_train: bool = True) -> TrainData:
    """Load every sample's features from ``store`` once, joined by key (never by position).

    ``dataset``: a ``DatasetManifest`` (or a path for ``featstore.datasets.load_dataset``).
    ``image_ref`` / ``text_ref``: ``"name"`` or ``"name@version"`` (None to leave a modality out); image sets
    are joined on ``Sample.image_key`` or ``Sample.id`` by their ``key_kind``, text sets likewise.
    ``tasks``: a ``TaskSpec`` or a ``--task`` choice (see ``heads.tasks.derive_task_spec``).
    Image region sets give ``img_regions``/``img_mask`` (+ ``img_boxes`` normalised from ``boxes`` and
    ``image_size``) and ``img_pooled`` from ``pooled``; text sets give ``txt_tokens``/``txt_mask`` (and ``txt_ids``
    from ``input_ids`` when they store it) from ``text_array`` and ``txt_pooled`` from ``text_pool`` ("cls" or
    "mean", whichever exists; or any pooled array such as CLIP's pre-projection "pooler"). ``image_pool`` names
    the image set's array that becomes ``img_pooled`` ("pooled", or e.g. "pooler"); a name the set lacks is a
    one-line error. ``feeds``: a fan-out cascade such as ``"B>C"`` (``heads.tasks.with_feeds``).
    ``train_image_ref``: another image set whose rows the dataset's train-split samples read instead
    (``train_image_rows``; RGCL's train memes were 224 px, dev / test 336). ``need_train=False``: a saved run's
    eval / predict.
    """
    from .tasks import encode_targets

    if isinstance(dataset, (str, bytes)) or hasattr(dataset, "__fspath__"):
        from featstore.datasets import load_dataset
        dataset = load_dataset(dataset)
    samples = list(dataset.samples)
    _check_refs(image_ref, text_ref, train_image_ref)
    spec = _task_spec(dataset, tasks, task_weights, feeds)
    opened = _open_feature_sets(store, image_ref, text_ref)
    from featstore.store import preflight

    preflight(samples, image=opened.get("image"), text=opened.get("text")).raise_if_missing()
    features: Dict[str, Tensor] = {}
    refs: Dict[str, Any] = {}
    for modality, fs in opened.items():
        keys = [s.image_key if fs.key_kind == "image_key" else s.id for s in samples]
        if modality == "image":
            refs[modality] = image_ref_record(fs, image_pool)
            features.update(_image_features(fs, keys, image_pool, max_regions, device, dtype))
        else:
            refs[modality] = _text_ref_record(fs, text_array, text_pool)
            features.update(_text_features(fs, keys, text_array, text_pool, max_tokens, device, dtype))
    if train_image_ref is not None and (need_train or any(s.split == "train" for s in samples)):  # after --image
        refs["train_image"] = train_image_rows(store, train_image_ref, samples, features, image_pool, max_regions,
                                               device, dtype)
    from featstore.store import manifest_mismatch_warnings  # the same ids may now name other texts or images

    warnings = manifest_mismatch_warnings(dataset, opened) + _box_warnings(opened.get("image"))
    targets_np = encode_targets(samples, spec)
    splits = dataset_splits(samples, targets_np, spec, val_fraction, seed, need_train)
    for s, idx in splits.items():
        if len(idx) == 0:
            raise FeatstoreError(f"split {s!r} is empty; check the dataset or pass --val-fraction")
    return TrainData(
        features=features, ids=[s.id for s in samples],
        targets={k: torch.as_tensor(v, device=device) for k, v in targets_np.items()},
        splits={k: torch.as_tensor(v, dtype=torch.long, device=device) for k, v in splits.items()},
        task_spec=spec,
        meta={"features": refs, "dataset_fingerprint": getattr(dataset, "fingerprint", None), "warnings": warnings})
