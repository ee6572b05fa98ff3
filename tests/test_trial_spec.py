"""The trial specification: every point a space can produce parses, the limits hold, round trips."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clothopt.errors import InvalidArgument
from clothopt.spaces import BUILTIN_SPACES, Param, SearchSpace, load_space
from clothopt.trial_spec import (
    PAPER_PARAMS,
    PARAMS,
    HeadParams,
    TrialSpec,
    check_value,
    image_sizes,
    paper_point,
    parse_sizes,
    trial_seed,
)


@dataclasses.dataclass(frozen=True)
class Study:
    backbone: str = "mobilenet_025"
    seed: int = 0
    epochs: int = 2


SPACES = {name: load_space(name) for name in BUILTIN_SPACES}


def _value(p: Param) -> st.SearchStrategy[Any]:
    if p.choices is not None:
        return st.sampled_from(p.choices)
    assert p.low is not None and p.high is not None
    if p.kind.type is int:
        step = int(p.step or 1)
        return st.integers(0, (int(p.high) - int(p.low)) // step).map(
            lambda k: int(p.low) + k * step
        )  # type: ignore[arg-type]
    return st.floats(p.low, p.high, allow_nan=False)


@st.composite
def points(draw: st.DrawFn, space: SearchSpace) -> dict[str, Any]:
    """A point the space can give a trial: conditional parameters only where they apply."""
    out: dict[str, Any] = {}
    for name, p in space.params.items():
        if p.active(out):
            out[name] = draw(_value(p))
    return out


@pytest.mark.parametrize("name", BUILTIN_SPACES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_point_of_a_space_parses_and_round_trips(name: str, data: st.DataObject) -> None:
    point = data.draw(points(SPACES[name]))
    spec = TrialSpec.of(point, Study())
    assert spec.to_params() == point
    assert TrialSpec.of(spec.to_params(), Study()) == spec
    assert spec.seed == trial_seed(0, point) and spec.image_sizes == image_sizes(point)
    assert spec.flip == point.get("flip", False) and spec.tta == point.get("tta", False)
    assert spec.head.epochs == point.get("epochs", 2)
    assert spec.head.learning_rate == point["learning_rate"]
    for field in dataclasses.fields(HeadParams):
        if field.name in point:
            assert getattr(spec.head, field.name) == point[field.name]
    # the paper's three come first, as report.json lists them
    keys = list(spec.to_params())
    assert keys[: len(set(keys) & set(PAPER_PARAMS))] == [k for k in PAPER_PARAMS if k in keys]
    assert spec.is_paper == (set(point) == set(PAPER_PARAMS))


def test_a_grid_point_is_the_papers_model_and_the_seed_ignores_order() -> None:
    for point in SPACES["paper"].grid():
        spec = TrialSpec.of(dict(reversed(list(point.items()))), Study(seed=3))
        assert spec.is_paper and spec.head == HeadParams(
            learning_rate=point["learning_rate"], batch_size=point["batch_size"]
        )
        assert spec.seed == trial_seed(3, point) and paper_point(point) is not None
        assert spec.backbone == "mobilenet_025"


def _outside(limits: tuple[float, float], is_int: bool) -> st.SearchStrategy[Any]:
    lo, hi = limits
    below = st.floats(max_value=lo, exclude_max=True, allow_nan=False, allow_infinity=False)
    above = st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False)
    if is_int:
        return st.one_of(st.integers(max_value=int(lo) - 1), st.integers(min_value=int(hi) + 1))
    return st.one_of(below, above, st.just(math.inf), st.just(math.nan))


NUMERIC = [n for n, k in PARAMS.items() if k.limits is not None]


@pytest.mark.parametrize("name", NUMERIC)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_number_beyond_its_limits_is_refused(name: str, data: st.DataObject) -> None:
    kind = PARAMS[name]
    assert kind.limits is not None
    bad = data.draw(_outside(kind.limits, kind.type is int))
    point = {"image_size": 224, "batch_size": 32, "learning_rate": 1e-3} | {name: bad}
    with pytest.raises(InvalidArgument, match=name):
        TrialSpec.of(point, Study())
    if name in _HEAD:  # a head built directly holds the same limits
        with pytest.raises(InvalidArgument, match=name):
            HeadParams.from_params(point)


_HEAD = {f.name for f in dataclasses.fields(HeadParams)}


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=12))
def test_a_string_outside_its_choices_is_refused(text: str) -> None:
    for name in ("optimizer", "schedule", "normalize", "backbone"):
        if text in (PARAMS[name].allowed or ()) or text in ("mobilenet_025",):
            continue
        try:
            check_value(name, text)
        except InvalidArgument as exc:
            assert repr(text) in str(exc)
        else:  # only a registered backbone passes
            assert name == "backbone"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"batch_size": 32, "learning_rate": 0.1}, "has no image_size"),
        ({"image_size": 224, "learning_rate": 0.1}, "has no batch_size"),
        ({"image_size": 224, "image_sizes": "224", "batch_size": 8, "learning_rate": 0.1}, "both"),
        ({"image_size": 224, "batch_size": 8, "learning_rate": 0.1, "colour": 1}, "unknown"),
        ({"image_size": 224, "batch_size": True, "learning_rate": 0.1}, "not a valid int"),
        ({"image_size": 224.5, "batch_size": 8, "learning_rate": 0.1}, "not a valid int"),
        ({"image_size": 224, "batch_size": 8, "learning_rate": "0.1"}, "not a valid float"),
        ({"image_size": 224, "batch_size": 8, "learning_rate": 0.1, "flip": 1}, "valid bool"),
        ({"image_sizes": "300+300", "batch_size": 8, "learning_rate": 0.1}, "a size twice"),
        ({"image_sizes": "300+16", "batch_size": 8, "learning_rate": 0.1}, "each 32-2048"),
        ({"image_size": 224, "batch_size": 8, "learning_rate": 0.1, "dropout": 0.96}, "0.95"),
    ],
)
def test_bad_trial_parameters_are_one_line_invalid_arguments(
    params: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        TrialSpec.of(params, Study(), where="trial 7")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_image_sizes_keep_their_written_order() -> None:
    assert parse_sizes("500+300") == (500, 300)
    assert image_sizes({"image_size": 96}) == (96,)
    spec = TrialSpec.of({"image_sizes": "300+224", "batch_size": 8, "learning_rate": 0.1}, Study())
    assert spec.image_sizes == (300, 224) and paper_point(spec.to_params()) is None


def test_study_defaults_apply_only_where_the_trial_is_silent() -> None:
    base = {"image_size": 224, "batch_size": 8, "learning_rate": 0.1}
    study = Study(backbone="efficientnetv2b0", seed=5, epochs=9)
    spec = TrialSpec.of(base, study)
    assert (spec.backbone, spec.head.epochs, spec.seed) == (
        "efficientnetv2b0",
        9,
        trial_seed(5, base),
    )
    own = TrialSpec.of(base | {"backbone": "mobilenet_025", "epochs": 3}, study)
    assert (own.backbone, own.head.epochs) == ("mobilenet_025", 3)


def test_more_epochs_keep_the_trials_seed_and_parameters() -> None:
    spec = TrialSpec.of({"image_size": 224, "batch_size": 8, "learning_rate": 0.1}, Study())
    longer = spec.with_epochs(5)
    assert longer.head.epochs == 5 and longer.seed == spec.seed
    assert longer.to_params() == spec.to_params()
    with pytest.raises(InvalidArgument, match="epochs"):
        spec.with_epochs(1001)


def test_numpy_numbers_are_numbers_and_bools_are_not() -> None:
    import numpy as np

    assert check_value("batch_size", np.int64(32)) == 32
    assert check_value("dropout", np.float32(0.25)) == 0.25
    assert check_value("learning_rate", 1) == 1.0
    assert type(check_value("hidden_units", 64.0)) is int
    for bad in (True, np.bool_(True), "32", 32.5):
        with pytest.raises(InvalidArgument, match="not a valid int"):
            check_value("batch_size", bad)
