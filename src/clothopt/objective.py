"""Trial objective: train the trial's head and score validation macro-F1.

The cached path trains the head a trial's parameters describe (:class:`HeadParams`: the paper's
``Dense(num_classes)`` unless the space varies more) on pooled features from the cache, with one
:class:`~clothopt.model.head.HeadTrainer` reused across trials; :func:`head_inputs` assembles
those features (backbone, one size or several concatenated, flipped copies for training, a
flipped view for test-time augmentation). The end-to-end path trains the whole paper model
(preprocess, frozen base called with ``training=False``, GAP, Dense) on images, as the paper
did. For the paper's head both start from the same head and see the same batches in the same
order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from clothopt.model.head import HeadParams, HeadResult, HeadTrainer
from clothopt.spaces import image_sizes

if TYPE_CHECKING:
    import keras
    import optuna

    from clothopt.config import StudyConfig
    from clothopt.features import FeatureCache
    from clothopt.spaces import SearchSpace

__all__ = [
    "HeadInput",
    "Objective",
    "batch_order",
    "compile_for_training",
    "head_inputs",
    "train_end_to_end",
    "train_head",
    "trial_backbone",
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


def trial_backbone(config: StudyConfig, params: Mapping[str, Any]) -> str:
    """The backbone a trial's features come from: its ``backbone`` parameter or the study's."""
    return str(params.get("backbone", config.backbone))


@dataclass(frozen=True)
class HeadInput:
    """One split's features as a head sees them for a trial's parameters."""

    x: np.ndarray  # (views * N, D) or, for a training split with flip, (2N, D)
    y: np.ndarray  # labels of the rows of x (training) or of the N examples (views > 1)
    views: int  # stacked views of the same N examples whose logits are averaged (TTA)
    extract_seconds: float  # what computing the features not yet cached cost now
    cached: bool  # every entry was already in the cache
    base_params: int  # parameters of the frozen base


def head_inputs(
    cache: FeatureCache,
    dataset: Dataset,
    config: StudyConfig,
    params: Mapping[str, Any],
    splits: Sequence[str] = ("train", "validation"),
    train_splits: Sequence[str] = ("train",),
) -> dict[str, HeadInput]:
    """Per split name, the feature matrix a head with these trial ``params`` trains on or is
    scored on.

    Features of every size in ``image_sizes`` ("300+500") are concatenated along the feature
    axis in the order written (else the one ``image_size``). With ``flip`` a split in
    ``train_splits`` gets the mirrored images' features as extra rows (plain rows first, labels
    repeated); with ``tta`` any other split gets them as a second view (plain first) whose logits
    are averaged with the plain one's. Mirroring is that of
    :class:`~clothopt.features.FeatureKey`. The paper's parameters give the cached matrix as is.
    """
    spec = get_backbone(trial_backbone(config, params))
    sizes = image_sizes(params)
    out: dict[str, HeadInput] = {}
    for name in splits:
        split = dataset[name]
        training = name in train_splits
        mirrored = bool(params.get("flip" if training else "tta", False))
        blocks, labels, seconds, cached, base = [], None, 0.0, True, 0
        for flip in (False, True) if mirrored else (False,):
            feats = [
                cache.get(spec, config.weights, config.seed, size, config.resize, split, flip=flip)
                for size in sizes
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
            out[name] = HeadInput(x, np.tile(labels, len(blocks)), 1, seconds, cached, base)
        else:
            out[name] = HeadInput(x, labels, len(blocks), seconds, cached, base)
    return out


def _size_choices(space: SearchSpace) -> list[dict[str, Any]]:
    """Every ``{image_size}`` / ``{image_sizes}`` value a space can give a trial."""
    return [
        {name: choice}
        for name in ("image_size", "image_sizes")
        if (p := space.params.get(name)) is not None and p.choices is not None
        for choice in p.choices
    ]


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
        sizes = sorted({s for p in _size_choices(cfg.space) for s in image_sizes(p)})
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
        params = cfg.space.suggest(trial)
        seed = trial_seed(cfg.seed, params)
        train, val = self.dataset["train"], self.dataset["validation"]

        def on_epoch(epoch: int, f1: float) -> None:
            trial.report(f1, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} (F1 {f1:.4f})")

        extract_seconds = 0.0
        backbone = trial_backbone(cfg, params)
        trial.set_user_attr("backbone", backbone)
        if cfg.use_cache:
            warm = self._warm(backbone, ("train", "validation"))
            inputs = head_inputs(self.cache, self.dataset, cfg, params)
            tr, va = inputs["train"], inputs["validation"]
            extract_seconds = warm + tr.extract_seconds + va.extract_seconds
            trial.set_user_attr("features_cached", tr.cached and va.cached and not warm)
            head = HeadParams.from_params(params, epochs=cfg.epochs)
            result = self.trainer.train(
                tr.x,
                tr.y,
                va.x,
                va.y,
                train.classes,
                head,
                seed,
                batch_order,
                on_epoch,
                val_views=va.views,
            )
            result.total_params = tr.base_params + result.trainable_params
        else:
            # the paper's head only (study.create refuses other spaces without the cache)
            result = train_end_to_end(
                self.spec,
                cfg.weights,
                cfg.seed,
                train,
                val,
                params["image_size"],
                cfg.resize,
                params["learning_rate"],
                params["batch_size"],
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
        set_user_attrs(trial, attrs)  # one storage transaction, not one per attribute
        return m["f1_macro"]

    def _release(self) -> None:
        # Free the trial's Keras state so memory stays flat over a long study; the head
        # trainer's few compiled models stay (clearing the session would rebuild them per trial)
        import gc

        import keras

        self.cache.release_model()
        if not self.config.use_cache:
            keras.backend.clear_session()
        gc.collect()
