"""The HTML confounder report: content checked by parsing, then rendered in headless Chromium."""
import base64
import html
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from featstore.errors import FeatstoreError
from featstore.search import find_confounders, thumbnail_data_uri, write_html_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COLOURS = {"red": (220, 20, 20), "green": (20, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 10)}


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:  # CI installs it and sets FEATSTORE_REQUIRE_CHROMIUM=1 (.ci/run): there, missing is a failure
        hint = ("headless Chromium is required for the HTML report test: install it with "
                "`apt-get install -y chromium` (Debian package `chromium`)")
        if os.environ.get("FEATSTORE_REQUIRE_CHROMIUM") == "1":
            pytest.fail(hint + "; FEATSTORE_REQUIRE_CHROMIUM=1 makes its absence a failure")
        pytest.skip(hint)
    return exe


class _Collect(HTMLParser):
    """``imgs``: the thumbnails drawn, in page order, each the attributes of the ``<image>`` its ``<use>``
    names (its ``src``: that image's data URI); ``images``: the ``<image>`` definitions, one per file."""

    def __init__(self):
        super().__init__()
        self.images, self.uses, self.tags, self.text = {}, [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "image":
            self.images[a["id"]] = dict(a, src=a["href"])
        if tag == "use":
            self.uses.append(a["href"])

    handle_startendtag = handle_starttag

    @property
    def imgs(self):
        assert all(u.startswith("#") for u in self.uses)
        return [self.images[u[1:]] for u in self.uses]

    def handle_data(self, data):
        self.text.append(data)


def _decode(uri):
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def _images(tmp_path, ids, colours, sizes):
    paths = {}
    for i, c, size in zip(ids, colours, sizes):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", size, COLOURS[c]).save(p)
        paths[i] = str(p)
    return paths


@pytest.fixture
def memes(tmp_path):
    """4 samples, solid-colour 'photos' (some wide), two planted confounder pairs."""
    ids = ["m1", "m2", "m3", "m4"]
    paths = _images(tmp_path, ids, ["red", "red", "blue", "yellow"], [(400, 300), (400, 300), (300, 500), (320, 320)])
    rng = np.random.default_rng(0)
    img = rng.standard_normal((4, 32))
    txt = rng.standard_normal((4, 32))
    img[1] = img[0]  # m1/m2: same image file, different text
    txt[3] = txt[2]  # m3/m4: same text, different image
    texts = {"m1": "look how many people love you", "m2": "look how many people <script>alert(1)</script> hate you",
             "m3": "when you & me \"agree\"", "m4": "when you & me \"agree\""}
    labels = {"m1": 0, "m2": 1, "m3": 1, "m4": 1}
    pairs = sorted(find_confounders(ids, ["a", "a", "b", "c"], img, txt, [labels[i] for i in ids]),
                   key=lambda p: p.id_a)
    assert [(p.id_a, p.id_b, p.kind) for p in pairs] == [("m1", "m2", "same_image"), ("m3", "m4", "same_text")]
    return dict(pairs=pairs, texts=texts, labels=labels, image_paths=paths)


def test_html_is_self_contained_and_escaped(tmp_path, memes):
    out = tmp_path / "report.html"
    n = write_html_report(memes["pairs"], out, texts=memes["texts"], labels=memes["labels"],
                          image_paths=memes["image_paths"], predictions={"m1": 0.9, "m2": 0.8}, thumb_px=96)
    assert n == 2
    page = out.read_text(encoding="utf-8")
    parser = _Collect()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert "http://" not in page and "https://" not in page
    assert len(parser.imgs) == 4
    thumbs = [_decode(a["src"]) for a in parser.imgs]
    assert [t.size for t in thumbs] == [(96, 72), (96, 72), (58, 96), (96, 96)]  # aspect kept, fits 96 px
    assert [(int(a["width"]), int(a["height"])) for a in parser.imgs] == [t.size for t in thumbs]
    for t, colour in zip(thumbs, ["red", "red", "blue", "yellow"]):
        assert np.abs(np.asarray(t, float).mean((0, 1)) - COLOURS[colour]).max() < 6
    text = "".join(parser.text)
    assert "look how many people <script>alert(1)</script> hate you" in text  # shown as text, not markup
    assert html.escape("<script>") in page
    assert "label flip" in text and "same label" in text
    assert "model wrong (pred 1)" in text and "model right (pred 1)" in text
    assert f"image sim {memes['pairs'][0].image_sim:.3f}" in text


def test_renders_in_headless_chromium(tmp_path, memes):
    exe = _chromium()
    out = tmp_path / "report.html"
    write_html_report(memes["pairs"], out, texts=memes["texts"], labels=memes["labels"],
                      image_paths=memes["image_paths"])
    profile = tmp_path / "profile"
    env = dict(os.environ, HOME=str(tmp_path))
    dom = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120, env=env)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = _Collect()
    parser.feed(dom.stdout)
    assert len(parser.imgs) == 4 and all(a["src"].startswith("data:image/jpeg;base64,") for a in parser.imgs)
    assert "script" not in parser.tags  # the escaped text did not become an element
    text = " ".join(parser.text)
    for t in memes["texts"].values():
        assert t in text
    shot = tmp_path / "shot.png"
    res = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                          "--window-size=1200,900", "--hide-scrollbars", out.as_uri()],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert px.shape[:2] == (900, 1200)
    assert px.std() > 20  # not a blank page
    for name in ("red", "blue", "yellow"):  # the planted thumbnail colours are on screen
        close = (np.abs(px - COLOURS[name]).max(axis=2) < 25).sum()
        assert close > 1000, f"{name} thumbnail not visible in the screenshot ({close} px)"


