"""Raw zarr chunks written by ``zarr_direct.write_object`` are byte for byte what zarr-python writes.

The reference is zarr-python itself: the same array is written through ``zarr.Array.__setitem__`` into a
second store, and every chunk object of both is compared; the store's reads and ``verify`` must accept them.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec

from featstore.store import ArraySpec, Recipe, open_store
from featstore.store import backends
from featstore.store.zarr_direct import DirectLayout, encode_object, write_object

CASES = [  # rows, inner chunk rows, shard rows or None, dtype, row shape
    (130, 64, None, "float32", (3, 5)),  # an edge chunk of 2 rows, padded by zarr to 64
    (128, 64, None, "bool", ()),
    (130, 16, 64, "float16", (7,)),  # shards; the edge shard holds one partial inner chunk and 3 absent ones
    (200, 8, 64, "int32", (2,)),
    (40, 8, 64, "float32", (4,)),  # one shard, larger than the array
]


@pytest.mark.parametrize("n,inner,shard,dtype,shape", CASES)
def test_encoded_objects_equal_zarr_pythons(tmp_path, n, inner, shard, dtype, shape):
    arr = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="x", shape=(n,) + shape, dtype=dtype,
                            chunks=(inner,) + shape, shards=(shard,) + shape if shard else None,
                            compressors=[Crc32cCodec()], fill_value=0, config={"write_empty_chunks": True})
    data = (np.random.default_rng(0).random((n,) + shape) * 100).astype(dtype)
    arr[:] = data
    layout = DirectLayout.of(arr.metadata)
    assert layout is not None and layout.sharded == (shard is not None)
    per = layout.object_rows
    for i in range(-(-n // per)):
        path = tmp_path / "x" / "c" / str(i) / os.path.join(*["0"] * len(shape)) if shape else tmp_path / "x/c" / str(i)
        assert encode_object(layout, data[i * per:(i + 1) * per]) == path.read_bytes()


def test_write_object_replaces_whole_and_leaves_no_temporary(tmp_path):
    arr = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="x", shape=(64, 2), dtype="float32",
                            chunks=(64, 2), compressors=[Crc32cCodec()], fill_value=0)
    layout = DirectLayout.of(arr.metadata)
    target = tmp_path / "x" / "c" / "0" / "0"
    write_object(layout, str(target), np.ones((64, 2), "float32"))
    write_object(layout, str(target), np.full((64, 2), 2.0, "float32"))
    np.testing.assert_array_equal(zarr.open_array(zarr.storage.LocalStore(tmp_path), path="x")[:], 2.0)
    assert sorted(p.name for p in target.parent.iterdir()) == ["0"]


def test_write_object_failure_keeps_the_old_object(tmp_path, monkeypatch):
    arr = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="x", shape=(64,), dtype="int32",
                            chunks=(64,), compressors=[Crc32cCodec()], fill_value=0)
    layout = DirectLayout.of(arr.metadata)
    target = tmp_path / "x" / "c" / "0"
    write_object(layout, str(target), np.arange(64, dtype="int32"))
    before = target.read_bytes()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_object(layout, str(target), np.zeros(64, dtype="int32"))
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["0"]


@pytest.mark.parametrize("sharded", [False, True])
def test_store_writes_raw_arrays_directly_and_reads_them_back(tmp_path, monkeypatch, sharded):
    """A version written by the store (raw arrays by write_object, compressed ones by zarr-python) holds the
    same chunk objects as zarr-python writes for the same data, reads back, and verifies."""
    if sharded:
        monkeypatch.setattr(backends, "INNER_CHUNK_BYTES", 3 * 4 * 4 * 2)  # two rows per inner chunk
    from featstore.store import zarr_direct

    calls = []

    def spy(layout, path, rows, **kw):
        calls.append((path, len(rows)))
        return write_object(layout, path, rows, **kw)

    monkeypatch.setattr(zarr_direct, "write_object", spy)
    n = 21
    rng = np.random.default_rng(1)
    regions = rng.standard_normal((n, 3, 4)).astype(np.float32)
    st = open_store(tmp_path / "s", create=True)
    fsv = st.write("img", Recipe("img"), [f"k{i}" for i in range(n)],
                   {"regions": regions, "count": np.full(n, 3, np.int32)},
                   schema={"regions": ArraySpec((3, 4), "float32", True)}, modality="image", key_kind="image_key",
                   chunk_rows=8)
    zdir = tmp_path / "s/sets/img" / fsv.version / "data.zarr"
    written = sorted((os.path.relpath(p, zdir), last) for p, last in calls)
    assert written == [(os.path.join("regions", "c", str(c), "0", "0"), last) for c, last in ((0, 8), (1, 8), (2, 5))]
    np.testing.assert_array_equal(fsv.read("regions"), regions)
    assert st.verify("img").ok
    ref = zarr.open_array(zarr.storage.LocalStore(zdir), path="regions")
    ref_dir = tmp_path / "ref"
    copy = zarr.create_array(zarr.storage.LocalStore(ref_dir), name="regions", shape=ref.shape, dtype=ref.dtype,
                             chunks=ref.metadata.codecs[0].chunk_shape if sharded else ref.chunks,
                             shards=ref.metadata.chunk_grid.chunk_shape if sharded else None,
                             compressors=[Crc32cCodec()], fill_value=0, config={"write_empty_chunks": True})
    copy[:] = regions
    for c in range(3):
        rel = os.path.join("regions", "c", str(c), "0", "0")
        assert (zdir / rel).read_bytes() == (ref_dir / rel).read_bytes()


KILLED_WRITER = r"""
import os, signal, sys
import numpy as np
from featstore.store import ArraySpec, Recipe, open_store

