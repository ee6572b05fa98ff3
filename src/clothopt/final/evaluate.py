"""``clothopt evaluate MODEL DIR``: finalize's test report for any labelled folder.

``DIR/<class>/...`` holds images of every class of the model (``classes.json`` beside the
model): a class with no image would count in the macro-F1 with F1 0, so a folder that lacks
one is refused rather than reported with a figure it cannot support. The figures are those
of the saved model, computed by the code finalize uses (:mod:`clothopt.final.scoring`). With
``unknown_as_reject`` a folder whose name is no class of the model holds pictures that should
be rejected as "not clothing": the report then gives the share of them the model accepts and
the AUROC of its detector's score, known classes against them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clothopt.data import IMAGE_EXTENSIONS
from clothopt.errors import DataError, InvalidArgument, NotFound
from clothopt.logging import get_logger

__all__ = ["EVALUATE_REPORT", "evaluate", "format_evaluation", "write_evaluation"]

EVALUATE_REPORT = "report.json"
logger = get_logger(__name__)


def _files(class_dir: Path) -> tuple[list[Path], int]:
    """Image files under ``class_dir`` (sorted, as the data layout orders them) and how many
    other files were skipped."""
    images, skipped = [], 0
    for root, _, names in sorted(os.walk(class_dir), key=lambda entry: entry[0]):
        for name in sorted(names):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(Path(root, name))
            else:
                skipped += 1
    return images, skipped


def evaluate(
    model_path: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    unknown_as_reject: bool = False,
    resamples: int = 2000,
    seed: int = 0,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score ``folder``'s images with the model; returns the report: finalize's test figures
    (``test``, ``f1_macro_ci95``, ``bootstrap``), ``labels``/``predictions``, the model's
    ``threshold`` and ``rejected_share`` (None without a detector) and, with unknown folders,
    ``unknown`` (``images``, ``accepted_share``, ``auroc``). Unreadable images are logged and
    left out (``log``, default: a warning of the ``clothopt`` logger); no usable image is a
    :class:`DataError`."""
    log = log or logger.warning
    from clothopt.final.scoring import labelled_report, score_set
    from clothopt.metrics import auroc
    from clothopt.predict import load_classifier, shipped_threshold

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotFound(f"folder not found: {root}")
    model, classes = load_classifier(model_path)
    threshold = shipped_threshold(model)
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    if not folders:
        raise DataError(f"{root} holds no class folders: expected DIR/<class>/<images>")
    unknown = [d for d in folders if d.name not in classes]
    if unknown and not unknown_as_reject:
        raise DataError(
            f"{root}: {', '.join(d.name for d in unknown)} is not a class of the model "
            f"({', '.join(classes)}); --unknown-as-reject counts such folders as not clothing"
        )
    if unknown and threshold is None:
        raise InvalidArgument(
            'the model has no "not clothing" detector, so --unknown-as-reject has nothing to '
            "measure (finalize the study again to get one)"
        )
    known = [d for d in folders if d.name in classes]
    images = {d.name: _files(d) for d in folders}
    _refuse_missing(root, classes, {d.name for d in known if images[d.name][0]})
    probs, scores, accepted, labels = [], [], [], []
    out_scores, out_accepted = [], []
    unreadable: list[str] = []
    skipped = 0
    for d in folders:
        paths, extra = images[d.name]
        skipped += extra
        p, s, a, errors = score_set(model, paths, threads)
        for error in errors:
            log(error)
        unreadable += errors
        if d in known:
            probs.append(p)
            scores.append(s)
            accepted.append(a)
            labels.append(np.full(len(s), classes.index(d.name), dtype=np.int64))
        else:
            out_scores.append(s)
            out_accepted.append(a)
    if skipped:
        log(f"skipped {skipped} files that are not images (by their names)")
    y = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    if len(y) == 0:
        raise DataError(f"no usable images of the model's classes under {root}")
    # a class whose every image was unreadable is missing too
    _refuse_missing(root, classes, {classes[i] for i in np.unique(y)}, " usable")
    prob = np.concatenate([p for p in probs if len(p)])  # a folder may have no usable image
    pred = np.argmax(prob, axis=1).astype(np.int64)
    report: dict[str, Any] = {
        "model": str(Path(model_path).expanduser().absolute()),
        "dir": str(root.absolute()),
        "classes": list(classes),
        "images": len(y),
        "skipped_files": skipped,
        "unreadable": unreadable,
        **labelled_report(y, pred, classes, resamples=resamples, seed=seed),
        "labels": y.tolist(),
        "predictions": pred.tolist(),
        "threshold": threshold,
        "rejected_share": None,
    }
    if threshold is not None:
        report["rejected_share"] = float(1.0 - np.mean(np.concatenate(accepted)))
    if unknown:
        outside = np.concatenate(out_scores)
        report["unknown"] = {
            "folders": [d.name for d in unknown],
            "images": len(outside),
            "accepted_share": float(np.mean(np.concatenate(out_accepted)))
            if len(outside)
            else None,
            "auroc": auroc(np.concatenate(scores), outside) if len(outside) else None,
        }
    return report


