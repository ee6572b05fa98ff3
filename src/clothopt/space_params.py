"""A search space's parameters: :class:`Param` (one parameter's values and condition), parsed
from a space's ``[params]`` table, ordered so conditions come first, and the configurations a
space lists as ``[[start]]`` checked against them. :mod:`clothopt.spaces` builds spaces of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clothopt.errors import InvalidArgument
from clothopt.trial_spec import PARAMS, ParamKind, Value, check_value

if TYPE_CHECKING:
    import optuna

__all__ = ["Param", "in_condition_order", "parse_param", "start_points"]

_TABLE_KEYS = {"low", "high", "log", "step", "choices", "when"}


def _fmt(v: Value) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


@dataclass(frozen=True)
class Param:
    """One parameter: a list of ``choices`` or a range; sampled only when ``when`` holds
    (every named earlier parameter has one of the listed values)."""

    name: str
    choices: tuple[Value, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: Mapping[str, tuple[Value, ...]] = field(default_factory=dict)

    @property
    def kind(self) -> ParamKind:
        return PARAMS[self.name]

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether the condition holds for the values sampled so far."""
        return all(n in values and values[n] in allowed for n, allowed in self.when.items())

    def distribution(self, grid: bool = False) -> optuna.distributions.BaseDistribution:
        """How optuna records the parameter; a log list in a grid study is a log float range,
        so plots draw it on a log axis (the grid's values arrive fixed from the queue)."""
        from optuna import distributions as d

        if self.choices is not None:
            if grid and self.log:
                nums = [float(v) for v in self.choices]  # type: ignore[arg-type]
                return d.FloatDistribution(min(nums), max(nums), log=True)
            return d.CategoricalDistribution(self.choices)
        assert self.low is not None and self.high is not None
        if self.kind.type is int:
            return d.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one the parameter can take (a choice; in the range, on its
        step; an integer for an integer parameter)."""
        if isinstance(value, bool) and self.kind.type is not bool:
            return False
        if self.choices is not None:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        if self.kind.type is int and not isinstance(value, int):
            return False
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high:
            return False
        if self.step:
            steps = (value - self.low) / self.step
            return abs(steps - round(steps)) < 1e-9
        return True

    def values_between(self, low: float, high: float) -> bool:
        vals = self.choices if self.choices is not None else (self.low, self.high)
        return all(low <= v <= high for v in vals if v is not None)  # type: ignore[operator]

    def describe(self) -> str:
        """The values in words, for the dashboard's note."""
        if self.choices is not None:
            out = ", ".join(_fmt(v) for v in self.choices)  # as before log lists existed
        else:
            out = f"{self.low:g} to {self.high:g}" + (" (log)" if self.log else "")
            out += f" step {self.step:g}" if self.step else ""
        if self.when:
            cond = "; ".join(
                f"{n} in {', '.join(_fmt(v) for v in vs)}" for n, vs in self.when.items()
            )
            out += f" when {cond}"
        return out

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            out: dict[str, Any] = {"choices": list(self.choices)}
            if self.log:
                out["log"] = True
        else:
            out = {"low": self.low, "high": self.high, "log": self.log}
            if self.step is not None:
                out["step"] = self.step
        if self.when:
            out["when"] = {n: list(v) for n, v in self.when.items()}
        return out


def parse_param(space: str, pname: str, spec: Any) -> Param:
    if pname not in PARAMS:
        raise InvalidArgument(
            f"space {space!r}: unknown parameter {pname!r} (allowed: {', '.join(PARAMS)})"
        )
    kind = PARAMS[pname]
    where = f"space {space!r}: {pname}"
    when: dict[str, tuple[Value, ...]] = {}
    log_given: bool | None = None
    if isinstance(spec, Mapping):
        unknown = set(spec) - _TABLE_KEYS
        if unknown:
            raise InvalidArgument(
                f"{where} has unknown key(s) {', '.join(sorted(unknown))} "
                f"(allowed: {', '.join(sorted(_TABLE_KEYS))})"
            )
        when = _parse_when(where, spec.get("when", {}))
        if "log" in spec:
            if not isinstance(spec["log"], bool):
                raise InvalidArgument(f"{where}: log must be true or false")
            log_given = spec["log"]
        if "choices" in spec:
            if set(spec) - {"choices", "log", "when"}:
                raise InvalidArgument(f"{where}: a table with choices takes only log and when")
            spec = spec["choices"]
    if not isinstance(spec, (list, Mapping)):
        spec = [spec]  # a single value: the parameter fixed
    if isinstance(spec, list):
        values = _choices(where, pname, spec)
        numeric = kind.type in (int, float)
        positive = numeric and all(v > 0 for v in values)  # type: ignore[operator]
        if log_given and not (kind.type is float and positive):
            raise InvalidArgument(f"{where}: log = true needs float values > 0")
        log = positive and kind.type is float and (kind.log if log_given is None else log_given)
        return Param(pname, choices=values, log=bool(log), when=when)
    if kind.type not in (int, float):
        raise InvalidArgument(f"{where} must be a list of values")
    if not {"low", "high"} <= set(spec):
        raise InvalidArgument(f"{where} must be a list or {{low, high[, log][, step][, when]}}")
    low, high = (check_value(pname, spec[k], where) for k in ("low", "high"))
    if not low < high:  # type: ignore[operator]
        raise InvalidArgument(f"{where} needs low < high")
    if log_given and low <= 0:  # type: ignore[operator]
        raise InvalidArgument(f"{where} on a log scale needs low > 0")
    log = kind.log and low > 0 if log_given is None else log_given  # type: ignore[operator]
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))):
        raise InvalidArgument(f"{where}: step must be a number")
    return Param(
        pname,
        low=low,  # type: ignore[arg-type]
        high=high,  # type: ignore[arg-type]
        log=bool(log),
        step=None if step is None else float(step),
        when=when,
    )


