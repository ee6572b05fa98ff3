"""Finalize's step 2: the final model trained, as the search trained the chosen trial.

:func:`train` runs the trial's own pipeline (:mod:`clothopt.pipeline`) on the train split for
the final epochs; a space that sets ``folds`` or ``repeats`` gets the members its trials train
instead (:func:`train_ensemble`, through :mod:`clothopt.protocol`), whose average the exported
model holds. Then the optional fine-tuning and the "not clothing" detector.
A blend of several raced configurations is trained by :mod:`clothopt.final.blend`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clothopt.errors import InvalidArgument
from clothopt.final.fine_tune import FineTuned, FineTuning
from clothopt.final.members import Blend, Ensemble
from clothopt.final.progress import say

if TYPE_CHECKING:
    from clothopt.config import StudyConfig
    from clothopt.data import Dataset
    from clothopt.features import FeatureCache
    from clothopt.final.ood import Detector
    from clothopt.model.compose import Head
    from clothopt.model.head import HeadResult
    from clothopt.pipeline import HeadInput
    from clothopt.trial_spec import TrialSpec

__all__ = ["Trained", "cached_detector", "train", "train_ensemble"]


@dataclass
class Trained:
    """What :func:`train` made: the head (and the tuned network), the detector, and the
    features the head saw."""

    spec: TrialSpec
    classes: list[str]
    inputs: dict[str, HeadInput]  # train, validation, test as the trial's pipeline builds them
    head: HeadResult
    model_head: Head  # the trained head as compose() puts it on the base
    tuned: FineTuned | None
    detector: Detector
    extract_seconds: float
    ensemble: Ensemble | None = None  # when the space sets folds or repeats
    blend: Blend | None = None  # several configurations (``spec`` and ``ensemble``: the main)

    @property
    def reference(self) -> str:
        """What the saved model must agree with."""
        if self.blend is not None:
            b = self.blend
            return (
                f"cached-feature blend of {len(b.shipped)} configurations ({len(self.heads)} heads)"
            )
        if self.ensemble is not None:
            return f"cached-feature ensemble of {len(self.ensemble.heads)} heads"
        return "cached-feature head" if self.tuned is None else "fine-tuned training model"

    @property
    def heads(self) -> list[Head]:
        """The heads the exported model averages (one for a single fit)."""
        if self.blend is not None:
            return self.blend.heads(self.spec)
        return [self.model_head] if self.ensemble is None else self.ensemble.heads

    @property
    def results(self) -> list[HeadResult]:
        """Every trained member's result (the one head of a single fit)."""
        if self.blend is not None:
            return [r for i in self.blend.shipped for r in self.blend.ensembles[i].results]
        return [self.head] if self.ensemble is None else self.ensemble.results

    def logits(self, split: str) -> np.ndarray:
        """The training path's own logits of ``split`` (views averaged), as the exported model
        computes them: the head on cached features, or the fine-tuned training model (an
        ensemble: the log of its averaged probabilities on the test split)."""
        from clothopt.model.head import average_views, head_logits, normalize_features

        if self.ensemble is not None:
            if split != "test":
                raise InvalidArgument("an ensemble's cached path is kept for the test split")
            test = self.ensemble.test_probabilities
            if self.blend is not None:
                test = self.blend.probabilities("test")
            return np.log(np.maximum(test, 1e-30))
        if self.tuned is not None:
            return self.tuned.test_logits if split == "test" else self.tuned.val_logits
        x_train = np.asarray(self.inputs["train"].x, np.float32)
        x = normalize_features(x_train, self.inputs[split].x, self.spec.head.normalize)[1]
        return average_views(head_logits(self.head.weights, x), self.inputs[split].views)


def train(
    spec: TrialSpec,
    config: StudyConfig,
    dataset: Dataset,
    cache: FeatureCache,
    tuning: FineTuning | None = None,
    progress: bool = False,
) -> Trained:
    """The final model: the trial's pipeline on the train split (validation, plain images,
    scored after each epoch), then the optional fine-tuning, then the detector (fitted on the
    train split's plain pooled features, the tuned base's when fine-tuned; its threshold
    accepting 95% of validation)."""
    from clothopt.final.rejection import fit_shipped_detector
    from clothopt.model.compose import Head
    from clothopt.model.head import HeadTrainer, feature_statistics
    from clothopt.pipeline import head_inputs, train_spec

    classes = list(dataset.classes)
    # sizes concatenated; with flip the train rows of the mirrored images follow the plain ones,
    # with tta validation and test carry the mirrored images as a second view
    inputs = head_inputs(cache, dataset, config, spec, ("train", "validation", "test"))
    cache.release_model()
    say(progress, f"training the head for {spec.head.epochs} epochs ({spec.to_params()})")
    val_plain = inputs["validation"].plain()
    ensemble = None
    if not config.space.single_fit:
        ensemble = train_ensemble(
            spec, config, dataset, cache, inputs, config.space.repeats, config.space.folds,
            progress,
        )  # fmt: skip
        head, model_head = ensemble.results[0], ensemble.heads[0]
    else:
        head = train_spec(
            spec, {"train": inputs["train"], "validation": val_plain}, classes, HeadTrainer(1)
        )
        mean = std = None
        if spec.head.normalize == "standardize":
            mean, std = feature_statistics(np.asarray(inputs["train"].x, np.float32))
        model_head = Head.of(spec.head, len(classes), weights=head.weights, mean=mean, std=std)
    tuned = None
    if tuning is not None and tuning.layers:
        tuned = tuning.run(spec, config, dataset, model_head, lambda m: say(progress, m))
    say(progress, "fitting the not-clothing detector on the train features")
    if tuned is None:
        detector = cached_detector(inputs)
    else:
        detector = fit_shipped_detector(tuned.train_features, tuned.val_features)
    return Trained(
        spec=spec,
        classes=classes,
        inputs=inputs,
        head=head,
        model_head=model_head,
        tuned=tuned,
        detector=detector,
        extract_seconds=sum(f.extract_seconds for f in inputs.values()),
        ensemble=ensemble,
    )


