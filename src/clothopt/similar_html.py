"""The similar-items HTML page: each query beside its hits, thumbnails inline.

The page inlines the catalogue files an index names, so it is written only from an index
:func:`clothopt.similar_index.load_index` accepted.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clothopt._io import atomic_write_text
from clothopt.data.images import open_regular_file

if TYPE_CHECKING:
    from clothopt.similar import Hit

__all__ = ["write_html"]


def _thumbnail(path: str | os.PathLike[str], size: int) -> str:
    """A data: URI of a JPEG thumbnail, or "" when the file cannot be read."""
    from PIL import Image

    try:
        # never open() a FIFO or a device: the page must not wait for a writer
        with open_regular_file(path) as fh, Image.open(fh) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=80)
    except Exception:  # a catalogue file removed or broken since: show its name only
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(path: str | os.PathLike[str], caption: str, size: int) -> str:
    uri = _thumbnail(path, size)
    img = f'<img src="{uri}" alt="">' if uri else '<div class="missing">unreadable</div>'
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def write_html(
    out: str | os.PathLike[str],
    queries: Sequence[str | os.PathLike[str]],
    results: Sequence[Sequence[Hit]],
    verdicts: Sequence[str | None] | None = None,
    title: str = "Similar items",
    thumb: int = 160,
) -> Path:
    """One self-contained page (thumbnails inline as base64 JPEG): each query, then its hits;
    a query with a verdict (``not clothing (...)``) shows it instead of hits."""
    rows = []
    verdicts = verdicts or [None] * len(queries)
    for q, hits, verdict in zip(queries, results, verdicts, strict=True):
        cells = [_cell(q, f"query: {Path(q).name}", thumb)]
        cells += [_cell(h.path, f"{h.relpath} ({h.score:.3f})", thumb) for h in hits]
        if verdict is not None:
            cells.append(f'<p class="verdict">{html.escape(verdict)}</p>')
        rows.append(f'<div class="row">{"".join(cells)}</div>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.row {{ display: flex; gap: 8px; margin-bottom: 12px; align-items: flex-start; }}
.row figure:first-child {{ border-right: 3px solid #333; padding-right: 8px; }}
figure {{ margin: 0; width: {thumb}px; }}
figure img {{ max-width: {thumb}px; max-height: {thumb}px; display: block; }}
figcaption {{ font-size: 11px; word-break: break-all; }}
.missing {{ width: {thumb}px; height: {thumb}px; background: #eee; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{"".join(rows)}
</body></html>
"""
    out = Path(out)
    atomic_write_text(out, page)
    return out
