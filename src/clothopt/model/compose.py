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
4. (with a ``head``) the head a :class:`~clothopt.model.head.HeadParams` describes, fresh or
   with trained weights: feature normalisation, hidden Dense relu layers (Dropout between them,
   inert at inference), the logits, :func:`build_head` (the paper's head: only the logits);
5. (``softmax=True``) class probabilities.

Several image sizes (``size=[300, 500]``, exported model only) run one branch per size (its own
exact resize, the same preprocessing, a base of the same weights built at that size) and
concatenate the pooled features in the listed order, as the features of each size cached apart
and concatenated. ``tta=True`` (exported model only) runs the branches on the resized image
flipped horizontally too and averages the two views' logits; the flip comes after the resize,
as the feature cache's flipped entries do (nearest resize does not commute with a flip, so the
order is part of the contract: :class:`clothopt.features.FeatureKey`).

Only built-in Keras layers and ops (no Lambda, no custom class), so an exported model loads
with ``keras.saving.load_model(path, safe_mode=True)`` in a process that never imports clothopt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.model.backbones import BackboneSpec, build_base, preprocessing_layers

if TYPE_CHECKING:
    import keras

    from clothopt.model.head import HeadParams

__all__ = ["POOL_LAYER", "Head", "build_head", "compose", "pil_nearest_resize"]

# The layer names of a head's parts, shared with the trainer's model (``model.head``)
HIDDEN_LAYER = "hidden{}"
L2_LAYER = "head_l2"
STANDARDIZE_LAYER = "head_standardize"

POOL_LAYER = "pool"  # the pooled features: ``model.get_layer(POOL_LAYER).output`` in any model

# Builds an extra output of a composed model from its pooled features (B, feature_dim)
OutputBuilder = Callable[["keras.KerasTensor"], "keras.KerasTensor"]


@dataclass(frozen=True, kw_only=True, eq=False)
class Head:
    """The head :func:`compose` puts on the pooled features (the defaults: the paper's).

    ``weights`` (trained: every Dense layer's ``[kernel, bias]`` in order, hidden layers first,
    the logits last, as :attr:`HeadResult.weights <clothopt.model.head.HeadResult>`) replace
    the initial ones drawn from ``seed`` (logits: ``seed``, hidden layer i: ``seed + 1 + i``, as
    :class:`~clothopt.model.head.HeadTrainer` starts). ``normalize`` as
    :func:`~clothopt.model.head.normalize_features`; ``"standardize"`` needs ``mean`` and
    ``std``, the train statistics (:func:`~clothopt.model.head.feature_statistics`).
    """

    num_classes: int
    seed: int = 0
    weights: Sequence[np.ndarray] | None = None
    hidden_layers: int = 0
    hidden_units: int = 512
    dropout: float = 0.0
    normalize: str = "none"
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def of(cls, params: HeadParams, num_classes: int, **fields: Any) -> Head:
        """The head ``params`` describes; ``fields`` (seed, weights, mean, std) as above."""
        return cls(
            num_classes=num_classes,
            hidden_layers=params.hidden_layers,
            hidden_units=params.hidden_units,
            dropout=params.dropout,
            normalize=params.normalize,
            **fields,
        )


def build_head(num_classes: int, seed: int) -> keras.layers.Dense:
    """The paper's head: ``Dense(num_classes)`` logits, Glorot-uniform from ``seed``."""
    import keras

    return keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        bias_initializer="zeros",
        name="logits",
    )


def _head_layers(
    head: Head,
) -> tuple[list[keras.layers.Layer], list[keras.layers.Dense], list[np.ndarray] | None]:
    """Every layer of ``head`` in call order, its Dense layers, and their weights to set."""
    import keras

    layers: list[keras.layers.Layer] = []
    weights = None if head.weights is None else [np.asarray(w, "float32") for w in head.weights]
    if weights is not None and len(weights) != 2 * (head.hidden_layers + 1):
        raise ValueError(
            f"a head with {head.hidden_layers} hidden layers has {2 * (head.hidden_layers + 1)} "
            f"weight arrays, not {len(weights)}"
        )
    if head.normalize == "l2":
        # x * min(rsqrt(sum x^2), 1e12): x / max(norm, 1e-12), as normalize_features computes
        layers.append(keras.layers.UnitNormalization(name=L2_LAYER))
    elif head.normalize == "standardize":
        if head.mean is None or head.std is None:
            raise ValueError("a standardizing head needs the train features' mean and std")
        mean, std = np.asarray(head.mean, "float64"), np.asarray(head.std, "float64")
        # Normalization divides by max(sqrt(var), epsilon): a std below epsilon is divided by
        # epsilon there, and the rest of its division folded into the next kernel's rows
        clamped = np.maximum(std, keras.backend.epsilon())
        layers.append(
            keras.layers.Normalization(mean=mean, variance=clamped**2, name=STANDARDIZE_LAYER)
        )
        if weights is not None and np.any(clamped != std):
            weights[0] = (weights[0] * (clamped / std)[:, None]).astype("float32")
    elif head.normalize != "none":
        raise ValueError(f"unknown normalization {head.normalize!r}")
    dense: list[keras.layers.Dense] = []
    for i in range(head.hidden_layers + 1):
        # dropout as the trainer places it: before every Dense but the first hidden one
        if head.dropout > 0.0 and (i > 0 or head.hidden_layers == 0):
            layers.append(keras.layers.Dropout(head.dropout, seed=head.seed + 1000 + len(dense)))
        if i == head.hidden_layers:
            dense.append(build_head(head.num_classes, head.seed))
        else:
            dense.append(
                keras.layers.Dense(
                    head.hidden_units,
                    activation="relu",
                    kernel_initializer=keras.initializers.GlorotUniform(seed=head.seed + 1 + i),
                    bias_initializer="zeros",
                    name=HIDDEN_LAYER.format(i),
                )
            )
        layers.append(dense[-1])
    return layers, dense, weights


