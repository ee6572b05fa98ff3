"""The maths of a stacked head (see :mod:`clothopt.model.stacked`): M members' weights with a
leading member axis, one step for all of them, written out in ``keras.ops``.

The backward pass is written by hand (an MLP's is a few matmuls), so a step is plain
``keras.ops`` on every backend. On TensorFlow a whole epoch is one XLA program: the step's
elementwise work (softmax, ReLU, dropout, Adam's ~18 passes a weight) fuses into a few loops
and no op is dispatched one by one, so M members cost about their arithmetic. Its dropout masks
are TensorFlow's own stateless draws, computed in the program for all members at once
(:func:`philox_streams`). Per step the host sends each member's rows, row weights, learning
rate, Adam step size and mask streams (all computed per epoch in NumPy: fewer ops in the loop).
The features go in once as given, each member's rows gathered in the program: no per-member
copies of the pool on the host.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Stack", "StackShape", "philox_streams"]

BETA_1, BETA_2, EPSILON, MOMENTUM = 0.9, 0.999, 1e-7, 0.9  # Keras's Adam; clothopt's SGD
RATE_NAMES = ("dropout_rate", "dropout_scale", "weight_decay", "smooth_keep", "smooth_add")
PLAN_KEYS = ("xi", "w", "ws", "act", "lr", "alpha", "drng")
# Philox4x32-10 as TensorFlow's stateless ops run it: round multipliers, key increments, and
# the key its GenerateKey scrambles a seed with
PHILOX_M, PHILOX_W = (0xD2511F53, 0xCD9E8D57), (0x9E3779B9, 0xBB67AE85)
PHILOX_SEED_KEY = (0x3EC8F720, 0x02461E29)
_LO = 0xFFFFFFFF


@dataclass(frozen=True)
class StackShape:
    """What one stack (and its traced epoch) is specialised for."""

    members: int
    input_dim: int
    num_classes: int
    hidden_layers: int
    hidden_units: int
    dropout: bool
    weight_decay: bool
    label_smoothing: bool
    optimizer: str
    ragged: bool  # members differ in their number of batches per epoch
    # Adam through TensorFlow's fused kernel too (SGD always is: its maths is Keras's exactly).
    # Off by default: the kernel's 1 - beta_2 is 1 - 0.999f, 4.6e-5 off Keras's 0.001, so
    # weights drift ~1e-3 from the fit alone within 2 epochs; on: 1 pass a variable, not 18
    fused_adam: bool = False

    @property
    def dims(self) -> list[int]:
        return [self.input_dim] + [self.hidden_units] * self.hidden_layers + [self.num_classes]

    def dropout_before(self, layer: int) -> bool:
        """Dropout precedes every Dense after the first hidden one (the logits when none)."""
        return self.dropout and (layer >= 1 or self.hidden_layers == 0)

    def dropout_units(self) -> list[int]:
        dims = self.dims
        return [dims[i] for i in range(len(dims) - 1) if self.dropout_before(i)]


def _philox(c: list[Any], k: list[Any], high: Callable[[Any], Any]) -> list[Any]:
    """The 4 output words of Philox4x32-10 for counter words ``c`` and key words ``k``, each a
    32-bit value held in int64 (NumPy arrays or TensorFlow tensors: products wrap as uint64
    ones do, ``high`` takes bits 32-63)."""
    for _ in range(10):
        p0, p1 = c[0] * PHILOX_M[0], c[2] * PHILOX_M[1]
        c = [high(p1) ^ c[1] ^ k[0], p1 & _LO, high(p0) ^ c[3] ^ k[1], p0 & _LO]
        k = [(k[0] + PHILOX_W[0]) & _LO, (k[1] + PHILOX_W[1]) & _LO]
    return c


def philox_streams(seeds: np.ndarray) -> np.ndarray:
    """(..., 2) stateless seeds -> (..., 4) int64 ``[key0, key1, counter2, counter3]``: the
    Philox stream ``tf.random.stateless_uniform`` draws from for each seed (the key and counter
    its GenerateKey scrambles the seed into; the counter's low words start at 0)."""
    s = np.asarray(seeds).astype(np.int64)
    words = [s[..., 0] & _LO, (s[..., 0] >> 32) & _LO, s[..., 1] & _LO, (s[..., 1] >> 32) & _LO]
    key = [np.full(s.shape[:-1], w, np.int64) for w in PHILOX_SEED_KEY]
    mix = _philox(words, key, lambda x: (x >> 32) & _LO)
    return np.stack(mix, axis=-1)


def _uniform_streams(tf: Any, streams: Any, rows: Any, width: int) -> Any:
    """(M, rows, width) floats in [0, 1): member m's ``tf.random.stateless_uniform((rows,
    width), seed)`` bit for bit (``streams[m]`` from :func:`philox_streams`), for all members
    in one fused computation instead of one Philox kernel each. Element i is word ``i % 4``
    of the counter's ``i // 4``-th increment; its low 23 bits are the float's mantissa."""
    n = rows * width
    g = tf.range((n + 3) // 4, dtype=tf.int64)[None, :]
    col = [streams[:, i : i + 1] for i in range(4)]
    zero = tf.zeros_like(g)
    words = _philox(
        [g, zero, col[2] + zero, col[3] + zero],
        [col[0], col[1]],
        lambda x: tf.bitwise.right_shift(x, 32) & _LO,
    )
    words = [tf.cast((w & 0x7FFFFF) | 0x3F800000, tf.int32) for w in words]
    bits = tf.reshape(tf.stack(words, axis=-1), (tf.shape(streams)[0], -1))[:, :n]
    return tf.reshape(tf.bitcast(bits, tf.float32) - 1.0, (-1, rows, width))


def _glorot(seed: int, shape: tuple[int, int]) -> np.ndarray:
    import keras

    return np.asarray(keras.initializers.GlorotUniform(seed=seed)(shape), np.float32)


def _glorot_graph(seed: Any, shape: tuple[int, int]) -> Any:
    """:func:`_glorot` for an int64 seed tensor, bit for bit (``tests/test_stacked.py``): the
    stateless draw Keras's TensorFlow backend makes for an int seed (``[seed, 0]`` reduced
    mod 2**31 - 2) scaled to Glorot's limit, drawn inside the reset's graph."""
    import tensorflow as tf

    limit = math.sqrt(3.0 * (1.0 / max(1.0, (shape[0] + shape[1]) / 2.0)))  # VarianceScaling's
    pair = tf.cast(tf.math.floormod(tf.stack([seed, tf.zeros_like(seed)]), 2**31 - 2), tf.int32)
    return tf.random.stateless_uniform(
        shape, pair, minval=tf.cast(-limit, tf.float32), maxval=tf.cast(limit, tf.float32)
    )


class Stack:
    """Stacked weights and optimizer state of one shape, and its step.

    ``weights`` in order: each Dense's kernel and bias ``(M, b)``. A kernel from ``a`` to
    ``b`` units is ``(M, a, b)`` as Keras holds it, or ``(M, b, a)`` where the layer narrows
    (``b < a``, the logits always): XLA's CPU dots and loops run faster along a long minor
    axis (a linear head's epoch took ~25% less time so), and slower on a transposed wide one.
    """

    def __init__(self, shape: StackShape) -> None:
        import keras

        self.shape = shape
        m, dims = shape.members, shape.dims
        self.narrows = [b < a for a, b in itertools.pairwise(dims)]  # kernels held (M, b, a)
        sizes = [
            size
            for a, b in itertools.pairwise(dims)
            for size in (((m, b, a) if b < a else (m, a, b)), (m, b))
        ]
        self.weights = [keras.Variable(np.zeros(s, np.float32)) for s in sizes]
        slots = 1 if shape.optimizer == "sgd" else 2
        self.slots = [
            [keras.Variable(np.zeros(s, np.float32)) for s in sizes] for _ in range(slots)
        ]
        # decay every kernel entry, never a bias (Keras's exclude_from_weight_decay("bias"))
        self.decay = [len(s) == 3 for s in sizes]
        self.graph = keras.backend.backend() == "tensorflow"
        self._epoch_fn = self._make_epoch_fn() if self.graph else None
        if self.graph:
            import tensorflow as tf

            seeds = tf.TensorSpec((m,), tf.int64)
            self._reset_fn = tf.function(self._reset_graph, [seeds], autograph=False)
        self._generators: list[list[Any]] = []

    def reset(self, seeds: Sequence[int]) -> None:
        """Each member's weights as ``HeadTrainer`` initialises its layers from its seed (the
        logits get the seed itself, hidden layer i ``seed + 1 + i``); a new optimizer."""
        if self.graph:  # one call drawing every init, not one eager Keras draw per layer
            self._reset_fn(np.asarray(seeds, np.int64))
            return
        self._assign(self._inits(list(seeds), _glorot))
        import keras

        drops = len(self.shape.dropout_units())
        self._generators = [
            [keras.random.SeedGenerator(s + 1000 + i) for s in seeds] for i in range(drops)
        ]

    def _reset_graph(self, seeds: Any) -> None:
        self._assign(self._inits([seeds[k] for k in range(self.shape.members)], _glorot_graph))

    def _inits(self, seeds: list[Any], glorot: Callable[[Any, tuple[int, int]], Any]) -> list[Any]:
        """The variables' initial values from each member's seed (ints, or int64 scalars in a
        graph): ``glorot(seed, shape)`` per member and layer, zero biases."""
        ops, last, inits = _ops(), self.shape.hidden_layers, []
        for i in range(last + 1):
            shape = (self.shape.dims[i], self.shape.dims[i + 1])
            init = ops.stack([glorot(s if i == last else s + 1 + i, shape) for s in seeds])
            if self.narrows[i]:
                init = ops.transpose(init, (0, 2, 1))
            inits += [init, ops.zeros((len(seeds), shape[1]), "float32")]
        return inits

    def _assign(self, inits: Sequence[Any]) -> None:
        ops = _ops()
        for var, init in zip(self.weights, inits, strict=True):
            var.assign(init)
        for var in (v for slot in self.slots for v in slot):
            var.assign(ops.zeros(var.shape, "float32"))

    def member_weights(self) -> list[list[np.ndarray]]:
        """Each member's layers as ``HeadResult.weights``: [kernel, bias] per Dense."""
        v = [np.asarray(_value(w)) for w in self.weights]
        flip = [n for n in self.narrows for _ in range(2)]  # per variable: kernel, bias
        return [[w[k].T if f and w.ndim == 3 else w[k] for w, f in zip(v, flip, strict=True)]
                for k in range(len(v[0]))]  # fmt: skip

    def _layers(self) -> list[tuple[Any, Any]]:
        """(kernel, bias) per Dense, as tensors read now."""
        w = [_value(v) for v in self.weights]
        return list(zip(w[::2], w[1::2], strict=True))

    def step(self, xb: Any, yb: Any, p: dict[str, Any], draws: Sequence[Any], r: Any) -> Any:
        """One optimizer step of every member on its batch; returns each member's summed row
        loss. ``xb`` (M, B, d) features, ``yb`` (M, B, C) one-hot, ``p`` this
        step's plan row (``w``/``ws`` row weights 1 or 0 and ``w / rows``; ``act``; ``lr``;
        ``alpha``), ``draws`` per dropout: the (M, 4) Philox streams of its masks in a graph
        (:func:`philox_streams`), else an (M, B, units) uniform draw."""
        layers, last = self._layers(), self.shape.hidden_layers
        acts, masks, pre = [], {}, {}
        a, draws = xb, iter(draws)
        for i, (kernel, _) in enumerate(layers):
            draw = next(draws) if self.shape.dropout_before(i) else None
            if i > 0 or draw is not None:
                before = layers[i - 1][1] if i > 0 else None
                a, masks[i], pre[i - 1] = self._enter(i, a, before, draw, r)
            acts.append(a)
            a = _matmul(a, kernel, transpose_b=self.narrows[i])
        loss, grad, bias_grad = self._loss(a, layers[last][1], yb, p["w"], p["ws"], r)
        grads: list[Any] = []
        for i in range(last, -1, -1):
            if self.narrows[i]:
                kernel_grad = _matmul(grad, acts[i], transpose_a=True)
            else:
                kernel_grad = _matmul(acts[i], grad, transpose_a=True)
            grads[:0] = [kernel_grad, bias_grad]
            if i == 0:
                break
            grad = _matmul(grad, layers[i][0], transpose_b=not self.narrows[i])
            grad, bias_grad = self._back(i, grad, masks.get(i), pre[i - 1], r)
        self._apply(grads, {k: p[k] for k in ("lr", "alpha", "act")}, r)
        return loss

    def _enter(self, i: int, a: Any, bias: Any, draw: Any, r: Any) -> tuple[Any, Any, Any]:
        """Dense i's input from Dense i-1's product ``a`` (plus ``bias``, ReLU; none for the
        first): with dropout from ``draw`` where the head has it; (input, mask, pre-ReLU)."""
        ops = _ops()
        pre = None
        if i > 0:
            pre = ops.add(a, bias[:, None, :])
            a = ops.relu(pre)
        mask = None
        if draw is not None:
            width = self.shape.dims[i]
            if self.graph:
                import tensorflow as tf

                draw = _uniform_streams(tf, draw, tf.shape(a)[1], width)
            mask = ops.greater_equal(draw, r["dropout_rate"])
            a = ops.where(mask, ops.multiply(a, r["dropout_scale"]), 0.0)
        return a, mask, pre

    def _loss(self, z: Any, bias: Any, yb: Any, w: Any, ws: Any, r: Any) -> tuple[Any, Any, Any]:
        """From the logits' product: (each member's summed row loss, the loss's gradient
        with respect to the logits, its bias's gradient)."""
        ops = _ops()
        a = ops.add(z, bias[:, None, :])
        if self.shape.label_smoothing:
            yb = ops.add(ops.multiply(yb, r["smooth_keep"]), r["smooth_add"])
        row_loss = -ops.sum(ops.multiply(yb, ops.log_softmax(a, axis=-1)), axis=-1)
        grad = ops.multiply(ops.subtract(ops.softmax(a, axis=-1), yb), ws[..., None])
        return ops.sum(ops.multiply(row_loss, w), axis=1), grad, ops.sum(grad, axis=1)

    def _back(self, i: int, grad: Any, mask: Any, pre: Any, r: Any) -> tuple[Any, Any]:
        """The gradient back through Dense i's dropout and Dense i-1's ReLU; with Dense i-1's
        bias gradient."""
        ops = _ops()
        if mask is not None:
            grad = ops.where(mask, ops.multiply(grad, r["dropout_scale"]), 0.0)
        grad = ops.where(ops.greater(pre, 0.0), grad, 0.0)
        return grad, ops.sum(grad, axis=1)

    def _apply(self, grads: list[Any], p: dict[str, Any], r: Any) -> None:
        """Keras's update (``HeadTrainer``'s optimizers) of every member's variables with its
        own rate; a member not active at this step keeps everything as it was."""
        ops, shape = _ops(), self.shape
        if self.graph and not shape.ragged and (shape.optimizer == "sgd" or shape.fused_adam):
            self._apply_fused(grads, p, r)
            return
        keep = ops.reshape(ops.greater(p["act"], 0.5), (-1, 1))
        lr, alpha = ops.reshape(p["lr"], (-1, 1)), ops.reshape(p["alpha"], (-1, 1))

        # every update on (M, n) views: XLA's CPU loops vectorise a long minor axis, not a
        # kernel's 10 logits (Adam's sqrt and division ran ~6x slower on (M, d, 10))
        def flat(t: Any) -> Any:
            return ops.reshape(_value(t), (shape.members, -1))

        for j, (var, g) in enumerate(zip(self.weights, grads, strict=True)):
            new, g = flat(var), flat(g)
            if shape.weight_decay and self.decay[j]:  # decoupled, before the step
                new = new - new * r["weight_decay"] * lr
            if shape.optimizer == "sgd":
                mom = flat(self.slots[0][j]) * MOMENTUM - g * lr
                updates = [(var, new + mom), (self.slots[0][j], mom)]
            else:
                m, v = flat(self.slots[0][j]), flat(self.slots[1][j])
                m = m + (g - m) * (1 - BETA_1)
                v = v + (ops.square(g) - v) * (1 - BETA_2)
                new = new - (m * alpha) / (ops.sqrt(v) + EPSILON)
                updates = [(var, new), (self.slots[0][j], m), (self.slots[1][j], v)]
            for target, value in updates:
                if shape.ragged:
                    value = ops.where(keep, value, flat(target))
                target.assign(ops.reshape(value, target.shape))

    def _apply_fused(self, grads: list[Any], p: dict[str, Any], r: Any) -> None:
        """The update with TensorFlow's fused kernels (one pass over each variable, not a
        dozen): possible when every member is at the same step with the same rate, as repeats
        always are (``lr`` and ``alpha`` are then scalars). SGD's is Keras's maths exactly;
        Adam's rounds ``1 - beta`` otherwise (see ``StackShape.fused_adam``)."""
        import tensorflow as tf

        lr, alpha = p["lr"][0], p["alpha"][0]
        zero = tf.constant(0.0)
        for j, (var, g) in enumerate(zip(self.weights, grads, strict=True)):
            if self.shape.weight_decay and self.decay[j]:
                value = _value(var)
                var.assign(value - value * r["weight_decay"] * lr)
            slots = [self.slots[i][j].value.handle for i in range(len(self.slots))]
            if self.shape.optimizer == "sgd":
                tf.raw_ops.ResourceApplyKerasMomentum(
                    var=var.value.handle, accum=slots[0], lr=lr, grad=g, momentum=MOMENTUM
                )
            else:  # alpha given: powers 0 make the kernel's own alpha exactly ours
                tf.raw_ops.ResourceApplyAdam(
                    var=var.value.handle, m=slots[0], v=slots[1], beta1_power=zero,
                    beta2_power=zero, lr=alpha, beta1=BETA_1, beta2=BETA_2, epsilon=EPSILON,
                    grad=g,
                )  # fmt: skip

    def validation_logits(self, x_val: Any, idx: Any) -> Any:
        """(M, V, C) logits of each member on its rows ``idx[m]`` of ``x_val`` (or all on the
        same rows: ``idx`` (1, V)), no dropout."""
        ops = _ops()
        layers = self._layers()
        a = ops.take(x_val, idx, axis=0)
        for i, (kernel, bias) in enumerate(layers):
            a = ops.add(_matmul(a, kernel, transpose_b=self.narrows[i]), bias[:, None, :])
            if i < len(layers) - 1:
                a = ops.relu(a)
        return a

    def _make_epoch_fn(self) -> Callable[..., Any]:
        # tf.function around the keras.ops step: the epoch is one graph, as HeadTrainer's is
        import tensorflow as tf

        m, f32 = self.shape.members, tf.float32
        plan_spec = {k: tf.TensorSpec((None, m, None), f32) for k in ("w", "ws")}
        plan_spec |= {k: tf.TensorSpec((None, m), f32) for k in ("act", "lr", "alpha")}
        plan_spec |= {
            "xi": tf.TensorSpec((None, m, None), tf.int32),
            "drng": tf.TensorSpec((None, m, None, 4), tf.int64),
        }
        sig = [
            tf.TensorSpec((None, None), f32),  # x pool
            tf.TensorSpec((None, None), f32),  # y pool, one-hot
            tf.TensorSpec((None, None), f32),  # validation rows
            tf.TensorSpec((None, None), tf.int32),  # each member's (or all members') of them
            tf.TensorSpec((m,), tf.int64),  # seeds
            plan_spec,
            {name: tf.TensorSpec((), f32) for name in RATE_NAMES},
        ]

        drops = len(self.shape.dropout_units())

        @tf.function(input_signature=sig, reduce_retracing=True, jit_compile=True)
        def epoch(
            x: Any, y: Any, x_val: Any, val_idx: Any, seeds: Any, plan: Any, rates: Any
        ) -> Any:
            losses = tf.zeros((m,), f32)
            for s in tf.range(tf.shape(plan["xi"])[0]):
                p = {k: tf.gather(v, s) for k, v in plan.items()}  # 1 op, not a 3-op slice
                xb, yb = tf.gather(x, p["xi"]), tf.gather(y, p["xi"])
                draws = [p["drng"][:, i] for i in range(drops)]
                losses += self.step(xb, yb, p, draws, rates)
            return losses, self.validation_logits(x_val, val_idx)

        return epoch

    def run_epoch(self, data: dict[str, Any], plan: dict[str, np.ndarray]) -> tuple[Any, Any]:
        """One epoch of every member on ``plan``'s steps: (summed loss, validation logits)."""
        if self._epoch_fn is not None:
            args = (data["x"], data["y"], data["x_val"], data["val_idx"], data["seeds"])
            return self._epoch_fn(*args, {k: plan[k] for k in PLAN_KEYS}, data["rates"])
        ops = _ops()
        losses = np.zeros(self.shape.members, np.float32)
        rows = plan["xi"].shape[2]
        for s in range(len(plan["xi"])):
            p = {k: ops.convert_to_tensor(plan[k][s]) for k in PLAN_KEYS}
            on = plan["act"][s] > 0  # a member that skips the step draws nothing, as alone
            noise = [
                ops.stack([_uniform((rows, u), g) if on[k] else ops.zeros((rows, u))
                           for k, g in enumerate(gens)])
                for u, gens in zip(self.shape.dropout_units(), self._generators, strict=True)
            ]  # fmt: skip
            xb, yb = ops.take(data["x"], p["xi"], axis=0), ops.take(data["y"], p["xi"], axis=0)
            losses += np.asarray(self.step(xb, yb, p, noise, data["rates"]))
        return losses, self.validation_logits(data["x_val"], data["val_idx"])


def _ops() -> Any:
    import keras

    return keras.ops


def _value(var: Any) -> Any:
    """A variable's current value as a tensor (read in program order inside a graph)."""
    return var.value if hasattr(var, "value") else var


def _uniform(shape: tuple[int, int], generator: Any) -> Any:
    import keras

    return keras.random.uniform(shape, seed=generator)


def _matmul(a: Any, b: Any, transpose_a: bool = False, transpose_b: bool = False) -> Any:
    """Batched ``a @ b`` over the member axis (on TensorFlow the transposes fold into it)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        ops = keras.ops
        a = ops.transpose(a, (0, 2, 1)) if transpose_a else a
        return ops.matmul(a, ops.transpose(b, (0, 2, 1)) if transpose_b else b)
    import tensorflow as tf

    return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
