"""Statistics of the comparison reports: McNemar with Holm's adjustment, best-so-far curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clothopt.errors import InvalidArgument

__all__ = [
    "TOLERANCE",
    "best_so_far",
    "first_within",
    "holm",
    "mcnemar",
    "mean_or_none",
    "pct",
    "sd_or_none",
    "step_curve_mean",
]

TOLERANCE = 0.005  # "within 0.5 points" of the grid's best, on the 0-1 F1 scale


def pct(value: float | None) -> float | None:
    """A 0-1 figure as a percentage (None stays None)."""
    return None if value is None else 100.0 * float(value)


def mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def sd_or_none(values: Sequence[float]) -> float | None:
    """Sample standard deviation; None below two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def mcnemar(
    y_true: Sequence[int] | np.ndarray,
    pred_a: Sequence[int] | np.ndarray,
    pred_b: Sequence[int] | np.ndarray,
    exact: bool | None = None,
) -> dict[str, Any]:
    """McNemar's test on two classifiers' predictions for the same images, in the same order.

    Only the discordant images carry information: ``a_only`` (A right, B wrong) and ``b_only``.
    ``exact=None`` picks the exact binomial test when they number fewer than 25 (where the
    chi-square approximation is poor), else chi-square with continuity correction; both as
    statsmodels' ``mcnemar(table, exact=..., correction=True)`` computes them. It tests
    whether the two error rates (accuracies) differ, not macro-F1.
    """
    from scipy.stats import binomtest, chi2

    y, a, b = (np.asarray(v).ravel() for v in (y_true, pred_a, pred_b))
    if not len(y) == len(a) == len(b):
        raise InvalidArgument(f"lengths differ: labels {len(y)}, A {len(a)}, B {len(b)}")
    right_a, right_b = a == y, b == y
    a_only = int(np.sum(right_a & ~right_b))
    b_only = int(np.sum(~right_a & right_b))
    discordant = a_only + b_only
    use_exact = discordant < 25 if exact is None else exact
    if use_exact:
        statistic = float(min(a_only, b_only))
        p_value = float(binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0
    elif discordant == 0:
        statistic, p_value = 0.0, 1.0  # no discordant pair: no evidence of any difference
    else:
        statistic = (abs(a_only - b_only) - 1) ** 2 / discordant
        p_value = float(chi2.sf(statistic, df=1))
    return {
        "both_correct": int(np.sum(right_a & right_b)),
        "a_only": a_only,
        "b_only": b_only,
        "both_wrong": int(np.sum(~right_a & ~right_b)),
        "method": "exact binomial" if use_exact else "chi-square, continuity corrected",
        "statistic": float(statistic),
        "p_value": min(p_value, 1.0),
    }


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
