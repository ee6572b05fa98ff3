"""``study show``: trials evaluated with repeats/folds show mean ± se (n), and the best trial
against the next ones with a paired t-test over their members (checked against scipy)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import scipy.stats as ss

from clothopt import study as st
from clothopt.cli import main

SPACE = "[params]\nimage_size = [32]\nbatch_size = [4, 8]\nlearning_rate = [0.01, 0.001]\n"
BASE = [0.80, 0.83, 0.81, 0.84, 0.79, 0.82]
# per grid point (batch, lr): its per-member scores, repeat-major fold-minor (2 repeats x 3 folds)
RUNS = {
    (4, 0.01): BASE,
    (8, 0.01): [b - d for b, d in zip(BASE, [0.01, -0.01, 0.005, 0.0, 0.012, -0.004], strict=True)],
    (4, 0.001): [b - d for b, d in zip(BASE, [0.04, 0.05, 0.045, 0.05, 0.042, 0.048], strict=True)],
    (8, 0.001): [b - 0.1 for b in BASE],
}


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _study(tiny_data: Path, storage: str, tmp_path: Path, repeated: bool, folds: int = 3) -> None:
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    study, config = st.create(
        backbone="mobilenet_025",
        space=str(space),
        data=str(tiny_data),
        storage=storage,
        weights="none",
        name="s",
    )

    def objective(trial: optuna.Trial) -> float:
        p = config.space.suggest(trial)  # type: ignore[attr-defined]
        runs = RUNS[(p["batch_size"], p["learning_rate"])]
        if repeated:
            trial.set_user_attr("val_f1_runs", runs)
            trial.set_user_attr("val_f1_sd", float(np.std(runs, ddof=1)))
            trial.set_user_attr("val_f1_se", float(ss.sem(runs)))
            trial.set_user_attr("protocol", {"repeats": 6 // max(1, folds), "folds": folds})
            # each trial draws its repeats' seeds from its own parameters
            trial.set_user_attr("member_seeds", [trial.number * 10 + i for i in range(6)])
        return float(np.mean(runs))

    st.optimize(study, config, objective, progress=False)  # type: ignore[arg-type]


def test_repeated_trials_show_mean_se_and_the_noise_verdict(
    tiny_data: Path, storage: str, tmp_path: Path
) -> None:
    _study(tiny_data, storage, tmp_path, repeated=True)
    code, out, err = _cli(["study", "show", "s", "--storage", storage])
    assert code == 0, err
    best = RUNS[(4, 0.01)]
    assert f"{np.mean(best):.4f} ± {ss.sem(best):.4f} (6)" in out
    p_next = ss.ttest_rel(best, RUNS[(8, 0.01)]).pvalue
    p_third = ss.ttest_rel(best, RUNS[(4, 0.001)]).pvalue
    assert p_next > 0.05 > p_third  # the fixture means what the verdict below says
    assert f"paired t p = {p_next:.3g}" in out and f"paired t p = {p_third:.3g}" in out
    assert (
        "the top 2 trials are within noise of the best (paired t, p > 0.05); "
        "the next is distinguishable" in out
    )
    code, out, _ = _cli(["study", "show", "s", "--storage", storage, "--json"])
    shown = json.loads(out)
    top = shown["trials"][0]
    assert top["members"] == 6 and top["val_f1_se"] == pytest.approx(ss.sem(best))
    rows = shown["best_versus_next"]["rows"]
    assert [r["test"] for r in rows] == ["paired t"] * 3
    assert rows[0]["p_value"] == pytest.approx(p_next)
    assert [r["distinguishable"] for r in rows] == [False, True, True]


def test_trials_without_members_are_shown_as_before(
    tiny_data: Path, storage: str, tmp_path: Path
) -> None:
    _study(tiny_data, storage, tmp_path, repeated=False)
    code, out, err = _cli(["study", "show", "s", "--storage", storage])
    assert code == 0, err
    assert "±" not in out and "within noise" not in out and "best vs next" not in out
    shown = json.loads(_cli(["study", "show", "s", "--storage", storage, "--json"])[1])
    assert "members" not in shown["trials"][0] and "best_versus_next" not in shown


def test_repeats_with_each_trials_own_seeds_are_not_paired(
    tiny_data: Path, storage: str, tmp_path: Path
) -> None:
    # repeats without folds: trial A's member i and trial B's member i are different seeds,
    # independent draws, so the comparison is Welch's, not the paired t
    _study(tiny_data, storage, tmp_path, repeated=True, folds=0)
    shown = json.loads(_cli(["study", "show", "s", "--storage", storage, "--json"])[1])
    rows = shown["best_versus_next"]["rows"]
    assert [r["test"] for r in rows] == ["Welch t"] * 3
    want = ss.ttest_ind(RUNS[(4, 0.01)], RUNS[(8, 0.01)], equal_var=False).pvalue
    assert rows[0]["p_value"] == pytest.approx(want)
    assert "(Welch t, p > 0.05)" in shown["best_versus_next"]["verdict"]
