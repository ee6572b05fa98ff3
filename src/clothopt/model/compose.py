"""The one composition of the network: every model clothopt builds is assembled here.

:func:`compose` chains, from parts, the same steps for every path, so the exported model is the
model that was trained:

1. (exported model only, ``raw_input=True``) resize to ``size``×``size`` exactly as PIL's
   NEAREST does (what ``flow_from_directory`` and :func:`clothopt.data.load_image` do). PIL
   walks each axis with a running float64 ``x = scale / 2; x += scale`` and takes ``int(x)``;
   the accumulated rounding decides ~15% of size pairs (a closed form alone, or Keras
   ``Resizing("nearest")``, picks other pixels: a silent train/serve skew). The model computes
   the exact index in int32 and subtracts PIL's rounding from a table built once
   (:func:`nearest_corrections`): the same pixels under TensorFlow, JAX and PyTorch, with no
   float64 (JAX's default 32-bit mode truncates it);
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

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.data.images import nearest_indices
from clothopt.errors import InvalidArgument
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
    # a blend of configurations (several heads of other features in one model): this head's
    # own sizes (concatenated in this order) and TTA, None: the model's; its share of the
    # probability average, None: equal shares
    sizes: tuple[int, ...] | None = None
    tta: bool | None = None
    share: float | None = None

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


def build_head(num_classes: int, seed: int, name: str = "logits") -> keras.layers.Dense:
    """The paper's head: ``Dense(num_classes)`` logits, Glorot-uniform from ``seed``."""
    import keras

    return keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        bias_initializer="zeros",
        name=name,
    )


def _head_layers(
    head: Head, prefix: str = ""
) -> tuple[list[keras.layers.Layer], list[keras.layers.Dense], list[np.ndarray] | None]:
    """Every layer of ``head`` in call order, its Dense layers, and their weights to set;
    ``prefix`` starts every layer name (an ensemble's members: ``member{i}_``)."""
    import keras

    layers: list[keras.layers.Layer] = []
    weights = None if head.weights is None else [np.asarray(w, "float32") for w in head.weights]
    if weights is not None and len(weights) != 2 * (head.hidden_layers + 1):
        raise InvalidArgument(
            f"a head with {head.hidden_layers} hidden layers has {2 * (head.hidden_layers + 1)} "
            f"weight arrays, not {len(weights)}"
        )
    if head.normalize == "l2":
        # x * min(rsqrt(sum x^2), 1e12): x / max(norm, 1e-12), as normalize_features computes
        layers.append(keras.layers.UnitNormalization(name=prefix + L2_LAYER))
    elif head.normalize == "standardize":
        if head.mean is None or head.std is None:
            raise InvalidArgument("a standardizing head needs the train features' mean and std")
        mean, std = np.asarray(head.mean, "float64"), np.asarray(head.std, "float64")
        # Normalization divides by max(sqrt(var), epsilon): a std below epsilon is divided by
        # epsilon there, and the rest of its division folded into the next kernel's rows
        clamped = np.maximum(std, keras.backend.epsilon())
        layers.append(
            keras.layers.Normalization(
                mean=mean, variance=clamped**2, name=prefix + STANDARDIZE_LAYER
            )
        )
        if weights is not None and np.any(clamped != std):
            weights[0] = (weights[0] * (clamped / std)[:, None]).astype("float32")
    elif head.normalize != "none":
        raise InvalidArgument(f"unknown normalization {head.normalize!r}")
    dense: list[keras.layers.Dense] = []
    for i in range(head.hidden_layers + 1):
        # dropout as the trainer places it: before every Dense but the first hidden one
        if head.dropout > 0.0 and (i > 0 or head.hidden_layers == 0):
            layers.append(keras.layers.Dropout(head.dropout, seed=head.seed + 1000 + len(dense)))
        if i == head.hidden_layers:
            named = (prefix + "logits",) if prefix else ()  # a member's own name
            dense.append(build_head(head.num_classes, head.seed, *named))
        else:
            dense.append(
                keras.layers.Dense(
                    head.hidden_units,
                    activation="relu",
                    kernel_initializer=keras.initializers.GlorotUniform(seed=head.seed + 1 + i),
                    bias_initializer="zeros",
                    name=prefix + HIDDEN_LAYER.format(i),
                )
            )
        layers.append(dense[-1])
    return layers, dense, weights


