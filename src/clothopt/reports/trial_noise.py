"""``study show``'s noise: each trial evaluated with repeats/folds as mean ± se (n), and the
best trial tested against the next ones over their per-member scores."""

from __future__ import annotations

import json
from typing import Any

from clothopt.reports.stats import best_versus_next

__all__ = ["best_versus_next_of", "with_spread"]


def with_spread(row: dict[str, Any]) -> dict[str, Any]:
    """``val_f1`` shown as "mean ± se (n)" for a trial evaluated with repeats/folds (rows of
    studies without them pass unchanged)."""
    if "members" not in row:
        return row
    row = dict(row)
    se, n = row.pop("val_f1_se"), row.pop("members")
    if row["val_f1"] is not None and n:
        spread = f" ± {se:.4f}" if se is not None else ""
        row["val_f1"] = f"{row['val_f1']:.4f}{spread} ({n})"
    return row


def _pairing(attrs: dict[str, Any]) -> str | None:
    """What a trial's members share with another's: with folds, the study's folds (drawn from
    the study seed, the same for every trial), member by member in the same order; with repeats
    alone, only the seeds in ``member_seeds`` (each trial draws its own from its parameters, so
    two trials' repeats are independent draws unless those seeds are equal)."""
    protocol = attrs.get("protocol") or {}
    if int(protocol.get("folds") or 0) >= 2:
        return json.dumps({"folds": protocol}, sort_keys=True)
    seeds = attrs.get("member_seeds")
    return (
        json.dumps({"seeds": list(seeds), "protocol": protocol}, sort_keys=True) if seeds else None
    )


def best_versus_next_of(study: Any, top: int = 5) -> dict[str, Any]:
    """The best trial against the next ``top - 1``: ``rows``, ``verdict`` and the ``text``
    ``study show`` prints under its table; empty when the best trial has no per-member scores."""
    from optuna.trial import TrialState

    done = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: (-(t.value or 0.0), t.number),
    )
    if not done or not done[0].user_attrs.get("val_f1_runs"):
        return {}
    entries = [
        (t.number, list(t.user_attrs["val_f1_runs"]), _pairing(t.user_attrs))
        for t in done[:top]
        if t.user_attrs.get("val_f1_runs")
    ]
    rows, verdict = best_versus_next(entries)
    if not rows:
        return {}
    tests = "; ".join(
        f"#{r['other']} {r['test']} p = {r['p_value']:.3g}"
        if r["p_value"] is not None
        else f"#{r['other']} not tested"
        for r in rows
    )
    return {"rows": rows, "verdict": verdict, "text": f"\nbest vs next: {tests}\n{verdict}"}
