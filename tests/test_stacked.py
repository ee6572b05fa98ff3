"""The stacked trainer: M members in one model, each the head HeadTrainer trains alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clothopt.errors import InvalidArgument
from clothopt.folds import fold_rows, stratified_folds
from clothopt.model.head import HeadParams, HeadResult, HeadTrainer
from clothopt.model.stacked import Member, StackedTrainer, fold_members, seed_members
from clothopt.pipeline import batch_order

CLASSES = tuple(f"c{i}" for i in range(10))


def _features(n: int, d: int = 24, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Separable-ish features: class means plus noise, scaled like pooled CNN features."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, (len(CLASSES), d))
    y = rng.integers(0, len(CLASSES), n)
    x = np.abs(means[y] + rng.normal(0.0, 0.5, (n, d))) * 3.0
    return x.astype(np.float32), y.astype(np.int64)


_X, _Y = _features(300)
X_TR, Y_TR, X_VA, Y_VA = _X[:230], _Y[:230], _X[230:], _Y[230:]
SEEDS = [3, 11, 25]
WIDE = dict(hidden_layers=1, hidden_units=512, epochs=3, batch_size=32)
CONFIGS = {
    "paper": dict(learning_rate=1e-2, batch_size=32),
    "paper_dropout_sgd_cosine": dict(
        learning_rate=1e-2, batch_size=48, dropout=0.3, optimizer="sgd", schedule="cosine"
    ),
    "wide_adam": dict(
        WIDE, learning_rate=3e-3, dropout=0.4, weight_decay=1e-3, label_smoothing=0.1
    ),
    "wide_adamw_cosine": dict(
        WIDE, learning_rate=3e-3, dropout=0.5, optimizer="adamw", weight_decay=1e-2,
        label_smoothing=0.1, schedule="cosine", normalize="l2",
    ),
    "wide_sgd": dict(
        WIDE, learning_rate=1e-2, optimizer="sgd", weight_decay=1e-3, normalize="standardize"
    ),
    # 24 -> 16 -> 16 -> 10: narrowing kernels are held transposed, widening ones are not
    "narrowing_two_layers": dict(
        hidden_layers=2, hidden_units=16, epochs=3, batch_size=32, learning_rate=3e-3,
        dropout=0.2, weight_decay=1e-3,
    ),
}  # fmt: skip


def _assert_same(solo: HeadResult, member: HeadResult) -> None:
    """Equal within float tolerance: weights, per-epoch loss; the same predictions and F1."""
    assert len(solo.weights) == len(member.weights)
    for a, b in zip(solo.weights, member.weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(member.epoch_loss, solo.epoch_loss, rtol=1e-5)
    assert member.epoch_f1 == solo.epoch_f1
    np.testing.assert_array_equal(member.val_pred, solo.val_pred)
    assert member.diverged == solo.diverged


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_repeat_equals_its_solo_fit(name: str) -> None:
    params = HeadParams(**CONFIGS[name])  # type: ignore[arg-type]
    got = StackedTrainer().train(
        X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, seed_members(SEEDS), batch_order
    )
    solo = HeadTrainer()
    for k, seed in enumerate(SEEDS):
        alone = solo.train(X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, seed, batch_order)
        _assert_same(alone, got.members[k])
        assert got.members[k].val_metrics == alone.val_metrics
        np.testing.assert_array_equal(got.epoch_f1[:, k], alone.epoch_f1)
    # the members differ from one another (their own seeds, not one seed's copies)
    assert not np.array_equal(got.members[0].weights[0], got.members[1].weights[0])


FOLD_CONFIGS = [
    dict(learning_rate=1e-2, schedule="cosine", normalize="standardize", epochs=3),
    dict(WIDE, learning_rate=3e-3, dropout=0.4, optimizer="adamw", weight_decay=1e-2,
         schedule="cosine"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("config", "eager"),
    [(FOLD_CONFIGS[0], False), (FOLD_CONFIGS[1], False), (FOLD_CONFIGS[1], True)],
)
def test_folds_of_other_sizes_and_step_counts_equal_their_solo_fits(
    config: Any, eager: bool
) -> None:
    """K folds over train + validation, mirrored rows and views: sizes differ, so do the
    members' steps per epoch (padded, then skipped), cosine totals and standardize statistics;
    ``eager``: the keras.ops path other backends run (a skipped step draws no mask there)."""
    x, y = _features(301, seed=2)
    pool = np.concatenate([x, x[:, ::-1] * 0.9])  # a mirrored copy of every example
    folds = stratified_folds(y, 3, 7)
    params = HeadParams(**(config | {"batch_size": 100}))  # type: ignore[arg-type]
    trainer = StackedTrainer()
    members = fold_members(folds, 301, 5, 2)
    args = (pool, np.tile(y, 2), pool, y, CLASSES, params, members, batch_order)
    if eager:
        trainer.train(*args, val_views=2)
        stack = next(iter(trainer._stacks.values()))
        stack.graph, stack._epoch_fn = False, None
    got = trainer.train(*args, val_views=2)
    steps = {-(-len(fold_rows(tr, 301, 2)) // 100) for tr, _ in folds}
    assert len(steps) > 1  # the members really have different numbers of steps
    assert next(iter(trainer._stacks)).ragged
    solo = HeadTrainer()
    for k, (train, val) in enumerate(folds):
        rows = fold_rows(train, 301, 2)
        alone = solo.train(
            pool[rows], np.tile(y, 2)[rows], pool[fold_rows(val, 301, 2)], y[val], CLASSES,
            params, 5, batch_order, val_views=2,
        )  # fmt: skip
        _assert_same(alone, got.members[k])


@pytest.mark.parametrize("name", ["paper", "wide_adamw_cosine"])
def test_the_keras_ops_path_other_backends_run_equals_the_solo_fit(name: str) -> None:
    """The step batch by batch in eager keras.ops (what JAX and PyTorch run), here on
    TensorFlow, where each member's SeedGenerator draws its solo masks."""
    params = HeadParams(**CONFIGS[name])  # type: ignore[arg-type]
    trainer = StackedTrainer()
    trainer.train(X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, seed_members(SEEDS[:2]), batch_order)
    stack = next(iter(trainer._stacks.values()))
    stack.graph, stack._epoch_fn = False, None
    got = trainer.train(
        X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, seed_members(SEEDS[:2]), batch_order
    )
    for k, seed in enumerate(SEEDS[:2]):
        alone = HeadTrainer().train(X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, seed, batch_order)
        _assert_same(alone, got.members[k])


