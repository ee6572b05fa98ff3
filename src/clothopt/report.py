"""Reports that compare studies: which backbone to ship, and which sampler to search with.

Backbones (``backbone_report``): the paper's Table I (validation macro-F1 of every grid point,
one column per study) and Table III (test figures of each finalized study), plus what the paper
lacked: each test macro-F1's 95% bootstrap interval (from the study's ``report.json``), a
McNemar test for every pair of backbones on their test predictions, and per-class F1.

Samplers (``sampler_report``): per sampler, the best validation macro-F1 after each trial (mean
and spread over seeds), the trials and seconds until it first comes within 0.5 points of the
grid's best, and its final best.

Both write Markdown, CSV files and one self-contained HTML page (plotly.js embedded once, so it
opens offline). Numbers in the tables are percentages (F1 x 100), as in the paper.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt._io import atomic_write_json, atomic_write_text
from clothopt.errors import UserError

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go
    from optuna.trial import FrozenTrial

    from clothopt.config import StudyConfig

__all__ = [
    "FINAL_ATTR",
    "GRID_KEYS",
    "TOLERANCE",
    "BackboneStudy",
    "Report",
    "SamplerRun",
    "backbone_report",
    "best_so_far",
    "first_within",
    "holm",
    "html_page",
    "load_backbone_studies",
    "load_sampler_runs",
    "markdown_table",
    "mcnemar_pairs",
    "sampler_report",
    "step_curve_mean",
    "write_csv",
]

FINAL_ATTR = "clothopt:final"  # study user attr written by ``clothopt study finalize``
GRID_KEYS = ("image_size", "batch_size", "learning_rate")
TOLERANCE = 0.005  # "within 0.5 points" of the grid's best, on the 0-1 F1 scale
ALPHA = 0.05


@dataclass
class Report:
    """What a report builder made: its Markdown and the files it wrote."""

    markdown: str
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things a user should know (skips, gaps)


# --------------------------------------------------------------------------- output helpers


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * float(value)


def _cell(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2g}"  # small p-values and learning rates keep their digits
        return f"{value:.{digits}f}"
    return str(value)


def _cell_text(row: Mapping[str, Any], col: str, digits: Mapping[str, int]) -> str:
    """One table cell as text: learning rates as written (1e-04), others by ``_cell``."""
    value = row.get(col)
    if isinstance(value, float) and col == "learning_rate":
        return f"{value:g}"
    return _cell(value, digits.get(col, 2))


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    digits: Mapping[str, int] | None = None,
    bold: Callable[[Mapping[str, Any], str], bool] | None = None,
) -> str:
    """A GitHub-flavoured pipe table; ``bold(row, column)`` marks cells (e.g. a column's best)."""
    if not rows:
        return "(none)"
    digits = digits or {}

    def text(row: Mapping[str, Any], col: str) -> str:
        out = _cell_text(row, col, digits).replace("|", "\\|")
        return f"**{out}**" if bold is not None and bold(row, col) else out

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(text(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """CSV with full precision (floats rounded to 6 digits); empty cell for a missing value."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("")
            elif isinstance(value, float):
                cells.append(f"{value:.6g}" if abs(value) < 1e-3 and value else f"{value:.6f}")
            elif isinstance(value, (list, dict)):
                cells.append(json.dumps(value))
            else:
                cells.append(str(value))
        writer.writerow(cells)
    atomic_write_text(path, buf.getvalue())
    return path


def html_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    digits: Mapping[str, int] | None = None,
    bold: Callable[[Mapping[str, Any], str], bool] | None = None,
) -> str:
    if not rows:
        return "<p>(none)</p>"
    digits = digits or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for col in columns:
            text = html.escape(_cell_text(row, col, digits))
            if bold is not None and bold(row, col):
                text = f"<b>{text}</b>"
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure_html(fig: go.Figure) -> str:
    import plotly.io as pio

    # plotly.js itself is embedded once by html_page; each figure only carries its data
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


def _markdown_to_html(text: str) -> str:
    return "<p>" + html.escape(text).replace("\n", "<br>") + "</p>"


def _write_outputs(
    out: Path, markdown: str, html_text: str, tables: Mapping[str, tuple[list[Any], list[str]]]
) -> list[Path]:
    files = [write_csv(out / f"{name}.csv", rows, cols) for name, (rows, cols) in tables.items()]
    atomic_write_text(out / "report.md", markdown + "\n")
    atomic_write_text(out / "report.html", html_text)
    return [*files, out / "report.md", out / "report.html"]


# --------------------------------------------------------------------------- statistics


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: controls the family-wise error over all pairs compared."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def best_so_far(values: Sequence[float]) -> np.ndarray:
    """The best value after each trial."""
    return np.maximum.accumulate(np.asarray(values, dtype=float)) if len(values) else np.zeros(0)


def first_within(best: Sequence[float], target: float, tolerance: float = TOLERANCE) -> int | None:
    """1-based index of the first trial whose best-so-far is within ``tolerance`` of ``target``."""
    hits = np.flatnonzero(np.asarray(best, dtype=float) >= target - tolerance - 1e-12)
    return int(hits[0]) + 1 if len(hits) else None


def step_curve_mean(
    curves: Sequence[tuple[Sequence[float], Sequence[float]]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over several step curves (times, best-so-far) on their joint times.

    A curve's value at time t is its best after the last trial finished by t; the aggregate
    starts once every curve has a value (before, some seed has not finished a trial).
    """
    if not curves:
        return (np.zeros(0),) * 4
    times = np.unique(np.concatenate([np.asarray(t, dtype=float) for t, _ in curves]))
    start = max(float(np.asarray(t)[0]) for t, _ in curves)
    times = times[times >= start]
    values = np.empty((len(curves), len(times)))
    for i, (t, b) in enumerate(curves):
        idx = np.searchsorted(np.asarray(t, dtype=float), times, side="right") - 1
        values[i] = np.asarray(b, dtype=float)[idx]
    return times, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


# --------------------------------------------------------------------------- backbones


@dataclass
class BackboneStudy:
    """One study as the backbone report sees it."""

    name: str
    label: str  # column name: the backbone, or the study name when two share a backbone
    config: StudyConfig
    grid: dict[tuple[Any, ...], float]  # validation macro-F1 per evaluated point (mean of repeats)
    best_value: float | None
    best_params: dict[str, Any] | None
    search_seconds: float  # sum over trials of extraction + head training (validation search)
    final: dict[str, Any] | None  # the finalized study's report.json
    final_dir: Path | None = None


def _read_final(
    st: optuna.Study, name: str, storage: str | None
) -> tuple[dict | None, Path | None]:
    from clothopt.paths import study_dir

    attr = st.user_attrs.get(FINAL_ATTR)
    if not attr:
        return None, None
    folder = Path(attr["dir"]).expanduser()
    if not folder.is_absolute() and not folder.is_dir():
        folder = study_dir(storage, name) / folder
    path = folder / "report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"study {name!r} is finalized but its report {path} cannot be read ({exc}); "
            f"finalize it again"
        ) from None
    missing = {"test", "test_labels", "test_predictions", "classes"} - set(report)
    if missing:
        raise UserError(f"{path} lacks {', '.join(sorted(missing))}: finalize {name} again")
    return report, folder


def load_backbone_studies(names: Sequence[str], storage: str | None) -> list[BackboneStudy]:
    from optuna.trial import TrialState

    from clothopt import study as study_mod

    if not names:
        raise UserError("name at least one study to compare")
    if len(set(names)) != len(names):
        raise UserError("a study is named twice")
    loaded = [(n, *study_mod.load(n, storage)) for n in names]
    backbones = [cfg.backbone for _, _, cfg in loaded]
    out = []
    for name, st, cfg in loaded:
        trials = st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        sums: dict[tuple[Any, ...], list[float]] = {}
        for t in trials:
            if t.value is not None:
                sums.setdefault(tuple(t.params[k] for k in GRID_KEYS), []).append(t.value)
        best = max(trials, key=lambda t: (t.value or 0.0, -t.number), default=None)
        final, folder = _read_final(st, name, storage)
        out.append(
            BackboneStudy(
                name=name,
                label=cfg.backbone if backbones.count(cfg.backbone) == 1 else name,
                config=cfg,
                grid={k: float(np.mean(v)) for k, v in sums.items()},
                best_value=None if best is None else best.value,
                best_params=None if best is None else dict(best.params),
                search_seconds=sum(
                    float(t.user_attrs.get("extract_seconds", 0.0))
                    + float(t.user_attrs.get("train_seconds", 0.0))
                    for t in trials
                ),
                final=final,
                final_dir=folder,
            )
        )
    return out


def _read_paper(paper: Path | None, name: str) -> list[dict[str, str]]:
    if paper is None:
        return []
    path = paper / name
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise UserError(f"cannot read the paper's table {path}: {exc.strerror}") from None


def table_one(
    studies: Sequence[BackboneStudy], paper: Path | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Validation macro-F1 (%) per grid point: one column per study, then the paper's columns."""
    points: set[tuple[Any, ...]] = set()
    for s in studies:
        if s.config.space.is_grid:
            points |= {tuple(p[k] for k in GRID_KEYS) for p in s.config.space.grid()}
        points |= set(s.grid)
    paper_rows = _read_paper(paper, "grid_validation_f1.csv")
    paper_cols = [c for c in (paper_rows[0] if paper_rows else {}) if c not in GRID_KEYS]
    paper_at: dict[tuple[Any, ...], dict[str, str]] = {}
    for r in paper_rows:
        key = (int(r["image_size"]), int(r["batch_size"]), float(r["learning_rate"]))
        paper_at[key] = r
        points.add(key)
    rows = []
    # the paper's order: image size, then batch size, then learning rate from large to small
    for key in sorted(points, key=lambda k: (k[0], k[1], -k[2])):
        row: dict[str, Any] = dict(zip(GRID_KEYS, key, strict=True))
        for s in studies:
            row[s.label] = _pct(s.grid.get(key))
        for c in paper_cols:
            value = paper_at.get(key, {}).get(c)
            row[f"paper {c}"] = float(value) if value not in (None, "") else None
        rows.append(row)
    return rows, [*GRID_KEYS, *(s.label for s in studies), *(f"paper {c}" for c in paper_cols)]


def _column_best(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, float]:
    best = {}
    for c in columns:
        values = [r[c] for r in rows if r.get(c) is not None]
        if values:
            best[c] = max(values)
    return best


_T3_COLUMNS = [
    "source",
    "backbone",
    "study",
    "status",
    "image_size",
    "batch_size",
    "learning_rate",
    "epochs",
    "best_val_f1",
    "test_precision",
    "test_recall",
    "test_f1",
    "test_f1_ci95_low",
    "test_f1_ci95_high",
    "test_accuracy",
    "total_params",
    "trainable_params",
    "final_train_seconds",
    "search_seconds",
]


def table_three(
    studies: Sequence[BackboneStudy], paper: Path | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Test precision, recall, F1 (%, with F1's 95% bootstrap interval), parameters, seconds."""
    rows = []
    for s in studies:
        row: dict[str, Any] = {
            "source": "clothopt",
            "backbone": s.config.backbone,
            "study": s.name,
            "best_val_f1": _pct(s.best_value),
        }
        f = s.final
        if f is None:
            row["status"] = "not finalized"
            row["search_seconds"] = s.search_seconds
            rows.append(row)
            continue
        test, params = f["test"], f.get("params", {})
        ci = f.get("f1_macro_ci95") or [None, None]
        row |= {
            "status": "finalized",
            **{k: params.get(k) for k in GRID_KEYS},
            "epochs": f.get("epochs"),
            "test_precision": _pct(test["precision_macro"]),
            "test_recall": _pct(test["recall_macro"]),
            "test_f1": _pct(test["f1_macro"]),
            "test_f1_ci95_low": _pct(ci[0]),
            "test_f1_ci95_high": _pct(ci[1]),
            "test_accuracy": _pct(test.get("accuracy")),
            "total_params": f.get("total_params"),
            "trainable_params": f.get("trainable_params"),
            "final_train_seconds": f.get("final_train_seconds"),
            "search_seconds": f.get("search_seconds", s.search_seconds),
        }
        rows.append(row)
    paper_rows = {r["metric"]: r for r in _read_paper(paper, "final_test.csv")}
    metric_of = {
        "test_precision": "precision_macro_pct",
        "test_recall": "recall_macro_pct",
        "test_f1": "f1_macro_pct",
        "total_params": "total_parameters",
        "final_train_seconds": "final_training_seconds",
        "search_seconds": "search_seconds",
    }
    for backbone in [c for c in next(iter(paper_rows.values()), {}) if c != "metric"]:
        row = {"source": "paper", "backbone": backbone, "status": "published"}
        for col, metric in metric_of.items():
            text = paper_rows.get(metric, {}).get(backbone)
            if text not in (None, ""):
                row[col] = int(text) if col == "total_params" else float(text)
        rows.append(row)
    return rows, _T3_COLUMNS


def mcnemar_pairs(studies: Sequence[BackboneStudy]) -> list[dict[str, Any]]:
    """McNemar's test for every pair of finalized studies, with Holm-adjusted p-values.

    Both studies must have scored the same test images in the same order.
    """
    from clothopt.metrics import mcnemar

    done = [s for s in studies if s.final is not None]
    rows = []
    for i, a in enumerate(done):
        for b in done[i + 1 :]:
            fa, fb = a.final or {}, b.final or {}
            if list(fa["classes"]) != list(fb["classes"]):
                raise UserError(
                    f"studies {a.name!r} and {b.name!r} have different classes: "
                    "McNemar needs the same test set"
                )
            if list(fa["test_labels"]) != list(fb["test_labels"]):
                raise UserError(
                    f"studies {a.name!r} and {b.name!r} were tested on different images (or in "
                    "another order): McNemar needs the same test images in the same order"
                )
            r = mcnemar(fa["test_labels"], fa["test_predictions"], fb["test_predictions"])
            rows.append(
                {
                    "a": a.label,
                    "b": b.label,
                    "a_test_f1": _pct(fa["test"]["f1_macro"]),
                    "b_test_f1": _pct(fb["test"]["f1_macro"]),
                    "a_accuracy": _pct(fa["test"].get("accuracy")),
                    "b_accuracy": _pct(fb["test"].get("accuracy")),
                    "images": len(fa["test_labels"]),
                    "both_correct": r["both_correct"],
                    "a_only_correct": r["a_only"],
                    "b_only_correct": r["b_only"],
                    "both_wrong": r["both_wrong"],
                    "method": r["method"],
                    "statistic": r["statistic"],
                    "p_value": r["p_value"],
                    "significant_05": r["p_value"] < ALPHA,
                }
            )
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
        row["significant_holm_05"] = adjusted < ALPHA
    return rows


_MCNEMAR_COLUMNS = [
    "a",
    "b",
    "a_test_f1",
    "b_test_f1",
    "a_accuracy",
    "b_accuracy",
    "images",
    "both_correct",
    "a_only_correct",
    "b_only_correct",
    "both_wrong",
    "method",
    "statistic",
    "p_value",
    "significant_05",
    "p_holm",
    "significant_holm_05",
]


def per_class_f1(studies: Sequence[BackboneStudy]) -> tuple[list[dict[str, Any]], list[str]]:
    """Test F1 (%) per class, one column per finalized study."""
    done = [s for s in studies if s.final is not None]
    if not done:
        return [], []
    classes = list(done[0].final["classes"])  # type: ignore[index]
    rows = []
    for c in classes:
        row: dict[str, Any] = {"class": c}
        for s in done:
            per = (s.final or {})["test"].get("per_class", {}).get(c)
            row[s.label] = None if per is None else _pct(per["f1"])
        row["support"] = (
            (done[0].final or {})["test"].get("per_class", {}).get(c, {}).get("support")
        )
        rows.append(row)
    return rows, ["class", *(s.label for s in done), "support"]


def _grid_heatmap(s: BackboneStudy) -> go.Figure:
    import plotly.graph_objects as go

    keys = sorted(s.grid, key=lambda k: (k[0], k[1], -k[2]))
    rates = sorted({k[2] for k in keys}, reverse=True)
    rows = sorted({(k[0], k[1]) for k in keys})
    z = [[_pct(s.grid.get((i, b, lr))) for lr in rates] for i, b in rows]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"lr {lr:g}" for lr in rates],
            y=[f"{i}px, batch {b}" for i, b in rows],
            colorscale="Viridis",
            colorbar={"title": "F1 %"},
            text=[[_cell(v) for v in r] for r in z],
            texttemplate="%{text}",
            hovertemplate="%{y}, %{x}: %{z:.2f}%<extra></extra>",
        )
    )
    fig.update_layout(title=f"Validation macro-F1 over the grid: {s.label}")
    return fig


def _backbone_figures(
    studies: Sequence[BackboneStudy], t3: Sequence[Mapping[str, Any]], pcf: list[dict[str, Any]]
) -> list[go.Figure]:
    import plotly.graph_objects as go

    figs = [_grid_heatmap(s) for s in studies if s.grid]
    done = [s for s in studies if s.final is not None]
    ours = {r["study"]: r for r in t3 if r["source"] == "clothopt"}
    if not done:
        return figs
    labels = [s.label for s in done]
    rows = [ours[s.name] for s in done]
    f1 = [r["test_f1"] for r in rows]
    low = [r["test_f1_ci95_low"] for r in rows]
    high = [r["test_f1_ci95_high"] for r in rows]
    fig = go.Figure(
        go.Scatter(
            x=labels,
            y=f1,
            mode="markers",
            marker={"size": 12},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [None if h is None else h - v for h, v in zip(high, f1, strict=True)],
                "arrayminus": [
                    None if lo is None else v - lo for lo, v in zip(low, f1, strict=True)
                ],
            },
            hovertemplate="%{x}: %{y:.2f}%<extra></extra>",
        )
    )
    fig.update_layout(
        title="Test macro-F1 with its 95% bootstrap interval", yaxis_title="test macro-F1 (%)"
    )
    figs.append(fig)
    fig = go.Figure(
        [
            go.Bar(name="total", x=labels, y=[r.get("total_params") for r in rows]),
            go.Bar(name="trainable (head)", x=labels, y=[r.get("trainable_params") for r in rows]),
        ]
    )
    fig.update_layout(title="Parameters", barmode="group", yaxis_type="log")
    figs.append(fig)
    fig = go.Figure(
        [
            go.Bar(name="final training", x=labels, y=[r.get("final_train_seconds") for r in rows]),
            go.Bar(name="search", x=labels, y=[r.get("search_seconds") for r in rows]),
        ]
    )
    fig.update_layout(title="Durations (seconds)", barmode="group", yaxis_title="seconds")
    figs.append(fig)
    fig = go.Figure(
        [go.Bar(name=lab, x=[r["class"] for r in pcf], y=[r[lab] for r in pcf]) for lab in labels]
    )
    fig.update_layout(title="Per-class test F1", barmode="group", yaxis_title="F1 (%)")
    figs.append(fig)
    for s in done:
        f = s.final or {}
        classes = list(f["classes"])
        cm = f["test"]["confusion_matrix"]
        fig = go.Figure(
            go.Heatmap(
                z=cm,
                x=classes,
                y=classes,
                colorscale="Blues",
                text=cm,
                texttemplate="%{text}",
                hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"Confusion matrix (test): {s.label}",
            xaxis_title="predicted",
            yaxis_title="true",
            yaxis_autorange="reversed",
        )
        figs.append(fig)
    return figs


def backbone_report(
    names: Sequence[str],
    storage: str | None,
    out: Path,
    paper: Path | None = None,
) -> Report:
    """Tables I and III, bootstrap intervals, pairwise McNemar tests, per-class F1, HTML."""
    studies = load_backbone_studies(names, storage)
    t1, t1_cols = table_one(studies, paper)
    t3, _ = table_three(studies, paper)
    pairs = mcnemar_pairs(studies)
    pcf, pcf_cols = per_class_f1(studies)
    best = _column_best(t1, t1_cols[3:])
    is_best = lambda row, col: col in best and row.get(col) == best[col]  # noqa: E731
    done = [s for s in studies if s.final is not None]
    notes = []
    if not done:
        notes.append(
            "no study is finalized: Table III, the intervals and the McNemar tests need "
            "`clothopt study finalize NAME` first"
        )
    elif len(done) < len(studies):
        left = ", ".join(s.name for s in studies if s.final is None)
        notes.append(f"not finalized (left out of the test statistics): {left}")
    t3_digits = {"test_accuracy": 2, "final_train_seconds": 1, "search_seconds": 1}
    mc_digits = {"statistic": 3, "p_value": 4, "p_holm": 4}
    boot = sorted(
        {json.dumps(s.final.get("bootstrap", {}), sort_keys=True) for s in done if s.final}
    )
    sections = [
        (
            "Table I: validation macro-F1 (%) over the grid",
            "Each cell is the trial's validation macro-F1 (the mean if a point ran more than "
            "once); the best of each column is in bold."
            + (" Columns `paper ...` are the published values." if paper else ""),
            t1,
            t1_cols,
            {},
            is_best,
        ),
        (
            "Table III: test figures of each backbone's best configuration (%)",
            "Test precision, recall and F1 are macro averages; `test_f1_ci95_*` is the 95% "
            "bootstrap interval of test macro-F1 (resampling the test images; "
            + (", ".join(boot) or "no bootstrap recorded")
            + "). Seconds: final training, and the validation search (`search_seconds` from "
            "the finalized report; for a study not finalized, the sum of its trials' "
            "extraction and head-training seconds).",
            t3,
            _T3_COLUMNS,
            t3_digits,
            None,
        ),
        (
            "McNemar tests on the test predictions",
            "Each pair of finalized backbones, scored on the same test images: `a_only_correct`"
            " counts images A gets right and B wrong. The test asks whether the two models' "
            "error rates differ (it compares accuracy, image by image; for macro-F1 compare the "
            f"bootstrap intervals). Exact binomial test below 25 discordant images, else "
            f"chi-square with continuity correction. Significant: p < {ALPHA}; `p_holm` adjusts "
            "for testing every pair (Holm).",
            pairs,
            _MCNEMAR_COLUMNS,
            mc_digits,
            None,
        ),
        ("Per-class test F1 (%)", "", pcf, pcf_cols, {}, None),
    ]
    md = [f"# Backbone comparison: {', '.join(s.name for s in studies)}"]
    md += [f"> {n}" for n in notes]
    blocks = [f"<p><b>Note:</b> {html.escape(n)}</p>" for n in notes]
    for title, text, rows, cols, digits, bold in sections:
        md += [f"## {title}", text, markdown_table(rows, cols, digits, bold) if rows else "(none)"]
        blocks += [f"<h2>{html.escape(title)}</h2>", _markdown_to_html(text)]
        blocks.append(html_table(rows, cols, digits, bold))
    blocks.append("<h2>Figures</h2>")
    blocks += [_figure_html(f) for f in _backbone_figures(studies, t3, pcf)]
    markdown = "\n\n".join(m for m in md if m)
    files = _write_outputs(
        out,
        markdown,
        html_page("Backbone comparison", blocks),
        {
            "table1_validation_f1": (t1, t1_cols),
            "table3_test": (t3, _T3_COLUMNS),
            "mcnemar": (pairs, _MCNEMAR_COLUMNS),
            "per_class_f1": (pcf, pcf_cols),
        },
    )
    return Report(markdown, files, notes)


# --------------------------------------------------------------------------- samplers


@dataclass
class SamplerRun:
    """One sampler comparison study: its completed trials in the order they ran."""

    sampler: str
    seed: int
    name: str
    config: StudyConfig
    trials: list[FrozenTrial]  # COMPLETE, by trial number
    grid_order_seed: int | None = None

    @property
    def values(self) -> list[float]:
        return [float(t.value) for t in self.trials if t.value is not None]

    @property
    def head_seconds(self) -> list[float]:
        return [float(t.user_attrs.get("train_seconds", 0.0)) for t in self.trials]


def load_sampler_runs(names: Sequence[str], storage: str | None) -> list[SamplerRun]:
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    from clothopt import study as study_mod

    runs = []
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # QMCSampler's, on every load
            st, cfg = study_mod.load(name, storage)
        trials = sorted(
            st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number
        )
        runs.append(
            SamplerRun(
                cfg.sampler, cfg.seed, name, cfg, trials, st.user_attrs.get("grid_order_seed")
            )
        )
    return runs


class _ExtractionCosts:
    """Seconds to extract train + validation features at an image size, for one study's setup.

    From the feature cache's own record (what computing the entry cost, whoever did it); else
    from the trials that computed it; else 0 (then the report says so).
    """

    def __init__(self, runs: Sequence[SamplerRun]) -> None:
        self._runs = runs
        self._datasets: dict[str, Any] = {}
        self._memo: dict[tuple[Any, ...], float | None] = {}
        self.missing: set[int] = set()

    def _setup(self, cfg: StudyConfig) -> tuple[Any, ...]:
        weights = cfg.weights if cfg.weights != "none" else f"none-{cfg.seed}"
        return (cfg.backbone, weights, cfg.resize, cfg.data_fingerprint, cfg.cache_dir)

    def __call__(self, cfg: StudyConfig, size: int) -> float:
        key = (*self._setup(cfg), size)
        if key not in self._memo:
            self._memo[key] = self._from_cache(cfg, size)
            if self._memo[key] is None:
                self._memo[key] = self._from_trials(cfg, size)
        value = self._memo[key]
        if value is None:
            self.missing.add(size)
        return value or 0.0

    def _from_cache(self, cfg: StudyConfig, size: int) -> float | None:
        from clothopt.data import open_dataset
        from clothopt.features import FeatureCache
        from clothopt.model.backbones import get_backbone

        try:
            if cfg.data not in self._datasets:
                self._datasets[cfg.data] = open_dataset(cfg.data, ("train", "validation"))
            ds = self._datasets[cfg.data]
            cache, spec = FeatureCache(cfg.cache_dir), get_backbone(cfg.backbone)
            total = 0.0
            for split in ("train", "validation"):
                key = cache.key(spec, cfg.weights, cfg.seed, size, cfg.resize, ds[split])
                path = cache.path(key)
                if path is None:
                    return None
                total += float(json.loads(path.with_suffix(".json").read_text())["extract_seconds"])
            return total
        except (UserError, OSError, ValueError, KeyError):
            return None

    def _from_trials(self, cfg: StudyConfig, size: int) -> float | None:
        setup = self._setup(cfg)
        seen = [
            float(t.user_attrs.get("extract_seconds", 0.0))
            for r in self._runs
            if self._setup(r.config) == setup
            for t in r.trials
            if t.params.get("image_size") == size
        ]
        return max(seen) if seen and max(seen) > 0 else None


def _standalone_seconds(run: SamplerRun, costs: Callable[[StudyConfig, int], float]) -> list[float]:
    """Each trial's head training, plus extraction at the study's first trial of each size."""
    seen: set[int] = set()
    out = []
    for t in run.trials:
        size = int(t.params["image_size"])
        extra = 0.0 if size in seen else costs(run.config, size)
        seen.add(size)
        out.append(float(t.user_attrs.get("train_seconds", 0.0)) + extra)
    return out


def _targets(runs: Sequence[SamplerRun]) -> tuple[dict[int, float], str]:
    """Per seed: the best validation F1 of that seed's full grid (else of any study)."""
    grid = {r.seed: r for r in runs if r.sampler == "grid"}
    targets, how = {}, "grid"
    for seed in sorted({r.seed for r in runs}):
        ref = grid.get(seed)
        if ref is not None and ref.values and ref.config.space.is_grid:
            done = {tuple(t.params[k] for k in GRID_KEYS) for t in ref.trials}
            if len(done) < len(ref.config.space.grid()):
                how = "grid (incomplete)"
            targets[seed] = max(ref.values)
        else:
            values = [v for r in runs if r.seed == seed for v in r.values]
            if values:
                targets[seed] = max(values)
                how = "any"
    return targets, how


def _sd(values: Sequence[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def sampler_report(
    runs: Sequence[SamplerRun],
    budget: int,
    out: Path,
    samplers: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Report:
    """Best-so-far curves, trials and seconds to the grid's best, final bests; over seeds.

    ``runs`` holds every study of the comparison (the grid ones too: they set each seed's
    target); ``samplers`` says which to report (default: all).
    """
    import optuna

    samplers = list(samplers or dict.fromkeys(r.sampler for r in runs))
    targets, target_how = _targets(runs)
    costs = _ExtractionCosts(runs)
    per_seed: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    by_sampler: dict[str, list[dict[str, Any]]] = {s: [] for s in samplers}
    notes: list[str] = []
    for run in runs:
        if run.sampler not in by_sampler:
            continue
        n = min(budget, len(run.trials))
        if n < budget:
            notes.append(f"study {run.name} has {n} of {budget} trials complete")
        values = run.values[:n]
        best = best_so_far(values)
        secs = np.cumsum(_standalone_seconds(run, costs)[:n])
        head = np.cumsum(run.head_seconds[:n])
        target = targets.get(run.seed)
        hit = None if target is None else first_within(best, target)
        row = {
            "sampler": run.sampler,
            "seed": run.seed,
            "study": run.name,
            "trials": n,
            "distinct_points": len({tuple(t.params[k] for k in GRID_KEYS) for t in run.trials[:n]}),
            "target": _pct(target),
            "final_best": _pct(best[-1]) if n else None,
            "trials_to_target": hit,
            "seconds_to_target": None if hit is None else float(secs[hit - 1]),
            "head_seconds_to_target": None if hit is None else float(head[hit - 1]),
            "seconds": float(secs[-1]) if n else None,
            "head_seconds": float(head[-1]) if n else None,
        }
        per_seed.append(row)
        by_sampler[run.sampler].append(row | {"_best": best, "_secs": secs, "_run": run})
        for k in range(n):
            curves.append(
                {
                    "sampler": run.sampler,
                    "seed": run.seed,
                    "trial": k + 1,
                    "number": run.trials[k].number,
                    **{p: run.trials[k].params[p] for p in GRID_KEYS},
                    "value": _pct(values[k]),
                    "best_so_far": _pct(best[k]),
                    "seconds": float(secs[k]),
                    "head_seconds": float(head[k]),
                }
            )
    if costs.missing:
        notes.append(
            "no record of the feature extraction cost at "
            + ", ".join(f"{s}px" for s in sorted(costs.missing))
            + ": counted as 0 s"
        )
    summary, mean_curves = [], []
    for sampler in samplers:
        rows = by_sampler[sampler]
        if not rows:
            continue
        finals = [r["final_best"] for r in rows if r["final_best"] is not None]
        reached = [r for r in rows if r["trials_to_target"] is not None]
        summary.append(
            {
                "sampler": sampler,
                "seeds": len(rows),
                "final_best_mean": _mean(finals),
                "final_best_sd": _sd(finals),
                "final_best_min": min(finals, default=None),
                "final_best_max": max(finals, default=None),
                "reached": f"{len(reached)}/{len(rows)}",
                "trials_to_target_mean": _mean([r["trials_to_target"] for r in reached]),
                "trials_to_target_per_seed": " ".join(
                    str(r["trials_to_target"] or "-") for r in rows
                ),
                "seconds_to_target_mean": _mean([r["seconds_to_target"] for r in reached]),
                "head_seconds_to_target_mean": _mean(
                    [r["head_seconds_to_target"] for r in reached]
                ),
                "distinct_points_mean": _mean([r["distinct_points"] for r in rows]),
                "seconds_mean": _mean([r["seconds"] for r in rows if r["seconds"] is not None]),
            }
        )
        length = max(len(r["_best"]) for r in rows)
        for k in range(length):
            vals = [100 * float(r["_best"][k]) for r in rows if k < len(r["_best"])]
            mean_curves.append(
                {
                    "sampler": sampler,
                    "trial": k + 1,
                    "seeds": len(vals),
                    "mean": _mean(vals),
                    "sd": _sd(vals),
                    "min": min(vals),
                    "max": max(vals),
                }
            )
    # the settings a reader needs to rerun the comparison
    versions = sorted({r.config.versions.get("optuna", "?") for r in runs})
    sampler_args = {
        s: {r.name: dict(r.config.sampler_args) for r in runs if r.sampler == s} for s in samplers
    }
    first = runs[0].config if runs else None
    record = {
        "budget": budget,
        "samplers": samplers,
        "seeds": sorted({r.seed for r in runs}),
        "studies": [r.name for r in runs],
        "optuna_versions_of_studies": versions,
        "optuna_version_of_report": optuna.__version__,
        "sampler_args": sampler_args,
        "grid_order_seeds": {r.name: r.grid_order_seed for r in runs if r.sampler == "grid"},
        "space": None if first is None else first.space.to_dict(),
        "backbone": None if first is None else first.backbone,
        "weights": None if first is None else first.weights,
        "epochs": None if first is None else first.epochs,
        "data": None if first is None else first.data,
        "data_fingerprint": None if first is None else first.data_fingerprint,
        "targets": {str(k): v for k, v in targets.items()},
        "target": target_how,
        "tolerance": TOLERANCE,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **dict(meta or {}),
    }
    atomic_write_json(out / "comparison.json", record)
    markdown = _sampler_markdown(summary, per_seed, mean_curves, samplers, record, notes)
    figs = _sampler_figures(by_sampler, samplers, targets, budget)
    blocks = [_markdown_to_html(n) for n in notes]
    blocks += [
        "<h2>Summary</h2>",
        _markdown_to_html(_definitions(record)),
        html_table(summary, _SUMMARY_COLUMNS, _SUMMARY_DIGITS),
        *[_figure_html(f) for f in figs],
        "<h2>Per seed</h2>",
        html_table(per_seed, _PER_SEED_COLUMNS, _SUMMARY_DIGITS),
        "<h2>To rerun</h2>",
        "<pre>" + html.escape(json.dumps(record, indent=2, default=str)) + "</pre>",
    ]
    title = f"Sampler comparison: {record['backbone']}"
    files = _write_outputs(
        out,
        markdown,
        html_page(title, blocks),
        {
            "samplers_summary": (summary, _SUMMARY_COLUMNS),
            "samplers_per_seed": (per_seed, _PER_SEED_COLUMNS),
            "best_so_far": (curves, _CURVE_COLUMNS),
            "best_so_far_mean": (
                mean_curves,
                ["sampler", "trial", "seeds", "mean", "sd", "min", "max"],
            ),
        },
    )
    return Report(markdown, [*files, out / "comparison.json"], notes)


_SUMMARY_COLUMNS = [
    "sampler",
    "seeds",
    "final_best_mean",
    "final_best_sd",
    "final_best_min",
    "final_best_max",
    "reached",
    "trials_to_target_mean",
    "trials_to_target_per_seed",
    "seconds_to_target_mean",
    "head_seconds_to_target_mean",
    "distinct_points_mean",
    "seconds_mean",
]
_PER_SEED_COLUMNS = [
    "sampler",
    "seed",
    "study",
    "trials",
    "distinct_points",
    "target",
    "final_best",
    "trials_to_target",
    "seconds_to_target",
    "head_seconds_to_target",
    "seconds",
    "head_seconds",
]
_CURVE_COLUMNS = [
    "sampler",
    "seed",
    "trial",
    "number",
    *GRID_KEYS,
    "value",
    "best_so_far",
    "seconds",
    "head_seconds",
]
_SUMMARY_DIGITS = {
    "trials_to_target_mean": 1,
    "seconds_to_target_mean": 1,
    "head_seconds_to_target_mean": 1,
    "distinct_points_mean": 1,
    "seconds_mean": 1,
    "seconds_to_target": 1,
    "head_seconds_to_target": 1,
    "seconds": 1,
    "head_seconds": 1,
}


def _definitions(record: Mapping[str, Any]) -> str:
    target = {
        "grid": "the best validation macro-F1 of the full grid with the same seed",
        "grid (incomplete)": "the best of the grid study with the same seed, which is not "
        "complete yet",
        "any": "the best validation macro-F1 any study with the same seed found (the space "
        "has no grid)",
    }[record["target"]]
    return (
        f"Budget {record['budget']} trials per study; F1 in %. Target: per seed, {target} (a "
        "seed fixes each point's head initialisation and batch order, so every sampler of that "
        "seed scores a point exactly as the grid does). Reached: best-so-far within "
        f"{100 * record['tolerance']:.1f} points of the target. Seconds: head training of each "
        "trial plus feature extraction of an image size charged once, at the study's first "
        "trial of that size (what the study costs alone on an empty feature cache); head "
        "seconds: head training only. The grid sampler walks the grid in a random order drawn "
        "from its seed. Spread: sample standard deviation (sd) and min-max over seeds."
    )


def _sampler_markdown(
    summary: list[dict[str, Any]],
    per_seed: list[dict[str, Any]],
    mean_curves: list[dict[str, Any]],
    samplers: Sequence[str],
    record: Mapping[str, Any],
    notes: Sequence[str],
) -> str:
    # best-so-far after each trial, one column per sampler: "mean ± sd"
    by_trial: dict[int, dict[str, Any]] = {}
    for c in mean_curves:
        text = f"{c['mean']:.2f}" + (f" ± {c['sd']:.2f}" if c["sd"] is not None else "")
        by_trial.setdefault(c["trial"], {"trial": c["trial"]})[c["sampler"]] = text
    space = record.get("space") or {}
    params = ", ".join(f"{k} {v.get('choices', v)}" for k, v in (space.get("params") or {}).items())
    parts = [
        f"# Sampler comparison: {record['backbone']}",
        f"Space {space.get('name')} ({params}); {record['epochs']} epochs per trial; "
        f"seeds {', '.join(map(str, record['seeds']))}; weights {record['weights']}; "
        f"data {record['data']}.",
        *[f"> {n}" for n in notes],
        "## Summary",
        _definitions(record),
        markdown_table(summary, _SUMMARY_COLUMNS, _SUMMARY_DIGITS),
        "## Per seed",
        markdown_table(per_seed, _PER_SEED_COLUMNS, _SUMMARY_DIGITS),
        "## Best validation macro-F1 (%) after each trial (mean ± sd over seeds)",
        markdown_table(
            list(by_trial.values()),
            ["trial", *[s for s in samplers if any(s in r for r in by_trial.values())]],
        ),
        "## To rerun",
        f"optuna {', '.join(record['optuna_versions_of_studies'])} (studies), "
        f"{record['optuna_version_of_report']} (this report). Sampler arguments:",
    ]
    bullets = [
        f"- {name}: `{json.dumps(a, sort_keys=True)}`"
        for sampler in samplers
        for name, a in (record["sampler_args"].get(sampler) or {}).items()
    ]
    parts.append("\n".join(bullets))
    if record.get("skipped"):
        parts.append(
            "Skipped: " + "; ".join(f"{s} ({why})" for s, why in record["skipped"].items())
        )
    if record.get("command"):
        parts.append(f"Command: `{record['command']}`")
    return "\n\n".join(parts)


_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _band(
    fig: go.Figure, x: Sequence[float], mean: Any, low: Any, high: Any, name: str, color: str
) -> None:
    import plotly.graph_objects as go

    x = list(x)
    fig.add_trace(
        go.Scatter(
            x=x + x[::-1],
            y=list(high) + list(low)[::-1],
            fill="toself",
            fillcolor=_rgba(color, 0.15),
            line={"width": 0},
            hoverinfo="skip",
            showlegend=False,
            legendgroup=name,
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=list(mean),
            name=name,
            legendgroup=name,
            mode="lines",
            line={"color": color, "shape": "hv"},
        )
    )


def _sampler_figures(
    by_sampler: Mapping[str, list[dict[str, Any]]],
    samplers: Sequence[str],
    targets: Mapping[int, float],
    budget: int,
) -> list[go.Figure]:
    import optuna
    import plotly.graph_objects as go
    from optuna.visualization import plot_edf

    color = {s: _COLORS[i % len(_COLORS)] for i, s in enumerate(samplers)}
    target = 100 * float(np.mean(list(targets.values()))) if targets else None
    over_trials, over_seconds = go.Figure(), go.Figure()
    for s in samplers:
        rows = by_sampler.get(s) or []
        if not rows:
            continue
        length = min(len(r["_best"]) for r in rows)
        if length:
            best = np.array([100 * r["_best"][:length] for r in rows])
            _band(
                over_trials,
                range(1, length + 1),
                best.mean(axis=0),
                best.min(axis=0),
                best.max(axis=0),
                s,
                color[s],
            )
        t, mean, low, high = step_curve_mean(
            [(r["_secs"], 100 * r["_best"]) for r in rows if len(r["_best"])]
        )
        if len(t):
            _band(over_seconds, t, mean, low, high, s, color[s])
    for fig, axis in ((over_trials, "trials"), (over_seconds, "seconds (standalone)")):
        if target is not None:
            fig.add_hline(y=target, line_dash="dash", annotation_text="grid best (mean of seeds)")
            fig.add_hline(y=target - 100 * TOLERANCE, line_dash="dot", line_width=1)
        fig.update_layout(xaxis_title=axis, yaxis_title="best validation macro-F1 (%)")
    over_trials.update_layout(
        title="Best-so-far validation macro-F1 over trials (mean, band: min-max over seeds)"
    )
    over_seconds.update_layout(
        title="Best-so-far validation macro-F1 over seconds (mean, band: min-max over seeds)"
    )
    # optuna's EDF over each study's first `budget` trials, coloured by sampler
    studies, sampler_of = [], {}
    for s in samplers:
        for r in by_sampler.get(s) or []:
            run: SamplerRun = r["_run"]
            st = optuna.create_study(study_name=run.name, direction="maximize")
            st.add_trials(run.trials[:budget])
            studies.append(st)
            sampler_of[run.name] = s
    figs = [over_trials, over_seconds]
    if studies:
        edf = plot_edf(studies, target_name="validation macro-F1")
        for trace in edf.data:
            s = sampler_of.get(trace.name)
            if s is not None:
                trace.line.color = color[s]
                trace.legendgroup = s
        edf.update_layout(title="Empirical distribution of validation macro-F1 (optuna plot_edf)")
        figs.append(edf)
    return figs
