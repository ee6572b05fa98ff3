from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clothopt import study
from clothopt.data import open_dataset
from clothopt.end_to_end import train_end_to_end, train_head
from clothopt.errors import UserError
from clothopt.features import FeatureCache
from clothopt.model.backbones import get_backbone
from clothopt.model.head import HeadParams, HeadTrainer
from clothopt.objective import Objective
from clothopt.pipeline import batch_order, head_inputs, train_spec
from clothopt.protocol import (
    Protocol,
    member_seeds,
    protocol_inputs,
    protocol_members,
    train_member,
)
from clothopt.trial_spec import TrialSpec, trial_seed

SPEC = get_backbone("mobilenet_025")


def test_trial_seed_depends_on_params_not_trial_number() -> None:
    p = {"image_size": 300, "batch_size": 32, "learning_rate": 0.01}
    assert trial_seed(0, p) == trial_seed(0, dict(reversed(list(p.items()))))
    assert trial_seed(0, p) != trial_seed(1, p)
    assert trial_seed(0, p) != trial_seed(0, p | {"batch_size": 48})


def test_batch_order_is_a_seeded_permutation_per_epoch() -> None:
    a0, a1 = batch_order(50, 0, 9), batch_order(50, 1, 9)
    assert sorted(a0) == list(range(50))
    assert not np.array_equal(a0, a1)
    np.testing.assert_array_equal(a0, batch_order(50, 0, 9))


def test_cached_path_trains_the_same_head_as_the_end_to_end_model(
    tiny_data: Path, real_weights: Path
) -> None:
    """The cached path is the paper's model: same start and batch order, same trained head.

    Pretrained weights: a random MobileNet's pooled features are ~1e-17, which would make any
    two heads agree.
    """
    ds = open_dataset(tiny_data)
    size, lr, batch, epochs, seed, w = 64, 1e-2, 5, 2, 123, str(real_weights)
    cache = FeatureCache(None)
    tr = cache.get(SPEC, w, 0, size, "nearest", ds["train"])
    va = cache.get(SPEC, w, 0, size, "nearest", ds["validation"])
    assert tr.x.std() > 0.1
    cached = train_head(tr.x, tr.y, va.x, va.y, ds.classes, lr, batch, epochs, seed)
    e2e = train_end_to_end(
        SPEC, w, 0, ds["train"], ds["validation"], size, "nearest", lr, batch, epochs, seed
    )
    for got, want in zip(cached.head_weights, e2e.head_weights, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # the head moved: the comparison is not between two untrained heads
    untrained = train_head(tr.x, tr.y, va.x, va.y, ds.classes, lr, batch, 0, seed)
    assert np.abs(cached.head_weights[0] - untrained.head_weights[0]).max() > 1e-3
    np.testing.assert_array_equal(cached.val_pred, e2e.val_pred)
    assert cached.epoch_f1 == e2e.epoch_f1
    assert e2e.trainable_params == 256 * 3 + 3


def test_head_learns_a_separable_problem(tiny_data: Path) -> None:
    ds = open_dataset(tiny_data)
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 16)).astype("float32")
    y = np.repeat(np.arange(3), 30)
    x = centers[y] + rng.normal(0, 0.3, (90, 16)).astype("float32")
    result = train_head(x, y, x, y, ds.classes, 1e-2, 16, 5, 0)
    assert result.epoch_f1[-1] > 0.95
    assert len(result.epoch_f1) == len(result.epoch_loss) == 5
    assert not result.diverged


def test_a_diverging_loss_is_flagged_not_raised(tiny_data: Path) -> None:
    ds = open_dataset(tiny_data)
    x = np.full((12, 4), 1e30, "float32")
    y = np.arange(12) % 3
    result = train_head(x, y, x, y, ds.classes, 10.0, 4, 1, 0)
    assert result.diverged
    assert 0.0 <= result.val_metrics["f1_macro"] <= 1.0


def _study(tmp_path: Path, data: Path, space_text: str, **kwargs: object) -> tuple[object, object]:
    space = tmp_path / "space.toml"
    space.write_text(space_text)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    args = {"backbone": "mobilenet_025", "weights": "none", "name": "s"} | kwargs
    return study.create(space=str(space), data=str(data), storage=storage, **args)  # type: ignore[arg-type]


