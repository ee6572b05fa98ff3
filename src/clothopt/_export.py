"""The exported classifier: raw RGB images of any size in, class probabilities out.

The model holds every step training used, in built-in Keras layers and ops only (no Lambda, no
custom class), so ``keras.saving.load_model(path, safe_mode=True)`` loads it in a process that
never imports clothopt:

1. resize to ``size``×``size`` exactly as PIL's NEAREST does (what ``flow_from_directory``
   and :func:`clothopt.data.load_image` do). PIL walks each axis with a running float64
   ``x = scale / 2; x += scale`` and takes ``int(x)``; the accumulated rounding decides
   ~15% of size pairs, so the running sum is reproduced step by step (a closed form, or
   Keras ``Resizing("nearest")``, picks other pixels: a silent train/serve skew);
2. the backbone's ``preprocess_input`` as built-in layers (:func:`backbones.preprocessing_layers`);
3. the frozen base (``training=False``), global average pooling, the trained ``Dense`` head;
4. softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from clothopt.backbones import BackboneSpec, build_base, preprocessing_layers

if TYPE_CHECKING:
    import keras

__all__ = ["build_exported_model", "pil_nearest_resize"]


def pil_nearest_resize(images: keras.KerasTensor, size: int) -> keras.KerasTensor:
    """Symbolic ``(B, H, W, C)`` -> ``(B, size, size, C)`` with PIL NEAREST's exact pixels.

    H and W are read from the tensor at run time (a sum of ones: ``ops.shape`` of a symbolic
    tensor is static), so one model serves every image size; a batch holds one size.
    """
    import keras
    from keras import ops

    # float64 sizes: a sum of ones is exact in any order
    h = ops.sum(ops.cast(ops.ones_like(images[:1, :, :1, :1]), "float64"))  # one column
    w = ops.sum(ops.cast(ops.ones_like(images[:1, :1, :, :1]), "float64"))  # one row
    sizes = ops.reshape(ops.stack([h, w]), (2, 1))
    # The output size comes from a layer weight, not a constant: TensorFlow's graph optimizer
    # rewrites x / constant as x * (1 / constant), which rounds differently from PIL's division.
    out_size = keras.layers.Dense(
        1,
        dtype="float64",
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(float(size)),
        trainable=False,
        name="resize_out_size",
    )(sizes)
    scale = ops.divide(sizes, out_size)  # IEEE division, as PIL's in_size / out_size
    first_half = np.ones((1, size, 1), dtype="float64")
    first_half[0, 0, 0] = 0.5  # x starts at scale / 2 (exact: a power of two)
    steps = ops.multiply(ops.reshape(scale, (2, 1, 1)), first_half)
    # The running sum: an RNN with h_t = x_t + h_{t-1} adds strictly in order on any device,
    # as PIL's loop does (a parallel cumsum, as on GPUs, may associate differently).
    running = keras.layers.SimpleRNN(
        1,
        activation="linear",
        return_sequences=True,
        dtype="float64",
        kernel_initializer="ones",
        recurrent_initializer="ones",
        bias_initializer="zeros",
        trainable=False,
        name="resize_running_sum",
    )(steps)
    index = ops.minimum(ops.floor(running[:, :, 0]), sizes - 1.0)
    index = ops.cast(index, "int32")
    rows = ops.take(images, index[0], axis=1)
    return ops.take(rows, index[1], axis=2)


def build_exported_model(
    spec: BackboneSpec,
    size: int,
    weights: str,
    weights_seed: int,
    head_weights: Sequence[np.ndarray],
    classes: Sequence[str],
) -> keras.Model:
    """Raw RGB ``(B, H, W, 3)``, 0..255 (uint8 or float) -> ``(B, classes)`` probabilities."""
    import keras

    inputs = keras.Input((None, None, 3), dtype="float32", name="image")
    x = pil_nearest_resize(inputs, size)
    for layer in preprocessing_layers(spec):
        x = layer(x)
    x = build_base(spec, size, weights, weights_seed)(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    head = keras.layers.Dense(len(classes), name="logits")
    x = head(x)
    head.set_weights([np.asarray(w, dtype="float32") for w in head_weights])
    outputs = keras.layers.Softmax(name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_{size}px_classifier")
