"""The one table renderer: text, Markdown, HTML and CSV of the same rows hold the same cells."""

from __future__ import annotations

import csv
import html
import io
import re
from typing import Any

import pytest

from clothopt.reports.render import render_table

COLUMNS = ["name", "count", "f1", "learning_rate", "p_value", "missing"]
ROWS: list[dict[str, Any]] = [
    {"name": "a|b & <c>", "count": 3, "f1": 91.23456, "learning_rate": 1e-4, "p_value": 3.2e-7},
    {"name": "plain", "count": 12, "f1": 0.0, "learning_rate": 0.01, "p_value": 0.5, "x": 1},
]
DIGITS = {"f1": 3}


def _text(out: str) -> list[list[str]]:
    lines = out.splitlines()
    # column starts from the dashes line: cells are left-aligned, two spaces apart
    starts = [m.start() for m in re.finditer(r"-+", lines[1])]
    ends = [*starts[1:], None]
    return [
        [line[s:e].strip() for s, e in zip(starts, ends, strict=True)]
        for line in [lines[0], *lines[2:]]
    ]


def _markdown(out: str) -> list[list[str]]:
    lines = out.splitlines()
    assert set(lines[1]) <= {"|", "-"}
    rows = [re.split(r"(?<!\\)\|", line.strip()[1:-1]) for line in [lines[0], *lines[2:]]]
    return [[c.strip().replace("\\|", "|").strip("*") for c in r] for r in rows]


def _html(out: str) -> list[list[str]]:
    head = re.findall(r"<th>(.*?)</th>", out)
    body = [re.findall(r"<td>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", out)[1:]]
    return [
        [html.unescape(c.replace("<b>", "").replace("</b>", "")) for c in r] for r in [head, *body]
    ]


def _csv(out: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(out)))


def _same(value: Any, text: str, places: float) -> bool:
    if value is None:
        return text in ("-", "")
    if isinstance(value, float):
        return float(text) == pytest.approx(value, rel=1e-2, abs=places)
    return text == str(value)


def test_every_format_holds_the_same_cells() -> None:
    grids = {
        fmt: parse(render_table(ROWS, COLUMNS, fmt, DIGITS))
        for fmt, parse in (("text", _text), ("markdown", _markdown), ("html", _html), ("csv", _csv))
    }
    places = {"text": 5e-5, "markdown": 5e-3, "html": 5e-3, "csv": 5e-6}
    for fmt, grid in grids.items():
        assert grid[0] == COLUMNS, fmt  # the header; "x" is not a column
        assert len(grid) == 1 + len(ROWS), fmt
        for row, cells in zip(ROWS, grid[1:], strict=True):
            for col, text in zip(COLUMNS, cells, strict=True):
                assert _same(row.get(col), text, places[fmt]), (fmt, col, text)
    # digits apply to Markdown and HTML; a learning rate is written as is
    assert grids["markdown"][1][2] == grids["html"][1][2] == "91.235"
    assert grids["markdown"][1][3] == grids["html"][1][3] == "0.0001"
    assert grids["csv"][1][5] == "" and grids["text"][1][5] == "-"


def test_bold_marks_markdown_and_html_only_and_no_rows_say_so() -> None:
    best = lambda row, col: col == "count" and row["count"] == 12  # noqa: E731
    assert "| **12** |" in render_table(ROWS, COLUMNS, "markdown", bold=best)
    assert "<td><b>12</b></td>" in render_table(ROWS, COLUMNS, "html", bold=best)
    assert "**" not in render_table(ROWS, COLUMNS, "text")
    assert render_table([], COLUMNS, "text") == "(none)"
    assert render_table([], COLUMNS, "markdown") == "(none)"
    assert render_table([], COLUMNS, "html") == "<p>(none)</p>"
    assert render_table([], COLUMNS, "csv") == ",".join(COLUMNS) + "\n"


def test_text_columns_default_to_the_first_rows_keys() -> None:
    out = render_table([{"b": 1, "a": None}, {"a": 2.5}])
    assert out.splitlines() == ["b  a     ", "-  ------", "1  -     ", "-  2.5000"]
