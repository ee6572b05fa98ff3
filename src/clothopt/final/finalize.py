"""``clothopt study finalize``: the paper's final training, a test report and an exported model.

Four steps, each one function:

1. :func:`select` picks the best trial (or one named) and parses its parameters into the
   :class:`~clothopt.trial_spec.TrialSpec` every trial has.
2. :func:`~clothopt.final.training.train` runs the trial's own pipeline
   (``clothopt.pipeline.head_inputs`` and ``train_spec``, as the objective calls them) on the
   train split for the final epochs: the paper's ``Dense(10)`` for a paper trial, bit for bit
   as the search trained it; for a wide trial its sizes, flip and head. A space that sets
   ``folds`` K >= 2 or ``repeats`` R > 1 gets the members its trials train instead
   (:func:`~clothopt.final.training.train_ensemble`: the K fold heads on train + validation
   and/or the R seed heads). Then, optionally, fine-tuning
   (:mod:`.fine_tune`, single fits only) and the "not clothing" detector (:mod:`.rejection`).
3. :func:`export` composes one Keras model that takes raw images
   (:func:`clothopt.model.compose.compose`, as every model is; ``tta`` averages the logits of
   the image and its flip inside it; an ensemble averages its members' probabilities inside
   it) and saves it.
4. :func:`score` reloads the saved model from its file and scores the test split, which no
   trial saw: the figures in ``report.json`` are the file's own. Beside the paper's figures
   (precision, recall, F1, parameters, seconds) the report holds what the paper lacked: a 95%
   bootstrap interval of the test macro-F1, and ``estimate``: what the search's protocol
   predicted for this model (:func:`clothopt.final.scoring.estimate_section`).

What the folder holds and how it is swapped into place: :mod:`clothopt.final.store`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.errors import InvalidArgument, NotFound
from clothopt.final.blend import BLEND_ROUNDS, blend_count, train_blend
from clothopt.final.fine_tune import DEFAULT_EPOCHS as FINE_TUNE_EPOCHS
from clothopt.final.fine_tune import DEFAULT_LEARNING_RATE as FINE_TUNE_LR
from clothopt.final.fine_tune import FineTuning
from clothopt.final.progress import say
from clothopt.final.scoring import confusion_figure as _confusion_figure
from clothopt.final.store import (
    MODEL_FILE,
    REPORT_FILE,
    check_replaceable,
    final_dir,
    make_staging,
    publish,
    set_final_attr,
    write_report,
)
from clothopt.final.training import Trained, train
from clothopt.trial_spec import TrialSpec, check_value

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from clothopt.config import StudyConfig
    from clothopt.data import Dataset


__all__ = [
    "BLEND_ROUNDS",
    "DEFAULT_EPOCHS",
    "DEFAULT_RESAMPLES",
    "FINE_TUNE_EPOCHS",
    "FINE_TUNE_LR",
    "MIN_RESAMPLES",
    "FineTuning",
    "export",
    "finalize",
    "pick_trial",
    "score",
    "search_seconds",
    "select",
]

DEFAULT_EPOCHS = 5  # the paper's final training
DEFAULT_RESAMPLES = 2000
MIN_RESAMPLES = 1000

RACE_TOP = 5  # a robust study's best trials re-evaluated before the pick
RACE_REPEATS = 3  # fresh seeds each (x the study's folds)


# --------------------------------------------------------------------------- 1. select


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number``, or the best COMPLETE one (the lowest number among equal values)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if number is None:
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if not done:
            raise NotFound(
                f"study {study.study_name!r} has no complete trial to finalize "
                f"(run `clothopt study optimize {study.study_name}` first)"
            )
        return max(done, key=lambda t: (t.value, -t.number))
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise NotFound(
            f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1})"
        )
    if found.state != TrialState.COMPLETE:
        raise InvalidArgument(
            f"trial {number} of study {study.study_name!r} is {found.state.name}, not COMPLETE"
        )
    return found


def select(
    study: optuna.Study, config: StudyConfig, number: int | None, epochs: int | None = None
) -> tuple[FrozenTrial, TrialSpec]:
    """The trial to finalize (``number``, or the best) and its specification, trained for
    ``epochs``: by default the trial's own when its space searched them (its schedule was
    tuned for them), else 5 (the paper's). The seed stays the trial's."""
    chosen = pick_trial(study, number)
    spec = TrialSpec.from_params(
        chosen.params,
        backbone=config.backbone,
        study_seed=config.seed,
        epochs=DEFAULT_EPOCHS,
        where=f"trial {chosen.number}",
    )
    return chosen, spec if epochs is None else spec.with_epochs(epochs)


def search_seconds(trials: Sequence[FrozenTrial]) -> tuple[float, float, int]:
    """The validation search's seconds: the sum over ``trials`` of their own extract + train
    seconds (those that trained), first start to last end, and how many trained."""
    trained = [t for t in trials if "train_seconds" in t.user_attrs]
    total = sum(
        float(t.user_attrs.get("extract_seconds", 0.0)) + float(t.user_attrs["train_seconds"])
        for t in trained
    )
    ends = [t for t in trials if t.datetime_start and t.datetime_complete]
    wall = 0.0
    if ends:
        first = min(t.datetime_start for t in ends)  # type: ignore[type-var]
        last = max(t.datetime_complete for t in ends)  # type: ignore[type-var]
        wall = (last - first).total_seconds()  # type: ignore[operator]
    return total, wall, len(trained)


# --------------------------------------------------------------------------- 3. export


def export(trained: Trained, config: StudyConfig, folder: Path) -> float:
    """Compose the model that takes raw images (the trained head, the detector's outputs, the
    tuned base when fine-tuned) and save it with its classes into ``folder``; the seconds."""
    from clothopt.final.rejection import detector_outputs
    from clothopt.model.backbones import get_backbone
    from clothopt.model.compose import compose
    from clothopt.predict import CLASSES_FILE

    start = time.perf_counter()
    sizes = trained.spec.image_sizes
    exported = compose(
        get_backbone(trained.spec.backbone),
        sizes[0] if len(sizes) == 1 else list(sizes),
        config.weights,
        config.seed,
        raw_input=True,
        head=trained.model_head if trained.ensemble is None else trained.heads,
        softmax=True,
        tta=trained.spec.tta,
        extra_outputs=detector_outputs(trained.detector),
    )
    if trained.tuned is not None:
        trained.tuned.into(exported)
    exported.save(folder / MODEL_FILE)
    (folder / CLASSES_FILE).write_text(json.dumps(trained.classes, indent=2) + "\n")
    return time.perf_counter() - start


# --------------------------------------------------------------------------- 4. score


def _validation_tta_f1(trained: Trained, dataset: Dataset) -> float | None:
    from clothopt.metrics import classification_metrics

    if not trained.spec.tta or trained.ensemble is not None:
        return None  # an ensemble's validation figures are its estimate's
    pred = np.argmax(trained.logits("validation"), axis=1)
    return classification_metrics(dataset["validation"].labels, pred, trained.classes)["f1_macro"]


def score(
    trained: Trained,
    chosen: FrozenTrial,
    study: optuna.Study,
    config: StudyConfig,
    dataset: Dataset,
    folder: Path,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    bootstrap_seed: int = 0,
    not_clothing: Path | None = None,
    export_seconds: float = 0.0,
    selection: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score the test split with the model saved in ``folder`` (reloaded from its file) and
    write the confusion figure there; returns ``report.json``'s content. ``selection`` (the
    racing table, when the trial was picked by one) is written through as is."""
    from clothopt import study as study_mod
    from clothopt.final.rejection import ood_section
    from clothopt.final.scoring import (
        agreement,
        estimate_section,
        head_section,
        labelled_report,
        model_input,
        score_saved,
    )
    from clothopt.model.backbones import get_backbone
    from clothopt.predict import CLASSES_FILE

    spec, head, classes, test = trained.spec, trained.head, trained.classes, dataset["test"]
    say(progress, f"scoring the saved model on the {len(test)} test images")
    got = score_saved(folder / MODEL_FILE, test.paths, config.threads)
    y_test = test.labels
    scored = labelled_report(y_test, got.y_pred, classes, resamples=resamples, seed=bootstrap_seed)
    members = trained.results
    trainable = int(sum(w.size for m in members for w in m.weights))
    if trained.tuned is not None:
        trainable = trained.tuned.trainable_params
    search, search_wall, search_trials = search_seconds(study.get_trials(deepcopy=False))
    backbone = get_backbone(spec.backbone).name
    report: dict[str, Any] = {
        "study": config.name,
        "backbone": backbone,
        "weights": config.weights,
        "trial": chosen.number,
        "trial_validation_f1_macro": chosen.value,
        "params": spec.to_params(),
        "epochs": spec.head.epochs,
        "seed": spec.seed,
        "classes": classes,
        "test": scored["test"],
        "test_images": len(test),
        "f1_macro_ci95": scored["f1_macro_ci95"],
        "bootstrap": scored["bootstrap"],
        "test_labels": y_test.tolist(),
        "test_predictions": got.y_pred.tolist(),
        "cached_path_agreement": agreement(
            trained.logits("test"), y_test, got.y_pred, classes, trained.reference
        ),
        # an ensemble's: the members' mean after each epoch
        "final_validation_f1_per_epoch": _mean_curve([m.epoch_f1 for m in members]),
        "final_loss_per_epoch": _mean_curve([m.epoch_loss for m in members]),
        "total_params": trained.inputs["train"].base_params + trainable,
        "trainable_params": trainable,
        "exported_model_params": int(got.model.count_params()),
        "search_seconds": round(search, 3),
        "search_wall_seconds": round(search_wall, 3),
        "search_trials": search_trials,
        "final_train_seconds": round(sum(m.train_seconds for m in members), 3),
        "final_extract_seconds": round(trained.extract_seconds, 3),
        "export_seconds": round(export_seconds, 3),
        "test_seconds": round(got.seconds, 3),
        "model": MODEL_FILE,
        "classes_file": CLASSES_FILE,
        "model_input": model_input(backbone, spec.image_sizes, spec.tta, trained.heads),
        "data": str(dataset.root.absolute()),
        "data_fingerprint": dataset.fingerprint,
        "versions": study_mod.versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ens, blend = trained.ensemble, trained.blend
    figures = None if ens is None else (ens.member_f1, ens.pooled_f1, ens.folds, ens.repeats)
    if blend is not None and ens is not None:
        pooled, per_fold = blend.pooled_f1()
        figures = (per_fold or [pooled], pooled, ens.folds, ens.repeats)
        report["blend"] = {
            "rounds": sum(blend.counts),
            "pooled_oof_f1_macro": pooled,
            "fold_f1_macro": per_fold,
            "rows": blend.table(),
        }
    report["estimate"] = estimate_section(
        chosen.value, scored["test"]["f1_macro"], figures, blend=blend is not None
    )
    report["selection"] = selection
    if not spec.is_paper:
        report["head"] = head_section(spec, _validation_tta_f1(trained, dataset))
    if trained.tuned is not None:
        report["fine_tune"] = trained.tuned.report(head.epoch_f1[-1])
    say(progress, "measuring the not-clothing detector with the saved model")
    report["ood"] = ood_section(
        got.model,
        trained.detector,
        list(dataset["validation"].paths),
        (got.scores, got.accepted),
        not_clothing,
        classes,
        config.threads,
    )
    metrics, (low, high) = scored["test"], scored["f1_macro_ci95"]
    title = (
        f"{config.name}: test confusion matrix, macro-F1 {metrics['f1_macro']:.4f} "
        f"(95% CI {low:.4f}-{high:.4f})"
    )
    report["figures"] = _confusion_figure(metrics["confusion_matrix"], classes, title, folder)
    return report


def _mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """Per epoch, the mean over members (one member: its own curve, unchanged)."""
    if len(curves) == 1:
        return list(curves[0])
    n = min(len(c) for c in curves)
    return [float(np.mean([c[i] for c in curves])) for i in range(n)]


# --------------------------------------------------------------------------- finalize


def _check_arguments(
    epochs: int | None, resamples: int, not_clothing: str | Path | None
) -> Path | None:
    """Refuse bad arguments before any work; the not-clothing folder (None: not measured)."""
    if epochs is not None:
        check_value("epochs", epochs, "--epochs")
    if resamples < MIN_RESAMPLES:
        raise InvalidArgument(f"--resamples must be at least {MIN_RESAMPLES}, not {resamples}")
    if not_clothing is None:
        return None
    folder = Path(not_clothing).expanduser()
    if not folder.is_dir():
        raise NotFound(f"--not-clothing {not_clothing}: no such folder")
    return folder


def _check_exportable(
    spec: TrialSpec, config: StudyConfig, number: int, tuning: FineTuning
) -> None:
    if config.resize != "nearest":
        raise InvalidArgument(
            f"study {config.name!r} resizes with {config.resize}: the exported model reproduces "
            "only PIL's nearest resize (the paper's)"
        )
    tuning.check(spec, f"trial {number}")
    if tuning.layers and not config.space.single_fit:
        raise InvalidArgument(
            f"study {config.name!r} ships an ensemble (folds or repeats): fine-tuning tunes one "
            "network, so --fine-tune needs a single-fit space"
        )


def finalize(
    name: str,
    storage: str | None = None,
    *,
    epochs: int | None = None,
    trial: int | None = None,
    data: str | None = None,
    cache_dir: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    bootstrap_seed: int = 0,
    not_clothing: str | Path | None = None,
    fine_tune: int = 0,
    fine_tune_epochs: int = FINE_TUNE_EPOCHS,
    fine_tune_lr: float = FINE_TUNE_LR,
    progress: bool = False,
    on_finalized: Callable[[optuna.Study, int, list[Path]], None] | None = None,
    race_top: int = RACE_TOP,
    race_repeats: int = RACE_REPEATS,
    blend: int | None = None,
    blend_rounds: int = BLEND_ROUNDS,
) -> dict[str, Any]:
    """Select, train, export, score; publishes the study's ``final`` folder and returns
    ``report.json``'s content.

    ``epochs``: of the final training; by default the trial's own ``epochs`` when its space
    searched them, else 5 (the paper's).

    The model ships a "not clothing" detector (:mod:`clothopt.final.rejection`);
    ``not_clothing`` is a folder of non-clothing photos its rejection is measured on (None: not
    measured).

    ``fine_tune``: after the head, unfreeze the base's top that many layers and train end to
    end for ``fine_tune_epochs`` at ``fine_tune_lr`` (:mod:`clothopt.final.fine_tune`); the
    export, detector and report then use the tuned network. 0: the frozen base (the paper's).

    A space with ``folds`` K >= 2 or ``repeats`` R > 1 ships the average of the K fold heads
    (or R seed heads, or both) inside the model
    (:func:`~clothopt.final.training.train_ensemble`); report.json's ``estimate`` says what
    the search's protocol predicts for it. Such a study's pick is raced
    (:func:`clothopt.selection.race`): its ``race_top`` best trials are re-evaluated with
    ``race_repeats`` fresh seeds of the same protocol and the best re-evaluated mean is
    finalized, its table in report.json's ``selection`` (0: pick by search value alone, as a
    single-fit study always does; ``trial`` given: no race).

    ``blend`` N >= 2 (None: the space's ``blend``, at most ``race_top``; 0: none): ship a
    blend of the race's N best configurations instead of the pick
    alone (:func:`~clothopt.final.training.train_blend`): each one's members are trained, and
    ensemble selection over ``blend_rounds`` rounds on their out-of-fold probabilities weighs
    them (one alone is a possible answer); report.json's ``blend`` holds the weights. Needs a
    raced pick (a space with folds or repeats, no ``trial``, ``race_top`` >= N).

    ``progress``: log each step at INFO (else at DEBUG) and show extraction progress bars.
    ``on_finalized(study, trial_number, files)`` gets the published files (report, figures,
    model, classes), e.g. to show them in optuna-dashboard.
    """
    from clothopt import study as study_mod
    from clothopt.engine import storage_of
    from clothopt.predict import CLASSES_FILE
    from clothopt.runs import open_run

    tuning = FineTuning(fine_tune, fine_tune_epochs, fine_tune_lr)
    not_clothing_dir = _check_arguments(epochs, resamples, not_clothing)
    if race_top < 0 or race_repeats < 1:
        raise InvalidArgument(
            f"racing needs top >= 0 and repeats >= 1 (got {race_top}, {race_repeats})"
        )
    if (blend is not None and blend < 0) or blend_rounds < 1:
        raise InvalidArgument(f"--blend must be >= 0 and its rounds >= 1 ({blend}, {blend_rounds})")
    st, config = study_mod.load(name, storage)
    blend = blend_count(blend, config, race_top, trial is not None or bool(fine_tune))
    dest = final_dir(storage, name)
    check_replaceable(dest)  # before the work, not only at the swap
    dataset, cache = open_run(config, data, cache_dir, progress, storage=storage_of(st))
    selection = None
    if trial is None and not config.space.single_fit and race_top > 0 and config.use_cache:
        from clothopt.selection import race

        say(progress, f"racing the top {race_top} trials with {race_repeats} fresh seeds each")
        raced = race(st, config, dataset, cache, top=race_top, repeats=race_repeats)
        trial, selection = raced.pick, raced.to_dict()
    if blend > 1 and selection is not None:
        trials = [int(row["trial"]) for row in selection["rows"][:blend]]
        specs = [select(st, config, t, epochs)[1] for t in trials]
        say(progress, f"blending the raced trials {trials} ({blend_rounds} rounds of selection)")
        trained = train_blend(trials, specs, config, dataset, cache, blend_rounds, progress)
        chosen = pick_trial(st, trained.blend.trials[trained.blend.main])  # type: ignore[union-attr]
        _check_exportable(trained.spec, config, chosen.number, tuning)
    else:
        chosen, spec = select(st, config, trial, epochs)
        _check_exportable(spec, config, chosen.number, tuning)
        say(progress, f"finalizing trial {chosen.number}")
        trained = train(spec, config, dataset, cache, tuning, progress)
    tmp = make_staging(dest)
    try:
        export_seconds = export(trained, config, tmp)
        report = score(
            trained,
            chosen,
            st,
            config,
            dataset,
            tmp,
            resamples=resamples,
            bootstrap_seed=bootstrap_seed,
            not_clothing=not_clothing_dir,
            export_seconds=export_seconds,
            selection=selection,
            progress=progress,
        )
        write_report(tmp, report)
        publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once swapped in
    test_f1, ci = report["test"]["f1_macro"], report["f1_macro_ci95"]
    set_final_attr(st, dest, report, test_f1, list(ci))
    if on_finalized is not None:
        files = [dest / REPORT_FILE, *(dest / f for f in report["figures"])]
        on_finalized(st, chosen.number, [*files, dest / MODEL_FILE, dest / CLASSES_FILE])
    return report
