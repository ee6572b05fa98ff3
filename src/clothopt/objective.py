"""Trial objective: train the trial's head and score validation macro-F1.

A trial's parameters are parsed once into a :class:`~clothopt.trial_spec.TrialSpec`. The cached
path runs the trial's pipeline (:mod:`clothopt.pipeline`, which ``clothopt.final.finalize``
runs too), one fit or the repeated evaluation a space asks for (:mod:`clothopt.protocol`), with
one :class:`~clothopt.model.head.HeadTrainer` reused across trials. The end-to-end path
(:mod:`clothopt.end_to_end`) trains the whole paper model on images, as the paper did.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clothopt.data import Dataset, UnusableImage
from clothopt.end_to_end import train_end_to_end
from clothopt.engine.interrupts import raise_swallowed
from clothopt.engine.storage import set_user_attrs
from clothopt.errors import TrialFailed
from clothopt.metrics import classification_metrics
from clothopt.model.backbones import get_backbone
from clothopt.model.head import HeadResult, HeadTrainer
from clothopt.model.stacked import StackedTrainer
from clothopt.pipeline import EpochCallback, head_inputs, train_spec
from clothopt.protocol import Protocol, evaluate, member_seeds, protocol_inputs
from clothopt.trial_spec import TrialSpec

if TYPE_CHECKING:
    import optuna

    from clothopt.config import StudyConfig
    from clothopt.features import FeatureCache

__all__ = ["Objective"]


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


def _pruned(trial: optuna.Trial, config: StudyConfig) -> bool:
    """Whether a pruner watches ``trial`` (the study's configured one, or one its caller
    loaded the study with): then a repeated trial's first member trains alone, so the pruner
    can stop the configuration after it."""
    import optuna

    study = getattr(trial, "study", None)  # a FixedTrial has none
    pruner = getattr(study, "pruner", None)
    return config.pruner != "none" or (
        pruner is not None and not isinstance(pruner, optuna.pruners.NopPruner)
    )


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
            raise_swallowed()  # a safe point for a Ctrl-C a library swallowed
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
            if not cfg.space.single_fit:
                protocol = Protocol(cfg.space.repeats, cfg.space.folds)
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
        Member m's epoch e is reported at step m * E + e. With a pruner the first member
        trains alone and the pruner watches its epochs as they come (steps 0..E-1), then the
        others train as one stacked fit; without one every member is in that stacked fit and
        every curve is reported after it."""
        cfg = self.config
        watched = _pruned(trial, cfg)
        inputs = protocol_inputs(self.cache, self.dataset, cfg, spec, protocol)
        extract_seconds += sum(
            inputs[k].extract_seconds for k in ("train_views", "validation_train") if k in inputs
        )
        classes = self.dataset["train"].classes
        got = evaluate(
            spec, inputs, classes, protocol, cfg.seed, (self.trainer, self.stacked),
            on_epoch=on_epoch if watched else None,
        )  # fmt: skip
        epochs = spec.head.epochs
        for m, result in enumerate(got.results[1:] if watched else got.results, int(watched)):
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
        """This thread's stacked trainer (a repeated trial's members; with a pruner all
        but the first)."""
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
