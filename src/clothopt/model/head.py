"""Head training at the speed of the head: one compiled Keras model per head shape, reused.

A trial of the paper's head used to build a model, compile it and trace a new train function
(~1.2 s, nearly all of it set-up). :class:`HeadTrainer` keeps one compiled model per *shape*
(what is traced into the graph: input dim, classes, hidden layers and units, optimizer kind,
schedule, and whether there is dropout, weight decay, label smoothing) and, per trial, resets
the weights to exactly what a freshly built layer with ``GlorotUniform(seed)`` / zero bias gets
and the optimizer's state to that of a new optimizer. The dropout rate, weight decay and label
smoothing are variables set per trial (on TensorFlow), so `wide` trials, whose rates are
continuous and never repeat, share a model instead of tracing one each (~0.5-1 s a trial);
their steps are bit for bit those of a model built for the trial. One traced function runs a
whole epoch (Keras's own ``train_step`` per batch, in a graph loop, on the trial's features
kept as tensors) and returns the validation logits.

For :class:`~clothopt.trial_spec.HeadParams` defaults (re-exported here) this is the paper's
head (``Dense(C)`` logits, Adam, constant learning rate) and gives the same weights, per-epoch
predictions and F1 as a model built and fitted from scratch (``tests/test_head.py`` checks it
against ``objective.train_head``).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.errors import InvalidArgument
from clothopt.metrics import classification_metrics, macro_f1
from clothopt.model.rates import TrialRates, smoothed_crossentropy, trial_dropout
from clothopt.trial_spec import NORMALIZE, OPTIMIZERS, SCHEDULES, HeadParams

if TYPE_CHECKING:
    import keras

__all__ = [
    "NORMALIZE",
    "OPTIMIZERS",
    "SCHEDULES",
    "HeadParams",
    "HeadResult",
    "HeadTrainer",
    "average_views",
    "feature_statistics",
    "head_logits",
    "normalize_features",
]

GRAPH_LOOP = True  # False: always the per-batch path (tests compare the two)

EpochCallback = Callable[[int, float], None]  # (epoch, validation macro-F1)
BatchOrder = Callable[[int, int, int], np.ndarray]  # (n, epoch, seed) -> permutation of n


@dataclass
class HeadResult:
    head_weights: list[np.ndarray]  # the logits layer's [kernel (D, C), bias (C,)]
    val_pred: np.ndarray
    val_metrics: dict[str, Any]
    epoch_f1: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    diverged: bool = False
    total_params: int = 0
    trainable_params: int = 0
    weights: list[np.ndarray] = field(default_factory=list)  # every layer's, in model order


def normalize_features(
    x_train: np.ndarray, x_val: np.ndarray, how: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(x_train, x_val)`` normalised as ``how`` says; ``standardize`` uses train statistics."""
    if how == "none":
        return x_train, x_val
    if how == "l2":

        def l2(x: np.ndarray) -> np.ndarray:
            norm = np.linalg.norm(x, axis=1, keepdims=True)
            return (x / np.maximum(norm, 1e-12)).astype(np.float32)

        return l2(x_train), l2(x_val)
    if how == "standardize":
        mean = x_train.mean(axis=0, dtype=np.float64)
        std = x_train.std(axis=0, dtype=np.float64)
        # constant features (std 0) stay 0 rather than dividing by zero
        std = np.where(std > 1e-12, std, 1.0)
        return (
            ((x_train - mean) / std).astype(np.float32),
            ((x_val - mean) / std).astype(np.float32),
        )
    raise InvalidArgument(f"head: normalize must be one of {', '.join(NORMALIZE)} (got {how!r})")


