"""The store on S3: a real S3 server (moto's, in this process, on loopback) reached through s3fs, so every
byte goes through the same fsspec/Zarr code paths as on AWS. Nothing of the store itself is mocked."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import store_helpers as H  # noqa: E402

pytest.importorskip("s3fs")
pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from featstore import CorruptDataError, FeatstoreError, open_store  # noqa: E402

N, R, D = 10, 3, 4
CHUNK = 4
NAMES = ("regions", "pooled")  # few arrays: every object is an HTTP request to the S3 server
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
         "AWS_SECURITY_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class S3:
    def __init__(self, endpoint):
        import boto3

        self.bucket = f"fs-{uuid.uuid4().hex[:12]}"
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")
        self.client.create_bucket(Bucket=self.bucket)
        self.url = f"s3://{self.bucket}/feats"
        self.options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                        "client_kwargs": {"region_name": "us-east-1"}}

    def open(self, create=False, url=None):
        return open_store(url or self.url, create=create, storage_options=self.options)

    def keys(self, prefix=""):
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def get(self, key):
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key, data):
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)


@pytest.fixture
def s3(endpoint, monkeypatch):
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    return S3(endpoint)


def _data(seed=0):
    keys, arrays = H.region_data(N, R, D, "float16", seed=seed)
    return keys, H.only(arrays, NAMES)


def test_s3_round_trip_verify_and_rm(s3):
    keys, arrays = _data(1)
    failures = {keys[5]: "cannot decode"}
    fsv = s3.open(create=True).write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                     per_item=H.PER_ITEM, failures=failures, chunk_rows=CHUNK)
    vprefix = f"feats/sets/img/{fsv.version}/"
    stored = s3.keys(vprefix)
    assert vprefix + "version.json" in stored and vprefix + "data.zarr/regions/c/2/0/0" in stored

    store = s3.open()
    assert store.feature_sets() == ["img"] and [v.version for v in store.versions("img")] == [fsv.version]
    got = store.open("img")
    good = [k for k in keys if k not in failures]
    assert got.keys.tolist() == good and got.failures == failures
    ok = np.array([k not in failures for k in keys])
    for name, a in arrays.items():
        np.testing.assert_array_equal(got.read(name), a[ok], err_msg=name)
    want = [keys[9], keys[0], keys[9], keys[3]]
    sel = got.select(want, max_items=2)
    ref = H.reference_select(keys, arrays, want, 2)
    for name in ref:
        np.testing.assert_array_equal(sel[name], ref[name], err_msg=name)
    assert store.verify("img").ok and store.verify("img").chunks_checked == 3

    # the same recipe again changes no object
    before = {k: s3.get(k) for k in s3.keys()}
    again = s3.open().write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                            per_item=H.PER_ITEM, failures=failures, chunk_rows=CHUNK)
    assert again.version == fsv.version and {k: s3.get(k) for k in s3.keys()} == before

    assert s3.open().rm("img", fsv.version[:5]) == [fsv.version]
    assert s3.keys(vprefix) == []
    with pytest.raises(FeatstoreError) as e:
        s3.open().open("img")
    H.assert_one_line_error(e, "'img' not found")


def test_s3_killed_writer_resumes(s3):
    args = dict(url=s3.url, storage_options=s3.options, name="img", n=N, r=R, d=D, dtype="float16", seed=2,
                chunk_rows=CHUNK, backend="zarr", names=NAMES)
    proc = H.run_writer(kill_after=1, **args)
    assert proc.returncode == -9, proc.stderr
    store = s3.open()
    assert store.versions("img") == []
    (partial,) = store.versions("img", include_incomplete=True)
    assert (partial.complete, partial.chunks_done, partial.chunks_total) == (False, 1, 3)
    with pytest.raises(FeatstoreError) as e:
        store.open("img")
    H.assert_one_line_error(e, "rerun the same command to resume")

    keys, arrays = _data(2)
    w = store.writer("img", H.recipe(), keys, H.region_schema(R, D, names=NAMES), key_kind="image_key", modality="image",
                     chunk_rows=CHUNK)
    assert w.version == partial.version and w.pending_chunks() == [1, 2]
    H.write_chunks(w, arrays, w.pending_chunks())
    w.commit()

    ref = s3.open(create=True, url=f"s3://{s3.bucket}/reference").write(
        "img", H.recipe(), keys, arrays, key_kind="image_key", modality="image", per_item=H.PER_ITEM,
        chunk_rows=CHUNK)
    got = s3.open().open("img")
    for name in ref.array_names:
        np.testing.assert_array_equal(got.read(name), ref.read(name), err_msg=name)
        np.testing.assert_array_equal(got.read(name), arrays[name], err_msg=name)
    assert [c["checksums"] for c in got.record["chunks"]] == [c["checksums"] for c in ref.record["chunks"]]
    assert s3.open().verify("img").ok


def test_s3_corrupted_and_deleted_objects(s3):
    keys, arrays = _data(3)
    fsv = s3.open(create=True).write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                     per_item=H.PER_ITEM, chunk_rows=CHUNK)
    base = f"feats/sets/img/{fsv.version}/data.zarr"
    obj = f"{base}/regions/c/1/0/0"
    data = bytearray(s3.get(obj))
    data[len(data) // 2] ^= 0xFF
    s3.put(obj, bytes(data))

    store = s3.open()
    report = store.verify("img")
    assert [(c, a) for c, a, _ in report.problems] == [(1, "regions")], report.lines()
    assert "corrupted" in report.problems[0][2]
    with pytest.raises(CorruptDataError) as e:
        store.open("img").read("regions")
    H.assert_one_line_error(e, "'regions'", "corrupted")
    with pytest.raises(CorruptDataError):
        store.open("img").select(keys[CHUNK:2 * CHUNK])
    np.testing.assert_array_equal(store.open("img").read("pooled"), arrays["pooled"])

    s3.client.delete_object(Bucket=s3.bucket, Key=f"{base}/pooled/c/2/0")
    report = s3.open().verify("img")
    problems = {(c, a): why for c, a, why in report.problems}
    assert problems[(None, "pooled/c/2/0")] == "missing" and (1, "regions") in problems, report.lines()
    with pytest.raises(CorruptDataError) as e:
        s3.open().open("img").read("pooled")
    H.assert_one_line_error(e, "stored chunks are missing", "pooled/c/2/0")


def test_s3_lmdb_backend_is_refused(s3):
    keys, arrays = _data(4)
    with pytest.raises(FeatstoreError) as e:
        s3.open(create=True).write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                   per_item=H.PER_ITEM, chunk_rows=CHUNK, backend="lmdb")
    H.assert_one_line_error(e, "lmdb backend needs a local store path", s3.url, "zarr")
    assert s3.keys("feats/sets/") == []  # refused before anything was written


def test_s3_missing_store(s3):
    with pytest.raises(FeatstoreError) as e:
        s3.open(url=f"s3://{s3.bucket}/nothing-here")
    H.assert_one_line_error(e, "no store at", "featstore init")
