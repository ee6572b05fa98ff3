"""How a trial estimates its configuration: repeated, optionally cross-validated fits.

A :class:`Protocol` of R repeats x K folds makes :func:`evaluate` train a spec's head R x
(K | 1) times on the layouts :func:`protocol_inputs` builds (the pipeline's
:func:`~clothopt.pipeline.head_inputs`, and with folds train + validation pooled); the
objective scores a trial by it, selection races trials by it and finalize trains its members.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clothopt.errors import InvalidArgument
from clothopt.folds import fold_rows, stratified_folds
from clothopt.model.head import HeadResult, HeadTrainer
from clothopt.model.stacked import Member, StackedTrainer
from clothopt.pipeline import EpochCallback, HeadInput, batch_order, head_inputs
from clothopt.trial_spec import TrialSpec

if TYPE_CHECKING:
    from clothopt.config import StudyConfig
    from clothopt.data import Dataset
    from clothopt.features import FeatureCache

__all__ = [
    "Evaluation",
    "Protocol",
    "evaluate",
    "member_seeds",
    "protocol_inputs",
    "protocol_members",
    "train_member",
]


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
    """``spec`` trained ``protocol.members`` times. ``on_epoch`` is for a pruner watching the
    trial: given, the first member trains alone and ``on_epoch`` gets its curve (and may raise
    to prune the configuration there), then the rest train as one stacked model; None (no
    pruner, a race) every member trains in that one stacked fit, which pays the per-fit and
    per-step overhead once. ``inputs`` as :func:`head_inputs` gives them; with folds also
    ``train_views`` (the train split scored, with TTA) and ``validation_train`` (validation as
    training rows, with flip): see :func:`protocol_inputs`. ``start``: the first repeat's
    index (a re-evaluation passes the trial's repeats to draw new seeds)."""
    train, scored, members = protocol_members(spec, inputs, protocol, study_seed, start)
    solo, stacked = trainers
    results: list[HeadResult] = []
    seconds = 0.0
    if on_epoch is not None:
        first = train_member(solo, spec, train, scored, members[0], classes, on_epoch)
        results, seconds = [first], first.train_seconds
    if len(members) > len(results):
        rest = stacked.train(
            train.x, train.y, scored.x, scored.y, classes, spec.head, members[len(results):],
            batch_order, val_views=scored.views, reports=0,
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
