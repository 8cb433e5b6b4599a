"""featstore: extract multimodal features once into a versioned store (Zarr + LMDB) and read them fast."""
from .errors import CorruptDataError, FeatstoreError
from .store import ArraySpec, FeatureSetVersion, Recipe, Store, open_store, preflight
from .version import __version__

__all__ = ["ArraySpec", "CorruptDataError", "FeatstoreError", "FeatureSetVersion", "Recipe", "Store", "__version__",
           "open_store", "preflight"]
