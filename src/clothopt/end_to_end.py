"""The paper's own training with Keras ``fit``: the end-to-end path and its head on features.

The end-to-end path trains the whole paper model (preprocess, frozen base called with
``training=False``, GAP, Dense) on images, as the paper did; :func:`train_head` fits the
paper's head alone on cached features, the reference the objective's
:class:`~clothopt.model.head.HeadTrainer` is checked against. For the paper's head both start
from the same head and see the same batches in the same order
(:func:`~clothopt.pipeline.batch_order`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.data import Split, UnusableImage, default_threads, load_batch
from clothopt.metrics import classification_metrics
from clothopt.model.backbones import BackboneSpec
from clothopt.model.compose import Head, build_head, compose
from clothopt.model.head import HeadResult
from clothopt.pipeline import EpochCallback, batch_order

if TYPE_CHECKING:
    import keras

__all__ = ["compile_for_training", "train_end_to_end", "train_head"]


def compile_for_training(model: keras.Model, learning_rate: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )


def _one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[y]


def _finish_epoch(
    result: HeadResult,
    loss: float,
    val_pred: np.ndarray,
    y_val: np.ndarray,
    classes: Sequence[str],
    epoch: int,
    on_epoch: EpochCallback | None,
) -> None:
    result.epoch_loss.append(loss)
    result.diverged |= not math.isfinite(loss)
    result.val_pred = val_pred
    result.val_metrics = classification_metrics(y_val, val_pred, classes)
    result.epoch_f1.append(result.val_metrics["f1_macro"])
    if on_epoch is not None:
        on_epoch(epoch, result.epoch_f1[-1])


def train_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    classes: Sequence[str],
    learning_rate: float,
    batch_size: int,
    epochs: int,
    seed: int,
    on_epoch: EpochCallback | None = None,
) -> HeadResult:
    """The paper's head (``Dense(C)``, Adam) built and fitted from scratch on cached features;
    validation macro-F1 after every epoch. Trials use
    :class:`~clothopt.model.head.HeadTrainer`, which gives the same result for this head; this
    stays as the reference it is checked against."""
    import keras

    num_classes = len(classes)
    inputs = keras.Input((x_train.shape[1],), name="features")
    model = keras.Model(inputs, build_head(num_classes, seed)(inputs), name="head")
    compile_for_training(model, learning_rate)
    y_onehot = _one_hot(y_train, num_classes)
    result = HeadResult([], np.zeros(0, np.int64), {})
    start = time.perf_counter()
    for epoch in range(epochs):
        order = batch_order(len(x_train), epoch, seed)
        hist = model.fit(
            x_train[order],
            y_onehot[order],
            batch_size=batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        logits = model.predict(x_val, batch_size=1024, verbose=0)
        _finish_epoch(
            result,
            float(hist.history["loss"][-1]),
            np.argmax(logits, axis=1),
            y_val,
            classes,
            epoch,
            on_epoch,
        )
    result.train_seconds = time.perf_counter() - start
    result.head_weights = [np.asarray(w) for w in model.get_layer("logits").get_weights()]
    return result


def _image_dataset(
    split: Split,
    image_size: int,
    resize: str,
    batch_size: int,
    order: np.ndarray,
    num_classes: int | None,
    threads: int,
    unreadable: list[UnusableImage],
) -> keras.utils.PyDataset:
    import keras

    paths = [split.paths[i] for i in order]
    labels = split.labels[order]

    class _Images(keras.utils.PyDataset):
        # decoding threads are Keras's own PyDataset workers, prefetching batches in order
        def __len__(self) -> int:
            return math.ceil(len(paths) / batch_size)

        def __getitem__(self, i: int) -> Any:
            sl = slice(i * batch_size, (i + 1) * batch_size)
            try:
                x = load_batch(paths[sl], image_size, resize).astype(np.float32)
            except UnusableImage as exc:
                unreadable.append(exc)  # Keras re-raises it wrapped in its own error type
                raise
            if num_classes is None:
                return (x,)
            return x, _one_hot(labels[sl], num_classes)

    return _Images(workers=threads, use_multiprocessing=False, max_queue_size=4)


@contextlib.contextmanager
def _unwrapped(unreadable: list[UnusableImage]) -> Iterator[None]:
    """Raise the image error itself when Keras wrapped it, so the objective can tell it apart."""
    try:
        yield
    except Exception:
        if unreadable:
            raise unreadable[0] from None
        raise


def train_end_to_end(
    spec: BackboneSpec,
    weights: str,
    weights_seed: int,
    train: Split,
    val: Split,
    image_size: int,
    resize: str,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    seed: int,
    on_epoch: EpochCallback | None = None,
    threads: int | None = None,
    eval_batch_size: int = 32,
) -> HeadResult:
    """The paper's way: every epoch decodes every image and runs the frozen base again."""
    threads = threads or default_threads()
    classes = train.classes
    model = compose(
        spec, image_size, weights, weights_seed, head=Head(num_classes=len(classes), seed=seed)
    )
    compile_for_training(model, learning_rate)
    result = HeadResult([], np.zeros(0, np.int64), {})
    unreadable: list[UnusableImage] = []
    start = time.perf_counter()
    for epoch in range(epochs):
        order = batch_order(len(train), epoch, seed)
        data = _image_dataset(
            train, image_size, resize, batch_size, order, len(classes), threads, unreadable
        )
        with _unwrapped(unreadable):
            hist = model.fit(data, epochs=1, shuffle=False, verbose=0)
        val_data = _image_dataset(
            val, image_size, resize, eval_batch_size, np.arange(len(val)), None, threads, unreadable
        )
        with _unwrapped(unreadable):
            logits = model.predict(val_data, verbose=0)
        _finish_epoch(
            result,
            float(hist.history["loss"][-1]),
            np.argmax(logits, axis=1),
            val.labels,
            classes,
            epoch,
            on_epoch,
        )
    result.train_seconds = time.perf_counter() - start
    result.head_weights = [np.asarray(w) for w in model.get_layer("logits").get_weights()]
    result.total_params = model.count_params()
    result.trainable_params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return result
