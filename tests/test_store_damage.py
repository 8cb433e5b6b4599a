"""Damage the store's own files (issue 12, items 1-7): the key array, swapped chunk files, edited array
metadata, a truncated or damaged LMDB file, a garbage, deleted or edited version record. Every read either
returns the right rows or raises one line naming the file; ``featstore verify`` prints the exact line per
damage kind and goes on with the other versions. Processes that could die by a signal run in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featstore import CorruptDataError, open_store
from featstore.store import backends

sys.path.insert(0, str(Path(__file__).resolve().parent))
import store_helpers as H  # noqa: E402
from test_store_faults import CHUNK, D, N, R, _close_lmdb  # noqa: E402,F401 (the autouse fixture)


def _write(root, backend="zarr", name="img"):
    keys, arrays = H.region_data(N, R, D, "float32", seed=5)
    fsv = open_store(root, create=True).write(name, H.recipe(), keys, arrays, key_kind="image_key", modality="image",
                                              per_item=H.PER_ITEM, chunk_rows=CHUNK, backend=backend)
    return keys, arrays, Path(root, "sets", name, fsv.version), fsv.ref


def _verify_cli(root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from cli.featstore_cli import main; main()", "verify", "--store",
                           str(root)],
                          capture_output=True, text=True, cwd=H.REPO, timeout=120)


def _read_cli(root, ref) -> subprocess.CompletedProcess:
    code = (f"from featstore import open_store\nfrom featstore.errors import FeatstoreError\n"
            f"try:\n    open_store({str(root)!r}).open({ref!r}).load()\n"
            f"except FeatstoreError as e:\n    print('error:', e)\n    raise SystemExit(1)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=H.REPO, timeout=120)


# ---- 1: the key array ----------------------------------------------------------------------------------------
def test_deleted_key_chunk_is_named_by_verify_and_reads(tmp_path):
    root = tmp_path / "s"
    keys, arrays, vdir, ref = _write(root)
    os.remove(vdir / "data.zarr" / "ids" / "c" / "0")
    report = open_store(root).verify("img")
    assert (None, "ids/c/0", "missing") in report.problems, report.lines()
    assert any(a == "ids" and "are not the keys committed" in why for _, a, why in report.problems)
    with pytest.raises(CorruptDataError) as e:
        open_store(root).open("img").keys
    H.assert_one_line_error(e, f"feature set {ref}: the stored keys ({vdir / 'data.zarr/ids/c/0'}) are not the keys "
                               f"committed (checksum mismatch")


def test_flipped_key_chunk_is_one_line_not_a_zstd_traceback(tmp_path):
    root = tmp_path / "s"
    keys, arrays, vdir, ref = _write(root)
    H.flip_byte(vdir / "data.zarr" / "ids" / "c" / "0")
    with pytest.raises(CorruptDataError) as e:
        open_store(root).open("img").select(keys[:2])
    H.assert_one_line_error(e, str(vdir / "data.zarr/ids/c/0"))
    report = open_store(root).verify("img")
    assert not report.ok and {a for _, a, _ in report.problems} == {"ids"}, report.lines()


# ---- 2: swapped chunk files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("array,sharded", [("regions", False), ("regions", True), ("count", False)])
def test_swapped_chunk_files_are_refused_on_read(tmp_path, monkeypatch, array, sharded):
    """regions: raw chunks (the direct reader); count: compressed (zarr-python's path)."""
    if sharded:
        monkeypatch.setattr(backends, "INNER_CHUNK_BYTES", 64)
    root = tmp_path / "s"
    keys, arrays, vdir, ref = _write(root)
    a, b = H.chunk_objects(vdir, array)[1:3]
    tmp = a + ".x"
    os.rename(a, tmp), os.rename(b, a), os.rename(tmp, b)
    fsv = open_store(root).open("img")
    with pytest.raises(CorruptDataError) as e:
        fsv.read(array)
    H.assert_one_line_error(e, f"array {array!r}", "not the chunk written at")
    with pytest.raises(CorruptDataError):
        fsv.select(keys[CHUNK:CHUNK + 2], names=[array])
    got = fsv.select(keys[:2], names=[array])  # untouched chunks still read, exactly
    np.testing.assert_array_equal(got[array], H.reference_select(keys, arrays, keys[:2], R)[array])
    assert {(1, array), (2, array)} <= {(c, n) for c, n, _ in open_store(root).verify("img").problems}


# ---- 3: array metadata against the committed schema ------------------------------------------------------------
def test_edited_array_metadata_is_refused(tmp_path):
    root = tmp_path / "s"
    keys, arrays, vdir, ref = _write(root)
    meta = vdir / "data.zarr" / "pooled" / "zarr.json"
    spec = json.loads(meta.read_text())
    spec["data_type"] = "int32"
    meta.write_text(json.dumps(spec))
    with pytest.raises(CorruptDataError) as e:
        open_store(root).open("img").read("pooled")
    H.assert_one_line_error(e, f"array metadata {meta} says dtype/shape/chunks ('int32', (24, 8), (6, 8)) but the "
                               f"committed schema says ('float32', (24, 8), (6, 8))")
    np.testing.assert_array_equal(open_store(root).open("img").read("boxes"), arrays["boxes"])


def test_half_written_array_metadata_is_one_line(tmp_path):
    root = tmp_path / "s"
    keys, arrays, vdir, ref = _write(root)
    H.truncate(vdir / "data.zarr" / "boxes" / "zarr.json")
    with pytest.raises(CorruptDataError) as e:
        open_store(root).open("img").read("boxes")
    H.assert_one_line_error(e, f"array metadata {vdir / 'data.zarr/boxes/zarr.json'} is damaged or missing")


# ---- 4: LMDB file damage: never a SIGBUS -----------------------------------------------------------------------
def test_truncated_lmdb_is_one_line_not_sigbus(tmp_path):
    root = tmp_path / "s"
    keys, arrays, vdir, ref = _write(root, backend="lmdb")
    data = vdir / "data.lmdb" / "data.mdb"
    size = data.stat().st_size
    H.truncate(data, 0.6)
    got = _read_cli(root, ref)
    assert got.returncode == 1, (got.returncode, got.stderr)
    assert got.stdout.startswith(f"error: LMDB {data} is truncated ({int(size * 0.6)} bytes, its pages end at ")
    v = _verify_cli(root)
    assert v.returncode == 1 and "Traceback" not in v.stderr, v.stderr
    assert f"  object record: LMDB {data} is truncated" in v.stdout or f"LMDB {data} is truncated" in v.stdout


def test_verify_names_each_damaged_version_and_goes_on(tmp_path):
    root = tmp_path / "s"
    versions = {}
    for name, backend in (("garbage", "zarr"), ("halfmeta", "zarr"), ("nodata", "lmdb"), ("meta", "lmdb"),
                          ("fine", "zarr"), ("edited", "zarr")):
        versions[name] = _write(root, backend, name)[2:]
    (versions["garbage"][0] / "version.json").write_text("{not json")
    H.truncate(versions["halfmeta"][0] / "data.zarr" / "regions" / "zarr.json")
    os.remove(versions["nodata"][0] / "data.lmdb" / "data.mdb")
    mdb = versions["meta"][0] / "data.lmdb" / "data.mdb"
    H.flip_byte(mdb, 16)  # both meta pages' magic: MDB_INVALID
    H.flip_byte(mdb, 4096 + 16)
    rec = json.loads((versions["edited"][0] / "version.json").read_text())
    rec["failures"]["00003"] = "added by hand"
    (versions["edited"][0] / "version.json").write_text(json.dumps(rec))
    v = _verify_cli(root)
    assert v.returncode == 1 and v.stderr == "", v.stderr
    out = v.stdout
    g, h, n, m, f, e = (versions[k] for k in ("garbage", "halfmeta", "nodata", "meta", "fine", "edited"))
    assert f"{f[1]}: OK (4 chunks verified)" in out
    assert (f"  object record: version record {g[0] / 'version.json'} is damaged (not JSON: Expecting property name "
            f"enclosed in double quotes: line 1 column 2 (char 1)); rerun the extraction that wrote it to recommit it, "
            f"or remove the version") in out
    assert (f"  object record: version record {e[0] / 'version.json'} was edited or damaged (its digest does not "
            f"match); rerun the extraction that wrote it to recommit it, or remove the version") in out
    assert f"  chunk 0 regions: unreadable: array metadata {h[0] / 'data.zarr/regions/zarr.json'} is damaged" in out
    assert f"  object data.lmdb/data.mdb: missing" in out and f"{n[1]}: " in out
    assert f"LMDB {n[0] / 'data.lmdb/data.mdb'} is missing; the version's data is lost" in out
    assert f"  object ids: LMDB {mdb} cannot be opened (InvalidError: " in out
    assert len([ln for ln in out.splitlines() if not ln.startswith("  ")]) == 6  # every version reported once
    assert "run `featstore verify`" not in out  # this is featstore verify: its lines name the next step only


# ---- 6, 7: the version record --------------------------------------------------------------------------------
def test_deleted_record_is_reported_and_rerunning_recommits_it(tmp_path):
    root = tmp_path / "s"
    keys, arrays, vdir, ref = _write(root)
    (vdir / "version.json").unlink()
    v = _verify_cli(root)
    assert v.stdout.splitlines() == [f"{ref}: 1 problem(s)",
                                     f"  object record: {vdir / 'version.json'} is missing but all 4 chunks are "
                                     f"written; rerun the extraction that wrote it to recommit it"]
    _write(root)
    assert _verify_cli(root).stdout.strip() == f"{ref}: OK (4 chunks verified)"


def test_edited_record_is_refused_on_open_and_recommitted_by_a_rerun(tmp_path):
    root = tmp_path / "s"
    keys, arrays, vdir, ref = _write(root)
    rec = json.loads((vdir / "version.json").read_text())
    rec["failures"][keys[3]] = "added by hand"  # counts left as they were
    (vdir / "version.json").write_text(json.dumps(rec))
    with pytest.raises(CorruptDataError) as e:
        from featstore.store.reader import FeatureSetVersion
        from featstore.store.location import Location
        FeatureSetVersion(Location.from_url(str(vdir)), "img")
    H.assert_one_line_error(e, f"version record {vdir / 'version.json'} was edited or damaged")
    _write(root)  # the same extraction again rebuilds the record from its chunk markers
    fsv = open_store(root).open("img")
    assert fsv.failures == {} and len(fsv) == N
    np.testing.assert_array_equal(fsv.read("pooled"), arrays["pooled"])


def test_records_without_digest_or_tags_still_read(tmp_path):
    """Versions written before the record digest and the chunk position tags stay readable."""
    root = tmp_path / "s"
    keys, arrays, vdir, ref = _write(root)
    rec = json.loads((vdir / "version.json").read_text())
    rec.pop("record_sha256")
    for ch in rec["chunks"]:
        ch.pop("tags")
    (vdir / "version.json").write_text(json.dumps(rec))
    fsv = open_store(root).open("img")
    np.testing.assert_array_equal(fsv.read("regions"), arrays["regions"])
    assert open_store(root).verify("img").ok