# two points: optuna's GridSampler raises KeyError after the last trial of a one-point grid
PAPERLIKE = "[params]\nimage_size = [32]\nbatch_size = [8]\nlearning_rate = [0.01, 0.001]\n"


def test_a_paper_trial_is_the_old_per_trial_keras_head(tiny_data: Path, tmp_path: Path) -> None:
    """Same params dict to trial_seed, same maths: the objective's F1 equals train_head's."""
    st, config = _study(tmp_path, tiny_data, PAPERLIKE)
    ds = open_dataset(tiny_data)
    cache = FeatureCache(None)
    objective = Objective(config, ds, cache)  # type: ignore[arg-type]
    study.optimize(st, config, objective, n_trials=1, progress=False)  # type: ignore[arg-type]
    trial = st.trials[0]  # type: ignore[attr-defined]
    params = {"image_size": 32, "batch_size": 8, "learning_rate": 0.01}
    assert trial.params == params and trial.user_attrs["seed"] == trial_seed(0, params)
    tr = cache.get(SPEC, "none", 0, 32, "nearest", ds["train"])
    va = cache.get(SPEC, "none", 0, 32, "nearest", ds["validation"])
    old = train_head(tr.x, tr.y, va.x, va.y, ds.classes, 0.01, 8, 2, trial_seed(0, params))
    assert trial.value == old.val_metrics["f1_macro"]
    assert trial.user_attrs["trainable_params"] == 256 * 3 + 3
    assert trial.user_attrs["backbone"] == "mobilenet_025"
    np.testing.assert_array_equal(
        objective.trainer.train(
            tr.x,
            tr.y,
            va.x,
            va.y,
            ds.classes,
            HeadParams(learning_rate=0.01, batch_size=8),
            trial_seed(0, params),
            batch_order,
        ).head_weights[0],
        old.head_weights[0],
    )


def test_head_inputs_flip_tta_and_concatenation_shapes(tiny_data: Path, tmp_path: Path) -> None:
    _, config = _study(tmp_path, tiny_data, PAPERLIKE)
    ds = open_dataset(tiny_data)
    cache = FeatureCache(None)
    n_tr, n_va = len(ds["train"]), len(ds["validation"])
    lr = {"batch_size": 8, "learning_rate": 0.01}
    plain = head_inputs(cache, ds, config, TrialSpec.of({"image_size": 32, **lr}, config))  # type: ignore[arg-type]
    assert plain["train"].x.shape == (n_tr, 256) and plain["validation"].views == 1
    params = {"image_sizes": "32+40", "flip": True, "tta": True, **lr}
    got = head_inputs(cache, ds, config, TrialSpec.of(params, config))  # type: ignore[arg-type]
    tr, va = got["train"], got["validation"]
    assert tr.x.shape == (2 * n_tr, 512) and tr.views == 1
    np.testing.assert_array_equal(tr.y, np.tile(ds["train"].labels, 2))
    assert va.x.shape == (2 * n_va, 512) and va.views == 2 and len(va.y) == n_va
    # plain rows first, sizes in the order written
    f40 = cache.get(SPEC, "none", 0, 40, "nearest", ds["train"])
    np.testing.assert_array_equal(tr.x[:n_tr, :256], plain["train"].x)
    np.testing.assert_array_equal(tr.x[:n_tr, 256:], f40.x)
    flipped = cache.get(SPEC, "none", 0, 32, "nearest", ds["validation"], flip=True)
    np.testing.assert_array_equal(va.x[n_va:, :256], flipped.x)
    assert not np.array_equal(flipped.x, plain["validation"].x)