def cached_detector(inputs: Mapping[str, HeadInput]) -> Detector:
    """The shipped "not clothing" detector on cached features: fitted on the train split's
    plain pooled features, its threshold set on validation's."""
    from clothopt.final.rejection import fit_shipped_detector

    train_plain, val_plain = inputs["train"].plain(), inputs["validation"].plain()
    return fit_shipped_detector(np.asarray(train_plain.x, np.float32), val_plain.x)


def _probabilities(
    weights: Sequence[np.ndarray], how: str, x_train: np.ndarray, scored: HeadInput
) -> np.ndarray:
    """A member's class probabilities of ``scored`` on cached features (normalised with its
    own training rows' statistics, TTA views' logits averaged), as the exported model does."""
    from clothopt.model.head import average_views, head_logits, normalize_features

    x = normalize_features(x_train, np.asarray(scored.x, np.float32), how)[1]
    logits = average_views(head_logits(weights, x), scored.views).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def train_ensemble(
    spec: TrialSpec,
    config: StudyConfig,
    dataset: Dataset,
    cache: FeatureCache,
    inputs: Mapping[str, HeadInput],
    repeats: int,
    folds: int,
    progress: bool = False,
) -> Ensemble:
    """The members the objective trains for ``spec`` — the objective's own pool layout, fold
    split (from the study seed) and seeds (:func:`~clothopt.protocol.protocol_members`) —
    for the final epochs, trained together as one stacked model
    (:class:`~clothopt.model.stacked.StackedTrainer`: each member equals its fit alone within
    float tolerance, at about the arithmetic's price)."""
    from clothopt.metrics import macro_f1
    from clothopt.model.compose import Head
    from clothopt.model.head import feature_statistics
    from clothopt.model.stacked import StackedTrainer
    from clothopt.pipeline import batch_order
    from clothopt.protocol import Protocol, protocol_inputs, protocol_members

    classes = list(dataset.classes)
    protocol = Protocol(repeats, folds)
    layouts = protocol_inputs(cache, dataset, config, spec, protocol)
    train, scored, members = protocol_members(spec, layouts, protocol, config.seed, 0)
    say(progress, f"training {len(members)} heads as one stacked model ({spec.to_params()})")
    fit = StackedTrainer().train(
        train.x, train.y, scored.x, scored.y, classes, spec.head, members, batch_order,
        val_views=scored.views,
    )  # fmt: skip
    results, heads, member_f1 = [], [], []
    test = np.zeros((inputs["test"].examples, len(classes)))
    pooled = np.zeros((scored.examples, len(classes)))
    times = np.zeros(scored.examples)
    fold = np.full(scored.examples, -1)
    how = spec.head.normalize
    for index, (member, result) in enumerate(zip(members, fit.members, strict=True)):
        result.train_seconds = fit.train_seconds / len(members)  # a share of the one fit
        rows = member.train_rows
        x_train = np.asarray(train.x if rows is None else train.x[rows], np.float32)
        result.total_params = train.base_params + result.trainable_params
        mean = std = None
        if how == "standardize":
            mean, std = feature_statistics(x_train)
        heads.append(Head.of(spec.head, len(classes), weights=result.weights, mean=mean, std=std))
        results.append(result)
        member_f1.append(float(result.val_metrics["f1_macro"]))
        test += _probabilities(result.weights, how, x_train, inputs["test"])
        held_out = (
            np.arange(scored.examples) if member.val_examples is None else member.val_examples
        )
        pooled[held_out] += _probabilities(result.weights, how, x_train, scored.take(held_out))
        times[held_out] += 1
        if member.val_examples is not None:
            fold[held_out] = index % max(1, folds)
    y_pool = np.asarray(scored.y)[: scored.examples]
    pooled_f1 = macro_f1(y_pool, np.argmax(pooled, axis=1), len(classes))
    return Ensemble(
        folds=folds,
        repeats=repeats,
        results=results,
        heads=heads,
        test_probabilities=test / len(heads),
        member_f1=member_f1,
        pooled_f1=float(pooled_f1),
        pooled_probabilities=pooled / np.maximum(times, 1)[:, None],
        pooled_labels=y_pool,
        pooled_fold=fold,
    )
