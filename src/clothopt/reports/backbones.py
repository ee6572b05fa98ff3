"""Which backbone to ship: the paper's Tables I and III, and what the paper lacked.

Table I: the validation macro-F1 of every grid point, one column per study. Table III: the test
figures of each finalized study, each test macro-F1 with its 95% bootstrap interval (from the
study's ``report.json``). Then a McNemar test for every pair of backbones on their test
predictions (Holm-adjusted) and per-class F1. Markdown, CSV files and one self-contained HTML
page (plotly.js embedded once, so it opens offline). Numbers are percentages (F1 x 100).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.errors import InvalidArgument
from clothopt.final.finalize import search_seconds
from clothopt.final.store import read_final
from clothopt.reports.backbone_pairs import F1_DIFF_COLUMNS, MCNEMAR_COLUMNS, mcnemar_pairs
from clothopt.reports.paper import (
    GRID_FILE,
    GRID_KEYS,
    TABLE_THREE,
    paper_test_columns,
    read_paper,
)
from clothopt.reports.render import (
    Report,
    cell,
    figure_html,
    html_page,
    html_table,
    markdown_table,
    text_to_html,
    write_outputs,
)
from clothopt.reports.stats import ALPHA, pct
from clothopt.trial_spec import paper_point

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from clothopt.config import StudyConfig

__all__ = [
    "BackboneStudy",
    "backbone_report",
    "load_backbone_studies",
    "mcnemar_pairs",
    "per_class_f1",
    "table_one",
    "table_three",
]


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


def load_backbone_studies(names: Sequence[str], storage: str | None) -> list[BackboneStudy]:
    from optuna.trial import TrialState

    from clothopt import study as study_mod

    if not names:
        raise InvalidArgument("name at least one study to compare")
    if len(set(names)) != len(names):
        raise InvalidArgument("a study is named twice")
    loaded = [(n, *study_mod.load(n, storage)) for n in names]
    backbones = [cfg.backbone for _, _, cfg in loaded]
    out = []
    for name, st, cfg in loaded:
        trials = st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        sums: dict[tuple[Any, ...], list[float]] = {}
        for t in trials:
            if t.value is not None and (point := paper_point(t.params)) is not None:
                sums.setdefault(point, []).append(t.value)
        best = max(trials, key=lambda t: (t.value or 0.0, -t.number), default=None)
        final, folder = read_final(st, name, storage)
        out.append(
            BackboneStudy(
                name=name,
                label=cfg.backbone if backbones.count(cfg.backbone) == 1 else name,
                config=cfg,
                grid={k: float(np.mean(v)) for k, v in sums.items()},
                best_value=None if best is None else best.value,
                best_params=None if best is None else dict(best.params),
                search_seconds=search_seconds(trials)[0],
                final=final,
                final_dir=folder,
            )
        )
    return out


def table_one(
    studies: Sequence[BackboneStudy], paper: Path | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Validation macro-F1 (%) per grid point: one column per study, then the paper's columns."""
    points: set[tuple[Any, ...]] = set()
    for s in studies:
        if s.config.space.is_grid:
            points |= {pt for p in s.config.space.grid() if (pt := paper_point(p)) is not None}
        points |= set(s.grid)
    paper_rows = read_paper(paper, GRID_FILE)
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
            row[s.label] = pct(s.grid.get(key))
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
            "best_val_f1": pct(s.best_value),
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
            "test_precision": pct(test["precision_macro"]),
            "test_recall": pct(test["recall_macro"]),
            "test_f1": pct(test["f1_macro"]),
            "test_f1_ci95_low": pct(ci[0]),
            "test_f1_ci95_high": pct(ci[1]),
            "test_accuracy": pct(test.get("accuracy")),
            "total_params": f.get("total_params"),
            "trainable_params": f.get("trainable_params"),
            "final_train_seconds": f.get("final_train_seconds"),
            "search_seconds": f.get("search_seconds", s.search_seconds),
        }
        rows.append(row)
    for backbone, values in paper_test_columns(paper).items():
        row = {"source": "paper", "backbone": backbone, "status": "published"}
        for metric, _, col in TABLE_THREE:
            text = values.get(metric)
            if text not in (None, ""):
                row[col] = int(text) if col == "total_params" else float(text)
        rows.append(row)
    return rows, _T3_COLUMNS


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
            row[s.label] = None if per is None else pct(per["f1"])
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
    z = [[pct(s.grid.get((i, b, lr))) for lr in rates] for i, b in rows]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"lr {lr:g}" for lr in rates],
            y=[f"{i}px, batch {b}" for i, b in rows],
            colorscale="Viridis",
            colorbar={"title": "F1 %"},
            text=[[cell(v, "", "markdown") for v in r] for r in z],
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
    mc_digits = {"statistic": 3, "p_value": 4, "p_holm": 4, "f1_diff_p": 4, "f1_diff_p_holm": 4}
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
            MCNEMAR_COLUMNS,
            mc_digits,
            None,
        ),
        (
            "Paired bootstrap of the test macro-F1 difference",
            "Each pair of finalized backbones on the same test images: `f1_diff` = macro-F1 of A"
            " - B (points) and its 95% percentile interval from resampling the test images, the"
            " same resample for both models (A's finalize bootstrap resamples and seed). "
            "`f1_diff_p`: two-sided bootstrap p of no difference (at least 1/resamples); "
            f"`f1_diff_p_holm` adjusts it for testing every pair (Holm); significant: < {ALPHA}.",
            pairs,
            F1_DIFF_COLUMNS,
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
        blocks += [f"<h2>{html.escape(title)}</h2>", text_to_html(text)]
        blocks.append(html_table(rows, cols, digits, bold))
    blocks.append("<h2>Figures</h2>")
    blocks += [figure_html(f) for f in _backbone_figures(studies, t3, pcf)]
    markdown = "\n\n".join(m for m in md if m)
    files = write_outputs(
        out,
        markdown,
        html_page("Backbone comparison", blocks),
        {
            "table1_validation_f1": (t1, t1_cols),
            "table3_test": (t3, _T3_COLUMNS),
            "mcnemar": (pairs, MCNEMAR_COLUMNS),
            "f1_difference": (pairs, F1_DIFF_COLUMNS),
            "per_class_f1": (pcf, pcf_cols),
        },
    )
    return Report(markdown, files, notes)
