"""Which sampler to search with: best-so-far curves over trials and seconds, over seeds.

Per sampler: the best validation macro-F1 after each trial (mean and spread over seeds), the
trials and seconds until it first comes within 0.5 points of the grid's best, and its final
best. Markdown, CSV files, ``comparison.json`` (how to rerun it) and one self-contained HTML
page. Numbers are percentages (F1 x 100).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt._io import atomic_write_json
from clothopt.errors import UserError
from clothopt.reports.paper import GRID_KEYS
from clothopt.reports.render import Report, html_page, write_outputs
from clothopt.reports.sampler_figures import sampler_figures
from clothopt.reports.sampler_noise import PAIRWISE_COLUMNS, sampler_differences
from clothopt.reports.sampler_pages import (
    CURVE_COLUMNS,
    PER_SEED_COLUMNS,
    SUMMARY_COLUMNS,
    sampler_html_blocks,
    sampler_markdown,
)
from clothopt.reports.stats import (
    TOLERANCE,
    best_so_far,
    first_within,
    mean_or_none,
    pct,
    sd_or_none,
)

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from clothopt.config import StudyConfig

__all__ = ["VIEW_PASS_FACTOR", "SamplerRun", "load_sampler_runs", "sampler_report"]

# An augmentation view's pass over the train split costs about twice a plain one (the warp and
# jitter beside the forward pass: README's augment_views figures, benchmarks/augment_views.py);
# used where the cache holds no record of a view's own extraction.
VIEW_PASS_FACTOR = 2.0


@dataclass
class SamplerRun:
    """One sampler comparison study: its completed trials in the order they ran."""

    sampler: str
    seed: int
    name: str
    config: StudyConfig
    trials: list[FrozenTrial]  # COMPLETE, by trial number
    grid_order_seed: int | None = None

    @property
    def values(self) -> list[float]:
        return [float(t.value) for t in self.trials if t.value is not None]

    @property
    def head_seconds(self) -> list[float]:
        return [float(t.user_attrs.get("train_seconds", 0.0)) for t in self.trials]


def load_sampler_runs(names: Sequence[str], storage: str | None) -> list[SamplerRun]:
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    from clothopt import study as study_mod

    runs = []
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # QMCSampler's, on every load
            st, cfg = study_mod.load(name, storage)
        trials = sorted(
            st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number
        )
        runs.append(
            SamplerRun(
                cfg.sampler, cfg.seed, name, cfg, trials, st.user_attrs.get("grid_order_seed")
            )
        )
    return runs


class _ExtractionCosts:
    """Seconds to extract train + validation features at an image size, for one study's setup;
    for augmentation view ``view`` (>= 1) the train split's only (views are training rows).

    From the feature cache's own record (what computing the entry cost, whoever did it); else
    from the trials that computed it (a plain pass), or for a view :data:`VIEW_PASS_FACTOR` x
    the plain train split's (then the report says so); else 0 (then the report says so).
    """

    def __init__(self, runs: Sequence[SamplerRun]) -> None:
        self._runs = runs
        self._datasets: dict[str, Any] = {}
        self._memo: dict[tuple[Any, ...], float | None] = {}
        self.missing: set[int] = set()
        self.views_by_factor: set[int] = set()  # sizes whose view cost is the factor's

    def _setup(self, cfg: StudyConfig) -> tuple[Any, ...]:
        weights = cfg.weights if cfg.weights != "none" else f"none-{cfg.seed}"
        return (cfg.backbone, weights, cfg.resize, cfg.data_fingerprint, cfg.cache_dir)

    def __call__(self, cfg: StudyConfig, size: int, flip: bool = False, view: int = 0) -> float:
        key = (*self._setup(cfg), size, flip, view)
        if key not in self._memo:
            if view:
                self._memo[key] = self._view(cfg, size, view)
            else:
                self._memo[key] = self._from_cache(cfg, size, flip)
                if self._memo[key] is None and not flip:
                    self._memo[key] = self._from_trials(cfg, size)
        value = self._memo[key]
        if value is None:
            self.missing.add(size)
        return value or 0.0

    def _view(self, cfg: StudyConfig, size: int, view: int) -> float | None:
        """View ``view`` of the train split: its own record, else the factor x the plain
        train split's record, else x the plain cost however known (train + validation: high
        by validation's share)."""
        recorded = self._from_cache(cfg, size, view=view, splits=("train",))
        if recorded is not None:
            return recorded
        plain = self._from_cache(cfg, size, splits=("train",))
        if plain is None:
            plain = self(cfg, size) or None
        if plain is None:
            return None
        self.views_by_factor.add(size)
        return VIEW_PASS_FACTOR * plain

    def _from_cache(
        self,
        cfg: StudyConfig,
        size: int,
        flip: bool = False,
        view: int = 0,
        splits: Sequence[str] = ("train", "validation"),
    ) -> float | None:
        from clothopt.data import open_dataset
        from clothopt.features import FeatureCache
        from clothopt.model.backbones import get_backbone

        try:
            if cfg.data not in self._datasets:
                self._datasets[cfg.data] = open_dataset(cfg.data, ("train", "validation"))
            ds = self._datasets[cfg.data]
            cache, spec = FeatureCache(cfg.cache_dir), get_backbone(cfg.backbone)
            total = 0.0
            for split in splits:
                split_ = ds[split]
                key = cache.key(
                    spec, cfg.weights, cfg.seed, size, cfg.resize, split_, flip=flip, view=view
                )
                path = cache.path(key)
                if path is None:
                    return None
                total += float(json.loads(path.with_suffix(".json").read_text())["extract_seconds"])
            return total
        except (UserError, OSError, ValueError, KeyError):
            return None

    def _from_trials(self, cfg: StudyConfig, size: int) -> float | None:
        setup = self._setup(cfg)
        seen = [
            float(t.user_attrs.get("extract_seconds", 0.0))
            for r in self._runs
            if self._setup(r.config) == setup
            for t in r.trials
            # a trial's record holds all it extracted: one plain size, no views beside it
            if t.params.get("image_size") == size and not t.params.get("aug_views")
        ]
        return max(seen) if seen and max(seen) > 0 else None


