"""Scoring a labelled folder with a saved model: one owner for finalize's test report and
``clothopt evaluate``.

:func:`score_set` runs the exported model on image files (one per call, as
:func:`clothopt.predict.run_model` does); :func:`labelled_report` turns labels and predictions
into the report's figures (per-class and macro precision/recall/F1, accuracy, confusion matrix,
95% bootstrap interval of the macro-F1); :func:`confusion_figure` draws the matrix.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.errors import DataError, UserError
from clothopt.final.store import FIGURE_STEM
from clothopt.logging import get_logger
from clothopt.metrics import classification_metrics

if TYPE_CHECKING:
    import keras

    from clothopt.model.compose import Head
    from clothopt.trial_spec import TrialSpec

__all__ = [
    "agreement",
    "confusion_figure",
    "estimate_section",
    "head_section",
    "labelled_report",
    "model_input",
    "score_saved",
    "score_set",
]

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


@dataclass(frozen=True)
class Scored:
    """A saved model's answers on a labelled split."""

    model: keras.Model
    y_pred: np.ndarray
    scores: np.ndarray  # the detector's, per image
    accepted: np.ndarray
    seconds: float


def score_saved(path: Path, paths: Sequence[Path], threads: int | None = None) -> Scored:
    """Load the model saved at ``path`` as ``clothopt predict`` does and score the image files
    ``paths``; an unreadable one is a :class:`~clothopt.errors.DataError`."""
    from clothopt.predict import load_classifier

    model, _ = load_classifier(path)
    start = time.perf_counter()
    probs, scores, accepted, errors = score_set(model, paths, threads)
    if errors:
        raise DataError(errors[0])
    y_pred = np.argmax(probs, axis=1).astype(np.int64)
    return Scored(model, y_pred, scores, accepted, time.perf_counter() - start)


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
    from clothopt.metrics import bootstrap_ci

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


def agreement(
    reference_logits: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    reference: str,
) -> dict[str, Any]:
    """report.json's ``cached_path_agreement``: how often the saved model (``y_pred``) answers
    as the training path (``reference_logits``, described by ``reference``) did."""
    cached_pred = np.argmax(reference_logits, axis=1)
    cached = classification_metrics(y_true, cached_pred, classes)
    if (disagree := int(np.sum(cached_pred != y_pred))) > 0:
        # float noise can flip a near tie; more than that means the export differs
        logger.warning(
            "finalize: warning: the saved model and the %s disagree on %d of %d test images",
            reference,
            disagree,
            len(y_pred),
        )
    return {
        "agree": int(np.sum(cached_pred == y_pred)),
        "of": len(y_pred),
        "cached_f1_macro": cached["f1_macro"],
        "reference": reference,
    }


_ONE_FIT = (
    "the chosen trial's validation macro-F1 from one fit (one seed, the validation split "
    "alone): the maximum over the search's trials, so optimistic (selection on seed noise "
    "as much as on the configuration), and with no spread known from one fit"
)
_FOLDS = (
    "the shipped members, trained again here for the final epochs on the search's own folds "
    "of train + validation (split from the study seed, seeds from the trial's): each "
    "member's out-of-fold macro-F1, their mean, sd and standard error, and the macro-F1 of "
    "the pooled out-of-fold probabilities. Optimistic where the configuration was picked as "
    "the best of many trials on these same folds; pessimistic for the shipped model, which "
    "averages all {k} heads (an ensemble usually beats its members) and each of which saw "
    "{k1}/{k} of the pool"
)
_REPEATS = (
    "the shipped members (one per repeat seed), trained again here for the final epochs on "
    "the train split: each member's validation macro-F1, their mean, sd and standard error, "
    "and the macro-F1 of their averaged probabilities on validation. Optimistic: the "
    "configuration was picked as the best of many trials on this same validation split; the "
    "members' mean is pessimistic for the shipped average of {r} heads"
)

