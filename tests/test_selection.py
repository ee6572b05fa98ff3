"""Racing: the top trials re-evaluated on fresh seeds, the pick by the re-evaluated mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from clothopt import selection, study
from clothopt.data import open_dataset
from clothopt.errors import InvalidArgument
from clothopt.features import FeatureCache
from clothopt.objective import Objective
from clothopt.protocol import Evaluation, member_seeds
from clothopt.selection import race

SPACE = (
    "sampler = 'random'\nn_trials = 3\nfolds = 3\n[params]\nimage_size = [32]\n"
    "batch_size = [8]\nlearning_rate = [0.03, 0.01, 0.003]\nepochs = [2]\n"
    "normalize = ['l2']\n"
)


def _finished(tmp_path: Path, data: Path, trials: int = 3) -> tuple[Any, Any, Any, Any]:
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    st, config = study.create(
        space=str(space), data=str(data), storage=f"sqlite:///{tmp_path / 'db.sqlite'}",
        backbone="mobilenet_025", weights="none", name="s",
    )  # fmt: skip
    ds, cache = open_dataset(data), FeatureCache(None)
    study.optimize(st, config, Objective(config, ds, cache), n_trials=trials, progress=False)
    return st, config, ds, cache


def test_race_re_evaluates_the_top_trials_on_fresh_seeds_of_the_same_protocol(
    tiny_data: Path, tmp_path: Path
) -> None:
    st, config, ds, cache = _finished(tmp_path, tiny_data)
    got = race(st, config, ds, cache, top=2, repeats=2)
    assert got.protocol == {"repeats": 2, "folds": 3}
    assert [r.rank for r in got.rows] == [1, 2] and got.pick == got.rows[0].trial
    best = sorted(st.trials, key=lambda t: (-t.value, t.number))[:2]
    assert {r.trial for r in got.rows} == {t.number for t in best}
    for row in got.rows:
        assert row.n == len(row.runs) == 6  # 2 fresh seeds x 3 folds
        assert row.mean == pytest.approx(np.mean(row.runs))
        assert row.sd == pytest.approx(np.std(row.runs, ddof=1))
        assert row.value == st.trials[row.trial].value and "learning_rate=" in row.params
    assert got.rows[0].mean >= got.rows[1].mean
    again = race(st, config, ds, cache, top=2, repeats=2)
    assert again == got  # deterministic: seeds from the trial, folds from the study seed
    table = got.to_dict()
    assert table["pick"] == got.pick and len(table["rows"]) == 2
    assert table["rows"][0]["runs"] == list(got.rows[0].runs)


def test_the_pick_is_the_best_re_evaluated_mean_not_the_best_search_value(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, config, ds, cache = _finished(tmp_path, tiny_data)
    by_value = sorted(st.trials, key=lambda t: (-t.value, t.number))
    # the search's best is the worst on fresh seeds
    fresh = {by_value[0].number: 0.2, by_value[1].number: 0.9, by_value[2].number: 0.5}
    starts = []

    def fake(spec: Any, inputs: Any, classes: Any, protocol: Any, seed: Any, trainers: Any,
             *, start: int = 0, on_epoch: Any = None) -> Evaluation:  # fmt: skip
        starts.append(start)
        trial = next(t for t in st.trials if t.params["learning_rate"] == spec.head.learning_rate)
        f1 = fresh[trial.number]
        return Evaluation([f1, f1 + 0.02], [], np.zeros(0), np.zeros(0), 0.0)

    monkeypatch.setattr(selection, "evaluate", fake)
    got = race(st, config, ds, cache)  # top 5 of 3 trials: all of them
    assert [r.trial for r in got.rows] == [by_value[i].number for i in (1, 2, 0)]
    assert got.pick == by_value[1].number and got.rows[0].mean == pytest.approx(0.91)
    assert starts == [1, 1, 1]  # seeds past the trial's own single repeat


def test_fresh_seeds_are_not_the_trials_own() -> None:
    own, fresh = member_seeds(77, 0, 2), member_seeds(77, 2, 5)
    assert not set(own) & set(fresh)


def test_race_refuses_bad_arguments(tiny_data: Path, tmp_path: Path) -> None:
    st, config, ds, cache = _finished(tmp_path, tiny_data, trials=1)
    with pytest.raises(InvalidArgument, match="top and repeats"):
        race(st, config, ds, cache, top=0)


# --------------------------------------------------------------------------- ensemble selection


def _macro(y: np.ndarray, p: np.ndarray) -> float:
    from clothopt.metrics import macro_f1

    return macro_f1(y, np.argmax(p, axis=1), p.shape[1])


@settings(max_examples=60, deadline=None)
@given(
    seed=hs.integers(0, 2**31 - 1),
    candidates=hs.integers(1, 5),
    n=hs.integers(4, 60),
    rounds=hs.integers(1, 12),
)
def test_ensemble_selection_never_scores_below_its_best_candidate(
    seed: int, candidates: int, n: int, rounds: int
) -> None:
    """Counts sum to at most the rounds; the blend they weigh scores at least the best single
    candidate out of fold (round 1 picks it, and the best prefix is kept), and exactly the
    score its own weighted sum gives."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    probs = [rng.dirichlet(np.ones(3), n) for _ in range(candidates)]
    counts = selection.ensemble_selection(probs, y, rounds)
    assert len(counts) == candidates and 1 <= sum(counts) <= rounds
    assert all(c >= 0 for c in counts)
    blend = sum(c * p for c, p in zip(counts, probs, strict=True))
    best_single = max(_macro(y, p) for p in probs)
    assert _macro(y, blend) >= best_single
    # round 1 picks the best single candidate, the first of equal ones
    first = selection.ensemble_selection(probs, y, 1)
    assert first == [int(i == np.argmax([_macro(y, p) for p in probs])) for i in range(candidates)]


def test_ensemble_selection_blends_complementary_candidates_and_drops_useless_ones() -> None:
    """Two candidates each right on half the examples (and unsure elsewhere) blend into one
    that is right everywhere; a candidate that is always wrong is never picked."""
    y = np.array([0, 1, 0, 1, 2, 2, 0, 1])
    half = len(y) // 2

    def right_on(rows: slice) -> np.ndarray:
        p = np.full((len(y), 3), 0.3)
        p[np.arange(len(y)), (y + 1) % 3] = 0.4  # a weak wrong answer elsewhere
        p[np.arange(len(y))[rows], y[rows]] = 0.9  # a confident right one here
        return p

    wrong = np.eye(3)[(y + 2) % 3]
    counts = selection.ensemble_selection(
        [right_on(slice(0, half)), wrong, right_on(slice(half, None))], y, 10
    )
    assert counts[1] == 0 and counts[0] >= 1 and counts[2] >= 1
    blend = counts[0] * right_on(slice(0, half)) + counts[2] * right_on(slice(half, None))
    assert _macro(y, blend) == 1.0
    # a perfect candidate alone is the answer: nothing can beat it
    assert selection.ensemble_selection([wrong, np.eye(3)[y]], y, 10) == [0, 1]
    with pytest.raises(InvalidArgument, match="same examples"):
        selection.ensemble_selection([np.eye(3)[y], np.eye(3)[y[:-1]]], y, 5)
    with pytest.raises(InvalidArgument, match="rounds"):
        selection.ensemble_selection([np.eye(3)[y]], y, 0)