def _standalone_seconds(run: SamplerRun, costs: Callable[..., float]) -> list[float]:
    """Each trial's head training, plus the extraction of the features (each size, plain,
    mirrored or augmentation view 1..``aug_views``) that the study's trials needed first."""
    from clothopt.spaces import image_sizes

    seen: set[tuple[int, bool, int]] = set()
    out = []
    for t in run.trials:
        mirrored = bool(t.params.get("flip") or t.params.get("tta"))
        kinds = {(flip, 0) for flip in {False, mirrored}}
        kinds |= {(False, v) for v in range(1, int(t.params.get("aug_views", 0)) + 1)}
        needs = {(int(size), *kind) for size in image_sizes(t.params) for kind in kinds}
        extra = sum(costs(run.config, *need) for need in sorted(needs - seen))
        seen |= needs
        out.append(float(t.user_attrs.get("train_seconds", 0.0)) + extra)
    return out


def _targets(runs: Sequence[SamplerRun]) -> tuple[dict[int, float], str]:
    """Per seed: the best validation F1 of that seed's full grid (else of any study)."""
    grid = {r.seed: r for r in runs if r.sampler == "grid"}
    targets, how = {}, "grid"
    for seed in sorted({r.seed for r in runs}):
        ref = grid.get(seed)
        if ref is not None and ref.values and ref.config.space.is_grid:
            done = {tuple(t.params[k] for k in GRID_KEYS) for t in ref.trials}
            if len(done) < len(ref.config.space.grid()):
                how = "grid (incomplete)"
            targets[seed] = max(ref.values)
        else:
            values = [v for r in runs if r.seed == seed for v in r.values]
            if values:
                targets[seed] = max(values)
                how = "any"
    return targets, how