def test_max_pairs_and_reused_thumbnails(tmp_path, memes):
    out = tmp_path / "one.html"
    assert write_html_report(memes["pairs"], out, texts=memes["texts"], labels=None,
                             image_paths=memes["image_paths"], max_pairs=1) == 2  # one per kind
    parser = _Collect()
    parser.feed(out.read_text())
    assert len(parser.imgs) == 4 and len(parser.images) == 4


def test_an_image_file_in_many_pairs_is_embedded_once(tmp_path, memes):
    """Every side drawn from one file: one ``<image>``, drawn four times, and the page grows by markup only."""
    one = {i: memes["image_paths"]["m3"] for i in memes["texts"]}  # the blue 300x500 photo everywhere
    pages = {}
    for name, paths in (("own", memes["image_paths"]), ("one", one)):
        write_html_report(memes["pairs"], tmp_path / f"{name}.html", texts=memes["texts"], labels=None,
                          image_paths=paths, thumb_px=96)
        pages[name] = (tmp_path / f"{name}.html").read_text()
    parser = _Collect()
    parser.feed(pages["one"])
    assert len(parser.images) == 1 and len(parser.uses) == 4
    assert all(a["src"] == thumbnail_data_uri(one["m1"], 96) for a in parser.imgs)
    assert pages["one"].count("data:image/jpeg;base64,") == 1
    assert len(pages["one"]) < len(pages["own"]) - 2 * len(parser.imgs[0]["src"])


class _Sections(HTMLParser):
    """{section kind: [pair ids shown]} and the page's summary lines, in order."""

    def __init__(self):
        super().__init__()
        self.sections, self.lines, self.hints, self._where, self._ids = {}, [], [], None, False
        self._kind = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._kind = a["data-section"]
            self.sections[self._kind] = []
        self._where = a.get("class") if tag == "div" and a.get("class") in ("meta", "hint") else None
        self._ids = tag == "div" and a.get("class") == "id"

    def handle_data(self, data):
        if self._where and self._kind is None:
            (self.hints if self._where == "hint" else self.lines).append(data)
        if self._ids:
            self.sections[self._kind].append(data)
        self._where, self._ids = None, False


