"""Sampler comparison: one study per sampler and seed over the same space, sharing features.

Every study is an ordinary clothopt study named ``cmp-<backbone>-<sampler>-s<seed>``, so an
interrupted comparison resumes where it stopped: a study that exists is checked (same
settings) and continued, not created again. All studies use one feature cache, so after the
first study has extracted each image size the rest cost head training only.

For each seed the full grid runs too (in a random order drawn from the seed): its best is the
target "within 0.5 points of the grid's best" that the report measures every sampler against.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothopt.errors import AlreadyExists, InvalidArgument, NotFound, UserError

if TYPE_CHECKING:
    import optuna

    from clothopt.config import StudyConfig
    from clothopt.engine import TrialCallback
    from clothopt.spaces import SearchSpace
    from clothopt.study import CreateHook

__all__ = [
    "DEFAULT_SAMPLERS",
    "Comparison",
    "max_aug_views",
    "parse_samplers",
    "run_comparison",
    "study_name",
]

DEFAULT_SAMPLERS = ("grid", "tpe", "random", "qmc", "gp")


def study_name(backbone: str, sampler: str, seed: int) -> str:
    return f"cmp-{backbone}-{sampler}-s{seed}"


def parse_samplers(text: str) -> list[str]:
    from clothopt.samplers import SAMPLERS

    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SAMPLERS]
    if unknown or not names:
        raise InvalidArgument(
            f"unknown sampler(s) {', '.join(unknown) or '(none given)'} "
            f"(choose from {', '.join(SAMPLERS)})"
        )
    return list(dict.fromkeys(names))


def max_aug_views(space: SearchSpace) -> int:
    """The most augmentation views (``aug_views``) a trial of ``space`` can draw: 0 without
    the parameter."""
    p = space.params.get("aug_views")
    if p is None:
        return 0
    if p.choices is not None:
        return max(int(v) for v in p.choices)
    return int(p.high or 0)


def _views_note(space: SearchSpace) -> str | None:
    """What augmentation views add to the comparison's feature extraction, said before it runs."""
    from clothopt.reports.samplers import VIEW_PASS_FACTOR
    from clothopt.spaces import image_sizes

    views = max_aug_views(space)
    if not views:
        return None
    sizes = sorted({s for p in _size_choices(space) for s in image_sizes(p)})
    shown = ", ".join(f"{s}px" for s in sizes) or "each image size"
    return (
        f"note: space {space.name!r} draws up to {views} augmentation view(s) a train image: "
        f"each view at each size ({shown}) is one more pass over the train split, about "
        f"{VIEW_PASS_FACTOR:g} x a plain pass, extracted once for all studies and counted in "
        "the report's seconds"
    )


def _size_choices(space: SearchSpace) -> list[dict[str, Any]]:
    """The space's image size choices as parameter dicts (what ``image_sizes`` reads)."""
    out: list[dict[str, Any]] = []
    for name in ("image_size", "image_sizes"):
        p = space.params.get(name)
        if p is not None and p.choices is not None:
            out += [{name: v} for v in p.choices]
    return out


@dataclass
class Comparison:
    backbone: str
    samplers: list[str]  # reported (requested and runnable)
    seeds: list[int]
    budget: int
    names: dict[tuple[str, int], str]  # (sampler, seed) -> study, the reference grid included
    skipped: dict[str, str] = field(default_factory=dict)  # sampler -> why


def _mismatch(
    cfg: StudyConfig,
    st: optuna.Study,
    want: dict[str, Any],
    space: SearchSpace,
    budget: int | None,
) -> list[str]:
    found = []
    for key, value in want.items():
        if getattr(cfg, key) != value:
            found.append(f"{key} {getattr(cfg, key)!r}, not {value!r}")
    if cfg.space.to_dict()["params"] != space.to_dict()["params"]:
        found.append("another search space")
    if budget is not None and cfg.space.n_trials != budget:
        found.append(f"budget {cfg.space.n_trials}, not {budget}")
    if cfg.sampler == "grid" and st.user_attrs.get("grid_order_seed") != cfg.seed:
        found.append("its grid is not in the seeded random order")
    return found