def test_a_reused_stack_is_reset_completely() -> None:
    params = HeadParams(**CONFIGS["wide_adamw_cosine"])  # type: ignore[arg-type]
    other = HeadParams(**(CONFIGS["wide_adamw_cosine"] | {"learning_rate": 3e-2}))  # type: ignore[arg-type]
    members = seed_members([4, 9])
    fresh = StackedTrainer().train(X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, members, batch_order)
    reused = StackedTrainer()
    reused.train(X_TR, Y_TR, X_VA, Y_VA, CLASSES, other, seed_members([1, 2]), batch_order)
    again = reused.train(X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, members, batch_order)
    assert len(reused._stacks) == 1  # one shape, one stack for both fits
    for a, b in zip(fresh.members, again.members, strict=True):
        assert a.epoch_f1 == b.epoch_f1 and a.epoch_loss == b.epoch_loss
        for wa, wb in zip(a.weights, b.weights, strict=True):
            np.testing.assert_array_equal(wa, wb)


def test_every_member_reports_every_epoch_and_a_pruner_can_stop_the_fit() -> None:
    params = HeadParams(learning_rate=1e-2, batch_size=32, epochs=4)
    seen: list[tuple[int, list[float]]] = []

    class Stop(Exception):
        pass

    def on_epoch(epoch: int, f1: np.ndarray) -> None:
        seen.append((epoch, f1.tolist()))
        if epoch == 1:
            raise Stop

    trainer = StackedTrainer()
    with pytest.raises(Stop):
        trainer.train(
            X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, seed_members(SEEDS), batch_order, on_epoch
        )
    assert [e for e, _ in seen] == [0, 1] and all(len(f1) == 3 for _, f1 in seen)
    full = trainer.train(
        X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, seed_members(SEEDS), batch_order, reports=1
    )
    assert full.epoch_f1.shape == (4, 3)
    np.testing.assert_array_equal(full.epoch_f1[:2], [f1 for _, f1 in seen])
    np.testing.assert_array_equal(full.f1, full.epoch_f1[-1])
    assert "per_class" in full.members[0].val_metrics  # the full report for the first only
    assert full.members[2].val_metrics == {"f1_macro": full.members[2].epoch_f1[-1]}


