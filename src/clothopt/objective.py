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
from clothopt.errors import InvalidArgument, TrialFailed
from clothopt.folds import fold_rows, stratified_folds
from clothopt.metrics import classification_metrics
from clothopt.model.backbones import BackboneSpec, get_backbone
from clothopt.model.compose import Head, build_head, compose
from clothopt.model.head import HeadResult, HeadTrainer
from clothopt.model.stacked import Member, StackedTrainer
from clothopt.trial_spec import TrialSpec, trial_seed

if TYPE_CHECKING:
    import keras
    import optuna

    from clothopt.config import StudyConfig
    from clothopt.features import FeatureCache

__all__ = [
    "Evaluation",
    "HeadInput",
    "Objective",
    "Protocol",
    "batch_order",
    "compile_for_training",
    "evaluate",
    "head_inputs",
    "member_seeds",
    "protocol_inputs",
    "protocol_members",
    "train_end_to_end",
    "train_head",
    "train_member",
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


@dataclass(frozen=True)
class Protocol:
    """How a trial estimates its configuration: ``repeats`` seeds, each trained on ``folds``
    stratified folds of train + validation (K >= 2) or on the split as given (0)."""

    repeats: int = 1
    folds: int = 0

    @property
    def members(self) -> int:
        """Heads one evaluation trains: repeats x (folds or the one given split)."""
        return self.repeats * max(1, self.folds)

    @property
    def single(self) -> bool:
        """The paper's protocol: one fit on train, scored on validation."""
        return self.repeats == 1 and self.folds == 0

    def to_dict(self) -> dict[str, int]:
        return {"repeats": self.repeats, "folds": self.folds}


def member_seeds(seed: int, start: int, count: int) -> list[int]:
    """Seeds ``start .. start + count - 1`` of a trial whose own seed is ``seed``: seed 0 is
    the trial's (its first member is today's single fit), the others derived from it, so a
    re-evaluation (``start`` past the trial's repeats) draws seeds the trial never used."""
    return [
        seed if i == 0 else int(np.random.SeedSequence([seed, i]).generate_state(1)[0] >> 1)
        for i in range(start, start + count)
    ]


@dataclass
class Evaluation:
    """The members of one repeated evaluation: each one's final validation macro-F1 (repeat
    after repeat, fold after fold), its HeadResult, and the pooled (true, predicted) labels of
    every member's validation examples (out-of-fold predictions with folds)."""

    runs: list[float]
    results: list[HeadResult]
    y_true: np.ndarray
    y_pred: np.ndarray
    train_seconds: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.runs))

    @property
    def sd(self) -> float:
        """Sample standard deviation (0 for one member)."""
        return float(np.std(self.runs, ddof=1)) if len(self.runs) > 1 else 0.0

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(len(self.runs))


def _pool(inputs: Mapping[str, HeadInput]) -> tuple[HeadInput, HeadInput]:
    """Train + validation as one pool of N examples: its training layout (plain block, then
    mirrored with ``flip``) and its scoring layout (plain view, then mirrored with ``tta``)."""
    tr, va = inputs["train"], inputs["validation"]
    copies, views = tr.blocks, va.views
    n_tr, n_va = tr.examples, va.examples
    y = np.concatenate([tr.y[:n_tr], va.y[:n_va]])
    x_val_tr = inputs["train_views"].x if views > 1 else tr.x[:n_tr]
    x_train_va = inputs["validation_train"].x if copies > 1 else va.x[:n_va]
    x = np.concatenate(
        [m for b in range(copies) for m in (tr.x[b * n_tr : (b + 1) * n_tr],
                                            x_train_va[b * n_va : (b + 1) * n_va])]
    )  # fmt: skip
    xv = np.concatenate(
        [m for b in range(views) for m in (x_val_tr[b * n_tr : (b + 1) * n_tr],
                                           va.x[b * n_va : (b + 1) * n_va])]
    )  # fmt: skip
    train = dataclasses.replace(tr, x=x, y=np.tile(y, copies), views=1, blocks=copies)
    scored = dataclasses.replace(va, x=xv, y=y, views=views, blocks=views)
    return train, scored


def protocol_members(
    spec: TrialSpec,
    inputs: Mapping[str, HeadInput],
    protocol: Protocol,
    study_seed: int,
    start: int,
) -> tuple[HeadInput, HeadInput, list[Member]]:
    """The training and scoring layouts the members index, and the members: ``protocol``'s
    seeds (from ``start``) x its folds (the same for every trial of a study: from the study
    seed only) or the split as given."""
    seeds = member_seeds(spec.seed, start, protocol.repeats)
    if not protocol.folds:
        return inputs["train"], inputs["validation"], [Member(s) for s in seeds]
    train, scored = _pool(inputs)
    n = scored.examples
    if protocol.folds > n:
        raise InvalidArgument(f"folds: {protocol.folds} folds need at least as many examples")
    folds = stratified_folds(scored.y, protocol.folds, study_seed)
    members = [Member(s, fold_rows(tr, n, train.blocks), va) for s in seeds for tr, va in folds]
    return train, scored, members


def train_member(
    trainer: HeadTrainer,
    spec: TrialSpec,
    train: HeadInput,
    scored: HeadInput,
    member: Member,
    classes: Sequence[str],
    on_epoch: EpochCallback | None,
) -> HeadResult:
    """One member alone: the first of a trial (whose curve a pruner watches), and each of
    the final ensemble's (finalize)."""
    x, y = train.x, train.y
    if member.train_rows is not None:
        x, y = x[member.train_rows], y[member.train_rows]
    val = scored if member.val_examples is None else scored.take(member.val_examples)
    return trainer.train(
        x, y, val.x, val.y, classes, spec.head, member.seed, batch_order, on_epoch,
        val_views=val.views,
    )  # fmt: skip


