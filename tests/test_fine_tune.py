"""clothopt.final.fine_tune: `study finalize --fine-tune N` trains the base's top N layers end
to end and exports exactly the tuned network (tiny data, the pretrained MobileNet at 32 px:
random weights give features of ~1e-17, whose gradients Adam's epsilon rounds to nothing)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from optuna.distributions import CategoricalDistribution

from clothopt import study as study_mod
from clothopt.augment import AUGMENT_SEED, augment_image, view_params
from clothopt.final.fine_tune import TrainViews, base_of
from clothopt.final.store import load_final
from clothopt.model.backbones import get_backbone
from clothopt.model.compose import compose
from clothopt.reports.finalized import format_report
from conftest import REAL_WEIGHTS, make_tiny_study, run_cli

SPACE = """
sampler = "grid"
epochs = 1
[params]
image_size = [32]
batch_size = [4]
learning_rate = [0.01]
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not REAL_WEIGHTS.is_file():
        pytest.skip("pretrained MobileNet weights not at ../shared/weights")
    root = tmp_path_factory.mktemp("fine_tune")
    return {"storage": make_tiny_study(root, str(REAL_WEIGHTS), SPACE)}


@pytest.fixture(scope="module")
def tuned(study: dict[str, Any]) -> dict[str, Any]:
    argv = ["study", "finalize", "tiny", "--storage", study["storage"], "--quiet"]
    argv += ["--fine-tune", "3", "--fine-tune-epochs", "2", "--fine-tune-lr", "1e-3"]
    code, out, err = run_cli(argv)
    assert code == 0, err
    report, folder = load_final("tiny", study["storage"])
    return {"report": report, "folder": folder, "out": out}


def test_only_the_top_layers_move_and_the_export_carries_them(
    study: dict[str, Any], tuned: dict[str, Any]
) -> None:
    saved = keras.saving.load_model(tuned["folder"] / "model.keras", safe_mode=True)
    fresh = base_of(compose(get_backbone("mobilenet_025"), 32, str(REAL_WEIGHTS)))
    weighted = [layer for layer in fresh.layers if layer.weights]
    top = [
        layer.name
        for layer in weighted[-3:]
        if not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert top, "the top 3 weighted layers are not all BatchNormalization"
    base = base_of(saved)
    for layer in weighted:
        got, want = base.get_layer(layer.name).get_weights(), layer.get_weights()
        moved = any(not np.array_equal(g, w) for g, w in zip(got, want, strict=True))
        assert moved == (layer.name in top), layer.name
    tuned_params = sum(w.size for name in top for w in fresh.get_layer(name).get_weights())
    head_params = saved.get_layer("logits").count_params()  # the paper's head: logits only
    assert tuned["report"]["trainable_params"] == tuned_params + head_params


def test_the_saved_model_answers_as_the_tuned_training_model(tuned: dict[str, Any]) -> None:
    report = tuned["report"]
    agree = report["cached_path_agreement"]
    assert agree["reference"] == "fine-tuned training model"
    assert agree["agree"] == agree["of"] == report["test_images"]
    ft = report["fine_tune"]
    assert (ft["layers"], ft["epochs"], ft["learning_rate"]) == (3, 2, 1e-3)
    assert len(ft["validation_f1_per_epoch"]) == len(ft["loss_per_epoch"]) == 2
    assert all(np.isfinite(ft["loss_per_epoch"])) and ft["train_seconds"] > 0
    assert "fine-tuned: top 3 base layers, 2 epochs" in tuned["out"]
    n = report["test_images"]
    assert f"fine-tuned training model on {n}/{n} test images" in format_report(report)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fine-tune", "100000"], "--fine-tune must be between 1 and"),
        (["--fine-tune", "2", "--fine-tune-lr", "1.5"], "--fine-tune-lr: must be in (0, 1)"),
        (["--fine-tune", "2", "--fine-tune-epochs", "5000"], "between 1 and 1000"),
    ],
)
def test_fine_tune_mistakes_are_one_line_errors_and_keep_the_result(
    study: dict[str, Any], tuned: dict[str, Any], extra: list[str], message: str
) -> None:
    before = (tuned["folder"] / "report.json").read_bytes()
    argv = ["study", "finalize", "tiny", "--storage", study["storage"], "--quiet"]
    code, _, err = run_cli([*argv, *extra])
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert (tuned["folder"] / "report.json").read_bytes() == before


def test_a_trial_of_concatenated_sizes_is_refused(study: dict[str, Any]) -> None:
    st, _ = study_mod.load("tiny", study["storage"])
    params = {"image_sizes": "32+48", "batch_size": 4, "learning_rate": 0.01}
    dists = st.trials[0].distributions | {"image_sizes": CategoricalDistribution(["32+48"])}
    dists.pop("image_size", None)
    st.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.0))
    number = st.trials[-1].number
    argv = ["study", "finalize", "tiny", "--storage", study["storage"], "--quiet"]
    argv += ["--trial", str(number)]
    code, _, err = run_cli([*argv, "--fine-tune", "2"])
    assert code == 2 and "--fine-tune tunes one base" in err and "32+48 px" in err, err


