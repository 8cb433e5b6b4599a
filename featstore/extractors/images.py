"""Decode one image file into an 8-bit RGB ``PIL.Image``, or fail with a short reason.

``load_image`` is what the extraction run loop calls for every manifest image. Every failure raises
``ImageDecodeError`` whose ``reason`` is a short phrase (the run loop stores ``id -> reason`` in the
version's failures) and whose message is one line naming the file and the fix.

Handled inputs: missing or empty files, unknown formats, truncated / corrupt JPEG and PNG data, CMYK,
palette (``P``, with or without transparency), 16-bit grey (``I;16``/``I``), float (``F``), alpha
(``LA``/``RGBA``/``PA``: composited on white), animated GIF/PNG/WebP (the first frame), EXIF orientation
(applied with ``ImageOps.exif_transpose``) and decompression bombs (the declared size is checked against
``max_pixels`` from the header, before any pixel is decoded).

``decode="convert-rgb"`` is instead ``Image.open(path).convert("RGB")`` after the same checks: the loader of
MMF (``mmf.datasets.databases.image_database.default_loader``) and torchvision (``pil_loader``), which drops
alpha (the colour under transparent pixels stays) and ignores EXIF orientation. ``decode="cv2"`` is what
``cv2.imread(path)`` (IMREAD_COLOR; bottom-up-attention's ``generate_tsv.py`` and its PyTorch ports) gives, in
RGB order: featstore's decode (EXIF orientation applied, 16-bit scaled to 8) with alpha dropped instead of
composited. Extractors that reproduce such a pipeline name the decode in their ``pixels.ResizeRecipe`` or
their config's ``decode`` (``Extractor.image_decode``), so the run loop and the image cache decode with it.
"""
from __future__ import annotations

import os
import warnings
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import FeatstoreError

DEFAULT_MAX_PIXELS = 100_000_000  # 10k x 10k; a 4-byte RGBA buffer of that size is 400 MB

_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
FEATSTORE_DECODE, CONVERT_RGB, CV2 = "featstore", "convert-rgb", "cv2"
DECODES = (FEATSTORE_DECODE, CONVERT_RGB, CV2)


def check_decode(decode: str) -> str:
    if decode not in DECODES:
        raise FeatstoreError(f"decode={decode!r} is not known; use one of {', '.join(DECODES)}")
    return decode


class ImageDecodeError(FeatstoreError):
    """An image file cannot be turned into RGB pixels. ``reason`` is a short phrase, ``path`` the file."""

    def __init__(self, path: Union[str, os.PathLike], reason: str, fix: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"image {self.path!r}: {reason}; {fix}")


def load_image(path: Union[str, os.PathLike], *, max_pixels: int = DEFAULT_MAX_PIXELS,
               decode: str = FEATSTORE_DECODE) -> Image.Image:
    """Open, fully decode and normalise one image.

    Returns a loaded ``PIL.Image`` in mode ``"RGB"`` (width x height as displayed, i.e. after the EXIF
    orientation is applied; with ``decode="convert-rgb"`` as stored, Pillow's ``convert("RGB")``). Raises
    ``ImageDecodeError`` for every unreadable input.
    """
    check_decode(decode)
    if max_pixels is None or int(max_pixels) <= 0:
        raise FeatstoreError(f"max_pixels={max_pixels!r} is invalid; pass a positive pixel count")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageDecodeError(path, "file not found", "check the manifest's image path and the images folder")
    if os.path.isdir(path):
        raise ImageDecodeError(path, "is a directory", "point the manifest at an image file")
    if os.path.getsize(path) == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)", "re-download or re-export the image")
    fix = "re-download or re-export the image, or drop it from the manifest"
    try:
        with warnings.catch_warnings():
            # Our own pixel limit governs; Pillow's DecompressionBombWarning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        path, f"too large ({width}x{height} = {width * height} pixels > max_pixels={max_pixels})",
                        "downscale the image or raise max_pixels if it is trusted")
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)  # animated: the first frame
                img.load()
                if decode == CONVERT_RGB:
                    return img.convert("RGB")
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img, composite=decode == FEATSTORE_DECODE)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(path, "too large (decompression bomb)", "downscale the image") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(path, "not a recognised image format", fix) from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        if "truncated" in detail.lower():
            reason = "truncated file"
        else:
            reason = f"corrupt image data ({detail})"
        raise ImageDecodeError(path, reason, fix) from e


def _to_rgb(img: Image.Image, composite: bool = True) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha is composited on white (``composite``) or dropped, 16-bit / float
    grey scaled to 8 bits."""
    mode = img.mode
    if mode == "RGB":
        return img.copy() if img.readonly else img
    if mode == "P":
        mode_out = "RGBA" if composite and "transparency" in img.info else "RGB"
        img = img.convert(mode_out)
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in _ALPHA_MODES and not composite:
        return img.convert("RGB")  # the colour channels as stored, as cv2.imread reads them
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        arr = np.clip(arr, 0, 65535) >> 8  # 16-bit range -> 8-bit
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0  # float images in [0, 1]
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def require_pil(item):
    """Image extractors take an already decoded PIL image (``load_image``); anything else is one error."""
    if not isinstance(item, Image.Image):
        raise FeatstoreError(f"image extractors take a decoded PIL image, got {type(item).__name__}; "
                             "decode with featstore.extractors.load_image")
    return item
