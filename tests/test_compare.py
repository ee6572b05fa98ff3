"""``compare samplers``: one study per sampler and seed, resumable, and a report whose numbers
are recomputed here from the stored trials (numpy, statistics) and the feature cache's records.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from clothopt import paths
from clothopt import study as study_mod
from clothopt.cli import main
from clothopt.compare import parse_samplers, run_comparison, study_name
from clothopt.errors import UserError
from clothopt.reports.stats import best_so_far, first_within, step_curve_mean
from conftest import make_dataset

SPACE = """
sampler = "grid"
epochs = 1
[params]
image_size = [64]
batch_size = [4, 8]
learning_rate = [0.1, 0.01, 0.001]
"""
SAMPLERS = ("grid", "tpe", "random", "qmc", "gp")
SEEDS, BUDGET = 2, 3


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _complete(name: str, storage: str) -> list[optuna.trial.FrozenTrial]:
    st, _ = study_mod.load(name, storage)
    return sorted(st.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)


# --------------------------------------------------------------------------- pieces


def test_best_so_far_and_first_within() -> None:
    best = best_so_far([0.5, 0.4, 0.7, 0.69, 0.8])
    np.testing.assert_array_equal(best, [0.5, 0.5, 0.7, 0.7, 0.8])
    assert first_within(best, 0.8) == 5
    assert first_within(best, 0.704) == 3  # 0.7 is within 0.5 points of 0.704
    assert first_within(best, 0.706) == 5
    assert first_within(best, 0.9) is None


def test_step_curve_mean_aggregates_from_when_every_seed_has_a_trial() -> None:
    t, mean, low, high = step_curve_mean([([1.0, 3.0], [10.0, 20.0]), ([2.0, 4.0], [12.0, 14.0])])
    np.testing.assert_array_equal(t, [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(mean, [11.0, 16.0, 17.0])
    np.testing.assert_array_equal(low, [10.0, 12.0, 14.0])
    np.testing.assert_array_equal(high, [12.0, 20.0, 20.0])


def test_unknown_samplers_are_named() -> None:
    assert parse_samplers("tpe, grid,tpe") == ["tpe", "grid"]
    with pytest.raises(UserError, match=r"unknown sampler.*bayes"):
        parse_samplers("tpe,bayes")


def test_grid_order_seed_walks_the_whole_grid_in_a_seeded_order(
    tmp_path: Path, tiny_data: Path, storage: str
) -> None:
    space = tmp_path / "s.toml"
    space.write_text(SPACE)
    orders = {}
    for seed in (None, 0, 1):
        st, cfg = study_mod.create(
            backbone="mobilenet_025",
            space=str(space),
            name=f"g{seed}",
            storage=storage,
            data=str(tiny_data),
            weights="none",
            grid_order_seed=seed,
        )
        waiting = st.get_trials(states=(TrialState.WAITING,))
        orders[seed] = [tuple(t.system_attrs["fixed_params"].values()) for t in waiting]
        assert st.user_attrs.get("grid_order_seed") == seed
    plain = [tuple(p.values()) for p in cfg.space.grid()]
    assert orders[None] == plain
    for seed in (0, 1):
        assert sorted(orders[seed]) == sorted(plain)
        perm = np.random.default_rng(seed).permutation(len(plain))
        assert orders[seed] == [plain[i] for i in perm]
    assert orders[0] != orders[1]


# --------------------------------------------------------------------------- a real comparison


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every sampler, two seeds, budget 3, on synthetic images with the pretrained MobileNet."""
    from conftest import REAL_WEIGHTS

    if not REAL_WEIGHTS.is_file():
        pytest.skip("pretrained MobileNet weights not at ../shared/weights")
    root = tmp_path_factory.mktemp("samplers")
    data = make_dataset(root / "data")
    (root / "space.toml").write_text(SPACE)
    storage = f"sqlite:///{root / 'studies' / 'clothopt.db'}"
    out = root / "report"
    argv = ["compare", "samplers", "--backbone", "mobilenet_025"]
    argv += ["--samplers", ",".join(SAMPLERS), "--seeds", str(SEEDS), "--budget", str(BUDGET)]
    argv += ["--space", str(root / "space.toml"), "--data", str(data)]
    argv += ["--weights", str(REAL_WEIGHTS), "--storage", storage, "--out", str(out), "--quiet"]
    code, stdout, stderr = _cli(argv)
    assert code == 0, stderr
    torch = __import__("importlib").util.find_spec("torch") is not None
    shown = [s for s in SAMPLERS if torch or s != "gp"]
    return {
        "argv": argv,
        "storage": storage,
        "out": out,
        "stdout": stdout,
        "stderr": stderr,
        "samplers": shown,
        "torch": torch,
    }