real_replace = os.replace

def replace(src, dst):
    if "data.zarr~regions~c~1" in str(src):  # the second chunk's object: killed between write and rename
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

os.replace = replace
st = open_store(sys.argv[1], create=True)
w = st.writer("img", Recipe("img"), [f"k{i}" for i in range(16)], {"regions": ArraySpec((3, 4), "float32", True)},
              key_kind="image_key", modality="image", chunk_rows=8)
print(w.version, flush=True)
rows = np.arange(16 * 12, dtype=np.float32).reshape(16, 3, 4)
for c in (0, 1):
    w.write_chunk(c, {"regions": rows[c * 8:(c + 1) * 8], "count": np.full(8, 3, np.int32)})
"""


def test_a_killed_writers_object_temporary_is_removed_on_resume(tmp_path):
    """A raw object's temporary file goes in the version folder, not among zarr's chunk files, so the
    writer killed between writing it and renaming it leaves it where a resumed run removes it (once stale);
    the resumed version then commits and verifies."""
    import subprocess
    import sys
    import time

    root = tmp_path / "s"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(root)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr
    vdir = root / "sets" / "img" / proc.stdout.split()[0]
    left = [p for p in vdir.iterdir() if ".tmp-" in p.name]
    assert [p.name.split(".tmp-")[0] for p in left] == ["data.zarr~regions~c~1~0~0"]
    assert not [p for p in (vdir / "data.zarr").rglob("*") if ".tmp-" in p.name]
    os.utime(left[0], (time.time() - 3600, time.time() - 3600))
    st = open_store(root)
    rows = np.arange(16 * 12, dtype=np.float32).reshape(16, 3, 4)
    w = st.writer("img", Recipe("img"), [f"k{i}" for i in range(16)], {"regions": ArraySpec((3, 4), "float32", True)},
                  key_kind="image_key", modality="image", chunk_rows=8)
    assert not left[0].exists()
    assert w.pending_chunks() == [1]
    w.write_chunk(1, {"regions": rows[8:], "count": np.full(8, 3, np.int32)})
    fsv = w.commit()
    np.testing.assert_array_equal(fsv.read("regions"), rows)
    assert st.verify("img").ok


def test_encode_object_refuses_rows_of_another_shape(tmp_path):
    arr = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="x", shape=(64, 2), dtype="float32",
                            chunks=(64, 2), compressors=[Crc32cCodec()], fill_value=0)
    layout = DirectLayout.of(arr.metadata)
    with pytest.raises(ValueError, match=r"rows of shape \(64, 3\) do not fit an object of 64 rows of shape \(2,\)"):
        encode_object(layout, np.zeros((64, 3), "float32"))
    with pytest.raises(ValueError, match="rows of shape"):
        encode_object(layout, np.zeros((65, 2), "float32"))


def test_a_full_object_of_non_contiguous_or_big_endian_rows_encodes_as_its_values(tmp_path):
    """The no-copy path must not write a strided view's memory or big-endian bytes: the object equals
    zarr-python's for the same values."""
    arr = zarr.create_array(zarr.storage.LocalStore(tmp_path), name="x", shape=(64, 3), dtype="float32",
                            chunks=(64, 3), compressors=[Crc32cCodec()], fill_value=0)
    layout = DirectLayout.of(arr.metadata)
    values = np.random.default_rng(3).standard_normal((64, 6)).astype(np.float32)
    arr[:] = values[:, ::2]
    stored = (tmp_path / "x" / "c" / "0" / "0").read_bytes()
    assert encode_object(layout, values[:, ::2]) == stored
    assert encode_object(layout, values[:, ::2].astype(">f4")) == stored
