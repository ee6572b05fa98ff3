"""Search spaces (from TOML); the samplers that walk them are in ``clothopt.samplers``.

A space names each parameter's values: a list is a categorical (and a grid axis), a table
``{low, high, log, step}`` a range. ``paper``, ``tpe`` and ``quick`` ship with clothopt; any
TOML file with the same keys defines another. What each parameter means and its limits:
:mod:`clothopt.trial_spec` (re-exported here: ``PARAMS``, ``PAPER_PARAMS``, ``image_sizes``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothopt.errors import InvalidArgument, NotFound
from clothopt.samplers import SAMPLERS
from clothopt.space_params import Param, in_condition_order, parse_param, start_points
from clothopt.trial_spec import PAPER_PARAMS, PARAMS, ParamKind, Value, image_sizes

if TYPE_CHECKING:
    import optuna

__all__ = [
    "BUILTIN_SPACES",
    "PAPER_PARAMS",
    "PARAMS",
    "Param",
    "ParamKind",
    "SearchSpace",
    "image_sizes",
    "load_space",
]

_SPACE_KEYS = {
    "description",
    "sampler",
    "n_trials",
    "epochs",
    "repeats",
    "folds",
    "blend",
    "start",
    "params",
    "sampler_args",
}
MAX_REPEATS = 100
MAX_FOLDS = 20
MAX_BLEND = 100
BUILTIN_SPACES = ("paper", "tpe", "quick", "wide")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    params: Mapping[str, Param]
    sampler: str = "grid"
    n_trials: int | None = None  # budget for samplers that are not the grid
    epochs: int = 2
    # How a trial estimates its configuration (issue 20): ``repeats`` fits with their own seeds;
    # ``folds`` K >= 2 trains on K stratified folds of train + validation (0: the split as given)
    repeats: int = 1
    folds: int = 0
    # finalize ships a blend of the race's ``blend`` best configurations (0: the pick alone)
    blend: int = 0
    # configurations every study of the space tries first (enqueued at creation; a warm start
    # for the sampler), each a full set of the space's parameters
    start: tuple[Mapping[str, Value], ...] = ()
    description: str = ""
    sampler_args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def single_fit(self) -> bool:
        """A trial is one fit on train scored on validation (the paper's protocol); else it
        estimates its configuration over repeats and/or folds, and finalize ships an ensemble."""
        return self.repeats == 1 and not self.folds

    @property
    def is_grid(self) -> bool:
        return all(p.choices is not None for p in self.params.values())

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point, image size outermost so a run extracts each size once.

        A conditional parameter is expanded only where its condition holds (absent elsewhere).
        """
        if not self.is_grid:
            raise InvalidArgument(f"space {self.name!r} has ranges, so it has no grid")
        points: list[dict[str, Any]] = [{}]
        for name, p in self.params.items():
            grown: list[dict[str, Any]] = []
            for pt in points:
                if p.active(pt):
                    grown += [pt | {name: v} for v in p.choices or ()]
                else:
                    grown.append(pt)
            points = grown
        return points

    def budget(self) -> int:
        return len(self.grid()) if self.sampler == "grid" else int(self.n_trials or 0)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        grid = self.sampler == "grid"
        return {n: p.distribution(grid) for n, p in self.params.items()}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's parameters, define-by-run: a conditional one only when it applies."""
        from optuna.distributions import FloatDistribution

        out: dict[str, Any] = {}
        grid = self.sampler == "grid"
        for name, p in self.params.items():
            if not p.active(out):
                continue
            if p.choices is not None and not (grid and p.log):
                out[name] = trial.suggest_categorical(name, p.choices)  # type: ignore[arg-type]
                continue
            dist = p.distribution(grid)
            if p.kind.type is int:
                out[name] = trial.suggest_int(
                    name, int(p.low or 0), int(p.high or 0), log=p.log, step=int(p.step or 1)
                )
            else:
                assert isinstance(dist, FloatDistribution)
                out[name] = trial.suggest_float(
                    name, dist.low, dist.high, log=dist.log, step=dist.step
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "sampler": self.sampler,
            "n_trials": self.n_trials,
            "epochs": self.epochs,
            # only when set, so the record of a space without them stays as it was
            **({"repeats": self.repeats} if self.repeats != 1 else {}),
            **({"folds": self.folds} if self.folds else {}),
            **({"blend": self.blend} if self.blend else {}),
            **({"start": [dict(p) for p in self.start]} if self.start else {}),
            "params": {n: p.to_dict() for n, p in self.params.items()},
            "sampler_args": dict(self.sampler_args),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> SearchSpace:
        data = dict(data)
        name = name or str(data.pop("name", "custom"))
        data.pop("name", None)
        unknown = set(data) - _SPACE_KEYS
        if unknown:
            raise InvalidArgument(
                f"space {name!r}: unknown key(s) {', '.join(sorted(unknown))} "
                f"(allowed: {', '.join(sorted(_SPACE_KEYS))})"
            )
        raw = data.get("params")
        if not isinstance(raw, Mapping) or not raw:
            raise InvalidArgument(f"space {name!r} needs a [params] table")
        params = in_condition_order(
            name, {pname: parse_param(name, pname, spec) for pname, spec in raw.items()}
        )
        sizes = [p for p in ("image_size", "image_sizes") if p in params]
        if len(sizes) == 2:
            raise InvalidArgument(f"space {name!r} sets both image_size and image_sizes: pick one")
        missing = [p for p in PAPER_PARAMS if p not in params and (p != "image_size" or not sizes)]
        if missing:
            raise InvalidArgument(f"space {name!r} does not set {', '.join(missing)}")
        for req in [*sizes, "batch_size", "learning_rate"]:
            if params[req].when:
                raise InvalidArgument(
                    f"space {name!r}: {req} is required, so it cannot have 'when'"
                )
        sampler = str(data.get("sampler", "grid"))
        if sampler not in SAMPLERS:
            raise InvalidArgument(
                f"space {name!r}: unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})"
            )
        space = cls(
            name=name,
            params=params,
            sampler=sampler,
            n_trials=_positive_int(name, "n_trials", data.get("n_trials")),
            epochs=_positive_int(name, "epochs", data.get("epochs", 2)) or 2,
            repeats=_bounded_int(name, "repeats", data.get("repeats", 1), 1, MAX_REPEATS),
            folds=_folds(name, data.get("folds", 0)),
            blend=_blend(name, data.get("blend", 0), data),
            start=start_points(name, data.get("start", []), params, sampler),
            description=str(data.get("description", "")),
            sampler_args=dict(data.get("sampler_args", {})),
        )
        space.validate()
        return space

    def with_sampler(self, sampler: str | None, n_trials: int | None = None) -> SearchSpace:
        """The same space walked by another sampler (and budget)."""
        if sampler is None and n_trials is None:
            return self
        data = self.to_dict()
        if sampler is not None:
            data["sampler"] = sampler
            if sampler != self.sampler:
                data["sampler_args"] = {}
        if n_trials is not None:
            data["n_trials"] = n_trials
        elif data["sampler"] != "grid" and not data["n_trials"]:
            data["n_trials"] = len(self.grid()) if self.is_grid else 27
        return SearchSpace.from_dict(data, self.name)

    def with_param(self, name: str, values: Sequence[Value]) -> SearchSpace:
        """The space with ``name`` a list of ``values`` (first, so it is the outermost axis)."""
        data = self.to_dict()
        data["params"] = {name: list(values)} | {
            k: v for k, v in data["params"].items() if k != name
        }
        return SearchSpace.from_dict(data, self.name)

    def validate(self) -> None:
        if self.sampler == "grid" and not self.is_grid:
            raise InvalidArgument(
                f"space {self.name!r}: the grid sampler needs a list of values for every parameter"
            )
        if self.sampler != "grid" and not self.n_trials:
            raise InvalidArgument(f"space {self.name!r}: sampler {self.sampler} needs n_trials")

    def min_image_size(self) -> int:
        if "image_sizes" in self.params:
            choices = self.params["image_sizes"].choices or ()
            return min(min(image_sizes({"image_sizes": c})) for c in choices)
        p = self.params["image_size"]
        return int(min(p.choices) if p.choices is not None else (p.low or 0))  # type: ignore[type-var]

    def listed_sizes(self) -> list[int]:
        """Every image size a trial's features can come from, sorted, where the space lists
        them (a range of sizes: none)."""
        p = self.params.get("image_sizes") or self.params.get("image_size")
        name = "image_sizes" if "image_sizes" in self.params else "image_size"
        choices = p.choices if p is not None and p.choices is not None else ()
        return sorted({s for c in choices for s in image_sizes({name: c})})

    def backbones(self) -> tuple[str, ...]:
        """The backbones the space's ``backbone`` parameter names (none: the study's)."""
        p = self.params.get("backbone")
        return tuple(str(v) for v in p.choices or ()) if p is not None else ()

    def is_paper_head(self) -> bool:
        """Whether every trial is the paper's head (all the end-to-end path can train)."""
        return set(self.params) <= set(PAPER_PARAMS)


def _bounded_int(space: str, key: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgument(
            f"space {space!r}: {key} must be an integer in [{low}, {high}], not {value!r}"
        )
    return value


def _folds(space: str, value: Any) -> int:
    """0 (train on train, score on validation) or a number of folds in [2, MAX_FOLDS]."""
    if value == 0 and not isinstance(value, bool):
        return 0
    return _bounded_int(space, "folds", value, 2, MAX_FOLDS)


def _blend(space: str, value: Any, data: Mapping[str, Any]) -> int:
    """0 (finalize ships the raced pick) or how many raced configurations it blends (>= 2);
    the blend weighs them out of fold, so the space must set folds or repeats."""
    if value == 0 and not isinstance(value, bool):
        return 0
    blend = _bounded_int(space, "blend", value, 2, MAX_BLEND)
    if not data.get("folds") and data.get("repeats", 1) == 1:
        raise InvalidArgument(
            f"space {space!r}: blend weighs configurations out of fold: set folds or repeats too"
        )
    return blend


def _positive_int(space: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument(f"space {space!r}: {key} must be a positive integer, not {value!r}")
    return value


def load_space(ref: str) -> SearchSpace:
    """A built-in space by name (``paper``, ``tpe``, ``quick``, ``wide``) or a TOML file."""
    if ref in BUILTIN_SPACES:
        text = resources.files("clothopt.space_files").joinpath(f"{ref}.toml").read_text()
        origin, name = f"built-in space {ref}", ref
    else:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise NotFound(
                f"space {ref!r} is neither a built-in ({', '.join(BUILTIN_SPACES)}) nor a file"
            )
        text, origin, name = path.read_text(encoding="utf-8"), str(path), path.stem
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"bad TOML in {origin}: {exc}") from None
    return SearchSpace.from_dict(data, name)
