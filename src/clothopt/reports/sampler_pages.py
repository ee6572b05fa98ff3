"""The sampler comparison's pages: its Markdown and the body of its HTML page, their columns.

:mod:`clothopt.reports.samplers` computes the rows; this module only lays them out.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from clothopt.reports.paper import GRID_KEYS
from clothopt.reports.render import figure_html, html_table, markdown_table, text_to_html
from clothopt.reports.sampler_noise import pairwise_section

__all__ = [
    "CURVE_COLUMNS",
    "PER_SEED_COLUMNS",
    "SUMMARY_COLUMNS",
    "sampler_html_blocks",
    "sampler_markdown",
]

SUMMARY_COLUMNS = [
    "sampler",
    "seeds",
    "final_best_mean",
    "final_best_sd",
    "final_best_min",
    "final_best_max",
    "reached",
    "trials_to_target_mean",
    "trials_to_target_per_seed",
    "seconds_to_target_mean",
    "head_seconds_to_target_mean",
    "distinct_points_mean",
    "seconds_mean",
]
PER_SEED_COLUMNS = [
    "sampler",
    "seed",
    "study",
    "trials",
    "distinct_points",
    "target",
    "final_best",
    "trials_to_target",
    "seconds_to_target",
    "head_seconds_to_target",
    "seconds",
    "head_seconds",
]
CURVE_COLUMNS = [
    "sampler",
    "seed",
    "trial",
    "number",
    *GRID_KEYS,
    "value",
    "best_so_far",
    "seconds",
    "head_seconds",
]
_SUMMARY_DIGITS = {
    "trials_to_target_mean": 1,
    "seconds_to_target_mean": 1,
    "head_seconds_to_target_mean": 1,
    "distinct_points_mean": 1,
    "seconds_mean": 1,
    "seconds_to_target": 1,
    "head_seconds_to_target": 1,
    "seconds": 1,
    "head_seconds": 1,
}


def _definitions(record: Mapping[str, Any]) -> str:
    target = {
        "grid": "the best validation macro-F1 of the full grid with the same seed",
        "grid (incomplete)": "the best of the grid study with the same seed, which is not "
        "complete yet",
        "any": "the best validation macro-F1 any study with the same seed found (the space "
        "has no grid)",
    }[record["target"]]
    return (
        f"Budget {record['budget']} trials per study; F1 in %. Target: per seed, {target} (a "
        "seed fixes each point's head initialisation and batch order, so every sampler of that "
        "seed scores a point exactly as the grid does). Reached: best-so-far within "
        f"{100 * record['tolerance']:.1f} points of the target. Seconds: head training of each "
        "trial plus feature extraction of an image size charged once, at the study's first "
        "trial of that size (what the study costs alone on an empty feature cache); head "
        "seconds: head training only. The grid sampler walks the grid in a random order drawn "
        "from its seed. Spread: sample standard deviation (sd) and min-max over seeds."
    )


def sampler_markdown(
    summary: list[dict[str, Any]],
    per_seed: list[dict[str, Any]],
    mean_curves: list[dict[str, Any]],
    samplers: Sequence[str],
    record: Mapping[str, Any],
    notes: Sequence[str],
) -> str:
    # best-so-far after each trial, one column per sampler: "mean ± sd"
    by_trial: dict[int, dict[str, Any]] = {}
    for c in mean_curves:
        text = f"{c['mean']:.2f}" + (f" ± {c['sd']:.2f}" if c["sd"] is not None else "")
        by_trial.setdefault(c["trial"], {"trial": c["trial"]})[c["sampler"]] = text
    space = record.get("space") or {}
    params = ", ".join(f"{k} {v.get('choices', v)}" for k, v in (space.get("params") or {}).items())
    parts = [
        f"# Sampler comparison: {record['backbone']}",
        f"Space {space.get('name')} ({params}); {record['epochs']} epochs per trial; "
        f"seeds {', '.join(map(str, record['seeds']))}; weights {record['weights']}; "
        f"data {record['data']}.",
        *[f"> {n}" for n in notes],
        "## Summary",
        _definitions(record),
        markdown_table(summary, SUMMARY_COLUMNS, _SUMMARY_DIGITS),
        "## Differences with their noise",
        *pairwise_section(record, "markdown"),
        "## Per seed",
        markdown_table(per_seed, PER_SEED_COLUMNS, _SUMMARY_DIGITS),
        "## Best validation macro-F1 (%) after each trial (mean ± sd over seeds)",
        markdown_table(
            list(by_trial.values()),
            ["trial", *[s for s in samplers if any(s in r for r in by_trial.values())]],
        ),
        "## To rerun",
        f"optuna {', '.join(record['optuna_versions_of_studies'])} (studies), "
        f"{record['optuna_version_of_report']} (this report). Sampler arguments:",
    ]
    bullets = [
        f"- {name}: `{json.dumps(a, sort_keys=True)}`"
        for sampler in samplers
        for name, a in (record["sampler_args"].get(sampler) or {}).items()
    ]
    parts.append("\n".join(bullets))
    if record.get("skipped"):
        parts.append(
            "Skipped: " + "; ".join(f"{s} ({why})" for s, why in record["skipped"].items())
        )
    if record.get("command"):
        parts.append(f"Command: `{record['command']}`")
    return "\n\n".join(parts)


def sampler_html_blocks(
    notes: Sequence[str],
    record: Mapping[str, Any],
    summary: Sequence[Mapping[str, Any]],
    figs: Sequence[Any],
    per_seed: Sequence[Mapping[str, Any]],
) -> list[str]:
    """The HTML page's body: notes, summary and figures, differences, per seed, the record."""
    blocks = [text_to_html(n) for n in notes]
    blocks += [
        "<h2>Summary</h2>",
        text_to_html(_definitions(record)),
        html_table(summary, SUMMARY_COLUMNS, _SUMMARY_DIGITS),
        *[figure_html(f) for f in figs],
        "<h2>Differences with their noise</h2>",
        *pairwise_section(record, "html"),
        "<h2>Per seed</h2>",
        html_table(per_seed, PER_SEED_COLUMNS, _SUMMARY_DIGITS),
        "<h2>To rerun</h2>",
        "<pre>" + html.escape(json.dumps(record, indent=2, default=str)) + "</pre>",
    ]
    return blocks
