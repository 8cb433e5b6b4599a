"""The decoded-image cache (featstore.runner.image_cache) on real files written by Pillow: hits give exactly
load_image's pixels and errors, a changed file or a corrupt record is decoded again, several processes share
one cache, and `run_extraction` / `featstore extract --image-cache` store the same arrays (and version) with a
cold cache, a warm cache and no cache."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from cli.featstore_cli import main as featstore
from cli_helpers import extract_args, invoke, make_hm_folder, one_line_error
from featstore.datasets import load_dataset
from featstore.errors import FeatstoreError
from featstore.extractors.images import ImageDecodeError, load_image
from featstore.runner import DecodedImageCache, ExtractOptions, run_extraction
from featstore.runner.image_cache import ImageCacheError
from featstore.store import open_store

GRID = dict(backbone="resnet18", image_size=64, grid_size=2, dtype="float32", weights=None)


# -- image builders ---------------------------------------------------------------------------------------
def _rgb_array(w=40, h=30, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_rgb(path: Path, seed=0) -> Path:
    Image.fromarray(_rgb_array(seed=seed)).save(path)
    return path


def jpeg_exif_rotated(path: Path) -> Path:
    """A 40x30 JPEG whose EXIF orientation 6 makes it display as 30x40."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_rgb_array()).save(path, quality=90, exif=exif.tobytes())
    return path


def png_palette_transparent(path: Path) -> Path:
    pal = Image.new("P", (6, 4))
    pal.putpalette([255, 0, 0, 0, 0, 255, 0, 200, 0] + [0] * 759)
    pal.putdata([i % 3 for i in range(24)])
    pal.save(path, transparency=1)
    return path


def png_grey16(path: Path) -> Path:
    arr = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1871).astype(np.uint16)
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    return path


def png_truncated(path: Path) -> Path:
    good = path.with_name("full.png")
    Image.fromarray(_rgb_array(80, 60, seed=3)).save(good)
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


KINDS = {"png": png_rgb, "jpeg-exif-rotated": jpeg_exif_rotated, "palette-transparency": png_palette_transparent,
         "grey16": png_grey16}


def _same_stamp_garbage(path: Path) -> None:
    """Overwrite ``path`` with undecodable bytes of the same length and put its mtime back: a decode would
    now fail, so a successful load can only have come from the cache."""
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# -- single process ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_hit_returns_exactly_load_image_pixels(tmp_path, kind):
    path = KINDS[kind](tmp_path / ("img.jpg" if "jpeg" in kind else "img.png"))
    ref = load_image(path)
    cache = DecodedImageCache(tmp_path / "cache")
    first, second = cache.load(path), cache.load(path)
    assert cache.stats() == {"hits": 1, "misses": 1, "corrupt": 0}
    for img in (first, second):
        assert img.mode == "RGB" and img.size == ref.size
        assert np.array_equal(np.asarray(img), np.asarray(ref))
    if kind == "jpeg-exif-rotated":
        assert second.size == (30, 40)
    # a fresh object (as in another run) reads the same record back
    again = DecodedImageCache(tmp_path / "cache")
    assert np.array_equal(np.asarray(again.load(path)), np.asarray(ref)) and again.stats()["hits"] == 1


def test_second_load_does_not_decode_and_a_changed_file_is_decoded_again(tmp_path):
    path = png_rgb(tmp_path / "a.png", seed=1)
    ref = np.asarray(load_image(path))
    cache = DecodedImageCache(tmp_path / "cache")
    cache.load(path)
    _same_stamp_garbage(path)  # same size and mtime: still the cached pixels (no decode happened)
    assert np.array_equal(np.asarray(cache.load(path)), ref)
    # rewritten with other pixels (size / mtime change): a miss, the new pixels, the record overwritten
    png_rgb(path, seed=2)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10 ** 9))
    new = cache.load(path)
    assert np.array_equal(np.asarray(new), np.asarray(load_image(path)))
    assert not np.array_equal(np.asarray(new), ref)
    assert cache.stats() == {"hits": 1, "misses": 2, "corrupt": 0}
    assert len(cache) == 1  # keyed by the file, so the stale record was replaced, not kept beside it
    assert np.array_equal(np.asarray(cache.load(path)), np.asarray(new)) and cache.stats()["hits"] == 2


