"""Setting up a run of a study on this machine: its data set (checked) and its feature cache.

``study optimize``, the sampler comparison and ``study finalize`` all start this way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clothopt.errors import DataError

if TYPE_CHECKING:
    from clothopt.config import StudyConfig
    from clothopt.data import Dataset
    from clothopt.features import FeatureCache

__all__ = ["open_run"]


def open_run(
    config: StudyConfig,
    data: str | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    *,
    dataset: Dataset | None = None,
    cache: FeatureCache | None = None,
    storage: Any = None,
) -> tuple[Dataset, FeatureCache]:
    """The study's data set and a feature cache with the study's extraction settings.

    ``data`` and ``cache_dir`` are this machine's folders (default: those the study was
    created with). The data set must have the study's fingerprint (a :class:`DataError`
    otherwise). ``dataset`` and ``cache``: ones already open, reused (a comparison's studies
    share them); the data set is checked all the same. ``storage``: the study's Optuna
    storage; with a study that records a store (``config.store``), the cache fetches feature
    entries from that store or computes each shard once under a lease in that database, so
    several machines extract every entry once (issue 21).
    """
    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache

    dataset = dataset if dataset is not None else open_dataset(data or config.data)
    if dataset.fingerprint != config.data_fingerprint:
        raise DataError(
            f"data set {dataset.root} differs from the one study {config.name!r} was created "
            f"with (fingerprint {dataset.fingerprint[:12]} != {config.data_fingerprint[:12]})"
        )
    if cache is None:
        shared: dict[str, Any] = {}
        if config.store and storage is not None:
            from clothopt.engine.leases import LeaseTable
            from clothopt.store import open_store

            shared = {"store": open_store(config.store), "leases": LeaseTable.of_storage(storage)}
        cache = FeatureCache(
            cache_dir or config.cache_dir,
            batch_size=config.extract_batch_size,
            threads=config.threads,
            progress=progress,
            **shared,
        )
    return dataset, cache
