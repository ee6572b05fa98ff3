"""Scoring a labelled folder with a saved model: one owner for finalize's test report and
``clothopt evaluate``.

:func:`score_set` runs the exported model on image files (one per call, as
:func:`clothopt.predict.run_model` does); :func:`labelled_report` turns labels and predictions
into the report's figures (per-class and macro precision/recall/F1, accuracy, confusion matrix,
95% bootstrap interval of the macro-F1); :func:`confusion_figure` draws the matrix.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.errors import UserError
from clothopt.final.store import FIGURE_STEM
from clothopt.logging import get_logger

if TYPE_CHECKING:
    import keras

__all__ = ["confusion_figure", "labelled_report", "score_set"]

logger = get_logger(__name__)


def score_set(
    model: keras.Model, paths: Sequence[Path], threads: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Score image files with the saved model: ``(probabilities (N, C), scores (N,),
    accepted (N,) bool, errors)``; unreadable files are left out and named in ``errors``."""
    from clothopt.predict import iter_images, run_model

    probs, scores, accepted, errors = [], [], [], []
    for _path, image in iter_images(list(paths), threads):
        if isinstance(image, UserError):
            errors.append(str(image))
            continue
        out = run_model(model, image)
        probs.append(out.probabilities)
        scores.append(np.nan if out.score is None else out.score)
        accepted.append(bool(out.accepted))
    return (
        np.stack(probs) if probs else np.zeros((0, 0)),
        np.asarray(scores, dtype=np.float64),
        np.asarray(accepted, dtype=bool),
        errors,
    )


def labelled_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    *,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """``{"test": metrics, "f1_macro_ci95": [low, high], "bootstrap": {...}}``: report.json's
    figures of a labelled set."""
    from clothopt.metrics import bootstrap_ci, classification_metrics

    metrics = classification_metrics(y_true, y_pred, classes)
    low, high = bootstrap_ci(y_true, y_pred, len(classes), resamples=resamples, seed=seed)
    return {
        "test": metrics,
        "f1_macro_ci95": [low, high],
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "method": "percentile",
            "confidence": 0.95,
        },
    }


def confusion_figure(
    cm: list[list[int]], classes: list[str], title: str, folder: Path
) -> list[str]:
    """``confusion_matrix.html`` (plotly.js inside: opens offline), and a PNG with kaleido."""
    import plotly.graph_objects as go

    counts = np.asarray(cm)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=classes,
            y=classes,
            text=counts,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": {"text": "share of row"}},
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text} images<extra></extra>",
        )
    )
    side = 160 + 48 * len(classes)
    fig.update_layout(
        title={"text": title},
        xaxis={"title": {"text": "predicted"}, "side": "bottom"},
        yaxis={"title": {"text": "true"}, "autorange": "reversed"},
        width=side + 140,
        height=side + 60,
    )
    written = [f"{FIGURE_STEM}.html"]
    fig.write_html(folder / written[0], include_plotlyjs=True, full_html=True)
    if importlib.util.find_spec("kaleido") is not None:
        try:
            fig.write_image(folder / f"{FIGURE_STEM}.png", scale=2)
            written.append(f"{FIGURE_STEM}.png")
        except Exception as exc:  # kaleido needs a browser it may not find: the HTML is enough
            logger.warning("clothopt: no PNG figure (%s)", exc)
    return written
