"""One self-contained HTML page showing confounder pairs side by side.

Thumbnails are embedded as base64 JPEG ``data:`` URIs (PIL, resized to fit ``thumb_px``), all text is
escaped with ``html.escape``, and the page loads no external resource (no scripts, fonts or links).
"""
from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import replace
from typing import Any, Dict, Mapping, Optional, Sequence

from PIL import Image, UnidentifiedImageError

from ..errors import FeatstoreError
from .confounders import ConfounderPair, overlay_predictions

CSS = """
body{font-family:system-ui,sans-serif;margin:16px;background:#f6f7f9;color:#222}
h1{font-size:20px;margin:0 0 4px}
.meta{color:#555;font-size:13px;margin-bottom:12px}
.pair{display:flex;gap:12px;align-items:stretch;background:#fff;border:1px solid #ddd;border-radius:6px;
padding:10px;margin:10px 0}
.head{width:150px;font-size:12px;color:#444}
.head .rank{font-size:16px;font-weight:600;color:#222}
.side{flex:1;display:flex;gap:10px;align-items:flex-start}
.side img{border-radius:4px;border:1px solid #ccc}
.text{font-size:14px;white-space:pre-wrap;word-break:break-word}
.id{font-size:11px;color:#777}
.badge{display:inline-block;border-radius:3px;padding:1px 6px;font-size:11px;margin:2px 2px 0 0;color:#fff}
.kind{background:#546e7a}.flip{background:#c62828}.same{background:#9e9e9e}
.wrong{background:#ef6c00}.right{background:#2e7d32}.label{background:#3949ab}
"""


def thumbnail_data_uri(path: str, thumb_px: int = 160, quality: int = 85) -> str:
    """``data:image/jpeg;base64,...`` of the image at ``path`` resized to fit ``thumb_px`` x ``thumb_px``."""
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
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _badge(cls: str, text: str) -> str:
    return f'<span class="badge {cls}">{html.escape(text)}</span>'


def _side(pid: str, text: str, label: Any, uri: str, wrong: Optional[bool], pred: Any) -> str:
    badges = []
    if label is not None:
        badges.append(_badge("label", f"label {label}"))
    if wrong is True:
        badges.append(_badge("wrong", f"model wrong (pred {pred})"))
    elif wrong is False:
        badges.append(_badge("right", f"model right (pred {pred})"))
    return (
        '<div class="side">'
        f'<img src="{uri}" alt="{html.escape(pid, quote=True)}">'
        f'<div><div class="id">{html.escape(pid)}</div><div class="text">{html.escape(text)}</div>'
        f'<div>{"".join(badges)}</div></div></div>'
    )


def write_html_report(pairs: Sequence[ConfounderPair], out_html, *, texts: Mapping[str, str],
                      labels: Optional[Mapping[str, Any]], image_paths: Mapping[str, str],
                      predictions: Optional[Mapping[str, Any]] = None, thumb_px: int = 160,
                      max_pairs: int = 500, title: str = "Confounder pairs") -> int:
    """Write the first ``max_pairs`` of ``pairs`` to ``out_html``; returns how many were written.

    ``texts``/``image_paths`` map every sample id of those pairs to its text and image file;
    ``labels`` (id -> true label, or None to use the labels stored in the pairs) drives the label-flip
    badge; ``predictions`` (as for ``overlay_predictions``) adds model right/wrong badges.
    """
    if isinstance(thumb_px, bool) or not isinstance(thumb_px, int) or not 16 <= thumb_px <= 1024:
        raise FeatstoreError(f"thumb_px must be an integer between 16 and 1024, got {thumb_px!r}")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise FeatstoreError(f"max_pairs must be a positive integer, got {max_pairs!r}")
    out_html = os.fspath(out_html)
    parent = os.path.dirname(os.path.abspath(out_html))
    if not os.path.isdir(parent):
        raise FeatstoreError(f"cannot write {out_html!r}: folder {parent!r} does not exist; create it first")
    shown = list(pairs)[:max_pairs]
    ids = [i for p in shown for i in (p.id_a, p.id_b)]
    for what, mapping in (("texts", texts), ("image_paths", image_paths)) + (
            (("labels", labels),) if labels is not None else ()):
        missing = sorted({i for i in ids if i not in mapping})
        if missing:
            raise FeatstoreError(
                f"{what} has no entry for {len(missing)} sample id(s) of the pairs (first: "
                f"{', '.join(map(repr, missing[:5]))}); pass a mapping covering every sample"
            )
    if labels is not None:
        shown = [replace(p, label_a=labels[p.id_a], label_b=labels[p.id_b],
                         label_flip=bool(labels[p.id_a] != labels[p.id_b])) for p in shown]
    if predictions is not None:
        shown = overlay_predictions(shown, predictions)

    thumbs: Dict[str, str] = {}

    def uri(pid: str) -> str:
        path = os.fspath(image_paths[pid])
        if path not in thumbs:
            thumbs[path] = thumbnail_data_uri(path, thumb_px)
        return thumbs[path]

    n_flip = sum(1 for p in shown if p.label_flip)
    blocks = []
    for rank, p in enumerate(shown, start=1):
        badges = [_badge("kind", p.kind.replace("_", " "))]
        if p.label_flip:
            badges.append(_badge("flip", "label flip"))
        elif p.label_flip is False:
            badges.append(_badge("same", "same label"))
        if p.same_image_key:
            badges.append(_badge("same", "same image file"))
        blocks.append(
            f'<div class="pair" data-kind="{p.kind}">'
            f'<div class="head"><div class="rank">#{rank}</div>'
            f"image sim {p.image_sim:.3f}<br>text sim {p.text_sim:.3f}<br>score {p.score:.3f}<br>"
            f'{"".join(badges)}</div>'
            + _side(p.id_a, str(texts[p.id_a]), p.label_a, uri(p.id_a), p.wrong_a, p.pred_a)
            + _side(p.id_b, str(texts[p.id_b]), p.label_b, uri(p.id_b), p.wrong_b, p.pred_b)
            + "</div>"
        )
    more = f" (showing the first {len(shown)} of {len(pairs)})" if len(pairs) > len(shown) else ""
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<div class="meta">{len(pairs)} pairs{more}; {n_flip} with a label flip</div>'
        + "\n".join(blocks)
        + "</body></html>\n"
    )
    with open(out_html, "w", encoding="utf-8") as fh:
        fh.write(page)
    return len(shown)
