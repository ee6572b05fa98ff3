"""Trial objective: train the trial's head and score validation macro-F1.

A trial's parameters are parsed once into a :class:`~clothopt.trial_spec.TrialSpec`. The cached
path is the trial's pipeline, which ``clothopt.final.finalize`` runs too: :func:`head_inputs`
assembles the features the spec names (backbone, sizes concatenated, flipped copies for
training, a flipped view for test-time augmentation) and :func:`train_spec` trains the spec's
head on them (the paper's ``Dense(num_classes)`` unless the space varies more), with one
:class:`~clothopt.model.head.HeadTrainer` reused across trials. The end-to-end path trains the
whole paper model (preprocess, frozen base called with ``training=False``, GAP, Dense) on
images, as the paper did; for the paper's head both start from the same head and see the same
batches in the same order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.data import Dataset, Split, UnusableImage, default_threads, load_batch
from clothopt.engine.storage import set_user_attrs
from clothopt.errors import TrialFailed
from clothopt.metrics import classification_metrics
from clothopt.model.backbones import BackboneSpec, get_backbone
from clothopt.model.compose import Head, build_head, compose
from clothopt.model.head import HeadResult, HeadTrainer
from clothopt.trial_spec import TrialSpec, trial_seed

if TYPE_CHECKING:
    import keras
    import optuna

    from clothopt.config import StudyConfig
    from clothopt.features import FeatureCache

__all__ = [
    "HeadInput",
    "Objective",
    "batch_order",
    "compile_for_training",
    "head_inputs",
    "train_end_to_end",
    "train_head",
    "train_spec",
    "trial_seed",
]

EpochCallback = Callable[[int, float], None]  # (epoch, validation macro-F1)


def batch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The order in which an epoch visits the training examples (shared by both paths)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


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
    validation macro-F1 after every epoch. Trials use :class:`HeadTrainer`, which gives the
    same result for this head; this stays as the reference it is checked against."""
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


@dataclass(frozen=True)
class HeadInput:
    """One split's features as a head sees them for a trial's specification."""

    x: np.ndarray  # blocks of the N examples' rows: plain images, then (flip/tta) mirrored
    y: np.ndarray  # labels of the rows of x (training) or of the N examples (views > 1)
    views: int  # stacked views of the same N examples whose logits are averaged (TTA)
    extract_seconds: float  # what computing the features not yet cached cost now
    cached: bool  # every entry was already in the cache
    base_params: int  # parameters of the frozen base
    blocks: int = 1  # how many blocks of N rows x stacks (a training split's: plain + flip)

    @property
    def examples(self) -> int:
        """N, the split's examples."""
        return len(self.x) // self.blocks

    def plain(self) -> HeadInput:
        """The plain images' block alone."""
        n = self.examples
        return dataclasses.replace(self, x=self.x[:n], y=self.y[:n], views=1, blocks=1)

    def take(self, rows: np.ndarray) -> HeadInput:
        """The examples ``rows`` (indices into the split's N) in that order, in every block
        (plain block first): e.g. a fold's training rows."""
        n, rows = self.examples, np.asarray(rows, np.int64)
        index = np.concatenate([b * n + rows for b in range(self.blocks)])
        y = self.y[index] if len(self.y) == len(self.x) else self.y[rows]
        return dataclasses.replace(self, x=self.x[index], y=y)


def head_inputs(
    cache: FeatureCache,
    dataset: Dataset,
    config: StudyConfig,
    spec: TrialSpec,
    splits: Sequence[str] = ("train", "validation"),
    train_splits: Sequence[str] = ("train",),
) -> dict[str, HeadInput]:
    """Per split name, the feature matrix the head of trial ``spec`` trains on or is scored on.

    Features of every size in ``spec.image_sizes`` are concatenated along the feature axis in
    that order. With ``flip`` a split in ``train_splits`` gets the mirrored images' features as
    extra rows (plain rows first, labels repeated); with ``tta`` any other split gets them as a
    second view (plain first) whose logits are averaged with the plain one's. Mirroring is that
    of :class:`~clothopt.features.FeatureKey`. The paper's parameters give the cached matrix as
    is. ``config`` gives the extraction settings (weights, seed, resize).
    """
    backbone = get_backbone(spec.backbone)
    out: dict[str, HeadInput] = {}
    for name in splits:
        split = dataset[name]
        training = name in train_splits
        mirrored = spec.flip if training else spec.tta
        blocks, labels, seconds, cached, base = [], None, 0.0, True, 0
        for flip in (False, True) if mirrored else (False,):
            feats = [
                cache.get(
                    backbone, config.weights, config.seed, size, config.resize, split, flip=flip
                )
                for size in spec.image_sizes
            ]
            seconds += sum(f.extract_seconds for f in feats if not f.cached)
            cached = cached and all(f.cached for f in feats)
            base, labels = feats[0].base_params, feats[0].y
            blocks.append(
                feats[0].x if len(feats) == 1 else np.concatenate([f.x for f in feats], 1)
            )
        x = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        assert labels is not None
        if training:
            y, views = np.tile(labels, len(blocks)), 1
        else:
            y, views = labels, len(blocks)
        out[name] = HeadInput(x, y, views, seconds, cached, base, blocks=len(blocks))
    return out


