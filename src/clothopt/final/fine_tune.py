"""The second phase of transfer learning: unfreeze the base's top layers, train end to end.

After the head is trained on cached features, :func:`fine_tune` composes the end-to-end model
(:func:`clothopt.model.compose.compose`, the one composition: the same preprocessing, base and
head the exported model gets), starts it from the trained head, unfreezes the top ``layers``
weighted layers of the base (BatchNormalization stays frozen and in inference mode, as the
base is always called with ``training=False``) and trains on the train split's images at a
low learning rate with the trial's batch size, label smoothing and training rows: plain,
mirrored (``flip``), then the trial's augmentation views 1..N (``aug_views``), each the picture
the feature cache's view entry was extracted from (:mod:`clothopt.augment`, the same seed and
image identities). The images are decoded and resized once, with PIL's nearest resize as the
feature cache does; mirrored and view rows are made per batch from them, so memory holds one
copy of the train images however many views a trial has.

What it returns is what the finalizer needs to export and check the model: the tuned model
(:meth:`FineTuned.into` copies it into the exported one), the pooled features of the plain
train and validation images through the tuned base (the "not clothing" detector is fitted on
them), and the training model's own test logits (the saved model must agree with them, as it
must with the cached head without fine-tuning).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.augment import AUGMENT_SEED, augment_batch, image_identity
from clothopt.errors import InvalidArgument
from clothopt.metrics import macro_f1
from clothopt.model.compose import POOL_LAYER, Head, compose
from clothopt.model.head import average_views

if TYPE_CHECKING:
    import keras

    from clothopt.config import StudyConfig
    from clothopt.data import Dataset
    from clothopt.model.backbones import BackboneSpec
    from clothopt.model.head import BatchOrder, HeadParams
    from clothopt.trial_spec import TrialSpec

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_LEARNING_RATE",
    "FineTuned",
    "FineTuning",
    "TrainViews",
    "base_of",
    "check",
    "fine_tune",
]

DEFAULT_EPOCHS = 2
DEFAULT_LEARNING_RATE = 1e-5  # Keras's transfer-learning guide's second phase: Adam at 1e-5


@dataclass
class FineTuned:
    model: keras.Model  # the end-to-end training model, tuned
    layers: int
    epochs: int
    learning_rate: float
    trainable_params: int
    epoch_f1: list[float]  # validation (plain images) after each epoch
    epoch_loss: list[float]
    aug_views: int  # augmentation views per train image it trained on (besides plain/mirror)
    train_seconds: float
    load_seconds: float
    train_features: np.ndarray  # pooled, plain train images, through the tuned base
    val_features: np.ndarray
    val_logits: np.ndarray  # views averaged when tta
    test_logits: np.ndarray

    def report(self, head_only_f1: float) -> dict[str, Any]:
        """report.json's ``fine_tune`` (``head_only_f1``: the head's before fine-tuning)."""
        return {
            "layers": self.layers,
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "validation_f1_per_epoch": self.epoch_f1,
            "loss_per_epoch": self.epoch_loss,
            "aug_views": self.aug_views,
            "train_seconds": round(self.train_seconds, 3),
            "decode_seconds": round(self.load_seconds, 3),
            "head_only_validation_f1_macro": head_only_f1,
        }

    def into(self, exported: keras.Model) -> None:
        """Copy the tuned base and head into ``exported`` (composed with the same head)."""
        import keras

        base_of(exported).set_weights(base_of(self.model).get_weights())
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.Dense):
                exported.get_layer(layer.name).set_weights(layer.get_weights())


@dataclass(frozen=True)
class FineTuning:
    """Finalize's optional second phase: the base's top ``layers`` (0: none) trained end to
    end for ``epochs`` at ``learning_rate``."""

    layers: int = 0
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE

    def __post_init__(self) -> None:
        if self.layers < 0:
            raise InvalidArgument(f"--fine-tune must be a number of layers, not {self.layers}")

    def check(self, spec: TrialSpec, where: str) -> None:
        """Refuse, before any work, what fine-tuning cannot do for trial ``spec``."""
        from clothopt.model.backbones import get_backbone

        if not self.layers:
            return
        if len(spec.image_sizes) > 1:
            raise InvalidArgument(
                f"--fine-tune tunes one base; {where} concatenates the features of "
                f"{'+'.join(map(str, spec.image_sizes))} px (finalize a one-size trial with "
                "--trial N)"
            )
        size = spec.image_sizes[0]
        check(get_backbone(spec.backbone), size, self.layers, self.epochs, self.learning_rate)

    def run(
        self,
        spec: TrialSpec,
        config: StudyConfig,
        dataset: Dataset,
        head: Head,
        say: Callable[[str], None],
    ) -> FineTuned:
        """:func:`fine_tune` the trained ``head`` of trial ``spec`` with its seed, batches,
        flip, augmentation views and TTA, on the study's images."""
        from clothopt.model.backbones import get_backbone
        from clothopt.pipeline import batch_order

        splits = ("train", "validation", "test")
        train = dataset["train"]
        return fine_tune(
            get_backbone(spec.backbone),
            spec.image_sizes[0],
            config.weights,
            config.seed,
            head,
            spec.head,
            {k: (dataset[k].paths, dataset[k].labels) for k in splits},
            layers=self.layers,
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            seed=spec.seed,
            batch_order=batch_order,
            flip=spec.flip,
            tta=spec.tta,
            aug_views=spec.aug_views,
            identities=[image_identity(train.root, p) for p in train.paths],
            resize=config.resize,
            threads=config.threads,
            say=say,
        )


