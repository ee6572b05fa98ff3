"""Statistics of the reports (the one owner): paired t, Welch t, Wilcoxon signed-rank, McNemar,
Holm's adjustment, the paired bootstrap of a macro-F1 difference, best-so-far curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clothopt.errors import InvalidArgument

__all__ = [
    "ALPHA",
    "TOLERANCE",
    "best_so_far",
    "best_versus_next",
    "first_within",
    "holm",
    "mcnemar",
    "mean_or_none",
    "mean_se",
    "paired_bootstrap_f1_diff",
    "paired_t",
    "pairwise_paired",
    "pct",
    "sd_or_none",
    "separation_verdict",
    "step_curve_mean",
    "welch_t",
    "wilcoxon_min_p",
    "wilcoxon_signed_rank",
]

ALPHA = 0.05  # the level every report calls "significant" / "distinguishable"

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


def mean_se(values: Sequence[float]) -> tuple[float, float | None, int]:
    """Mean, standard error of the mean (sample sd / sqrt n; None below two values), n."""
    x = np.asarray(values, dtype=float)
    if not len(x):
        raise InvalidArgument("no values to average")
    se = float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None
    return float(np.mean(x)), se, len(x)


def paired_t(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired t-test of mean(a - b) = 0, two-sided, with the t interval of the mean difference.

    Needs n >= 2 pairs. Differences all equal: sd 0, the interval is that one value and p is 0
    (or 1 when they are all 0), as the limit of t.
    """
    from scipy.stats import t as t_dist

    if len(a) != len(b) or len(a) < 2:
        raise InvalidArgument(
            f"a paired t-test needs n >= 2 pairs of equal length: {len(a)}, {len(b)}"
        )
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    se, df = sd / np.sqrt(n), n - 1
    if se == 0.0:
        stat = 0.0 if mean == 0.0 else float(np.sign(mean) * np.inf)
        p = 1.0 if mean == 0.0 else 0.0
        low = high = mean
    else:
        stat = mean / se
        p = float(2 * t_dist.sf(abs(stat), df))
        half = float(t_dist.ppf(0.5 + confidence / 2, df)) * se
        low, high = mean - half, mean + half
    return {
        "n": n,
        "mean_diff": mean,
        "sd_diff": sd,
        "t": float(stat),
        "df": df,
        "p_value": min(p, 1.0),
        "ci_low": float(low),
        "ci_high": float(high),
    }