_BLEND = (
    "a blend of raced configurations, each one's members trained again here for the final "
    "epochs on the search's own folds of train + validation: member_f1_macro holds the "
    "blend's macro-F1 on each fold's held-out examples (not one member's), then their mean, "
    "sd and standard error, and the macro-F1 of the blend's pooled out-of-fold probabilities. "
    "Optimistic where the weights were chosen on these same out-of-fold probabilities and the "
    "candidates raced on these folds; pessimistic in that each member saw {k1}/{k} of the pool"
)


def estimate_section(
    trial_value: float | None,
    test_f1: float,
    members: tuple[Sequence[float], float, int, int] | None,
    *,
    blend: bool = False,
) -> dict[str, Any]:
    """report.json's ``estimate``: what the search predicts for the shipped model's macro-F1,
    beside its test figure. ``members``: an ensemble's (per-member validation or out-of-fold
    macro-F1, the pooled predictions' macro-F1, folds K, repeats R); None: a single fit,
    estimated by the trial's own value. ``blend``: ``members`` are a blend's (per-fold
    macro-F1 of the blend instead of per member)."""
    if members is None:
        f1 = [] if trial_value is None else [float(trial_value)]
        out: dict[str, Any] = {"members": 1, "folds": 0, "repeats": 1, "member_f1_macro": f1}
        pooled, how, key = None, _ONE_FIT, None
    else:
        f1 = [float(v) for v in members[0]]
        k, r = members[2], members[3]
        out = {"members": len(f1), "folds": k, "repeats": r, "member_f1_macro": f1}
        pooled, how = members[1], (_FOLDS.format(k=k, k1=k - 1) if k else _REPEATS.format(r=r))
        if blend:
            how = _BLEND.format(k=k, k1=k - 1)
            out["blend"] = True  # member_f1_macro: the blend's per fold, not one member's
        key = "pooled_oof_f1_macro" if k else "pooled_validation_f1_macro"
    arr = np.asarray(f1, np.float64)
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else None
    out.update(
        {
            "mean": float(arr.mean()) if len(arr) else None,
            "sd": sd,
            "se": None if sd is None else sd / float(np.sqrt(len(arr))),
        }
    )
    if key is not None:
        out[key] = pooled
    best = pooled if pooled is not None else out["mean"]
    out.update(
        {
            "trial_value": trial_value,
            "test_f1_macro": test_f1,
            "test_minus_estimate": None if best is None else test_f1 - best,
            "how": how,
        }
    )
    return out


def model_input(backbone: str, sizes: Sequence[int], tta: bool, heads: Sequence[Head] = ()) -> str:
    """report.json's ``model_input``: what the exported model takes and does to it
    (``heads``: a blend's, whose members may read other sizes and TTA)."""
    resized = " and ".join(f"{s}x{s}" for s in sizes)
    text = (
        f"raw RGB images (B, H, W, 3), 0..255, any H and W (one size per batch); "
        f"resized inside to {resized} as PIL NEAREST, then {backbone}'s preprocess_input"
    )
    if len(sizes) > 1:
        text += "; the sizes' pooled features concatenated in that order"
    if tta:
        text += "; logits averaged with those of the resized image flipped left-right"
    other = sorted({s for h in heads for s in (h.sizes or ()) if s not in sizes})
    if any(h.sizes is not None for h in heads):
        text += (
            "; a blend: some members read their own sizes"
            + (f" (also {' and '.join(f'{s}x{s}' for s in other)})" if other else "")
            + " and TTA, and the members' probabilities are averaged by their weights"
        )
    return text


def head_section(spec: TrialSpec, val_tta_f1: float | None) -> dict[str, Any]:
    """report.json's ``head`` (a trial with more than the paper's parameters); the per-epoch
    validation F1 is of plain images, ``val_tta_f1`` that with tta (None without)."""
    import dataclasses

    return dataclasses.asdict(spec.head) | {
        "image_sizes": list(spec.image_sizes),
        "flip": spec.flip,
        "tta": spec.tta,
        "aug_views": spec.aug_views,
        "final_validation_f1_macro_tta": val_tta_f1,
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
            logger.warning("no PNG figure (%s)", exc)
    return written
