"""The per-trial rates a shared head model reads: dropout, weight decay, label smoothing.

:class:`~clothopt.model.head.HeadTrainer` shares one compiled model between trials that differ
only in these (every `wide` trial: they are continuous). On TensorFlow they are variables set
per trial; elsewhere constants of the model. Each holds the float32 that a Keras layer, loss or
optimizer built for the trial would turn its Python float into (dropout's scale ``1/(1-rate)``
rounded once, smoothing's ``1-s`` and ``s/C``), so the shared model's steps are, bit for bit,
those of a model built for the trial (``tests/test_head.py`` checks it against plain Keras).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

__all__ = ["TrialRates", "smoothed_crossentropy", "trial_dropout"]


class TrialRates:
    """The rates as a model reads them: variables (``constants`` None), set per trial with
    :meth:`set`, or the given ``(dropout, weight_decay, label_smoothing)`` fixed."""

    NAMES = ("dropout_rate", "dropout_scale", "weight_decay", "smooth_keep", "smooth_add")

    def __init__(self, num_classes: int, constants: tuple[float, float, float] | None) -> None:
        self.num_classes = num_classes
        self.variables = constants is None
        values = self._values(*(constants or (0.0, 0.0, 0.0)))
        for name, value in zip(self.NAMES, values, strict=True):
            if self.variables:
                import tensorflow as tf

                value = tf.Variable(value, trainable=False, dtype=tf.float32, name=name)
            setattr(self, name, value)

    def _values(self, dropout: float, wd: float, smoothing: float) -> list[float]:
        f32 = np.float32
        return [
            float(f32(dropout)),
            float(f32(1 / (1 - dropout))),  # what stateless_dropout multiplies by
            float(f32(wd)),
            float(f32(1.0 - smoothing)),  # categorical_crossentropy's smoothing, as Keras rounds
            float(f32(smoothing) / f32(self.num_classes)),
        ]

    def set(self, dropout: float, weight_decay: float, label_smoothing: float) -> None:
        """A trial's rates (nothing to do where they are the model's constants)."""
        if not self.variables:
            return
        values = self._values(dropout, weight_decay, label_smoothing)
        for name, value in zip(self.NAMES, values, strict=True):
            getattr(self, name).assign(value)


def trial_dropout(rates: TrialRates) -> keras.layers.Layer:
    """Keras's ``Dropout(rate, seed=0)`` with the rate read from ``rates``: the same seed
    generator and stateless draw, the same mask and scale (``stateless_dropout``'s maths)."""
    import keras

    class TrialDropout(keras.layers.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.seed_generator = keras.random.SeedGenerator(0)

        def call(self, inputs: Any, training: bool = False) -> Any:
            if not training:
                return inputs
            ops = keras.ops
            noise = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator)
            scaled = ops.multiply(inputs, ops.cast(rates.dropout_scale, inputs.dtype))
            keep = ops.greater_equal(noise, ops.cast(rates.dropout_rate, inputs.dtype))
            return ops.where(keep, scaled, ops.zeros((), inputs.dtype))

    return TrialDropout()


def smoothed_crossentropy(rates: TrialRates) -> keras.losses.Loss:
    """``CategoricalCrossentropy(from_logits=True, label_smoothing=s)`` with ``s`` read from
    ``rates`` (Keras's own ``y * (1 - s) + s / C``, then its cross-entropy)."""
    import keras

    class Smoothed(keras.losses.Loss):
        def call(self, y_true: Any, y_pred: Any) -> Any:
            y_true = keras.ops.cast(y_true, y_pred.dtype) * rates.smooth_keep
            return keras.ops.categorical_crossentropy(
                y_true + rates.smooth_add, y_pred, from_logits=True
            )

    return Smoothed(name="categorical_crossentropy")
