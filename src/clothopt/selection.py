"""Selection that survives noise: race a finished study's best trials on fresh seeds.

A search keeps the best of many noisy draws, so its best value overstates its configuration
(the winner's curse) and which configuration wins depends on the draw. :func:`race`
re-evaluates the top N trials with ``repeats`` seeds none of them used, under the study's own
protocol (the same folds, from the study seed), and picks by the re-evaluated mean alone: the
search values that chose the candidates are not mixed in, so the new mean is an unbiased
estimate of each candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.errors import InvalidArgument, NotFound
from clothopt.logging import get_logger
from clothopt.model.head import HeadTrainer
from clothopt.model.stacked import StackedTrainer
from clothopt.protocol import Protocol, evaluate, protocol_inputs
from clothopt.trial_spec import TrialSpec

if TYPE_CHECKING:
    import optuna

    from clothopt.config import StudyConfig
    from clothopt.data import Dataset
    from clothopt.features import FeatureCache

__all__ = ["Race", "RaceRow", "ensemble_selection", "race"]

logger = get_logger(__name__)


@dataclass(frozen=True)
class RaceRow:
    """One candidate: its trial, parameters (``k=v`` joined), search value, and the
    re-evaluation's per-member scores, mean, sample sd, count and rank (1 = picked)."""

    trial: int
    params: str
    value: float
    mean: float
    sd: float
    n: int
    rank: int
    runs: tuple[float, ...]


@dataclass(frozen=True)
class Race:
    """The selection table, best re-evaluated mean first, and the trial it picks."""

    rows: tuple[RaceRow, ...]
    protocol: dict[str, int]  # what each re-evaluation ran: {"repeats": R', "folds": K}

    @property
    def pick(self) -> int:
        """The trial number with the best re-evaluated mean."""
        return self.rows[0].trial

    def to_dict(self) -> dict[str, Any]:
        """As report.json and the dashboard hold it."""
        return {
            "pick": self.pick,
            "protocol": dict(self.protocol),
            "rows": [asdict(r) | {"runs": list(r.runs)} for r in self.rows],
        }


def _summary(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _candidates(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
    import optuna

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None
    ]
    if not done:
        raise NotFound(f"study {study.study_name!r} has no complete trial to select from")
    return sorted(done, key=lambda t: (-float(t.value or 0.0), t.number))[:top]


def race(
    study: optuna.Study,
    config: StudyConfig,
    dataset: Dataset,
    cache: FeatureCache,
    *,
    top: int = 5,
    repeats: int = 5,
    trainers: tuple[HeadTrainer, StackedTrainer] | None = None,
) -> Race:
    """Re-evaluate the ``top`` complete trials of ``study`` (by value; fewer when it has fewer)
    with ``repeats`` fresh seeds each, under ``config``'s protocol (its folds, from the study
    seed; seeds past the trial's own ``repeats``), and rank them by the new mean (ties: the
    better search value, then the lower trial number). Features come from ``cache`` as the
    trials had them. Trials needing the end-to-end path (``--no-cache``) are not raced."""
    if top < 1 or repeats < 1:
        raise InvalidArgument(f"race: top and repeats must be >= 1 (got {top}, {repeats})")
    if not config.use_cache:
        raise InvalidArgument("race: the study trains end to end (--no-cache); nothing to race")
    space = config.space
    protocol = Protocol(repeats, space.folds)
    trainers = trainers or (HeadTrainer(), StackedTrainer())
    classes = dataset["train"].classes
    scored: list[tuple[float, float, int, str, Sequence[float], float]] = []
    for t in _candidates(study, top):
        spec = TrialSpec.of(t.params, config, where=f"trial {t.number}")
        inputs = protocol_inputs(cache, dataset, config, spec, protocol)
        got = evaluate(spec, inputs, classes, protocol, config.seed, trainers, start=space.repeats)
        logger.info(
            "race: trial %d search %.4f, re-evaluated %.4f ± %.4f (n=%d)",
            t.number, t.value, got.mean, got.sd, len(got.runs),
        )  # fmt: skip
        scored.append((got.mean, float(t.value or 0.0), t.number, _summary(t.params),
                       got.runs, got.sd))  # fmt: skip
    scored.sort(key=lambda s: (-s[0], -s[1], s[2]))
    rows = tuple(
        RaceRow(number, params, value, mean, sd, len(runs), rank, tuple(runs))
        for rank, (mean, value, number, params, runs, sd) in enumerate(scored, start=1)
    )
    return Race(rows, protocol.to_dict())


def ensemble_selection(
    probabilities: Sequence[np.ndarray], y: np.ndarray, rounds: int = 20
) -> list[int]:
    """How many times each candidate enters the blend: Caruana et al. (2004)'s forward
    selection with replacement. Each round adds the candidate whose addition gives the running
    sum of ``probabilities`` (each ``(N, C)``, out of fold, of the same N examples) the best
    macro-F1 against ``y`` (ties: the earlier candidate, i.e. the better raced); the blend is
    the first round's prefix with the best score, so a candidate that helps nothing is left
    out and one candidate alone is a possible answer. Counts / their sum are the weights."""
    from clothopt.metrics import macro_f1

    if not probabilities or rounds < 1:
        raise InvalidArgument(f"ensemble selection needs candidates and rounds >= 1 ({rounds})")
    shape = np.shape(probabilities[0])
    if any(np.shape(p) != shape for p in probabilities) or shape[0] != len(y):
        raise InvalidArgument("ensemble selection: every candidate scores the same examples")
    classes = shape[1]
    total = np.zeros(shape, np.float64)
    counts = [0] * len(probabilities)
    best, best_counts = -1.0, list(counts)
    for _ in range(rounds):
        scores = [macro_f1(y, np.argmax(total + p, axis=1), classes) for p in probabilities]
        pick = int(np.argmax(scores))  # the first of equal scores
        total += probabilities[pick]
        counts[pick] += 1
        if scores[pick] > best:
            best, best_counts = float(scores[pick]), list(counts)
    return best_counts
