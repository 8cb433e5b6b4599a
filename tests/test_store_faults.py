"""Faults: corrupted, truncated and deleted chunks (Zarr) and records (LMDB), a writer killed mid-write and
resumed, and two writer processes filling one version at once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import store_helpers as H  # noqa: E402

from featstore import CorruptDataError, FeatstoreError, open_store  # noqa: E402
from featstore.store import backends  # noqa: E402

N, R, D = 24, 4, 8
CHUNK = 6


@pytest.fixture(autouse=True)
def _close_lmdb():
    yield
    backends.close_lmdb_envs()


def _write(root, backend="zarr", name="img", **kw):
    keys, arrays = H.region_data(N, R, D, "float32", seed=21)
    fsv = open_store(root, create=True).write(name, H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                              per_item=H.PER_ITEM, chunk_rows=CHUNK, backend=backend, **kw)
    return keys, arrays, os.path.join(root, "sets", name, fsv.version)


def _problems(report):
    return {(c, a): why for c, a, why in report.problems}


# ---- Zarr ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sharded,where", [(False, None), (True, None), (True, -12)])
def test_zarr_corrupted_and_truncated_chunks(tmp_path, monkeypatch, sharded, where):
    """``where``: offset of the flipped byte (None: the middle; -12: inside a shard's index)."""
    if sharded:  # rows of several hundred bytes: a writer chunk becomes one shard of one-row inner chunks
        monkeypatch.setattr(backends, "INNER_CHUNK_BYTES", 64)
    root = str(tmp_path / "s")
    keys, arrays, vdir = _write(root)
    spec = json.loads(Path(vdir, "data.zarr", "regions", "zarr.json").read_text())
    assert (spec["codecs"][0]["name"] == "sharding_indexed") == sharded
    regions = H.chunk_objects(vdir, "regions")
    pooled = H.chunk_objects(vdir, "pooled")
    assert len(regions) == len(pooled) == N // CHUNK
    H.flip_byte(regions[1], where)
    H.truncate(pooled[3])
    store = open_store(root)
    report = store.verify("img")
    probs = _problems(report)
    assert set(probs) == {(1, "regions"), (3, "pooled")}, report.lines()
    assert all("corrupted" in why for why in probs.values())
    text = "\n".join(report.lines())
    assert "chunk 1 regions" in text and "chunk 3 pooled" in text and not report.ok
    fsv = store.open("img")
    with pytest.raises(CorruptDataError) as e:
        fsv.read("regions")
    H.assert_one_line_error(e, "'regions'", "corrupted", "featstore verify")
    with pytest.raises(CorruptDataError):
        fsv.read("pooled")
    with pytest.raises(CorruptDataError):
        fsv.select([keys[0]] + keys[CHUNK:2 * CHUNK], names=["regions"])  # every row of chunk 1
    with pytest.raises(CorruptDataError):
        fsv.select([keys[3 * CHUNK]])  # chunk 3, every array
    with pytest.raises(CorruptDataError):
        fsv.load()
    # rows outside the damaged chunks still read, and exactly
    fine = [keys[0], keys[2 * CHUNK + 1], keys[3]]
    got = fsv.select(fine, max_items=R)
    ref = H.reference_select(keys, arrays, fine, R)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    np.testing.assert_array_equal(fsv.read("boxes"), arrays["boxes"])


def test_zarr_deleted_chunk(tmp_path):
    root = str(tmp_path / "s")
    keys, arrays, vdir = _write(root)
    gone = H.chunk_objects(vdir, "boxes")[2]
    os.remove(gone)
    store = open_store(root)
    report = store.verify("img")
    probs = _problems(report)
    assert probs.get((None, "boxes/c/2/0/0")) == "missing", report.lines()
    assert list(probs) == [(None, "boxes/c/2/0/0")]  # said once: its chunk's failed read is not listed again
    assert report.lines() == [f"{report.ref}: 1 problem(s)", "  object boxes/c/2/0/0: missing"]
    fsv = store.open("img")
    with pytest.raises(CorruptDataError) as e:
        fsv.read("regions")  # any read of a version with a lost object refuses to return data
    H.assert_one_line_error(e, "1 stored chunks are missing", "boxes/c/2/0/0", "featstore verify img@")
    with pytest.raises(CorruptDataError):
        open_store(root).open("img").select([keys[2 * CHUNK]], names=["boxes"])


# ---- LMDB ----------------------------------------------------------------------------------------------------
def _raw_lmdb_edit(vdir, fn):
    import lmdb

    backends.close_lmdb_envs()  # LMDB allows one environment per path and process
    env = lmdb.open(os.path.join(vdir, "data.lmdb"), subdir=True)
    try:
        with env.begin(write=True) as txn:
            fn(txn)
    finally:
        env.close()


def test_lmdb_corrupted_record(tmp_path):
    root = str(tmp_path / "s")
    keys, arrays, vdir = _write(root, backend="lmdb")
    bad = keys[CHUNK + 1]

    def flip(txn):
        raw = bytearray(txn.get(bad.encode()))
        raw[len(raw) - 5] ^= 0x01
        txn.put(bad.encode(), bytes(raw))

    _raw_lmdb_edit(vdir, flip)
    store = open_store(root)
    report = store.verify("img")
    probs = _problems(report)
    assert {c for c, _ in probs} == {1} and ("regions" in {a for _, a in probs}), report.lines()
    assert all("checksum mismatch" in why and repr(bad) in why for why in probs.values())
    fsv = store.open("img")
    with pytest.raises(CorruptDataError) as e:
        fsv.read("pooled")
    H.assert_one_line_error(e, f"record {bad!r}", "checksum mismatch", "featstore verify")
    with pytest.raises(CorruptDataError):
        fsv.select([keys[0], bad])
    got = fsv.select([keys[0], keys[CHUNK + 2]], names=["pooled"])
    np.testing.assert_array_equal(got["pooled"], arrays["pooled"][[0, CHUNK + 2]])


def test_lmdb_deleted_record(tmp_path):
    root = str(tmp_path / "s")
    keys, arrays, vdir = _write(root, backend="lmdb", failures={"00020": "broken file"})
    lost = keys[4]
    _raw_lmdb_edit(vdir, lambda txn: txn.delete(lost.encode()))
    store = open_store(root)
    report = store.verify("img")
    assert {c for c, _, _ in report.problems} == {0}, report.lines()
    assert any(repr(lost) in why and "missing" in why for _, _, why in report.problems)
    fsv = store.open("img")
    with pytest.raises(CorruptDataError) as e:
        fsv.select([lost])
    H.assert_one_line_error(e, repr(lost), "missing")
    with pytest.raises(CorruptDataError):
        fsv.read("regions")
    # the failed key is a recorded failure, not lost data: its chunk still verifies and reads
    assert "00020" not in fsv
    got = fsv.select(["00021", "00019"], names=["image_size"])
    np.testing.assert_array_equal(got["image_size"], arrays["image_size"][[21, 19]])


# ---- a writer killed mid-write -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["zarr", "lmdb"])
def test_killed_writer_is_invisible_and_resumes(tmp_path, backend):
    args = dict(name="img", n=N, r=R, d=D, dtype="float16", seed=31, chunk_rows=CHUNK, backend=backend)
    url = str(tmp_path / "s")
    proc = H.run_writer(url=url, kill_after=2, **args)
    assert proc.returncode == -9, proc.stderr
    store = open_store(url)
    assert store.versions("img") == []
    partial = store.versions("img", include_incomplete=True)
    assert len(partial) == 1 and not partial[0].complete
    assert (partial[0].chunks_done, partial[0].chunks_total) == (2, N // CHUNK)
    with pytest.raises(FeatstoreError) as e:
        store.open("img")
    H.assert_one_line_error(e, "no complete version", "rerun the same command to resume")
    with pytest.raises(FeatstoreError) as e:
        store.open("img", partial[0].version)
    H.assert_one_line_error(e, "no complete version", "rerun")

    keys, arrays = H.region_data(N, R, D, "float16", 31)
    w = store.writer("img", H.recipe(), keys, H.region_schema(R, D, "float16"), key_kind="image_key",
                     modality="image", chunk_rows=CHUNK, backend=backend)
    assert w.version == partial[0].version
    assert w.pending_chunks() == [2, 3]
    H.write_chunks(w, arrays, w.pending_chunks())
    resumed = w.commit()

    ref_url = str(tmp_path / "ref")
    proc = H.run_writer(url=ref_url, commit=True, **args)
    assert proc.returncode == 0, proc.stderr
    ref = open_store(ref_url).open("img")
    got = open_store(url).open("img")
    assert got.version == resumed.version == ref.version
    assert got.keys.tolist() == ref.keys.tolist() == keys
    for name in ref.array_names:
        a, b = got.read(name), ref.read(name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, err_msg=name)
        np.testing.assert_array_equal(a, arrays[name], err_msg=name)
    assert [c["checksums"] for c in got.record["chunks"]] == [c["checksums"] for c in ref.record["chunks"]]
    assert open_store(url).verify("img").ok


# ---- two writers on one version ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["zarr", "lmdb"])
def test_two_writer_processes_fill_one_version(tmp_path, backend):
    url = str(tmp_path / "s")
    go = str(tmp_path / "go")
    args = dict(url=url, name="img", n=N + 5, r=R, d=D, dtype="float32", seed=41, chunk_rows=4, backend=backend,
                go_file=go)
    procs = [subprocess.Popen(H.writer_command(parity=p, **args), env=H.writer_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in (0, 1)]
    time.sleep(0.3)
    Path(go).touch()  # both processes open the version and write at the same moment
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    written = [json.loads(o[0]) for o in outs]
    assert written == [[0, 2, 4, 6], [1, 3, 5, 7]]

    keys, arrays = H.region_data(N + 5, R, D, "float32", 41)
    w = open_store(url).writer("img", H.recipe(), keys, H.region_schema(R, D, "float32"), key_kind="image_key",
                               modality="image", chunk_rows=4, backend=backend)
    assert w.pending_chunks() == []
    w.commit()
    backends.close_lmdb_envs()
    fsv = open_store(url).open("img")
    assert fsv.keys.tolist() == keys
    for name, a in arrays.items():
        np.testing.assert_array_equal(fsv.read(name), a, err_msg=name)
    assert open_store(url).verify("img").ok


def test_lmdb_record_with_a_valid_checksum_but_a_broken_table_is_corrupt():
    import struct

    import google_crc32c

    from featstore.errors import CorruptDataError
    from featstore.store.backends import _MAGIC, decode_record, encode_record

    good = encode_record({"x": np.arange(6, dtype=np.float32).reshape(2, 3)})
    np.testing.assert_array_equal(decode_record(good, "r")["x"], np.arange(6, dtype=np.float32).reshape(2, 3))
    for table in (b"not json", b'[["x","<f4",[2,3],7]]'):  # unparsable; nbytes that do not fit the shape
        body = struct.pack("<I", len(table)) + table + b"\0" * 24
        rec = _MAGIC + struct.pack("<I", google_crc32c.value(body)) + body
        with pytest.raises(CorruptDataError, match="record layout is invalid"):
            decode_record(rec, "r")


def test_resume_removes_a_killed_writers_stale_tmp_files(tmp_path):
    """Item 14: ``*.tmp-*`` files of atomic writes a killed writer never renamed go on resume; a fresh
    one (a live writer's, renamed within milliseconds) is left alone."""
    root = tmp_path / "s"
    keys, arrays = H.region_data(N, R, D, "float32", seed=2)
    st = open_store(str(root), create=True)
    w = st.writer("img", H.recipe(), keys, H.region_schema(R, D, "float32"), key_kind="image_key",
                  modality="image", chunk_rows=CHUNK)
    H.write_chunks(w, arrays, [0])
    vdir = Path(root, "sets", "img", w.version)
    stale = [vdir / "chunks" / "1.json.tmp-dead", vdir / "version.json.tmp-dead"]
    fresh = vdir / "chunks" / "2.json.tmp-live"
    for p in stale + [fresh]:
        p.write_text("{")
    for p in stale:
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    w2 = st.writer("img", H.recipe(), keys, H.region_schema(R, D, "float32"), key_kind="image_key",
                   modality="image", chunk_rows=CHUNK)
    assert [p.exists() for p in stale] == [False, False] and fresh.exists()
    assert w2.pending_chunks() == [1, 2, 3]