@pytest.mark.parametrize(
    "members",
    [[], [Member(1, train_rows=np.array([0, 230]))], [Member(1, val_examples=np.array([-1]))]],
)
def test_members_outside_the_data_are_refused(members: list[Member]) -> None:
    params = HeadParams(learning_rate=1e-2, batch_size=32)
    with pytest.raises(InvalidArgument, match="stacked: "):
        StackedTrainer().train(X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, members, batch_order)


def test_fused_adam_is_a_close_fit_not_the_same_one() -> None:
    """``fused_adam``: TensorFlow's Adam kernel rounds 1 - beta_2 its own way, so members
    stay near their solo fits (the same data, order, init, masks) without equalling them."""
    params = HeadParams(**CONFIGS["wide_adam"])  # type: ignore[arg-type]
    members = seed_members(SEEDS[:2])
    fused = StackedTrainer(fused_adam=True).train(
        X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, members, batch_order
    )
    for k, seed in enumerate(SEEDS[:2]):
        alone = HeadTrainer().train(X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, seed, batch_order)
        diff = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(alone.weights, fused.members[k].weights, strict=True)
        )
        assert 0 < diff < 1e-2
        assert abs(fused.members[k].epoch_f1[-1] - alone.epoch_f1[-1]) < 0.05


@settings(max_examples=25, deadline=None)
@given(
    seed=st.tuples(st.integers(0, 2**31 - 3), st.integers(0, 2**31 - 3)),
    rows=st.integers(1, 40),
    width=st.integers(1, 70),
)
def test_stacked_masks_draw_tensorflows_stateless_uniform_bit_for_bit(
    seed: tuple[int, int], rows: int, width: int
) -> None:
    """The in-graph Philox draw (every member's at once, fused by XLA) is the
    ``tf.random.stateless_uniform`` each member's dropout layer draws alone, for any seed and
    shape (a row count that leaves a partial group of 4 words included)."""
    import tensorflow as tf

    from clothopt.model._stack import _uniform_streams, philox_streams

    seeds = np.array([seed, (seed[1], seed[0])], np.int64)
    streams = tf.constant(philox_streams(seeds))
    draw = tf.function(_uniform_streams, jit_compile=True, autograph=False)
    for got in (draw(tf, streams, rows, width), _uniform_streams(tf, streams, rows, width)):
        for k, pair in enumerate(seeds):
            want = tf.random.stateless_uniform((rows, width), seed=tf.constant(pair, tf.int32))
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want))


@settings(max_examples=20, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 2**31 + 5), min_size=1, max_size=3),
    dim=st.integers(1, 40),
    hidden=st.sampled_from([0, 1, 2]),
)
def test_a_reset_draws_keras_glorot_init_bit_for_bit(
    seeds: list[int], dim: int, hidden: int
) -> None:
    """The reset's in-graph draw of every member's init is Keras's ``GlorotUniform(seed)``
    for each layer, as ``HeadTrainer`` draws it (seeds past 2**31 - 2 wrap as Keras's do)."""
    from clothopt.model._stack import Stack, StackShape, _glorot

    shape = StackShape(len(seeds), dim, 10, hidden, 7, False, False, False, "adam", False)
    stack = Stack(shape)
    stack.reset(seeds)
    dims = shape.dims
    for k, seed in enumerate(seeds):
        got = stack.member_weights()[k]
        for i in range(hidden + 1):
            want = _glorot(seed if i == hidden else seed + 1 + i, (dims[i], dims[i + 1]))
            np.testing.assert_array_equal(got[2 * i], want)
            assert not got[2 * i + 1].any()
