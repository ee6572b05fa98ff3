"""clothopt.metrics: the per-epoch macro-F1 is sklearn's, the same float."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clothopt.metrics import classification_metrics, macro_f1


@st.composite
def _labels(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    c = draw(st.integers(1, 12))
    n = draw(st.integers(1, 300))
    # few distinct values often, so some classes are never true or never predicted
    used = draw(st.integers(1, c))
    y = draw(st.lists(st.integers(0, used - 1), min_size=n, max_size=n))
    p = draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
    return np.array(y), np.array(p), c


@settings(max_examples=300, deadline=None)
@given(_labels())
def test_macro_f1_is_sklearns_bit_for_bit(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    y, p, c = case
    want = classification_metrics(y, p, [f"c{i}" for i in range(c)])["f1_macro"]
    assert macro_f1(y, p, c) == want  # equal floats, not approximately


def test_macro_f1_counts_a_class_nobody_saw_as_zero() -> None:
    # class 2 is neither true nor predicted: sklearn (labels fixed) averages its 0 in
    assert macro_f1(np.array([0, 1]), np.array([0, 1]), 3) == pytest.approx(2 / 3)


def test_macro_f1_refuses_mismatched_or_empty_labels() -> None:
    with pytest.raises(ValueError, match="as many predictions"):
        macro_f1(np.array([0, 1]), np.array([0]), 2)
    with pytest.raises(ValueError, match="as many predictions"):
        macro_f1(np.array([], int), np.array([], int), 2)