def test_one_record_per_real_file_through_symlinks_and_relative_paths(tmp_path, monkeypatch):
    """The key is the file's realpath (folders resolved once per process): a symlinked folder, a symlinked
    file and a relative path reach the same record; a folder link re-pointed is seen by a new cache object."""
    real = tmp_path / "real"
    real.mkdir()
    path = png_rgb(real / "a.png", seed=1)
    (tmp_path / "linkdir").symlink_to(real, target_is_directory=True)
    (tmp_path / "linkfile.png").symlink_to(path)
    cache = DecodedImageCache(tmp_path / "cache")
    cache.load(path)
    monkeypatch.chdir(real)
    for other in (tmp_path / "linkdir" / "a.png", tmp_path / "linkfile.png", "a.png"):
        assert np.array_equal(np.asarray(cache.load(other)), np.asarray(load_image(path)))
    assert cache.stats() == {"hits": 3, "misses": 1, "corrupt": 0} and len(cache) == 1
    other = tmp_path / "other"
    other.mkdir()
    png_rgb(other / "a.png", seed=2)
    (tmp_path / "linkdir").unlink()
    (tmp_path / "linkdir").symlink_to(other, target_is_directory=True)
    fresh = DecodedImageCache(tmp_path / "cache")
    assert np.array_equal(np.asarray(fresh.load(tmp_path / "linkdir" / "a.png")), np.asarray(load_image(other / "a.png")))
    assert fresh.stats()["misses"] == 1 and len(fresh) == 2


def test_decode_failure_is_cached_with_the_same_reason_and_message(tmp_path):
    path = png_truncated(tmp_path / "bad.png")
    with pytest.raises(ImageDecodeError) as direct:
        load_image(path)
    cache = DecodedImageCache(tmp_path / "cache")
    errors = []
    for _ in range(2):
        with pytest.raises(ImageDecodeError) as e:
            cache.load(path)
        errors.append(e.value)
    assert cache.stats() == {"hits": 1, "misses": 1, "corrupt": 0}
    for err in errors:
        assert err.reason == direct.value.reason == "truncated file"
        assert str(err) == str(direct.value) and err.path == str(path)
    # another extractor's process: the same failure, without decoding (the bytes are gone, the stamp is not)
    _same_stamp_garbage(path)
    with pytest.raises(ImageDecodeError, match="truncated file"):
        DecodedImageCache(tmp_path / "cache").load(path)


def test_too_large_is_checked_on_hits_and_never_cached(tmp_path):
    path = jpeg_exif_rotated(tmp_path / "r.jpg")  # declared 40x30, displayed 30x40
    cache = DecodedImageCache(tmp_path / "cache")
    cache.load(path)
    for limit in (1199, 10):
        with pytest.raises(ImageDecodeError) as direct:
            load_image(path, max_pixels=limit)
        with pytest.raises(ImageDecodeError) as cached:
            cache.load(path, max_pixels=limit)
        assert str(cached.value) == str(direct.value) and cached.value.reason.startswith("too large (40x30")
    assert cache.load(path, max_pixels=1200).size == (30, 40)
    assert cache.stats()["misses"] == 1
    # a file first seen with a too-small limit is not recorded as a failure
    other = png_rgb(tmp_path / "o.png")
    with pytest.raises(ImageDecodeError, match="too large"):
        cache.load(other, max_pixels=100)
    assert np.array_equal(np.asarray(cache.load(other)), np.asarray(load_image(other)))
    with pytest.raises(FeatstoreError, match="max_pixels"):
        cache.load(other, max_pixels=0)


def _corrupt(cache_dir: Path, how: str) -> None:
    env = lmdb.open(str(cache_dir), map_size=1 << 30, subdir=True)
    try:
        with env.begin(write=True) as txn:
            (key, value), = list(txn.cursor())
            value = bytearray(value)
            if how == "pixel-bit":
                value[-7] ^= 0x10
            elif how == "magic":
                value[0:4] = b"XXXX"
            elif how == "length":
                value = value[:-3]
            txn.put(key, bytes(value))
    finally:
        env.close()


@pytest.mark.parametrize("how", ["pixel-bit", "magic", "length"])
def test_corrupt_record_is_decoded_again_and_overwritten(tmp_path, how):
    path = png_rgb(tmp_path / "a.png", seed=4)
    ref = np.asarray(load_image(path))
    cache = DecodedImageCache(tmp_path / "cache")
    cache.load(path)
    cache.close()  # the test opens the environment itself; LMDB allows one per path and process
    _corrupt(tmp_path / "cache", how)
    assert np.array_equal(np.asarray(cache.load(path)), ref)
    assert cache.stats() == {"hits": 0, "misses": 2, "corrupt": 1}
    assert np.array_equal(np.asarray(cache.load(path)), ref) and cache.stats()["hits"] == 1  # rewritten


def test_unusable_cache_directory_is_a_one_line_error(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("not a cache")
    cases = {afile: "existing file", afile / "sub": "cannot be created"}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    cases[tmp_path / "mine"] = "non-empty directory"
    for bad, what in cases.items():
        with pytest.raises(FeatstoreError) as e:
            DecodedImageCache(bad)
        msg = str(e.value)
        assert isinstance(e.value, ImageCacheError) and "\n" not in msg
        assert str(bad) in msg and what in msg and "pass a new or empty directory" in msg
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    # an LMDB data file that is not one: fails when opened, naming the fix
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "data.mdb").write_bytes(b"garbage" * 1000)
    with pytest.raises(ImageCacheError, match=r"cannot be opened.*delete that directory"):
        DecodedImageCache(broken).check()


