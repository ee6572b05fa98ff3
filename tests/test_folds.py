"""Stratified K-fold splits over train + validation: a partition, balanced per class, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clothopt.errors import InvalidArgument
from clothopt.folds import fold_rows, stratified_folds


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=2, max_size=120),
    k=st.integers(2, 7),
    seed=st.integers(0, 2**32 - 1),
)
def test_folds_partition_the_pool_and_balance_every_class(
    labels: list[int], k: int, seed: int
) -> None:
    y = np.asarray(labels)
    k = min(k, len(y))
    folds = stratified_folds(y, k, seed)
    assert len(folds) == k
    vals = np.concatenate([va for _, va in folds])
    assert sorted(vals.tolist()) == list(range(len(y)))  # each example validates exactly once
    for train, val in folds:
        assert np.intersect1d(train, val).size == 0
        assert len(train) + len(val) == len(y)
        assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted indices
    sizes = [len(va) for _, va in folds]
    assert max(sizes) - min(sizes) <= 1
    for label in np.unique(y):
        per_fold = [int(np.sum(y[va] == label)) for _, va in folds]
        assert max(per_fold) - min(per_fold) <= 1  # stratified


def test_folds_are_a_function_of_labels_k_and_seed() -> None:
    y = np.repeat(np.arange(10), 37)
    a, b = stratified_folds(y, 5, 3), stratified_folds(y, 5, 3)
    for (ta, va), (tb, vb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(va, vb)
    other = stratified_folds(y, 5, 4)
    assert any(not np.array_equal(va, vo) for (_, va), (_, vo) in zip(a, other, strict=True))


@pytest.mark.parametrize("k", [0, 1, 11])
def test_a_k_the_pool_cannot_split_into_is_refused(k: int) -> None:
    with pytest.raises(InvalidArgument, match="k must be"):
        stratified_folds(np.arange(10) % 3, k, 0)


def test_fold_rows_take_every_copy_of_the_examples() -> None:
    """Plain rows then mirrored rows, as head_inputs lays out a flipped training split."""
    np.testing.assert_array_equal(fold_rows(np.array([0, 3]), 5), [0, 3])
    np.testing.assert_array_equal(fold_rows(np.array([0, 3]), 5, copies=2), [0, 3, 5, 8])
    with pytest.raises(InvalidArgument):
        fold_rows(np.array([5]), 5)