def feature_statistics(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(mean, std)`` (float64, per feature) that ``standardize`` uses: train statistics,
    a constant feature's std taken as 1 (an exported model needs them as its trainer did)."""
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    return mean, np.where(std > 1e-12, std, 1.0)


def head_logits(weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits of a trained head (:attr:`HeadResult.weights`: hidden Dense relu layers, then
    the logits; dropout is inert at inference) on already normalised features ``x``, in
    ``x``'s dtype (float32 features and weights: the paper head's ``x @ kernel + bias``)."""
    pairs = list(zip(weights[::2], weights[1::2], strict=True))
    for i, (kernel, bias) in enumerate(pairs):
        x = x @ kernel + bias
        if i < len(pairs) - 1:
            x = np.maximum(x, 0)
    return x


def average_views(logits: np.ndarray, views: int) -> np.ndarray:
    """Logits of ``views`` stacked copies of the same N examples (rows ``v*N .. v*N+N-1``),
    averaged per example: test-time augmentation. ``views=1`` returns them unchanged."""
    if views == 1:
        return logits
    n = len(logits) // views
    if n * views != len(logits):
        raise ValueError(f"{len(logits)} rows are not {views} views of the same examples")
    return np.asarray(logits, np.float32).reshape(views, n, -1).mean(axis=0)


def _graph_loop() -> bool:
    """Whether an epoch runs as one graph: it needs TensorFlow's train_step; other backends go
    batch by batch."""
    import keras

    return GRAPH_LOOP and keras.backend.backend() == "tensorflow"


@dataclass(frozen=True)
class _Shape:
    """What is traced into the graph; trials that share it share one compiled model."""

    input_dim: int
    num_classes: int
    hidden_layers: int
    hidden_units: int
    dropout: bool  # present at all (a rate > 0)
    weight_decay: bool
    label_smoothing: bool
    optimizer: str
    schedule: str
    # The three rates themselves where the backend traces them as constants (not TensorFlow's
    # graph loop); None: they are variables set per trial, so trials that differ only in them
    # (every wide trial: they are continuous) share one model instead of tracing a new one.
    constants: tuple[float, float, float] | None = None


class _Compiled:
    """One compiled head model, its optimizer, and its traced epoch function."""

    def __init__(self, shape: _Shape) -> None:
        import keras

        self.shape = shape
        self.rates = TrialRates(shape.num_classes, shape.constants)
        inputs = keras.Input((shape.input_dim,), name="features")
        x = inputs
        self.dense: list[keras.layers.Dense] = []
        self.dropouts: list[keras.layers.Dropout] = []
        for i in range(shape.hidden_layers):
            if i > 0:
                x = self._dropout(x)
            layer = keras.layers.Dense(shape.hidden_units, activation="relu", name=f"hidden{i}")
            self.dense.append(layer)
            x = layer(x)
        x = self._dropout(x)
        logits = keras.layers.Dense(shape.num_classes, name="logits")
        self.dense.append(logits)
        self.model = keras.Model(inputs, logits(x), name="head")
        self.optimizer = self._optimizer()
        self.model.compile(optimizer=self.optimizer, loss=self._loss())
        self.optimizer.build(self.model.trainable_variables)
        self.graph_loop = _graph_loop()
        self._epoch_fn = self._make_epoch_fn() if self.graph_loop else None

    def _dropout(self, x: Any) -> Any:
        if not self.shape.dropout:
            return x
        layer = trial_dropout(self.rates)
        self.dropouts.append(layer)
        return layer(x)

    def _loss(self) -> keras.losses.Loss:
        import keras

        if not self.shape.label_smoothing:  # the paper's loss, as it always was
            return keras.losses.CategoricalCrossentropy(from_logits=True)
        return smoothed_crossentropy(self.rates)

    def _optimizer(self) -> keras.optimizers.Optimizer:
        import keras

        kind = self.shape.optimizer
        decay = self.shape.weight_decay or kind == "adamw"
        # built with a placeholder decay (a positive one builds the decay step), then the decay
        # is read from the trial rates at every step, as the learning rate (set per trial) is
        if kind == "adam":
            opt: keras.optimizers.Optimizer = keras.optimizers.Adam(weight_decay=decay or None)
        elif kind == "adamw":
            opt = keras.optimizers.AdamW(weight_decay=1.0)
        else:
            opt = keras.optimizers.SGD(momentum=0.9, weight_decay=decay or None)
        if decay:
            opt.exclude_from_weight_decay(var_names=["bias"])
            opt.weight_decay = self.rates.weight_decay
        return opt

    def _make_epoch_fn(self) -> Callable[..., Any]:
        # tf (not keras.ops) here: the loop must run Keras's TensorFlow train_step in one graph,
        # so each batch costs what the head's maths costs, not a Python round trip
        import tensorflow as tf

        model, optimizer = self.model, self.optimizer
        cosine = self.shape.schedule == "cosine"
        spec = tf.TensorSpec((None, None), tf.float32)
        order_spec = tf.TensorSpec((None,), tf.int64)
        scalar_i, scalar_f = tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.float32)

        def step(xb: Any, yb: Any, lr: Any, total_steps: Any) -> None:
            if cosine:
                frac = tf.cast(optimizer.iterations, tf.float32) / tf.cast(total_steps, tf.float32)
                optimizer.learning_rate.assign(lr * 0.5 * (1.0 + tf.cos(math.pi * frac)))
            model.train_step((xb, yb))

        @tf.function(
            input_signature=[spec, spec, order_spec, spec, scalar_i, scalar_f, scalar_i],
            reduce_retracing=True,
        )
        def epoch(
            x: Any, y: Any, order: Any, x_val: Any, batch: Any, lr: Any, total_steps: Any
        ) -> Any:
            # the trial's features stay on the device; each epoch only sends its order
            x, y = tf.gather(x, order), tf.gather(y, order)
            for start in tf.range(0, tf.shape(x)[0], batch):
                step(x[start : start + batch], y[start : start + batch], lr, total_steps)
            return model(x_val, training=False)

        return epoch

    def reset(self, seed: int, params: HeadParams) -> None:
        """Weights as freshly built layers from ``seed`` get; the optimizer as a new one; the
        trial's rates."""
        import keras

        for i, layer in enumerate(self.dense):
            # the logits layer gets ``seed`` itself (the paper's head), hidden layer i seed+1+i
            layer_seed = seed if i == len(self.dense) - 1 else seed + 1 + i
            kernel = keras.initializers.GlorotUniform(seed=layer_seed)(layer.kernel.shape)
            layer.kernel.assign(kernel)
            layer.bias.assign(keras.ops.zeros(layer.bias.shape))
        for i, layer in enumerate(self.dropouts):
            layer.seed_generator.state.assign(np.array([seed + 1000 + i, 0], dtype="uint32"))
        for var in self.optimizer.variables:
            var.assign(keras.ops.zeros(var.shape, var.dtype))
        self.optimizer.learning_rate.assign(params.learning_rate)
        self.rates.set(params.dropout, params.weight_decay, params.label_smoothing)

    def inputs(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray) -> tuple[Any, Any, Any]:
        """A trial's arrays as :meth:`run_epoch` takes them: tensors made once per trial for
        the graph loop (not one host-to-device copy per epoch), else as they are."""
        if self._epoch_fn is None:
            return x, y, x_val
        import tensorflow as tf

        return tf.constant(x), tf.constant(y), tf.constant(x_val)

    def run_epoch(
        self, data: tuple[Any, Any, Any], order: np.ndarray, params: HeadParams, total: int
    ) -> tuple[float, np.ndarray]:
        """One epoch over ``data``'s rows ``x[order]`` (``data`` from :meth:`inputs`) in that
        order; returns (mean training loss, validation logits)."""
        x, y, x_val = data
        if self._epoch_fn is None:
            return self._run_epoch_by_batch(x[order], y[order], x_val, params, total)
        self.model.reset_metrics()
        lr, batch = params.learning_rate, params.batch_size
        logits = self._epoch_fn(x, y, np.asarray(order, np.int64), x_val, batch, lr, total)
        loss = float(self.model.get_metrics_result()["loss"])
        return loss, np.asarray(logits)

    def _run_epoch_by_batch(
        self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, params: HeadParams, total: int
    ) -> tuple[float, np.ndarray]:
        # the same steps through Keras's compiled train function, one call per batch
        batch, weighted, lr = params.batch_size, 0.0, params.learning_rate
        for start in range(0, len(x), batch):
            if self.shape.schedule == "cosine":
                frac = int(self.optimizer.iterations) / total
                self.optimizer.learning_rate.assign(lr * 0.5 * (1.0 + math.cos(math.pi * frac)))
            logs = self.model.train_on_batch(x[start : start + batch], y[start : start + batch])
            weighted += float(logs) * len(x[start : start + batch])
        logits = self.model.predict_on_batch(x_val)
        return weighted / len(x), np.asarray(logits)


class HeadTrainer:
    """Trains heads on cached features, reusing one compiled model per head shape.

    ``max_models`` bounds how many shapes stay compiled (least recently used goes first). A
    new shape costs 1-1.5 s (build, compile, trace) and a kept one 5-8 MB; the default keeps
    every shape of the `wide` space (48: ~300 MB if a study visits them all), where 4 made a
    random search rebuild on most trials.
    Not thread-safe: one trainer per worker thread.
    """

    def __init__(self, max_models: int = 48) -> None:
        self._models: OrderedDict[_Shape, _Compiled] = OrderedDict()
        self._max_models = max_models

    def _compiled(self, shape: _Shape) -> _Compiled:
        if shape in self._models:
            self._models.move_to_end(shape)
            return self._models[shape]
        compiled = _Compiled(shape)
        self._models[shape] = compiled
        while len(self._models) > self._max_models:
            self._models.popitem(last=False)
        return compiled

    def train(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        classes: Sequence[str],
        params: HeadParams,
        seed: int,
        batch_order: BatchOrder,
        on_epoch: EpochCallback | None = None,
        val_views: int = 1,
    ) -> HeadResult:
        """Train ``params``'s head from ``seed``; score validation macro-F1 after every epoch.

        Epoch ``e`` visits ``x_train[batch_order(n, e, seed)]`` in order (pass
        ``objective.batch_order`` for the study's order). ``on_epoch`` may raise to stop.
        ``val_views``: ``x_val`` holds that many stacked views of the ``len(y_val)`` examples
        (e.g. plain then flipped); their logits are averaged (:func:`average_views`).
        """
        num_classes = len(classes)
        x_train = np.asarray(x_train, np.float32)
        x_val = np.asarray(x_val, np.float32)
        x_train, x_val = normalize_features(x_train, x_val, params.normalize)
        rates = (params.dropout, params.weight_decay, params.label_smoothing)
        shape = _Shape(
            int(x_train.shape[1]),
            num_classes,
            params.hidden_layers,
            params.hidden_units,
            params.dropout > 0,
            params.weight_decay > 0,
            params.label_smoothing > 0,
            params.optimizer,
            params.schedule,
            None if _graph_loop() else rates,
        )
        compiled = self._compiled(shape)
        compiled.reset(seed, params)
        y_onehot = np.eye(num_classes, dtype=np.float32)[y_train]
        n = len(x_train)
        total = params.epochs * math.ceil(n / params.batch_size)
        result = HeadResult([], np.zeros(0, np.int64), {})
        start = time.perf_counter()
        data = compiled.inputs(x_train, y_onehot, x_val)
        for epoch in range(params.epochs):
            order = batch_order(n, epoch, seed)
            loss, logits = compiled.run_epoch(data, order, params, total)
            logits = average_views(logits, val_views)
            result.epoch_loss.append(loss)
            result.diverged |= not math.isfinite(loss)
            result.val_pred = np.argmax(logits, axis=1)
            result.epoch_f1.append(macro_f1(y_val, result.val_pred, num_classes))
            if on_epoch is not None:
                on_epoch(epoch, result.epoch_f1[-1])
        # the full report once, for the last epoch (its F1 is epoch_f1[-1], the same float)
        result.val_metrics = classification_metrics(y_val, result.val_pred, classes)
        result.train_seconds = time.perf_counter() - start
        model = compiled.model
        result.weights = [np.asarray(w) for w in model.get_weights()]
        result.head_weights = [np.asarray(w) for w in model.get_layer("logits").get_weights()]
        result.total_params = result.trainable_params = int(model.count_params())
        return result
