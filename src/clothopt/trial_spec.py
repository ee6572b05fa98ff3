"""One trial's specification: what its parameters mean and where their limits lie, in one place.

:data:`PARAMS` names every parameter a trial may have, with its type and limits (search spaces
are checked against it); :class:`TrialSpec` is a trial's parameters parsed once, from
``trial.params`` and the study's defaults: the backbone, the image sizes (``"300+500"``), flip,
test-time augmentation, augmentation views, the head and how it trains (:class:`HeadParams`),
and the seed. The objective and finalize both consume a :class:`TrialSpec`
(``clothopt.pipeline.train_spec``), so a new hyperparameter is a new entry here and the code
that uses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from clothopt.errors import InvalidArgument

__all__ = [
    "NORMALIZE",
    "OPTIMIZERS",
    "PAPER_PARAMS",
    "PARAMS",
    "SCHEDULES",
    "HeadParams",
    "ParamKind",
    "StudyDefaults",
    "TrialSpec",
    "check_value",
    "image_sizes",
    "paper_point",
    "parse_sizes",
    "trial_seed",
]

Value = int | float | str | bool

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
NORMALIZE = ("none", "l2", "standardize")


@dataclass(frozen=True)
class ParamKind:
    """What one trial parameter is: its type, its limits (numbers) or allowed values (strings),
    and whether it is searched on a log scale unless the space says otherwise."""

    type: type
    limits: tuple[float, float] | None = None
    allowed: tuple[str, ...] | None = None
    log: bool = False


# What a trial may vary. Absent ones take the paper's head (HeadParams defaults), no flip, no
# TTA, no augmentation views, the study's backbone and epochs.
PARAMS: Mapping[str, ParamKind] = {
    "image_size": ParamKind(int, (32, 2048)),
    "image_sizes": ParamKind(str),  # "300+500": pooled features of each size, concatenated
    "batch_size": ParamKind(int, (1, 4096)),
    "learning_rate": ParamKind(float, (1e-8, 10.0), log=True),
    "epochs": ParamKind(int, (1, 1000)),
    "hidden_layers": ParamKind(int, (0, 8)),
    "hidden_units": ParamKind(int, (1, 8192)),
    "dropout": ParamKind(float, (0.0, 0.95)),
    "weight_decay": ParamKind(float, (0.0, 1.0), log=True),
    "label_smoothing": ParamKind(float, (0.0, 0.5)),
    "optimizer": ParamKind(str, allowed=OPTIMIZERS),
    "schedule": ParamKind(str, allowed=SCHEDULES),
    "normalize": ParamKind(str, allowed=NORMALIZE),
    "flip": ParamKind(bool),  # train on features of horizontally flipped images too
    "tta": ParamKind(bool),  # average the logits of plain and flipped evaluation features
    # train on that many seeded augmentation views of each image too (clothopt.augment); each
    # view is one more extraction pass over the training images, hence the low limit
    "aug_views": ParamKind(int, (0, 8)),
    "backbone": ParamKind(str),  # a name in clothopt.model.backbones.BACKBONES
}
PAPER_PARAMS = ("image_size", "batch_size", "learning_rate")  # all the end-to-end path knows
_SIZE = "image_size"


def _backbone_names() -> tuple[str, ...]:
    from clothopt.model.backbones import BACKBONES

    return tuple(BACKBONES)


def parse_sizes(text: str, what: str = "image_sizes") -> tuple[int, ...]:
    """``"300+500"`` as ``(300, 500)``: sizes joined by '+', each within image_size's limits,
    none twice."""
    lo, hi = PARAMS[_SIZE].limits or (0, 0)
    parts = str(text).split("+")
    if not all(p.isdigit() and lo <= int(p) <= hi for p in parts):
        raise InvalidArgument(
            f"{what}: {text!r} is not sizes joined by '+' (e.g. \"300+500\"), each {lo:g}-{hi:g}"
        )
    if len(set(parts)) != len(parts):
        raise InvalidArgument(f"{what}: {text!r} names a size twice")
    return tuple(int(p) for p in parts)


def image_sizes(params: Mapping[str, Any]) -> tuple[int, ...]:
    """The image sizes a trial's features come from: ``image_sizes`` ("300+500") or
    ``image_size``."""
    if "image_sizes" in params:
        return parse_sizes(str(params["image_sizes"]))
    return (int(params[_SIZE]),)


def paper_point(params: Mapping[str, Any]) -> tuple[Value, ...] | None:
    """Where the paper's grid puts a trial: its values of :data:`PAPER_PARAMS` (None when it
    has several image sizes, which the paper's tables have no row for)."""
    if not all(k in params for k in PAPER_PARAMS):
        return None
    return tuple(params[k] for k in PAPER_PARAMS)


def check_value(name: str, value: Any, what: str | None = None) -> Value:
    """``value`` as parameter ``name`` holds it (an int given as 3.0 becomes 3, a float given
    as 1 becomes 1.0), or :class:`InvalidArgument` (``what`` leads its message)."""
    what = what or name
    if name not in PARAMS:
        raise InvalidArgument(f"unknown parameter {name!r} (allowed: {', '.join(PARAMS)})")
    kind = PARAMS[name]
    t = kind.type
    if t is bool or t is str:
        ok = isinstance(value, t)
    else:
        # any real number (NumPy's too) but a bool; an int kind takes only whole ones
        ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
        ok = ok and math.isfinite(value) and (t is float or float(value).is_integer())
    if not ok:
        raise InvalidArgument(f"{what} value {value!r} is not a valid {t.__name__}")
    typed: Value = t(value)
    if kind.limits is not None:
        lo, hi = kind.limits
        if not lo <= typed <= hi:  # type: ignore[operator]
            raise InvalidArgument(f"{what} value {value!r} must lie in [{lo:g}, {hi:g}]")
    allowed = kind.allowed or (_backbone_names() if name == "backbone" else None)
    if allowed is not None and typed not in allowed:
        raise InvalidArgument(f"{what}: {value!r} is not one of {', '.join(allowed)}")
    if name == "image_sizes":
        parse_sizes(str(typed), what)
    return typed


