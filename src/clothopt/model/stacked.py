"""Repeats at the price of their arithmetic: M heads of one configuration trained as one model.

A trial that estimates a configuration trains it several times, with other seeds (init, dropout
masks, batch order) or on other folds (other rows, other sizes). :class:`StackedTrainer` trains
those M *members* together: every weight has a leading member axis (a ``(d, h)`` kernel is held
as ``(M, d, h)``, or ``(M, h, d)`` where it narrows), one step updates all members, and on
TensorFlow one traced function runs a whole epoch, so a trial pays the per-step and per-trial
overhead once (:mod:`._stack` holds the maths).

Each member is the head :class:`~clothopt.model.head.HeadTrainer` trains alone with the same
:class:`~clothopt.model.head.HeadParams` and seed, within float tolerance
(``tests/test_stacked.py``): the same Glorot init per layer seed, the same ``batch_order``, the
same dropout masks (the stateless draws a ``SeedGenerator`` seeded ``seed + 1000 + i`` gives,
one per step: bit for bit on TensorFlow, where a shorter last batch's mask is the first rows of
a full one's), the same loss (mean over the member's rows of the batch: a ragged last batch is
padded with rows of weight 0), the same Adam/AdamW/SGD(0.9) maths with decoupled weight decay
on kernels, the same constant or cosine rate at each member's own step. A member with fewer
batches in an epoch (a fold with fewer training rows) skips the steps it does not have: its
weights, moments and step count stay as they were. What differs is float rounding (batched
products, TensorFlow's fused Adam kernel, whose ``1 - beta`` rounds differently from Keras's):
~1e-7 on the weights after a few epochs, more where Adam divides tiny moments.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clothopt.errors import InvalidArgument
from clothopt.metrics import classification_metrics, macro_f1
from clothopt.model._stack import BETA_1, BETA_2, RATE_NAMES, Stack, StackShape, philox_streams
from clothopt.model.head import HeadParams, HeadResult, average_views, normalize_features

__all__ = ["Member", "StackedResult", "StackedTrainer", "fold_members", "seed_members"]

BatchOrder = Callable[[int, int, int], np.ndarray]  # (n, epoch, seed) -> permutation of n
MembersCallback = Callable[[int, np.ndarray], None]  # (epoch, validation macro-F1 per member)


@dataclass(frozen=True)
class Member:
    """One head of a stacked fit: its seed, the rows of ``x_train`` it trains on (in the order
    it would see them alone; None: all) and the examples of ``y_val`` it is scored on (None:
    all; with ``val_views`` their rows in every view)."""

    seed: int
    train_rows: np.ndarray | None = None
    val_examples: np.ndarray | None = None


def seed_members(seeds: Sequence[int]) -> list[Member]:
    """Repeats: the whole training and validation sets, one member per seed."""
    return [Member(int(s)) for s in seeds]


def fold_members(
    folds: Sequence[tuple[np.ndarray, np.ndarray]], n: int, seed: int, copies: int = 1
) -> list[Member]:
    """One member per fold of a pool of ``n`` examples (``folds.stratified_folds``), all from
    ``seed``; ``x_train`` stacks ``copies`` blocks of the pool's rows (plain, then mirrored)
    and ``x_val`` its views of the same ``n`` examples."""
    from clothopt.folds import fold_rows

    return [Member(seed, fold_rows(tr, n, copies), np.asarray(va)) for tr, va in folds]


@dataclass
class StackedResult:
    """Each member's :class:`HeadResult` (as ``HeadTrainer.train`` gives it alone) and the
    validation macro-F1 of every member after every epoch, ``epoch_f1[epoch, member]``."""

    members: list[HeadResult]
    epoch_f1: np.ndarray
    train_seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def f1(self) -> np.ndarray:
        """The members' final validation macro-F1."""
        return self.epoch_f1[-1]


