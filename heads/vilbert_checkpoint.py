"""Load Facebook/MMF ViLBERT checkpoints into a ``vilbert`` head (``heads.models.vilbert.VilbertHead``).

Checkpoint keys look like ``model.bert.encoder.layer.7.attention.self.query.weight`` (MMF), or with the
older ``bert.bert.`` / ``bert.`` prefixes (vilbert-multi-task, ``ViLBERT.format_state_key``), stored as a
bare state dict or under ``"model"`` (``"state_dict"`` is accepted too). After the prefix:

* ``encoder.layer.{i}.*`` with ``i >= text_start_layer`` -> the head's ``encoder.layer.{i - text_start_layer}``;
  the lower text layers ran before the features were cached, so they are reported as ignored;
* ``encoder.v_layer.*``, ``encoder.c_layer.*``, ``v_embeddings.*``, ``t_pooler.*``, ``v_pooler.*`` map as is;
* word/position embeddings, ``*position_ids``, pretraining heads and classifiers are ignored.

Files are read with ``torch.load(weights_only=True)``; a file that needs arbitrary unpickling is refused
unless ``trust_pickle=True`` (the CLI's ``--trust-checkpoint``), since unpickling can run code.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from featstore.errors import FeatstoreError

PREFIXES = ("model.bert.", "bert.bert.", "module.bert.", "bert.")
DIRECT = ("encoder.v_layer.", "encoder.c_layer.", "v_embeddings.", "t_pooler.", "v_pooler.")


@dataclass
class LoadReport:
    used_keys: List[str] = field(default_factory=list)  # checkpoint keys copied into the head
    ignored_keys: List[str] = field(default_factory=list)  # checkpoint keys with no home in the head
    missing_keys: List[str] = field(default_factory=list)  # head keys the checkpoint did not provide


def _read(path: str, trust_pickle: bool) -> dict:
    if not os.path.isfile(path):
        raise FeatstoreError(f"checkpoint {path!r} does not exist; pass the path of a ViLBERT .pt/.bin file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise FeatstoreError(f"checkpoint {path!r} cannot be unpickled ({str(e).splitlines()[0]}); "
                                 "check the file is a torch checkpoint") from None
        raise FeatstoreError(
            f"checkpoint {path!r} holds objects other than tensors, which safe loading refuses; pass "
            "--trust-checkpoint (trust_pickle=True) only if you trust the file, since unpickling can run code"
        ) from None
    except Exception as e:  # corrupt archive, truncated file, not a torch file
        raise FeatstoreError(f"checkpoint {path!r} cannot be read ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); check it is a torch checkpoint") from None
    return obj


def _state_dict(obj, path: str) -> Dict[str, Tensor]:
    if isinstance(obj, dict):
        for k in ("model", "state_dict"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise FeatstoreError(f"checkpoint {path!r} holds no state dict (tensors by name, bare or under 'model'); "
                             "pass a ViLBERT model checkpoint")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def map_key(key: str, text_start_layer: int) -> Tuple[Optional[str], str]:
    """``(head_key or None, reason)`` for one checkpoint key."""
    if key.endswith("position_ids"):
        return None, "position_ids"
    rest = None
    for p in PREFIXES:
        if key.startswith(p):
            rest = key[len(p):]
            break
    if rest is None:
        return None, "not a ViLBERT base key"
    if rest.startswith("encoder.layer."):
        idx, _, tail = rest[len("encoder.layer."):].partition(".")
        if not idx.isdigit():
            return None, "unknown"
        i = int(idx)
        if i < text_start_layer:
            return None, "text layer before the cached layer"
        return f"encoder.layer.{i - text_start_layer}.{tail}", ""
    if rest.startswith(DIRECT):
        return rest, ""
    return None, "no counterpart (text embeddings or unknown)"


def load_vilbert_checkpoint(head: nn.Module, path: str, *, trust_pickle: bool = False) -> LoadReport:
    """Copy the matching weights of a Facebook/MMF ViLBERT checkpoint at ``path`` into ``head`` (in place).

    Raises FeatstoreError (one line) for an unreadable/unsafe file, a checkpoint with no ViLBERT keys, a key
    whose shape differs from the head's, or a key the head lacks (its config has fewer layers).
    """
    if not hasattr(head, "encoder") or not hasattr(head, "v_embeddings"):
        raise FeatstoreError("load_vilbert_checkpoint needs a 'vilbert' head; build the run with --head vilbert")
    start = head.config.text_start_layer
    sd = _state_dict(_read(path, trust_pickle), path)
    own = head.state_dict()
    report = LoadReport()
    mapped: Dict[str, Tensor] = {}
    for key in sorted(sd):
        target, _ = map_key(key, start)
        if target is None:
            report.ignored_keys.append(key)
            continue
        if target not in own:
            raise FeatstoreError(
                f"checkpoint {path!r} key {key!r} has no counterpart {target!r} in the head; build the head "
                "with the checkpoint's layer counts (num_hidden_layers, v_num_hidden_layers, v/t_biattention_id)")
        if tuple(sd[key].shape) != tuple(own[target].shape):
            raise FeatstoreError(
                f"checkpoint {path!r} key {key!r} has shape {tuple(sd[key].shape)} but the head's {target!r} has "
                f"{tuple(own[target].shape)}; match the head's sizes (hidden_size, v_hidden_size, bi_hidden_size, "
                "intermediate sizes, feature dim) to the checkpoint")
        mapped[target] = sd[key]
        report.used_keys.append(key)
    if not mapped:
        raise FeatstoreError(f"checkpoint {path!r} has no ViLBERT weights (keys like "
                             "'model.bert.encoder.v_layer.0...'); pass a ViLBERT checkpoint")
    head.load_state_dict(mapped, strict=False)
    report.missing_keys = sorted(k for k in own if k not in mapped)
    return report
