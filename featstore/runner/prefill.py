"""Fill a decoded-image cache ahead of extraction (``featstore cache-images``).

Decoding Hateful Memes' PNGs is CPU work; on a rented GPU machine it is GPU time spent waiting. Filling the
cache beforehand, on any machine that sees the same files, lets every later ``featstore extract
--image-cache DIR`` read pixels instead of decoding them. Workers are DataLoader processes, each loading
through its own handle on the cache; pixels never travel between processes, only (hit, failure) pairs.
With ``recipes`` (extractors' ``resize_recipe()``) each image is also stored resized to those input
geometries, so the extraction's warm path reads only the resized bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from ..extractors.images import FEATSTORE_DECODE
from .extract import ExtractOptions, _progress, _resolve_workers, extraction_items
from .image_cache import DecodedImageCache, ImageCacheError


@dataclass
class PrefillSummary:
    images: int
    decoded: int  # decoded now (and stored, failures included)
    already: int  # found in the cache, unchanged (pixels or a cached failure)
    failures: Dict[str, str] = field(default_factory=dict)  # image key -> reason

    def lines(self) -> List[str]:
        out = [f"image cache: {self.images} images, {self.decoded} decoded now, {self.already} already cached, "
               f"{len(self.failures)} unreadable"]
        out += [f"  {k}: {why}" for k, why in list(self.failures.items())[:5]]
        return out


class _Loads(torch.utils.data.Dataset):
    """Item i -> (key, hit, failure reason or None, cache error or None); runs in the workers."""

    def __init__(self, cache: DecodedImageCache, items: List[tuple], max_pixels: int, recipes: Sequence = (),
                 decodes: Sequence[str] = ()):
        self.cache, self.items, self.max_pixels, self.recipes = cache, items, max_pixels, tuple(recipes)
        # the decodes to store besides the recipes' own (which load_resized stores); none at all: featstore's
        self.decodes = tuple(dict.fromkeys(decodes)) if decodes or self.recipes else (FEATSTORE_DECODE,)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from ..extractors.images import ImageDecodeError

        key, path = self.items[i]
        misses = self.cache.misses  # a miss is a decode; resizing a cached decode is not one
        try:
            if path is None:
                return key, False, "no image path in the manifest", None
            for decode in self.decodes:
                self.cache.load(path, self.max_pixels, decode)
            for recipe in self.recipes:
                self.cache.load_resized(path, recipe, max_pixels=self.max_pixels)
            return key, self.cache.misses == misses, None, None
        except ImageCacheError as e:
            return key, False, None, str(e)
        except ImageDecodeError as e:
            return key, self.cache.misses == misses, e.reason, None


def prefill_image_cache(dataset, cache_dir: str, *, num_workers: Optional[int] = None,
                        max_pixels: int = ExtractOptions.max_pixels, progress: bool = True,
                        recipes: Sequence = (), decodes: Sequence[str] = ()) -> PrefillSummary:
    """Decode every distinct image of ``dataset`` into the cache at ``cache_dir`` (images already there and
    unchanged are skipped) by each of ``decodes`` (``images.load_image``'s, the extractors' ``image_decode``)
    and store it resized by each of ``recipes`` (``pixels.ResizeRecipe``, with the decode it names); with
    neither, featstore's own decode. A broken
    cache raises ``ImageCacheError``; unreadable images are counted and listed, as extraction would record
    them."""
    cache = DecodedImageCache(cache_dir)
    cache.check()
    items = extraction_items(dataset, "image")
    workers = _resolve_workers(num_workers)
    loader = torch.utils.data.DataLoader(_Loads(cache, items, max_pixels, recipes, decodes), batch_size=None,
                                         shuffle=False, num_workers=workers, prefetch_factor=16 if workers else None)
    summary = PrefillSummary(len(items), 0, 0)
    bar = _progress(len(items), progress, "images")
    try:
        for key, hit, reason, cache_error in loader:
            if cache_error is not None:
                raise ImageCacheError(cache_error)
            if hit:
                summary.already += 1
            else:
                summary.decoded += 1
            if reason is not None:
                summary.failures[key] = reason
            bar.update(1)
    finally:
        bar.close()
        cache.close()
    return summary
