"""The Zarr layout decisions: codecs chosen by "auto" compression, and write chunks that become shards."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from featstore.errors import FeatstoreError
from featstore.store import ArraySpec, Recipe, open_store
from featstore.store import backends


def _codecs(version_dir: Path, name: str) -> list:
    meta = json.loads((version_dir / "data.zarr" / name / "zarr.json").read_text())
    codecs = meta["codecs"]
    if codecs[0]["name"] == "sharding_indexed":
        codecs = codecs[0]["configuration"]["codecs"]
    return [c["name"] for c in codecs]


def _write(store, name, modality, key_kind, **kw):
    n = 10
    arrays = {"regions": np.random.default_rng(0).standard_normal((n, 3, 4)).astype(np.float16),
              "count": np.full(n, 3, np.int32), "input_ids": np.arange(n * 3).reshape(n, 3).astype(np.int32)}
    schema = {"regions": ArraySpec((3, 4), "float16", True), "input_ids": ArraySpec((3,), "int32", True)}
    return store.write(name, Recipe(name), [f"k{i}" for i in range(n)], arrays, schema=schema, modality=modality,
                       key_kind=key_kind, **kw)


def test_auto_compression_keeps_dense_image_floats_raw_and_compresses_text_and_ints(tmp_path):
    st = open_store(tmp_path / "s", create=True)
    img = _write(st, "img", "image", "image_key")
    txt = _write(st, "txt", "text", "sample_id")
    img_dir, txt_dir = tmp_path / "s/sets/img" / img.version, tmp_path / "s/sets/txt" / txt.version
    assert _codecs(img_dir, "regions") == ["bytes", "crc32c"]
    assert _codecs(img_dir, "input_ids") == ["bytes", "blosc", "crc32c"]
    assert _codecs(txt_dir, "regions") == ["bytes", "blosc", "crc32c"]
    forced = _write(st, "forced", "image", "image_key", backend_options={"compression": "zstd"})
    assert _codecs(tmp_path / "s/sets/forced" / forced.version, "regions") == ["bytes", "zstd", "crc32c"]
    for fsv in (img, txt, forced):  # every codec choice reads back the same numbers
        np.testing.assert_array_equal(fsv.read("input_ids"), np.arange(30).reshape(10, 3))


def test_unknown_compression_is_a_one_line_error(tmp_path):
    st = open_store(tmp_path / "s", create=True)
    with pytest.raises(FeatstoreError, match="compression 'lz5' is unknown"):
        _write(st, "img", "image", "image_key", backend_options={"compression": "lz5"})


def test_large_write_chunks_become_shards_of_inner_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "INNER_CHUNK_BYTES", 3 * 4 * 2 * 2)  # two rows of regions per inner chunk
    st = open_store(tmp_path / "s", create=True)
    fsv = _write(st, "img", "image", "image_key", chunk_rows=8)
    meta = json.loads((tmp_path / "s/sets/img" / fsv.version / "data.zarr/regions/zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [8, 3, 4]  # one shard per write chunk
    assert meta["codecs"][0]["configuration"]["chunk_shape"] == [2, 3, 4]
    assert st.verify("img").ok
    np.testing.assert_array_equal(fsv.select(["k9", "k0"])["input_ids"], [[27, 28, 29], [0, 1, 2]])


@pytest.mark.parametrize("name", ["ids", "valid", "mask"])
def test_reserved_array_names_are_refused_before_anything_is_written(tmp_path, name):
    st = open_store(tmp_path / "s", create=True)
    with pytest.raises(FeatstoreError, match=f"array name '{name}' is reserved"):
        st.write("x", Recipe("x"), ["a"], {name: np.zeros((1, 2), np.float32)}, modality="image", key_kind="image_key")
    assert st.feature_sets() == []
