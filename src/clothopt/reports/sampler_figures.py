"""The sampler report's figures: best-so-far over trials and over seconds, and optuna's EDF."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from clothopt.reports.stats import TOLERANCE, step_curve_mean

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from optuna.trial import FrozenTrial

__all__ = ["sampler_figures"]


class _Run(Protocol):
    """What a figure reads of a ``reports.samplers.SamplerRun`` (named here, not imported:
    that module imports this one)."""

    name: str
    trials: list[FrozenTrial]


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


def sampler_figures(
    by_sampler: Mapping[str, list[dict[str, Any]]],
    samplers: Sequence[str],
    targets: Mapping[int, float],
    budget: int,
    target_how: str = "grid",
) -> list[go.Figure]:
    """Bands of best-so-far over trials and seconds per sampler (min-max over seeds), and the
    EDF of each study's first ``budget`` trials; ``by_sampler`` rows hold ``_best``, ``_secs``
    and ``_run``."""
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
            label = "grid best" if target_how.startswith("grid") else "best any sampler found"
            fig.add_hline(y=target, line_dash="dash", annotation_text=f"{label} (mean of seeds)")
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
            run: _Run = r["_run"]
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
