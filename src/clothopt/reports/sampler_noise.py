"""Differences between samplers with their noise: each pair's paired tests over seeds
(Holm-corrected), the noise floor of one configuration from repeated-evaluation trials, and the
verdict that ranks samplers only where the corrected test separates them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.reports.render import html_table, markdown_table, text_to_html
from clothopt.reports.stats import ALPHA, pairwise_paired, pct, separation_verdict

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = [
    "PAIRWISE_COLUMNS",
    "PAIRWISE_DIGITS",
    "noise_floor",
    "pairwise_section",
    "pairwise_text",
    "sampler_differences",
]

PAIRWISE_COLUMNS = [
    "a",
    "b",
    "n",
    "mean_diff",
    "ci_low",
    "ci_high",
    "a_ahead",
    "t",
    "p_t",
    "p_holm_t",
    "wilcoxon_w",
    "p_wilcoxon",
    "p_holm_wilcoxon",
    "separated",
    "note",
]
PAIRWISE_DIGITS = {"t": 2, "p_t": 4, "p_holm_t": 4, "p_wilcoxon": 4, "p_holm_wilcoxon": 4}


def sampler_differences(
    by_sampler: Mapping[str, Sequence[Mapping[str, Any]]],
    trials: Sequence[FrozenTrial],
    budget: int,
) -> dict[str, Any]:
    """``pairwise`` rows, ``noise_floor`` and ``verdict`` for comparison.json, from each
    sampler's per-seed rows (``seed``, ``final_best`` in points) and the trials compared."""
    finals = {
        s: {r["seed"]: r["final_best"] for r in rows if r["final_best"] is not None}
        for s, rows in by_sampler.items()
    }
    pairwise = pairwise_paired({s: v for s, v in finals.items() if v})
    return {
        "pairwise": pairwise,
        "noise_floor": noise_floor(trials),
        "verdict": separation_verdict(pairwise, "samplers", f"at this budget ({budget} trials)"),
    }


def noise_floor(trials: Sequence[FrozenTrial]) -> dict[str, Any] | None:
    """How much one configuration's score moves by itself, from trials evaluated with repeats
    or folds (their ``val_f1_sd`` / ``val_f1_se``): medians over the trials, in points (%).
    None when no trial carries them."""
    rated = [t for t in trials if t.user_attrs.get("val_f1_sd") is not None]
    if not rated:
        return None
    protocols = sorted(
        {json.dumps(t.user_attrs.get("protocol") or {}, sort_keys=True) for t in rated}
    )
    ses = [float(t.user_attrs["val_f1_se"]) for t in rated if t.user_attrs.get("val_f1_se")]
    return {
        "trials": len(rated),
        "protocols": [json.loads(p) for p in protocols],
        "member_sd_median": pct(float(np.median([t.user_attrs["val_f1_sd"] for t in rated]))),
        "se_median": pct(float(np.median(ses))) if ses else None,
    }


def pairwise_text(record: Mapping[str, Any]) -> str:
    text = (
        "Each pair of samplers over the seeds both ran: `mean_diff` = A - B in final best "
        "(points), its 95% t interval, `a_ahead` = seeds where A ended higher, the paired t-test"
        " and Wilcoxon's signed-rank test (exact without ties) with Holm's adjustment over all "
        f"pairs (`p_holm_*`). Separated: Holm-adjusted paired t p < {ALPHA}. "
    )
    noise = record.get("noise_floor")
    if noise:
        protocols = ", ".join(
            f"{p.get('repeats', 1)} repeats x {p.get('folds', 1)} folds" for p in noise["protocols"]
        )
        se = noise["se_median"]
        text += (
            f"Noise floor: over {noise['trials']} trials evaluated with {protocols}, the "
            f"scores of one configuration's members (each repeat's seed, each fold) have a "
            f"median sd of {noise['member_sd_median']:.2f} points"
            + (
                f", and a trial's value (their mean) a median standard error of {se:.2f}"
                if se is not None
                else ""
            )
            + "; a gap between samplers below these is the size of one configuration's own "
            "spread. "
        )
    else:
        text += (
            "Noise floor: unknown (the trials were evaluated once each, without repeats or "
            "folds); a single configuration's seed-to-seed sd can be as large as these gaps. "
        )
    return text + "\n\n" + str(record["verdict"])


def pairwise_section(record: Mapping[str, Any], fmt: str) -> list[str]:
    """The report's "Differences with their noise" blocks, as Markdown or HTML."""
    rows = record["pairwise"]
    if fmt == "html":
        return [
            text_to_html(pairwise_text(record)),
            html_table(rows, PAIRWISE_COLUMNS, PAIRWISE_DIGITS),
        ]
    table = (
        markdown_table(rows, PAIRWISE_COLUMNS, PAIRWISE_DIGITS)
        if rows
        else "(fewer than two samplers)"
    )
    return [pairwise_text(record), table]