def pil_nearest_resize(
    images: keras.KerasTensor, size: int, name: str = "resize"
) -> keras.KerasTensor:
    """Symbolic ``(B, H, W, C)`` -> ``(B, size, size, C)`` with PIL NEAREST's exact pixels.

    H and W are read from the tensor at run time (a sum of ones: ``ops.shape`` of a symbolic
    tensor is static), so one model serves every image size; a batch holds one size.
    ``name`` prefixes its layers' names (one model may resize several times).
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
        name=f"{name}_out_size",
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
        name=f"{name}_running_sum",
    )(steps)
    index = ops.minimum(ops.floor(running[:, :, 0]), sizes - 1.0)
    index = ops.cast(index, "int32")
    rows = ops.take(images, index[0], axis=1)
    return ops.take(rows, index[1], axis=2)


def compose(
    spec: BackboneSpec,
    size: int | Sequence[int],
    weights: str = "imagenet",
    weights_seed: int = 0,
    *,
    precision: str = "float32",
    raw_input: bool = False,
    head: Head | None = None,
    softmax: bool = False,
    tta: bool = False,
    extra_outputs: Mapping[str, OutputBuilder] | None = None,
    name: str | None = None,
) -> keras.Model:
    """The network from parts; every model of the study is built by this one function.

    - training extractor (the defaults): ``(B, size, size, 3)`` RGB 0..255, float32 or uint8
      (cast in the model, cheaper than on the host) -> pooled features ``(B, feature_dim)``;
    - end-to-end training model: ``head=Head(num_classes=C, seed=s)`` -> ``(B, C)`` logits;
    - exported model: ``raw_input=True, head=Head(..., weights=trained), softmax=True``: raw RGB
      ``(B, H, W, 3)`` of any size (one per batch) -> ``(B, C)`` probabilities.

    ``size`` may list several sizes and ``tta`` flip the image too (module docstring): both
    need ``raw_input``. ``weights``/``weights_seed``/``precision`` go to :func:`build_base`
    (``precision`` sets the base's compute dtype only: the pooled features are float32 whatever
    it is). ``extra_outputs`` adds named outputs computed from the pooled features (of the
    image as given); with any, the model returns a dict whose main output is named
    ``"probabilities"``, ``"logits"`` or ``"features"``.
    """
    import keras
    from keras import ops

    sizes = [size] if isinstance(size, int) else [int(s) for s in size]
    if not sizes or len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes must be distinct and at least one, not {sizes}")
    if softmax and head is None:
        raise ValueError("softmax needs a head")
    if (len(sizes) > 1 or tta) and not raw_input:
        raise ValueError("several sizes or tta need raw_input (the resize is in the model)")
    if tta and head is None:
        raise ValueError("tta averages logits: it needs a head")
    many = len(sizes) > 1
    bases = {}
    for s in sizes:
        bases[s] = build_base(spec, s, weights, weights_seed, precision)
        if many:  # one base per size, the same weights; names must differ in one model
            bases[s]._name = f"{bases[s].name}_{s}px"
    preprocess = preprocessing_layers(spec)  # per pixel: one set serves every branch
    shape = (None, None, 3) if raw_input else (sizes[0], sizes[0], 3)
    inputs = keras.Input(shape, dtype="float32", name="image")

    def pooled_of(image: keras.KerasTensor, view: str, flip: bool = False) -> keras.KerasTensor:
        branches = []
        for s in sizes:
            tag = (f"_{s}px" if many else "") + view
            x = pil_nearest_resize(image, s, name=f"resize{tag}") if raw_input else image
            if flip:  # left-right (width: axis 2) after the resize, as the cache flips
                x = ops.flip(x, axis=2)
            for layer in preprocess:
                x = layer(x)
            x = bases[s](x, training=False)
            pool = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER + tag, dtype="float32")
            branches.append(pool(x))
        if not many:
            return branches[0]
        return keras.layers.Concatenate(name=POOL_LAYER + view, dtype="float32")(branches)

    pooled = pooled_of(inputs, "")
    out, main = pooled, "features"
    if head is not None:
        layers, dense, trained = _head_layers(head)

        def logits_of(features: keras.KerasTensor) -> keras.KerasTensor:
            for layer in layers:
                features = layer(features)
            return features

        out, main = logits_of(pooled), "logits"
        if tta:
            flipped = pooled_of(inputs, "_flipped", flip=True)
            out = keras.layers.Average(name="tta_logits")([out, logits_of(flipped)])
        if trained is not None:
            for i, layer in enumerate(dense):
                layer.set_weights(trained[2 * i : 2 * i + 2])
        if softmax:
            out, main = keras.layers.Softmax(name="probabilities")(out), "probabilities"
    if extra_outputs:
        if main in extra_outputs:
            raise ValueError(f"extra output {main!r} would replace the main output")
        out = {main: out, **{k: build(pooled) for k, build in extra_outputs.items()}}
    if name is None:
        suffix = {"features": "features", "logits": "e2e", "probabilities": "classifier"}[main]
        px = "_".join(f"{s}px" for s in sizes)  # "+" is not a valid TensorFlow scope name
        name = f"{spec.name}_{px}_{suffix}" if raw_input else f"{spec.name}_{suffix}"
    return keras.Model(inputs, out, name=name)
