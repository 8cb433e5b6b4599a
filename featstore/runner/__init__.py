"""Jobs that drive the library end to end (extraction)."""
from .extract import ExtractOptions, ExtractSummary, run_extraction
from .image_cache import DecodedImageCache

__all__ = ["DecodedImageCache", "ExtractOptions", "ExtractSummary", "run_extraction"]
