"""Classification figures: macro precision, recall, F1 and accuracy from scikit-learn, and the
macro-F1 alone from confusion counts (sklearn's own arithmetic, bit for bit, in microseconds:
a trial scores validation after every epoch, where sklearn's input checks cost ~12 ms)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["auroc", "bootstrap_ci", "classification_metrics", "macro_f1"]


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Macro and per-class precision/recall/F1, accuracy and the confusion matrix.

    Labels are fixed to every class so a class never predicted still counts (with F1 0).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = np.arange(len(classes))
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "precision_macro": float(mp),
        "recall_macro": float(mr),
        "f1_macro": float(mf),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class": {
            c: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def _class_f1(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 of confusion matrices ``cm[..., true, predicted]`` as sklearn computes it
    with ``zero_division=0``: ``2*tp / (true + predicted)`` in float64, 0 where both are 0."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    denom = cm.sum(axis=-1).astype(np.float64) + cm.sum(axis=-2).astype(np.float64)
    return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """``classification_metrics(...)["f1_macro"]``, the same float, without sklearn's checks.

    Labels are ``0..num_classes-1``; a class never predicted nor present counts with F1 0.
    """
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if len(y) != len(p) or len(y) == 0:
        raise ValueError(f"need as many predictions as labels, and some: {len(y)}, {len(p)}")
    c = num_classes
    cm = np.bincount(y * c + p, minlength=c * c).reshape(c, c)
    return float(np.mean(_class_f1(cm)))


def bootstrap_ci(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    num_classes: int,
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of macro-F1 over the test images.

    Resample ``b`` takes row ``b`` of ``default_rng(seed).integers(0, n, (resamples, n))``
    (drawn in chunks of whole rows, which gives the same stream); its statistic is sklearn's
    macro-F1 with labels fixed to every class and ``zero_division=0``, computed here from
    per-resample confusion counts so thousands of resamples take milliseconds.
    """
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if len(y) != len(p) or len(y) == 0:
        raise ValueError(f"need as many predictions as labels, and some: {len(y)}, {len(p)}")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"bad resamples {resamples} or confidence {confidence}")
    n, c = len(y), num_classes
    codes = y * c + p  # cell of the confusion matrix each image falls in
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n)  # bounds memory for large test sets
    scores = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        cells = codes[rng.integers(0, n, (b, n))] + (np.arange(b) * c * c)[:, None]
        cm = np.bincount(cells.ravel(), minlength=b * c * c).reshape(b, c, c)
        scores.append(_class_f1(cm).mean(axis=1))
    alpha = 100 * (1 - confidence) / 2
    low, high = np.percentile(np.concatenate(scores), [alpha, 100 - alpha])
    return float(low), float(high)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of scores where ``positive`` should rank above ``negative``
    (ties count half): the chance a random positive outscores a random negative."""
    from sklearn.metrics import roc_auc_score

    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(labels, np.r_[pos, neg]))