def test_a_wide_trial_trains_its_own_head_on_synthetic_features(
    tiny_data: Path, tmp_path: Path
) -> None:
    space = (
        "sampler = 'tpe'\nn_trials = 3\n[params]\nimage_sizes = ['32+40']\nbatch_size = [8]\n"
        "learning_rate = [0.01]\nepochs = [3]\nhidden_layers = [1]\nhidden_units = [16]\n"
        "dropout = { choices = [0.25], when = { hidden_layers = [1] } }\n"
        "weight_decay = [1e-4]\nlabel_smoothing = [0.1]\noptimizer = ['adamw']\n"
        "schedule = ['cosine']\nnormalize = ['l2']\nflip = [true]\ntta = [true]\n"
    )
    st, config = _study(tmp_path, tiny_data, space)
    objective = Objective(config, open_dataset(tiny_data), FeatureCache(None))  # type: ignore[arg-type]
    study.optimize(st, config, objective, n_trials=2, progress=False)  # type: ignore[arg-type]
    a, b = st.trials  # type: ignore[attr-defined]
    assert a.params["dropout"] == 0.25 and a.params["image_sizes"] == "32+40"
    # (512 + 1) * 16 + (16 + 1) * 3: the hidden layer on the concatenated features, then logits
    assert a.user_attrs["trainable_params"] == 513 * 16 + 17 * 3
    assert len(a.intermediate_values) == 3  # the trial's epochs, not the study's 2
    assert a.value == b.value  # the reused trainer starts each trial afresh
    assert 0.0 <= a.value <= 1.0 and a.user_attrs["train_seconds"] > 0


def test_the_end_to_end_path_refuses_a_wide_space(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="end-to-end path"):
        _study(tmp_path, tiny_data, PAPERLIKE + "flip = [true]\n", use_cache=False)


def test_several_backbones_become_a_parameter_and_a_weights_file_fits_one(
    tiny_data: Path, tmp_path: Path
) -> None:
    _, config = _study(tmp_path, tiny_data, PAPERLIKE, backbone="mobilenet_025,mobilenetv2")
    assert config.space.backbones() == ("mobilenet_025", "mobilenetv2")  # type: ignore[attr-defined]
    assert config.backbone == "mobilenet_025"  # type: ignore[attr-defined]
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"x")
    with pytest.raises(UserError, match="a weights file fits one backbone"):
        _study(
            tmp_path,
            tiny_data,
            PAPERLIKE,
            backbone="mobilenet_025,mobilenetv2",
            weights=str(weights),
            name="t",
        )


def test_the_pipeline_trains_a_given_seed_on_given_rows(tiny_data: Path, tmp_path: Path) -> None:
    """train_spec(spec, features, seed, rows): what a repeat or a fold will call; all rows and
    the spec's seed are the trial itself."""
    _, config = _study(tmp_path, tiny_data, PAPERLIKE)
    ds = open_dataset(tiny_data)
    params = {"image_size": 32, "batch_size": 4, "learning_rate": 0.01, "flip": True}
    spec = TrialSpec.of(params, config)  # type: ignore[arg-type]
    inputs = head_inputs(FeatureCache(None), ds, config, spec)  # type: ignore[arg-type]
    tr, va = inputs["train"], inputs["validation"]
    n = len(ds["train"])
    assert (tr.examples, tr.blocks, va.examples) == (n, 2, len(ds["validation"]))
    rows = np.arange(n)[::-2]
    sub = tr.take(rows)  # the rows and their mirrored rows, plain block first
    np.testing.assert_array_equal(sub.x, np.concatenate([tr.x[rows], tr.x[n + rows]]))
    np.testing.assert_array_equal(sub.y, np.tile(ds["train"].labels[rows], 2))
    trainer = HeadTrainer()
    fold = train_spec(spec, inputs, ds.classes, trainer, seed=7, train_rows=rows)
    alone = trainer.train(sub.x, sub.y, va.x, va.y, ds.classes, spec.head, 7, batch_order)
    assert fold.epoch_loss == alone.epoch_loss and fold.epoch_f1 == alone.epoch_f1
    whole = train_spec(spec, inputs, ds.classes, trainer)
    again = trainer.train(tr.x, tr.y, va.x, va.y, ds.classes, spec.head, spec.seed, batch_order)
    assert whole.epoch_loss == again.epoch_loss != fold.epoch_loss
    assert whole.total_params == tr.base_params + whole.trainable_params
    assert spec.seed == trial_seed(0, params)
    plain = va.plain()
    assert plain.views == plain.blocks == 1 and len(plain.x) == len(plain.y) == va.examples


# --- repeated evaluation (issue 20): repeats x folds members, their mean the trial's value ---