def run_comparison(
    *,
    backbone: str,
    samplers: Sequence[str],
    seeds: int,
    budget: int,
    space: str = "paper",
    storage: str | None = None,
    data: str = "data",
    weights: str = "imagenet",
    epochs: int | None = None,
    resize: str = "nearest",
    cache_dir: str | None = None,
    run: bool = True,
    progress: bool = True,
    command: str = "",
    log: Callable[[str], None] = print,
    on_create: CreateHook | None = None,
    callbacks: Sequence[TrialCallback] = (),
) -> Comparison:
    """Create (or resume) and run every study of the comparison; ``run=False`` only checks.

    ``on_create`` and ``callbacks`` go to ``study.create`` and ``study.optimize``.
    """
    from optuna.exceptions import ExperimentalWarning

    from clothopt.model.backbones import get_backbone
    from clothopt.spaces import load_space

    if seeds < 1 or budget < 1:
        raise InvalidArgument("--seeds and --budget must be at least 1")
    spec = get_backbone(backbone)
    space_obj = load_space(space)
    wanted = list(samplers)
    skipped: dict[str, str] = {}
    if "gp" in wanted and importlib.util.find_spec("torch") is None:
        skipped["gp"] = "needs PyTorch, which is not installed (pip install torch)"
    if "grid" in wanted and not space_obj.is_grid:
        skipped["grid"] = f"space {space_obj.name!r} has ranges, so it has no grid"
    for sampler, why in skipped.items():
        log(f"note: skipping sampler {sampler}: {why}")
    if note := _views_note(space_obj):
        log(note)
    shown = [s for s in wanted if s not in skipped]
    if not shown:
        raise InvalidArgument("no sampler left to compare")
    # the grid of every seed sets that seed's target, so it runs even when not reported
    order = (["grid"] if space_obj.is_grid else []) + [s for s in shown if s != "grid"]
    if weights not in ("imagenet", "none"):
        weights = str(Path(weights).expanduser().absolute())
    runner = _Runner(
        space=space,
        space_obj=space_obj,
        storage=storage,
        data=data,
        weights=weights,
        epochs=epochs,
        resize=resize,
        cache_dir=cache_dir,
        progress=progress,
        command=command,
        log=log,
        on_create=on_create,
        callbacks=callbacks,
    )
    names: dict[tuple[str, int], str] = {}
    with warnings.catch_warnings():
        # QMCSampler says it is experimental each time a study is built or loaded
        warnings.simplefilter("ignore", ExperimentalWarning)
        for seed in range(seeds):
            for sampler in order:
                name = study_name(spec.name, sampler, seed)
                names[(sampler, seed)] = name
                st, cfg = runner.study(name, spec.name, sampler, seed, budget, create=run)
                if run:
                    runner.optimize(st, cfg)
    return Comparison(spec.name, shown, list(range(seeds)), budget, names, skipped)


@dataclass
class _Runner:
    """What every study of one comparison shares: settings, data set and feature cache."""

    space: str
    space_obj: SearchSpace
    storage: str | None
    data: str
    weights: str
    epochs: int | None
    resize: str
    cache_dir: str | None
    progress: bool
    command: str
    log: Callable[[str], None]
    on_create: CreateHook | None = None
    callbacks: Sequence[TrialCallback] = ()
    datasets: dict[str, Any] = field(default_factory=dict)
    caches: dict[str, Any] = field(default_factory=dict)

    def study(
        self, name: str, backbone: str, sampler: str, seed: int, budget: int, create: bool
    ) -> tuple[optuna.Study, StudyConfig]:
        """The study, created now or found (then checked to have the same settings)."""
        from clothopt import study as study_mod

        budget_here = None if sampler == "grid" else budget  # the grid always runs in full
        missing = NotFound(f"study {name!r} does not exist: run the comparison first")
        try:
            existing = {r["name"] for r in study_mod.list_studies(self.storage, create=create)}
        except UserError:
            if create:
                raise
            raise missing from None  # no storage yet: nothing of the comparison has run
        if name not in existing:
            if not create:
                raise missing
            return study_mod.create(
                backbone=backbone,
                space=self.space,
                sampler=sampler,
                n_trials=budget_here,
                name=name,
                storage=self.storage,
                data=self.data,
                weights=self.weights,
                epochs=self.epochs,
                seed=seed,
                resize=self.resize,
                cache_dir=self.cache_dir,
                command=self.command,
                grid_order_seed=seed if sampler == "grid" else None,
                on_create=self.on_create,
            )
        st, cfg = study_mod.load(name, self.storage)
        want = {
            "backbone": backbone,
            "sampler": sampler,
            "seed": seed,
            "weights": self.weights,
            "resize": self.resize,
            "epochs": self.epochs or self.space_obj.epochs,
        }
        problems = _mismatch(cfg, st, want, self.space_obj, budget_here)
        if problems:
            raise AlreadyExists(
                f"study {name!r} exists with other settings ({'; '.join(problems)}): "
                f"delete it (clothopt study delete {name}) or compare with its settings"
            )
        return st, cfg

    def optimize(self, st: optuna.Study, cfg: StudyConfig) -> None:
        from clothopt import study as study_mod
        from clothopt.engine import storage_of
        from clothopt.objective import Objective
        from clothopt.runs import open_run

        # one data set per folder and one cache per folder: each size is extracted once
        dataset, cache = open_run(
            cfg,
            progress=self.progress,
            dataset=self.datasets.get(cfg.data),
            cache=self.caches.get(cfg.cache_dir),
            storage=storage_of(st),
        )
        self.datasets[cfg.data], self.caches[cfg.cache_dir] = dataset, cache
        summary = study_mod.optimize(
            st,
            cfg,
            Objective(cfg, dataset, cache),
            progress=self.progress,
            callbacks=self.callbacks,
        )
        if summary.ran:
            self.log(f"{cfg.name}: ran {summary.ran} trial(s) in {summary.seconds:.1f} s")