def _choices(where: str, pname: str, spec: list[Any]) -> tuple[Value, ...]:
    if not spec:
        raise InvalidArgument(f"{where} has no values")
    values = tuple(check_value(pname, v, where) for v in spec)
    if len(set(values)) != len(values):
        raise InvalidArgument(f"{where} lists a value twice")
    return values


def _parse_when(where: str, when: Any) -> dict[str, tuple[Value, ...]]:
    if not isinstance(when, Mapping):
        raise InvalidArgument(f"{where}: when must be a table {{parameter = [values]}}")
    out: dict[str, tuple[Value, ...]] = {}
    for cname, vals in when.items():
        vals = tuple(vals) if isinstance(vals, list) else (vals,)
        if not vals:
            raise InvalidArgument(f"{where}: when lists no values for {cname}")
        out[str(cname)] = vals
    return out


def in_condition_order(space: str, params: Mapping[str, Param]) -> dict[str, Param]:
    """The parameters with each condition's parameters before it (else as written): the order
    a trial samples them in. A stored config's keys come back sorted, so order is not trusted."""
    for p in params.values():
        where = f"space {space!r}: {p.name}"
        for cname, vals in p.when.items():
            cond = params.get(cname)
            if cond is None or cname == p.name:
                raise InvalidArgument(
                    f"{where}: when names {cname!r}, which is not another parameter"
                )
            if cond.choices is None:
                raise InvalidArgument(f"{where}: when needs {cname!r} to be a list of values")
            stray = [v for v in vals if v not in cond.choices]
            if stray:
                raise InvalidArgument(f"{where}: when lists {cname} values it cannot take: {stray}")
    ordered: dict[str, Param] = {}
    while len(ordered) < len(params):
        ready = [p for n, p in params.items() if n not in ordered and set(p.when) <= set(ordered)]
        if not ready:
            left = ", ".join(n for n in params if n not in ordered)
            raise InvalidArgument(f"space {space!r}: the conditions of {left} form a cycle")
        ordered[ready[0].name] = ready[0]
    return ordered


def start_points(
    space: str, raw: Any, params: Mapping[str, Param], sampler: str
) -> tuple[dict[str, Value], ...]:
    """The space's ``[[start]]`` configurations, each checked: every parameter that applies
    to it is set to a value the parameter can take, and no other."""
    if not isinstance(raw, list) or not all(isinstance(p, Mapping) for p in raw):
        raise InvalidArgument(f"space {space!r}: start must be a list of tables ([[start]])")
    if raw and sampler == "grid":
        raise InvalidArgument(f"space {space!r}: a grid tries every point; start needs a sampler")
    points = []
    for i, point in enumerate(raw, start=1):
        where = f"space {space!r}: start point {i}"
        unknown = set(point) - set(params)
        if unknown:
            raise InvalidArgument(f"{where} sets {', '.join(sorted(unknown))}, not in [params]")
        values: dict[str, Value] = {}
        for name, p in params.items():  # in condition order: `when` sees earlier values
            if not p.active(values):
                if name in point:
                    raise InvalidArgument(f"{where} sets {name}, which its other values exclude")
                continue
            if name not in point:
                raise InvalidArgument(f"{where} does not set {name}")
            if not p.contains(point[name]):
                raise InvalidArgument(
                    f"{where}: {name} = {point[name]!r} is not among its values ({p.describe()})"
                )
            values[name] = point[name]
        points.append(values)
    return tuple(points)