def _refuse_missing(
    root: Path, classes: Sequence[str], present: set[str], usable: str = ""
) -> None:
    """A :class:`DataError` naming the model's classes not in ``present`` (none: nothing)."""
    if missing := [c for c in classes if c not in present]:
        raise DataError(
            f"{root} has no{usable} images of the model's class(es) {', '.join(missing)}: "
            f"evaluate needs DIR/<class>/<images> for every class ({', '.join(classes)}), "
            "or the macro-F1 would count each missing class as F1 0"
        )


def format_evaluation(report: dict[str, Any]) -> str:
    """The report as text: finalize's figures, then what the detector rejected."""
    from clothopt.reports.finalized import format_scores

    lines = [
        f"{report['model']} on {report['dir']}: {report['images']} images of "
        f"{len(report['classes'])} classes, scored by the saved model",
        "",
        format_scores(report, report["images"]),
    ]
    if report["threshold"] is None:
        lines.append('the model has no "not clothing" detector: it rejects nothing')
    else:
        lines.append(
            f'rejected as "not clothing": {100 * report["rejected_share"]:.1f}% of these '
            f"clothing images (threshold {report['threshold']:.4f})"
        )
    if "unknown" in report:
        u = report["unknown"]
        share = "n/a" if u["accepted_share"] is None else f"{100 * u['accepted_share']:.1f}%"
        auroc = "n/a" if u["auroc"] is None else f"{u['auroc']:.3f}"
        lines.append(
            f"should be rejected ({', '.join(u['folders'])}): {u['images']} images, {share} "
            f"accepted as clothing, AUROC {auroc} against the known classes"
        )
    if report["skipped_files"] or report["unreadable"]:
        lines.append(
            f"left out: {report['skipped_files']} files that are not images, "
            f"{len(report['unreadable'])} unreadable images"
        )
    return "\n".join(lines)


def write_evaluation(
    report: dict[str, Any], out: str | os.PathLike[str], inputs: Sequence[Any] = ()
) -> list[Path]:
    """``report.json`` and the confusion matrix figure into the folder ``out``, written as one
    unit (staged beside it, then swapped in): an interrupt or a failed write leaves the
    previous evaluation there, whole. ``out`` must be new, empty or an earlier evaluation, and
    none of ``inputs`` (:func:`clothopt.outputs.check_output_dir`; run it before the work)."""
    from clothopt.final.scoring import confusion_figure
    from clothopt.outputs import EVALUATION, check_output_dir, staged_dir

    folder = check_output_dir(out, EVALUATION, inputs)
    low, high = report["f1_macro_ci95"]
    title = (
        f"{Path(report['dir']).name}: confusion matrix, macro-F1 "
        f"{report['test']['f1_macro']:.4f} (95% CI {low:.4f}-{high:.4f})"
    )

    def recheck(dest: Path) -> None:  # it may have changed while the figure was drawn
        check_output_dir(dest, EVALUATION, inputs)

    with staged_dir(folder, recheck) as tmp:
        (tmp / EVALUATE_REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        names = confusion_figure(report["test"]["confusion_matrix"], report["classes"], title, tmp)
    return [folder / EVALUATE_REPORT, *(folder / name for name in names)]