ROBUST = (
    "sampler = 'tpe'\nn_trials = 3\nrepeats = 2\nfolds = 3\n[params]\nimage_size = [32]\n"
    "batch_size = [8]\nlearning_rate = [0.01, 0.003]\nepochs = [3]\nhidden_layers = [1]\n"
    "hidden_units = [16]\nnormalize = ['standardize']\nflip = [true]\ntta = [true]\n"
)


def _robust_objective(tmp_path: Path, data: Path, text: str = ROBUST) -> tuple[Any, Any, Any]:
    st, config = _study(tmp_path, data, text)
    objective = Objective(config, open_dataset(data), FeatureCache(None))  # type: ignore[arg-type]
    return st, config, objective


def test_a_repeated_trial_is_the_mean_of_its_members_each_its_solo_fit(
    tiny_data: Path, tmp_path: Path
) -> None:
    st, config, objective = _robust_objective(tmp_path, tiny_data)
    study.optimize(st, config, objective, n_trials=1, progress=False)
    trial = st.trials[0]
    attrs = trial.user_attrs
    runs = attrs["val_f1_runs"]
    assert len(runs) == 6 and attrs["protocol"] == {"repeats": 2, "folds": 3}
    assert trial.value == pytest.approx(np.mean(runs)) == attrs["val_f1_macro"]
    assert attrs["val_f1_sd"] == pytest.approx(np.std(runs, ddof=1))
    assert attrs["val_f1_se"] == pytest.approx(np.std(runs, ddof=1) / np.sqrt(6))
    ds = open_dataset(tiny_data)
    n = len(ds["train"]) + len(ds["validation"])
    assert sum(sum(r) for r in attrs["val_confusion_matrix"]) == 2 * n  # pooled out-of-fold
    assert len(trial.intermediate_values) == 6 * 3  # every member's epochs, first one first
    # each member is the fit the HeadTrainer gives alone (the stacked ones within tolerance)
    spec = TrialSpec.of(trial.params, config)
    protocol = Protocol(2, 3)
    inputs = protocol_inputs(objective.cache, ds, config, spec, protocol)
    train, scored, members = protocol_members(spec, inputs, protocol, 0, 0)
    assert [m.seed for m in members] == [spec.seed] * 3 + [member_seeds(spec.seed, 1, 1)[0]] * 3
    solo = HeadTrainer()
    for k, member in enumerate(members):
        alone = train_member(solo, spec, train, scored, member, ds.classes, None)
        assert alone.epoch_f1[-1] == runs[k]
        assert [trial.intermediate_values[k * 3 + e] for e in range(3)] == alone.epoch_f1


def test_folds_are_stratified_disjoint_cover_the_pool_and_depend_on_the_study_seed_only(
    tiny_data: Path, tmp_path: Path
) -> None:
    _, config, objective = _robust_objective(tmp_path, tiny_data)
    ds = open_dataset(tiny_data)
    y = np.concatenate([ds["train"].labels, ds["validation"].labels])
    protocol = Protocol(1, 3)
    got = []
    for lr in (0.01, 0.003):
        params = {"image_size": 32, "batch_size": 8, "learning_rate": lr, "flip": True}
        spec = TrialSpec.of(params, config)
        inputs = protocol_inputs(objective.cache, ds, config, spec, protocol)
        train, scored, members = protocol_members(spec, inputs, protocol, 0, 0)
        np.testing.assert_array_equal(scored.y, y)
        got.append([m.val_examples for m in members])
        for m in members:  # training rows: the other folds, plain and mirrored
            own = np.setdiff1d(np.arange(len(y)), m.val_examples)
            np.testing.assert_array_equal(m.train_rows, np.concatenate([own, own + len(y)]))
            np.testing.assert_array_equal(train.y[m.train_rows], np.tile(y[own], 2))
    for a, b in zip(*got, strict=True):  # every trial of the study sees the same folds
        np.testing.assert_array_equal(a, b)
    val = np.concatenate(got[0])
    assert sorted(val) == list(range(len(y)))  # disjoint and covering train + validation
    for c in np.unique(y):
        shares = [int((y[v] == c).sum()) for v in got[0]]
        assert max(shares) - min(shares) <= 1
    other = protocol_members(spec, inputs, protocol, 1, 0)[2]  # another study seed: other folds
    pairs = zip(other, members, strict=True)
    assert any(not np.array_equal(a.val_examples, b.val_examples) for a, b in pairs)


