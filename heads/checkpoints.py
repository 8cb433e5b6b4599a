"""What every ``--init-checkpoint`` reader shares: finding and reading the tensors, the load report, and
building a head with the sizes a checkpoint implies.

A checkpoint is a file (``torch.save`` output, bare or under ``"model"`` / ``"state_dict"``, or a
``.safetensors`` file), a folder holding one of ``FOLDER_FILES`` (a ``save_pretrained`` folder, MMF's zoo
folder) or a model id (``bert-base-uncased``, ``org/name``) found in the local Hugging Face cache - never
the network; a miss says how to get it. Old TF-port LayerNorm names (``gamma`` / ``beta``, as in
bert-base-uncased's ``pytorch_model.bin``) read as torch's (``weight`` / ``bias``): ``torch_names``.

The readers of one head family (``heads.vilbert_checkpoint``, ``heads.visualbert_checkpoint``) supply a
``config_from_checkpoint(shapes, given)`` and a ``load_state(head, sd, path) -> LoadReport``;
``head_from_checkpoint`` does the rest for the head itself or for refnet over it (``base=``).

One read per file: ``read_weights`` keeps the tensors of the last file it read (one entry, keyed by the
file's realpath, size, mtime, inode, a hash of its first and last 64 KiB, and ``trust_pickle``), so the
meta-device check before a run and every seed after it read a multi-gigabyte checkpoint once. Loaders copy
from those tensors (``load_state_dict`` without ``assign``) and never change them; each call gets its own
dict. A rewritten file is read again; ``forget_read_weights()`` drops the entry.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from torch import Tensor, nn

from featstore.errors import FeatstoreError

FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")


OTHER_LABEL_COUNT = "classifier of another label count"  # the report group of a final layer left initialised


@dataclass
class LoadReport:
    path: str = ""
    used_keys: List[str] = field(default_factory=list)  # checkpoint keys copied into the head
    ignored_keys: List[str] = field(default_factory=list)  # checkpoint keys left out (see ``groups``)
    missing_keys: List[str] = field(default_factory=list)  # head keys the checkpoint did not provide
    reinitialised_keys: List[str] = field(default_factory=list)  # checkpoint keys of another shape, not used
    groups: Dict[str, List[str]] = field(default_factory=dict)  # "used: <group>" / "ignored: <group>" -> keys
    notes: List[str] = field(default_factory=list)

    def add(self, kind: str, group: str, key: str) -> None:
        (self.used_keys if kind == "used" else self.ignored_keys).append(key)
        self.groups.setdefault(f"{kind}: {group}", []).append(key)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def other_label_count(self, key: str, have, want) -> bool:
        """Record checkpoint ``key``, a final layer of shape ``have`` where the head's is ``want`` (another label
        count), as ignored (the head's layer stays initialised) -> False: it is not copied."""
        self.add("ignored", OTHER_LABEL_COUNT, key)
        self.note(f"classifier: the checkpoint's final layer has shape {list(have)}, the head's {list(want)} "
                  "(another label count); it was left initialised")
        return False

    def _counts(self, kind: str) -> str:
        return ", ".join(f"{g.split(': ', 1)[1]} {len(k)}" for g, k in self.groups.items() if g.startswith(kind))

    def lines(self) -> List[str]:
        """Two lines: what was used and missing; what was ignored or re-initialised, and why; then a line of its
        own for each note that is a ``WARNING:`` (the inputs do not match what the file was trained on)."""
        top = sorted({k.split(".", 1)[0] for k in self.missing_keys})
        first = (f"checkpoint {self.path}: used {len(self.used_keys)} tensors ({self._counts('used')}); "
                 f"missing {len(self.missing_keys)}" + (f" ({', '.join(top)}: left initialised)" if top else ""))
        second = f"  ignored {len(self.ignored_keys)} ({self._counts('ignored') or 'none'})"
        if self.reinitialised_keys:
            second += f"; re-initialised {', '.join(self.reinitialised_keys)}"
        warnings = [n for n in self.notes if n.startswith("WARNING:")]
        notes = [n for n in self.notes if n not in warnings]
        return [first, second + "".join(f"; {n}" for n in notes)] + [f"  {w}" for w in warnings]

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.lines()
        return d


def torch_names(key: str) -> str:
    """TF-port LayerNorm names (``LayerNorm.gamma`` / ``beta``) as torch's (``weight`` / ``bias``)."""
    if ".LayerNorm." in key or key.startswith("LayerNorm."):
        key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
    return key


def local_path(path) -> Path:
    """``path`` itself, or a model id resolved in the local Hugging Face cache
    (``featstore.extractors.weights.resolve_weights``)."""
    from featstore.extractors.weights import looks_like_model_id, resolve_weights

    p = Path(os.path.expanduser(os.fspath(path)))
    if p.exists() or not looks_like_model_id(os.fspath(path)):
        return p
    return resolve_weights(os.fspath(path), "dir")


_LAST_READ: Dict[str, Any] = {}  # {"stamp": (...), "tensors": {...}}: the last file read_weights read


def forget_read_weights() -> None:
    """Drop the tensors ``read_weights`` keeps of the last file it read."""
    _LAST_READ.clear()


STAMP_BYTES = 1 << 16  # the file's first and last bytes that its stamp hashes


def _file_stamp(p: Path, trust_pickle: bool) -> tuple:
    """What tells a file apart from its earlier contents: realpath, size, mtime, inode and a hash of its ends
    (a torch zip file ends with the CRC32 of every record; mtimes tick only every few milliseconds)."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        st = p.stat()
        with open(p, "rb") as f:
            digest.update(f.read(STAMP_BYTES))
            f.seek(max(0, st.st_size - STAMP_BYTES))
            digest.update(f.read(STAMP_BYTES))
    except OSError as e:
        raise FeatstoreError(f"checkpoint {str(p)!r} cannot be read ({e.strerror or type(e).__name__}); check that the "
                             "file can be read") from None
    return (os.path.realpath(p), st.st_size, st.st_mtime_ns, st.st_ino, digest.hexdigest(), bool(trust_pickle))


def read_weights(path, trust_pickle: bool = False, how_to_get: str = "") -> Dict[str, Tensor]:
    """The tensors of a checkpoint file, model folder or cached model id (module docstring) by name, the
    LayerNorm names as torch's; ``how_to_get`` ends the message when nothing is found. The last file's
    tensors are kept for the next call on the same unchanged file (module docstring)."""
    p = checkpoint_file(path, how_to_get)
    stamp = _file_stamp(p, trust_pickle)
    if _LAST_READ.get("stamp") != stamp:
        _LAST_READ.clear()
        _LAST_READ.update(stamp=stamp, tensors=_read_file(p, trust_pickle))
    return dict(_LAST_READ["tensors"])


def checkpoint_file(path, how_to_get: str = "") -> Path:
    """The weight file ``path`` names: itself, or the first of ``FOLDER_FILES`` in a folder or cached model."""
    p = local_path(path)
    if p.is_dir():
        found = next((p / f for f in FOLDER_FILES if (p / f).is_file()), None)
        if found is None:
            raise FeatstoreError(f"checkpoint folder {str(p)!r} holds none of {', '.join(FOLDER_FILES)}; pass the "
                                 f"weight file itself. {how_to_get}".rstrip())
        p = found
    if not p.exists():
        raise FeatstoreError(f"checkpoint {str(p)!r} does not exist; {how_to_get or 'pass the path of the file'}")
    return p


def _read_file(p: Path, trust_pickle: bool) -> Dict[str, Tensor]:
    from featstore.extractors.vilbert_text import read_checkpoint

    if p.suffix == ".safetensors":
        from featstore.extractors.weights import load_state_dict

        sd = load_state_dict(p)
    else:
        sd = read_checkpoint(str(p), trust_pickle)
    return {torch_names(k): v for k, v in sd.items()}


def head_from_checkpoint(family: str, name: str, inputs, spec, head_cfg: Dict[str, Any], path, *,
                         config_from_checkpoint: Callable[[Dict[str, tuple], Dict[str, Any]], Dict[str, Any]],
                         load_state: Callable[[nn.Module, Dict[str, Tensor], str], LoadReport],
                         trust_pickle: bool = False, how_to_get: str = "") -> Tuple[nn.Module, LoadReport]:
    """Build head ``name`` (``family`` itself, or ``refnet`` with ``base=family``) with the sizes the
    checkpoint at ``path`` implies where ``head_cfg`` gives none, and load the checkpoint -> (head, report)."""
    from .models import create_head

    if name != family and not (name == "refnet" and head_cfg.get("base") == family):
        raise FeatstoreError(f"this checkpoint reader initialises a {family} head, not {name!r}; pass --head {family} "
                             f"(or --head refnet --set base={family})")
    sd = read_weights(path, trust_pickle, how_to_get)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    if name == family:
        cfg = config_from_checkpoint(shapes, dict(head_cfg))
    else:
        cfg = dict(head_cfg, base_cfg=config_from_checkpoint(shapes, dict(head_cfg.get("base_cfg") or {})))
    head = create_head(name, inputs, spec, **cfg)
    report = load_state(head.base if name == "refnet" else head, sd, str(path))
    return head, report