def test_map_full_is_a_clear_error(tmp_path):
    cache = DecodedImageCache(tmp_path / "cache", map_size=64 * 1024)
    big = tmp_path / "big.png"
    Image.fromarray(_rgb_array(300, 200)).save(big)
    with pytest.raises(ImageCacheError, match=r"is full.*delete that directory"):
        cache.load(big)
    cache.close()


# -- several processes ------------------------------------------------------------------------------------
def _load_all(cache_dir: str, paths, barrier, results) -> None:
    barrier.wait()
    cache = DecodedImageCache(cache_dir)
    bad = [p for p in paths if not np.array_equal(np.asarray(cache.load(p)), np.asarray(load_image(p)))]
    results.put((os.getpid(), bad, cache.stats()))


def test_two_processes_fill_and_read_one_cache_at_once(tmp_path):
    paths = [str(png_rgb(tmp_path / f"{i}.png", seed=10 + i)) for i in range(18)]
    cache = DecodedImageCache(tmp_path / "cache")
    cache.check()  # open in the parent before forking: children must still get their own environments
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    shares = [paths[:12], paths[6:]]  # disjoint and overlapping files
    procs = [ctx.Process(target=_load_all, args=(str(tmp_path / "cache"), s, barrier, results)) for s in shares]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(bad == [] for _, bad, _ in got)
    assert sum(s["hits"] + s["misses"] for _, _, s in got) == 24
    assert len(cache) == 18
    for p in paths:
        assert np.array_equal(np.asarray(cache.load(p)), np.asarray(load_image(p)))
    assert cache.stats() == {"hits": 18, "misses": 0, "corrupt": 0}


