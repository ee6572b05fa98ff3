"""A finalized study's test report (its ``report.json``) as text for the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clothopt.final.store import REPORT_FILE
from clothopt.reports.render import format_table

__all__ = ["format_report"]


def format_report(report: dict[str, Any], folder: Path | None = None) -> str:
    """The test report as plain text for the terminal."""
    t = report["test"]
    p = report["params"]
    lines = [
        f"study {report['study']} ({report['backbone']}): trial {report['trial']} "
        f"(image {p['image_size']} px, batch {p['batch_size']}, learning rate "
        f"{p['learning_rate']:g}) retrained for {report['epochs']} epochs on the train split",
        f"test split: {report['test_images']} images no trial saw, scored by the saved model",
        "",
    ]
    rows: list[dict[str, Any]] = [
        {"class": c, **{k: v[k] for k in ("precision", "recall", "f1", "support")}}
        for c, v in t["per_class"].items()
    ]
    rows.append(
        {
            "class": "macro",
            "precision": t["precision_macro"],
            "recall": t["recall_macro"],
            "f1": t["f1_macro"],
            "support": report["test_images"],
        }
    )
    lines += [format_table(rows), ""]
    low, high = report["f1_macro_ci95"]
    b = report["bootstrap"]
    lines += [
        f"accuracy {t['accuracy']:.4f}",
        f"macro-F1 {t['f1_macro']:.4f}, 95% bootstrap CI [{low:.4f}, {high:.4f}] "
        f"({b['resamples']} resamples, seed {b['seed']}, {b['method']})",
        "",
        "confusion matrix (rows: true class, columns: predicted)",
    ]
    classes = report["classes"]
    cm_rows = [
        {"true": c, **{classes[j]: n for j, n in enumerate(row)}}
        for c, row in zip(classes, t["confusion_matrix"], strict=True)
    ]
    lines += [format_table(cm_rows), ""]
    agree = report["cached_path_agreement"]
    lines += [
        f"parameters: {report['total_params']:,} total, {report['trainable_params']:,} trainable",
        f"seconds: search {report['search_seconds']:.1f} (sum over {report['search_trials']} "
        f"trials; {report['search_wall_seconds']:.1f} wall), final training "
        f"{report['final_train_seconds']:.1f}",
        f"saved model agrees with the cached-feature head on {agree['agree']}/{agree['of']} "
        "test images",
    ]
    if folder is not None:
        files = [report["model"], report.get("classes_file", "classes.json"), REPORT_FILE]
        lines.append(f"wrote {', '.join(files + report.get('figures', []))} to {folder}")
    return "\n".join(lines)
