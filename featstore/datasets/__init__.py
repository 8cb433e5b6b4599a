"""Dataset manifests: read Hateful Memes, Memotion, MM-IMDB or generic CSV/JSONL files into one
validated ``DatasetManifest`` of ``Sample`` rows (see ARCHITECTURE.md and each format's module)."""
from .loader import DATASET_FORMATS, detect_format, load_dataset
from .manifest import DatasetManifest, Sample, TaskInfo, compute_fingerprint, label_value

__all__ = ["DATASET_FORMATS", "DatasetManifest", "Sample", "TaskInfo", "compute_fingerprint", "detect_format",
           "label_value", "load_dataset"]
