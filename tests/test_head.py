"""The head trainer: one reused compiled model per shape, the paper's head bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clothopt.end_to_end import train_head
from clothopt.errors import UserError
from clothopt.model.head import HeadParams, HeadTrainer, normalize_features
from clothopt.pipeline import batch_order

CLASSES = tuple(f"c{i}" for i in range(10))


def _features(n: int, d: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable-ish features: class means plus noise, scaled like pooled CNN features."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, (len(CLASSES), d))
    y = rng.integers(0, len(CLASSES), n)
    x = np.abs(means[y] + rng.normal(0.0, 0.5, (n, d))) * 3.0
    return x.astype(np.float32), y.astype(np.int64)


_X, _Y = _features(300, seed=1)
X_TR, Y_TR, X_VA, Y_VA = _X[:230], _Y[:230], _X[230:], _Y[230:]


def _train(trainer: HeadTrainer, seed: int, **kw: object) -> object:
    params = HeadParams(**kw)  # type: ignore[arg-type]
    return trainer.train(X_TR, Y_TR, X_VA, Y_VA, CLASSES, params, seed, batch_order)


def test_paper_head_matches_train_head_on_one_reused_model() -> None:
    """Trials one after another on the SAME compiled model equal fresh Keras models exactly."""
    trainer = HeadTrainer()
    points = [(3, 1e-2, 32), (11, 1e-3, 48), (3, 1e-4, 64), (25, 1e-2, 48), (3, 1e-2, 32)]
    for seed, lr, batch in points:
        epochs_f1: list[float] = []
        ref = train_head(X_TR, Y_TR, X_VA, Y_VA, CLASSES, lr, batch, 2, seed)
        got = trainer.train(
            X_TR,
            Y_TR,
            X_VA,
            Y_VA,
            CLASSES,
            HeadParams(learning_rate=lr, batch_size=batch),
            seed,
            batch_order,
            on_epoch=lambda _e, f1, out=epochs_f1: out.append(f1),
        )
        assert got.epoch_f1 == ref.epoch_f1 == epochs_f1  # bit-identical, every epoch
        assert got.epoch_loss == ref.epoch_loss
        np.testing.assert_array_equal(got.val_pred, ref.val_pred)
        for a, b in zip(got.head_weights, ref.head_weights, strict=True):
            np.testing.assert_array_equal(a, b)
        assert got.val_metrics == ref.val_metrics
    assert len(trainer._models) == 1  # one shape, one compiled model for every trial


def test_reset_is_complete_for_a_wide_head() -> None:
    """A wide head (hidden, dropout, adamw, smoothing, cosine) trained after other trials on
    the reused model equals the same trial on a brand-new trainer."""
    wide = dict(
        hidden_layers=1,
        hidden_units=32,
        dropout=0.5,
        label_smoothing=0.1,
        optimizer="adamw",
        weight_decay=1e-4,
        schedule="cosine",
        normalize="l2",
        epochs=3,
        batch_size=32,
    )
    fresh = _train(HeadTrainer(), 5, learning_rate=1e-2, **wide)
    reused = HeadTrainer()
    _train(reused, 9, learning_rate=3e-2, **wide)
    _train(reused, 5, learning_rate=1e-3, **wide)
    again = _train(reused, 5, learning_rate=1e-2, **wide)
    assert again.epoch_f1 == fresh.epoch_f1  # type: ignore[attr-defined]
    assert again.epoch_loss == fresh.epoch_loss  # type: ignore[attr-defined]
    for a, b in zip(again.weights, fresh.weights, strict=True):  # type: ignore[attr-defined]
        np.testing.assert_array_equal(a, b)
    other_seed = _train(reused, 6, learning_rate=1e-2, **wide)
    assert not np.array_equal(other_seed.weights[0], fresh.weights[0])  # type: ignore[attr-defined]


def test_wide_head_without_dropout_matches_a_plain_keras_fit() -> None:
    """Hidden layer, AdamW, label smoothing: the same maths as a model built and fitted anew."""
    import keras

    lr, wd, seed, batch = 3e-3, 1e-3, 4, 32
    got = _train(
        HeadTrainer(),
        seed,
        learning_rate=lr,
        batch_size=batch,
        hidden_layers=1,
        hidden_units=16,
        optimizer="adamw",
        weight_decay=wd,
        label_smoothing=0.1,
    )
    inputs = keras.Input((X_TR.shape[1],))
    init = keras.initializers.GlorotUniform
    h = keras.layers.Dense(16, activation="relu", kernel_initializer=init(seed=seed + 1))(inputs)
    out = keras.layers.Dense(10, kernel_initializer=init(seed=seed))(h)
    model = keras.Model(inputs, out)
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=wd)
    opt.exclude_from_weight_decay(var_names=["bias"])
    model.compile(
        optimizer=opt,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
    )
    y1 = np.eye(10, dtype=np.float32)[Y_TR]
    for epoch in range(2):
        order = batch_order(len(X_TR), epoch, seed)
        model.fit(X_TR[order], y1[order], batch_size=batch, shuffle=False, verbose=0)
    for a, b in zip(got.weights, model.get_weights(), strict=True):  # type: ignore[attr-defined]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    ref_pred = np.argmax(model.predict(X_VA, verbose=0), axis=1)
    np.testing.assert_array_equal(got.val_pred, ref_pred)  # type: ignore[attr-defined]


def _keras_fit(seed: int, lr: float, batch: int, epochs: int, **rates: float) -> list:
    """A head built and fitted anew by plain Keras for one trial's rates: Dense(16, relu),
    Dropout(seed=0), Dense(10); AdamW without decay on biases; smoothed cross-entropy."""
    import keras

    init = keras.initializers.GlorotUniform
    inputs = keras.Input((X_TR.shape[1],))
    h = keras.layers.Dense(16, activation="relu", kernel_initializer=init(seed=seed + 1))(inputs)
    dropout = keras.layers.Dropout(rates["dropout"], seed=0)
    dropout.seed_generator.state.assign(np.array([seed + 1000, 0], dtype="uint32"))
    out = keras.layers.Dense(10, kernel_initializer=init(seed=seed))(dropout(h))
    model = keras.Model(inputs, out)
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=rates["weight_decay"])
    opt.exclude_from_weight_decay(var_names=["bias"])
    loss = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=rates["label_smoothing"]
    )
    model.compile(optimizer=opt, loss=loss)
    y1 = np.eye(10, dtype=np.float32)[Y_TR]
    for epoch in range(epochs):
        order = batch_order(len(X_TR), epoch, seed)
        model.fit(X_TR[order], y1[order], batch_size=batch, shuffle=False, verbose=0)
    return model.get_weights()


def test_trials_that_differ_in_rates_share_a_model_bit_for_bit() -> None:
    """Dropout, weight decay and label smoothing are read per trial, not traced: trials that
    differ only in them (every wide trial) share one compiled model, and each trial's weights
    equal, bit for bit, those of a plain Keras model built for its rates."""
    trainer = HeadTrainer()
    trials = [
        (3, dict(dropout=0.5, weight_decay=1e-3, label_smoothing=0.1)),
        (4, dict(dropout=0.13, weight_decay=3e-5, label_smoothing=0.17)),
        (3, dict(dropout=0.37, weight_decay=2e-2, label_smoothing=0.03)),
    ]
    for seed, rates in trials:
        got = _train(
            trainer,
            seed,
            learning_rate=3e-3,
            batch_size=32,
            epochs=2,
            hidden_layers=1,
            hidden_units=16,
            optimizer="adamw",
            **rates,
        )
        ref = _keras_fit(seed, 3e-3, 32, 2, **rates)
        for a, b in zip(got.weights, ref, strict=True):  # type: ignore[attr-defined]
            np.testing.assert_array_equal(a, b)
    assert len(trainer._models) == 1


def test_cosine_schedule_decays_over_all_steps() -> None:
    trainer = HeadTrainer()
    lr, batch, epochs = 1e-2, 64, 3
    _train(trainer, 1, learning_rate=lr, batch_size=batch, epochs=epochs, schedule="cosine")
    (compiled,) = trainer._models.values()
    total = epochs * math.ceil(len(X_TR) / batch)
    assert int(compiled.optimizer.iterations) == total
    last = lr * 0.5 * (1 + math.cos(math.pi * (total - 1) / total))  # the last step's rate
    assert float(compiled.optimizer.learning_rate) == pytest.approx(last, rel=1e-5)


def test_each_head_shape_gets_its_own_model_and_sgd_learns() -> None:
    trainer = HeadTrainer(max_models=2)
    sgd = _train(trainer, 2, learning_rate=1e-2, batch_size=32, optimizer="sgd", epochs=8)
    _train(trainer, 2, learning_rate=1e-2, batch_size=32)
    _train(trainer, 2, learning_rate=1e-2, batch_size=32, hidden_layers=1, hidden_units=8)
    assert len(trainer._models) == 2  # the least recently used shape was dropped
    assert sgd.epoch_f1[-1] > 0.3  # type: ignore[attr-defined]  # chance is 0.1
    assert sgd.epoch_loss[-1] < sgd.epoch_loss[0]  # type: ignore[attr-defined]


def test_normalize_uses_train_statistics_only() -> None:
    tr = np.array([[1.0, 2.0], [3.0, 2.0]], np.float32)
    va = np.array([[5.0, 4.0]], np.float32)
    s_tr, s_va = normalize_features(tr, va, "standardize")
    np.testing.assert_allclose(s_tr, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(s_va, [[3.0, 2.0]])  # constant column: centred, not divided by 0
    l_tr, l_va = normalize_features(tr, va, "l2")
    np.testing.assert_allclose(np.linalg.norm(l_tr, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(l_va, [[5 / math.sqrt(41), 4 / math.sqrt(41)]], rtol=1e-6)
    assert normalize_features(tr, va, "none")[0] is tr


@pytest.mark.parametrize(
    "bad",
    [
        {"optimizer": "rmsprop"},
        {"schedule": "step"},
        {"normalize": "pca"},
        {"dropout": 1.0},
        {"learning_rate": 0.0},
        {"batch_size": 0},
        {"hidden_layers": -1},
    ],
)
def test_bad_head_params_are_user_errors(bad: dict[str, object]) -> None:
    kw: dict[str, object] = {"learning_rate": 1e-3, "batch_size": 32} | bad
    with pytest.raises(UserError):
        HeadParams(**kw)  # type: ignore[arg-type]


def test_defaults_are_the_papers_head() -> None:
    p = HeadParams(learning_rate=1e-3, batch_size=32)
    assert (p.hidden_layers, p.dropout, p.weight_decay, p.label_smoothing) == (0, 0.0, 0.0, 0.0)
    assert (p.optimizer, p.epochs, p.schedule, p.normalize) == ("adam", 2, "constant", "none")


def test_per_batch_path_for_other_backends_trains_the_same_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backend-agnostic path (train_on_batch per batch) gives the graph loop's head."""
    import clothopt.model.head as head

    kw = dict(learning_rate=1e-2, batch_size=48, schedule="cosine", hidden_layers=1)
    graph = _train(HeadTrainer(), 8, hidden_units=16, **kw)
    monkeypatch.setattr(head, "GRAPH_LOOP", False)
    trainer = HeadTrainer()
    by_batch = _train(trainer, 8, hidden_units=16, **kw)
    assert not next(iter(trainer._models.values())).graph_loop
    for a, b in zip(by_batch.weights, graph.weights, strict=True):  # type: ignore[attr-defined]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(by_batch.val_pred, graph.val_pred)  # type: ignore[attr-defined]
    np.testing.assert_allclose(by_batch.epoch_loss, graph.epoch_loss, rtol=1e-5)  # type: ignore[attr-defined]