@dataclass(frozen=True)
class TrainViews:
    """The fine-tuning rows of ``images`` (N train images, resized uint8): block 0 plain,
    block 1 mirrored with ``flip``, then augmentation views 1..``aug_views``, N rows each.

    A view row is :func:`clothopt.augment.augment_batch` of the image under
    :data:`~clothopt.augment.AUGMENT_SEED` and its identity: the picture the feature cache's
    entry for that view was extracted from. Rows are made per batch (views are deterministic,
    so every epoch sees the same pictures) rather than held: 8 views of 3,068 images at
    224 px would be 3.7 GB.
    """

    images: np.ndarray
    flip: bool
    aug_views: int
    identities: Sequence[str]
    seed: int = AUGMENT_SEED
    threads: int | None = None

    @property
    def rows(self) -> int:
        return len(self.images) * (1 + int(self.flip) + self.aug_views)

    def batch(self, rows: np.ndarray) -> np.ndarray:
        """The images of ``rows`` (indices into the :attr:`rows` rows), in that order."""
        block, index = np.divmod(np.asarray(rows, np.int64), len(self.images))
        out = self.images[index]  # a copy: fancy indexing
        if self.flip:
            mirrored = block == 1
            out[mirrored] = out[mirrored][:, :, ::-1]  # NHWC: reverse columns
        first = 2 if self.flip else 1  # the block of view 1
        for b in np.unique(block[block >= first]):
            at = np.flatnonzero(block == b)
            names = [self.identities[i] for i in index[at]]
            view = int(b) - first + 1
            out[at] = augment_batch(out[at], names, self.seed, view, self.threads)
        return out


def base_of(model: keras.Model) -> keras.Model:
    """The backbone inside a composed single-size model (its only nested model)."""
    import keras

    bases = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(bases) != 1:
        raise ValueError(f"expected one base in {model.name}, found {len(bases)}")
    return bases[0]


def check(spec: BackboneSpec, size: int, layers: int, epochs: int, learning_rate: float) -> None:
    """Refuse arguments :func:`fine_tune` cannot use, before any work: ``layers`` beyond the
    base's layers with weights (the structure alone: built without loading weights), epochs
    outside 1..1000, a learning rate outside (0, 1)."""
    from clothopt.model.backbones import build_base

    if not 1 <= epochs <= 1000:
        raise InvalidArgument(f"--fine-tune-epochs must be between 1 and 1000, not {epochs}")
    if not 0.0 < learning_rate < 1.0:
        raise InvalidArgument(f"--fine-tune-lr must be in (0, 1), not {learning_rate:g}")
    _weighted(build_base(spec, size, "none", 0), layers)


def _weighted(base: keras.Model, layers: int) -> list[keras.layers.Layer]:
    weighted = [layer for layer in base.layers if layer.weights]
    if not 1 <= layers <= len(weighted):
        raise InvalidArgument(
            f"--fine-tune must be between 1 and {len(weighted)} (the base's layers with "
            f"weights), not {layers}"
        )
    return weighted


def _unfreeze_top(base: keras.Model, layers: int) -> None:
    """Make the top ``layers`` weighted layers trainable (BatchNormalization excepted)."""
    import keras

    weighted = _weighted(base, layers)
    base.trainable = True
    top = set(map(id, weighted[-layers:]))
    for layer in base.layers:
        bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = id(layer) in top and not bn