def test_one_study_per_sampler_and_seed(comparison: dict[str, Any]) -> None:
    storage = comparison["storage"]
    names = {r["name"] for r in study_mod.list_studies(storage)}
    for sampler in comparison["samplers"]:
        for seed in range(SEEDS):
            name = study_name("mobilenet_025", sampler, seed)
            assert name in names
            trials = _complete(name, storage)
            assert len(trials) == (6 if sampler == "grid" else BUDGET)
            _, cfg = study_mod.load(name, storage)
            assert cfg.seed == seed and cfg.sampler == sampler
            assert cfg.sampler_args["seed"] == seed
    if not comparison["torch"]:
        assert "skipping sampler gp: needs PyTorch" in comparison["stderr"]
        assert not any("-gp-" in n for n in names)


def _target(storage: str, seed: int) -> float:
    # the full grid of that seed: every point, whatever the budget
    return max(t.value for t in _complete(study_name("mobilenet_025", "grid", seed), storage))


def _extraction(cache: Path, size: int) -> float:
    # the feature cache's own record of what extracting train + validation cost
    seconds = 0.0
    for split in ("train", "validation"):
        (meta,) = cache.glob(f"mobilenet_025/{size}px-{split}-*.json")
        seconds += json.loads(meta.read_text())["extract_seconds"]
    return seconds


def test_best_so_far_curves_equal_the_trials(comparison: dict[str, Any]) -> None:
    storage, out = comparison["storage"], comparison["out"]
    rows = _read_csv(out / "best_so_far.csv")
    cache = Path(paths.default_cache_dir(storage))
    for sampler in comparison["samplers"]:
        for seed in range(SEEDS):
            trials = _complete(study_name("mobilenet_025", sampler, seed), storage)[:BUDGET]
            got = [r for r in rows if r["sampler"] == sampler and int(r["seed"]) == seed]
            assert [int(r["number"]) for r in got] == [t.number for t in trials]
            best, seconds, head = -1.0, 0.0, 0.0
            sizes: set[int] = set()
            for r, t in zip(got, trials, strict=True):
                best = max(best, t.value)
                head += t.user_attrs["train_seconds"]
                size = t.params["image_size"]
                seconds += t.user_attrs["train_seconds"]
                if size not in sizes:  # extraction charged at the first trial of each size
                    seconds += _extraction(cache, size)
                    sizes.add(size)
                assert float(r["value"]) == pytest.approx(100 * t.value, abs=1e-5)
                assert float(r["best_so_far"]) == pytest.approx(100 * best, abs=1e-5)
                assert float(r["head_seconds"]) == pytest.approx(head, abs=1e-5)
                assert float(r["seconds"]) == pytest.approx(seconds, abs=1e-5)


def test_trials_and_seconds_to_the_grid_best(comparison: dict[str, Any]) -> None:
    storage, out = comparison["storage"], comparison["out"]
    per_seed = _read_csv(out / "samplers_per_seed.csv")
    curves = _read_csv(out / "best_so_far.csv")
    for row in per_seed:
        seed = int(row["seed"])
        target = _target(storage, seed)
        trials = _complete(row["study"], storage)[:BUDGET]
        hit = None
        best = -1.0
        for k, t in enumerate(trials, start=1):
            best = max(best, t.value)
            if hit is None and best >= target - 0.005:
                hit = k
        assert float(row["target"]) == pytest.approx(100 * target, abs=1e-5)
        assert float(row["final_best"]) == pytest.approx(100 * best, abs=1e-5)
        if hit is None:
            assert row["trials_to_target"] == "" and row["seconds_to_target"] == ""
        else:
            assert int(row["trials_to_target"]) == hit
            at = next(
                c
                for c in curves
                if c["sampler"] == row["sampler"]
                and int(c["seed"]) == seed
                and int(c["trial"]) == hit
            )
            assert float(row["seconds_to_target"]) == pytest.approx(float(at["seconds"]), abs=1e-5)
        assert int(row["distinct_points"]) == len({tuple(t.params.values()) for t in trials})


