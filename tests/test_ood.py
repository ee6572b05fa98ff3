"""OOD detectors: they separate in from out, calibrate to the asked share, persist with a
checksum, and score the same in NumPy and in built-in Keras layers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from clothopt.errors import UserError
from clothopt.final.ood import (
    METHODS,
    Detector,
    calibrate,
    fit_detector,
    keras_score,
    load_detector,
    save_detector,
)

if TYPE_CHECKING:
    import keras

DIM = 8
CENTERS = np.zeros((2, DIM))
CENTERS[0, 0] = CENTERS[1, 1] = 6.0


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two unit-variance Gaussian classes at 6·e0 and 6·e1."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return (CENTERS[y] + rng.normal(size=(n, DIM))).astype(np.float32), y


def far_points(n: int, seed: int) -> np.ndarray:
    """Points at radius 12 in the dimensions the classes do not use."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, DIM))
    direction = np.abs(rng.normal(size=(n, DIM - 2)))
    x[:, 2:] = 12 * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    return x.astype(np.float32)


def between_points(n: int, seed: int) -> np.ndarray:
    """Points halfway between the two classes, where the head cannot tell them apart."""
    rng = np.random.default_rng(seed)
    return (CENTERS.mean(axis=0) + 0.3 * rng.normal(size=(n, DIM))).astype(np.float32)


def head() -> list[np.ndarray]:
    # the Bayes classifier of the two blobs: logit_c = mu_c·x - |mu_c|²/2
    return [CENTERS.T.astype(np.float32), (-0.5 * (CENTERS**2).sum(axis=1)).astype(np.float32)]


def fitted(method: str, seed: int = 0) -> Detector:
    x, y = blobs(400, seed)
    return fit_detector(method, x, y, head(), k=5)


def auroc(det: Detector, x_in: np.ndarray, x_out: np.ndarray) -> float:
    s_in, s_out = det.score(x_in), det.score(x_out)
    return roc_auc_score(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out])


@pytest.mark.parametrize("method", ["mahalanobis", "knn", "vim"])
def test_far_points_score_below_the_training_distribution(method: str) -> None:
    det = fitted(method)
    assert auroc(det, blobs(200, 1)[0], far_points(100, 2)) > 0.99


@pytest.mark.parametrize("method", ["msp", "energy", "relative_mahalanobis"])
def test_points_between_the_classes_score_below_the_classes(method: str) -> None:
    det = fitted(method)
    assert auroc(det, blobs(200, 1)[0], between_points(100, 2)) > 0.99


def test_msp_is_fooled_by_far_points_as_the_paper_found() -> None:
    # far along a class direction the softmax is surer than on the class itself
    det = fitted("msp")
    x_in = blobs(200, 1)[0]
    assert auroc(det, x_in, 5 * x_in) < 0.5


@pytest.mark.parametrize("n", [100, 341, 20])
def test_calibrate_accepts_the_asked_share_of_the_calibration_data(n: int) -> None:
    det = fitted("knn")
    x_val = blobs(n, 3)[0]
    cal = calibrate(det, x_val, accept=0.95)
    accepted = cal.accepts(x_val).sum()
    assert accepted == n - int(np.floor(0.05 * n + 1e-9))
    assert accepted / n >= 0.95
    assert cal.accept == 0.95 and det.threshold is None  # a copy; the original is unchanged


def test_accepts_needs_a_threshold_and_calibrate_a_share_in_range() -> None:
    det = fitted("knn")
    with pytest.raises(UserError, match="calibrate it first"):
        det.accepts(blobs(4, 1)[0])
    with pytest.raises(UserError, match="accept"):
        calibrate(det, blobs(4, 1)[0], accept=1.5)


def test_fit_rejects_unknown_methods_missing_heads_and_bad_shapes() -> None:
    x, y = blobs(20, 0)
    with pytest.raises(UserError, match="unknown OOD method 'lof'"):
        fit_detector("lof", x, y)
    with pytest.raises(UserError, match="head's weights"):
        fit_detector("energy", x, y)
    with pytest.raises(UserError, match="1 <= k"):
        fit_detector("knn", x, y, k=21)
    with pytest.raises(UserError, match=r"shape \(N, 8\)"):
        fitted("knn").score(np.zeros((3, 5)))
    with pytest.raises(UserError, match="NaN"):
        fit_detector("knn", np.full((4, 2), np.nan))


