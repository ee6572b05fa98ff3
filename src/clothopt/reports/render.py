"""The one table renderer: the same rows, columns and digits as text, Markdown, HTML or CSV.

Rows are mappings from column name to value. Each format writes a cell its own way, on
purpose: the terminal's text table shows floats with 4 decimals (``format_table``); Markdown
and HTML with ``digits`` per column (default 2), learning rates as written and booleans as
yes/no; CSV with full precision (6 significant digits) and an empty cell for a missing value.
Also here: the self-contained HTML page and the files a report writes.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from clothopt._io import atomic_write_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "Report",
    "cell",
    "csv_text",
    "figure_html",
    "format_table",
    "html_page",
    "html_table",
    "markdown_table",
    "render_table",
    "text_to_html",
    "write_csv",
    "write_outputs",
]

Format = Literal["text", "markdown", "html", "csv"]
Rows = Sequence[Mapping[str, Any]]
Bold = Callable[[Mapping[str, Any], str], bool]


@dataclass
class Report:
    """What a report builder made: its Markdown and the files it wrote."""

    markdown: str
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things a user should know (skips, gaps)


# --------------------------------------------------------------------------- cells


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text_cell(value: Any) -> str:
    # the terminal's: 4 decimals, or as written when smaller than 0.001 (learning rates)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:g}"
    return str(value)


def _page_cell(value: Any, col: str, digits: int) -> str:
    # Markdown's and HTML's: ``digits`` decimals; learning rates as written (1e-04)
    if isinstance(value, float) and col == "learning_rate":
        return f"{value:g}"
    if _missing(value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2g}"  # small p-values and learning rates keep their digits
        return f"{value:.{digits}f}"
    return str(value)


def _csv_cell(value: Any) -> str:
    # full precision for a program reading it; a missing value is an empty cell
    if _missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e-3 and value else f"{value:.6f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def cell(value: Any, col: str, fmt: Format, digits: Mapping[str, int] | None = None) -> str:
    """One cell as ``fmt`` writes it (before any escaping)."""
    if fmt == "text":
        return _text_cell(value)
    if fmt == "csv":
        return _csv_cell(value)
    return _page_cell(value, col, (digits or {}).get(col, 2))


# --------------------------------------------------------------------------- tables


def render_table(
    rows: Rows,
    columns: Sequence[str] | None = None,
    fmt: Format = "text",
    digits: Mapping[str, int] | None = None,
    bold: Bold | None = None,
) -> str:
    """``rows`` as a ``fmt`` table; ``columns`` default to the first row's keys.

    ``digits`` (decimals per column) applies to Markdown and HTML; ``bold(row, column)`` marks
    cells there (e.g. a column's best). No rows: ``(none)`` (HTML: in a paragraph; CSV: the
    header alone).
    """
    columns = list(columns or (rows[0].keys() if rows else []))
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([cell(r.get(c), c, fmt) for c in columns] for r in rows)
        return buf.getvalue()
    if not rows:
        return "<p>(none)</p>" if fmt == "html" else "(none)"
    cells = [[cell(r.get(c), c, fmt, digits) for c in columns] for r in rows]
    if fmt == "text":
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)
    marked = [[bold is not None and bold(r, c) for c in columns] for r in rows]
    if fmt == "markdown":
        body = [
            [
                f"**{v}**" if b else v
                for v, b in zip((v.replace("|", "\\|") for v in row), m, strict=True)
            ]
            for row, m in zip(cells, marked, strict=True)
        ]
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    trs = []
    for row, m in zip(cells, marked, strict=True):
        tds = [html.escape(v) for v in row]
        tds = [
            f"<td><b>{v}</b></td>" if b else f"<td>{v}</td>" for v, b in zip(tds, m, strict=True)
        ]
        trs.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(trs)}</tbody></table>"


def format_table(rows: Rows, columns: Sequence[str] | None = None) -> str:
    """A plain aligned text table for the terminal."""
    return render_table(rows, columns, "text")


def markdown_table(
    rows: Rows,
    columns: Sequence[str],
    digits: Mapping[str, int] | None = None,
    bold: Bold | None = None,
) -> str:
    """A GitHub-flavoured pipe table; ``bold(row, column)`` marks cells (e.g. a column's best)."""
    return render_table(rows, columns, "markdown", digits, bold)


def html_table(
    rows: Rows,
    columns: Sequence[str],
    digits: Mapping[str, int] | None = None,
    bold: Bold | None = None,
) -> str:
    """An HTML ``<table>``, cells as Markdown writes them."""
    return render_table(rows, columns, "html", digits, bold)


def csv_text(rows: Rows, columns: Sequence[str]) -> str:
    """CSV with full precision (floats to 6 digits); empty cell for a missing value."""
    return render_table(rows, columns, "csv")


def write_csv(path: Path, rows: Rows, columns: Sequence[str]) -> Path:
    """``csv_text`` written atomically to ``path``; returns ``path``."""
    atomic_write_text(path, csv_text(rows, columns))
    return path


# --------------------------------------------------------------------------- pages


def figure_html(fig: go.Figure) -> str:
    """A plotly figure as an HTML block, without plotly.js (``html_page`` embeds it once)."""
    import plotly.io as pio

    return pio.to_html(fig, full_html=False, include_plotlyjs=False, default_height=480)


def html_page(title: str, blocks: Sequence[str]) -> str:
    """One self-contained page: plotly.js inlined once in the head, then ``blocks`` (HTML)."""
    from plotly.offline import get_plotlyjs

    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f4f4f4}pre{background:#f8f8f8;padding:1em;overflow-x:auto}"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{style}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head><body>\n'
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(blocks) + "\n</body></html>\n"
    )


def text_to_html(text: str) -> str:
    """A paragraph of plain text (Markdown source shown as is) for an HTML page."""
    return "<p>" + html.escape(text).replace("\n", "<br>") + "</p>"


def write_outputs(
    out: Path, markdown: str, html_text: str, tables: Mapping[str, tuple[list[Any], list[str]]]
) -> list[Path]:
    """``<name>.csv`` per table, ``report.md`` and ``report.html`` in ``out``; their paths."""
    files = [write_csv(out / f"{name}.csv", rows, cols) for name, (rows, cols) in tables.items()]
    atomic_write_text(out / "report.md", markdown + "\n")
    atomic_write_text(out / "report.html", html_text)
    return [*files, out / "report.md", out / "report.html"]
