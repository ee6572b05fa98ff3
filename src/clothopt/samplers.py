"""The samplers that walk a search space, built with every argument explicit and recorded.

A study stores ``sampler_args(name, seed, space)``, so it says exactly how to rerun it;
``make_sampler`` builds the optuna sampler from that record again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from clothopt.errors import InvalidArgument

if TYPE_CHECKING:
    import optuna

__all__ = ["SAMPLERS", "make_sampler", "sampler_args"]

SAMPLERS = ("grid", "tpe", "random", "qmc", "gp", "cmaes")


class _Axis(Protocol):
    @property
    def choices(self) -> Sequence[Any] | None: ...


class SearchSpace(Protocol):
    """What a sampler needs of a :class:`clothopt.spaces.SearchSpace` (which imports this
    module: a protocol, not an import, keeps the two free of a cycle)."""

    @property
    def name(self) -> str: ...
    @property
    def params(self) -> Mapping[str, _Axis]: ...
    @property
    def sampler_args(self) -> Mapping[str, Any]: ...


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
    elif name == "cmaes":
        args = {"n_startup_trials": 1, "consider_pruned_trials": False}
    elif name in ("grid", "random"):
        args = {}
    else:
        raise InvalidArgument(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    unknown = set(space.sampler_args) - set(args)
    if unknown:
        raise InvalidArgument(
            f"space {space.name!r}: sampler {name} has no argument(s) {', '.join(sorted(unknown))}"
        )
    return args | dict(space.sampler_args) | {"seed": seed}


def make_sampler(
    name: str, args: Mapping[str, Any], space: SearchSpace
) -> optuna.samplers.BaseSampler:
    import warnings

    import optuna

    with warnings.catch_warnings():
        # arguments such as TPE's group are flagged experimental: the user chose them knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _make(name, args, space)


def _make(name: str, args: Mapping[str, Any], space: SearchSpace) -> optuna.samplers.BaseSampler:
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
    if name == "cmaes":
        # categoricals (optimizer, flip...) fall back to independent sampling, as intended
        return samplers.CmaEsSampler(**args, warn_independent_sampling=False)
    if name == "gp":
        try:
            import torch  # noqa: F401  (GPSampler needs PyTorch)
        except ImportError:
            raise InvalidArgument("the gp sampler needs PyTorch: pip install torch") from None
        return samplers.GPSampler(**args)
    raise InvalidArgument(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