def sampler_report(
    runs: Sequence[SamplerRun],
    budget: int,
    out: Path,
    samplers: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Report:
    """Best-so-far curves, trials and seconds to the grid's best, final bests; over seeds.

    ``runs`` holds every study of the comparison (the grid ones too: they set each seed's
    target); ``samplers`` says which to report (default: all).
    """
    samplers = list(samplers or dict.fromkeys(r.sampler for r in runs))
    targets, target_how = _targets(runs)
    costs = _ExtractionCosts(runs)
    per_seed: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    by_sampler: dict[str, list[dict[str, Any]]] = {s: [] for s in samplers}
    notes: list[str] = []
    for run in runs:
        if run.sampler not in by_sampler:
            continue
        n = min(budget, len(run.trials))
        if n < budget:
            notes.append(f"study {run.name} has {n} of {budget} trials complete")
        row, private, run_curve = _run_rows(run, n, targets.get(run.seed), costs)
        per_seed.append(row)
        by_sampler[run.sampler].append(row | private)
        curves += run_curve
    if costs.missing:
        notes.append(
            "no record of the feature extraction cost at "
            + ", ".join(f"{s}px" for s in sorted(costs.missing))
            + ": counted as 0 s"
        )
    if costs.views_by_factor:
        notes.append(
            "no record of the augmentation views' extraction at "
            + ", ".join(f"{s}px" for s in sorted(costs.views_by_factor))
            + f": each view counted as {VIEW_PASS_FACTOR:g} x a plain pass of the train split"
        )
    summary, mean_curves = [], []
    for sampler in samplers:
        rows = by_sampler[sampler]
        if not rows:
            continue
        summary.append(_summary_row(sampler, rows))
        mean_curves += _mean_curve(sampler, rows)
    trials = [t for r in runs if r.sampler in by_sampler for t in r.trials[:budget]]
    differences = sampler_differences(by_sampler, trials, budget)
    record = _rerun_record(runs, budget, samplers, targets, target_how, differences, meta)
    atomic_write_json(out / "comparison.json", record)
    markdown = sampler_markdown(summary, per_seed, mean_curves, samplers, record, notes)
    figs = sampler_figures(by_sampler, samplers, targets, budget, target_how)
    title = f"Sampler comparison: {record['backbone']}"
    files = write_outputs(
        out,
        markdown,
        html_page(title, sampler_html_blocks(notes, record, summary, figs, per_seed)),
        {
            "samplers_summary": (summary, SUMMARY_COLUMNS),
            "samplers_per_seed": (per_seed, PER_SEED_COLUMNS),
            "samplers_pairwise": (record["pairwise"], PAIRWISE_COLUMNS),
            "best_so_far": (curves, CURVE_COLUMNS),
            "best_so_far_mean": (
                mean_curves,
                ["sampler", "trial", "seeds", "mean", "sd", "min", "max"],
            ),
        },
    )
    return Report(markdown, [*files, out / "comparison.json"], notes)


def _run_rows(
    run: SamplerRun, n: int, target: float | None, costs: _ExtractionCosts
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """One study's first ``n`` trials: its per-seed row, the curves the summary and figures
    read (keys with a leading ``_``), and its best-so-far rows, one per trial."""
    values = run.values[:n]
    best = best_so_far(values)
    secs = np.cumsum(_standalone_seconds(run, costs)[:n])
    head = np.cumsum(run.head_seconds[:n])
    hit = None if target is None else first_within(best, target)
    row = {
        "sampler": run.sampler,
        "seed": run.seed,
        "study": run.name,
        "trials": n,
        "distinct_points": len({tuple(sorted(t.params.items())) for t in run.trials[:n]}),
        "target": pct(target),
        "final_best": pct(best[-1]) if n else None,
        "trials_to_target": hit,
        "seconds_to_target": None if hit is None else float(secs[hit - 1]),
        "head_seconds_to_target": None if hit is None else float(head[hit - 1]),
        "seconds": float(secs[-1]) if n else None,
        "head_seconds": float(head[-1]) if n else None,
    }
    curve = [
        {
            "sampler": run.sampler,
            "seed": run.seed,
            "trial": k + 1,
            "number": run.trials[k].number,
            **{p: run.trials[k].params.get(p) for p in GRID_KEYS},
            "value": pct(values[k]),
            "best_so_far": pct(best[k]),
            "seconds": float(secs[k]),
            "head_seconds": float(head[k]),
        }
        for k in range(n)
    ]
    return row, {"_best": best, "_secs": secs, "_run": run}, curve


def _summary_row(sampler: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One sampler over its seeds: final bests, how many seeds reached the target and when."""
    finals = [r["final_best"] for r in rows if r["final_best"] is not None]
    reached = [r for r in rows if r["trials_to_target"] is not None]
    return {
        "sampler": sampler,
        "seeds": len(rows),
        "final_best_mean": mean_or_none(finals),
        "final_best_sd": sd_or_none(finals),
        "final_best_min": min(finals, default=None),
        "final_best_max": max(finals, default=None),
        "reached": f"{len(reached)}/{len(rows)}",
        "trials_to_target_mean": mean_or_none([r["trials_to_target"] for r in reached]),
        "trials_to_target_per_seed": " ".join(str(r["trials_to_target"] or "-") for r in rows),
        "seconds_to_target_mean": mean_or_none([r["seconds_to_target"] for r in reached]),
        "head_seconds_to_target_mean": mean_or_none([r["head_seconds_to_target"] for r in reached]),
        "distinct_points_mean": mean_or_none([r["distinct_points"] for r in rows]),
        "seconds_mean": mean_or_none([r["seconds"] for r in rows if r["seconds"] is not None]),
    }


def _mean_curve(sampler: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One sampler's best-so-far after each trial, over the seeds that got that far."""
    out = []
    length = max(len(r["_best"]) for r in rows)
    for k in range(length):
        vals = [100 * float(r["_best"][k]) for r in rows if k < len(r["_best"])]
        out.append(
            {
                "sampler": sampler,
                "trial": k + 1,
                "seeds": len(vals),
                "mean": mean_or_none(vals),
                "sd": sd_or_none(vals),
                "min": min(vals),
                "max": max(vals),
            }
        )
    return out


def _rerun_record(
    runs: Sequence[SamplerRun],
    budget: int,
    samplers: Sequence[str],
    targets: Mapping[int, float],
    target_how: str,
    differences: Mapping[str, Any],
    meta: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``comparison.json``: the settings a reader needs to rerun the comparison."""
    import optuna

    versions = sorted({r.config.versions.get("optuna", "?") for r in runs})
    sampler_args = {
        s: {r.name: dict(r.config.sampler_args) for r in runs if r.sampler == s} for s in samplers
    }
    first = runs[0].config if runs else None
    return {
        "budget": budget,
        "samplers": list(samplers),
        "seeds": sorted({r.seed for r in runs}),
        "studies": [r.name for r in runs],
        "optuna_versions_of_studies": versions,
        "optuna_version_of_report": optuna.__version__,
        "sampler_args": sampler_args,
        "grid_order_seeds": {r.name: r.grid_order_seed for r in runs if r.sampler == "grid"},
        "space": None if first is None else first.space.to_dict(),
        "backbone": None if first is None else first.backbone,
        "weights": None if first is None else first.weights,
        "epochs": None if first is None else first.epochs,
        "data": None if first is None else first.data,
        "data_fingerprint": None if first is None else first.data_fingerprint,
        "targets": {str(k): v for k, v in targets.items()},
        "target": target_how,
        "tolerance": TOLERANCE,
        **differences,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **dict(meta or {}),
    }
