"""The published study's tables (a folder the caller names), and ours beside its Table III.

``grid_validation_f1.csv``: Table I, the validation macro-F1 (%) of every grid point, one
column per backbone. ``final_test.csv``: Table III, one row per metric, one column per backbone.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from clothopt.errors import DataError, NotFound
from clothopt.reports.render import format_table
from clothopt.spaces import PAPER_PARAMS

__all__ = [
    "GRID_FILE",
    "GRID_KEYS",
    "TABLE_THREE",
    "TEST_FILE",
    "paper_dir_if_present",
    "paper_table",
    "paper_test_columns",
    "read_paper",
]

GRID_KEYS = PAPER_PARAMS  # the paper's grid, in its order
GRID_FILE = "grid_validation_f1.csv"
TEST_FILE = "final_test.csv"

# Table III: the paper's metric, its label in `clothopt study report`, our Table III column
TABLE_THREE = (
    ("precision_macro_pct", "test macro precision %", "test_precision"),
    ("recall_macro_pct", "test macro recall %", "test_recall"),
    ("f1_macro_pct", "test macro F1 %", "test_f1"),
    ("total_parameters", "total parameters", "total_params"),
    ("final_training_seconds", "final training s", "final_train_seconds"),
    ("search_seconds", "search s", "search_seconds"),
)


def paper_dir_if_present(folder: str | Path, needs: str = TEST_FILE) -> Path | None:
    """``folder`` when it holds the table ``needs``, else None (the CLI passes its default)."""
    found = Path(folder)
    return found if (found / needs).is_file() else None


def read_paper(paper: Path | None, name: str) -> list[dict[str, str]]:
    """The rows of the paper's table ``name`` in folder ``paper`` (none without a folder)."""
    if paper is None:
        return []
    path = Path(paper) / name
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        raise NotFound(f"cannot read the paper's table {path}: no such file") from None
    except OSError as exc:
        raise DataError(f"cannot read the paper's table {path}: {exc.strerror}") from None
    except csv.Error as exc:
        raise DataError(f"cannot read the paper's table {path}: {exc}") from None


def paper_test_columns(paper: Path | None) -> dict[str, dict[str, str]]:
    """Table III by backbone: ``{backbone: {metric: text}}``, in the file's column order."""
    columns: dict[str, dict[str, str]] = {}
    for row in read_paper(paper, TEST_FILE):
        row = dict(row)
        try:
            metric = row.pop("metric")
        except KeyError:
            raise DataError(
                f"cannot read the paper's table {Path(paper or '.') / TEST_FILE}: no metric column"
            ) from None
        for backbone, value in row.items():
            columns.setdefault(backbone, {})[metric] = value
    return columns


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


# how `clothopt study report` writes each of our Table III figures
_OURS = {
    "precision_macro_pct": lambda r: _pct(r["test"]["precision_macro"]),
    "recall_macro_pct": lambda r: _pct(r["test"]["recall_macro"]),
    "f1_macro_pct": lambda r: (
        f"{_pct(r['test']['f1_macro'])} "
        f"[{_pct(r['f1_macro_ci95'][0])}, {_pct(r['f1_macro_ci95'][1])}]"
    ),
    "total_parameters": lambda r: f"{r['total_params']:,}",
    "final_training_seconds": lambda r: f"{r['final_train_seconds']:.1f}",
    "search_seconds": lambda r: f"{r['search_seconds']:.1f}",
}


def paper_table(report: dict[str, Any], paper: Path | None) -> str:
    """Ours (a ``report.json``) beside the paper's Table III, or ours alone without it."""
    ours = f"ours: {report['backbone']}"
    paper_cols = {f"paper: {b}": v for b, v in paper_test_columns(paper).items()}
    rows = []
    for key, label, _ in TABLE_THREE:
        row = {"metric": label, ours: _OURS[key](report)}
        for col, values in paper_cols.items():
            value = values.get(key, "")
            if key == "total_parameters" and value:
                value = f"{int(float(value)):,}"
            row[col] = value
        rows.append(row)
    note = (
        "\nours: 95% bootstrap CI in brackets; seconds on this machine's CPU with cached "
        "features (the paper's: a GPU, the base run every epoch)"
    )
    return format_table(rows) + (note if paper_cols else "")
