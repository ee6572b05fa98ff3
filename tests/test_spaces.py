from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from clothopt.errors import UserError
from clothopt.spaces import load_space, make_sampler, sampler_args


def test_paper_space_is_the_published_grid() -> None:
    space = load_space("paper")
    grid = space.grid()
    assert space.sampler == "grid" and space.epochs == 2
    assert len(grid) == 27
    assert {p["image_size"] for p in grid} == {300, 400, 500}
    assert {p["batch_size"] for p in grid} == {32, 48, 64}
    assert {p["learning_rate"] for p in grid} == {1e-2, 1e-3, 1e-4}
    assert len({tuple(p.values()) for p in grid}) == 27
    # image size outermost: a run extracts each size's features once, in turn
    assert [p["image_size"] for p in grid[:9]] == [300] * 9


def test_studies_folder_holds_the_paper_space() -> None:
    path = Path(__file__).resolve().parents[1] / "studies" / "paper.toml"
    assert load_space(str(path)).grid() == load_space("paper").grid()


def test_tpe_space_searches_learning_rate_log_uniform() -> None:
    space = load_space("tpe")
    dist = space.distributions()["learning_rate"]
    assert isinstance(dist, optuna.distributions.FloatDistribution)
    assert (dist.low, dist.high, dist.log) == (1e-4, 1e-2, True)
    assert space.budget() == 27 and not space.is_grid


def test_tpe_sampler_arguments_are_explicit_and_seeded() -> None:
    space = load_space("tpe")
    args = sampler_args("tpe", 7, space)
    assert args["seed"] == 7
    assert {"n_startup_trials", "n_ei_candidates", "multivariate", "constant_liar"} <= set(args)
    sampler = make_sampler("tpe", args, space)
    assert isinstance(sampler, optuna.samplers.TPESampler)


def test_same_seed_same_suggestions() -> None:
    space = load_space("tpe")

    def run(seed: int) -> list[float]:
        study = optuna.create_study(
            sampler=make_sampler("tpe", sampler_args("tpe", seed, space), space)
        )
        study.optimize(lambda t: space.suggest(t)["learning_rate"], n_trials=12)
        return [t.params["learning_rate"] for t in study.trials]

    assert run(3) == run(3)
    assert run(3) != run(4)


P = "[params]\nimage_size = [300]\nbatch_size = [32]\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("params = 3", "table"),
        (
            "[params]\nimage_size = [300]\nbatch_size = [32]\nlearning_rate = [0.1]\ncolour = [1]",
            "unknown parameter",
        ),
        (
            "typo = 1\n[params]\nimage_size = [300]\nbatch_size = [32]\nlearning_rate = [0.1]",
            "unknown key",
        ),
        ("[params]\nimage_size = [300]\nbatch_size = [32]", "does not set learning_rate"),
        (
            "[params]\nimage_size = [30.5]\nbatch_size = [32]\nlearning_rate = [0.1]",
            "not a valid int",
        ),
        ("[params]\nimage_size = [8]\nbatch_size = [32]\nlearning_rate = [0.1]", "must lie in"),
        (
            P + "learning_rate = {low = 0.1, high = 0.01}",
            "low < high",
        ),
        (
            P + "learning_rate = {low = 1e-4, high = 1e-2}",
            "grid sampler needs a list",
        ),
        (
            "sampler = 'annealing'\n[params]\nimage_size = [300]\nbatch_size = [32]\n"
            "learning_rate = [0.1]",
            "unknown sampler",
        ),
        ("[params\n", "bad TOML"),
    ],
)
def test_bad_space_files_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_space(str(path))


def test_unknown_space_name() -> None:
    with pytest.raises(UserError, match="neither a built-in"):
        load_space("no-such-space")


def test_space_round_trips_through_its_dict() -> None:
    space = load_space("tpe")
    again = type(space).from_dict(space.to_dict())
    assert again.to_dict() == space.to_dict()
