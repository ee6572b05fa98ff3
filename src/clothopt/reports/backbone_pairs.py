"""Pairs of finalized backbones on the same test images: McNemar's test and the paired
bootstrap of the test macro-F1 difference, each Holm-adjusted over all pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clothopt.errors import InvalidArgument
from clothopt.reports.stats import ALPHA, holm, mcnemar, paired_bootstrap_f1_diff, pct

__all__ = ["F1_DIFF_COLUMNS", "MCNEMAR_COLUMNS", "mcnemar_pairs"]


def mcnemar_pairs(studies: Sequence[Any]) -> list[dict[str, Any]]:
    """McNemar's test for every pair of finalized studies, with Holm-adjusted p-values.

    ``studies``: ``BackboneStudy`` objects (``name``, ``label``, ``final``: the finalized
    report or None). Both studies must have scored the same test images in the same order.
    """
    done = [s for s in studies if s.final is not None]
    rows = []
    for i, a in enumerate(done):
        for b in done[i + 1 :]:
            fa, fb = a.final or {}, b.final or {}
            if list(fa["classes"]) != list(fb["classes"]):
                raise InvalidArgument(
                    f"studies {a.name!r} and {b.name!r} have different classes: "
                    "McNemar needs the same test set"
                )
            if list(fa["test_labels"]) != list(fb["test_labels"]):
                raise InvalidArgument(
                    f"studies {a.name!r} and {b.name!r} were tested on different images (or in "
                    "another order): McNemar needs the same test images in the same order"
                )
            r = mcnemar(fa["test_labels"], fa["test_predictions"], fb["test_predictions"])
            boot = fa.get("bootstrap") or {}
            d = paired_bootstrap_f1_diff(
                fa["test_labels"],
                fa["test_predictions"],
                fb["test_predictions"],
                len(fa["classes"]),
                resamples=int(boot.get("resamples", 2000)),
                seed=int(boot.get("seed", 0)),
            )
            rows.append(
                {
                    "a": a.label,
                    "b": b.label,
                    "a_test_f1": pct(fa["test"]["f1_macro"]),
                    "b_test_f1": pct(fb["test"]["f1_macro"]),
                    "a_accuracy": pct(fa["test"].get("accuracy")),
                    "b_accuracy": pct(fb["test"].get("accuracy")),
                    "images": len(fa["test_labels"]),
                    "both_correct": r["both_correct"],
                    "a_only_correct": r["a_only"],
                    "b_only_correct": r["b_only"],
                    "both_wrong": r["both_wrong"],
                    "method": r["method"],
                    "statistic": r["statistic"],
                    "p_value": r["p_value"],
                    "significant_05": r["p_value"] < ALPHA,
                    "f1_diff": pct(d["diff"]),
                    "f1_diff_ci95_low": pct(d["ci_low"]),
                    "f1_diff_ci95_high": pct(d["ci_high"]),
                    "f1_diff_p": d["p_value"],
                    "bootstrap_resamples": d["resamples"],
                }
            )
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
        row["significant_holm_05"] = adjusted < ALPHA
    for row, adjusted in zip(rows, holm([r["f1_diff_p"] for r in rows]), strict=True):
        row["f1_diff_p_holm"] = adjusted
        row["f1_diff_significant_holm_05"] = adjusted < ALPHA
    return rows


MCNEMAR_COLUMNS = [
    "a",
    "b",
    "a_test_f1",
    "b_test_f1",
    "a_accuracy",
    "b_accuracy",
    "images",
    "both_correct",
    "a_only_correct",
    "b_only_correct",
    "both_wrong",
    "method",
    "statistic",
    "p_value",
    "significant_05",
    "p_holm",
    "significant_holm_05",
]
F1_DIFF_COLUMNS = [
    "a",
    "b",
    "a_test_f1",
    "b_test_f1",
    "images",
    "f1_diff",
    "f1_diff_ci95_low",
    "f1_diff_ci95_high",
    "bootstrap_resamples",
    "f1_diff_p",
    "f1_diff_p_holm",
    "f1_diff_significant_holm_05",
]
