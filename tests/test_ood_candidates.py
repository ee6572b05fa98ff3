"""The detector-candidate benchmark's halves, thresholds, figures and scorers."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from benchmarks.ood_candidates import (
    _auroc,
    auroc_gain_interval,
    averaged,
    halves,
    knn,
    out_figures,
    permutation_p,
    plain,
    predicted_class_knn,
    rank_mix,
    threshold_at,
)

from clothopt.final.ood import calibrate, fit_detector
from clothopt.metrics import auroc


def _views(x: np.ndarray, mirror: np.ndarray | None = None) -> dict:
    m = x if mirror is None else mirror
    return {(300, False): x, (300, True): m, (500, False): x, (500, True): m}


def test_halves_split_by_the_name_alone() -> None:
    names = [f"n{i:05d}_photo.jpg" for i in range(400)]
    choose, report = halves(names)
    assert sorted(np.r_[choose, report].tolist()) == list(range(400))
    assert 150 < len(choose) < 250  # about half
    for i in choose[:20]:
        assert hashlib.sha256(names[i].encode()).digest()[0] % 2 == 0
    # the folder's order does not move a photo between halves
    shuffled = names[::-1]
    again, _ = halves(shuffled)
    assert {shuffled[i] for i in again} == {names[i] for i in choose}


def test_threshold_is_calibrates() -> None:
    rng = np.random.default_rng(0)
    det = fit_detector("knn", rng.normal(size=(60, 8)), k=3)
    val = rng.normal(size=(41, 8))
    assert threshold_at(det.score(val)) == calibrate(det, val).threshold


def test_out_figures_count_accepted_photos() -> None:
    test = np.arange(1.0, 101.0)  # 95% of test accepted from 6.0 up
    val = np.arange(11.0, 111.0)  # 95% of validation accepted from 16.0 up
    out = np.array([0.0, 5.0, 6.0, 16.0])
    f = out_figures(val, test, out)
    assert f["fpr95"] == 0.5  # 6.0 and 16.0
    assert f["accepted"] == 0.25  # 16.0 only
    assert f["auroc"] == np.mean([(test > o).mean() + 0.5 * (test == o).mean() for o in out])


def test_permutation_tells_shift_from_noise() -> None:
    rng = np.random.default_rng(1)
    same = permutation_p(rng.normal(size=300), rng.normal(size=300), rounds=500)
    shifted = permutation_p(rng.normal(size=300), rng.normal(-0.5, size=300), rounds=500)
    assert same > 0.05
    assert shifted < 0.01


def test_mirrored_bank_counts_each_image_twice() -> None:
    rng = np.random.default_rng(2)
    train, query = rng.normal(size=(50, 6)), rng.normal(size=(7, 6))
    sets = {"train": _views(train), "test": _views(query)}
    # mirrors equal to the images: the 2k-th of the doubled bank is the k-th of the plain one
    doubled = knn(plain(300), 4, mirrored_bank=True)(sets)["test"]
    np.testing.assert_allclose(doubled, knn(plain(300), 4)(sets)["test"])
    # the average of image and mirror is what the bank and the queries hold
    mirrored = {"train": _views(train, -train), "test": _views(query, query)}
    assert np.all(knn(averaged(300), 1)(mirrored)["test"] == 0.0)  # a zero bank: cosine 0


def test_predicted_class_knn_looks_only_at_that_class() -> None:
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1])
    kernel, bias = np.array([[0.0, 1.0], [1.0, 0.0]]), np.zeros(2)  # predicts the wrong class
    sets = {"train": _views(train), "test": _views(np.array([[1.0, 0.0]]))}
    score = predicted_class_knn(plain(300), 1, (kernel, bias, y))(sets)["test"]
    # predicted class 1: its nearest train image is [0.1, 0.9], not [1, 0] itself
    np.testing.assert_allclose(score, [0.1 / np.hypot(0.1, 0.9)])


def test_auroc_gain_interval_is_paired() -> None:
    rng = np.random.default_rng(3)
    test, out = np.round(rng.normal(size=80), 1), np.round(rng.normal(-1.5, size=40), 1)
    assert _auroc(test, out) == pytest.approx(auroc(test, out), abs=1e-12)  # ties count half
    assert auroc_gain_interval((test, out), (test, out), resamples=200) == (0.0, 0.0)
    low, high = auroc_gain_interval((test, out), (test, out - 0.5), resamples=200)
    assert 0.0 < low <= high  # the same draws for both: a uniform gain is never negative


def test_rank_mix_weight_one_is_knns_percentile_among_train() -> None:
    rng = np.random.default_rng(4)
    train, y = rng.normal(size=(40, 5)), np.arange(40) % 2
    head = (rng.normal(size=(5, 2)), np.zeros(2), y)
    query = np.r_[train[:3] * 1.0001, rng.normal(size=(5, 5))]
    sets = {"train": _views(train), "test": _views(query)}
    mixed = rank_mix(plain(300), 3, "energy", head, 1.0)(sets)["test"]
    knn_scores = knn(plain(300), 3)(sets)["test"]
    assert np.all((mixed >= 0) & (mixed <= 1))
    lower = knn_scores[:, None] < knn_scores[None, :]
    assert np.all(mixed[:, None] <= mixed[None, :], where=lower)  # a monotone map of kNN
    assert len(np.unique(mixed)) > 1
