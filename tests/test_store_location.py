"""Location: one interface, a local and an fsspec implementation (as zarr's LocalStore / FsspecStore)."""
from __future__ import annotations

import fcntl
import os
import time
import uuid

import pytest
import zarr.storage

from featstore.errors import FeatstoreError
from featstore.store import open_store
from featstore.store.location import FsspecLocation, LocalLocation, Location


@pytest.fixture(params=["local", "memory"])
def loc(request, tmp_path):
    if request.param == "local":
        return Location.from_url(str(tmp_path / "root"))
    return Location.from_url(f"memory://loc-test-{uuid.uuid4().hex}/root")


def test_from_url_chooses_the_implementation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain, file_url, relative = (Location.from_url(str(tmp_path / "a") + "/"), Location.from_url(f"file://{tmp_path}/a"),
                                 Location.from_url("a"))
    for local in (plain, file_url, relative):
        assert type(local) is LocalLocation and local.is_local and local.protocol == "file"
        assert local.root == str(tmp_path / "a") and local.url_of("x", "y") == str(tmp_path / "a" / "x" / "y")
    mem = Location.from_url("memory://bucket/prefix/")
    assert type(mem) is FsspecLocation and not mem.is_local and mem.protocol == "memory"
    assert mem.url == "memory://bucket/prefix" and mem.url_of("x", "y") == "memory:///bucket/prefix/x/y"
    assert type(mem.child("x")) is FsspecLocation and type(plain.child("x")) is LocalLocation
    assert isinstance(plain.zarr_store("z"), zarr.storage.LocalStore)
    assert isinstance(mem.zarr_store("z"), zarr.storage.FsspecStore)


def test_both_implementations_keep_one_contract(loc):
    assert loc.listdir() == [] and loc.find() == [] and not loc.exists("a")
    loc.makedirs()
    loc.write_json({"b": [1, 2], "a": "x"}, "a", "b.json")
    loc.write_bytes(b"\x00\x01raw", "a", "c.bin")
    loc.write_bytes(b"deep", "a", "d", "e.bin")
    assert loc.read_json("a", "b.json") == {"a": "x", "b": [1, 2]}
    assert loc.read_bytes("a", "b.json") == b'{\n "a": "x",\n "b": [\n  1,\n  2\n ]\n}'
    assert loc.read_bytes("a", "c.bin") == b"\x00\x01raw"
    assert loc.exists("a") and loc.exists("a", "c.bin") and not loc.exists("a", "nope")
    assert loc.listdir() == ["a"] and loc.listdir("a") == ["b.json", "c.bin", "d"] and loc.listdir("nope") == []
    assert loc.find() == ["a/b.json", "a/c.bin", "a/d/e.bin"] and loc.find("a", "d") == ["e.bin"]
    sub = loc.child("a")
    assert type(sub) is type(loc) and sub.url == loc.url_of("a") and sub.read_bytes("d", "e.bin") == b"deep"
    loc.write_bytes(b"new", "a", "c.bin")  # a rewrite replaces the whole file
    assert loc.read_bytes("a", "c.bin") == b"new" and loc.listdir("a") == ["b.json", "c.bin", "d"]
    loc.remove_files(["a/c.bin", "a/never-there"])
    assert loc.listdir("a") == ["b.json", "d"]
    loc.remove_tree("a", "d")
    loc.remove_tree("a", "never-there")
    assert loc.find() == ["a/b.json"]
    with loc.lock(".lock"):
        loc.write_bytes(b"under the lock", "a", "f")
    assert loc.read_bytes("a", "f") == b"under the lock"


def test_local_lock_is_exclusive(tmp_path):
    loc = Location.from_url(str(tmp_path / "v"))
    with loc.lock(".lock"):
        with open(loc.path(".lock"), "a+") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(loc.path(".lock"), "a+") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on leaving the block
        fcntl.flock(other, fcntl.LOCK_UN)


def test_local_stale_tmp_files_are_removed_fresh_ones_and_others_kept(tmp_path):
    loc = Location.from_url(str(tmp_path / "v"))
    loc.write_bytes(b"kept", "chunks", "0.json")
    assert loc.listdir("chunks") == ["0.json"]  # an atomic write leaves no temporary file
    old, fresh = tmp_path / "v" / "chunks" / "1.json.tmp-dead", tmp_path / "v" / "chunks" / "2.json.tmp-live"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(old, (time.time() - 120, time.time() - 120))
    os.utime(tmp_path / "v" / "chunks" / "0.json", (time.time() - 120, time.time() - 120))
    loc.remove_stale_tmp("chunks", older_than_s=60)
    loc.remove_stale_tmp("nope", older_than_s=60)
    assert loc.listdir("chunks") == ["0.json", "2.json.tmp-live"]


def test_an_unknown_protocol_is_one_line_naming_the_url():
    with pytest.raises(FeatstoreError) as e:
        open_store("nosuchproto://bucket/feats")
    assert str(e.value) == ("store URL 'nosuchproto://bucket/feats' cannot be opened: Protocol not known: nosuchproto; "
                            "for s3:// install the extra `pip install featstore-heads[s3]`")
