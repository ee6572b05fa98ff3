"""The Python API's studies: create, load, delete, optimize, an objective, finalize."""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothopt.api._common import (
    PathLike,
    Storage,
    config_of,
    fspath,
    storage_url,
    url_of,
)
from clothopt.api._settings import (
    PRUNER_NAMES,
    SAMPLER_NAMES,
    call_line,
    is_space,
    named,
    override,
    study_names,
)
from clothopt.errors import InvalidArgument
from clothopt.logging import get_logger

if TYPE_CHECKING:
    import optuna

    from clothopt.engine import RunSummary, TrialCallback
    from clothopt.objective import Objective
    from clothopt.spaces import SearchSpace

__all__ = [
    "create_objective",
    "create_study",
    "delete_study",
    "finalize",
    "load_study",
    "optimize",
]

logger = get_logger(__name__)


def create_study(
    data: PathLike,
    *,
    backbone: str | Sequence[str],
    storage: Storage,
    space: PathLike | SearchSpace = "paper",
    sampler: str | optuna.samplers.BaseSampler | None = None,
    pruner: str | optuna.pruners.BasePruner | None = None,
    n_trials: int | None = None,
    study_name: str | None = None,
    weights: PathLike = "imagenet",
    epochs: int | None = None,
    seed: int = 0,
    resize: str = "nearest",
    use_cache: bool = True,
    cache_dir: PathLike | None = None,
    max_retries: int = 3,
    load_if_exists: bool = False,
    command: str | None = None,
    store: str | None = None,
) -> optuna.Study:
    """Create a clothopt study (``clothopt study create``): checked, recorded, grid enqueued.

    Args:
        data: the data set folder, ``DATA/train|validation|test/<class>/<images>``; it is
            checked and its fingerprint recorded (a run on another machine must match it).
        backbone: a backbone name (``clothopt.model.backbones.BACKBONES``), or several for the
            trials to choose from.
        storage: a database URL (``sqlite:///PATH.db``, ``postgresql+psycopg://...``) or an
            :class:`optuna.storages.RDBStorage` (reopened from its URL with clothopt's
            heartbeats, which the exactly-once queue needs). The study's files (runs/,
            features/) go beside a SQLite file, else under ``./studies``.
        space: a built-in space name (``paper``, ``tpe``, ``quick``, ``wide``), a TOML file, or
            a :class:`clothopt.spaces.SearchSpace` (e.g. from ``clothopt.spaces.load_space``).
        sampler: a name (``grid``, ``tpe``, ``random``, ``qmc``, ``gp``, ``cmaes``; default:
            the space's own), or an Optuna sampler of one of those kinds (``TPESampler``, ...):
            the returned study uses that object; the study records its kind, which a process
            that loads the study without a sampler rebuilds with clothopt's settings (Optuna
            stores no sampler at all).
        pruner: ``"none"`` (default), ``"median"``, or a ``MedianPruner`` / ``NopPruner``
            object (recorded as its kind, as for the sampler).
        n_trials: the budget of a sampler that is not the grid.
        study_name: default ``BACKBONE-SPACE-SAMPLER``.
        weights: ``"imagenet"``, ``"none"`` (random: fast plumbing) or a weights file.
        epochs: per trial (default: the space's).
        seed: the study's seed (sampler, heads, batch order).
        resize: ``nearest`` (the paper's), ``bilinear`` or ``bicubic``.
        use_cache: train the head on cached features (False: end to end, the paper's head only).
        cache_dir: the feature cache (default: beside the SQLite file).
        max_retries: reruns of a trial whose worker died.
        load_if_exists: return the existing study of that ``study_name`` instead of failing.
        store: the store every machine shares, ``file:///shared/folder`` or
            ``s3://bucket/prefix`` (:mod:`clothopt.store`; S3 credentials come from the
            environment or the AWS configuration and are never recorded). The final model is
            uploaded there, so ``load_model(study)`` works on any machine.
        command: how the study was made, recorded with it (default: this call, as
            ``clothopt.create_study(...)``; the CLI passes its command line). Never put a
            password in it.

    Returns:
        The study, its sampler and pruner set.

    Raises:
        InvalidArgument, NotFound, AlreadyExists, DataError, StorageUnavailable.
    """
    from clothopt import study as study_mod
    from clothopt.dashboard import describe_study

    url = storage_url(storage)
    sampler_name, sampler_obj = named(sampler, SAMPLER_NAMES, "sampler")
    pruner_name, pruner_obj = named(pruner, PRUNER_NAMES, "pruner")
    if load_if_exists:
        if study_name is None:
            raise InvalidArgument("load_if_exists needs a study_name")
        if study_name in study_names(url):
            return load_study(study_name, url, sampler=sampler_obj, pruner=pruner_obj)
    names = [backbone] if isinstance(backbone, str) else list(backbone)
    st, _ = study_mod.create(
        backbone=",".join(names),
        space=space if is_space(space) else os.fspath(space),  # type: ignore[arg-type]
        sampler=sampler_name,
        n_trials=n_trials,
        name=study_name,
        storage=url,
        data=os.fspath(data),
        weights=os.fspath(weights),
        epochs=epochs,
        seed=seed,
        resize=resize,
        pruner=pruner_name or "none",
        use_cache=use_cache,
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        max_retries=max_retries,
        command=command
        or call_line(
            "create_study",
            data=data,
            backbone=backbone,
            storage=url,
            space=getattr(space, "name", space),
            sampler=sampler,
            pruner=pruner,
            n_trials=n_trials,
            study_name=study_name,
            weights=weights,
            epochs=epochs,
            seed=seed,
            resize=resize,
            use_cache=use_cache,
            cache_dir=cache_dir,
            max_retries=max_retries,
            store=store,
        ),
        on_create=describe_study,  # its note and metric name in optuna-dashboard, as the CLI
        store=None if store is None else os.fspath(store),
    )
    return override(st, sampler_obj, pruner_obj)


