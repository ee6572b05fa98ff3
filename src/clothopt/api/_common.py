"""What the Python API's modules share: argument types and how a study's storage and
configuration are found."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Union

from clothopt.errors import InvalidArgument

if TYPE_CHECKING:
    import optuna

    from clothopt.config import StudyConfig

__all__ = ["PathLike", "Storage", "config_of", "fspath", "is_path", "storage_url", "url_of"]

PathLike = Union[str, "os.PathLike[str]"]
Storage = Union[str, "optuna.storages.BaseStorage"]


def is_path(value: object) -> bool:
    """Whether ``value`` names a file or folder (``str`` or ``os.PathLike``)."""
    return isinstance(value, (str, os.PathLike))


def fspath(value: PathLike | None) -> str | None:
    """``os.fspath(value)``, None kept (the layers below take ``str | None``)."""
    return None if value is None else os.fspath(value)


def storage_url(storage: Storage) -> str:
    """The URL of ``storage``: clothopt opens it itself (heartbeats on, the queue's callback)."""
    if isinstance(storage, str):
        return storage
    import optuna

    from clothopt.engine import storage_url_of

    url = storage_url_of(storage) if isinstance(storage, optuna.storages.BaseStorage) else None
    if url is None:
        raise InvalidArgument(
            f"storage must be a database URL or an optuna RDBStorage, not "
            f"{type(storage).__name__} (the exactly-once queue needs the database's heartbeats)"
        )
    return url


def url_of(study: Any) -> str:
    """The URL of a study's storage, which names its folders (``clothopt.paths``)."""
    from clothopt.engine import storage_of

    return storage_url(storage_of(study))


def config_of(study: Any) -> StudyConfig:
    """The configuration a clothopt study stores; InvalidArgument for any other study."""
    import optuna

    from clothopt.config import CONFIG_ATTR, StudyConfig

    if not isinstance(study, optuna.Study):
        raise InvalidArgument(f"expected an optuna.Study, not {type(study).__name__}")
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise InvalidArgument(
            f"study {study.study_name!r} was not created by clothopt (no configuration stored): "
            "use clothopt.create_objective(data=..., backbone=...) for a plain Optuna study"
        )
    return StudyConfig.from_json(raw)
