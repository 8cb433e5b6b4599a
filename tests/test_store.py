"""The versioned feature store: round trips on both backends, selection, version ids, failures, user errors
and the preflight join. Every comparison reads back through a freshly opened store."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import store_helpers as H  # noqa: E402

from featstore import ArraySpec, FeatstoreError, open_store, preflight  # noqa: E402
from featstore.store import COUNT  # noqa: E402

BACKENDS = ["zarr", "lmdb"]
DTYPES = ["float16", "float32"]
N, R, D = 23, 5, 8


@pytest.fixture(autouse=True)
def _close_lmdb():
    yield
    from featstore.store.backends import close_lmdb_envs

    close_lmdb_envs()


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "store")


def assert_matches(fsv, keys, arrays):
    """The version holds exactly ``arrays`` for ``keys`` (numpy equality, dtype included)."""
    assert fsv.keys.tolist() == list(keys)
    assert len(fsv) == len(keys)
    for name, want in arrays.items():
        got = fsv.read(name)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


# ---- round trips -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_store_write(root, backend, dtype):
    keys, arrays = H.region_data(N, R, D, dtype)
    open_store(root, create=True).write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                        per_item=H.PER_ITEM, chunk_rows=7, backend=backend)
    fsv = open_store(root).open("img")
    assert_matches(fsv, keys, arrays)
    assert fsv.key_kind == "image_key" and fsv.modality == "image"
    assert sorted(fsv.array_names) == sorted(arrays)
    assert fsv.spec("regions") == ArraySpec((R, D), dtype, per_item=True)
    assert fsv.spec("boxes") == ArraySpec((R, 4), "float32", per_item=True)
    assert fsv.spec("image_size") == ArraySpec((2,), "int32")
    assert fsv.spec(COUNT) == ArraySpec((), "int32")
    assert fsv.record["backend"] == backend and fsv.record["n_failed"] == 0
    assert fsv.recipe == H.recipe()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_chunked_writer_any_order(root, backend, dtype):
    keys, arrays = H.region_data(N, R, D, dtype, seed=3)
    store = open_store(root, create=True)
    w = store.writer("img", H.recipe(), keys, H.region_schema(R, D, dtype), key_kind="image_key", modality="image",
                     chunk_rows=5, backend=backend)
    assert w.pending_chunks() == [0, 1, 2, 3, 4]
    assert w.chunk_slice(4) == slice(20, 23)
    H.write_chunks(w, arrays, [3, 0, 4])
    assert w.pending_chunks() == [1, 2]
    assert store.versions("img") == []  # nothing visible before commit
    H.write_chunks(w, arrays, [2, 1])
    w.commit()
    assert_matches(open_store(root).open("img"), keys, arrays)


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_fixed_width_set(root, backend):
    keys, arrays = H.fixed_data(11)
    open_store(root, create=True).write("txt", H.recipe(extractor="minilm"), keys, arrays, key_kind="sample_id",
                                        modality="text", chunk_rows=4, backend=backend)
    fsv = open_store(root).open("txt")
    assert_matches(fsv, keys, arrays)
    assert COUNT not in fsv.array_names and fsv.modality == "text" and fsv.key_kind == "sample_id"
    sel = fsv.select(["id3", "id3", "id0"])
    assert set(sel) == {"cls", "input_ids"}  # no mask without per-item arrays
    np.testing.assert_array_equal(sel["cls"], arrays["cls"][[3, 3, 0]])
    np.testing.assert_array_equal(sel["input_ids"], arrays["input_ids"][[3, 3, 0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_beyond_count_is_stored_as_zeros(root, backend):
    keys, junk = H.region_data(N, R, D, "float32", seed=5, junk_beyond_count=True)
    fsv = open_store(root, create=True).write("img", H.recipe(), keys, junk, key_kind="image_key", modality="image",
                                              per_item=H.PER_ITEM, chunk_rows=6, backend=backend)
    beyond = np.arange(R)[None, :] >= junk["count"][:, None]
    assert beyond.any() and np.abs(junk["regions"][beyond]).min() > 0
    regions = open_store(root).open("img").read("regions")
    assert not regions[beyond].any()
    np.testing.assert_array_equal(regions[~beyond], junk["regions"][~beyond])
    assert fsv.version


@pytest.mark.parametrize("backend", BACKENDS)
def test_items_narrower_than_spec_are_padded(root, backend):
    keys, arrays = H.region_data(9, R, D, "float32", seed=8)
    arrays["count"] = np.minimum(arrays["count"], 3)
    narrow = dict(arrays, regions=arrays["regions"][:, :3], boxes=arrays["boxes"][:, :3])
    store = open_store(root, create=True)
    store.write("img", H.recipe(), keys, narrow, key_kind="image_key", modality="image",
                schema=H.region_schema(R, D, "float32"), chunk_rows=4, backend=backend)
    got = open_store(root).open("img").read("regions")
    assert got.shape == (9, R, D)
    np.testing.assert_array_equal(got[:, :3], narrow["regions"])
    assert not got[:, 3:].any()


def test_float32_into_float16_spec_is_cast(root):
    keys, arrays = H.region_data(N, R, D, "float32", seed=2)
    open_store(root, create=True).write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                        schema=H.region_schema(R, D, "float16"), chunk_rows=8)
    fsv = open_store(root).open("img")
    got = fsv.read("regions")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, arrays["regions"].astype(np.float16))


# ---- select / load -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_items", [None, 2, R, 9])
def test_select_matches_reference(root, backend, max_items):
    keys, arrays = H.region_data(N, R, D, "float16", seed=4)
    open_store(root, create=True).write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                        per_item=H.PER_ITEM, chunk_rows=6, backend=backend)
    fsv = open_store(root).open("img")
    rng = np.random.default_rng(0)
    want_keys = [keys[i] for i in rng.permutation(N)[:12]] + [keys[1], keys[0], keys[1], keys[22]]
    got = fsv.select(want_keys, max_items=max_items)
    ref = H.reference_select(keys, arrays, want_keys, max_items)
    assert set(got) == set(ref)
    for name in ref:
        assert got[name].dtype == ref[name].dtype, name
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    width = R if max_items is None else max_items
    assert got["regions"].shape == (len(want_keys), width, D) and got["mask"].shape == (len(want_keys), width)


def test_select_subset_of_names(root):
    keys, arrays = H.region_data(N, R, D, seed=6)
    open_store(root, create=True).write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                        per_item=H.PER_ITEM, chunk_rows=6)
    fsv = open_store(root).open("img")
    got = fsv.select([keys[5], keys[2]], names=["pooled"])
    assert set(got) == {"pooled"}
    np.testing.assert_array_equal(got["pooled"], arrays["pooled"][[5, 2]])
    got = fsv.select([keys[5]], names=["regions"], max_items=3)
    assert set(got) == {"regions", "mask", "count"}
    np.testing.assert_array_equal(got["regions"], H.reference_select(keys, arrays, [keys[5]], 3)["regions"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_select_torch(root, backend):
    torch = pytest.importorskip("torch")
    keys, arrays = H.region_data(N, R, D, "float16", seed=7)
    open_store(root, create=True).write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                        per_item=H.PER_ITEM, chunk_rows=6, backend=backend)
    fsv = open_store(root).open("img")
    want = [keys[9], keys[3], keys[9]]
    got = fsv.select(want, max_items=4, torch=True, dtype=torch.float32, device="cpu")
    ref = H.reference_select(keys, arrays, want, 4)
    assert got["regions"].dtype == torch.float32 and got["boxes"].dtype == torch.float32
    assert got["image_size"].dtype == torch.int32 and got["count"].dtype == torch.int32
    assert got["mask"].dtype == torch.bool
    for name in ref:
        want_arr = ref[name].astype(np.float32) if ref[name].dtype.kind == "f" else ref[name]
        np.testing.assert_array_equal(got[name].numpy(), want_arr, err_msg=name)
    plain = fsv.select(want, names=["pooled"], torch=True)
    assert plain["pooled"].dtype == torch.float16


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_is_every_valid_row_in_key_order(root, backend):
    keys, arrays = H.region_data(N, R, D, seed=9)
    failures = {keys[4]: "decode error", keys[17]: "empty image"}
    open_store(root, create=True).write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                        per_item=H.PER_ITEM, failures=failures, chunk_rows=6, backend=backend)
    fsv = open_store(root).open("img")
    good = [k for k in keys if k not in failures]
    got = fsv.load(max_items=3)
    ref = H.reference_select(keys, arrays, good, 3)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


# ---- version ids -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_recipe_is_same_version_and_rewrite_is_noop(root, backend):
    keys, arrays = H.region_data(N, R, D, seed=10)
    store = open_store(root, create=True)
    first = store.write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                        per_item=H.PER_ITEM, chunk_rows=6, backend=backend)
    from featstore.store.backends import close_lmdb_envs

    close_lmdb_envs()
    before = H.snapshot(root)
    other = dict(arrays, pooled=arrays["pooled"] + 1)  # same recipe: the stored version is kept as is
    second = open_store(root, create=True).write("img", H.recipe(), keys, other, key_kind="image_key",
                                                 modality="image", per_item=H.PER_ITEM, chunk_rows=6, backend=backend)
    assert second.version == first.version == H.recipe().version_id
    assert H.snapshot(root) == before
    assert [v.version for v in open_store(root).versions("img")] == [first.version]
    np.testing.assert_array_equal(open_store(root).open("img").read("pooled"), arrays["pooled"])


@pytest.mark.parametrize("field,value", [
    ("extractor", "grid2"), ("config", {"size": 5, "layers": [1, 2]}), ("config", {"size": 4, "layers": [2, 1]}),
    ("weights_fingerprint", "v" * 64), ("preprocessing", {"resize": 9, "mean": [0.5, 0.5, 0.5]}),
    ("manifest_fingerprint", "n" * 64), ("tool_version", "0.2.0"),
])
def test_any_recipe_change_gives_another_version(root, field, value):
    base = H.recipe()
    changed = H.recipe(**{field: value})
    assert changed.version_id != base.version_id
    assert H.recipe(config={"layers": [1, 2], "size": 4}).version_id == base.version_id  # key order is irrelevant
    keys, arrays = H.fixed_data(5)
    store = open_store(root, create=True)
    for rec in (base, changed):
        store.write("txt", rec, keys, arrays, key_kind="sample_id", modality="text")
    assert sorted(v.version for v in open_store(root).versions("txt")) == sorted([base.version_id, changed.version_id])
    assert open_store(root).open("txt", changed.version_id).recipe == changed


def _ids_sharing_first_char():
    seen = {}
    for i in range(100):
        vid = H.recipe(config={"i": i}).version_id
        if vid[0] in seen:
            return seen[vid[0]], i
        seen[vid[0]] = i
    raise AssertionError("unreachable: 17 ids always share a first hex digit")


def test_latest_complete_version_and_prefix_resolution(root):
    keys, arrays = H.fixed_data(4)
    store = open_store(root, create=True)
    a, b = _ids_sharing_first_char()
    order = [a, b, 1000, 1001, 1002]
    vids = []
    for i in order:  # written within the same second: the order must still be the commit order
        fsv = store.write("txt", H.recipe(config={"i": i}), keys, {k: v + i for k, v in arrays.items()},
                          key_kind="sample_id", modality="text")
        vids.append(fsv.version)
        assert open_store(root).open("txt").version == fsv.version
    # an incomplete newer version is never the default
    w = store.writer("txt", H.recipe(config={"i": 2000}), keys, {"cls": ArraySpec((6,), "float32")},
                     key_kind="sample_id", modality="text")
    s = open_store(root)
    assert [v.version for v in s.versions("txt")] == vids
    assert s.open("txt").version == vids[-1]
    np.testing.assert_array_equal(s.open("txt").read("cls"), arrays["cls"] + 1002)
    for vid in vids:
        assert s.open("txt", vid[:6]).version == vid
        assert s.open(f"txt@{vid[:8]}").version == vid
    assert s.open("txt", "latest").version == vids[-1]
    with pytest.raises(FeatstoreError) as e:
        s.open("txt", vids[0][0])
    H.assert_one_line_error(e, "ambiguous", vids[0], vids[1])
    with pytest.raises(FeatstoreError) as e:
        s.open("txt", w.version)
    H.assert_one_line_error(e, "incomplete", "rerun")
    infos = s.versions("txt", include_incomplete=True)
    assert [i.version for i in infos] == vids + [w.version] and not infos[-1].complete


def test_unknown_set_and_version(root):
    keys, arrays = H.fixed_data(4)
    store = open_store(root, create=True)
    fsv = store.write("txt", H.recipe(), keys, arrays, key_kind="sample_id", modality="text")
    with pytest.raises(FeatstoreError) as e:
        store.open("nope")
    H.assert_one_line_error(e, "'nope' not found", "txt")
    with pytest.raises(FeatstoreError) as e:
        store.open("txt", "ffffffffffffffff" if not fsv.version.startswith("f") else "0000000000000000")
    H.assert_one_line_error(e, "no complete version", fsv.version)
    with pytest.raises(FeatstoreError) as e:
        store.open("bad/name")
    H.assert_one_line_error(e, "invalid")
    with pytest.raises(FeatstoreError) as e:
        store.open("txt").read("nope")
    H.assert_one_line_error(e, "no array 'nope'", "cls")
    with pytest.raises(FeatstoreError) as e:
        store.open("txt").select(["id0"], names=["valid"])
    H.assert_one_line_error(e, "no array 'valid'")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rm(root, backend):
    keys, arrays = H.fixed_data(6)
    store = open_store(root, create=True)
    v1 = store.write("txt", H.recipe(), keys, arrays, key_kind="sample_id", modality="text", backend=backend).version
    v2 = store.write("txt", H.recipe(extractor="other"), keys, arrays, key_kind="sample_id", modality="text",
                     backend=backend).version
    w = store.writer("txt", H.recipe(extractor="third"), keys, {"cls": ArraySpec((6,), "float32")},
                     key_kind="sample_id", modality="text", backend=backend)
    assert store.rm("txt", v1[:7]) == [v1]
    s = open_store(root)
    assert [v.version for v in s.versions("txt")] == [v2]
    assert not os.path.exists(os.path.join(root, "sets", "txt", v1))
    np.testing.assert_array_equal(s.open("txt").read("cls"), arrays["cls"])
    assert s.rm("txt", w.version) == [w.version]  # an unfinished version can be removed too
    with pytest.raises(FeatstoreError) as e:
        s.rm("txt")
    H.assert_one_line_error(e, "name a version", "--all")
    with pytest.raises(FeatstoreError) as e:
        s.rm("txt", "zzzz")
    H.assert_one_line_error(e, "matches 0 versions")
    with pytest.raises(FeatstoreError) as e:
        s.rm("nope", v2)
    H.assert_one_line_error(e, "'nope' not found")
    assert s.rm("txt", all_versions=True) == [v2]
    assert open_store(root).feature_sets() == [] and not os.path.exists(os.path.join(root, "sets", "txt"))


# ---- failed rows -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("only_valid_rows", [False, True])
def test_failed_keys_are_recorded_and_never_returned(root, backend, only_valid_rows):
    keys, arrays = H.region_data(N, R, D, seed=11)
    failures = {keys[2]: "cannot decode PNG", keys[13]: "image is empty", keys[14]: "timeout"}
    store = open_store(root, create=True)
    w = store.writer("img", H.recipe(), keys, H.region_schema(R, D), key_kind="image_key", modality="image",
                     chunk_rows=6, backend=backend)
    ok = np.array([k not in failures for k in keys])
    for c in w.pending_chunks():
        sl = w.chunk_slice(c)
        part = {k: v[sl][ok[sl]] if only_valid_rows else v[sl] for k, v in arrays.items()}
        w.write_chunk(c, part, H.chunk_failures(keys, sl, failures))
    w.commit()
    vdir = os.path.join(root, "sets", "img", w.version)
    with open(os.path.join(vdir, "version.json")) as f:
        record = json.load(f)
    assert record["failures"] == failures and record["n_failed"] == 3 and record["n_valid"] == N - 3
    fsv = open_store(root).open("img")
    good = [k for k in keys if k not in failures]
    assert fsv.keys.tolist() == good and len(fsv) == N - 3 and fsv.failures == failures
    assert keys[2] not in fsv and keys[3] in fsv
    for name, a in arrays.items():
        np.testing.assert_array_equal(fsv.read(name), a[ok], err_msg=name)
    with pytest.raises(FeatstoreError) as e:
        fsv.select([keys[0], keys[13], keys[2]])
    H.assert_one_line_error(e, "2 of 3 keys not found", repr(keys[13]), repr(keys[2]), "preflight")


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunk_where_every_row_failed(root, backend):
    keys, arrays = H.region_data(12, R, D, seed=12)
    failures = {k: "unreadable" for k in keys[4:8]}
    open_store(root, create=True).write("img", H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                        per_item=H.PER_ITEM, failures=failures, chunk_rows=4, backend=backend)
    fsv = open_store(root).open("img")
    assert fsv.keys.tolist() == keys[:4] + keys[8:]
    np.testing.assert_array_equal(fsv.read("regions"), np.concatenate([arrays["regions"][:4], arrays["regions"][8:]]))
    assert open_store(root).verify("img").ok


# ---- writer errors -----------------------------------------------------------------------------------------
@pytest.fixture
def writer(root):
    keys, arrays = H.region_data(N, R, D, "float16", seed=13)
    w = open_store(root, create=True).writer("img", H.recipe(), keys, H.region_schema(R, D, "float16"),
                                             key_kind="image_key", modality="image", chunk_rows=5)
    return w, arrays


def _chunk(w, arrays, c, **replace):
    sl = w.chunk_slice(c)
    part = {k: v[sl] for k, v in arrays.items()}
    part.update(replace)
    return part


def test_commit_with_missing_chunks(writer):
    w, arrays = writer
    H.write_chunks(w, arrays, [0, 2, 4])
    with pytest.raises(FeatstoreError) as e:
        w.commit()
    H.assert_one_line_error(e, "incomplete", "2 of 5 chunks not written", "[1, 3]", "resume")


def test_write_after_commit_and_out_of_range(writer, root):
    w, arrays = writer
    with pytest.raises(FeatstoreError) as e:
        w.write_chunk(5, _chunk(w, arrays, 0))
    H.assert_one_line_error(e, "chunk 5 is out of range 0..4")
    H.write_chunks(w, arrays, range(5))
    w.commit()
    with pytest.raises(FeatstoreError) as e:
        w.write_chunk(0, _chunk(w, arrays, 0))
    H.assert_one_line_error(e, "complete and immutable")
    again = open_store(root).writer("img", H.recipe(), w.keys, H.region_schema(R, D, "float16"), key_kind="image_key",
                                    modality="image", chunk_rows=5)
    assert again.pending_chunks() == []
    with pytest.raises(FeatstoreError) as e:
        again.write_chunk(1, _chunk(w, arrays, 1))
    H.assert_one_line_error(e, "complete and immutable")


@pytest.mark.parametrize("case,needles", [
    ("shape", ["array 'pooled'", "got shape (5, 7)", "expected"]),
    ("too_many_items", ["array 'regions'", "<= 5"]),
    ("dtype_int_into_float", ["array 'regions'", "got dtype int32", "expected float16", "cast"]),
    ("dtype_float_into_int", ["array 'image_size'", "got dtype float32", "expected int32"]),
    ("rows", ["chunk 1 has 5 keys", "have 4 rows"]),
    ("ragged_rows", ["different row counts"]),
    ("unknown_array", ["['extra'] unexpected", "the schema has"]),
    ("missing_array", ["['boxes'] missing"]),
    ("count_too_big", ["count exceeds"]),
    ("failure_outside_chunk", ["failures name keys outside chunk 1"]),
])
def test_write_chunk_rejects_bad_input(writer, case, needles):
    w, arrays = writer
    a = _chunk(w, arrays, 1)
    failures = {}
    if case == "shape":
        a["pooled"] = np.zeros((5, 7), np.float16)
    elif case == "too_many_items":
        a["regions"] = np.zeros((5, R + 1, D), np.float16)
    elif case == "dtype_int_into_float":
        a["regions"] = a["regions"].astype(np.int32)
    elif case == "dtype_float_into_int":
        a["image_size"] = a["image_size"].astype(np.float32)
    elif case == "rows":
        a = {k: v[:4] for k, v in a.items()}
    elif case == "ragged_rows":
        a["pooled"] = a["pooled"][:3]
    elif case == "unknown_array":
        a["extra"] = a["pooled"]
    elif case == "missing_array":
        del a["boxes"]
    elif case == "count_too_big":
        a["count"] = np.full(5, R + 1, np.int32)
    elif case == "failure_outside_chunk":
        failures = {w.keys[0]: "x"}
    with pytest.raises(FeatstoreError) as e:
        w.write_chunk(1, a, failures)
    H.assert_one_line_error(e, *needles)
    assert w.pending_chunks() == [0, 1, 2, 3, 4]  # nothing recorded for the rejected chunk


def test_writer_rejects_bad_set_up(root):
    store = open_store(root, create=True)
    schema = {"cls": ArraySpec((3,), "float32")}
    cases = [
        (dict(keys=["a", "b", "a"]), ["key 'a' appears twice"]),
        (dict(schema={"valid": ArraySpec((), "bool")}), ["'valid' is reserved"]),
        (dict(chunk_rows=0), ["chunk_rows must be >= 1"]),
        (dict(key_kind="row"), ["key_kind must be"]),
        (dict(modality="audio"), ["modality must be"]),
        (dict(backend="parquet"), ["backend 'parquet' is unknown", "zarr"]),
        (dict(schema={"cls": (3,)}), ["must be an ArraySpec"]),
        (dict(backend_options={"compression": "gzip9"}), ["compression 'gzip9' is unknown"]),
    ]
    for over, needles in cases:
        kw = dict(keys=["a", "b"], schema=schema, key_kind="sample_id", modality="text", chunk_rows=2, backend="zarr")
        kw.update(over)
        rec = H.recipe(config={"case": str(over)})
        with pytest.raises(FeatstoreError) as e:
            store.writer("t", rec, kw.pop("keys"), kw.pop("schema"), **kw)
        H.assert_one_line_error(e, *needles)
    with pytest.raises(FeatstoreError) as e:
        ArraySpec((3,), "complex64")
    H.assert_one_line_error(e, "dtype 'complex64' is not supported")
    with pytest.raises(FeatstoreError) as e:
        ArraySpec((), "float32", per_item=True)
    H.assert_one_line_error(e, "per-item array needs")


def test_resume_with_a_different_schema_is_refused(root):
    store = open_store(root, create=True)
    store.writer("t", H.recipe(), ["a", "b"], {"cls": ArraySpec((3,), "float32")}, key_kind="sample_id",
                 modality="text")
    with pytest.raises(FeatstoreError) as e:
        open_store(root).writer("t", H.recipe(), ["a", "b"], {"cls": ArraySpec((4,), "float32")},
                                key_kind="sample_id", modality="text")
    H.assert_one_line_error(e, "started with a different schema", "featstore rm t@")


# ---- store location errors ---------------------------------------------------------------------------------
def test_no_store_at_path(tmp_path):
    with pytest.raises(FeatstoreError) as e:
        open_store(str(tmp_path / "missing"))
    H.assert_one_line_error(e, "no store at", "featstore init")
    assert not (tmp_path / "missing").exists()


def test_create_inside_non_empty_directory_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"\x89PNG")
    with pytest.raises(FeatstoreError) as e:
        open_store(str(tmp_path / "photos"), create=True)
    H.assert_one_line_error(e, "not empty", "not a featstore store")
    assert sorted(os.listdir(tmp_path / "photos")) == ["cat.png"]
    s = open_store(str(tmp_path / "new"), create=True)
    assert s.feature_sets() == [] and open_store(str(tmp_path / "new"), create=True).feature_sets() == []


# ---- preflight ---------------------------------------------------------------------------------------------
def test_preflight(root):
    store = open_store(root, create=True)
    img_keys = [f"{i:05d}" for i in range(10)]
    img = store.write("img", H.recipe(), img_keys, {"pooled": np.ones((10, 3), np.float32)}, key_kind="image_key",
                      modality="image", failures={"00003": "bad png"})
    txt_ids = [f"id{i}" for i in range(8)]
    txt = store.write("txt", H.recipe(extractor="t"), txt_ids, {"cls": np.ones((8, 3), np.float32)},
                      key_kind="sample_id", modality="text")
    # 12 samples; two share image 00001; images 00010..00015 absent; sample ids id8..id11 absent
    samples = [H.Sample(f"id{i}", f"{i:05d}") for i in range(8)] + [H.Sample("id8", "00001")] + \
              [H.Sample(f"id{i}", f"{i + 1:05d}") for i in range(9, 16)]
    rep = preflight(samples, image=img, text=txt)
    im, tx = rep.sides
    assert im.needed == 15 and tx.needed == 16
    assert im.missing == ["00003"] + [f"{i:05d}" for i in range(10, 17)] and im.failed == ["00003"]
    assert im.extra == ["00008", "00009"]
    assert tx.missing == [f"id{i}" for i in range(8, 16)] and tx.extra == []
    assert not rep.ok
    line = im.line()
    assert "15 needed, 8 missing" in line and "'00003', '00010', '00011', '00012', '00013' (+3 more)" in line
    assert "1 failed at extraction ['00003']" in line and "2 extra ['00008', '00009']" in line
    with pytest.raises(FeatstoreError) as e:
        rep.raise_if_missing()
    H.assert_one_line_error(e, "do not cover the dataset", "8 missing", "featstore extract")
    covered = preflight([H.Sample("id0", "00000"), H.Sample("id1", "00002")], image=img, text=txt)
    assert covered.ok and covered.sides[0].missing == [] and len(covered.sides[1].extra) == 6
    covered.raise_if_missing()


def test_preflight_errors(root):
    store = open_store(root, create=True)
    img = store.write("img", H.recipe(), ["00001"], {"pooled": np.ones((1, 3), np.float32)}, key_kind="image_key",
                      modality="image")
    txt = store.write("txt", H.recipe(extractor="t"), ["id1"], {"cls": np.ones((1, 3), np.float32)},
                      key_kind="sample_id", modality="text")
    samples = [H.Sample("id1", "00001")]
    with pytest.raises(FeatstoreError) as e:
        preflight(samples, image=txt)
    H.assert_one_line_error(e, "keyed by sample_id", "passed as the image set", "swap")
    with pytest.raises(FeatstoreError) as e:
        preflight(samples, text=img)
    H.assert_one_line_error(e, "keyed by image_key", "passed as the text set")
    with pytest.raises(FeatstoreError) as e:
        preflight([], image=img)
    H.assert_one_line_error(e, "no samples")
