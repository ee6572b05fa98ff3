"""``clothopt study finalize``: the paper's final training, a test report and an exported model.

The best trial's configuration (or one named) is trained again on the train
split's cached features, with :class:`~clothopt.model.head.HeadTrainer` and the head its
parameters describe (:meth:`HeadParams.from_params <clothopt.model.head.HeadParams.from_params>`:
the paper's ``Dense(10)`` for a paper trial, bit for bit as the search trained it), then exported
as one Keras model that takes raw images (built by :func:`clothopt.model.compose.compose`, as
every model is). A wide trial's features are built as the search built them: ``image_sizes``
concatenates the pooled features of each size in order, ``flip`` trains on the horizontally
flipped images' features too, ``tta`` averages the logits of the image and its flip (in the
cached-feature check and in the exported model). The test split, which no trial
saw, is scored by that model as saved, reloaded from its file: the figures in ``report.json``
are the file's own. Beside the paper's figures (precision, recall, F1, parameters, seconds) the
report holds what the paper lacked: a 95% bootstrap interval of the test macro-F1.

What the folder holds and how it is swapped into place: :mod:`clothopt.final.store`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.errors import UserError
from clothopt.final.fine_tune import DEFAULT_EPOCHS as FINE_TUNE_EPOCHS
from clothopt.final.fine_tune import DEFAULT_LEARNING_RATE as FINE_TUNE_LR
from clothopt.final.fine_tune import FineTuned
from clothopt.final.fine_tune import check as check_fine_tune
from clothopt.final.fine_tune import fine_tune as fine_tune_model
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
from clothopt.spaces import PAPER_PARAMS

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_RESAMPLES",
    "MIN_RESAMPLES",
    "finalize",
    "pick_trial",
    "search_seconds",
]

DEFAULT_EPOCHS = 5  # the paper's final training
DEFAULT_RESAMPLES = 2000
MIN_RESAMPLES = 1000


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"finalize: {message}", file=sys.stderr, flush=True)


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number``, or the best COMPLETE one (the lowest number among equal values)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if number is None:
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if not done:
            raise UserError(
                f"study {study.study_name!r} has no complete trial to finalize "
                f"(run `clothopt study optimize {study.study_name}` first)"
            )
        return max(done, key=lambda t: (t.value, -t.number))
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise UserError(
            f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1})"
        )
    if found.state != TrialState.COMPLETE:
        raise UserError(
            f"trial {number} of study {study.study_name!r} is {found.state.name}, not COMPLETE"
        )
    return found


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


# --------------------------------------------------------------------------- features


# --------------------------------------------------------------------------- figures


# --------------------------------------------------------------------------- the detector
# (kept apart from the retrain/export code: the hooks above are one line each)


def _not_clothing_dir(value: str | Path | bool | None) -> Path | None:
    from clothopt.final.rejection import default_not_clothing_dir

    if value is True:
        return default_not_clothing_dir()
    if value is None or value is False:
        return None
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise UserError(f"--not-clothing {value}: no such folder")
    return folder


def _shipped_detector(x_train: np.ndarray, x_val: np.ndarray, progress: bool) -> Any:
    """The detector the model ships: fitted on TRAIN features, 95% of VALIDATION accepted."""
    from clothopt.final.rejection import fit_shipped_detector

    _say(progress, "fitting the not-clothing detector on the train features")
    return fit_shipped_detector(x_train, x_val)


def _detector_outputs(detector: Any) -> Any:
    from clothopt.final.rejection import detector_outputs

    return detector_outputs(detector)


def _measure_rejection(
    model: Any,
    detector: Any,
    dataset: Any,
    test: tuple[np.ndarray, np.ndarray],
    not_clothing: Path | None,
    config: Any,
) -> dict[str, Any]:
    from clothopt.final.rejection import ood_section

    return ood_section(
        model,
        detector,
        list(dataset["validation"].paths),
        test,
        not_clothing,
        list(dataset.classes),
        config.threads,
    )


def _reference(tuned: FineTuned | None) -> str:
    return "cached-feature head" if tuned is None else "fine-tuned training model"


# --------------------------------------------------------------------------- finalize


def _model_input(backbone: str, sizes: Sequence[int], tta: bool) -> str:
    resized = " and ".join(f"{s}x{s}" for s in sizes)
    text = (
        f"raw RGB images (B, H, W, 3), 0..255, any H and W (one size per batch); "
        f"resized inside to {resized} as PIL NEAREST, then {backbone}'s preprocess_input"
    )
    if len(sizes) > 1:
        text += "; the sizes' pooled features concatenated in that order"
    if tta:
        text += "; logits averaged with those of the resized image flipped left-right"
    return text


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
    not_clothing: str | Path | bool | None = True,
    fine_tune: int = 0,
    fine_tune_epochs: int = FINE_TUNE_EPOCHS,
    fine_tune_lr: float = FINE_TUNE_LR,
    progress: bool = False,
    on_finalized: Callable[[optuna.Study, int, list[Path]], None] | None = None,
) -> dict[str, Any]:
    """Retrain, export, score the test split with the saved model; returns ``report.json``.

    ``epochs``: of the final training; by default the trial's own ``epochs`` when its space
    searched them, else 5 (the paper's).

    The model ships a "not clothing" detector (:mod:`clothopt.final.rejection`);
    ``not_clothing`` is the folder of non-clothing photos its rejection is measured on (True:
    ``../shared/datasets/not-clothing`` when it exists; None or False: not measured).

    ``fine_tune``: after the head, unfreeze the base's top that many layers and train end to
    end for ``fine_tune_epochs`` at ``fine_tune_lr`` (:mod:`clothopt.final.fine_tune`); the
    export, detector and report then use the tuned network. 0: the frozen base (the paper's).

    ``on_finalized(study, trial_number, files)`` gets the published files (report, figures,
    model, classes), e.g. to show them in optuna-dashboard.
    """
    from clothopt import study as study_mod
    from clothopt.final.scoring import labelled_report, score_set
    from clothopt.metrics import classification_metrics
    from clothopt.model.backbones import get_backbone
    from clothopt.model.compose import Head, compose
    from clothopt.model.head import (
        HeadParams,
        HeadTrainer,
        average_views,
        feature_statistics,
        head_logits,
        normalize_features,
    )
    from clothopt.objective import batch_order, head_inputs, trial_seed
    from clothopt.predict import CLASSES_FILE, load_classifier
    from clothopt.runs import open_run
    from clothopt.spaces import image_sizes

    if epochs is not None and not 1 <= epochs <= 1000:
        raise UserError(f"--epochs must be between 1 and 1000, not {epochs}")
    if resamples < MIN_RESAMPLES:
        raise UserError(f"--resamples must be at least {MIN_RESAMPLES}, not {resamples}")
    if fine_tune < 0:
        raise UserError(f"--fine-tune must be a number of layers, not {fine_tune}")
    not_clothing_dir = _not_clothing_dir(not_clothing)
    st, config = study_mod.load(name, storage)
    check_replaceable(final_dir(storage, name))  # before the work, not only at the swap
    chosen = pick_trial(st, trial)
    needed = [k for k in PAPER_PARAMS if k != "image_size" or "image_sizes" not in chosen.params]
    if missing := [k for k in needed if k not in chosen.params]:
        raise UserError(f"trial {chosen.number} has no {missing[0]} parameter")
    # the paper's three first (a paper trial's report as before), then what a wide trial adds
    params = {k: chosen.params[k] for k in PAPER_PARAMS if k in chosen.params}
    params |= {k: v for k, v in chosen.params.items() if k not in params}
    wide = set(params) != set(PAPER_PARAMS)
    # --epochs when given; else a trial that searched its epochs keeps them (its schedule was
    # tuned for them), and a paper trial gets the paper's 5
    epochs = epochs or int(params.get("epochs", DEFAULT_EPOCHS))
    head_params = HeadParams.from_params({**params, "epochs": epochs})
    sizes = list(image_sizes(params))
    flip, tta = bool(params.get("flip", False)), bool(params.get("tta", False))
    if config.resize != "nearest":
        raise UserError(
            f"study {name!r} resizes with {config.resize}: the exported model reproduces only "
            "PIL's nearest resize (the paper's)"
        )
    if fine_tune and len(sizes) > 1:
        raise UserError(
            f"--fine-tune tunes one base; trial {chosen.number} concatenates the features of "
            f"{'+'.join(map(str, sizes))} px (finalize a one-size trial with --trial N)"
        )
    spec = get_backbone(str(params.get("backbone", config.backbone)))
    if fine_tune:
        check_fine_tune(spec, sizes[0], fine_tune, fine_tune_epochs, fine_tune_lr)
    dataset, cache = open_run(config, data, cache_dir, progress)
    classes = list(dataset.classes)

    # 1. features of every split as the head sees them (the search cached train and validation):
    # sizes concatenated; with flip the train rows of the mirrored images follow the plain ones,
    # with tta validation and test carry the mirrored images as a second view
    inputs = head_inputs(cache, dataset, config, params, ("train", "validation", "test"))
    cache.release_model()
    extract_seconds = sum(f.extract_seconds for f in inputs.values())
    base_params = inputs["train"].base_params
    n_train, n_val = len(dataset["train"]), len(dataset["validation"])

    # 2. the final training: train split only, validation (plain images) scored after each epoch
    seed = trial_seed(config.seed, params)
    _say(progress, f"training trial {chosen.number}'s head for {epochs} epochs ({params})")
    x_train, y_train = np.asarray(inputs["train"].x, np.float32), inputs["train"].y
    x_val, y_val = inputs["validation"].x[:n_val], inputs["validation"].y
    head = HeadTrainer(max_models=1).train(
        x_train, y_train, x_val, y_val, classes, head_params, seed, batch_order
    )
    mean = std = None
    if head_params.normalize == "standardize":
        mean, std = feature_statistics(x_train)

    def cached_logits(split: str) -> np.ndarray:
        """The retrained head on cached features (views averaged), as the exported model does."""
        x = normalize_features(x_train, inputs[split].x, head_params.normalize)[1]
        return average_views(head_logits(head.weights, x), inputs[split].views)

    trained = Head.of(head_params, len(classes), weights=head.weights, mean=mean, std=std)
    tuned = None
    if fine_tune:
        tuned = fine_tune_model(
            spec,
            sizes[0],
            config.weights,
            config.seed,
            trained,
            head_params,
            {k: (dataset[k].paths, dataset[k].labels) for k in ("train", "validation", "test")},
            layers=fine_tune,
            epochs=fine_tune_epochs,
            learning_rate=fine_tune_lr,
            seed=seed,
            batch_order=batch_order,
            flip=flip,
            tta=tta,
            resize=config.resize,
            threads=config.threads,
            say=lambda message: _say(progress, message),
        )

    # the "not clothing" detector: fitted on the train split's plain pooled features (what the
    # exported model's extra outputs see; the tuned base's when fine-tuned), its threshold
    # accepting 95% of validation
    if tuned is None:
        detector = _shipped_detector(x_train[:n_train], x_val, progress)
    else:
        detector = _shipped_detector(tuned.train_features, tuned.val_features, progress)

    dest = final_dir(storage, name)
    tmp = make_staging(dest)
    try:
        # 3. export, then score the test split with the model as saved (reloaded from its file)
        start = time.perf_counter()
        exported = compose(
            spec,
            sizes[0] if len(sizes) == 1 else sizes,
            config.weights,
            config.seed,
            raw_input=True,
            head=trained,
            softmax=True,
            tta=tta,
            extra_outputs=_detector_outputs(detector),
        )
        if tuned is not None:
            tuned.into(exported)
        exported.save(tmp / MODEL_FILE)
        (tmp / CLASSES_FILE).write_text(json.dumps(classes, indent=2) + "\n")
        export_seconds = time.perf_counter() - start
        model, _ = load_classifier(tmp / MODEL_FILE)  # as `clothopt predict` loads it
        test = dataset["test"]
        _say(progress, f"scoring the saved model on the {len(test)} test images")
        start = time.perf_counter()
        probs, test_scores, test_accepted, errors = score_set(model, test.paths, config.threads)
        if errors:
            raise UserError(errors[0])
        test_seconds = time.perf_counter() - start
        y_test, y_pred = test.labels, np.argmax(probs, axis=1).astype(np.int64)
        scored = labelled_report(y_test, y_pred, classes, resamples=resamples, seed=bootstrap_seed)
        metrics = scored["test"]
        low, high = scored["f1_macro_ci95"]
        # what the saved model must agree with: the training path's own test answers
        reference = cached_logits("test") if tuned is None else tuned.test_logits
        cached_pred = np.argmax(reference, axis=1)
        cached = classification_metrics(y_test, cached_pred, classes)
        if (disagree := int(np.sum(cached_pred != y_pred))) > 0:
            # float noise can flip a near tie; more than that means the export differs
            print(
                f"finalize: warning: the saved model and the {_reference(tuned)} disagree on "
                f"{disagree} of {len(y_pred)} test images",
                file=sys.stderr,
            )
        trainable = int(sum(w.size for w in head.weights))
        if tuned is not None:
            trainable = tuned.trainable_params
        search, search_wall, search_trials = search_seconds(st.get_trials(deepcopy=False))

        report: dict[str, Any] = {
            "study": name,
            "backbone": spec.name,
            "weights": config.weights,
            "trial": chosen.number,
            "trial_validation_f1_macro": chosen.value,
            "params": params,
            "epochs": epochs,
            "seed": seed,
            "classes": classes,
            "test": metrics,
            "test_images": len(test),
            "f1_macro_ci95": scored["f1_macro_ci95"],
            "bootstrap": scored["bootstrap"],
            "test_labels": y_test.tolist(),
            "test_predictions": y_pred.tolist(),
            "cached_path_agreement": {
                "agree": int(np.sum(cached_pred == y_pred)),
                "of": len(y_pred),
                "cached_f1_macro": cached["f1_macro"],
                "reference": _reference(tuned),
            },
            "final_validation_f1_per_epoch": head.epoch_f1,
            "final_loss_per_epoch": head.epoch_loss,
            "total_params": base_params + trainable,
            "trainable_params": trainable,
            "exported_model_params": int(model.count_params()),
            "search_seconds": round(search, 3),
            "search_wall_seconds": round(search_wall, 3),
            "search_trials": search_trials,
            "final_train_seconds": round(head.train_seconds, 3),
            "final_extract_seconds": round(extract_seconds, 3),
            "export_seconds": round(export_seconds, 3),
            "test_seconds": round(test_seconds, 3),
            "model": MODEL_FILE,
            "classes_file": CLASSES_FILE,
            "model_input": _model_input(spec.name, sizes, tta),
            "data": str(dataset.root.absolute()),
            "data_fingerprint": dataset.fingerprint,
            "versions": study_mod.versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if wide:
            val_tta = None
            if tta:
                val_logits = cached_logits("validation") if tuned is None else tuned.val_logits
                val_pred = np.argmax(val_logits, axis=1)
                val_tta = classification_metrics(y_val, val_pred, classes)["f1_macro"]
            report["head"] = dataclasses.asdict(head_params) | {
                "image_sizes": sizes,
                "flip": flip,
                "tta": tta,
                # the per-epoch validation F1 above is of plain images; with tta, this one
                "final_validation_f1_macro_tta": val_tta,
            }
        if tuned is not None:
            report["fine_tune"] = {
                "layers": tuned.layers,
                "epochs": tuned.epochs,
                "learning_rate": tuned.learning_rate,
                "validation_f1_per_epoch": tuned.epoch_f1,
                "loss_per_epoch": tuned.epoch_loss,
                "train_seconds": round(tuned.train_seconds, 3),
                "decode_seconds": round(tuned.load_seconds, 3),
                "head_only_validation_f1_macro": head.epoch_f1[-1],
            }
        _say(progress, "measuring the not-clothing detector with the saved model")
        report["ood"] = _measure_rejection(
            model, detector, dataset, (test_scores, test_accepted), not_clothing_dir, config
        )
        title = (
            f"{name}: test confusion matrix, macro-F1 {metrics['f1_macro']:.4f} "
            f"(95% CI {low:.4f}-{high:.4f})"
        )
        report["figures"] = _confusion_figure(metrics["confusion_matrix"], classes, title, tmp)
        write_report(tmp, report)
        publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once swapped in
    set_final_attr(st, dest, report, metrics["f1_macro"], [low, high])
    if on_finalized is not None:
        from clothopt.predict import CLASSES_FILE

        files = [dest / REPORT_FILE, *(dest / f for f in report["figures"])]
        on_finalized(st, chosen.number, [*files, dest / MODEL_FILE, dest / CLASSES_FILE])
    return report