def evaluate(
    spec: TrialSpec,
    inputs: Mapping[str, HeadInput],
    classes: Sequence[str],
    protocol: Protocol,
    study_seed: int,
    trainers: tuple[HeadTrainer, StackedTrainer],
    *,
    start: int = 0,
    on_epoch: EpochCallback | None = None,
) -> Evaluation:
    """``spec`` trained ``protocol.members`` times: the first member alone (``on_epoch`` gets
    its curve, and may raise to prune the configuration there), then the rest as one stacked
    model. ``inputs`` as :func:`head_inputs` gives them; with folds also ``train_views`` (the
    train split scored, with TTA) and ``validation_train`` (validation as training rows, with
    flip): see :func:`protocol_inputs`. ``start``: the first repeat's index (a re-evaluation
    passes the trial's repeats to draw new seeds)."""
    train, scored, members = protocol_members(spec, inputs, protocol, study_seed, start)
    solo, stacked = trainers
    first = train_member(solo, spec, train, scored, members[0], classes, on_epoch)
    results, seconds = [first], first.train_seconds
    if len(members) > 1:
        rest = stacked.train(
            train.x, train.y, scored.x, scored.y, classes, spec.head, members[1:], batch_order,
            val_views=scored.views, reports=0,
        )  # fmt: skip
        results += rest.members
        seconds += rest.train_seconds
    n = scored.examples
    examples = [np.arange(n) if m.val_examples is None else m.val_examples for m in members]
    for r in results:
        r.total_params = train.base_params + r.trainable_params
    return Evaluation(
        runs=[float(r.epoch_f1[-1]) for r in results],
        results=results,
        y_true=np.concatenate([scored.y[:n][e] for e in examples]),
        y_pred=np.concatenate([r.val_pred for r in results]),
        train_seconds=seconds,
    )


def protocol_inputs(
    cache: FeatureCache,
    dataset: Dataset,
    config: StudyConfig,
    spec: TrialSpec,
    protocol: Protocol,
) -> dict[str, HeadInput]:
    """What :func:`evaluate` reads: :func:`head_inputs`, and with folds the two other layouts
    of the pool (train scored with TTA views, validation trained on with mirrored rows)."""
    inputs = head_inputs(cache, dataset, config, spec)
    if protocol.folds:
        other = head_inputs(cache, dataset, config, spec, train_splits=("validation",))
        inputs["train_views"] = other["train"]
        inputs["validation_train"] = other["validation"]
    return inputs


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
    intermediate values for pruners. A space that sets ``repeats`` R > 1 and/or ``folds``
    K >= 2 makes a trial R x (K | 1) fits (:func:`evaluate`): its value is their mean
    validation macro-F1, ``val_f1_macro`` that mean, ``val_f1_runs`` / ``val_f1_sd`` /
    ``val_f1_se`` / ``protocol`` / ``member_seeds`` the members', ``val_f1_pooled`` and the
    other validation figures (precision, recall, accuracy, per-class, confusion matrix) those
    of every member's predictions pooled (out-of-fold with folds), ``epoch_loss`` the first
    member's. An image that does not decode fails this trial only
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
            protocol = Protocol(cfg.space.repeats, cfg.space.folds)
            if not protocol.single:
                return self._repeated(trial, spec, protocol, extract_seconds, on_epoch)
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

    def _repeated(
        self,
        trial: optuna.Trial,
        spec: TrialSpec,
        protocol: Protocol,
        extract_seconds: float,
        on_epoch: EpochCallback,
    ) -> float:
        """The trial as ``protocol.members`` fits; its value their mean validation macro-F1.
        The pruner watches the first member's epochs (steps 0..E-1); the other members' curves
        are reported after it, member m's epoch e at step m * E + e."""
        cfg = self.config
        inputs = protocol_inputs(self.cache, self.dataset, cfg, spec, protocol)
        extract_seconds += sum(
            inputs[k].extract_seconds for k in ("train_views", "validation_train") if k in inputs
        )
        classes = self.dataset["train"].classes
        got = evaluate(
            spec, inputs, classes, protocol, cfg.seed, (self.trainer, self.stacked),
            on_epoch=on_epoch,
        )  # fmt: skip
        epochs = spec.head.epochs
        for m, result in enumerate(got.results[1:], start=1):
            for e, f1 in enumerate(result.epoch_f1):
                trial.report(f1, m * epochs + e)
        first = got.results[0]
        pooled = classification_metrics(got.y_true, got.y_pred, classes)
        pooled_result = dataclasses.replace(
            first,
            val_metrics=pooled | {"f1_macro": got.mean},
            train_seconds=got.train_seconds,
            diverged=any(r.diverged for r in got.results),
        )
        attrs = _trial_attrs(pooled_result, extract_seconds, True, spec.seed)
        attrs |= {
            "val_f1_runs": got.runs,
            "val_f1_sd": got.sd,
            "val_f1_se": got.se,
            "val_f1_pooled": pooled["f1_macro"],
            "protocol": protocol.to_dict(),
            "member_seeds": member_seeds(spec.seed, 0, protocol.repeats),
        }
        set_user_attrs(trial, attrs)
        return got.mean

    @property
    def stacked(self) -> StackedTrainer:
        """This thread's stacked trainer (the members after a repeated trial's first)."""
        if not hasattr(self._local, "stacked"):
            self._local.stacked = StackedTrainer()
        return self._local.stacked  # type: ignore[no-any-return]

    def _release(self) -> None:
        # Free the trial's Keras state so memory stays flat over a long study; the head
        # trainer's few compiled models stay (clearing the session would rebuild them per trial)
        import gc

        import keras

        self.cache.release_model()
        if not self.config.use_cache:
            keras.backend.clear_session()
        gc.collect()
