"""Extractors: the model side of ``featstore extract`` (see ``base`` for the contract).

Importing this package registers every extractor in ``EXTRACTORS``: ``grid``, ``roi``, ``detector``,
``dinov2``, ``dinov2-multilayer``, ``clip-image``, ``clip-text``, ``bert``, ``distilbert``, ``vilbert-text``,
``vg-regions``.
"""
from .base import EXTRACTORS, BaseConfig, Extractor, create_extractor, list_extractors
from .images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image
from .weights import fingerprint_files, fingerprint_state_dict, resolve_weights
from . import grid, roi, detector, dinov2, clip, text, vilbert_text  # noqa: F401,E402  (registration)
from . import vg_regions  # noqa: F401,E402  (registration)

__all__ = ["EXTRACTORS", "BaseConfig", "Extractor", "create_extractor", "list_extractors", "load_image",
           "ImageDecodeError", "DEFAULT_MAX_PIXELS", "resolve_weights", "fingerprint_files",
           "fingerprint_state_dict"]
