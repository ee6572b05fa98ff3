"""The one composition of the network: every model clothopt builds is assembled here.

:func:`compose` chains, from parts, the same steps for every path, so the exported model is the
model that was trained:

1. (exported model only, ``raw_input=True``) resize to ``size``×``size`` exactly as PIL's
   NEAREST does (what ``flow_from_directory`` and :func:`clothopt.data.load_image` do). PIL
   walks each axis with a running float64 ``x = scale / 2; x += scale`` and takes ``int(x)``;
   the accumulated rounding decides ~15% of size pairs, so the running sum is reproduced step
   by step (a closed form, or Keras ``Resizing("nearest")``, picks other pixels: a silent
   train/serve skew);
2. the backbone's ``preprocess_input`` as built-in layers
   (:func:`clothopt.model.backbones.preprocessing_layers`);
3. the frozen base (``training=False``) and global average pooling: the pooled features, what
   the feature cache stores (the training extractor ends here);
4. (with a ``head``) the paper's head, :func:`build_head`, fresh or with trained weights;
5. (``softmax=True``) class probabilities.

Only built-in Keras layers and ops (no Lambda, no custom class), so an exported model loads
with ``keras.saving.load_model(path, safe_mode=True)`` in a process that never imports clothopt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clothopt.model.backbones import BackboneSpec, build_base, preprocessing_layers

if TYPE_CHECKING:
    import keras

__all__ = ["POOL_LAYER", "Head", "build_head", "compose", "pil_nearest_resize"]

POOL_LAYER = "pool"  # the pooled features: ``model.get_layer(POOL_LAYER).output`` in any model

# Builds an extra output of a composed model from its pooled features (B, feature_dim)
OutputBuilder = Callable[["keras.KerasTensor"], "keras.KerasTensor"]


@dataclass(frozen=True, kw_only=True, eq=False)
class Head:
    """The head :func:`compose` puts on the pooled features.

    ``weights`` (``[kernel (D, C), bias (C,)]``, trained) replace the initial ones drawn from
    ``seed``.
    """

    num_classes: int
    seed: int = 0
    weights: Sequence[np.ndarray] | None = None


def build_head(num_classes: int, seed: int) -> keras.layers.Dense:
    """The paper's head: ``Dense(num_classes)`` logits, Glorot-uniform from ``seed``."""
    import keras

    return keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        bias_initializer="zeros",
        name="logits",
    )


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


def compose(
    spec: BackboneSpec,
    size: int,
    weights: str = "imagenet",
    weights_seed: int = 0,
    *,
    precision: str = "float32",
    raw_input: bool = False,
    head: Head | None = None,
    softmax: bool = False,
    extra_outputs: Mapping[str, OutputBuilder] | None = None,
    name: str | None = None,
) -> keras.Model:
    """The network from parts; every model of the study is built by this one function.

    - training extractor (the defaults): ``(B, size, size, 3)`` RGB 0..255, float32 or uint8
      (cast in the model, cheaper than on the host) -> pooled features ``(B, feature_dim)``;
    - end-to-end training model: ``head=Head(num_classes=C, seed=s)`` -> ``(B, C)`` logits;
    - exported model: ``raw_input=True, head=Head(..., weights=trained), softmax=True``: raw RGB
      ``(B, H, W, 3)`` of any size (one per batch) -> ``(B, C)`` probabilities.

    ``weights``/``weights_seed``/``precision`` go to :func:`build_base` (``precision`` sets the
    base's compute dtype only: the pooled features are float32 whatever it is).
    ``extra_outputs`` adds named outputs computed from the pooled features; with any, the model
    returns a dict whose main output is named ``"probabilities"``, ``"logits"`` or
    ``"features"``.
    """
    import keras

    if softmax and head is None:
        raise ValueError("softmax needs a head")
    base = build_base(spec, size, weights, weights_seed, precision)
    shape = (None, None, 3) if raw_input else (size, size, 3)
    inputs = keras.Input(shape, dtype="float32", name="image")
    x = pil_nearest_resize(inputs, size) if raw_input else inputs
    for layer in preprocessing_layers(spec):
        x = layer(x)
    x = base(x, training=False)
    pooled = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER, dtype="float32")(x)
    out, main = pooled, "features"
    if head is not None:
        dense = build_head(head.num_classes, head.seed)
        out, main = dense(pooled), "logits"
        if head.weights is not None:
            dense.set_weights([np.asarray(w, dtype="float32") for w in head.weights])
        if softmax:
            out, main = keras.layers.Softmax(name="probabilities")(out), "probabilities"
    if extra_outputs:
        if main in extra_outputs:
            raise ValueError(f"extra output {main!r} would replace the main output")
        out = {main: out, **{k: build(pooled) for k, build in extra_outputs.items()}}
    if name is None:
        suffix = {"features": "features", "logits": "e2e", "probabilities": "classifier"}[main]
        name = f"{spec.name}_{size}px_{suffix}" if raw_input else f"{spec.name}_{suffix}"
    return keras.Model(inputs, out, name=name)
