"""The reports' statistics against scipy (and a slow reference bootstrap), on generated samples."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as ss
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from clothopt.errors import InvalidArgument
from clothopt.reports.stats import (
    best_versus_next,
    holm,
    mean_se,
    paired_bootstrap_f1_diff,
    paired_t,
    pairwise_paired,
    separation_verdict,
    welch_t,
    wilcoxon_min_p,
    wilcoxon_signed_rank,
)

finite = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32)


@st.composite
def pairs(draw: st.DrawFn, min_size: int = 2, max_size: int = 30) -> tuple[list, list]:
    n = draw(st.integers(min_size, max_size))
    a = draw(st.lists(finite, min_size=n, max_size=n))
    b = draw(st.lists(finite, min_size=n, max_size=n))
    return a, b


@settings(max_examples=150, deadline=None)
@given(pairs())
def test_paired_t_equals_scipy(ab: tuple[list, list]) -> None:
    a, b = ab
    d = np.subtract(a, b, dtype=float)
    ours = paired_t(a, b)
    assert ours["n"] == len(a) and ours["df"] == len(a) - 1
    assert ours["mean_diff"] == pytest.approx(float(np.mean(d)), abs=1e-12)
    if np.std(d, ddof=1) < 1e-9 * max(1.0, abs(float(np.mean(d)))):
        return  # scipy's own answer is rounding noise here
    ref = ss.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert ours["t"] == pytest.approx(ref.statistic, rel=1e-7, abs=1e-9)
    assert ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-12)
    assert ours["ci_low"] == pytest.approx(ci.low, rel=1e-7, abs=1e-9)
    assert ours["ci_high"] == pytest.approx(ci.high, rel=1e-7, abs=1e-9)


def test_paired_t_of_constant_differences_and_too_few_pairs() -> None:
    r = paired_t([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert r["p_value"] == 0.0 and r["ci_low"] == r["ci_high"] == pytest.approx(0.5)
    assert paired_t([1.0, 2.0], [1.0, 2.0])["p_value"] == 1.0
    with pytest.raises(InvalidArgument):
        paired_t([1.0], [2.0])
    with pytest.raises(InvalidArgument):
        paired_t([1.0, 2.0], [2.0, 3.0, 4.0])


@settings(max_examples=150, deadline=None)
@given(pairs())
def test_welch_t_equals_scipy(ab: tuple[list, list]) -> None:
    a, b = ab
    b = b[: max(2, len(b) // 2)]  # unequal sizes too
    if np.var(a) < 1e-12 or np.var(b) < 1e-12:
        return
    ours, ref = welch_t(a, b), ss.ttest_ind(a, b, equal_var=False)
    assert ours["t"] == pytest.approx(ref.statistic, rel=1e-7, abs=1e-9)
    assert ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-12)


@st.composite
def distinct_pairs(draw: st.DrawFn) -> tuple[list, list]:
    # no zero differences and no ties in |a - b|: scipy's exact test applies
    n = draw(st.integers(1, 20))
    mags = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    signs = draw(st.lists(st.sampled_from([-1, 1]), min_size=n, max_size=n))
    b = draw(st.lists(finite, min_size=n, max_size=n))
    a = [bi + s * m / 1000 for bi, s, m in zip(b, signs, mags, strict=True)]
    return a, b


@settings(max_examples=150, deadline=None)
@given(distinct_pairs())
def test_wilcoxon_exact_equals_scipy(ab: tuple[list, list]) -> None:
    a, b = ab
    d = np.subtract(a, b)
    if len(np.unique(np.abs(d))) < len(d) or np.any(d == 0):
        return  # float rounding made a tie
    ours = wilcoxon_signed_rank(a, b)
    ref = ss.wilcoxon(d, method="exact")
    assert ours["method"] == "exact"
    assert ours["statistic"] == ref.statistic
    assert ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours["p_value"] >= wilcoxon_min_p(len(a)) - 1e-12


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-4, 4), min_size=3, max_size=40))
def test_wilcoxon_with_ties_equals_scipys_normal_approximation(d: list[int]) -> None:
    nonzero = [x for x in d if x != 0]
    if len(nonzero) < 2 or len(set(map(abs, nonzero))) == len(nonzero):
        return
    ours = wilcoxon_signed_rank(d, [0] * len(d))
    ref = ss.wilcoxon(d, zero_method="wilcox", method="approx", correction=False)
    assert ours["method"] == "normal approximation"
    assert ours["statistic"] == ref.statistic
    assert ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)


def test_wilcoxon_cannot_reach_05_with_five_pairs() -> None:
    assert wilcoxon_min_p(5) == 0.0625 and wilcoxon_min_p(6) == 0.03125
    all_up = wilcoxon_signed_rank([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert all_up["p_value"] == 0.0625


def test_holm_on_known_examples() -> None:
    # Holm (1979) step-down: sorted p times (m, m-1, ...), made monotone, capped at 1
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5]
    assert holm([0.2, 0.4, 0.9]) == pytest.approx([0.6, 0.8, 0.9])
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert holm([]) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_equals_statsmodels_formula(p: list[float]) -> None:
    m = len(p)
    order = np.argsort(p, kind="stable")
    ref = np.empty(m)
    ref[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * np.asarray(p)[order]))
    assert holm(p) == pytest.approx(ref.tolist())
    assert all(h >= x for h, x in zip(holm(p), p, strict=True))


def test_mean_se() -> None:
    mean, se, n = mean_se([0.8, 0.82, 0.84])
    assert (mean, n) == (pytest.approx(0.82), 3)
    assert se == pytest.approx(ss.sem([0.8, 0.82, 0.84]))
    assert mean_se([0.5]) == (0.5, None, 1)


def _reference_bootstrap(y, a, b, c, resamples, seed):  # type: ignore[no-untyped-def]
    idx = np.random.default_rng(seed).integers(0, len(y), (resamples, len(y)))
    labels = list(range(c))
    diffs = [
        f1_score(y[i], a[i], labels=labels, average="macro", zero_division=0)
        - f1_score(y[i], b[i], labels=labels, average="macro", zero_division=0)
        for i in idx
    ]
    return np.asarray(diffs)


@settings(max_examples=25, deadline=None)
@given(st.integers(5, 40), st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_paired_bootstrap_equals_a_slow_reference(n: int, c: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, a, b = (rng.integers(0, c, n) for _ in range(3))
    ours = paired_bootstrap_f1_diff(y, a, b, c, resamples=60, seed=seed)
    ref = _reference_bootstrap(y, a, b, c, 60, seed)
    labels = list(range(c))
    observed = f1_score(y, a, labels=labels, average="macro", zero_division=0) - f1_score(
        y, b, labels=labels, average="macro", zero_division=0
    )
    assert ours["diff"] == pytest.approx(observed, abs=1e-12)
    low, high = np.percentile(ref, [2.5, 97.5])
    assert ours["ci_low"] == pytest.approx(low, abs=1e-12)
    assert ours["ci_high"] == pytest.approx(high, abs=1e-12)
    p = 2 * min(np.mean(ref <= 0), np.mean(ref >= 0))
    assert ours["p_value"] == pytest.approx(min(1.0, max(p, 1 / 60)))


def test_paired_bootstrap_of_a_model_against_itself_and_a_clear_gap() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    same = paired_bootstrap_f1_diff(y, y, y, 4, resamples=200)
    assert same["diff"] == same["ci_low"] == same["ci_high"] == 0.0 and same["p_value"] == 1.0
    noisy = np.where(rng.random(300) < 0.4, rng.integers(0, 4, 300), y)
    gap = paired_bootstrap_f1_diff(y, y, noisy, 4, resamples=500)
    assert gap["ci_low"] > 0 and gap["p_value"] == pytest.approx(1 / 500)
    with pytest.raises(InvalidArgument):
        paired_bootstrap_f1_diff(y, y, y[:-1], 4)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 8),
    st.integers(2, 4),
    st.integers(0, 2**31 - 1),
)
def test_pairwise_paired_equals_scipy_with_holm(n: int, groups: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = {f"g{i}": {s: float(rng.normal(i * 0.3, 1.0)) for s in range(n)} for i in range(groups)}
    rows = pairwise_paired(data)
    assert len(rows) == groups * (groups - 1) // 2
    means = {g: np.mean(list(v.values())) for g, v in data.items()}
    for r in rows:
        assert means[r["a"]] >= means[r["b"]]  # A is the one ahead
        a = [data[r["a"]][s] for s in range(n)]
        b = [data[r["b"]][s] for s in range(n)]
        ref = ss.ttest_rel(a, b)
        assert r["p_t"] == pytest.approx(ref.pvalue, rel=1e-7)
        assert r["ci_low"] == pytest.approx(ref.confidence_interval().low, rel=1e-7, abs=1e-12)
        assert r["p_wilcoxon"] == pytest.approx(ss.wilcoxon(a, b).pvalue, rel=1e-7)
        assert r["a_ahead"] == sum(x > y for x, y in zip(a, b, strict=True))
    assert [r["p_holm_t"] for r in rows] == pytest.approx(holm([r["p_t"] for r in rows]))
    assert [r["separated"] for r in rows] == [r["p_holm_t"] < 0.05 for r in rows]


def test_pairwise_paired_pairs_on_shared_seeds_and_says_when_n_is_too_small() -> None:
    data = {
        "a": {0: 0.9, 1: 0.8, 2: 0.85, 3: 0.9, 4: 0.7},
        "b": {0: 0.5, 1: 0.41, 2: 0.43, 3: 0.54, 4: 0.27, 9: 0.99},
    }
    (row,) = pairwise_paired(data)
    assert (row["a"], row["b"], row["n"]) == ("a", "b", 5)  # seed 9 has no partner
    assert row["a_ahead"] == 5 and row["p_wilcoxon"] == 0.0625
    assert "Wilcoxon cannot reach p < 0.05 with n=5" in row["note"]
    assert row["separated"]  # the paired t can: the differences barely vary
    (one,) = pairwise_paired({"a": {0: 1.0}, "b": {0: 0.0}})
    assert one["p_t"] is None and not one["separated"] and "too few" in one["note"]


def test_separation_verdict_ranks_only_separated_pairs() -> None:
    rows = pairwise_paired(
        {
            "gp": {s: 0.86 + 0.001 * s for s in range(6)},
            "tpe": {s: 0.85 + 0.03 * (-1) ** s for s in range(6)},
            "random": {s: 0.80 + 0.002 * s for s in range(6)},
        }
    )
    text = separation_verdict(rows, "samplers", "at this budget")
    assert "gp ahead of random" in text and "tpe ahead of random" in text
    assert "Not separated (indistinguishable at this budget): gp vs tpe" in text
    none = separation_verdict(
        pairwise_paired({"a": {0: 1.0, 1: 0.0}, "b": {0: 0.0, 1: 1.0}}), "samplers", "here"
    )
    assert "indistinguishable here; no ranking is claimed" in none


def test_best_versus_next_pairs_same_protocols_else_welch() -> None:
    best = [0.80, 0.83, 0.81, 0.84]
    close = [0.81, 0.82, 0.80, 0.845]
    far = [0.70, 0.74, 0.70, 0.73]
    proto = {"repeats": 1, "folds": 4}
    rows, verdict = best_versus_next([(1, best, proto), (2, close, proto), (3, far, proto)])
    assert rows[0]["p_value"] == pytest.approx(ss.ttest_rel(best, close).pvalue)
    assert rows[1]["distinguishable"]
    assert verdict.startswith("the top 2 trials are within noise of the best (paired t")
    rows, verdict = best_versus_next([(1, best, proto), (2, close, {"repeats": 4, "folds": 1})])
    assert rows[0]["test"] == "Welch t"
    assert rows[0]["p_value"] == pytest.approx(ss.ttest_ind(best, close, equal_var=False).pvalue)
    assert verdict == "the top 2 trials are within noise of each other (Welch t, p > 0.05)"
    _, verdict = best_versus_next([(1, best, proto), (3, far, proto)])
    assert verdict.startswith("the best trial is distinguishable from the next (paired t, p = ")
    assert best_versus_next([(1, best, proto)]) == ([], "")
