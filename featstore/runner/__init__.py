"""Jobs that drive the library end to end (extraction)."""
from .extract import ExtractOptions, ExtractSummary, run_extraction

__all__ = ["ExtractOptions", "ExtractSummary", "run_extraction"]
