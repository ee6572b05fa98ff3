"""A blend of raced configurations in the shipped model (finalize's ``--blend N``, a space's
``blend``): each candidate's members trained as its trials trained
(:func:`~clothopt.final.training.train_ensemble`), weighed by ensemble selection on their
out-of-fold probabilities (:func:`clothopt.selection.ensemble_selection`), and composed into
one model by the heads :meth:`~clothopt.final.members.Blend.heads` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from clothopt.errors import InvalidArgument
from clothopt.final.members import Blend
from clothopt.final.progress import say
from clothopt.final.training import Trained, cached_detector, train_ensemble

if TYPE_CHECKING:
    from clothopt.config import StudyConfig
    from clothopt.data import Dataset
    from clothopt.features import FeatureCache
    from clothopt.trial_spec import TrialSpec

__all__ = ["BLEND_ROUNDS", "blend_count", "train_blend"]

BLEND_ROUNDS = 20  # ensemble selection's rounds: weights in twentieths


def train_blend(
    trials: Sequence[int],
    specs: Sequence[TrialSpec],
    config: StudyConfig,
    dataset: Dataset,
    cache: FeatureCache,
    rounds: int,
    progress: bool = False,
) -> Trained:
    """Each candidate's members (:func:`train_ensemble`, as its trials trained), weighed by
    ensemble selection over ``rounds`` on their out-of-fold probabilities; the detector is
    fitted on the main candidate's train features, as :func:`train` fits a single one's."""
    from clothopt.pipeline import head_inputs
    from clothopt.selection import ensemble_selection

    space = config.space
    if space.single_fit:
        raise InvalidArgument(
            "a blend weighs its configurations out of fold: it needs a space with folds or repeats"
        )
    inputs, ensembles = [], []
    for t, spec in zip(trials, specs, strict=True):
        say(progress, f"blend candidate: trial {t}")
        got = head_inputs(cache, dataset, config, spec, ("train", "validation", "test"))
        cache.release_model()
        inputs.append(got)
        ensembles.append(
            train_ensemble(spec, config, dataset, cache, got, space.repeats, space.folds, progress)
        )
    labels = ensembles[0].pooled_labels
    counts = ensemble_selection([e.pooled_probabilities for e in ensembles], labels, rounds)
    blend = Blend(list(trials), list(specs), ensembles, counts)
    main = blend.main
    say(progress, f"blend: weights {dict(zip(trials, blend.weights, strict=True))}")
    say(progress, "fitting the not-clothing detector on the train features")
    return Trained(
        spec=specs[main],
        classes=list(dataset.classes),
        inputs=inputs[main],
        head=ensembles[main].results[0],
        model_head=ensembles[main].heads[0],
        tuned=None,
        detector=cached_detector(inputs[main]),
        extract_seconds=sum(f.extract_seconds for got in inputs for f in got.values()),
        ensemble=ensembles[main],
        blend=blend,
    )


def blend_count(asked: int | None, config: StudyConfig, race_top: int, one_network: bool) -> int:
    """How many raced configurations finalize blends (0: the pick alone): ``asked``, else the
    space's ``blend`` within the race (none when ``one_network``: a chosen trial, fine-tuning;
    or when nothing is raced). An asked blend that cannot be made is refused."""
    space = config.space
    if asked is None:
        n = min(space.blend, race_top)
        return 0 if one_network or not config.use_cache or n < 2 else n
    if asked < 2:
        return 0
    if one_network or race_top < asked:
        raise InvalidArgument(
            f"--blend {asked} blends the race's best configurations: it needs --race-top >= "
            f"{asked}, no --trial and no --fine-tune (--blend 0: the pick alone)"
        )
    if space.single_fit:
        raise InvalidArgument(
            f"study {config.name!r} trains single fits: --blend weighs configurations out of "
            "fold, so it needs a space with folds or repeats"
        )
    if not config.use_cache:
        raise InvalidArgument(f"study {config.name!r} trains end to end (--no-cache): no blend")
    return asked
