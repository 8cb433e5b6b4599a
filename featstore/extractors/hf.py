"""Loading Hugging Face models/tokenizers from a resolved local folder, with one-line errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FeatstoreError


def load_pretrained(cls: Any, path: Path, what: str, **kwargs) -> Any:
    """``cls.from_pretrained(path, local_files_only=True, **kwargs)``; failures name the folder and the fix."""
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as e:
        detail = " ".join(str(e).split())[:160]
        raise FeatstoreError(f"cannot load {what} from {str(path)!r} ({type(e).__name__}: {detail}); "
                             f"pass a folder holding a {what} as written by save_pretrained") from e
