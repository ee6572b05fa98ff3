"""Stratified K-fold splits over a labelled pool (train + validation; the test split never
enters), deterministic from a seed, and the feature rows a fold's examples own.

Every example lands in exactly one validation fold; within each class the folds' shares differ
by at most one example, and the folds' sizes by at most one overall (each class's run of folds
starts where the previous class's ended, so remainders spread instead of piling on fold 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clothopt.errors import InvalidArgument

__all__ = ["Fold", "fold_rows", "stratified_folds"]

Fold = tuple[np.ndarray, np.ndarray]  # (training example indices, validation example indices)


def stratified_folds(y: Sequence[int] | np.ndarray, k: int, seed: int) -> list[Fold]:
    """``k`` (train, validation) splits of the examples labelled ``y``, both index arrays
    sorted; the same ``(y, k, seed)`` always gives the same folds.

    ``y`` holds the labels of the pool, e.g. train then validation concatenated. A class with
    fewer than ``k`` examples is missing from some validation folds (allowed: the macro-F1 of
    such a fold averages the classes it has).
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise InvalidArgument(f"folds: labels must be one-dimensional (got shape {y.shape})")
    if not 2 <= k <= len(y):
        raise InvalidArgument(f"folds: k must be in [2, {len(y)}] for {len(y)} examples (got {k})")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), np.int64)
    start = 0
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        members = members[rng.permutation(len(members))]
        fold_of[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)]


def fold_rows(examples: np.ndarray, n: int, copies: int = 1) -> np.ndarray:
    """The feature rows of ``examples`` in a matrix that stacks ``copies`` blocks of the same
    ``n`` examples (plain rows, then mirrored ones, as ``objective.head_inputs`` lays out a
    training split with ``flip``): every copy of the first example set, block by block."""
    examples = np.asarray(examples, np.int64)
    if copies < 1:
        raise InvalidArgument(f"folds: copies must be >= 1 (got {copies})")
    if len(examples) and (examples.min() < 0 or examples.max() >= n):
        raise InvalidArgument(f"folds: example indices must lie in [0, {n})")
    return np.concatenate([examples + c * n for c in range(copies)])