def train_spec(
    spec: TrialSpec,
    inputs: Mapping[str, HeadInput],
    classes: Sequence[str],
    trainer: HeadTrainer,
    *,
    seed: int | None = None,
    train_rows: np.ndarray | None = None,
    on_epoch: EpochCallback | None = None,
) -> HeadResult:
    """The trial's pipeline: ``spec``'s head trained on ``inputs["train"]`` and scored on
    ``inputs["validation"]`` (macro-F1 after every epoch, views averaged), as
    :func:`head_inputs` builds them.

    ``seed`` (default: the spec's) draws the head's start and the batch order
    (:func:`batch_order`); ``train_rows`` (default: all) are the train split's examples to
    train on, with their mirrored rows. The objective calls it once per trial and finalize for
    the final model; a repeat with another seed or a fold's rows is one more call.
    """
    train, val = inputs["train"], inputs["validation"]
    if train_rows is not None:
        train = train.take(train_rows)
    result = trainer.train(
        train.x,
        train.y,
        val.x,
        val.y,
        classes,
        spec.head,
        spec.seed if seed is None else seed,
        batch_order,
        on_epoch,
        val_views=val.views,
    )
    result.total_params = train.base_params + result.trainable_params
    return result


def _trial_attrs(
    result: HeadResult, extract_seconds: float, cached: bool, seed: int
) -> dict[str, Any]:
    """What a trial records in its user attributes (one storage transaction for them all)."""
    m = result.val_metrics
    return {
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
        "path": "cached" if cached else "end_to_end",
        "seed": seed,
    }


class Objective:
    """``trial -> validation macro-F1`` for one study's configuration.

    Records in the trial's user attributes what the trial measured (validation precision,
    recall, F1, accuracy, per-class figures and confusion matrix; seconds extracting and
    training; parameter counts; per-epoch loss; the backbone) and reports per-epoch F1 as
    intermediate values for pruners. An image that does not decode fails this trial only
    (:class:`~clothopt.errors.TrialFailed`); any other :class:`~clothopt.errors.UserError`
    stops the run. Cached trials share one :class:`HeadTrainer` per worker thread: its compiled
    models are what makes a trial cost what its head costs.
    """

    def __init__(self, config: StudyConfig, dataset: Dataset, cache: FeatureCache) -> None:
        self.config = config
        self.dataset = dataset
        self.cache = cache
        self.spec = get_backbone(config.backbone)
        self._local = threading.local()
        self._warmed: set[tuple[str, str]] = set()  # (backbone, split) extracted at every size

    @property
    def trainer(self) -> HeadTrainer:
        """This thread's head trainer (HeadTrainer is not thread-safe)."""
        if not hasattr(self._local, "trainer"):
            self._local.trainer = HeadTrainer()
        return self._local.trainer  # type: ignore[no-any-return]

    def _warm(self, backbone: str, splits: Sequence[str]) -> float:
        """The first time a backbone is used, extract every image size the space can pick for
        ``splits`` in one pass per split that decodes each image once (later trials find them
        cached); returns the seconds paid."""
        cfg = self.config
        sizes = cfg.space.listed_sizes()
        spec, paid = get_backbone(backbone), 0.0
        for name in splits:
            if (backbone, name) in self._warmed or len(sizes) < 2:
                continue
            self._warmed.add((backbone, name))
            got = self.cache.get_many(
                spec, cfg.weights, cfg.seed, sizes, cfg.resize, self.dataset[name]
            )
            paid += sum(f.extract_seconds for f in got.values() if not f.cached)
        return paid

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
        spec = TrialSpec.of(cfg.space.suggest(trial), cfg, where=f"trial {trial.number}")

        def on_epoch(epoch: int, f1: float) -> None:
            trial.report(f1, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} (F1 {f1:.4f})")

        trial.set_user_attr("backbone", spec.backbone)
        if cfg.use_cache:
            warm = self._warm(spec.backbone, ("train", "validation"))
            inputs = head_inputs(self.cache, self.dataset, cfg, spec)
            tr, va = inputs["train"], inputs["validation"]
            extract_seconds = warm + tr.extract_seconds + va.extract_seconds
            trial.set_user_attr("features_cached", tr.cached and va.cached and not warm)
            result = train_spec(
                spec, inputs, self.dataset["train"].classes, self.trainer, on_epoch=on_epoch
            )
        else:
            # the paper's head only (study.create refuses other spaces without the cache)
            extract_seconds = 0.0
            result = train_end_to_end(
                self.spec,
                cfg.weights,
                cfg.seed,
                self.dataset["train"],
                self.dataset["validation"],
                spec.image_sizes[0],
                cfg.resize,
                spec.head.learning_rate,
                spec.head.batch_size,
                spec.head.epochs,
                spec.seed,
                on_epoch,
                cfg.threads,
            )
        set_user_attrs(trial, _trial_attrs(result, extract_seconds, cfg.use_cache, spec.seed))
        return result.val_metrics["f1_macro"]

    def _release(self) -> None:
        # Free the trial's Keras state so memory stays flat over a long study; the head
        # trainer's few compiled models stay (clearing the session would rebuild them per trial)
        import gc

        import keras

        self.cache.release_model()
        if not self.config.use_cache:
            keras.backend.clear_session()
        gc.collect()