def test_summary_is_the_mean_and_spread_over_seeds(comparison: dict[str, Any]) -> None:
    out = comparison["out"]
    per_seed = _read_csv(out / "samplers_per_seed.csv")
    summary = {r["sampler"]: r for r in _read_csv(out / "samplers_summary.csv")}
    assert list(summary) == comparison["samplers"]
    curves = _read_csv(out / "best_so_far.csv")
    means = _read_csv(out / "best_so_far_mean.csv")
    for sampler, row in summary.items():
        seeds = [r for r in per_seed if r["sampler"] == sampler]
        finals = [float(r["final_best"]) for r in seeds]
        assert float(row["final_best_mean"]) == pytest.approx(statistics.mean(finals), abs=1e-5)
        assert float(row["final_best_sd"]) == pytest.approx(statistics.stdev(finals), abs=1e-5)
        reached = [int(r["trials_to_target"]) for r in seeds if r["trials_to_target"]]
        assert row["reached"] == f"{len(reached)}/{SEEDS}"
        if reached:
            assert float(row["trials_to_target_mean"]) == pytest.approx(statistics.mean(reached))
        for k in range(1, BUDGET + 1):
            at_k = [
                float(c["best_so_far"])
                for c in curves
                if c["sampler"] == sampler and int(c["trial"]) == k
            ]
            m = next(r for r in means if r["sampler"] == sampler and int(r["trial"]) == k)
            assert float(m["mean"]) == pytest.approx(np.mean(at_k), abs=1e-5)
            assert float(m["sd"]) == pytest.approx(np.std(at_k, ddof=1), abs=1e-5)
            assert float(m["min"]) == pytest.approx(min(at_k), abs=1e-5)


def test_report_records_how_to_rerun_it(comparison: dict[str, Any]) -> None:
    storage, out = comparison["storage"], comparison["out"]
    record = json.loads((out / "comparison.json").read_text())
    assert record["optuna_version_of_report"] == optuna.__version__
    assert record["optuna_versions_of_studies"] == [optuna.__version__]
    for sampler in comparison["samplers"]:
        for seed in range(SEEDS):
            name = study_name("mobilenet_025", sampler, seed)
            _, cfg = study_mod.load(name, storage)
            assert record["sampler_args"][sampler][name] == dict(cfg.sampler_args)
    assert record["grid_order_seeds"] == {study_name("mobilenet_025", "grid", s): s for s in (0, 1)}
    assert record["command"].startswith("clothopt compare samplers --backbone mobilenet_025")
    assert record["budget"] == BUDGET
    assert "n_startup_trials" in comparison["stdout"]  # tpe's arguments, in the Markdown too
    assert f"optuna {optuna.__version__}" in comparison["stdout"]


def test_html_report_is_self_contained(comparison: dict[str, Any]) -> None:
    page = (comparison["out"] / "report.html").read_text()
    assert len(page) > 3_000_000  # plotly.js, inlined
    assert not re.search(r"<script[^>]+src=", page)
    for title in (
        "Best-so-far validation macro-F1 over trials",
        "Best-so-far validation macro-F1 over seconds",
        "Empirical distribution of validation macro-F1 (optuna plot_edf)",
    ):
        assert title in page
    for sampler in comparison["samplers"]:
        assert study_name("mobilenet_025", sampler, 1) in page  # an EDF line per study


