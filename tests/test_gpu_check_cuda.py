"""The CUDA paths of the resized-pixel input (marked ``cuda``; ``benchmarks/gpu_check.py`` runs every
cuda-marked test with FEATSTORE_CUDA_TESTS=cuda, its ``--dry-run`` with FEATSTORE_CUDA_TESTS=cpu): uint8
pixels pinned, copied non-blocking and normalised on the device give the CPU's float32 input; an extraction
over a warm image cache (resized entries) on the device stores the CPU's features. Without a GPU and
without that variable they are skipped (tests/test_image_cache_resized.py covers the CPU paths)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from featstore.datasets import load_dataset
from featstore.extractors import create_extractor
from featstore.extractors.pixels import normalize_pixels
from featstore.runner import ExtractOptions, run_extraction
from featstore.runner.prefill import prefill_image_cache
from featstore.store import open_store
from test_image_cache import GRID, _dataset, _same_stamp_garbage

DEVICE = os.environ.get("FEATSTORE_CUDA_TESTS") or ("cuda" if torch.cuda.is_available() else "")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not DEVICE, reason="no GPU; benchmarks/gpu_check.py runs these "
                                                   "(FEATSTORE_CUDA_TESTS=cpu runs them on the CPU)")]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_pinned_uint8_pixels_normalised_on_the_device_equal_the_cpus():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 32, 40, 3), dtype=np.uint8))
    if DEVICE == "cuda":
        x = x.pin_memory()
        assert x.is_pinned()
    valid = torch.tensor([[40, 32], [17, 32], [40, 9], [1, 1]])
    got = normalize_pixels(x, MEAN, STD, torch.device(DEVICE), True, valid)
    assert got.device.type == DEVICE and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    want = normalize_pixels(x, MEAN, STD, torch.device("cpu"), True, valid)
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-6)  # a division may round 1 ulp apart


def test_extraction_over_a_warm_cache_on_the_device_stores_the_cpus_features(tmp_path):
    ds = load_dataset(_dataset(tmp_path / "data"), check_images=False)
    cache = tmp_path / "cache"
    recipe = create_extractor("grid", **GRID).resize_recipe()
    prefill_image_cache(ds, str(cache), num_workers=0, progress=False, recipes=[recipe])
    st = open_store(tmp_path / "store", create=True)
    run_extraction(st, ds, "grid", name="cpu", extractor_config=GRID,
                   options=ExtractOptions(batch_size=3, num_workers=0, device="cpu", amp="none", progress=False))
    for p in sorted((tmp_path / "data" / "img").glob("*.png")):
        _same_stamp_garbage(p)  # only the cache's resized entries can supply the device run's pixels
    dev = run_extraction(st, ds, "grid", name="dev", extractor_config=GRID,
                         options=ExtractOptions(batch_size=3, num_workers=2, device=DEVICE, amp="none",
                                                progress=False, image_cache=str(cache)))
    assert dev.n_written == 10 and list(dev.failures) == ["00090"]
    a, b = st.open("cpu"), st.open("dev")
    assert list(a.keys) == list(b.keys)
    for name in a.array_names:  # cuDNN may run float32 convolutions in TF32: 10 mantissa bits
        x, y = a.read(name).astype(np.float64), b.read(name).astype(np.float64)
        assert np.abs(x - y).max() <= 1e-2 * max(np.abs(x).max(), 1e-12), name