def _load(paths: Sequence[Any], size: int, resize: str, threads: int | None) -> np.ndarray:
    from clothopt.data.images import default_threads, load_batch

    with ThreadPoolExecutor(threads or default_threads()) as pool:
        return load_batch(list(paths), size, resize, pool)


def _predict(model: keras.Model, x: np.ndarray, batch: int = 64) -> np.ndarray:
    out = [np.asarray(model.predict_on_batch(x[i : i + batch])) for i in range(0, len(x), batch)]
    return np.concatenate(out)


def fine_tune(
    spec: BackboneSpec,
    size: int,
    weights: str,
    weights_seed: int,
    head: Head,
    params: HeadParams,
    splits: dict[str, tuple[Sequence[Any], np.ndarray]],
    *,
    layers: int,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int,
    batch_order: BatchOrder,
    flip: bool,
    tta: bool,
    aug_views: int = 0,
    identities: Sequence[str] | None = None,
    resize: str = "nearest",
    threads: int | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> FineTuned:
    """Fine-tune ``head`` (trained weights) and the base's top ``layers`` end to end
    (arguments as :func:`check` accepts them).

    ``splits`` maps "train", "validation" and "test" to (image paths, labels). Epoch ``e``
    visits the train rows (plain, then mirrored with ``flip``, then views 1..``aug_views``;
    :class:`TrainViews`) in ``batch_order(n, e, seed)``; ``identities`` name the train images
    for their views (:func:`clothopt.augment.image_identity`, needed when ``aug_views`` > 0).
    """
    import keras

    from clothopt.data.images import default_threads

    n_train = len(splits["train"][0])
    if aug_views and (identities is None or len(identities) != n_train):
        raise InvalidArgument(
            f"fine-tuning on {aug_views} augmentation view(s) needs the identity of each of "
            f"the {n_train} train images"
        )

    model = compose(spec, size, weights, weights_seed, head=head)
    _unfreeze_top(base_of(model), layers)

    start = time.perf_counter()
    say(f"fine-tuning: decoding the images at {size} px")
    x = {k: _load(paths, size, resize, threads) for k, (paths, _) in splits.items()}
    y = {k: np.asarray(labels, np.int64) for k, (_, labels) in splits.items()}
    load_seconds = time.perf_counter() - start
    # the blocks follow each other as the search's cached rows do: plain, mirrored, views
    blocks = 1 + int(flip) + aug_views
    num_classes = head.num_classes
    onehot = np.eye(num_classes, dtype=np.float32)[np.tile(y["train"], blocks)]
    views = TrainViews(x["train"], flip, aug_views, identities or (), threads=default_threads())

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=params.label_smoothing
        ),
    )
    epoch_f1: list[float] = []
    epoch_loss: list[float] = []
    start = time.perf_counter()
    n, batch = len(onehot), params.batch_size
    for epoch in range(epochs):
        order = batch_order(n, epoch, seed)
        total = 0.0
        for i in range(0, n, batch):
            rows = order[i : i + batch]
            total += float(model.train_on_batch(views.batch(rows), onehot[rows])) * len(rows)
        val_pred = np.argmax(_predict(model, x["validation"]), axis=1)
        epoch_loss.append(total / n)
        epoch_f1.append(macro_f1(y["validation"], val_pred, num_classes))
        say(
            f"fine-tuning epoch {epoch + 1}/{epochs}: loss {epoch_loss[-1]:.4f}, "
            f"validation macro-F1 {epoch_f1[-1]:.4f}"
        )
        if not math.isfinite(epoch_loss[-1]):
            raise InvalidArgument(
                f"fine-tuning diverged (loss {epoch_loss[-1]}); lower --fine-tune-lr"
            )
    train_seconds = time.perf_counter() - start

    def logits(images: np.ndarray) -> np.ndarray:
        if not tta:
            return _predict(model, images)
        both = np.concatenate([_predict(model, images), _predict(model, images[:, :, ::-1])])
        return average_views(both, 2)

    pooled = keras.Model(model.inputs, model.get_layer(POOL_LAYER).output)
    return FineTuned(
        model=model,
        layers=layers,
        epochs=epochs,
        learning_rate=learning_rate,
        trainable_params=int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        epoch_f1=epoch_f1,
        epoch_loss=epoch_loss,
        aug_views=aug_views,
        train_seconds=train_seconds,
        load_seconds=load_seconds,
        train_features=_predict(pooled, x["train"]).astype(np.float32),
        val_features=_predict(pooled, x["validation"]).astype(np.float32),
        val_logits=logits(x["validation"]),
        test_logits=logits(x["test"]),
    )
