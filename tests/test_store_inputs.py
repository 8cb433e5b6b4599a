"""Bad options and conflicting runs (issue 12, item 10): checked before anything is written."""
from __future__ import annotations

import pytest

from cli.featstore_cli import main as featstore
from cli_helpers import extract_args, invoke, make_hm_folder, one_line_error, tree
from featstore.store import open_store


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_hm_folder(tmp_path_factory.mktemp("inputs") / "data")


@pytest.mark.parametrize("flag,value,line", [
    ("--batch-size", 0, "--batch-size 0 is invalid; pass a whole number >= 1"),
    ("--batch-size", -3, "--batch-size -3 is invalid; pass a whole number >= 1"),
    ("--chunk-rows", 0, "--chunk-rows 0 is invalid; pass a whole number >= 1"),
])
def test_bad_extract_options_fail_before_a_version_is_created(data, tmp_path, flag, value, line):
    store = tmp_path / "store"
    got = one_line_error(featstore, extract_args(data, store, "grid", flag, value))
    assert got == f"error: {line}"
    assert not [p for p in tree(store) if p.startswith("sets/")]  # no version left behind
    # and the same recipe then runs on either backend
    invoke(featstore, extract_args(data, store, "grid", "--backend", "lmdb"))
    assert open_store(store).open("grid").record["backend"] == "lmdb"


def test_same_recipe_on_another_backend_is_a_one_line_conflict(data, tmp_path):
    store = tmp_path / "store"
    invoke(featstore, extract_args(data, store, "grid"))
    got = one_line_error(featstore, extract_args(data, store, "grid", "--backend", "lmdb"))
    assert got.startswith("error: version grid@") and got.endswith(
        "already exists on the zarr backend (the backend is not part of the version id); read it as it is, or remove "
        "it with `featstore rm grid@" + got.split("grid@")[1].split(" ")[0] + "` and run again with --backend lmdb")


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs (root in a container that allows mounts); skipped elsewhere."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    from featstore.store.backends import close_lmdb_envs

    close_lmdb_envs()  # an open environment keeps the mount busy
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("backend", ["zarr", "lmdb"])
def test_disk_full_is_one_line_naming_the_store(data, small_fs, backend):
    store = small_fs / "store"
    got = one_line_error(featstore, extract_args(data, store, "grid", "--backend", backend, "--set", "grid_size=7"))
    assert got.startswith(f"error: no space left on the device of {store}/sets/grid/"), got
    assert got.endswith("free space, then rerun the same command to resume (finished chunks are kept)")


def test_store_path_that_is_a_file(data, tmp_path):
    (tmp_path / "f").write_text("x")
    assert one_line_error(featstore, extract_args(data, tmp_path / "f", "grid")) == \
        f"error: store path '{tmp_path / 'f'}' is a file, not a directory; pass a directory for --store"
    assert one_line_error(featstore, extract_args(data, tmp_path / "f" / "s", "grid")) == \
        f"error: store path '{tmp_path / 'f' / 's'}' is below a file ({tmp_path / 'f'}); pass a directory for --store"


def test_identical_extraction_committed_meanwhile_stops_the_slower_one_early(data, tmp_path):
    """Item 13: run A's first forward starts and finishes an identical run B; A then stops at its next batch
    (it used to recompute and rewrite every chunk B had committed) and says so; B's bytes stay as committed."""
    from cli_helpers import GRID_CFG
    from featstore.datasets import load_dataset
    from featstore.extractors import create_extractor
    from featstore.runner.extract import ExtractOptions, run_extraction

    store, ds = open_store(tmp_path / "store", create=True), load_dataset(data)
    opts = ExtractOptions(batch_size=1, chunk_rows=1, num_workers=0, progress=False, device="cpu")

    class RacedByB:
        def __init__(self):
            self.inner, self.raced = create_extractor("grid", **GRID_CFG), False

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def forward(self, batch):
            if not self.raced:
                self.raced = True
                run_extraction(store, ds, "grid", extractor_config=GRID_CFG, options=opts)  # B, start to end
            return self.inner.forward(batch)

    a = run_extraction(store, ds, "grid", options=opts, extractor=RacedByB())
    assert a.already_complete and a.stopped_early and a.chunks_written <= 1, a
    assert "an identical extraction committed it while this one ran: stopped early after" in a.lines()[0]
    fsv = store.open("grid")
    assert store.verify("grid").ok and len(fsv) == len(ds.image_keys())


def test_text_array_the_text_set_lacks_is_refused_even_for_a_text_only_head(tmp_path):
    """Item 14: `--text-array nosuch` used to be ignored when the set had a pooled vector (text-only head)."""
    from cli.heads_cli import main as heads
    from cli_helpers import build_world

    w = build_world(tmp_path / "w")
    got = one_line_error(heads, ["train", "--store", w["store"], "--dataset", w["data"], "--text", "bert", "--head",
                                 "text-only", "--text-array", "nosuch", "--epochs", 1, "--quiet", "--device", "cpu",
                                 "--out", tmp_path / "run"])
    assert got.startswith("error: text feature set 'bert' has no array 'nosuch' for --text-array (it has "), got
    assert not (tmp_path / "run").exists()
