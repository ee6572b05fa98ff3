"""The trial's pipeline on cached features, which the objective and finalize both run.

A trial's parameters are parsed once into a :class:`~clothopt.trial_spec.TrialSpec`:
:func:`head_inputs` assembles the features the spec names (backbone, sizes concatenated,
flipped copies and augmentation views for training, a flipped view for test-time
augmentation) and :func:`train_spec` trains the spec's head on them (the paper's
``Dense(num_classes)`` unless the space varies more) with a
:class:`~clothopt.model.head.HeadTrainer`; :func:`batch_order` is the order every path visits
the training examples in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clothopt.model.backbones import get_backbone
from clothopt.model.head import HeadResult, HeadTrainer
from clothopt.trial_spec import TrialSpec

if TYPE_CHECKING:
    from clothopt.config import StudyConfig
    from clothopt.data import Dataset
    from clothopt.features import FeatureCache

__all__ = ["EpochCallback", "HeadInput", "batch_order", "head_inputs", "train_spec"]

EpochCallback = Callable[[int, float], None]  # (epoch, validation macro-F1)


def batch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The order in which an epoch visits the training examples (shared by both paths)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass(frozen=True)
class HeadInput:
    """One split's features as a head sees them for a trial's specification."""

    x: np.ndarray  # blocks of the N examples' rows: plain, (flip/tta) mirrored, (train) views
    y: np.ndarray  # labels of the rows of x (training) or of the N examples (views > 1)
    views: int  # stacked views of the same N examples whose logits are averaged (TTA)
    extract_seconds: float  # what computing the features not yet cached cost now
    cached: bool  # every entry was already in the cache
    base_params: int  # parameters of the frozen base
    blocks: int = 1  # blocks of N rows in x (a training split's: plain + flip + aug views)

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
    extra rows (plain rows first, labels repeated), then with ``aug_views`` N the features of
    its augmentation views 1..N as N more blocks (:mod:`clothopt.augment`); with ``tta`` any
    other split gets the mirrored ones as a second view (plain first) whose logits are averaged
    with the plain one's, and never augmentation views. Mirroring is that of
    :class:`~clothopt.features.FeatureKey`. The paper's parameters give the cached matrix as
    is. ``config`` gives the extraction settings (weights, seed, resize).
    """
    backbone = get_backbone(spec.backbone)
    weights, seed, resize = config.weights, config.seed, config.resize
    out: dict[str, HeadInput] = {}
    for name in splits:
        split = dataset[name]
        training = name in train_splits
        mirrored = spec.flip if training else spec.tta
        # (flip, view) of each block: plain, mirrored, then the views (training rows only)
        kinds = [(False, 0), *([(True, 0)] if mirrored else [])]
        kinds += [(False, v) for v in range(1, spec.aug_views + 1)] if training else []
        blocks, labels, seconds, cached, base = [], None, 0.0, True, 0
        for flip, view in kinds:
            feats = [
                cache.get(backbone, weights, seed, size, resize, split, flip=flip, view=view)
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