def welch_t(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Welch's two-sample t-test (unequal variances), two-sided; each side needs n >= 2."""
    from scipy.stats import t as t_dist

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        raise InvalidArgument(f"Welch's t-test needs two values a side: {len(x)}, {len(y)}")
    vx, vy = np.var(x, ddof=1) / len(x), np.var(y, ddof=1) / len(y)
    mean = float(np.mean(x) - np.mean(y))
    if vx + vy == 0.0:
        return {
            "mean_diff": mean,
            "t": 0.0 if mean == 0 else float(np.sign(mean) * np.inf),
            "df": float(len(x) + len(y) - 2),
            "p_value": 1.0 if mean == 0 else 0.0,
        }
    stat = mean / np.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return {
        "mean_diff": mean,
        "t": float(stat),
        "df": float(df),
        "p_value": min(float(2 * t_dist.sf(abs(stat), df)), 1.0),
    }


def wilcoxon_min_p(n: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give with n non-zero pairs:
    every difference of one sign, 2 / 2**n (n = 5 gives 0.0625: it can never reach 0.05)."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else 1.0


def _signed_rank_exact_cdf(n: int) -> np.ndarray:
    """Counts of each rank sum W+ = 0..n(n+1)/2 over the 2**n sign patterns, divided by 2**n."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return counts / 2.0**n


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Wilcoxon's signed-rank test of a - b, two-sided; zero differences are dropped (Wilcoxon).

    Exact null distribution when no differences tie in absolute value and n <= 50; else the
    normal approximation with the tie correction of the variance, no continuity correction (as
    ``scipy.stats.wilcoxon(..., method="approx", correction=False)``). ``statistic`` is the
    smaller rank sum. With fewer than 1 non-zero difference, p is 1.
    """
    from scipy.stats import norm, rankdata

    if len(a) != len(b):
        raise InvalidArgument(f"paired samples of different lengths: {len(a)}, {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return {"n": 0, "statistic": 0.0, "p_value": 1.0, "method": "no non-zero difference"}
    ranks = rankdata(np.abs(d))
    w_plus = float(np.sum(ranks[d > 0]))
    total = n * (n + 1) / 2
    statistic = min(w_plus, total - w_plus)
    ties = len(np.unique(np.abs(d))) < n
    if not ties and n <= 50:
        pmf = _signed_rank_exact_cdf(n)
        p = float(2 * np.sum(pmf[: round(statistic) + 1]))
        method = "exact"
    else:
        _, counts = np.unique(ranks, return_counts=True)
        var = n * (n + 1) * (2 * n + 1) / 24 - np.sum(counts**3 - counts) / 48
        z = (statistic - total / 2) / np.sqrt(var) if var > 0 else 0.0
        p = float(2 * norm.sf(abs(z)))
        method = "normal approximation"
    return {"n": n, "statistic": statistic, "p_value": min(p, 1.0), "method": method}


def paired_bootstrap_f1_diff(
    y_true: Sequence[int] | np.ndarray,
    pred_a: Sequence[int] | np.ndarray,
    pred_b: Sequence[int] | np.ndarray,
    num_classes: int,
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Macro-F1(A) - macro-F1(B) on the same test images, with its paired percentile bootstrap.

    Resample ``b`` takes row ``b`` of ``default_rng(seed).integers(0, n, (resamples, n))`` for
    both models (the images are paired), so the interval reflects only how the two disagree.
    ``p_value``: two-sided bootstrap p of "no difference", ``2 * min(P(diff <= 0), P(diff >=
    0))`` over the resamples (at least 1 / resamples), for Holm's adjustment.
    """
    from clothopt.metrics import _class_f1

    y = np.asarray(y_true, dtype=np.int64).ravel()
    pa = np.asarray(pred_a, dtype=np.int64).ravel()
    pb = np.asarray(pred_b, dtype=np.int64).ravel()
    if not len(y) == len(pa) == len(pb) or len(y) == 0:
        raise InvalidArgument(f"lengths differ or are 0: labels {len(y)}, A {len(pa)}, B {len(pb)}")
    if resamples < 1 or not 0 < confidence < 1:
        raise InvalidArgument(f"bad resamples {resamples} or confidence {confidence}")
    n, c = len(y), num_classes

    def f1s(codes: np.ndarray, idx: np.ndarray) -> np.ndarray:
        b = len(idx)
        cells = codes[idx] + (np.arange(b) * c * c)[:, None]
        cm = np.bincount(cells.ravel(), minlength=b * c * c).reshape(b, c, c)
        return _class_f1(cm).mean(axis=1)

    codes_a, codes_b = y * c + pa, y * c + pb
    observed = float(f1s(codes_a, np.arange(n)[None])[0] - f1s(codes_b, np.arange(n)[None])[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)
    diffs = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, (min(chunk, resamples - start), n))
        diffs.append(f1s(codes_a, idx) - f1s(codes_b, idx))
    d = np.concatenate(diffs)
    alpha = 100 * (1 - confidence) / 2
    low, high = np.percentile(d, [alpha, 100 - alpha])
    p = 2 * min(np.mean(d <= 0), np.mean(d >= 0))
    return {
        "diff": observed,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float(min(1.0, max(p, 1.0 / resamples))),
        "resamples": resamples,
        "seed": seed,
    }


def pairwise_paired(
    groups: Mapping[str, Mapping[Any, float]], alpha: float = ALPHA
) -> list[dict[str, Any]]:
    """Every pair of groups compared on the keys (seeds) they share: the mean difference A - B
    with its 95% t interval, the paired t-test and Wilcoxon's signed-rank test, each
    Holm-adjusted over all pairs. Groups are ordered by their mean, highest first, so A is the
    one ahead. ``separated``: the Holm-adjusted paired t gives p < ``alpha``.

    ``note`` says when n is too small for a test to reach p < alpha at all: the paired t needs
    2 pairs; the exact Wilcoxon's smallest p is 2 / 2**n (times the number of pairs, for Holm).
    """
    means = {g: float(np.mean(list(v.values()))) for g, v in groups.items() if len(v)}
    names = sorted(means, key=lambda g: -means[g])
    rows: list[dict[str, Any]] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            keys = sorted(set(groups[a]) & set(groups[b]), key=str)
            xa, xb = [groups[a][k] for k in keys], [groups[b][k] for k in keys]
            row: dict[str, Any] = {"a": a, "b": b, "n": len(keys)}
            row["mean_diff"] = float(np.mean(np.subtract(xa, xb))) if keys else None
            t = paired_t(xa, xb) if len(keys) >= 2 else None
            w = wilcoxon_signed_rank(xa, xb) if keys else None
            row |= {
                "ci_low": t and t["ci_low"],
                "ci_high": t and t["ci_high"],
                "t": t and t["t"],
                "p_t": t and t["p_value"],
                "wilcoxon_w": w and w["statistic"],
                "p_wilcoxon": w and w["p_value"],
                "a_ahead": sum(x > y for x, y in zip(xa, xb, strict=True)),
            }
            rows.append(row)
    m = len(rows)
    for key in ("p_t", "p_wilcoxon"):
        tested = [r for r in rows if r[key] is not None]
        for r, adj in zip(tested, holm([r[key] for r in tested]), strict=True):
            r[key.replace("p_", "p_holm_")] = adj
        for r in rows:
            r.setdefault(key.replace("p_", "p_holm_"), None)
    for r in rows:
        r["separated"] = r["p_holm_t"] is not None and r["p_holm_t"] < alpha
        notes = []
        if r["n"] < 2:
            notes.append(f"n={r['n']}: too few paired seeds for a t-test")
        if m * wilcoxon_min_p(r["n"]) >= alpha:
            notes.append(
                f"Wilcoxon cannot reach p < {alpha} with n={r['n']}"
                + (f" over {m} pairs (Holm)" if m > 1 and wilcoxon_min_p(r["n"]) < alpha else "")
                + f": its smallest p is {wilcoxon_min_p(r['n']):.4g}"
            )
        r["note"] = "; ".join(notes)
    return rows


def separation_verdict(rows: Sequence[Mapping[str, Any]], what: str, budget: str) -> str:
    """One paragraph: which groups the corrected tests separate, and which they do not."""
    if not rows:
        return f"Fewer than two {what} to compare."
    sep = [r for r in rows if r["separated"]]
    if not sep:
        return (
            f"No pair of {what} is separated by the Holm-corrected paired t-test (p >= "
            f"{ALPHA}): they are indistinguishable {budget}; no ranking is claimed."
        )
    ahead = "; ".join(
        f"{r['a']} ahead of {r['b']} by {r['mean_diff']:.2f} (95% CI {r['ci_low']:.2f} to "
        f"{r['ci_high']:.2f}, Holm p = {r['p_holm_t']:.3g})"
        for r in sep
    )
    rest = [f"{r['a']} vs {r['b']}" for r in rows if not r["separated"]]
    tail = f" Not separated (indistinguishable {budget}): {', '.join(rest)}." if rest else ""
    return f"Separated by the Holm-corrected paired t-test: {ahead}.{tail}"


def best_versus_next(
    entries: Sequence[tuple[Any, Sequence[float], Any]], alpha: float = ALPHA
) -> tuple[list[dict[str, Any]], str]:
    """The first entry (the best trial) against each of the others, on their member scores.

    ``entries``: (label, member scores, pairing), best first. ``pairing`` says which draws the
    members share (the same folds, the same seeds): equal and not None, with as many members,
    the members pair up, so a paired t-test over them; otherwise Welch's t-test. Returns the
    rows and a one-line verdict on how many of the top entries lie within noise of the best
    (each test uncorrected, p >= alpha: the stricter claim).
    """
    if len(entries) < 2:
        return [], ""
    label0, runs0, proto0 = entries[0]
    rows = []
    for label, runs, proto in entries[1:]:
        row: dict[str, Any] = {"best": label0, "other": label, "n": len(runs)}
        paired = proto is not None and proto == proto0 and len(runs) == len(runs0) >= 2
        if paired:
            r = paired_t(runs0, runs)
            row |= {"test": "paired t", "diff": r["mean_diff"], "p_value": r["p_value"]}
        elif len(runs) >= 2 and len(runs0) >= 2:
            r = welch_t(runs0, runs)
            row |= {"test": "Welch t", "diff": r["mean_diff"], "p_value": r["p_value"]}
        else:
            row |= {"test": "none (one member)", "diff": None, "p_value": None}
        row["distinguishable"] = row["p_value"] is not None and row["p_value"] < alpha
        rows.append(row)
    tests = sorted({r["test"] for r in rows})
    within = 1
    for r in rows:
        if r["p_value"] is None or r["distinguishable"]:
            break
        within += 1
    how = ", ".join(tests)
    if within == 1:
        first = rows[0]
        verdict = (
            f"the best trial is distinguishable from the next ({how}, p = "
            f"{first['p_value']:.3g} < {alpha})"
            if first["p_value"] is not None
            else "the best trial and the next cannot be compared (one member each)"
        )
    elif within == len(entries):
        verdict = f"the top {within} trials are within noise of each other ({how}, p > {alpha})"
    else:
        verdict = (
            f"the top {within} trials are within noise of the best ({how}, p > {alpha}); "
            f"the next is distinguishable"
        )
    return rows, verdict
