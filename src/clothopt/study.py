"""Studies: clothopt's layer on the generic engine (:mod:`clothopt.engine`).

One Optuna study per backbone and search, persisted through SQLAlchemy. ``create`` validates
everything and enqueues every grid point as a WAITING trial, so no worker ever asks the
sampler for a grid point and two workers can never draw the same one (GridSampler alone can);
the engine's queue then runs each point COMPLETE exactly once, whatever happens to workers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothopt._io import atomic_write_json
from clothopt.config import CONFIG_ATTR, PRUNERS, StudyConfig
from clothopt.engine import (
    MAX_RETRIES_ATTR,
    RunSummary,
    TrialCallback,
    open_storage,
    set_max_retries,
    study_id,
    trial_params,
)
from clothopt.engine import optimize as _engine_optimize
from clothopt.errors import AlreadyExists, InvalidArgument, NotFound, UserError
from clothopt.paths import check_name, default_cache_dir, masked_url, study_dir

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from clothopt.spaces import SearchSpace

__all__ = [
    "CreateHook",
    "DeleteHook",
    "create",
    "delete",
    "grid_status",
    "list_studies",
    "load",
    "optimize",
    "trial_rows",
    "versions",
]

CreateHook = Callable[["optuna.Study", StudyConfig], None]
DeleteHook = Callable[["optuna.Study"], list[str]]  # returns what it removed, to show


# --------------------------------------------------------------------------- create / load


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on, and the Keras backend."""
    out = {}
    for dist in ("clothopt", "optuna", "keras", "tensorflow", "numpy", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    out["keras_backend"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    return out


def _study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def create(
    *,
    backbone: str,
    space: str | SearchSpace = "paper",
    sampler: str | None = None,
    n_trials: int | None = None,
    name: str | None = None,
    storage: str | None = None,
    data: str = "data",
    weights: str = "imagenet",
    epochs: int | None = None,
    seed: int = 0,
    resize: str = "nearest",
    pruner: str = "none",
    use_cache: bool = True,
    cache_dir: str | None = None,
    max_retries: int = 3,
    command: str = "",
    grid_order_seed: int | None = None,
    on_create: CreateHook | None = None,
    store: str | None = None,
) -> tuple[optuna.Study, StudyConfig]:
    """Validate everything, then create the study and enqueue its grid; on error change nothing.

    ``grid_order_seed``: enqueue the grid in a random order drawn from this seed (recorded as the
    study user attr ``grid_order_seed``) instead of image size outermost; a sampler comparison
    needs it, or "trials until the grid's best" would only measure where the best point sits.
    ``on_create(study, config)`` runs before the grid is enqueued (the CLI writes the
    dashboard's note with it); if it raises, the study is deleted again.
    ``store``: the URL of the store every machine shares (``file:///shared/folder`` or
    ``s3://bucket/prefix``, :mod:`clothopt.store`), opened here once so a bad one stops now.
    """
    import optuna

    from clothopt.data import RESIZE_METHODS, open_dataset
    from clothopt.model.backbones import get_backbone, weights_id
    from clothopt.samplers import sampler_args
    from clothopt.spaces import SearchSpace, load_space

    # a SearchSpace object (the Python API's) as it is; a name or a TOML file loaded
    space_obj = space if isinstance(space, SearchSpace) else load_space(space)
    space_obj = space_obj.with_sampler(sampler, n_trials)
    names = [b.strip() for b in backbone.split(",") if b.strip()]
    if len(names) > 1:
        if space_obj.backbones():
            raise InvalidArgument(
                f"space {space_obj.name!r} has a backbone parameter: name one --backbone, not "
                f"{backbone}"
            )
        space_obj = space_obj.with_param("backbone", names)
    elif space_obj.backbones() and names and names[0] not in space_obj.backbones():
        raise InvalidArgument(
            f"--backbone {names[0]} is not among the space's backbones "
            f"({', '.join(space_obj.backbones())})"
        )
    specs = [get_backbone(b) for b in space_obj.backbones() or names or [backbone]]
    spec = get_backbone(names[0] if names else backbone)
    for one in specs:
        one.check_size(space_obj.min_image_size())
    if not use_cache and not space_obj.single_fit:
        raise InvalidArgument(
            f"space {space_obj.name!r} sets repeats/folds: the end-to-end path (--no-cache) "
            "fits one head per trial (drop --no-cache)"
        )
    if not use_cache and not space_obj.is_paper_head():
        raise InvalidArgument(
            f"space {space_obj.name!r} varies more than image_size, batch_size and learning_rate: "
            "the end-to-end path (--no-cache) trains only the paper's head"
        )
    if resize not in RESIZE_METHODS:
        raise InvalidArgument(
            f"unknown resize {resize!r} (choose from {', '.join(RESIZE_METHODS)})"
        )
    if pruner not in PRUNERS:
        raise InvalidArgument(f"unknown pruner {pruner!r} (choose from {', '.join(PRUNERS)})")
    if epochs is not None and not 1 <= epochs <= 1000:
        raise InvalidArgument(f"--epochs must be between 1 and 1000, not {epochs}")
    if not 0 <= max_retries <= 100:
        raise InvalidArgument(f"--max-retries must be between 0 and 100, not {max_retries}")
    if weights not in ("imagenet", "none"):
        if len(specs) > 1:
            raise InvalidArgument(
                f"a weights file fits one backbone, not {len(specs)} "
                f"({', '.join(s.name for s in specs)}): use imagenet or none"
            )
        weights_id(weights)  # a missing file is a clear error now, not at the first trial
        weights = str(Path(weights).expanduser().absolute())
    if name is None:
        name = f"{spec.name}-{space_obj.name}-{space_obj.sampler}"
    check_name(name)  # before it becomes a folder, and before anything is written
    folder = study_dir(storage, name)
    dataset = open_dataset(data)
    if store is not None:
        store = _check_store(store)
    db = open_storage(storage, create=True)
    if name in _study_names(db):
        raise AlreadyExists(f"study {name!r} already exists (pick another --name, or delete it)")
    config = StudyConfig(
        name=name,
        backbone=spec.name,
        data=str(dataset.root.absolute()),
        data_fingerprint=dataset.fingerprint,
        classes=dataset.classes,
        space=space_obj,
        sampler=space_obj.sampler,
        sampler_args=sampler_args(space_obj.sampler, seed, space_obj),
        weights=weights,
        epochs=epochs or space_obj.epochs,
        seed=seed,
        resize=resize,
        pruner=pruner,
        use_cache=use_cache,
        cache_dir=str(Path(cache_dir).absolute() if cache_dir else default_cache_dir(storage)),
        max_retries=max_retries,
        command=command,
        store=store,
        versions=versions(),
    )
    try:
        study = optuna.create_study(
            study_name=name,
            storage=db,
            direction="maximize",
            sampler=_sampler(config),
            pruner=_pruner(config),
        )
    except optuna.exceptions.DuplicatedStudyError:  # another create won the race
        raise AlreadyExists(
            f"study {name!r} already exists (pick another --name, or delete it)"
        ) from None
    try:
        study.set_user_attr(CONFIG_ATTR, config.to_json())
        for key in ("backbone", "weights", "sampler", "epochs", "seed", "data_fingerprint"):
            study.set_user_attr(key, getattr(config, key))
        study.set_user_attr("space", space_obj.name)
        set_max_retries(study, config.max_retries)  # what the engine's queue reads
        if on_create is not None:
            on_create(study, config)
        if config.sampler == "grid":
            points = space_obj.grid()
            if grid_order_seed is not None:
                import numpy as np

                order = np.random.default_rng(grid_order_seed).permutation(len(points))
                points = [points[i] for i in order]
                study.set_user_attr("grid_order_seed", grid_order_seed)
            _enqueue_grid(study, points)
        for point in space_obj.start:  # the space's warm start, tried before the sampler asks
            study.enqueue_trial(dict(point))
        atomic_write_json(folder / "config.json", config.to_dict())
    except BaseException:
        optuna.delete_study(study_name=name, storage=db)
        raise
    return study, config


def _check_store(url: str) -> str:
    """The store URL normalised, once it is known to open and answer (credentials from the
    environment; a missing one is one line now, not at the first upload)."""
    from clothopt.store import Store, check_store_url

    url = check_store_url(url)
    Store.open(url, ".").check()  # writes nothing
    return url


def _enqueue_grid(study: optuna.Study, points: list[dict[str, Any]]) -> None:
    """Enqueue every grid point; a large grid shows its progress (about 7 ms a point)."""
    from tqdm import tqdm

    with tqdm(
        total=len(points),
        desc="enqueueing the grid",
        unit="point",
        file=sys.stderr,
        disable=True if len(points) < 500 else None,  # None: only on a terminal
        leave=False,
    ) as bar:
        for params in points:
            study.enqueue_trial(params, skip_if_exists=False)
            bar.update(1)


def _sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    import optuna

    from clothopt.samplers import make_sampler

    if config.sampler == "grid":
        # Every grid point is an enqueued trial and runs with its fixed parameters, so the
        # sampler is never asked; GridSampler would still act after each trial and, on a
        # one-point grid, fail looking for the "grid_id" it gives only to trials it chose.
        return optuna.samplers.RandomSampler(seed=config.sampler_args.get("seed"))
    return make_sampler(config.sampler, config.sampler_args, config.space)


def _pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    import optuna

    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def load(name: str, storage: str | None = None) -> tuple[optuna.Study, StudyConfig]:
    import optuna

    store = open_storage(storage)
    if name not in _study_names(store):
        known = ", ".join(_study_names(store)) or "none"
        raise NotFound(f"no study named {name!r} in {masked_url(storage)} (studies: {known})")
    study = optuna.load_study(study_name=name, storage=store)
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise InvalidArgument(f"study {name!r} was not created by clothopt (no config stored)")
    config = StudyConfig.from_json(raw)
    if MAX_RETRIES_ATTR not in study.user_attrs:  # created before the engine read it there
        set_max_retries(study, config.max_retries)
    study.sampler = _sampler(config)
    study.pruner = _pruner(config)
    return study, config


def delete(name: str, storage: str | None = None, on_delete: DeleteHook | None = None) -> list[str]:
    """Delete a study, its trials and its run folder (``paths.study_dir``).

    ``on_delete(study)`` runs first (the CLI removes the study's artifacts with it) and says
    what it removed. Returns what was removed, to show. The feature cache is kept: other
    studies share it.
    """
    import optuna

    store = open_storage(storage)
    if name not in _study_names(store):
        raise NotFound(f"no study named {name!r} in {masked_url(storage)}")
    study = optuna.load_study(study_name=name, storage=store)
    folder = study_dir(storage, name) if _is_valid_name(name) else None
    n_trials = len(study.get_trials(deepcopy=False))
    removed = list(on_delete(study)) if on_delete is not None else []
    optuna.delete_study(study_name=name, storage=store)
    removed.insert(0, f"study {name!r} and its {n_trials} trial(s)")
    if folder is not None and (folder.is_dir() or folder.is_symlink()):
        if folder.is_symlink():
            folder.unlink()  # a link clothopt did not make: never follow it
        else:
            shutil.rmtree(folder)
        removed.append(f"its folder {folder}")
    return removed


def _is_valid_name(name: str) -> bool:
    try:
        check_name(name)
    except UserError:
        return False  # made outside clothopt: it has no folder of ours
    return True


def list_studies(storage: str | None = None, *, create: bool = False) -> list[dict[str, Any]]:
    """A row per study; a SQLite storage that does not exist is an error unless ``create``."""
    from optuna.trial import TrialState

    store = open_storage(storage, create=create)
    rows = []
    for summary in store.get_all_studies():
        trials = store.get_all_trials(study_id(summary), deepcopy=False)
        counts = {s: sum(t.state == s for t in trials) for s in TrialState}
        best = max(
            (t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
            default=None,
        )
        rows.append(
            {
                "name": summary.study_name,
                "backbone": summary.user_attrs.get("backbone", "?"),
                "sampler": summary.user_attrs.get("sampler", "?"),
                "complete": counts[TrialState.COMPLETE],
                "running": counts[TrialState.RUNNING],
                "waiting": counts[TrialState.WAITING],
                "failed": counts[TrialState.FAIL],
                "best_f1": best,
            }
        )
    return rows


def grid_status(study: optuna.Study, config: StudyConfig) -> dict[str, Any]:
    """Per grid point: how many COMPLETE trials; the exactly-once check."""
    from optuna.trial import TrialState

    def key(p: dict[str, Any]) -> tuple[Any, ...]:
        # a conditional parameter absent from a point is None in its key
        return tuple(p.get(n) for n in config.space.params)

    complete: dict[tuple[Any, ...], int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        complete[key(t.params)] = complete.get(key(t.params), 0) + 1
    points = [key(p) for p in config.space.grid()] if config.space.is_grid else list(complete)
    return {
        "points": len(points),
        "complete_once": sum(complete.get(p, 0) == 1 for p in points),
        "duplicates": {str(p): n for p, n in complete.items() if n > 1},
        "missing": [str(p) for p in points if complete.get(p, 0) == 0],
    }


def _describe(trial: FrozenTrial) -> str:
    """A COMPLETE trial in the progress bar: its grid point and validation F1."""
    p = trial.params
    size = p.get("image_size", p.get("image_sizes"))
    return (
        f"#{trial.number} {size}px b{p.get('batch_size')} "
        f"lr{p.get('learning_rate'):g} F1 {trial.value:.4f}"
    )


def optimize(
    study: optuna.Study,
    config: StudyConfig,
    objective: Callable[[optuna.Trial], float],
    n_trials: int | None = None,
    timeout: float | None = None,
    progress: bool = True,
    callbacks: Sequence[TrialCallback] = (),
) -> RunSummary:
    """Run a study's trials with the engine until its budget is done (or ``n_trials`` /
    ``timeout`` here); ``callbacks`` run after each trial with the study and the trial."""
    return _engine_optimize(
        study,
        objective,
        budget=config.budget(),
        ask_sampler=config.sampler != "grid",
        n_trials=n_trials,
        timeout=timeout,
        progress=progress,
        describe=_describe,
        callbacks=callbacks,
    )


# --------------------------------------------------------------------------- show


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Trials for ``study show``: COMPLETE ones best first, then the rest by number."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: (-(t.value or 0.0), t.number),
    )
    rest = [t for t in trials if t.state != TrialState.COMPLETE]
    # trials evaluated with repeats/folds add their spread (older studies look as before)
    repeated = any(t.user_attrs.get("val_f1_runs") for t in trials)
    rows = []
    for t in done + rest:
        params = trial_params(t) if not t.params else t.params
        a = t.user_attrs
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "image_size": params.get("image_size", params.get("image_sizes")),
                "batch_size": params.get("batch_size"),
                "learning_rate": params.get("learning_rate"),
                "val_f1": t.value,
                **(
                    {
                        "val_f1_se": t.user_attrs.get("val_f1_se"),
                        "members": len(t.user_attrs.get("val_f1_runs") or []) or None,
                    }
                    if repeated
                    else {}
                ),
                "val_precision": a.get("val_precision_macro"),
                "val_recall": a.get("val_recall_macro"),
                "val_accuracy": a.get("val_accuracy"),
                "extract_s": a.get("extract_seconds"),
                "train_s": a.get("train_seconds"),
                "note": a.get("fail_reason")
                or ("loss diverged" if a.get("loss_diverged") else "")
                or (f"retry of #{a['retry_of']}" if "retry_of" in a else ""),
            }
        )
    return rows
