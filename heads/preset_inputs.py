"""What a preset's source system fed its head, checked against the feature sets a run reads.

A preset may hold ``image_features`` and ``text_features``: ``{extractor name: {option: value}}``, the
featstore extractor options a set of that extractor needs to be the input the preset's source used
(``image-grid-hm``: ``{"grid": {"preprocess": "mmf-hateful-memes"}}``, MMF's Resize 256 / CenterCrop 224 /
Hateful Memes mean-std input; ``vilbert-hm``: ``{"vilbert-text": {"dtype": "float32"}}``, MMF's fp32 text
layers). ``check_image_features`` validates one when the preset loads (each option must be one the
extractor has, with a value it accepts); ``image_feature_notes`` compares it with the set of that side a run
loaded (``TrainData.meta["features"][side]``: its recipe's extractor and config) and returns one note per
option that differs. A set of another extractor gets no note (a deliberate change of input), and an option
the set's recipe does not record (a set extracted before the option existed) counts as the value such sets
were made with: the config's ``ABSENT_MEANS`` entry (clip-text's ``fix_text``: False), else its default.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Dict, List, Optional

from featstore.errors import FeatstoreError


def check_image_features(spec: Any, where: str, key: str = "image_features") -> Dict[str, Dict[str, Any]]:
    """``spec`` (a preset's ``key``: image_features or text_features) as ``{extractor: {option: value}}``, or a
    one-line error naming ``where`` and the fix."""
    from featstore.extractors.base import EXTRACTORS, extractor_config

    if not isinstance(spec, dict) or not all(isinstance(v, dict) for v in spec.values()):
        raise FeatstoreError(f"{where}: {key} must map extractor names to their options, e.g. "
                             '{"grid": {"preprocess": "mmf-hateful-memes"}}')
    for name, options in spec.items():
        if name not in EXTRACTORS.names():
            raise FeatstoreError(f"{where}: {key} names extractor {name!r}, which featstore does not have "
                                 f"(extractors: {', '.join(EXTRACTORS.names())})")
        try:
            extractor_config(name, dict(options))
        except FeatstoreError as err:
            raise FeatstoreError(f"{where}: {key}: {err}") from None
    return {name: dict(options) for name, options in spec.items()}


def _default(extractor: str, option: str) -> Any:
    from featstore.extractors.base import EXTRACTORS
    from featstore.config_types import field_default

    cls = EXTRACTORS.config_cls(extractor)
    if option in getattr(cls, "ABSENT_MEANS", {}):
        return cls.ABSENT_MEANS[option]
    for f in fields(cls):
        if f.name == option:
            return field_default(f)
    return None


def image_feature_notes(preset_name: str, spec: Dict[str, Dict[str, Any]],
                        features_meta: Optional[Dict[str, Any]], side: str = "image") -> List[str]:
    """One ``note: ...`` line per option of ``spec`` the run's ``side`` ("image" / "text") set was extracted
    without."""
    image = (features_meta or {}).get(side) or {}
    extractor = image.get("extractor")
    if extractor not in spec:
        return []
    config = image.get("config") or {}
    ref = f"{image.get('name')}@{image.get('version')}"
    notes = []
    for option, want in spec[extractor].items():
        got = config.get(option, _default(extractor, option))
        if got != want:
            w, g = _as_set_value(want), _as_set_value(got)
            notes.append(f"note: preset {preset_name} reads {extractor} sets extracted with {option}={w} (its "
                         f"source's input); {side} set {ref} has {option}={g}: extract one with `featstore extract "
                         f"--extractor {extractor} --set {option}={w}` to train on that input")
    return notes


def _as_set_value(value: Any) -> str:
    """``value`` as ``--set`` reads it back: a string as it is, anything else as JSON (``true``, ``[6]``)."""
    import json

    return value if isinstance(value, str) else json.dumps(value)


def store_image_notes(preset_name: str, spec: Dict[str, Dict[str, Any]], store_url: str, image_refs,
                      side: str = "image") -> List[str]:
    """``image_feature_notes`` for each ``side`` set a sweep reads (``image_refs``, names or ``name@version``),
    from the recipes in the store; a set that does not open gets no note here (the sweep's rows say why)."""
    if not spec:
        return []
    from featstore.store import open_store
    from featstore.store.store import parse_ref

    store, notes = open_store(store_url), []
    for ref in dict.fromkeys(r for r in image_refs if r):
        try:
            fs = store.open(*parse_ref(ref))
        except FeatstoreError:
            continue
        meta = {side: {"name": fs.name, "version": fs.version, "extractor": fs.recipe.extractor,
                       "config": fs.recipe.config}}
        notes += image_feature_notes(preset_name, spec, meta, side)
    return notes