# -- extraction -------------------------------------------------------------------------------------------
def _dataset(root: Path) -> Path:
    """A Hateful-Memes-style folder: 9 PNGs (sizes differ), one truncated file, two samples on image 0."""
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(9):
        Image.fromarray(_rgb_array(50, 40 + 3 * i, seed=20 + i)).save(root / "img" / f"{i:05d}.png")
        rows.append({"id": i + 1, "img": f"img/{i:05d}.png", "label": i % 2, "text": f"caption {i}"})
    rows.append({"id": 50, "img": "img/00000.png", "label": 1, "text": "the same image"})
    png_truncated(root / "img" / "00090.png")
    rows.append({"id": 90, "img": "img/00090.png", "label": 0, "text": "broken"})
    with open(root / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return root / "train.jsonl"


def _extract(store_dir: Path, ds, cache, workers: int):
    st = open_store(store_dir, create=True)
    opts = ExtractOptions(batch_size=3, num_workers=workers, chunk_rows=4, progress=False, image_cache=cache)
    summary = run_extraction(st, ds, "grid", extractor_config=GRID, options=opts)
    return summary, open_store(store_dir).open("grid")


def test_extraction_without_cold_and_warm_cache_store_identical_arrays(tmp_path):
    ds = load_dataset(_dataset(tmp_path / "data"), check_images=False)
    cache_dir = tmp_path / "cache"
    _, plain = _extract(tmp_path / "plain", ds, None, 0)
    _, cold = _extract(tmp_path / "cold", ds, str(cache_dir), 2)
    assert len(DecodedImageCache(cache_dir)) == 19  # 9 decoded images, their 9 resized for grid, 1 failure
    for p in sorted((tmp_path / "data" / "img").glob("*.png")):
        _same_stamp_garbage(p)  # from now on only the cache can supply pixels (and the failure); `ds` keeps
        # the fingerprint it computed from the real bytes, so the version id is comparable
    _, warm = _extract(tmp_path / "warm", ds, str(cache_dir), 2)
    assert plain.version == cold.version == warm.version
    assert plain.failures == cold.failures == warm.failures and list(plain.failures) == ["00090"]
    assert "truncated file" in warm.failures["00090"]
    assert list(plain.keys) == list(cold.keys) == list(warm.keys)
    for name in plain.array_names:
        ref = plain.read(name)
        assert np.array_equal(cold.read(name), ref), name
        assert np.array_equal(warm.read(name), ref), name
    assert plain.read("regions").shape == (9, 4, 512)


def test_text_extraction_ignores_the_image_cache(tmp_path):
    ds = load_dataset(_dataset(tmp_path / "data"), check_images=False)
    st = open_store(tmp_path / "store", create=True)
    opts = ExtractOptions(num_workers=0, progress=False, image_cache=str(tmp_path / "data" / "train.jsonl"))
    summary = run_extraction(st, ds, "bert", extractor_config=dict(weights="demo", max_length=8, dtype="float32"),
                             options=opts)
    assert summary.n == len(ds.samples) and not summary.failures


def test_cli_image_cache_flag(tmp_path):
    data = make_hm_folder(tmp_path / "data")
    cache_dir = tmp_path / "cache"
    invoke(featstore, extract_args(data, tmp_path / "plain", "grid"))
    invoke(featstore, extract_args(data, tmp_path / "cold", "grid", "--image-cache", cache_dir))
    assert len(DecodedImageCache(cache_dir)) == 12  # 6 decoded images and each resized for grid
    filled = (cache_dir / "data.mdb").read_bytes()
    out = invoke(featstore, extract_args(data, tmp_path / "warm", "grid", "--image-cache", cache_dir))
    assert "6 rows, 0 failed" in out
    assert (cache_dir / "data.mdb").read_bytes() == filled  # every image was a hit: nothing written
    sets = [open_store(tmp_path / s).open("grid") for s in ("plain", "cold", "warm")]
    assert len({s.version for s in sets}) == 1
    for name in sets[0].array_names:
        assert all(np.array_equal(s.read(name), sets[0].read(name)) for s in sets[1:]), name
    assert "--image-cache" in invoke(featstore, ["extract", "--help"])
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = one_line_error(featstore, extract_args(data, tmp_path / "bad", "grid", "--image-cache", afile))
    assert str(afile) in line and "not a directory" in line


def test_a_cache_that_fills_up_mid_run_stops_the_run_and_a_rerun_without_it_completes(tmp_path):
    ds = load_dataset(_dataset(tmp_path / "data"), check_images=False)
    st = open_store(tmp_path / "store", create=True)
    tiny = DecodedImageCache(tmp_path / "cache", map_size=32 * 1024)  # room for the first few images only
    opts = ExtractOptions(batch_size=2, num_workers=0, chunk_rows=4, progress=False, image_cache=tiny)
    with pytest.raises(FeatstoreError, match=r"image cache .* is full") as err:
        run_extraction(st, ds, "grid", extractor_config=GRID, options=opts)
    assert "\n" not in str(err.value)
    assert st.feature_sets() == [] or not st.versions("grid")  # nothing committed
    tiny.close()
    opts = ExtractOptions(batch_size=2, num_workers=0, chunk_rows=4, progress=False)
    summary = run_extraction(st, ds, "grid", extractor_config=GRID, options=opts)  # resumes the same version
    _, plain = _extract(tmp_path / "plain", ds, None, 0)
    fsv = st.open("grid")
    assert summary.version == plain.version and list(fsv.failures) == ["00090"]
    for name in plain.array_names:  # batches are cut differently after a resume: float sums may differ in ulps
        np.testing.assert_allclose(fsv.read(name), plain.read(name), rtol=1e-4, atol=1e-5, err_msg=name)


# -- filling the cache ahead of extraction ----------------------------------------------------------------
def test_prefill_decodes_once_then_extraction_reads_only_the_cache(tmp_path):
    from featstore.runner.prefill import prefill_image_cache

    ds = load_dataset(_dataset(tmp_path / "data"), check_images=False)
    cache_dir = tmp_path / "cache"
    first = prefill_image_cache(ds, str(cache_dir), num_workers=2, progress=False)
    assert (first.images, first.decoded, first.already) == (10, 10, 0)
    assert list(first.failures) == ["00090"] and first.failures["00090"] == "truncated file"
    again = prefill_image_cache(ds, str(cache_dir), num_workers=0, progress=False)
    assert (again.decoded, again.already, again.failures) == (0, 10, first.failures)
    _, plain = _extract(tmp_path / "plain", ds, None, 0)
    for p in sorted((tmp_path / "data" / "img").glob("*.png")):
        _same_stamp_garbage(p)  # only the prefilled cache can supply the pixels now
    _, warm = _extract(tmp_path / "warm", ds, str(cache_dir), 2)
    assert warm.version == plain.version and warm.failures == plain.failures
    for name in plain.array_names:
        assert np.array_equal(warm.read(name), plain.read(name)), name


def test_cli_cache_images(tmp_path):
    _dataset(tmp_path / "data")
    out = invoke(featstore, ["cache-images", "--dataset", tmp_path / "data" / "train.jsonl", "--image-cache",
                             tmp_path / "cache", "--workers", "1", "--quiet"])
    assert "image cache: 10 images, 10 decoded now, 0 already cached, 1 unreadable" in out
    assert "00090: truncated file" in out
    (tmp_path / "file").write_text("x")
    line = one_line_error(featstore, ["cache-images", "--dataset", tmp_path / "data" / "train.jsonl",
                                      "--image-cache", tmp_path / "file", "--quiet"])
    assert "is an existing file, not a directory" in line
