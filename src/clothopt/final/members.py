"""What finalize trains for a robust study: an :class:`Ensemble` (one configuration's members,
as its trials trained them) and a :class:`Blend` (several raced configurations' ensembles,
weighed). Data and the arithmetic on it only; the training is :mod:`clothopt.final.training`
and :mod:`clothopt.final.blend`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clothopt.errors import InvalidArgument

if TYPE_CHECKING:
    from clothopt.model.compose import Head
    from clothopt.model.head import HeadResult
    from clothopt.trial_spec import TrialSpec

__all__ = ["Blend", "Ensemble"]


@dataclass
class Ensemble:
    """The heads of a configuration estimated by folds and/or repeats, trained as the search
    trained them: member ``r * K + k`` is repeat r's seed on fold k (K = 1 without folds)."""

    folds: int  # K (0: the given split)
    repeats: int  # R
    results: list[HeadResult]
    heads: list[Head]
    test_probabilities: np.ndarray  # the cached-feature ensemble's, (N test, C)
    member_f1: list[float]  # each member's validation (repeats) or out-of-fold macro-F1
    pooled_f1: float  # macro-F1 of the pooled predictions (out-of-fold, or on validation)
    # the pooled predictions: each scored example's probabilities averaged over the members
    # that held it out (N, C), its label, and the fold that held it out (-1: every member)
    pooled_probabilities: np.ndarray
    pooled_labels: np.ndarray
    pooled_fold: np.ndarray

    @property
    def train_seconds(self) -> float:
        return sum(r.train_seconds for r in self.results)


@dataclass
class Blend:
    """Several raced configurations in one shipped model: each one's members (their
    :class:`Ensemble`, trained as its trials trained), weighed by how many times ensemble
    selection (:func:`clothopt.selection.ensemble_selection`) picked it on the members'
    out-of-fold probabilities. Candidates picked 0 times are trained but not shipped."""

    trials: list[int]  # the candidates, best raced first
    specs: list[TrialSpec]
    ensembles: list[Ensemble]
    counts: list[int]

    @property
    def shipped(self) -> list[int]:
        """The candidates in the model (picked at least once), in candidate order."""
        return [i for i, c in enumerate(self.counts) if c > 0]

    @property
    def weights(self) -> list[float]:
        total = sum(self.counts)
        return [c / total for c in self.counts]

    @property
    def main(self) -> int:
        """The candidate with the largest weight (ties: the better raced): the model's own
        features (its ``pool`` layer, the detector) are its."""
        return max(range(len(self.counts)), key=lambda i: (self.counts[i], -i))

    def probabilities(self, which: str) -> np.ndarray:
        """The blend's probabilities: ``"pooled"`` (out of fold) or ``"test"``."""

        if which not in ("pooled", "test"):
            raise InvalidArgument(f"a blend has pooled or test probabilities, not {which!r}")

        def of(e: Ensemble) -> np.ndarray:
            return e.pooled_probabilities if which == "pooled" else e.test_probabilities

        return sum(w * of(e) for w, e in zip(self.weights, self.ensembles, strict=True) if w)

    def pooled_f1(self) -> tuple[float, list[float]]:
        """The blend's out-of-fold macro-F1, and per fold (the first repeat's folds)."""
        from clothopt.metrics import macro_f1

        first = self.ensembles[self.main]
        y, fold = first.pooled_labels, first.pooled_fold
        pooled = self.probabilities("pooled")
        pred, c = np.argmax(pooled, axis=1), pooled.shape[1]
        per_fold = [macro_f1(y[fold == k], pred[fold == k], c) for k in sorted(set(fold) - {-1})]
        return macro_f1(y, pred, c), per_fold

    def heads(self, main: TrialSpec) -> list[Head]:
        """The shipped members as :func:`~clothopt.model.compose.compose` takes them: each
        with its configuration's sizes and TTA (None for the main's: the model's own) and its
        share (its configuration's weight over its members)."""
        import dataclasses

        out = []
        for i in self.shipped:
            spec, members = self.specs[i], self.ensembles[i].heads
            own = spec.image_sizes != main.image_sizes or spec.tta != main.tta
            for h in members:
                out.append(
                    dataclasses.replace(
                        h,
                        sizes=tuple(spec.image_sizes) if own else None,
                        tta=spec.tta if own else None,
                        share=self.weights[i] / len(members),
                    )
                )
        return out

    def table(self) -> list[dict[str, object]]:
        """report.json's ``blend.rows``: each candidate's trial, parameters, weight and its
        own out-of-fold macro-F1."""
        return [
            {
                "trial": t,
                "params": spec.to_params(),
                "weight": w,
                "members": len(e.heads),
                "pooled_oof_f1_macro": e.pooled_f1,
            }
            for t, spec, e, w in zip(
                self.trials, self.specs, self.ensembles, self.weights, strict=True
            )
        ]