def test_sections_per_kind_with_own_caps_and_one_flip_count(tmp_path):
    """8 samples: 3 same-file pairs (2 flips), 1 look-alike pair, 1 same-text pair (a flip); cap 2 per kind."""
    from featstore.search.confounders import search_confounders, summary_lines

    ids = [f"s{i}" for i in range(8)]
    paths = _images(tmp_path, ids, ["red", "red", "red", "blue", "blue", "green", "yellow", "yellow"], [(64, 64)] * 8)
    rng = np.random.default_rng(4)
    img, txt = rng.standard_normal((8, 32)), rng.standard_normal((8, 32))
    keys = ["r", "r", "r", "b", "b2", "g", "y1", "y2"]
    img[1] = img[2] = img[0]  # s0, s1, s2: one file, three texts: 3 same-image pairs
    img[4] = img[3] + 0.02 * rng.standard_normal(32)  # s3/s4: look-alike files
    txt[7] = txt[6]  # s6/s7: same text on two images
    labels = dict(zip(ids, [0, 1, 0, 1, 1, 0, 0, 1]))
    res = search_confounders(ids, keys, img, txt, [labels[i] for i in ids])
    assert res.summary.found == {"same_image": 3, "similar_image": 1, "same_text": 1}
    assert res.summary.flips == {"same_image": 2, "similar_image": 0, "same_text": 1}
    out = tmp_path / "r.html"
    n = write_html_report(res.pairs, out, texts={i: f"text {i}" for i in ids}, labels=labels, image_paths=paths,
                          max_pairs=2, summary=res.summary)
    assert n == 2 + 1 + 1
    page = _Sections()
    page.feed(out.read_text())
    assert page.sections == {"same_image": ["s0", "s1", "s0", "s2"], "similar_image": ["s3", "s4"],
                             "same_text": ["s6", "s7"]}
    want = summary_lines(res.summary, shown={"same_image": 2, "similar_image": 1, "same_text": 1})
    assert page.lines + page.hints == [w for w in want if not w.startswith("hint:")] + [
        w for w in want if w.startswith("hint:")]
    assert page.lines[0] == "same image file, different text: 3 pairs, 2 with a label flip (showing the first 2)"


def test_report_errors(tmp_path, memes):
    kw = dict(texts=memes["texts"], labels=memes["labels"], image_paths=memes["image_paths"])
    with pytest.raises(FeatstoreError, match=r"texts has no entry for 1 sample id\(s\) of the pairs \(first: 'm2'\)"):
        write_html_report(memes["pairs"], tmp_path / "r.html", **{**kw, "texts": {"m1": "a", "m3": "b", "m4": "c"}})
    missing = dict(memes["image_paths"], m3=str(tmp_path / "gone.png"))
    with pytest.raises(FeatstoreError, match="gone.png' does not exist; check the dataset's image folder"):
        write_html_report(memes["pairs"], tmp_path / "r.html", **{**kw, "image_paths": missing})
    (tmp_path / "broken.png").write_bytes(b"not a png")
    broken = dict(memes["image_paths"], m4=str(tmp_path / "broken.png"))
    with pytest.raises(FeatstoreError, match="broken.png' cannot be read"):
        write_html_report(memes["pairs"], tmp_path / "r.html", **{**kw, "image_paths": broken})
    with pytest.raises(FeatstoreError, match="thumb_px must be an integer between 16 and 1024"):
        write_html_report(memes["pairs"], tmp_path / "r.html", thumb_px=4, **kw)
    with pytest.raises(FeatstoreError, match="max_pairs must be a positive integer"):
        write_html_report(memes["pairs"], tmp_path / "r.html", max_pairs=0, **kw)
    with pytest.raises(FeatstoreError, match="folder .* does not exist"):
        write_html_report(memes["pairs"], tmp_path / "no" / "r.html", **kw)
