"""Trial objective: train the paper's head and score validation macro-F1.

Two paths with the same mathematics: the cached path trains ``Dense(num_classes)`` on pooled
features from the cache; the end-to-end path trains the whole model (preprocess, frozen base
called with ``training=False``, GAP, Dense) on images, as the paper did. Given the same seed
both start from the same head and see the same batches in the same order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.data import Dataset, Split, UnusableImage, default_threads, load_batch
from clothopt.errors import TrialFailed
from clothopt.metrics import classification_metrics
from clothopt.model.backbones import BackboneSpec, get_backbone
from clothopt.model.compose import Head, build_head, compose

if TYPE_CHECKING:
    import keras
    import optuna

    from clothopt.config import StudyConfig
    from clothopt.features import FeatureCache, Features

__all__ = [
    "HeadResult",
    "Objective",
    "batch_order",
    "compile_for_training",
    "train_end_to_end",
    "train_head",
    "trial_seed",
]

EpochCallback = Callable[[int, float], None]  # (epoch, validation macro-F1)


def trial_seed(seed: int, params: Mapping[str, Any]) -> int:
    """A seed from the study seed and the trial's parameters, not its number.

    A grid point run again (after a crash) starts from the same head and batch order.
    """
    blob = json.dumps({"seed": seed, "params": dict(params)}, sort_keys=True).encode()
    return int(hashlib.sha256(blob).hexdigest()[:8], 16)


def batch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The order in which an epoch visits the training examples (shared by both paths)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def compile_for_training(model: keras.Model, learning_rate: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )


@dataclass
class HeadResult:
    head_weights: list[np.ndarray]  # [kernel (D, C), bias (C,)]
    val_pred: np.ndarray
    val_metrics: dict[str, Any]
    epoch_f1: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    diverged: bool = False
    total_params: int = 0
    trainable_params: int = 0


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
    """Train the head on cached features; score validation macro-F1 after every epoch."""
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


class Objective:
    """``trial -> validation macro-F1`` for one study's configuration.

    Records in the trial's user attributes what the trial measured (validation precision,
    recall, F1, accuracy, per-class figures and confusion matrix; seconds extracting and
    training; parameter counts; per-epoch loss) and reports per-epoch F1 as intermediate
    values for pruners. An image that does not decode fails this trial only
    (:class:`~clothopt.errors.TrialFailed`); any other :class:`~clothopt.errors.UserError`
    stops the run.
    """

    def __init__(self, config: StudyConfig, dataset: Dataset, cache: FeatureCache) -> None:
        self.config = config
        self.dataset = dataset
        self.cache = cache
        self.spec = get_backbone(config.backbone)
        self._warmed: set[str] = set()  # splits whose every image size has been extracted

    def _features(self, size: int, split: Split) -> tuple[Features, float]:
        """This trial's features of ``split`` and the extraction seconds it paid.

        The first time, every image size of a space of choices is extracted in one pass that
        decodes each image once (later trials find them cached).
        """
        cfg = self.config
        choices = cfg.space.params["image_size"].choices
        sizes = [int(s) for s in choices] if choices and split.name not in self._warmed else []
        self._warmed.add(split.name)
        many = self.cache.get_many(
            self.spec, cfg.weights, cfg.seed, sorted({size, *sizes}), cfg.resize, split
        )
        return many[size], sum(f.extract_seconds for f in many.values() if not f.cached)

    def __call__(self, trial: optuna.Trial) -> float:
        done = False
        try:
            value = self._run(trial)
            done = True
            return value
        except UnusableImage as exc:
            # this trial's fault (the study goes on); predict and data check keep the UserError
            raise TrialFailed(str(exc)) from exc
        finally:
            try:
                self._release()
            except Exception:
                # Ctrl-C during the Keras import leaves it half imported, and freeing it then
                # fails: that must not replace the exception that stopped the trial
                if done:
                    raise

    def _run(self, trial: optuna.Trial) -> float:
        import optuna

        cfg = self.config
        params = cfg.space.suggest(trial)
        size, batch, lr = params["image_size"], params["batch_size"], params["learning_rate"]
        seed = trial_seed(cfg.seed, params)
        train, val = self.dataset["train"], self.dataset["validation"]

        def on_epoch(epoch: int, f1: float) -> None:
            trial.report(f1, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} (F1 {f1:.4f})")

        extract_seconds = 0.0
        if cfg.use_cache:
            got = [self._features(size, split) for split in (train, val)]
            (ftrain, _), (fval, _) = got
            extract_seconds = sum(paid for _, paid in got)
            trial.set_user_attr("features_cached", ftrain.cached and fval.cached)
            result = train_head(
                ftrain.x,
                ftrain.y,
                fval.x,
                fval.y,
                train.classes,
                lr,
                batch,
                cfg.epochs,
                seed,
                on_epoch,
            )
            head = ftrain.x.shape[1] * len(train.classes) + len(train.classes)
            result.total_params, result.trainable_params = ftrain.base_params + head, head
        else:
            result = train_end_to_end(
                self.spec,
                cfg.weights,
                cfg.seed,
                train,
                val,
                size,
                cfg.resize,
                lr,
                batch,
                cfg.epochs,
                seed,
                on_epoch,
                cfg.threads,
            )
        m = result.val_metrics
        attrs = {
            "val_precision_macro": m["precision_macro"],
            "val_recall_macro": m["recall_macro"],
            "val_f1_macro": m["f1_macro"],
            "val_accuracy": m["accuracy"],
            "val_f1_per_class": {c: v["f1"] for c, v in m["per_class"].items()},
            # the rest of the per-class report (the dashboard's validation_report.json)
            "val_per_class": m["per_class"],
            "val_confusion_matrix": m["confusion_matrix"],
            "extract_seconds": round(extract_seconds, 3),
            "train_seconds": round(result.train_seconds, 3),
            "total_params": result.total_params,
            "trainable_params": result.trainable_params,
            "epoch_loss": result.epoch_loss,
            "loss_diverged": result.diverged,
            "path": "cached" if cfg.use_cache else "end_to_end",
            "seed": seed,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return m["f1_macro"]

    def _release(self) -> None:
        # Free the trial's Keras state so memory stays flat over a long study
        import gc

        import keras

        self.cache.release_model()
        keras.backend.clear_session()
        gc.collect()
