"""One self-contained HTML page showing confounder pairs side by side, one section per pair kind.

Thumbnails are embedded as base64 JPEG ``data:`` URIs (PIL, resized to fit ``thumb_px``), each image file
once: an SVG ``<image>`` under the page's one ``<defs>``, drawn at every occurrence by ``<use href="#tN">``
(a Hateful Memes image recurs in many pairs). All text is escaped with ``html.escape``, and the page loads
no external resource (no scripts, fonts or links).
"""
from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

from ..errors import FeatstoreError
from .confounders import (KIND_TITLES, KINDS, ConfounderPair, ConfounderSummary, count_lines, kind_counts,
                          label_flip, overlay_predictions, summary_lines, unlabelled_counts)

CSS = """
body{font-family:system-ui,sans-serif;margin:16px;background:#f6f7f9;color:#222}
h1{font-size:20px;margin:0 0 4px}
.meta{color:#555;font-size:13px;margin-bottom:6px}
.hint{color:#8a4b00;background:#fff4e0;border-left:3px solid #ef6c00;font-size:13px;padding:2px 6px;margin:4px 0}
h2{font-size:17px;margin:22px 0 2px}.empty{color:#777;font-size:13px}
.pair{display:flex;gap:12px;align-items:stretch;background:#fff;border:1px solid #ddd;border-radius:6px;
padding:10px;margin:10px 0}
.head{width:150px;font-size:12px;color:#444}
.head .rank{font-size:16px;font-weight:600;color:#222}
.side{flex:1;display:flex;gap:10px;align-items:flex-start}
.side svg{border-radius:4px;border:1px solid #ccc;flex:none}
.text{font-size:14px;white-space:pre-wrap;word-break:break-word}
.id{font-size:11px;color:#777}
.badge{display:inline-block;border-radius:3px;padding:1px 6px;font-size:11px;margin:2px 2px 0 0;color:#fff}
.kind{background:#546e7a}.flip{background:#c62828}.same{background:#9e9e9e}
.wrong{background:#ef6c00}.right{background:#2e7d32}.label{background:#3949ab}
"""


def thumbnail_data_uri(path: str, thumb_px: int = 160, quality: int = 85) -> str:
    """``data:image/jpeg;base64,...`` of the image at ``path`` resized to fit ``thumb_px`` x ``thumb_px``."""
    return thumbnail(path, thumb_px, quality)[0]


