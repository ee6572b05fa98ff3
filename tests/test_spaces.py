from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from clothopt.errors import InvalidArgument, UserError
from clothopt.samplers import make_sampler, sampler_args
from clothopt.spaces import SearchSpace, image_sizes, load_space


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


def _space(tmp_path: Path, text: str) -> SearchSpace:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return load_space(str(path))


HEAD = P + "learning_rate = [0.1]\n"


def test_every_trial_parameter_is_typed_and_checked(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        HEAD + "epochs = [5, 10]\nhidden_layers = [0, 1]\nhidden_units = [64]\n"
        "dropout = [0.0, 0.5]\nweight_decay = [0.0, 1e-4]\nlabel_smoothing = [0.1]\n"
        "optimizer = ['adam', 'adamw', 'sgd']\nschedule = ['constant', 'cosine']\n"
        "normalize = ['none', 'l2', 'standardize']\nflip = [true, false]\ntta = true\n"
        "backbone = ['mobilenet_025', 'efficientnetv2b0']\n",
    )
    assert space.params["tta"].choices == (True,)  # a single value fixes the parameter
    assert space.params["optimizer"].choices == ("adam", "adamw", "sgd")
    assert space.backbones() == ("mobilenet_025", "efficientnetv2b0")
    assert not space.is_paper_head() and load_space("paper").is_paper_head()
    # weight decay is log by default, but a list holding 0 cannot be: it stays categorical
    assert not space.params["weight_decay"].log
    assert len(space.grid()) == 2 * 2 * 2 * 2 * 3 * 2 * 3 * 2 * 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("optimizer = ['rmsprop']", "'rmsprop' is not one of adam, adamw, sgd"),
        ("flip = [1]", "flip value 1 is not a valid bool"),
        ("backbone = ['vgg']", "'vgg' is not one of"),
        ("dropout = [0.99]", r"dropout value 0.99 must lie in \[0, 0.95\]"),
        ("hidden_layers = [0]\ndropout = {low = 0.1, high = 0.5, when = {depth = [1]}}", "depth"),
        (
            "dropout = {low = 0.1, high = 0.5, when = {hidden_layers = [1]}}",
            "not another parameter",
        ),
        ("hidden_layers = [0, 1]\nhidden_units = {choices = [8], when = {hidden_layers = 3}}", "3"),
        ("weight_decay = {choices = [0.0, 1e-3], log = true}", "log = true needs float values > 0"),
        ("hidden_units = {low = 8, high = 64, steps = 8}", "unknown key"),
        ("image_sizes = ['300+300']", "names a size twice"),
    ],
)
def test_bad_new_parameters_are_one_line(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        _space(tmp_path, HEAD + extra + "\n")
    assert "\n" not in str(info.value)


def test_image_size_and_image_sizes_are_exclusive_and_one_is_required(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="both image_size and image_sizes"):
        _space(tmp_path, HEAD + "image_sizes = ['300+500']\n")
    rest = "[params]\nbatch_size = [32]\nlearning_rate = [0.1]\n"
    with pytest.raises(UserError, match="does not set image_size"):
        _space(tmp_path, rest)
    space = _space(tmp_path, rest + "image_sizes = ['224', '300+500']\n")
    assert space.min_image_size() == 224 and space.listed_sizes() == [224, 300, 500]
    assert load_space("paper").listed_sizes() == [300, 400, 500]
    assert image_sizes(space.grid()[1]) == (300, 500)
    assert image_sizes({"image_size": 96}) == (96,)


def test_a_grid_expands_conditional_parameters_only_where_they_apply(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        HEAD + "hidden_layers = [0, 1, 2]\n"
        "hidden_units = { choices = [64, 128], when = { hidden_layers = [1, 2] } }\n"
        "dropout = { choices = [0.0, 0.5], when = { hidden_layers = [2] } }\n",
    )
    grid = space.grid()
    # 0 layers: 1 point; 1 layer: 2 widths; 2 layers: 2 widths x 2 dropouts
    assert len(grid) == 1 + 2 + 4
    assert grid[0] == {
        "image_size": 300,
        "batch_size": 32,
        "learning_rate": 0.1,
        "hidden_layers": 0,
    }
    assert all(("dropout" in p) == (p["hidden_layers"] == 2) for p in grid)


def test_conditional_parameters_are_sampled_define_by_run() -> None:
    space = load_space("wide")
    study = optuna.create_study(sampler=make_sampler("tpe", sampler_args("tpe", 0, space), space))
    study.optimize(lambda t: float(len(space.suggest(t))), n_trials=20)
    seen = {t.params["hidden_layers"] for t in study.trials}
    assert seen == {0, 1}
    for t in study.trials:
        has = "hidden_units" in t.params and "dropout" in t.params
        assert has == (t.params["hidden_layers"] == 1)
        assert set(t.params) >= {"image_sizes", "batch_size", "learning_rate"}


def test_a_grid_records_a_log_list_as_a_log_float(tmp_path: Path) -> None:
    """The paper's learning rates arrive fixed from the queue but are drawn on a log axis."""
    space = load_space("paper")
    dist = space.distributions()["learning_rate"]
    assert isinstance(dist, optuna.distributions.FloatDistribution)
    assert (dist.low, dist.high, dist.log) == (1e-4, 1e-2, True)
    assert isinstance(
        space.distributions()["batch_size"], optuna.distributions.CategoricalDistribution
    )
    study = optuna.create_study(sampler=make_sampler("grid", {"seed": 0}, space))
    for point in space.grid()[:3]:
        study.enqueue_trial(point)
    study.optimize(lambda t: float(space.suggest(t)["learning_rate"]), n_trials=3)
    got = [t.params for t in study.trials]
    assert got == space.grid()[:3]  # same values and types as enqueued
    assert type(got[0]["image_size"]) is int
    assert study.trials[0].distributions["learning_rate"].log
    # walked by TPE the same list stays a categorical: TPE must only pick listed values
    tpe = space.with_sampler("tpe", 5)
    assert isinstance(
        tpe.distributions()["learning_rate"], optuna.distributions.CategoricalDistribution
    )
    # an explicit log list of other floats
    other = _space(
        tmp_path,
        P + "learning_rate = [0.1]\nlabel_smoothing = {choices = [0.05, 0.1], log = true}\n",
    )
    assert other.distributions()["label_smoothing"].log  # type: ignore[attr-defined]
    assert other.to_dict()["params"]["label_smoothing"] == {"choices": [0.05, 0.1], "log": True}


def test_wide_space_ships_in_both_places_and_round_trips() -> None:
    space = load_space("wide")
    path = Path(__file__).resolve().parents[1] / "studies" / "wide.toml"
    assert load_space(str(path)).to_dict() == space.to_dict() | {"name": "wide"}
    assert space.sampler == "tpe" and space.n_trials and not space.is_grid
    assert {"hidden_layers", "dropout", "weight_decay", "flip", "tta", "image_sizes"} <= set(
        space.params
    )
    assert space.params["weight_decay"].log and space.params["learning_rate"].log
    assert space.params["dropout"].when == {"hidden_layers": (1,)}
    again = SearchSpace.from_dict(space.to_dict())
    assert again.to_dict() == space.to_dict()


def test_cmaes_sampler_searches_the_numbers_and_tolerates_categoricals() -> None:
    space = load_space("wide").with_sampler("cmaes", 8)
    args = sampler_args("cmaes", 5, space)
    sampler = make_sampler("cmaes", args, space)
    assert isinstance(sampler, optuna.samplers.CmaEsSampler) and args["seed"] == 5
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: float(space.suggest(t)["learning_rate"]), n_trials=8)
    assert len(study.trials) == 8