def test_running_it_again_resumes_and_changes_nothing(comparison: dict[str, Any]) -> None:
    storage, out = comparison["storage"], comparison["out"]
    before = {r["name"]: r["complete"] for r in study_mod.list_studies(storage)}
    summary = (out / "samplers_summary.csv").read_text()
    code, _, stderr = _cli(comparison["argv"])
    assert code == 0, stderr
    assert {r["name"]: r["complete"] for r in study_mod.list_studies(storage)} == before
    assert not re.search(r": ran \d+ trial", stderr)  # no trial ran again
    assert (out / "samplers_summary.csv").read_text() == summary


def test_an_interrupted_comparison_resumes_its_studies(
    tmp_path: Path, tiny_data: Path, storage: str
) -> None:
    space = tmp_path / "s.toml"
    space.write_text(SPACE.replace("[0.1, 0.01, 0.001]", "[0.1]"))
    kwargs: dict[str, Any] = dict(
        backbone="mobilenet_025",
        seeds=1,
        budget=2,
        space=str(space),
        storage=storage,
        data=str(tiny_data),
        weights="none",
        progress=False,
        log=lambda line: None,
    )
    with pytest.raises(UserError, match="does not exist"):
        run_comparison(samplers=["random"], run=False, **kwargs)
    # the study was created and ran one trial, then the comparison was stopped
    name = study_name("mobilenet_025", "random", 0)
    st, cfg = study_mod.create(
        backbone="mobilenet_025",
        space=str(space),
        sampler="random",
        n_trials=2,
        name=name,
        storage=storage,
        data=str(tiny_data),
        weights="none",
    )
    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache
    from clothopt.objective import Objective

    objective = Objective(cfg, open_dataset(tiny_data), FeatureCache(cfg.cache_dir))
    study_mod.optimize(st, cfg, objective, n_trials=1, progress=False)
    first = _complete(name, storage)[0]
    run_comparison(samplers=["random"], **kwargs)
    trials = _complete(name, storage)
    assert len(trials) == 2
    assert (trials[0].number, trials[0].datetime_start) == (first.number, first.datetime_start)
    assert len(_complete(study_name("mobilenet_025", "grid", 0), storage)) == 2
    # a study with other settings is not silently reused
    with pytest.raises(UserError, match=r"exists with other settings.*budget 2, not 3"):
        run_comparison(samplers=["random"], **(kwargs | {"budget": 3}))


def test_standalone_seconds_charge_each_size_and_mirror_once() -> None:
    """A wide trial needs every size it concatenates, plain and (flip or tta) mirrored: each
    extraction is charged to the first trial that needs it, head seconds to every trial."""
    from types import SimpleNamespace

    from clothopt.reports.samplers import _standalone_seconds

    def trial(params: dict[str, Any]) -> Any:
        return SimpleNamespace(params=params, user_attrs={"train_seconds": 1.0})

    run: Any = SimpleNamespace(
        config=None,
        trials=[
            trial({"image_size": 300}),
            trial({"image_sizes": "300+500", "flip": True}),
            trial({"image_sizes": "300+500", "tta": True}),
            trial({"image_sizes": "224", "flip": False}),
        ],
    )
    cost = {(300, False): 10.0, (500, False): 20.0, (300, True): 30.0, (500, True): 40.0}
    cost[224, False] = 5.0
    seconds = _standalone_seconds(run, lambda _cfg, size, flip=False, view=0: cost[size, flip])
    assert seconds == [11.0, 1.0 + 20 + 30 + 40, 1.0, 6.0]


