"""One typed configuration per study: resolved once at creation, stored with the study.

Unknown keys are an error, so a typo in a stored or hand-written config never passes silently;
keys that earlier versions stored and this one no longer has (:data:`RETIRED_KEYS`) are dropped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clothopt.errors import InvalidArgument
from clothopt.spaces import SearchSpace

__all__ = ["CONFIG_ATTR", "PRUNERS", "RETIRED_KEYS", "StudyConfig"]

CONFIG_ATTR = "clothopt:config"  # study user attribute that holds the JSON config
PRUNERS = ("none", "median")
# stored by earlier versions, never read: $CLOTHOPT_HEARTBEAT_INTERVAL / _GRACE_PERIOD decide
RETIRED_KEYS = frozenset({"heartbeat_interval", "grace_period"})


@dataclass(frozen=True)
class StudyConfig:
    name: str
    backbone: str
    data: str  # absolute path of the data set
    data_fingerprint: str
    classes: tuple[str, ...]
    space: SearchSpace
    sampler: str
    sampler_args: Mapping[str, Any]
    weights: str = "imagenet"  # "imagenet", "none" or a file path
    epochs: int = 2
    seed: int = 0
    resize: str = "nearest"
    pruner: str = "none"
    use_cache: bool = True  # False: the end-to-end path, every epoch through the base
    cache_dir: str = "studies/features"
    extract_batch_size: int | None = (
        None  # None: the device default (features.default_extract_batch)
    )
    threads: int | None = None
    max_retries: int = 3
    command: str = ""
    store: str | None = None  # the store URL every machine shares (clothopt.store)
    versions: Mapping[str, str] = field(default_factory=dict)

    def budget(self) -> int:
        return self.space.budget()

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["space"] = self.space.to_dict()
        out["classes"] = list(self.classes)
        out["sampler_args"] = dict(self.sampler_args)
        out["versions"] = dict(self.versions)
        if self.store is None:  # recorded only when set: studies without one read as before
            del out["store"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k not in RETIRED_KEYS}
        unknown = set(data) - names
        if unknown:
            raise InvalidArgument(f"unknown config key(s): {', '.join(sorted(unknown))}")
        missing = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        } - set(data)
        if missing:
            raise InvalidArgument(f"config lacks {', '.join(sorted(missing))}")
        values = dict(data)
        values["space"] = SearchSpace.from_dict(data["space"])
        values["classes"] = tuple(data["classes"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> StudyConfig:
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"corrupt study config: {exc}") from None
