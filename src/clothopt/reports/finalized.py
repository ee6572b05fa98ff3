"""A finalized study's test report (its ``report.json``) as text for the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clothopt.final.store import REPORT_FILE
from clothopt.reports.render import format_table

__all__ = ["format_estimate", "format_ood", "format_report", "format_scores"]


def format_report(report: dict[str, Any], folder: Path | None = None) -> str:
    """The test report as plain text for the terminal."""
    p = report["params"]
    size = str(p.get("image_sizes", p.get("image_size"))).replace("+", "+px ")
    lines = [
        f"study {report['study']} ({report['backbone']}): trial {report['trial']} "
        f"(image {size} px, batch {p['batch_size']}, learning rate "
        f"{p['learning_rate']:g}) retrained for {report['epochs']} epochs on the train split",
        f"test split: {report['test_images']} images no trial saw, scored by the saved model",
        "",
        format_scores(report, report["test_images"]),
    ]
    if head := report.get("head"):
        lines[1:1] = [f"head: {_head_text(head)}"]
    if blend := report.get("blend"):
        weights = ", ".join(
            f"trial {r['trial']} × {r['weight']:.2f}" for r in blend["rows"] if r["weight"] > 0
        )
        lines[1:1] = [f"a blend of {sum(r['weight'] > 0 for r in blend['rows'])} configurations: "
                      f"{weights} (out-of-fold ensemble selection)"]  # fmt: skip
    if estimate := report.get("estimate"):
        lines += format_estimate(estimate, report["test"]["f1_macro"], report["f1_macro_ci95"])
    agree = report["cached_path_agreement"]
    lines += [
        f"parameters: {report['total_params']:,} total, {report['trainable_params']:,} trainable",
        f"seconds: search {report['search_seconds']:.1f} (sum over {report['search_trials']} "
        f"trials; {report['search_wall_seconds']:.1f} wall), final training "
        f"{report['final_train_seconds']:.1f}",
        f"saved model agrees with the {agree.get('reference', 'cached-feature head')} on "
        f"{agree['agree']}/{agree['of']} test images",
    ]
    if ft := report.get("fine_tune"):
        f1 = ", ".join(f"{v:.4f}" for v in ft["validation_f1_per_epoch"])
        lines[-3:-3] = [
            f"fine-tuned: top {ft['layers']} base layers, {ft['epochs']} epochs at learning rate "
            f"{ft['learning_rate']:g} in {ft['train_seconds']:.1f} s; validation macro-F1 "
            f"{ft['head_only_validation_f1_macro']:.4f} with the head alone, then {f1}"
        ]
    if "ood" in report:
        lines += ["", format_ood(report["ood"])]
    if folder is not None:
        files = [report["model"], report.get("classes_file", "classes.json"), REPORT_FILE]
        lines.append(f"wrote {', '.join(files + report.get('figures', []))} to {folder}")
    return "\n".join(lines)


def format_estimate(
    estimate: dict[str, Any], test_f1: float, ci: tuple[float, float] | list[float]
) -> list[str]:
    """report.json's ``estimate`` beside the test figure: what the search predicted for the
    shipped model, how it was made, and how far the test split landed from it."""
    n = estimate["members"]
    if estimate.get("blend"):
        text = (
            f"estimate (the blend, {estimate['folds']} folds): its out-of-fold macro-F1 per "
            f"fold {estimate['mean']:.4f} ± {estimate['sd'] or 0.0:.4f} (sd), pooled "
            f"{estimate['pooled_oof_f1_macro']:.4f}"
        )
    elif n > 1:
        k, r = estimate["folds"], estimate["repeats"]
        what = " x ".join(
            p for p in (f"{r} seeds" if r > 1 else "", f"{k} folds" if k else "") if p
        )
        kind = "out-of-fold" if k else "validation"
        text = (
            f"estimate ({n} heads: {what}): members' {kind} macro-F1 "
            f"{estimate['mean']:.4f} ± {estimate['sd']:.4f} (sd; se {estimate['se']:.4f})"
        )
        pooled = estimate.get("pooled_oof_f1_macro", estimate.get("pooled_validation_f1_macro"))
        if pooled is not None:
            text += f", pooled {kind} {pooled:.4f}"
    elif estimate["mean"] is not None:
        text = f"estimate (one fit): the trial's validation macro-F1 {estimate['mean']:.4f}"
    else:
        return []
    low, high = ci
    return [
        f"{text}; test {test_f1:.4f} [{low:.4f}, {high:.4f}]",
        f"  ({estimate['how']})",
    ]


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_ood(ood: dict[str, Any]) -> str:
    """report.json's ``ood`` section: the shipped "not clothing" detector and what it accepts."""
    d = ood["detector"]
    k = f", k={d['k']}" if "k" in d else ""
    lines = [
        f'"not clothing" detector in the model: {d["method"]}{k}, threshold '
        f"{d['threshold']:.4f} (set to accept {_share(d['accept'])} of validation)",
        f"accepted: validation {_share(ood['validation_accepted_share'])}, "
        f"test {_share(ood['test_accepted_share'])}",
    ]
    for key, label in (("not_clothing", "not-clothing photos"), ("samples", "sample pictures")):
        part = ood.get(key)
        if part is None:
            if key == "not_clothing":
                lines.append(ood.get("not_clothing_note", "not-clothing photos: not measured"))
            continue
        auroc = "n/a" if part["auroc"] is None else f"{part['auroc']:.3f}"
        lines.append(
            f"{label}: {part['images']} images, {_share(part['accepted_share'])} accepted as "
            f"clothing, AUROC {auroc} against the test split"
        )
    return "\n".join(lines)


def _head_text(head: dict[str, Any]) -> str:
    """A wide trial's head and training in one line."""
    layers = (
        f"{head['hidden_layers']} x Dense({head['hidden_units']}, relu), dropout "
        f"{head['dropout']:.2f}"
        if head["hidden_layers"]
        else "linear"
    )
    extras = [name for name in ("flip", "tta") if head.get(name)]
    if views := head.get("aug_views"):
        extras.append(f"{views} augmentation view{'s' if views > 1 else ''}")
    return (
        f"{layers}; {head['optimizer']} {head['schedule']}, weight decay "
        f"{head['weight_decay']:.2g}, label smoothing {head['label_smoothing']:.2f}, "
        f"features {head['normalize']}" + (f"; {', '.join(extras)}" if extras else "")
    )


def format_scores(report: dict[str, Any], images: int) -> str:
    """Per-class table, accuracy, macro-F1 with its interval and the confusion matrix of a
    report holding ``test``, ``f1_macro_ci95``, ``bootstrap`` and ``classes``."""
    t = report["test"]
    lines: list[str] = []
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
            "support": images,
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
    return "\n".join(lines)