def test_standalone_seconds_charge_each_augmentation_view_once() -> None:
    """A trial with aug_views N needs views 1..N of the train split at each of its sizes: each
    charged to the first trial that needs it, never for the validation split's rows."""
    from types import SimpleNamespace

    from clothopt.reports.samplers import _standalone_seconds

    def trial(params: dict[str, Any]) -> Any:
        return SimpleNamespace(params=params, user_attrs={"train_seconds": 1.0})

    run: Any = SimpleNamespace(
        config=None,
        trials=[
            trial({"image_size": 300, "aug_views": 2}),
            trial({"image_sizes": "300+500", "aug_views": 3, "tta": True}),
            trial({"image_size": 300, "aug_views": 1, "flip": True}),
            trial({"image_size": 500, "aug_views": 0}),
        ],
    )
    charged: list[tuple[int, bool, int]] = []

    def cost(_cfg: Any, size: int, flip: bool = False, view: int = 0) -> float:
        assert not (flip and view), "a view is never mirrored"
        charged.append((size, flip, view))
        return {0: 10.0, 1: 100.0, 2: 200.0, 3: 300.0}[view] * (2 if size == 500 else 1) + flip

    seconds = _standalone_seconds(run, cost)
    assert seconds == [
        1.0 + 10 + 100 + 200,
        1.0 + 300 + 11 + (20 + 200 + 400 + 600) + 21,
        1.0,  # 300 px plain, mirrored and view 1: all extracted before
        1.0,
    ]
    assert len(charged) == len(set(charged))  # each entry at most once


def test_a_views_cost_is_its_own_record_else_twice_the_plain_train_pass(
    tmp_path: Path,
) -> None:
    """From the cache's record of the view's entry (train split only) when there is one; else
    VIEW_PASS_FACTOR x the plain train entry's record, and the report will say so."""
    from types import SimpleNamespace

    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache
    from clothopt.model.backbones import get_backbone
    from clothopt.reports.samplers import VIEW_PASS_FACTOR, _ExtractionCosts

    data = make_dataset(tmp_path / "data", counts=(2, 1, 1))
    ds = open_dataset(data, ("train", "validation"))
    cache, spec = FeatureCache(str(tmp_path / "features")), get_backbone("mobilenet_025")
    got = {
        (split, view): cache.get(spec, "none", 0, 32, "nearest", ds[split], view=view)
        for split, view in (("train", 0), ("validation", 0), ("train", 1))
    }
    cfg: Any = SimpleNamespace(
        backbone="mobilenet_025",
        weights="none",
        seed=0,
        resize="nearest",
        data=str(data),
        data_fingerprint="fp",
        cache_dir=str(tmp_path / "features"),
    )

    def recorded(split: str, view: int) -> float:
        key = cache.key(spec, "none", 0, 32, "nearest", ds[split], view=view)
        path = cache.path(key)
        assert path is not None
        return float(json.loads(path.with_suffix(".json").read_text())["extract_seconds"])

    def trial(params: dict[str, Any], seconds: float) -> Any:
        return SimpleNamespace(params=params, user_attrs={"extract_seconds": seconds})

    # trials' own records: only a trial that extracted one plain size alone says its cost
    run: Any = SimpleNamespace(
        config=cfg,
        trials=[trial({"image_size": 64, "aug_views": 2}, 99.0), trial({"image_size": 96}, 7.0)],
    )
    costs = _ExtractionCosts([run])
    assert costs(cfg, 96) == 7.0 and costs(cfg, 96, view=1) == VIEW_PASS_FACTOR * 7.0
    assert costs(cfg, 64) == 0.0 and costs.missing == {64}
    costs = _ExtractionCosts([run])
    assert costs(cfg, 32) == recorded("train", 0) + recorded("validation", 0)
    assert costs(cfg, 32, view=1) == recorded("train", 1) == got["train", 1].extract_seconds
    assert not costs.views_by_factor and not costs.missing
    assert costs(cfg, 32, view=2) == VIEW_PASS_FACTOR * recorded("train", 0)
    assert costs.views_by_factor == {32} and not costs.missing
    # nothing recorded at a size: unknown (0 s, and the report says which size)
    assert costs(cfg, 48, view=1) == 0.0 and costs.missing == {48}


