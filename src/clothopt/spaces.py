"""Search spaces (from TOML) and the samplers that walk them.

A space names each parameter's values: a list is a categorical (and a grid axis), a table
``{low, high, log, step}`` a range. ``paper``, ``tpe`` and ``quick`` ship with clothopt; any
TOML file with the same keys defines another. Samplers are built with every argument explicit
and recorded, so a study says exactly how to rerun it.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothopt.errors import UserError

if TYPE_CHECKING:
    import optuna

__all__ = [
    "BUILTIN_SPACES",
    "PARAMS",
    "SAMPLERS",
    "Param",
    "SearchSpace",
    "load_space",
    "make_sampler",
    "sampler_args",
]

# What a trial may vary, and the type each value must have
PARAMS: Mapping[str, type] = {"image_size": int, "batch_size": int, "learning_rate": float}
_SPACE_KEYS = {"description", "sampler", "n_trials", "epochs", "params", "sampler_args"}
_RANGE_KEYS = {"low", "high", "log", "step"}
BUILTIN_SPACES = ("paper", "tpe", "quick")
SAMPLERS = ("grid", "tpe", "random", "qmc", "gp")


@dataclass(frozen=True)
class Param:
    name: str
    choices: tuple[int | float, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        from optuna import distributions as d

        if self.choices is not None:
            return d.CategoricalDistribution(self.choices)
        assert self.low is not None and self.high is not None
        if PARAMS[self.name] is int:
            return d.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def values_between(self, low: float, high: float) -> bool:
        vals = self.choices if self.choices is not None else (self.low, self.high)
        return all(low <= v <= high for v in vals if v is not None)

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class SearchSpace:
    name: str
    params: Mapping[str, Param]
    sampler: str = "grid"
    n_trials: int | None = None  # budget for samplers that are not the grid
    epochs: int = 2
    description: str = ""
    sampler_args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_grid(self) -> bool:
        return all(p.choices is not None for p in self.params.values())

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point, image size outermost so a run extracts each size once."""
        if not self.is_grid:
            raise UserError(f"space {self.name!r} has ranges, so it has no grid")
        names = list(self.params)
        axes = [self.params[n].choices or () for n in names]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]

    def budget(self) -> int:
        return len(self.grid()) if self.sampler == "grid" else int(self.n_trials or 0)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {n: p.distribution() for n, p in self.params.items()}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, p in self.params.items():
            if p.choices is not None:
                out[name] = trial.suggest_categorical(name, p.choices)
            elif PARAMS[name] is int:
                out[name] = trial.suggest_int(
                    name, int(p.low or 0), int(p.high or 0), log=p.log, step=int(p.step or 1)
                )
            else:
                out[name] = trial.suggest_float(
                    name, float(p.low or 0), float(p.high or 0), log=p.log, step=p.step
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "sampler": self.sampler,
            "n_trials": self.n_trials,
            "epochs": self.epochs,
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
            raise UserError(
                f"space {name!r}: unknown key(s) {', '.join(sorted(unknown))} "
                f"(allowed: {', '.join(sorted(_SPACE_KEYS))})"
            )
        raw = data.get("params")
        if not isinstance(raw, Mapping) or not raw:
            raise UserError(f"space {name!r} needs a [params] table")
        params = {pname: _parse_param(name, pname, spec) for pname, spec in raw.items()}
        missing = [p for p in PARAMS if p not in params]
        if missing:
            raise UserError(f"space {name!r} does not set {', '.join(missing)}")
        sampler = str(data.get("sampler", "grid"))
        if sampler not in SAMPLERS:
            raise UserError(
                f"space {name!r}: unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})"
            )
        space = cls(
            name=name,
            params=params,
            sampler=sampler,
            n_trials=_positive_int(name, "n_trials", data.get("n_trials")),
            epochs=_positive_int(name, "epochs", data.get("epochs", 2)) or 2,
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

    def validate(self) -> None:
        if self.sampler == "grid" and not self.is_grid:
            raise UserError(
                f"space {self.name!r}: the grid sampler needs a list of values for every parameter"
            )
        if self.sampler != "grid" and not self.n_trials:
            raise UserError(f"space {self.name!r}: sampler {self.sampler} needs n_trials")
        limits = {"image_size": (32, 2048), "batch_size": (1, 4096), "learning_rate": (1e-8, 10.0)}
        for pname, (lo, hi) in limits.items():
            if not self.params[pname].values_between(lo, hi):
                raise UserError(f"space {self.name!r}: {pname} values must lie in [{lo}, {hi}]")

    def min_image_size(self) -> int:
        p = self.params["image_size"]
        return int(min(p.choices) if p.choices is not None else (p.low or 0))


def _positive_int(space: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"space {space!r}: {key} must be a positive integer, not {value!r}")
    return value


def _parse_param(space: str, pname: str, spec: Any) -> Param:
    if pname not in PARAMS:
        raise UserError(
            f"space {space!r}: unknown parameter {pname!r} (allowed: {', '.join(PARAMS)})"
        )
    kind = PARAMS[pname]
    if isinstance(spec, Mapping) and set(spec) == {"choices"}:
        spec = spec["choices"]
    if isinstance(spec, list):
        if not spec:
            raise UserError(f"space {space!r}: {pname} has no values")
        values = tuple(_typed(space, pname, kind, v) for v in spec)
        if len(set(values)) != len(values):
            raise UserError(f"space {space!r}: {pname} lists a value twice")
        return Param(pname, choices=values)
    if isinstance(spec, Mapping):
        unknown = set(spec) - _RANGE_KEYS
        if unknown or not {"low", "high"} <= set(spec):
            raise UserError(
                f"space {space!r}: {pname} must be a list or {{low, high[, log][, step]}}"
            )
        low, high = (_typed(space, pname, kind, spec[k]) for k in ("low", "high"))
        if not low < high:
            raise UserError(f"space {space!r}: {pname} needs low < high")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise UserError(f"space {space!r}: {pname} on a log scale needs low > 0")
        step = spec.get("step")
        return Param(pname, low=low, high=high, log=log, step=None if step is None else float(step))
    raise UserError(f"space {space!r}: {pname} must be a list or a table")


def _typed(space: str, pname: str, kind: type, value: Any) -> int | float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int and not (ok and float(value).is_integer()):
        ok = False
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise UserError(f"space {space!r}: {pname} value {value!r} is not a valid {kind.__name__}")
    return kind(value)


def load_space(ref: str) -> SearchSpace:
    """A built-in space by name (``paper``, ``tpe``, ``quick``) or a TOML file by path."""
    if ref in BUILTIN_SPACES:
        text = resources.files("clothopt.space_files").joinpath(f"{ref}.toml").read_text()
        origin, name = f"built-in space {ref}", ref
    else:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise UserError(
                f"space {ref!r} is neither a built-in ({', '.join(BUILTIN_SPACES)}) nor a file"
            )
        text, origin, name = path.read_text(encoding="utf-8"), str(path), path.stem
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"bad TOML in {origin}: {exc}") from None
    return SearchSpace.from_dict(data, name)


def sampler_args(name: str, seed: int, space: SearchSpace) -> dict[str, Any]:
    """Every argument the sampler will be built with (seeded), to record and to rebuild it."""
    if name == "tpe":
        args: dict[str, Any] = {
            "n_startup_trials": 10,
            "n_ei_candidates": 24,
            "multivariate": True,
            "group": False,
            "constant_liar": True,  # several workers: running trials count as pessimistic results
        }
    elif name == "qmc":
        args = {"qmc_type": "sobol", "scramble": True}
    elif name == "gp":
        args = {"n_startup_trials": 10, "deterministic_objective": False}
    elif name in ("grid", "random"):
        args = {}
    else:
        raise UserError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    unknown = set(space.sampler_args) - set(args)
    if unknown:
        raise UserError(
            f"space {space.name!r}: sampler {name} has no argument(s) {', '.join(sorted(unknown))}"
        )
    return args | dict(space.sampler_args) | {"seed": seed}


def make_sampler(
    name: str, args: Mapping[str, Any], space: SearchSpace
) -> optuna.samplers.BaseSampler:
    import optuna

    samplers = optuna.samplers
    if name == "grid":
        grid = {n: list(p.choices or ()) for n, p in space.params.items()}
        return samplers.GridSampler(grid, seed=args["seed"])
    if name == "tpe":
        return samplers.TPESampler(**args)
    if name == "random":
        return samplers.RandomSampler(**args)
    if name == "qmc":
        return samplers.QMCSampler(**args, warn_independent_sampling=False)
    if name == "gp":
        try:
            import torch  # noqa: F401  (GPSampler needs PyTorch)
        except ImportError:
            raise UserError("the gp sampler needs PyTorch: pip install torch") from None
        return samplers.GPSampler(**args)
    raise UserError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
