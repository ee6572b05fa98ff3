"""Repeated evaluation: every member of a trial equal to its solo fit, whichever way it trains."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from clothopt.model.head import HeadResult, HeadTrainer
from clothopt.model.stacked import StackedTrainer
from clothopt.pipeline import HeadInput
from clothopt.protocol import Protocol, evaluate, protocol_members, train_member
from clothopt.trial_spec import TrialSpec

CLASSES = tuple(f"c{i}" for i in range(10))
N_TRAIN, N_VAL, DIM = 150, 61, 24
PARAMS = {
    "image_size": 32, "batch_size": 16, "learning_rate": 0.01, "flip": True, "tta": True,
    "hidden_layers": 1, "hidden_units": 32, "dropout": 0.3, "normalize": "standardize",
}  # fmt: skip


def _inputs(seed: int = 4) -> dict[str, HeadInput]:
    """The four layouts ``protocol_inputs`` builds with flip and TTA, from synthetic features:
    each split's plain rows then their mirrored ones (a view when scored, rows when trained)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, (len(CLASSES), DIM))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, len(CLASSES), n)
        x = np.abs(means[y] + rng.normal(0.0, 0.7, (n, DIM))) * 3.0
        both = np.concatenate([x, x * rng.uniform(0.9, 1.1, x.shape)])
        return both.astype(np.float32), y

    (xt, yt), (xv, yv) = split(N_TRAIN), split(N_VAL)
    return {
        "train": HeadInput(xt, np.tile(yt, 2), 1, 0.0, True, 0, blocks=2),
        "validation": HeadInput(xv, yv, 2, 0.0, True, 0, blocks=2),
        "train_views": HeadInput(xt, yt, 2, 0.0, True, 0, blocks=2),
        "validation_train": HeadInput(xv, np.tile(yv, 2), 1, 0.0, True, 0, blocks=2),
    }


def _spec(epochs: int = 3) -> TrialSpec:
    return TrialSpec.from_params(PARAMS, backbone="mobilenet_025", study_seed=0, epochs=epochs)


def _assert_same(solo: HeadResult, member: HeadResult) -> None:
    """Equal within float tolerance: weights and loss; the same predictions and F1."""
    for a, b in zip(solo.weights, member.weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(member.epoch_loss, solo.epoch_loss, rtol=1e-5)
    assert member.epoch_f1 == solo.epoch_f1
    np.testing.assert_array_equal(member.val_pred, solo.val_pred)


def _members(trainer: StackedTrainer) -> list[int]:
    return [shape.members for shape in trainer._stacks]


@pytest.mark.parametrize("protocol", [Protocol(3, 0), Protocol(1, 3), Protocol(2, 3)])
def test_unwatched_every_member_trains_in_one_stacked_fit_each_its_solo_fit(
    protocol: Protocol,
) -> None:
    spec, inputs = _spec(), _inputs()
    solo, stacked = HeadTrainer(), StackedTrainer()
    got = evaluate(spec, inputs, CLASSES, protocol, 0, (solo, stacked))
    assert _members(stacked) == [protocol.members]  # one stacked fit of them all
    assert not solo._models  # nobody trained alone
    assert len(got.runs) == len(got.results) == protocol.members
    train, scored, members = protocol_members(spec, inputs, protocol, 0, 0)
    alone = HeadTrainer()
    pred = []
    for k, member in enumerate(members):
        fit = train_member(alone, spec, train, scored, member, CLASSES, None)
        _assert_same(fit, got.results[k])
        assert got.runs[k] == fit.epoch_f1[-1]
        pred.append(fit.val_pred)
    np.testing.assert_array_equal(got.y_pred, np.concatenate(pred))
    assert got.mean == pytest.approx(np.mean(got.runs))


def test_watched_the_first_member_trains_alone_and_can_stop_the_evaluation() -> None:
    spec, inputs, protocol = _spec(), _inputs(), Protocol(2, 3)
    solo, stacked = HeadTrainer(), StackedTrainer()
    seen: list[tuple[int, float]] = []
    watched = evaluate(
        spec, inputs, CLASSES, protocol, 0, (solo, stacked),
        on_epoch=lambda e, f1: seen.append((e, f1)),
    )  # fmt: skip
    assert solo._models and _members(stacked) == [protocol.members - 1]
    assert seen == list(enumerate(watched.results[0].epoch_f1))  # the first member's curve
    # both ways give every member the same fit (within float tolerance)
    unwatched = evaluate(spec, inputs, CLASSES, protocol, 0, (HeadTrainer(), StackedTrainer()))
    assert watched.runs == unwatched.runs
    for a, b in zip(watched.results, unwatched.results, strict=True):
        _assert_same(a, b)

    class Stop(Exception):
        pass

    def stop(epoch: int, f1: float) -> Any:
        raise Stop

    fresh = StackedTrainer()
    with pytest.raises(Stop):
        evaluate(spec, inputs, CLASSES, protocol, 0, (HeadTrainer(), fresh), on_epoch=stop)
    assert not fresh._stacks  # stopped after the first member's first epoch, nothing stacked