@pytest.mark.parametrize("method", METHODS)
def test_save_and_load_round_trip(method: str, tmp_path: Path) -> None:
    det = calibrate(fitted(method), blobs(50, 4)[0])
    path = tmp_path / "ood.npz"
    save_detector(det, path)
    back = load_detector(path)
    assert (back.method, back.params, back.threshold, back.accept) == (
        det.method,
        det.params,
        det.threshold,
        det.accept,
    )
    assert back.checksum == det.checksum == det.to_dict()["sha256"]
    x = blobs(30, 5)[0]
    np.testing.assert_array_equal(back.score(x), det.score(x))


def test_a_changed_array_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ood.npz"
    save_detector(calibrate(fitted("knn"), blobs(50, 4)[0]), path)
    with np.load(path) as npz:
        parts = {name: npz[name].copy() for name in npz.files}
    parts["bank"][3, 1] += 1e-3  # a valid file whose array no longer matches its checksum
    with open(path, "wb") as fh:
        np.savez(fh, **parts)
    with pytest.raises(UserError, match="checksum mismatch") as err:
        load_detector(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_damaged_or_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ood.npz"
    save_detector(fitted("mahalanobis"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read OOD detector") as err:
        load_detector(path)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not found"):
        load_detector(tmp_path / "missing.npz")


def test_metadata_is_json_and_names_every_array() -> None:
    det = calibrate(fitted("relative_mahalanobis"), blobs(50, 4)[0])
    meta = json.loads(json.dumps(det.to_dict()))
    assert set(meta["arrays"]) == {"whitener", "centers", "whitener0", "center0"}
    assert meta["arrays"]["centers"] == [2, DIM] and meta["threshold"] == det.threshold


def _score_model(det: Detector, dim: int) -> keras.Model:
    import keras

    pooled = keras.Input((dim,), name="pooled")
    return keras.Model(pooled, keras_score(det, pooled), name="ood")


@pytest.mark.parametrize("method", METHODS)
def test_keras_score_equals_numpy_and_survives_safe_mode_loading(
    method: str, tmp_path: Path
) -> None:
    import keras

    rng = np.random.default_rng(7)
    # ReLU-like features: non-negative, a few dimensions often zero
    train = np.maximum(rng.normal(1.0, 1.0, size=(300, 16)), 0).astype(np.float32)
    labels = rng.integers(0, 3, size=300)
    head_w = [rng.normal(size=(16, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)]
    det = calibrate(fit_detector(method, train, labels, head_w, k=4), train[:50])
    x = np.r_[
        np.maximum(rng.normal(1.0, 1.0, size=(40, 16)), 0), rng.uniform(0, 6, size=(20, 16))
    ].astype(np.float32)
    expected = det.score(x)

    model = _score_model(det, 16)
    got = np.asarray(model.predict(x, verbose=0), dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)

    path = tmp_path / "ood.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(loaded.predict(x, verbose=0)), got)
    assert not loaded.trainable_weights  # the detector is frozen in the exported model


@pytest.mark.slow
def test_knn_rejects_real_not_clothing_photos(
    real_data: Path, real_weights: Path, tmp_path: Path
) -> None:
    from clothopt.data import load_batch, open_dataset
    from clothopt.features import FeatureCache
    from clothopt.model.backbones import get_backbone
    from clothopt.model.compose import compose

    out_dir = real_data.parent / "not-clothing"
    if not out_dir.is_dir():
        pytest.skip("not-clothing photos not at ../shared/datasets")
    spec, data = get_backbone("mobilenet_025"), open_dataset(real_data)
    cache = FeatureCache(tmp_path / "features")
    feats = {s: cache.get(spec, str(real_weights), 0, 300, "nearest", data[s]) for s in data.splits}
    extractor = compose(spec, 300, str(real_weights), 0)
    paths = sorted(out_dir.glob("*.jpg"))
    x_out = np.concatenate(
        [
            extractor.predict_on_batch(load_batch(paths[i : i + 32], 300))
            for i in range(0, len(paths), 32)
        ]
    )
    det = calibrate(fit_detector("knn", feats["train"].x), feats["validation"].x)
    # measured: AUROC 0.988, 4.4% of not-clothing and 91.7% of test accepted
    assert auroc(det, feats["test"].x, x_out) > 0.98
    assert det.accepts(x_out).mean() < 0.06
    assert det.accepts(feats["test"].x).mean() > 0.9