def test_a_space_with_views_is_announced_before_the_comparison_runs(tmp_path: Path) -> None:
    from clothopt.compare import max_aug_views
    from clothopt.errors import NotFound
    from clothopt.spaces import load_space

    plain, views, ranged = (tmp_path / f"{n}.toml" for n in ("plain", "views", "ranged"))
    plain.write_text(SPACE)
    views.write_text(
        SPACE.replace("image_size = [64]", 'image_sizes = ["64", "64+96"]') + "aug_views = [0, 3]\n"
    )
    ranged.write_text(
        SPACE.replace('"grid"', '"random"\nn_trials = 2') + "aug_views = { low = 0, high = 5 }\n"
    )
    assert [max_aug_views(load_space(str(p))) for p in (plain, views, ranged)] == [0, 3, 5]
    for space, shown in ((plain, None), (views, "up to 3 augmentation view(s)")):
        lines: list[str] = []
        with pytest.raises(NotFound):  # run=False: only checks, and nothing exists yet
            run_comparison(
                backbone="mobilenet_025",
                samplers=["random"],
                seeds=1,
                budget=2,
                space=str(space),
                storage=f"sqlite:///{tmp_path / 'none' / 'c.db'}",
                data=str(tmp_path),
                run=False,
                log=lines.append,
            )
        notes = [line for line in lines if "augmentation view" in line]
        if shown is None:
            assert notes == []
        else:
            (note,) = notes
            assert shown in note and "(64px, 96px)" in note and "about 2 x a plain pass" in note


def test_pairwise_differences_are_paired_over_seeds_and_holm_corrected(
    comparison: dict[str, Any],
) -> None:
    import scipy.stats as ss
    from statsmodels.stats.multitest import multipletests

    out = comparison["out"]
    per_seed = _read_csv(out / "samplers_per_seed.csv")
    finals = {
        (r["sampler"], int(r["seed"])): float(r["final_best"]) for r in per_seed if r["final_best"]
    }
    record = json.loads((out / "comparison.json").read_text())
    rows = record["pairwise"]
    shown = comparison["samplers"]
    assert len(rows) == len(shown) * (len(shown) - 1) // 2
    p_t = []
    for r in rows:
        a = [finals[(r["a"], s)] for s in range(SEEDS)]
        b = [finals[(r["b"], s)] for s in range(SEEDS)]
        assert np.mean(a) >= np.mean(b) - 1e-9  # A is the sampler ahead
        assert r["mean_diff"] == pytest.approx(np.mean(a) - np.mean(b), abs=1e-4)
        d = np.subtract(a, b)
        if np.std(d) > 1e-6:
            ref = ss.ttest_rel(a, b)
            assert r["p_t"] == pytest.approx(ref.pvalue, rel=1e-3)
        p_t.append(r["p_t"])
        # two seeds: the exact Wilcoxon's smallest p is 0.5, and the report says so
        assert "Wilcoxon cannot reach p < 0.05 with n=2" in r["note"]
    want = multipletests(p_t, method="holm")[1]
    assert [r["p_holm_t"] for r in rows] == pytest.approx(list(want))
    assert record["verdict"] in comparison["stdout"]
    assert "## Differences with their noise" in comparison["stdout"]
    assert _read_csv(out / "samplers_pairwise.csv")[0]["a"] == rows[0]["a"]
    if not any(r["separated"] for r in rows):
        assert "no ranking is claimed" in record["verdict"]
    # these trials ran once each: no noise floor, and the report says it is unknown
    assert record["noise_floor"] is None and "Noise floor: unknown" in comparison["stdout"]


def test_noise_floor_from_repeated_trials() -> None:
    from optuna.distributions import FloatDistribution

    from clothopt.reports.sampler_noise import noise_floor

    def trial(sd: float, se: float | None, proto: dict[str, int] | None) -> Any:
        attrs: dict[str, Any] = {"val_f1_sd": sd, "protocol": proto}
        if se is not None:
            attrs["val_f1_se"] = se
        return optuna.trial.create_trial(
            params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)},
            value=0.8,
            user_attrs=attrs,
        )

    once = optuna.trial.create_trial(
        params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, value=0.8
    )
    assert noise_floor([once]) is None
    five = {"repeats": 5, "folds": 1}
    got = noise_floor(
        [trial(0.01, 0.004, five), trial(0.03, 0.012, five), trial(0.02, None, five), once]
    )
    assert got == {
        "trials": 3,
        "protocols": [five],
        "member_sd_median": pytest.approx(2.0),
        "se_median": pytest.approx(0.8),
    }