def _member_rows(members: Sequence[Member], n_train: int, n_val: int) -> list[tuple[Any, Any]]:
    """Each member's (train rows, validation examples), checked and defaulted to all."""
    out = []
    for k, member in enumerate(members):
        rows = np.arange(n_train) if member.train_rows is None else np.asarray(member.train_rows)
        val = np.arange(n_val) if member.val_examples is None else np.asarray(member.val_examples)
        for what, idx, n in (("train_rows", rows, n_train), ("val_examples", val, n_val)):
            if idx.ndim != 1 or not len(idx) or idx.min() < 0 or idx.max() >= n:
                raise InvalidArgument(f"stacked: member {k}'s {what} must be indices in [0, {n})")
        out.append((rows.astype(np.int64), val.astype(np.int64)))
    return out


@dataclass
class _Data:
    """The arrays one stacked fit reads: normalised feature blocks (one per distinct set of
    training statistics) and each member's rows in them, for training and for scoring."""

    x: np.ndarray  # (rows, d): the members' training rows, block after block
    y: np.ndarray  # labels of x's rows
    rows: list[np.ndarray]  # each member's rows of x, in its own order
    x_val: np.ndarray  # (rows, d): the validation rows, block after block
    val_idx: np.ndarray  # (M, V) each member's rows of x_val, 0-padded; (1, V) when all alike
    val_rows: list[int]  # each member's real rows of val_idx


def _prepare(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    how: str,
    picks: list[tuple[np.ndarray, np.ndarray]],
    views: int,
) -> _Data:
    """``normalize_features`` as each member alone gets it: row-wise ways once for the pool
    (``none``: the arrays as given, no copy), ``standardize`` once per distinct set of training
    rows (its statistics come from them)."""
    x_train, x_val = np.asarray(x_train, np.float32), np.asarray(x_val, np.float32)
    blocks: dict[bytes, tuple[int, int]] = {}
    xs, ys, xvs, rows, idx = [], [], [], [], []
    n = len(y_val)
    for train_rows, examples in picks:
        key = train_rows.tobytes() if how == "standardize" else b""
        if key not in blocks:
            part = x_train[train_rows] if how == "standardize" else x_train
            xt, xv = normalize_features(part, x_val, how)
            blocks[key] = (sum(len(b) for b in xs), sum(len(b) for b in xvs))
            xs.append(xt)
            ys.append(y_train[train_rows] if how == "standardize" else y_train)
            xvs.append(xv)
        start, val_start = blocks[key]
        own = np.arange(len(train_rows)) if how == "standardize" else train_rows
        rows.append(start + own)
        idx.append(val_start + np.concatenate([examples + v * n for v in range(views)]))
    # members scored on the same rows (repeats) share them: the product broadcasts
    same = all(np.array_equal(i, idx[0]) for i in idx)
    val_idx = np.zeros((1 if same else len(idx), max(len(i) for i in idx)), np.int32)
    for k, i in enumerate(idx[: len(val_idx)]):
        val_idx[k, : len(i)] = i
    return _Data(_join(xs), _join(ys), rows, _join(xvs), val_idx, [len(i) for i in idx])


