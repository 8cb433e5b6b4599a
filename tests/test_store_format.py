"""The store format version (issue 14): every version record says ``format_version``; a record without one
is an older store's (format 1) and reads; a higher one is refused in one line naming the version folder and
the fix, by readers and writers alike, and nothing on disk changes. The format version is no part of the
recipe, so version ids stay what they were."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featstore import CorruptDataError, FeatstoreError, __version__, open_store
from featstore.store.layout import FORMAT_VERSION

sys.path.insert(0, str(Path(__file__).resolve().parent))
import store_helpers as H  # noqa: E402

N, R, D, CHUNK = 7, 3, 4, 3


def _write(root):
    keys, arrays = H.region_data(N, R, D, "float32", seed=11)
    fsv = open_store(root, create=True).write("img", H.recipe(), keys, arrays, key_kind="image_key",
                                              modality="image", per_item=H.PER_ITEM, chunk_rows=CHUNK)
    return keys, arrays, Path(root, "sets", "img", fsv.version)


def _edit_record(vdir: Path, **fields) -> None:
    rec = json.loads((vdir / "version.json").read_text())
    for k, v in fields.items():
        if v is None:
            rec.pop(k)
        else:
            rec[k] = v
    (vdir / "version.json").write_text(json.dumps(rec))


def _newer_message(vdir: Path) -> str:
    return (f"feature set version {vdir} is in store format 99, newer than this featstore-heads {__version__} reads "
            f"(format 1); upgrade featstore-heads (pip install -U featstore-heads) to read it")


def test_records_and_the_marker_carry_format_version_1_and_reopen(tmp_path):
    keys, arrays, vdir = _write(tmp_path / "s")
    assert FORMAT_VERSION == 1
    assert json.loads((vdir / "version.json").read_text())["format_version"] == 1
    assert json.loads((tmp_path / "s" / "featstore.json").read_text())["format_version"] == 1
    fsv = open_store(tmp_path / "s").open("img")
    assert fsv.record["format_version"] == 1 and list(fsv.keys) == keys
    for name in ("regions", "pooled", "boxes"):
        np.testing.assert_array_equal(fsv.read(name), arrays[name])


def test_the_version_id_is_the_recipe_hash_without_the_format_version(tmp_path):
    _, _, vdir = _write(tmp_path / "s")
    rec = json.loads((vdir / "version.json").read_text())
    recipe_text = json.dumps(rec["recipe"], sort_keys=True, separators=(",", ":"))  # no format_version in it
    assert "format_version" not in recipe_text
    assert vdir.name == rec["version"] == hashlib.sha256(recipe_text.encode()).hexdigest()[:16]
    assert vdir.name == H.recipe().version_id


def test_a_record_without_format_version_is_format_1_and_reads(tmp_path):
    """As written before the field existed: no format_version and, older still, no digest."""
    keys, arrays, vdir = _write(tmp_path / "s")
    _edit_record(vdir, format_version=None, record_sha256=None)
    fsv = open_store(tmp_path / "s").open("img")
    assert "format_version" not in fsv.record and fsv.version == vdir.name
    np.testing.assert_array_equal(fsv.read("regions"), arrays["regions"])
    assert open_store(tmp_path / "s").verify("img").ok


def test_a_newer_format_is_refused_by_open_list_verify_and_writers_and_nothing_changes(tmp_path):
    root = tmp_path / "s"
    _, _, vdir = _write(root)
    _edit_record(vdir, format_version=99)  # as a newer featstore-heads would write it (checked before the digest)
    before = H.snapshot(root)
    store = open_store(root)
    for attempt in (lambda: store.open("img"), lambda: store.open(f"img@{vdir.name}"), lambda: store.versions("img"),
                    lambda: store.verify("img"), store.verify_all, lambda: _write(root)):
        with pytest.raises(FeatstoreError) as e:
            attempt()
        assert type(e.value) is FeatstoreError  # not a CorruptDataError: a writer must not recommit it
        assert str(e.value) == _newer_message(vdir)
    assert H.snapshot(root) == before


def test_a_newer_format_is_one_line_from_the_cli(tmp_path):
    from cli.featstore_cli import main

    _, _, vdir = _write(tmp_path / "s")
    _edit_record(vdir, format_version=99)
    for args in (["ls", "--store", str(tmp_path / "s")], ["info", "img", "--store", str(tmp_path / "s")]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        assert res.output == f"error: {_newer_message(vdir)}\n"


@pytest.mark.parametrize("bad", ["2", 0, True, 1.0])
def test_a_format_version_that_is_no_positive_integer_is_damage(tmp_path, bad):
    _, _, vdir = _write(tmp_path / "s")
    _edit_record(vdir, format_version=bad)
    with pytest.raises(CorruptDataError) as e:
        open_store(tmp_path / "s").open(f"img@{vdir.name}")
    assert str(e.value) == (f"version record {vdir / 'version.json'} is damaged (format_version {bad!r} is not a "
                            f"positive integer); rerun the extraction that wrote it to recommit it, or remove the "
                            f"version")
