"""clothopt's public Python API: what the CLI does, as functions that take and return objects.

A study is an :class:`optuna.Study` (use Optuna's own tools on it: ``best_trial``,
``trials_dataframe()``, ``optuna.visualization``); a clothopt study stores its configuration
with it, so every function that takes a study reads its settings from there. Everything here is
a thin layer over the modules the CLI uses, so a study made here is the study ``clothopt study
create`` makes (same checks, same recorded configuration, same files).

Errors: each function raises :mod:`clothopt.errors` types, never exits.
:class:`~clothopt.errors.InvalidArgument` (a ``ValueError``) for a bad argument,
:class:`~clothopt.errors.NotFound` (a ``FileNotFoundError``) for a missing file, folder, storage
or study, :class:`~clothopt.errors.AlreadyExists` for a study name in use,
:class:`~clothopt.errors.DataError` for a data set or image that cannot be used,
:class:`~clothopt.errors.ModelError` for a model file clothopt cannot use,
:class:`~clothopt.errors.StorageUnavailable` (a ``ConnectionError``) for a lost database; all are
:class:`~clothopt.errors.ClothoptError`, and all but the last are
:class:`~clothopt.errors.UserError`.

This module imports neither TensorFlow nor Optuna until a function needs them.
"""

from __future__ import annotations

from clothopt.api._model import (
    ClothingModel,
    SimilarItems,
    build_index,
    find_similar,
    load_model,
    predict_images,
)
from clothopt.api._study import (
    create_objective,
    create_study,
    delete_study,
    finalize,
    load_study,
    optimize,
)

__all__ = [
    "ClothingModel",
    "SimilarItems",
    "build_index",
    "create_objective",
    "create_study",
    "delete_study",
    "finalize",
    "find_similar",
    "load_model",
    "load_study",
    "optimize",
    "predict_images",
]