def test_a_pruner_stops_a_repeated_trial_after_its_first_member(
    tiny_data: Path, tmp_path: Path
) -> None:
    import optuna

    class Always(optuna.pruners.BasePruner):
        def prune(self, study: object, trial: object) -> bool:
            return True

    st, config, objective = _robust_objective(tmp_path, tiny_data)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    st = optuna.load_study(study_name=st.study_name, storage=storage, pruner=Always())
    study.optimize(st, config, objective, n_trials=1, progress=False)
    trial = st.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]  # the first member's first epoch only
    assert not objective.stacked._stacks  # the other members were never trained


def test_without_a_pruner_a_repeated_trial_is_one_stacked_fit(
    tiny_data: Path, tmp_path: Path
) -> None:
    st, config, objective = _robust_objective(tmp_path, tiny_data)
    study.optimize(st, config, objective, n_trials=1, progress=False)
    assert [s.members for s in objective.stacked._stacks] == [6]  # all six members together
    assert not objective.trainer._models  # none alone
    assert len(st.trials[0].intermediate_values) == 6 * 3


def test_a_pruned_study_trains_the_first_member_alone_and_values_agree(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``pruner = "median"`` in the study: the first member alone (its curve watched as it
    trains), the other five stacked; every member's fit, so every value, as without it."""
    import optuna

    for sub in ("pruned", "plain"):
        (tmp_path / sub).mkdir()
    st, config = _study(tmp_path / "pruned", tiny_data, ROBUST, pruner="median")
    pruned = Objective(config, open_dataset(tiny_data), FeatureCache(None))  # type: ignore[arg-type]
    study.optimize(st, config, pruned, n_trials=1, progress=False)  # type: ignore[arg-type]
    assert [s.members for s in pruned.stacked._stacks] == [5]
    assert pruned.trainer._models
    st2, config2, plain = _robust_objective(tmp_path / "plain", tiny_data)
    study.optimize(st2, config2, plain, n_trials=1, progress=False)
    a, b = st.trials[0], st2.trials[0]  # type: ignore[attr-defined]
    assert a.state == optuna.trial.TrialState.COMPLETE and a.params == b.params
    assert a.intermediate_values == b.intermediate_values
    assert a.user_attrs["val_f1_runs"] == b.user_attrs["val_f1_runs"]
    assert a.value == b.value


def test_member_seeds_start_with_the_trials_and_never_repeat() -> None:
    seeds = member_seeds(1234, 0, 8)
    assert seeds[0] == 1234 and len(set(seeds)) == 8
    assert member_seeds(1234, 3, 5) == seeds[3:]  # a re-evaluation's seeds are new ones
    assert all(0 <= s < 2**31 for s in seeds)


def test_the_paper_protocol_records_no_repeats(tiny_data: Path, tmp_path: Path) -> None:
    st, config, objective = _robust_objective(tmp_path, tiny_data, PAPERLIKE)
    study.optimize(st, config, objective, n_trials=1, progress=False)
    attrs = st.trials[0].user_attrs
    assert "protocol" not in attrs and "val_f1_runs" not in attrs
    assert not objective.stacked._stacks


@pytest.mark.parametrize("text", ["repeats = 2\n", "folds = 5\n"])
def test_the_end_to_end_path_refuses_repeats_and_folds(
    tiny_data: Path, tmp_path: Path, text: str
) -> None:
    with pytest.raises(UserError, match="repeats/folds: the end-to-end path"):
        _study(tmp_path, tiny_data, text + PAPERLIKE, use_cache=False)


@pytest.mark.parametrize("text", ["folds = 1\n", "folds = 21\n", "repeats = 0\n"])
def test_bad_protocols_are_refused(tiny_data: Path, tmp_path: Path, text: str) -> None:
    with pytest.raises(UserError, match=r"folds|repeats"):
        _study(tmp_path, tiny_data, text + PAPERLIKE)