# --------------------------------------------------------------------------- augmentation views


@settings(max_examples=30, deadline=None)
@given(
    flip=hst.booleans(),
    views=hst.integers(0, 3),
    order_seed=hst.integers(0, 2**32 - 1),
)
def test_train_views_rows_are_plain_mirrored_then_each_view(
    flip: bool, views: int, order_seed: int
) -> None:
    """Each row is what the search's cached blocks hold for it: block 0 the image, block 1 its
    mirror (flip), then view v as augment.py draws it for that image's identity."""
    rng = np.random.default_rng(order_seed)
    images = rng.integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    ids = [f"c{i % 2}/{i}.jpg" for i in range(5)]
    tv = TrainViews(images, flip, views, ids)
    assert tv.rows == 5 * (1 + int(flip) + views)
    rows = rng.permutation(tv.rows)[: rng.integers(1, tv.rows + 1)]
    got = tv.batch(rows)
    for row, picture in zip(rows, got, strict=True):
        block, i = divmod(int(row), 5)
        if block == 0:
            want = images[i]
        elif flip and block == 1:
            want = images[i][:, ::-1]
        else:
            view = block - int(flip)
            want = augment_image(images[i], view_params(AUGMENT_SEED, view, ids[i]))
        np.testing.assert_array_equal(picture, want, err_msg=f"row {row}")
    assert not np.shares_memory(got, images)  # the train images are never written over


def test_view_rows_are_the_pictures_the_feature_cache_extracts(tmp_path: Any) -> None:
    """The features of fine-tuning's view rows (through the same base) are the cache's view
    entry: the same images, seed and identities."""
    from clothopt.augment import image_identity
    from clothopt.data import open_dataset
    from clothopt.data.images import load_batch
    from clothopt.features_extract import extract_features
    from conftest import make_dataset

    if not REAL_WEIGHTS.is_file():  # random weights give features of ~1e-17: all "close"
        pytest.skip("pretrained MobileNet weights not at ../shared/weights")
    split = open_dataset(make_dataset(tmp_path / "data", counts=(3, 1, 1)))["train"]
    model = compose(get_backbone("mobilenet_025"), 32, str(REAL_WEIGHTS))
    ids = [image_identity(split.root, p) for p in split.paths]
    tv = TrainViews(load_batch(split.paths, 32), True, 2, ids)
    n = len(split)
    for view in (1, 2):
        cached = extract_features(model, split, 32, view=view)
        rows = np.arange(n) + (1 + view) * n  # plain, mirrored, then the views
        mine = np.asarray(model.predict_on_batch(tv.batch(rows)))
        np.testing.assert_allclose(mine, cached, rtol=1e-4, atol=1e-5)
        plain = np.asarray(model.predict_on_batch(tv.batch(np.arange(n))))
        assert np.abs(mine - plain).max() > 1e-2  # a view is another picture


def test_fine_tuning_a_trial_with_views_trains_on_them(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """finalize --fine-tune on a trial with aug_views 2: every epoch visits each train image's
    plain and two view rows once each, and report.json says so."""
    import clothopt.final.fine_tune as fine_tune_mod

    if not REAL_WEIGHTS.is_file():
        pytest.skip("pretrained MobileNet weights not at ../shared/weights")
    storage = make_tiny_study(tmp_path, str(REAL_WEIGHTS), SPACE + "aug_views = [2]\n")
    seen: list[np.ndarray] = []
    batch = fine_tune_mod.TrainViews.batch

    def recording(self: Any, rows: np.ndarray) -> np.ndarray:
        assert (self.flip, self.aug_views, len(self.identities)) == (False, 2, 24)
        seen.append(np.asarray(rows))
        return batch(self, rows)

    monkeypatch.setattr(fine_tune_mod.TrainViews, "batch", recording)
    argv = ["study", "finalize", "tiny", "--storage", storage, "--quiet"]
    code, _, err = run_cli([*argv, "--fine-tune", "3", "--fine-tune-epochs", "2"])
    assert code == 0, err
    report, _ = load_final("tiny", storage)
    assert report["params"]["aug_views"] == 2 and report["fine_tune"]["aug_views"] == 2
    assert report["head"]["aug_views"] == 2
    rows = np.concatenate(seen)  # 24 train images (3 classes x 8) x 3 blocks, twice
    assert len(rows) == 2 * 72
    for epoch in (rows[:72], rows[72:]):
        assert sorted(epoch.tolist()) == list(range(72))
