"""Racing: the top trials re-evaluated on fresh seeds, the pick by the re-evaluated mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

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