def thumbnail(path: str, thumb_px: int = 160, quality: int = 85) -> Tuple[str, int, int]:
    """``(data URI, width, height)`` of the image at ``path`` resized to fit ``thumb_px`` x ``thumb_px``."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((thumb_px, thumb_px), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
    except FileNotFoundError:
        raise FeatstoreError(f"image {path!r} does not exist; check the dataset's image folder") from None
    except (UnidentifiedImageError, OSError) as err:
        raise FeatstoreError(f"image {path!r} cannot be read ({type(err).__name__}); replace or drop it") from None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), im.width, im.height


class _Thumbnails:
    """Each image file read and encoded once: ``use(path, alt)`` is the markup drawing it (an ``<svg>``
    with ``<use href="#tN">``), ``defs()`` the hidden ``<svg><defs>`` holding every ``<image id="tN">``."""

    def __init__(self, thumb_px: int):
        self.thumb_px, self.images = thumb_px, {}

    def use(self, path: str, alt: str) -> str:
        if path not in self.images:
            self.images[path] = (f"t{len(self.images)}", *thumbnail(path, self.thumb_px))
        ident, _, w, h = self.images[path]
        alt = html.escape(alt, quote=True)
        return (f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{alt}">'
                f'<title>{alt}</title><use href="#{ident}"/></svg>')

    def defs(self) -> str:
        images = "".join(f'<image id="{ident}" width="{w}" height="{h}" href="{uri}"/>'
                         for ident, uri, w, h in self.images.values())
        return ('<svg width="0" height="0" style="position:absolute" aria-hidden="true">'
                f"<defs>{images}</defs></svg>")


def _badge(cls: str, text: str) -> str:
    return f'<span class="badge {cls}">{html.escape(text)}</span>'


def _side(pid: str, text: str, label: Any, thumb: str, wrong: Optional[bool], pred: Any) -> str:
    badges = []
    if label is not None:
        badges.append(_badge("label", f"label {label}"))
    if wrong is True:
        badges.append(_badge("wrong", f"model wrong (pred {pred})"))
    elif wrong is False:
        badges.append(_badge("right", f"model right (pred {pred})"))
    return (
        f'<div class="side">{thumb}'
        f'<div><div class="id">{html.escape(pid)}</div><div class="text">{html.escape(text)}</div>'
        f'<div>{"".join(badges)}</div></div></div>'
    )


def check_page_args(thumb_px, max_pairs, max_pairs_name: str = "max_pairs") -> None:
    """The page options, checked before any search or file (``max_pairs_name`` names the option in the error)."""
    if isinstance(thumb_px, bool) or not isinstance(thumb_px, int) or not 16 <= thumb_px <= 1024:
        raise FeatstoreError(f"thumb_px must be an integer between 16 and 1024, got {thumb_px!r}")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise FeatstoreError(f"{max_pairs_name} must be a positive integer, got {max_pairs!r}")


def _check_args(thumb_px, max_pairs, out_html) -> str:
    check_page_args(thumb_px, max_pairs)
    out_html = os.fspath(out_html)
    parent = os.path.dirname(os.path.abspath(out_html))
    if not os.path.isdir(parent):
        raise FeatstoreError(f"cannot write {out_html!r}: folder {parent!r} does not exist; create it first")
    return out_html


def _check_covered(what: str, mapping: Mapping[str, Any], pairs: Sequence[ConfounderPair]) -> None:
    missing = sorted({i for p in pairs for i in (p.id_a, p.id_b) if i not in mapping})
    if missing:
        raise FeatstoreError(f"{what} has no entry for {len(missing)} sample id(s) of the pairs (first: "
                             f"{', '.join(map(repr, missing[:5]))}); pass a mapping covering every sample")


def _pair_block(rank: int, p: ConfounderPair, texts: Mapping[str, str], thumb) -> str:
    badges = [_badge("kind", p.kind.replace("_", " "))]
    if p.label_flip:
        badges.append(_badge("flip", "label flip"))
    elif p.label_flip is False:
        badges.append(_badge("same", "same label"))
    if p.same_image_key:
        badges.append(_badge("same", "same image file"))
    return (
        f'<div class="pair" data-kind="{p.kind}">'
        f'<div class="head"><div class="rank">#{rank}</div>'
        f"image sim {p.image_sim:.3f}<br>text sim {p.text_sim:.3f}<br>score {p.score:.3f}<br>"
        f'{"".join(badges)}</div>'
        + _side(p.id_a, str(texts[p.id_a]), p.label_a, thumb(p.id_a), p.wrong_a, p.pred_a)
        + _side(p.id_b, str(texts[p.id_b]), p.label_b, thumb(p.id_b), p.wrong_b, p.pred_b)
        + "</div>"
    )


def _section(kind: str, shown: Sequence[ConfounderPair], line: str, texts, thumb) -> str:
    body = "\n".join(_pair_block(r, p, texts, thumb) for r, p in enumerate(shown, start=1)) or \
        '<p class="empty">none found</p>'
    return (f'<section data-section="{kind}"><h2>{html.escape(KIND_TITLES[kind].capitalize())}</h2>'
            f'<div class="meta">{html.escape(line)}</div>{body}</section>')


def write_html_report(pairs: Sequence[ConfounderPair], out_html, *, texts: Mapping[str, str],
                      labels: Optional[Mapping[str, Any]], image_paths: Mapping[str, str],
                      predictions: Optional[Mapping[str, Any]] = None, thumb_px: int = 160,
                      max_pairs: int = 500, title: str = "Confounder pairs",
                      summary: Optional[ConfounderSummary] = None) -> int:
    """Write one section per pair kind (``KINDS``), each showing its first ``max_pairs`` pairs, to
    ``out_html``; returns how many pairs were written.

    The top of the page holds the same lines the CLI prints (``summary_lines``: pairs and label flips per
    kind over every pair, the flip definition, thresholds and hints when ``summary`` is given).
    ``texts``/``image_paths`` map every sample id of the shown pairs to its text and image file;
    ``labels`` (id -> true label or None for an unlabelled sample, covering every pair, or None to use the
    labels stored in the pairs) drives the label-flip badges and counts (a pair with an unlabelled side has
    neither badge); ``predictions`` (as for ``overlay_predictions``) adds model right/wrong badges. The page
    is built whole (every thumbnail read) before anything is written, then written under a temporary name and
    renamed: a failure leaves no file.
    """
    from .outputs import AtomicOutputs

    out_html = _check_args(thumb_px, max_pairs, out_html)
    page, n = render_html_report(pairs, texts=texts, labels=labels, image_paths=image_paths,
                                 predictions=predictions, thumb_px=thumb_px, max_pairs=max_pairs, title=title,
                                 summary=summary)
    with AtomicOutputs() as out:
        with open(out.path(out_html), "w", encoding="utf-8") as fh:
            fh.write(page)
    return n


def render_html_report(pairs: Sequence[ConfounderPair], *, texts: Mapping[str, str],
                       labels: Optional[Mapping[str, Any]], image_paths: Mapping[str, str],
                       predictions: Optional[Mapping[str, Any]] = None, thumb_px: int = 160,
                       max_pairs: int = 500, title: str = "Confounder pairs",
                       summary: Optional[ConfounderSummary] = None) -> Tuple[str, int]:
    """``(page, pairs shown)``: the page ``write_html_report`` writes (same arguments, no file)."""
    check_page_args(thumb_px, max_pairs)
    pairs = list(pairs)
    if labels is not None:
        _check_covered("labels", labels, pairs)
        pairs = [replace(p, label_a=labels[p.id_a], label_b=labels[p.id_b],
                         label_flip=label_flip(labels[p.id_a], labels[p.id_b])) for p in pairs]
    shown = {k: [p for p in pairs if p.kind == k][:max_pairs] for k in KINDS}
    for what, mapping in (("texts", texts), ("image_paths", image_paths)):
        _check_covered(what, mapping, [p for k in KINDS for p in shown[k]])
    if predictions is not None:
        shown = {k: overlay_predictions(v, predictions) for k, v in shown.items()}
    found, flips = kind_counts(pairs, labelled=True if labels is not None else None)
    n_shown = {k: len(v) for k, v in shown.items()}
    unlabelled = unlabelled_counts(pairs) if flips[KINDS[0]] is not None else None
    lines = (summary_lines(replace(summary, found=found, flips=flips, unlabelled=unlabelled), n_shown)
             if summary is not None else count_lines(found, flips, n_shown, unlabelled))
    thumbs = _Thumbnails(thumb_px)

    def thumb(pid: str) -> str:
        return thumbs.use(os.fspath(image_paths[pid]), pid)

    sections = [_section(k, shown[k], lines[i], texts, thumb) for i, k in enumerate(KINDS)]
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"{thumbs.defs()}<h1>{html.escape(title)}</h1>"
        + "".join(f'<div class="{"hint" if ln.startswith("hint:") else "meta"}">{html.escape(ln)}</div>'
                  for ln in lines)
        + "\n".join(sections)
        + "</body></html>\n"
    )
    return page, sum(n_shown.values())
