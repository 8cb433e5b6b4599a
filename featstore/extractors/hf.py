"""Loading Hugging Face models/tokenizers from a resolved local folder, with one-line errors.

``load_model`` loads a model whole: ``from_pretrained`` fills any tensor the folder lacks with a random
initialisation and only prints a warning, so a folder missing a layer would give features from a partly
random network. Here such a folder is refused, naming the tensors, unless they are under ``may_miss``
(parts the extractor never reads, e.g. BERT's pooler); the report of what was ignored travels with the
version (``Extractor.weights_load``, the version record's ``meta``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

from ..errors import FeatstoreError
from .weights import by_prefix


def load_pretrained(cls: Any, path: Path, what: str, **kwargs) -> Any:
    """``cls.from_pretrained(path, local_files_only=True, **kwargs)``; failures name the folder and the fix."""
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as e:
        detail = " ".join(str(e).split())[:160]
        raise FeatstoreError(f"cannot load {what} from {str(path)!r} ({type(e).__name__}: {detail}); "
                             f"pass a folder holding a {what} as written by save_pretrained") from e


def check_loading(info: Dict[str, Any], path: Path, what: str, may_miss: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """``from_pretrained``'s ``output_loading_info`` -> the load report; refuses (one line) a folder that
    leaves tensors of the model outside ``may_miss`` uninitialised from the file."""
    missing = sorted(info.get("missing_keys") or [])
    random = [k for k in missing if not k.startswith(may_miss)]
    if random:
        raise FeatstoreError(
            f"weights {str(path)!r} lack {len(random)} tensors of the {what} ({', '.join(random[:3])}"
            f"{', ...' if len(random) > 3 else ''}), which would start random; pass a folder holding the whole "
            f"{what} as written by save_pretrained")
    return {"missing_unused": missing, "unexpected": by_prefix(info.get("unexpected_keys") or [])}


def load_model(cls: Any, path: Path, what: str, may_miss: Tuple[str, ...] = (), **kwargs) -> Tuple[Any, Dict]:
    """(model, load report): ``load_pretrained`` with the whole-model check of ``check_loading``."""
    model, info = load_pretrained(cls, path, what, output_loading_info=True, **kwargs)
    return model, check_loading(info, path, what, may_miss)