def _join(blocks: list[np.ndarray]) -> np.ndarray:
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _plan(
    rows: list[np.ndarray],
    seeds: Sequence[int],
    epoch: int,
    params: HeadParams,
    order: BatchOrder,
    dropouts: Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """One epoch's steps for every member: ``xi[s, m]`` the rows member m sees at step s
    (``order(n_m, epoch, seed_m)`` of its own rows, as alone), padded with weight-0 rows (``w``
    1 or 0, ``ws`` = w / the batch's real rows: the mean loss's gradient); a member with fewer
    steps is inactive (``act`` 0) in the rest. ``lr``, ``alpha`` (Adam's step size) and
    ``drng`` (the Philox stream of each of the ``dropouts`` layers' stateless masks) as
    ``HeadTrainer`` computes them at that step (the member's optimizer iterations)."""
    batch, counts = params.batch_size, [len(r) for r in rows]
    width, m = min(batch, max(counts)), len(rows)
    steps = [math.ceil(n / batch) for n in counts]
    shape3, shape2 = (max(steps), m, width), (max(steps), m)
    plan = {k: np.zeros(shape3, np.float32) for k in ("w", "ws")}
    plan |= {k: np.zeros(shape2, np.float32) for k in ("act", "lr", "alpha")}
    drops = max(1, len(dropouts))
    plan["xi"], plan["drng"] = np.zeros(shape3, np.int32), np.zeros((*shape2, drops, 4), np.int64)
    f32 = np.float32
    for k, (r, seed) in enumerate(zip(rows, seeds, strict=True)):
        seen = r[order(len(r), epoch, seed)]
        it = epoch * steps[k] + np.arange(steps[k])
        lr = np.full(steps[k], params.learning_rate, f32)
        if params.schedule == "cosine":  # lr * 0.5 * (1 + cos(pi * iterations / total))
            frac = it.astype(f32) / f32(params.epochs * steps[k])
            lr = lr * f32(0.5) * (f32(1.0) + np.cos(f32(math.pi) * frac))
        local = (it + 1).astype(f32)
        b1p, b2p = np.power(f32(BETA_1), local), np.power(f32(BETA_2), local)
        plan["lr"][: steps[k], k] = lr
        plan["alpha"][: steps[k], k] = lr * np.sqrt(f32(1) - b2p) / (f32(1) - b1p)
        for i in range(len(dropouts)):  # Keras's int64 state [seed + 1000 + i, it], folded
            state = np.stack(np.broadcast_arrays(np.int64(seed) + 1000 + i, it), axis=-1)
            plan["drng"][: steps[k], k, i] = philox_streams(np.mod(state, np.int64(2**31 - 2)))
        plan["act"][: steps[k], k] = 1.0
        padded = np.zeros(steps[k] * batch, np.int64)
        padded[: len(seen)] = seen
        real = np.arange(steps[k] * batch) < len(seen)
        plan["xi"][: steps[k], k] = padded.reshape(steps[k], batch)[:, :width]
        plan["w"][: steps[k], k] = real.reshape(steps[k], batch)[:, :width]
        per_step = real.reshape(steps[k], batch).sum(axis=1).astype(f32)
        plan["ws"][: steps[k], k] = plan["w"][: steps[k], k] * (f32(1.0) / per_step)[:, None]
    return plan


class StackedTrainer:
    """Trains M members of one head configuration as one stacked model (see the module).

    Keeps one compiled stack per shape (``max_models``, least recently used goes first); a
    stack is rebuilt only when the members' count, the feature width or what
    ``HeadTrainer`` traces changes. ``fused_adam``: Adam/AdamW through TensorFlow's fused
    kernel (one pass a variable; XLA now fuses the exact update too, so it saves a few percent
    of CPU time where it once saved ~25%), whose own rounding of ``1 - beta_2`` moves weights
    ~1e-3 from the fit alone within 2 epochs, so a member is then an equivalent fit, not the
    same one. Not thread-safe: one trainer per worker thread.
    """

    def __init__(self, max_models: int = 8, fused_adam: bool = False) -> None:
        self._stacks: OrderedDict[StackShape, Stack] = OrderedDict()
        self._max_models = max_models
        self.fused_adam = fused_adam  # faster Adam, not within float tolerance of HeadTrainer

    def _stack(self, shape: StackShape) -> Stack:
        if shape in self._stacks:
            self._stacks.move_to_end(shape)
        else:
            self._stacks[shape] = Stack(shape)
            while len(self._stacks) > self._max_models:
                self._stacks.popitem(last=False)
        return self._stacks[shape]

    def train(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        classes: Sequence[str],
        params: HeadParams,
        members: Sequence[Member],
        batch_order: BatchOrder,
        on_epoch: MembersCallback | None = None,
        val_views: int = 1,
        reports: int | None = None,
    ) -> StackedResult:
        """Train every member of ``members`` on its rows of ``x_train`` with ``params``, each
        as ``HeadTrainer.train(x_train[rows], y_train[rows], its views of x_val, y_val[its
        examples], classes, params, seed, batch_order, val_views=val_views)`` would.

        ``x_val`` holds ``val_views`` stacked views of the ``len(y_val)`` examples (plain
        first). After every epoch ``on_epoch(epoch, f1)`` gets each member's validation
        macro-F1 (it may raise to stop the fit, e.g. a pruner after the first member).
        ``reports``: how many members (the first ones; None: all) get the full
        ``classification_metrics`` report as ``val_metrics`` (~40 ms each, sklearn's); the
        others get ``{"f1_macro": ...}`` only.
        """
        if not members:
            raise InvalidArgument("stacked: at least one member is needed")
        y_train, y_val = np.asarray(y_train, np.int64), np.asarray(y_val, np.int64)
        picks = _member_rows(members, len(x_train), len(y_val))
        data = _prepare(x_train, y_train, x_val, y_val, params.normalize, picks, val_views)
        seeds = [int(m.seed) for m in members]
        counts = [len(r) for r in data.rows]
        num_classes = len(classes)
        steps = [math.ceil(n / params.batch_size) for n in counts]
        shape = StackShape(
            len(members), int(data.x.shape[1]), num_classes, params.hidden_layers,
            params.hidden_units, params.dropout > 0, params.weight_decay > 0,
            params.label_smoothing > 0, params.optimizer, len(set(steps)) > 1, self.fused_adam,
        )  # fmt: skip
        stack = self._stack(shape)
        stack.reset(seeds)
        tensors = _tensors(data, seeds, params, num_classes)
        f1 = np.zeros((params.epochs, len(members)))
        results = [HeadResult([], np.zeros(0, np.int64), {}) for _ in members]
        start = time.perf_counter()
        for epoch in range(params.epochs):
            plan = _plan(data.rows, seeds, epoch, params, batch_order, shape.dropout_units())
            losses, logits = stack.run_epoch(tensors, plan)
            losses, logits = np.asarray(losses), np.asarray(logits)
            for k, result in enumerate(results):
                loss = float(losses[k] / counts[k])
                result.epoch_loss.append(loss)
                result.diverged |= not math.isfinite(loss)
                pred = np.argmax(average_views(logits[k, : data.val_rows[k]], val_views), axis=1)
                result.val_pred = pred
                f1[epoch, k] = macro_f1(y_val[picks[k][1]], pred, num_classes)
                result.epoch_f1.append(float(f1[epoch, k]))
            if on_epoch is not None:
                on_epoch(epoch, f1[epoch].copy())
        seconds = time.perf_counter() - start
        _finish(stack, results, picks, y_val, classes, seconds, reports)
        return StackedResult(results, f1, seconds)


def _tensors(
    data: _Data, seeds: Sequence[int], params: HeadParams, num_classes: int
) -> dict[str, Any]:
    """The fit's constant inputs, made tensors once (not one host-to-device copy per epoch);
    the rates as float32 the way a Keras layer, loss or optimizer built for them holds them."""
    import keras

    from clothopt.model.rates import TrialRates

    rates = TrialRates(num_classes, (params.dropout, params.weight_decay, params.label_smoothing))
    convert = keras.ops.convert_to_tensor
    return {
        "x": convert(data.x),
        "y": convert(np.eye(num_classes, dtype=np.float32)[data.y]),
        "x_val": convert(data.x_val),
        "val_idx": convert(data.val_idx),
        "seeds": convert(np.asarray(seeds, np.int64)),
        "rates": {k: convert(np.float32(getattr(rates, k))) for k in RATE_NAMES},
    }


def _finish(
    stack: Stack,
    results: list[HeadResult],
    picks: list[tuple[np.ndarray, np.ndarray]],
    y_val: np.ndarray,
    classes: Sequence[str],
    seconds: float,
    reports: int | None,
) -> None:
    """Each member's weights (model order, as ``HeadResult.weights``) and last-epoch report."""
    weights = stack.member_weights()
    for k, result in enumerate(results):
        result.weights = weights[k]
        result.head_weights = result.weights[-2:]
        if reports is None or k < reports:
            result.val_metrics = classification_metrics(
                y_val[picks[k][1]], result.val_pred, classes
            )
        else:
            result.val_metrics = {"f1_macro": result.epoch_f1[-1]}
        result.total_params = result.trainable_params = sum(w.size for w in result.weights)
        result.train_seconds = seconds  # the stacked fit's, shared by every member
