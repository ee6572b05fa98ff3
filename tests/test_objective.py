from __future__ import annotations

from pathlib import Path

import numpy as np

from clothopt.data import open_dataset
from clothopt.features import FeatureCache
from clothopt.model.backbones import get_backbone
from clothopt.objective import batch_order, train_end_to_end, train_head, trial_seed

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