def test_conditions_survive_a_stored_config_whose_keys_come_back_sorted(tmp_path: Path) -> None:
    import json

    space = load_space("wide")
    stored = json.loads(json.dumps(space.to_dict(), sort_keys=True))
    again = SearchSpace.from_dict(stored)
    names = list(again.params)
    assert names.index("hidden_layers") < names.index("dropout")
    assert names.index("hidden_layers") < names.index("hidden_units")
    with pytest.raises(UserError, match="form a cycle"):
        _space(
            tmp_path,
            HEAD + "flip = {choices = [true, false], when = {tta = [true]}}\n"
            "tta = {choices = [true, false], when = {flip = [true]}}\n",
        )


_PAPER_PARAMS_TOML = "[params]\nimage_size = [300]\nbatch_size = [32]\nlearning_rate = [1e-3]\n"


@pytest.mark.parametrize(
    ("head", "repeats", "folds"),
    [
        ("", 1, 0),
        ("repeats = 5\n", 5, 0),
        ("folds = 5\n", 1, 5),
        ("repeats = 3\nfolds = 2\n", 3, 2),
    ],
)
def test_a_space_sets_how_a_trial_estimates_its_configuration(
    tmp_path: Path, head: str, repeats: int, folds: int
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(head + _PAPER_PARAMS_TOML)
    space = load_space(str(path))
    assert (space.repeats, space.folds) == (repeats, folds)
    again = SearchSpace.from_dict(space.to_dict())
    assert (again.repeats, again.folds) == (repeats, folds)
    assert space.single_fit == (head == "")
    # a space that sets neither records exactly what it recorded before they existed
    assert ("repeats" in space.to_dict(), "folds" in space.to_dict()) == (repeats != 1, folds != 0)
    assert space.blend == 0 and "blend" not in space.to_dict()


def test_a_space_sets_how_many_raced_configurations_finalize_blends(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("folds = 5\nblend = 4\n" + _PAPER_PARAMS_TOML)
    space = load_space(str(path))
    assert space.blend == 4 and SearchSpace.from_dict(space.to_dict()).blend == 4


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ("repeats = 0\n", r"repeats must be an integer in \[1, 100\]"),
        ("repeats = 101\n", r"repeats must be an integer in \[1, 100\]"),
        ("repeats = 2.5\n", "repeats must be an integer"),
        ("repeats = true\n", "repeats must be an integer"),
        ("folds = 1\n", r"folds must be an integer in \[2, 20\]"),
        ("folds = 21\n", r"folds must be an integer in \[2, 20\]"),
        ("folds = -3\n", "folds must be an integer"),
        ("folds = false\n", "folds must be an integer"),
        ("folds = 5\nblend = 1\n", r"blend must be an integer in \[2, 100\]"),
        ("folds = 5\nblend = true\n", "blend must be an integer"),
        ("blend = 3\n", "set folds or repeats too"),
    ],
)
def test_bad_repeats_and_folds_are_one_line(tmp_path: Path, head: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(head + _PAPER_PARAMS_TOML)
    with pytest.raises(InvalidArgument, match=message):
        load_space(str(path))


_RANDOM_TOML = """
sampler = "random"
n_trials = 4
[params]
image_size = [32]
batch_size = [4, 8]
learning_rate = { low = 1e-4, high = 1e-1, log = true }
epochs = { low = 1, high = 3 }
hidden_layers = [0, 1]
hidden_units = { choices = [4, 8], when = { hidden_layers = [1] } }
"""


def test_a_space_starts_from_its_listed_configurations(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        _RANDOM_TOML
        + "[[start]]\nimage_size = 32\nbatch_size = 8\nlearning_rate = 0.01\nepochs = 2\n"
        + "hidden_layers = 1\nhidden_units = 8\n"
        + "[[start]]\nimage_size = 32\nbatch_size = 4\nlearning_rate = 1e-3\nepochs = 1\n"
        + "hidden_layers = 0\n"
    )
    space = load_space(str(path))
    assert [dict(p) for p in space.start] == [
        {"image_size": 32, "batch_size": 8, "learning_rate": 0.01, "epochs": 2,
         "hidden_layers": 1, "hidden_units": 8},
        {"image_size": 32, "batch_size": 4, "learning_rate": 1e-3, "epochs": 1,
         "hidden_layers": 0},
    ]  # fmt: skip
    assert SearchSpace.from_dict(space.to_dict()).start == space.start
    assert "start" not in load_space("paper").to_dict()


_POINT = "image_size = 32\nbatch_size = 8\nlearning_rate = 0.01\nepochs = 2\nhidden_layers = 0\n"


@pytest.mark.parametrize(
    ("point", "message"),
    [
        (_POINT.replace("batch_size = 8", "batch_size = 16"), "batch_size = 16 is not among"),
        (_POINT.replace("learning_rate = 0.01", "learning_rate = 0.5"), "learning_rate = 0.5"),
        (_POINT.replace("epochs = 2", "epochs = 2.5"), "epochs = 2.5"),
        (_POINT.replace("epochs = 2\n", ""), "does not set epochs"),
        (_POINT + "hidden_units = 8\n", "sets hidden_units, which its other values exclude"),
        (_POINT.replace("hidden_layers = 0", "hidden_layers = 1"), "does not set hidden_units"),
        (_POINT + "dropout = 0.1\n", "sets dropout, not in"),
        (_POINT.replace("batch_size = 8", "batch_size = true"), "batch_size = True"),
    ],
)
def test_a_start_point_outside_the_space_is_one_line(
    tmp_path: Path, point: str, message: str
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(_RANDOM_TOML + "[[start]]\n" + point)
    with pytest.raises(InvalidArgument, match="start point 1"):
        load_space(str(path))
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        load_space(str(path))
    grid = tmp_path / "g.toml"
    grid.write_text("[[start]]\nimage_size = 300\n" + _PAPER_PARAMS_TOML)
    with pytest.raises(InvalidArgument, match="a grid tries every point"):
        load_space(str(grid))
