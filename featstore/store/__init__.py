"""The versioned feature store: see store.py (the entry point), writer.py, reader.py, backends.py, layout.py
(file names, checksums, the version record) and location.py (local or fsspec files)."""
from .backends import COUNT, VALID
from .join import JoinReport, manifest_mismatch_warnings, preflight
from .location import Location
from .reader import FeatureSetVersion
from .spec import ArraySpec, Recipe
from .store import Store, VerifyReport, VersionInfo, open_store, parse_ref
from .writer import VersionWriter

__all__ = ["ArraySpec", "COUNT", "FeatureSetVersion", "JoinReport", "Location", "Recipe", "Store", "VALID",
           "manifest_mismatch_warnings",
           "VerifyReport", "VersionInfo", "VersionWriter", "open_store", "parse_ref", "preflight"]
