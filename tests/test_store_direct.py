"""The direct raw-chunk reader (featstore.store.zarr_direct) against zarr-python's own decode of the same
arrays, plus every way a chunk object can be damaged."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from featstore.errors import CorruptDataError
from featstore.store import ArraySpec, Recipe, backends, open_store
from featstore.store.zarr_direct import DirectLayout, read_rows

N, R, D = 45, 3, 5  # 45 rows in chunks of 8: the last chunk is partly past the end


def _write(tmp_path: Path, *, sharded: bool, monkeypatch, compression: str = "auto", dtype="float16"):
    if sharded:  # two rows per inner chunk, four inner chunks per 8-row shard
        monkeypatch.setattr(backends, "INNER_CHUNK_BYTES", R * D * np.dtype(dtype).itemsize * 2)
    rng = np.random.default_rng(3)
    regions = rng.standard_normal((N, R, D)).astype(dtype)
    pooled = rng.standard_normal((N, D)).astype("float32")
    st = open_store(tmp_path / "s", create=True)
    fsv = st.write("img", Recipe("x"), [f"{i:05d}" for i in range(N)],
                   {"regions": regions, "count": np.full(N, R, np.int32), "pooled": pooled},
                   schema={"regions": ArraySpec((R, D), dtype, True), "pooled": ArraySpec((D,), "float32")},
                   modality="image", key_kind="image_key", chunk_rows=8, backend_options={"compression": compression})
    zdir = tmp_path / "s/sets/img" / fsv.version / "data.zarr"
    return st, fsv, zdir, regions, pooled


def _layout_and_paths(zdir: Path, name: str):
    arr = zarr.open_array(str(zdir / name), mode="r")
    layout = DirectLayout.of(arr.metadata)
    tail = ["0"] * (arr.ndim - 1)
    return arr, layout, (lambda i: str(zdir.joinpath(name, "c", str(i), *tail)))


@pytest.mark.parametrize("sharded", [False, True])
def test_direct_reads_equal_zarrs_own_decode(tmp_path, monkeypatch, sharded):
    _, fsv, zdir, regions, pooled = _write(tmp_path, sharded=sharded, monkeypatch=monkeypatch)
    arr, layout, path = _layout_and_paths(zdir, "regions")
    assert layout is not None and layout.sharded == sharded
    assert (layout.object_rows, layout.inner_rows) == ((8, 2) if sharded else (8, 8))
    rng = np.random.default_rng(0)
    selections = [np.arange(N), np.arange(8, 16), np.arange(40, 45), np.array([0]), np.array([44]),
                  np.array([1, 2, 9, 17, 18, 19, 20, 44]), np.sort(rng.choice(N, 20, replace=False))]
    for rows in selections:
        for threads in (1, 4):
            got = read_rows(layout, path, rows, "regions", threads=threads)
            np.testing.assert_array_equal(got, arr.get_orthogonal_selection((rows,)))  # zarr-python's decode
            np.testing.assert_array_equal(got, regions[rows])
    # through the public API, for both arrays
    np.testing.assert_array_equal(fsv.read("regions"), regions)
    np.testing.assert_array_equal(fsv.read("pooled"), pooled)
    keys = ["00044", "00003", "00003", "00020"]
    np.testing.assert_array_equal(fsv.select(keys, ["regions"])["regions"], regions[[44, 3, 3, 20]])


def test_compressed_and_bool_arrays_keep_zarrs_path(tmp_path, monkeypatch):
    _, fsv, zdir, regions, _ = _write(tmp_path, sharded=False, monkeypatch=monkeypatch, compression="blosc")
    assert DirectLayout.of(zarr.open_array(str(zdir / "regions"), mode="r").metadata) is None
    assert DirectLayout.of(zarr.open_array(str(zdir / "valid"), mode="r").metadata) is None
    np.testing.assert_array_equal(fsv.read("regions"), regions)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip-data", "flip-crc", "truncate", "delete", "append"])
def test_damaged_chunks_raise_and_name_the_chunk(tmp_path, monkeypatch, damage):
    st, fsv, zdir, _, _ = _write(tmp_path, sharded=False, monkeypatch=monkeypatch)
    chunk = zdir / "regions/c/2/0/0"  # rows 16..23
    size = chunk.stat().st_size
    if damage == "flip-data":
        _flip(chunk, size // 2)
    elif damage == "flip-crc":
        _flip(chunk, size - 1)
    elif damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[: size - 7])
    elif damage == "append":
        chunk.write_bytes(chunk.read_bytes() + b"\0")
    else:
        chunk.unlink()
    arr, layout, path = _layout_and_paths(zdir, "regions")
    with pytest.raises(CorruptDataError, match=r"c/2/0/0"):
        read_rows(layout, path, np.arange(N), "regions")
    with pytest.raises(CorruptDataError, match=r"c/2/0/0"):
        read_rows(layout, path, np.array([17]), "regions", threads=1)
    np.testing.assert_array_equal(read_rows(layout, path, np.arange(8), "regions"), arr[:8])  # others fine
    fresh = st.open("img")
    with pytest.raises(CorruptDataError):
        fresh.read("regions")
    report = st.verify("img")
    listed = [(c, a) for c, a, _ in report.problems]
    if damage == "delete":  # a lost object is listed once, as missing; its chunk's failed read is not repeated
        assert listed == [(None, "regions/c/2/0/0")]
    else:
        assert (2, "regions") in listed and all(c == 2 for c, _ in listed)


@pytest.mark.parametrize("where", ["inner-chunk", "index", "index-crc"])
def test_damaged_shards_raise(tmp_path, monkeypatch, where):
    st, _, zdir, _, _ = _write(tmp_path, sharded=True, monkeypatch=monkeypatch)
    shard = zdir / "regions/c/1/0/0"
    size = shard.stat().st_size
    index_bytes = 4 * 16 + 4
    if where == "inner-chunk":
        _flip(shard, 3)
    elif where == "index":
        _flip(shard, size - index_bytes + 2)  # the first entry's offset
    else:
        _flip(shard, size - 2)
    _, layout, path = _layout_and_paths(zdir, "regions")
    with pytest.raises(CorruptDataError, match=r"c/1/0/0"):
        read_rows(layout, path, np.arange(8, 16), "regions")
    assert [(c, a) for c, a, _ in st.verify("img").problems] == [(1, "regions")]


def test_forced_raw_storage_reads_every_dtype_directly(tmp_path, monkeypatch):
    """compression='none': bool, int32 and float arrays all take the direct path and read back exactly."""
    st, fsv, zdir, regions, pooled = _write(tmp_path, sharded=False, monkeypatch=monkeypatch, compression="none")
    for name in ("valid", "count", "regions", "pooled"):
        assert DirectLayout.of(zarr.open_array(str(zdir / name), mode="r").metadata) is not None, name
    np.testing.assert_array_equal(fsv.read("count"), np.full(N, R, np.int32))
    np.testing.assert_array_equal(fsv.read("regions"), regions)
    got = fsv.select(["00007", "00044"], ["regions", "pooled"], max_items=2)
    np.testing.assert_array_equal(got["regions"], regions[[7, 44], :2])
    np.testing.assert_array_equal(got["mask"], np.ones((2, 2), bool))
    assert st.verify("img").ok