def trial_seed(seed: int, params: Mapping[str, Any]) -> int:
    """A seed from the study seed and the trial's parameters, not its number.

    A grid point run again (after a crash) starts from the same head and batch order.
    """
    blob = json.dumps({"seed": seed, "params": dict(params)}, sort_keys=True).encode()
    return int(hashlib.sha256(blob).hexdigest()[:8], 16)


@dataclass(frozen=True, kw_only=True)
class HeadParams:
    """A head and how to train it; the defaults (plus a learning rate and batch) are the paper's.

    ``hidden_layers`` Dense(``hidden_units``, relu) layers come before the logits; ``dropout``
    applies before every Dense after the first hidden one (on the features when there is none).
    ``weight_decay`` is decoupled (AdamW-style, kernels only) for every optimizer; ``sgd`` has
    momentum 0.9; ``cosine`` decays the learning rate to 0 over all steps of all epochs.
    ``normalize`` is applied to features before training, its statistics from train only.
    Every field is the trial parameter of that name, within :data:`PARAMS`'s limits.
    """

    hidden_layers: int = 0
    hidden_units: int = 512
    dropout: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    optimizer: str = "adam"
    learning_rate: float
    batch_size: int
    epochs: int = 2
    schedule: str = "constant"
    normalize: str = "none"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name), f"head: {f.name}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **defaults: Any) -> HeadParams:
        """The head a trial's parameters describe: its keys that are fields of HeadParams
        (others, such as ``image_size``, are ignored), over ``defaults`` (e.g. the study's
        ``epochs``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**(defaults | {k: v for k, v in params.items() if k in names}))


class StudyDefaults(Protocol):
    """What a trial takes from its study where its parameters say nothing
    (:class:`clothopt.config.StudyConfig` is one)."""

    @property
    def backbone(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def epochs(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class TrialSpec:
    """A trial's parameters, parsed and checked once: what its features and head are.

    ``items`` are the parameters as the trial recorded them (the paper's three first), from
    which :attr:`seed` is derived, so a trial trained again starts from the same head and
    batch order. ``head.epochs`` may differ from the trial's (finalize's ``--epochs``).
    """

    items: tuple[tuple[str, Value], ...]
    backbone: str
    image_sizes: tuple[int, ...]
    flip: bool = False
    tta: bool = False
    aug_views: int = 0
    head: HeadParams
    seed: int

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        *,
        backbone: str,
        study_seed: int,
        epochs: int,
        where: str = "the trial",
    ) -> TrialSpec:
        """Parse ``params`` (``trial.params``); ``backbone`` and ``epochs`` apply where they
        are not parameters; ``study_seed`` with the parameters gives the seed."""
        typed = {k: check_value(k, v, f"{where}: {k}") for k, v in params.items()}
        sizes = [k for k in (_SIZE, "image_sizes") if k in typed]
        if len(sizes) == 2:
            raise InvalidArgument(f"{where} sets both image_size and image_sizes")
        needed = [*(sizes or [_SIZE]), "batch_size", "learning_rate"]
        if missing := [k for k in needed if k not in typed]:
            raise InvalidArgument(f"{where} has no {missing[0]} parameter")
        # as recorded (the seed hashes these), the paper's three first (report.json's order)
        order = [
            *(k for k in PAPER_PARAMS if k in typed),
            *(k for k in typed if k not in PAPER_PARAMS),
        ]
        return cls(
            items=tuple((k, params[k]) for k in order),
            backbone=str(typed.get("backbone", backbone)),
            image_sizes=image_sizes(typed),
            flip=bool(typed.get("flip", False)),
            tta=bool(typed.get("tta", False)),
            aug_views=int(typed.get("aug_views", 0)),
            head=HeadParams.from_params(typed, epochs=epochs),
            seed=trial_seed(study_seed, params),
        )

    @classmethod
    def of(
        cls, params: Mapping[str, Any], study: StudyDefaults, *, where: str = "the trial"
    ) -> TrialSpec:
        """Parse ``params`` with ``study``'s backbone, seed and epochs as the defaults."""
        return cls.from_params(
            params,
            backbone=study.backbone,
            study_seed=study.seed,
            epochs=study.epochs,
            where=where,
        )

    def to_params(self) -> dict[str, Value]:
        """The trial's parameters (``from_params`` of them gives this spec again)."""
        return dict(self.items)

    def with_epochs(self, epochs: int) -> TrialSpec:
        """The same trial trained for ``epochs`` (its seed stays the trial's)."""
        return dataclasses.replace(self, head=dataclasses.replace(self.head, epochs=epochs))

    @property
    def is_paper(self) -> bool:
        """Only the paper's three parameters: the paper's model (no head of its own)."""
        return {k for k, _ in self.items} == set(PAPER_PARAMS)
