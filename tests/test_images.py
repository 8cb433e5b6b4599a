"""load_image on real files written by Pillow: every supported mode and every failure path."""
import io

import numpy as np
import pytest
from PIL import Image

from featstore.errors import FeatstoreError
from featstore.extractors.images import ImageDecodeError, load_image


def _rgb(w=40, h=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_rgb_png_roundtrip_exact(tmp_path):
    img = _rgb()
    p = tmp_path / "a.png"
    img.save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (40, 30)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (20, 10)
    r, g, b = np.asarray(out).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_16bit_grey_png_scaled_to_8bit(tmp_path):
    arr = np.array([[0, 257 * 10, 65535], [257 * 128, 1000, 30000]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode in ("I;16", "I")
    out = np.asarray(load_image(p))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[..., 0], (arr.astype(np.int64) >> 8).astype(np.uint8))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_palette_png_without_and_with_transparency(tmp_path):
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    p = tmp_path / "p.png"
    pal.save(p)
    out = np.asarray(load_image(p))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (0, 0, 255)
    p2 = tmp_path / "pt.png"
    pal.save(p2, transparency=1)  # index 1 (blue) fully transparent -> white
    out2 = np.asarray(load_image(p2))
    assert tuple(out2[0, 0]) == (255, 0, 0) and tuple(out2[0, 1]) == (255, 255, 255)


def test_rgba_and_la_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(0, 0, 0, 0), (100, 50, 0, 128)])
    p = tmp_path / "rgba.png"
    rgba.save(p)
    out = np.asarray(load_image(p)).astype(float)
    assert tuple(out[0, 0]) == (255, 255, 255)
    a = 128 / 255  # hand computed: c*a + 255*(1-a)
    np.testing.assert_allclose(out[0, 1], [100 * a + 255 * (1 - a), 50 * a + 255 * (1 - a), 255 * (1 - a)], atol=1)
    la = Image.new("LA", (1, 1), (0, 0))
    p2 = tmp_path / "la.png"
    la.save(p2)
    assert tuple(np.asarray(load_image(p2))[0, 0]) == (255, 255, 255)


def test_animated_gif_first_frame(tmp_path):
    f1, f2 = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    p = tmp_path / "anim.gif"
    f1.save(p, save_all=True, append_images=[f2], duration=100, loop=0)
    assert Image.open(p).n_frames == 2
    out = np.asarray(load_image(p))
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 240 and b < 15


def test_exif_orientation_6_rotates(tmp_path):
    img = _rgb(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif.tobytes(), quality=95)
    assert Image.open(p).size == (40, 20)
    out = load_image(p)
    assert out.size == (20, 40)


def test_huge_declared_size_rejected_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("L", (3000, 3000)).save(p)  # 9 Mpx, compresses to a few kB
    with pytest.raises(ImageDecodeError) as e:
        load_image(p, max_pixels=1_000_000)
    assert "too large" in e.value.reason and "3000x3000" in str(e.value)
    assert load_image(p, max_pixels=10_000_000).size == (3000, 3000)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    buf = io.BytesIO()
    _rgb(64, 64).save(buf, format=fmt)
    data = buf.getvalue()
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as e:
        load_image(p)
    assert e.value.reason == "truncated file" or e.value.reason.startswith("corrupt")
    assert isinstance(e.value, FeatstoreError) and "\n" not in str(e.value) and str(p) in str(e.value)


def test_corrupt_png_data(tmp_path):
    buf = io.BytesIO()
    _rgb(32, 32).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    i = data.index(b"IDAT") + 8
    data[i:i + 40] = b"\x00" * 40  # break the zlib stream (and the CRC)
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError) as e:
        load_image(p)
    assert e.value.reason.startswith("corrupt") or e.value.reason == "truncated file"


def test_missing_empty_not_an_image_and_directory(tmp_path):
    with pytest.raises(ImageDecodeError) as e:
        load_image(tmp_path / "nope.png")
    assert e.value.reason == "file not found"
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError) as e:
        load_image(tmp_path / "zero.jpg")
    assert e.value.reason.startswith("empty file")
    (tmp_path / "text.png").write_text("hello, not an image")
    with pytest.raises(ImageDecodeError) as e:
        load_image(tmp_path / "text.png")
    assert e.value.reason == "not a recognised image format"
    with pytest.raises(ImageDecodeError) as e:
        load_image(tmp_path)
    assert e.value.reason == "is a directory"
    with pytest.raises(FeatstoreError):
        load_image(tmp_path / "zero.jpg", max_pixels=0)