# Sides up to this get PIL's exact pixels from the correction table; beyond it, the closed form
# (off from PIL's only where its running sum rounded down onto an integer: rare, see below).
RESIZE_MAX_SIDE = 16384
_BITS = 24  # correction bits per float32 word: integers below 2**24 are exact in float32


@functools.lru_cache(maxsize=16)
def nearest_corrections(
    size: int, max_side: int = RESIZE_MAX_SIDE
) -> tuple[np.ndarray, np.ndarray]:
    """Where PIL's running double sum and the exact index differ, for every input side.

    PIL's NEAREST takes, for output pixel ``k`` of ``size``, ``int(x_k)`` where ``x_0 = s / 2``,
    ``x_k = x_{k-1} + s`` in float64 and ``s = n / size``. The exact value ``(2k+1)n / (2 size)``
    is a fraction with denominator ``2 size``: when it is not an integer it lies at least
    ``1 / (2 size)`` from one, far beyond the sum's rounding error (< 1e-9 for these sides),
    so both floors agree; when it is an integer, the float sum may land just below it and PIL
    takes one less. The correction (0 or 1) is therefore a property of ``(n, k)`` alone,
    computed here once from :func:`clothopt.data.nearest_indices` (PIL's float64 sequence).

    Returns ``(row_of_side, words)``: ``row_of_side[n]`` (float32, ``n`` in
    ``0..max_side + 1``) is the row of ``words`` holding side ``n``'s bits, 0 for sides without
    corrections and for ``max_side + 1`` (where longer sides are clamped); ``words[r, k // 24]``
    holds bit ``k % 24`` of row ``r`` (float32 integers below 2**24, exact on every backend).
    """
    sides = max_side + 2  # 0 (no image) .. max_side, then the clamp row
    running = np.zeros((sides, size), dtype=np.int64)
    for n in range(1, sides):  # PIL's own float64 sequence, one side at a time
        running[n] = nearest_indices(n, size)
    exact = (2 * np.arange(size) + 1)[None, :] * np.arange(sides)[:, None] // (2 * size)
    corr = exact - running
    corr[-1] = 0  # the clamp row for longer sides: no table, the closed form
    if corr.min() < 0 or corr.max() > 1:  # the argument above, checked on every table built
        raise AssertionError(f"nearest resize to {size}: a correction outside 0..1")
    rows = np.flatnonzero(corr.any(axis=1))
    row_of_side = np.zeros(sides, dtype=np.float32)
    row_of_side[rows] = np.arange(1, len(rows) + 1)
    bits = np.zeros((len(rows) + 1, -(-size // _BITS) * _BITS), dtype=np.int64)
    bits[1:, :size] = corr[rows]
    weights = (bits.reshape(len(rows) + 1, -1, _BITS) << np.arange(_BITS)).sum(axis=2)
    return row_of_side, weights.astype(np.float32)


def pil_nearest_resize(
    images: keras.KerasTensor, size: int, name: str = "resize"
) -> keras.KerasTensor:
    """Symbolic ``(B, H, W, C)`` -> ``(B, size, size, C)`` with PIL NEAREST's exact pixels.

    Integer arithmetic only, so the pixels are the same under TensorFlow, JAX (whose default
    32-bit mode once truncated a float64 running sum) and PyTorch: index ``k`` of a side ``n``
    is ``(2k+1)n // (2 size)`` less PIL's rounding correction, looked up in a table stored as
    two Embedding layers (:func:`nearest_corrections`). H and W are read from the tensor at run
    time (a sum of ones: ``ops.shape`` of a symbolic tensor is static), so one model serves
    every image size; a batch holds one size. ``name`` prefixes its layers' names.
    """
    import keras
    from keras import ops

    row_of_side, words = nearest_corrections(size)
    max_row = len(row_of_side) - 1
    h = ops.sum(ops.ones_like(images[:1, :, :1, :1], dtype="int32"))  # one column
    w = ops.sum(ops.ones_like(images[:1, :1, :, :1], dtype="int32"))  # one row
    sides = ops.reshape(ops.stack([h, w]), (2, 1))  # (2, 1) int32
    # the tables are layer weights (saved in the .keras file's weights, not in its JSON config)
    row_layer = keras.layers.Embedding(
        max_row + 1, 1, trainable=False, name=f"{name}_correction_rows"
    )
    rows = row_layer(ops.minimum(sides, max_row))  # (2, 1, 1)
    table_layer = keras.layers.Embedding(
        words.shape[0], words.shape[1], trainable=False, name=f"{name}_corrections"
    )
    table = table_layer(ops.cast(rows[:, :, 0], "int32"))  # (2, 1, words)
    row_layer.set_weights([row_of_side[:, None]])
    table_layer.set_weights([words])
    k = np.arange(size)
    word = ops.cast(ops.take(table[:, 0, :], k // _BITS, axis=1), "int32")  # (2, size)
    fix = ops.bitwise_and(
        ops.right_shift(word, (k % _BITS).astype("int32")), np.ones(size, "int32")
    )
    index = ops.floor_divide(sides * (2 * k + 1).astype("int32"), 2 * size) - fix
    rows_taken = ops.take(images, index[0], axis=1)
    return ops.take(rows_taken, index[1], axis=2)


def _head_output(
    head: Head,
    pooled: keras.KerasTensor,
    flipped: keras.KerasTensor | None,
    prefix: str = "",
) -> keras.KerasTensor:
    """``head``'s logits on the pooled features, averaged with those of the flipped view when
    there is one (TTA); its trained weights set."""
    import keras

    layers, dense, trained = _head_layers(head, prefix)

    def logits_of(features: keras.KerasTensor) -> keras.KerasTensor:
        for layer in layers:
            features = layer(features)
        return features

    out = logits_of(pooled)
    if flipped is not None:
        out = keras.layers.Average(name=prefix + "tta_logits")([out, logits_of(flipped)])
    if trained is not None:
        for i, layer in enumerate(dense):
            layer.set_weights(trained[2 * i : 2 * i + 2])
    return out


def _average(members: list[keras.KerasTensor], shares: list[float | None]) -> keras.KerasTensor:
    """The members' probabilities averaged, in one layer named ``probabilities``: equally
    (``Average``), or by their shares (each ``Rescaling`` by its share of the total, summed)."""
    import keras

    if all(s is None for s in shares) or len({float(s or 0.0) for s in shares}) == 1:
        return keras.layers.Average(name="probabilities")(members)
    if any(s is None or not s > 0.0 for s in shares):
        raise InvalidArgument(f"a blend's shares must all be given and positive, not {shares}")
    total = float(sum(shares))  # type: ignore[arg-type]
    scaled = [
        keras.layers.Rescaling(float(s) / total, name=f"member{i}_share")(m)  # type: ignore[arg-type]
        for i, (m, s) in enumerate(zip(members, shares, strict=True))
    ]
    return keras.layers.Add(name="probabilities")(scaled)


def compose(
    spec: BackboneSpec,
    size: int | Sequence[int],
    weights: str = "imagenet",
    weights_seed: int = 0,
    *,
    precision: str = "float32",
    raw_input: bool = False,
    head: Head | Sequence[Head] | None = None,
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

    ``head`` may be several heads (an ensemble: the K fold heads or R seed heads of one
    configuration, each on the same pooled features, its layers named ``member{i}_...``): each
    member's probabilities (its TTA logits averaged first, as a single head's) are averaged in
    one ``Average`` layer named ``probabilities``. Probabilities, not logits: the members are
    trained apart (other rows, other seeds, their own standardization), so their logits need
    not share a scale, and a logit average (a geometric mean of the probabilities) lets one
    over-confident member outvote the rest; the probability average is the bagging estimate
    the search's out-of-fold figures describe. A single head is composed exactly as before.

    A blend of configurations (finalize's top-configuration ensemble) gives heads their own
    ``sizes`` and ``tta``: the model runs one branch per size any head reads (each once, the
    flipped view once when any head needs it), each head reads its sizes concatenated in its
    order, and the members' probabilities are averaged by their ``share``. ``size`` stays the
    features the model is read by (layer ``pool``: the detector, similar items).

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
        raise InvalidArgument(f"sizes must be distinct and at least one, not {sizes}")
    heads = [] if head is None else [head] if isinstance(head, Head) else list(head)
    if head is not None and not heads:
        raise InvalidArgument("an ensemble needs at least one head")
    for h in heads:
        if h.sizes is not None and (not h.sizes or len(set(h.sizes)) != len(h.sizes)):
            raise InvalidArgument(f"a head's sizes must be distinct, not {list(h.sizes)}")
    if len(heads) > 1 and not softmax:
        raise InvalidArgument("an ensemble averages probabilities: it needs softmax")
    if softmax and head is None:
        raise InvalidArgument("softmax needs a head")
    if (len(sizes) > 1 or tta) and not raw_input:
        raise InvalidArgument("several sizes or tta need raw_input (the resize is in the model)")
    if tta and head is None:
        raise InvalidArgument("tta averages logits: it needs a head")
    own = [h.sizes for h in heads if h.sizes is not None and list(h.sizes) != sizes]
    if own and not raw_input:
        raise InvalidArgument("heads with their own sizes need raw_input")
    branches = sizes + sorted({int(s) for o in own for s in o} - set(sizes))
    many = len(branches) > 1
    tta_of = [tta if h.tta is None else h.tta for h in heads]
    if any(tta_of) and not raw_input:
        raise InvalidArgument("tta needs raw_input (the flip is in the model)")
    bases = {}
    for s in branches:
        bases[s] = build_base(spec, s, weights, weights_seed, precision)
        if many:  # one base per size, the same weights; names must differ in one model
            bases[s]._name = f"{bases[s].name}_{s}px"
    preprocess = preprocessing_layers(spec)  # per pixel: one set serves every branch
    shape = (None, None, 3) if raw_input else (sizes[0], sizes[0], 3)
    inputs = keras.Input(shape, dtype="float32", name="image")

    # one resize per size, shared by the plain and the flipped view (one correction table each)
    resized = {
        s: pil_nearest_resize(inputs, s, name="resize" + (f"_{s}px" if many else ""))
        for s in (branches if raw_input else [])
    }

    def per_size(image: keras.KerasTensor, view: str, flip: bool) -> dict[int, Any]:
        out = {}
        for s in branches:
            tag = (f"_{s}px" if many else "") + view
            x = resized[s] if raw_input else image
            if flip:  # left-right (width: axis 2) after the resize, as the cache flips
                x = ops.flip(x, axis=2)
            for layer in preprocess:
                x = layer(x)
            x = bases[s](x, training=False)
            pool = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER + tag, dtype="float32")
            out[s] = pool(x)
        return out

    def joined(pools: dict[int, Any], order: Sequence[int], name: str) -> keras.KerasTensor:
        if len(order) == 1:  # a lone size among several keeps the name the model is read by
            only = pools[order[0]]
            return keras.layers.Identity(name=name)(only) if many else only
        return keras.layers.Concatenate(name=name, dtype="float32")([pools[s] for s in order])

    plain = per_size(inputs, "", flip=False)
    pooled = joined(plain, sizes, POOL_LAYER)
    out, main = pooled, "features"
    if heads:
        mirrored = per_size(inputs, "_flipped", flip=True) if any(tta_of) else {}
        main_flipped = (
            joined(mirrored, sizes, POOL_LAYER + "_flipped") if tta and mirrored else None
        )
        members = []
        for i, (member, member_tta) in enumerate(zip(heads, tta_of, strict=True)):
            prefix = f"member{i}_" if len(heads) > 1 else ""
            order = sizes if member.sizes is None else [int(s) for s in member.sizes]
            features, flipped = pooled, main_flipped
            if order != sizes:
                features = joined(plain, order, prefix + POOL_LAYER)
            if member_tta and (order != sizes or not tta):
                flipped = joined(mirrored, order, prefix + POOL_LAYER + "_flipped")
            elif not member_tta:
                flipped = None
            logits = _head_output(member, features, flipped, prefix)
            if softmax:
                logits = keras.layers.Softmax(name=prefix + "probabilities")(logits)
            members.append(logits)
        out, main = members[0], "probabilities" if softmax else "logits"
        if len(members) > 1:  # averaged as probabilities (see ``head``)
            out = _average(members, [h.share for h in heads])
    if extra_outputs:
        if main in extra_outputs:
            raise InvalidArgument(f"extra output {main!r} would replace the main output")
        out = {main: out, **{k: build(pooled) for k, build in extra_outputs.items()}}
    if name is None:
        suffix = {"features": "features", "logits": "e2e", "probabilities": "classifier"}[main]
        px = "_".join(f"{s}px" for s in sizes)  # "+" is not a valid TensorFlow scope name
        name = f"{spec.name}_{px}_{suffix}" if raw_input else f"{spec.name}_{suffix}"
    return keras.Model(inputs, out, name=name)