def load_study(
    study_name: str,
    storage: Storage,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """A clothopt study, its sampler and pruner rebuilt from its record (or the objects given).

    Raises:
        NotFound (no such storage or study), InvalidArgument (a study clothopt did not create,
        a bad URL), StorageUnavailable.
    """
    from clothopt import study as study_mod

    for value, what in ((sampler, "sampler"), (pruner, "pruner")):
        if isinstance(value, str):
            raise InvalidArgument(f"load_study takes a {what} object or None, not {value!r}")
    st, _ = study_mod.load(study_name, storage_url(storage))
    return override(st, sampler, pruner)


def delete_study(study_name: str, storage: Storage) -> list[str]:
    """Delete a study, its trials, its run folder and its dashboard artifacts (``clothopt study
    delete``; the feature cache stays: other studies share it). Returns what was removed.

    Raises:
        NotFound, StorageUnavailable.
    """
    from clothopt import study as study_mod
    from clothopt.dashboard import remove_artifacts

    return study_mod.delete(study_name, storage_url(storage), on_delete=remove_artifacts)


def optimize(
    study: optuna.Study,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    data: PathLike | None = None,
    cache_dir: PathLike | None = None,
    callbacks: Sequence[TrialCallback] = (),
    show_progress_bar: bool = False,
) -> RunSummary:
    """Run a clothopt study's trials (``clothopt study optimize``) until its budget is done.

    Unlike ``study.optimize``, this is clothopt's exactly-once queue: a grid point runs
    COMPLETE once whatever happens to workers; a dead worker's trial is rerun; several
    processes may run it at once; run it again to continue. Trials that fail are counted in
    the summary (as Optuna does, they do not raise).

    Args:
        study: from :func:`create_study` or :func:`load_study`.
        n_trials: stop after this many trials here. timeout: start no trial after that many
            seconds.
        data, cache_dir: this machine's data set (same fingerprint) and feature cache
            (default: those the study was created with).
        callbacks: ``callback(study, frozen_trial)`` after each trial (after clothopt's own,
            which uploads the per-class validation report for optuna-dashboard).

    Returns:
        A :class:`clothopt.engine.RunSummary`: trials ran, complete, failed, pruned,
        recovered, seconds, best value and parameters.

    Raises:
        InvalidArgument, NotFound, DataError (the data set differs), StorageUnavailable.
    """
    from clothopt import study as study_mod
    from clothopt._quiet import quiet_import_keras
    from clothopt.dashboard import upload_validation_report

    if n_trials is not None and (isinstance(n_trials, bool) or n_trials < 1):
        raise InvalidArgument(f"n_trials must be a positive number, not {n_trials!r}")
    if timeout is not None and not timeout > 0:
        raise InvalidArgument(f"timeout must be positive seconds, not {timeout!r}")
    config = config_of(study)
    objective = _study_objective(study, data, cache_dir, progress=show_progress_bar)
    quiet_import_keras()  # TensorFlow's start-up lines only when verbose
    return study_mod.optimize(
        study,
        config,
        objective,
        n_trials=n_trials,
        timeout=timeout,
        progress=show_progress_bar,
        callbacks=[upload_validation_report, *callbacks],  # per-class report, as the CLI
    )


def create_objective(
    study: optuna.Study | None = None,
    *,
    data: PathLike | None = None,
    cache_dir: PathLike | None = None,
    backbone: str | Sequence[str] | None = None,
    space: PathLike | SearchSpace | None = None,
    weights: PathLike | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    resize: str | None = None,
    use_cache: bool | None = None,
) -> Objective:
    """``trial -> validation macro-F1``, for ``study.optimize(objective, ...)`` of any study.

    With a clothopt ``study``, its recorded settings (``data`` and ``cache_dir``: this
    machine's folders, as in :func:`optimize`; the other settings must be left out). Without
    one, for a plain ``optuna.create_study(direction="maximize")``: ``data`` and
    ``backbone`` are required, the others default as in :func:`create_study` (``space``
    ``"paper"``, ``weights`` ``"imagenet"``, ``seed`` 0, ``resize`` ``"nearest"``,
    ``use_cache`` True), and every setting is checked as :func:`create_study` checks it;
    the features are cached in ``cache_dir``, else in a temporary folder removed with the
    objective. A trial records its validation figures in its user attributes and reports
    per-epoch F1 for pruners.

    Raises:
        InvalidArgument, NotFound, DataError (also the study's data set, when it differs).
    """
    from clothopt.objective import Objective

    folder = None if cache_dir is None else os.fspath(cache_dir)
    settings = {
        "backbone": backbone,
        "space": space,
        "weights": weights,
        "epochs": epochs,
        "seed": seed,
        "resize": resize,
        "use_cache": use_cache,
    }
    if study is not None:
        if extra := [k for k, v in settings.items() if v is not None]:
            raise InvalidArgument(
                f"{', '.join(extra)}: a clothopt study's own settings apply (pass no study "
                "to set them)"
            )
        return _study_objective(study, data, cache_dir, progress=False)
    if data is None or backbone is None:
        raise InvalidArgument("create_objective without a study needs data and backbone")
    defaults = {"space": "paper", "weights": "imagenet", "seed": 0, "resize": "nearest"}
    settings |= {k: v for k, v in defaults.items() if settings[k] is None}
    settings["use_cache"] = use_cache is not False
    return _scratch_objective(Objective, data=data, cache_dir=folder, **settings)


def _study_objective(
    study: optuna.Study, data: PathLike | None, cache_dir: PathLike | None, progress: bool
) -> Objective:
    """A clothopt study's objective on this machine's data set (checked) and feature cache;
    ``progress``: extraction's progress bar."""
    from clothopt.engine import storage_of
    from clothopt.objective import Objective
    from clothopt.outputs import check_writable
    from clothopt.runs import open_run

    config = config_of(study)
    dataset, cache = open_run(
        config, fspath(data), fspath(cache_dir), progress=progress, storage=storage_of(study)
    )
    if getattr(cache, "root", None) is not None:
        # before the first extraction, not after it: one line, no trial taken
        check_writable(cache.root)
    return Objective(config, dataset, cache)


def _scratch_objective(objective_cls: Any, *, data: PathLike, **settings: Any) -> Objective:
    """An objective without a study: the settings go through the very ``create`` a study's
    do (a scratch SQLite study in a temporary folder, the feature cache's home by default)."""
    import tempfile

    from clothopt import study as study_mod
    from clothopt.runs import open_run

    tmp = tempfile.TemporaryDirectory(prefix="clothopt-objective-")
    try:
        names = settings["backbone"]
        _, config = study_mod.create(
            backbone=names if isinstance(names, str) else ",".join(names),
            space=settings["space"]
            if is_space(settings["space"])
            else os.fspath(settings["space"]),
            storage=f"sqlite:///{Path(tmp.name) / 'objective.db'}",
            name="objective",
            data=os.fspath(data),
            weights=os.fspath(settings["weights"]),
            epochs=settings["epochs"],
            seed=settings["seed"],
            resize=settings["resize"],
            use_cache=settings["use_cache"],
            cache_dir=settings["cache_dir"],
            command=call_line("create_objective", data=data, **settings),
        )
        dataset, cache = open_run(config, progress=False)
        objective = objective_cls(config, dataset, cache)
    except BaseException:
        tmp.cleanup()
        raise
    weakref.finalize(objective, tmp.cleanup)  # the folder lives as long as the objective
    return objective  # type: ignore[no-any-return]


def finalize(
    study: optuna.Study,
    *,
    trial: int | None = None,
    epochs: int | None = None,
    data: PathLike | None = None,
    cache_dir: PathLike | None = None,
    not_clothing: PathLike | None = None,
    resamples: int | None = None,
    bootstrap_seed: int = 0,
    fine_tune: int = 0,
    fine_tune_epochs: int | None = None,
    fine_tune_lr: float | None = None,
    race_top: int | None = None,
    race_repeats: int | None = None,
    blend: int | None = None,
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """Retrain the best trial (or ``trial``), export the model, score the test split
    (``clothopt study finalize``).

    Writes the study's ``final/`` folder (replaced whole): ``model.keras`` (raw RGB images in,
    class probabilities and a "not clothing" verdict out), ``classes.json``, ``report.json``
    and the confusion matrix; :func:`load_model` (``load_model(study)``) reads it back.

    Args:
        trial: a trial number (default: the best).
        epochs: of the final training (default: the trial's own when its space searched
            them, else 5, the paper's).
        data, cache_dir: this machine's folders (default: the study's).
        not_clothing: a folder of non-clothing photos the model's rejection is measured on
            (default: not measured).
        resamples, bootstrap_seed: the bootstrap of the test macro-F1's 95% interval
            (resamples: at least 1000; default 2000).
        fine_tune, fine_tune_epochs, fine_tune_lr: unfreeze the base's top ``fine_tune``
            layers after the head (0: the paper's frozen base).
        race_top, race_repeats: a study whose space sets ``repeats``/``folds`` finalizes the
            best of its ``race_top`` (default 5) best trials re-evaluated with
            ``race_repeats`` (default 3) fresh seeds each; 0: its best search value.
        blend: N >= 2 ships a blend of the race's N best configurations, weighed by
            ensemble selection on their out-of-fold probabilities (default: the space's
            ``blend``, else the pick alone; 0: the pick alone).

    Returns:
        ``report.json`` as a dict (test figures of the saved model, parameters, seconds).

    Raises:
        InvalidArgument, NotFound, AlreadyExists (a final folder that is not clothopt's),
        DataError, StorageUnavailable.
    """
    from clothopt.dashboard import publish_finalized
    from clothopt.final.finalize import finalize as _finalize

    if isinstance(not_clothing, bool):
        raise InvalidArgument("not_clothing is a folder of photos or None, not a bool")
    url = url_of(study)
    config_of(study)  # a clear error for a study clothopt did not create
    optional = {
        "resamples": resamples,
        "fine_tune_epochs": fine_tune_epochs,
        "fine_tune_lr": fine_tune_lr,
        "race_top": race_top,
        "race_repeats": race_repeats,
        "blend": blend,
    }
    return _finalize(
        study.study_name,
        url,
        epochs=epochs,
        trial=trial,
        data=fspath(data),
        cache_dir=fspath(cache_dir),
        bootstrap_seed=bootstrap_seed,
        not_clothing=fspath(not_clothing),
        fine_tune=fine_tune,
        progress=show_progress_bar,
        on_finalized=publish_finalized(url),
        **{k: v for k, v in optional.items() if v is not None},
    )
