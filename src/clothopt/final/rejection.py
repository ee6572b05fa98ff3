"""The "not clothing" detector that ships inside the exported model (issue #13).

:func:`fit_shipped_detector` fits :mod:`clothopt.final.ood`'s best detector (kNN cosine to the
10th-nearest TRAIN feature) on the train split's pooled features only and sets its threshold so
that 95% of the VALIDATION split is accepted. :func:`detector_outputs` turns it into extra
outputs of :func:`clothopt.model.compose.compose` (``"clothing_score"`` and ``"accepted"``, the
names :mod:`clothopt.predict` reads), in built-in layers only, so the saved model loads with
``safe_mode=True`` and rejects on its own. :func:`ood_section` measures, with the saved model,
what it accepts: validation, test, the not-clothing photos and the scikit-image/scikit-learn
sample pictures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.errors import DataError
from clothopt.final.ood import DEFAULT_ACCEPT, DEFAULT_METHOD, Detector, calibrate, fit_detector
from clothopt.logging import get_logger
from clothopt.predict import ACCEPTED_OUTPUT, SCORE_OUTPUT, THRESHOLD_LAYER

if TYPE_CHECKING:
    import keras

__all__ = [
    "SKIMAGE_PHOTOS",
    "THRESHOLD_MARGIN",
    "detector_meta",
    "detector_outputs",
    "fit_shipped_detector",
    "ood_section",
    "sample_photos",
]

logger = get_logger(__name__)

THRESHOLD_MARGIN = 1e-5  # relative; float32 scoring noise is ~4e-7 relative: 25 times that
# photos that ship inside scikit-image (no download); stereo_motorcycle's left view is a file
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "horse")


def fit_shipped_detector(
    train_x: np.ndarray,
    val_x: np.ndarray,
    method: str = DEFAULT_METHOD,
    accept: float = DEFAULT_ACCEPT,
) -> Detector:
    """Fit on TRAIN pooled features ``(N, D)``; threshold accepting ``accept`` of ``val_x``.

    The threshold is then lowered by a share :data:`THRESHOLD_MARGIN` of itself, to a float32:
    the model scores in float32, up to ~3e-7 off the float64 scores of ~0.75 (measured on the
    real validation split), and the image calibrated at the threshold must stay accepted.
    """
    detector = calibrate(fit_detector(method, train_x), val_x, accept)
    t = float(detector.threshold)  # type: ignore[arg-type]
    return dataclasses.replace(detector, threshold=_float32_floor(t - THRESHOLD_MARGIN * abs(t)))


def detector_meta(detector: Detector) -> dict[str, Any]:
    """What report.json says of the shipped detector (its arrays live in the model)."""
    return {
        "method": detector.method,
        **detector.params,
        "threshold": detector.threshold,
        "accept": detector.accept,
        "arrays": {k: list(v.shape) for k, v in sorted(detector.arrays.items())},
        "sha256": detector.checksum,
        "fitted_on": "train split's pooled features",
        "calibrated_on": "validation split's pooled features",
    }


def detector_outputs(
    detector: Detector,
) -> dict[str, Callable[[keras.KerasTensor], keras.KerasTensor]]:
    """``compose(extra_outputs=...)``: the detector's score and 1.0/0.0 "accepted".

    Both builders share one score (one bank in the model). The threshold is the bias of a
    frozen Dense layer, not a constant, so TensorFlow's graph optimizer cannot rewrite it.
    """
    from clothopt.final.ood import keras_score

    if detector.threshold is None:
        raise ValueError("the shipped detector must be calibrated")
    built: dict[str, keras.KerasTensor] = {}

    def score(pooled: keras.KerasTensor) -> keras.KerasTensor:
        if "score" not in built:
            built["score"] = keras_score(detector, pooled, name="ood")
        return built["score"]

    def accepted(pooled: keras.KerasTensor) -> keras.KerasTensor:
        import keras
        from keras import ops

        s = score(pooled)
        threshold = keras.layers.Dense(
            1,
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(_float32_floor(detector.threshold)),
            trainable=False,
            name=THRESHOLD_LAYER,
        )(ops.expand_dims(s, -1))[:, 0]
        return keras.layers.Identity(name=ACCEPTED_OUTPUT)(
            ops.cast(ops.greater_equal(s, threshold), "float32")
        )

    return {SCORE_OUTPUT: score, ACCEPTED_OUTPUT: accepted}


def _float32_floor(value: float) -> float:
    # the largest float32 not above the float64 threshold: what calibrate accepts stays accepted
    f = np.float32(value)
    if float(f) > value:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


# --------------------------------------------------------------------------- measuring


def sample_photos() -> list[tuple[str, Path]]:
    """``(name, file)`` of the sample pictures inside scikit-image and scikit-learn, where
    installed: none of them is clothing."""
    import importlib.util

    found: list[tuple[str, Path]] = []
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent / "data"
        for name in SKIMAGE_PHOTOS:
            hits = sorted(folder.glob(f"{name}.*"))
            if hits:
                found.append((f"skimage {name}", hits[0]))
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent / "datasets" / "images"
        found += [(f"sklearn {p.stem}", p) for p in sorted(folder.glob("*.jpg"))]
    return found


def _outside(
    model: keras.Model,
    paths: Sequence[Path],
    clothing_scores: np.ndarray,
    threads: int | None,
) -> dict[str, Any]:
    from clothopt.final.scoring import score_set
    from clothopt.metrics import auroc

    _, scores, accepted, errors = score_set(model, paths, threads)
    if errors:
        logger.warning("finalize: %d unreadable pictures left out: %s", len(errors), errors[0])
    return {
        "images": len(scores),
        "accepted_share": float(np.mean(accepted)) if len(scores) else None,
        "auroc": auroc(clothing_scores, scores) if len(scores) else None,
    }


def ood_section(
    model: keras.Model,
    detector: Detector,
    val_paths: Sequence[Path],
    test: tuple[np.ndarray, np.ndarray],
    not_clothing: Path | None,
    classes: Sequence[str],
    threads: int | None = None,
) -> dict[str, Any]:
    """report.json's ``ood``: the detector, and what the saved model accepts.

    ``test`` is the saved model's ``(scores, accepted)`` on the test split; the validation
    split (``val_paths``) is scored here. AUROCs set the test split (clothing) against the
    not-clothing photos and against the sample pictures.
    """
    from clothopt.final.scoring import score_set
    from clothopt.predict import iter_images, run_model

    test_scores, test_accepted = test
    _, _, val_accepted, errors = score_set(model, val_paths, threads)
    if errors:
        raise DataError(errors[0])
    section: dict[str, Any] = {
        "detector": detector_meta(detector),
        "validation_accepted_share": float(np.mean(val_accepted)),
        "test_accepted_share": float(np.mean(test_accepted)),
    }
    if not_clothing is None:
        section["not_clothing"] = None
        section["not_clothing_note"] = "no not-clothing folder given: not measured"
    else:
        from clothopt.predict import expand_paths

        paths = expand_paths([not_clothing])
        section["not_clothing"] = {
            "dir": str(Path(not_clothing).absolute()),
            **_outside(model, paths, test_scores, threads),
        }
    samples = sample_photos()
    rows = []
    for (name, _), (_, image) in zip(samples, iter_images([p for _, p in samples]), strict=True):
        if isinstance(image, Exception):
            continue
        out = run_model(model, image)
        rows.append(
            {
                "picture": name,
                "score": out.score,
                "accepted": out.accepted,
                "top_class": classes[int(np.argmax(out.probabilities))],
            }
        )
    from clothopt.metrics import auroc

    sample_scores = np.array([r["score"] for r in rows], dtype=np.float64)
    section["samples"] = {
        "images": len(rows),
        "accepted_share": float(np.mean([r["accepted"] for r in rows])) if rows else None,
        "auroc": auroc(test_scores, sample_scores) if rows else None,
        "pictures": rows,
    }
    return section
