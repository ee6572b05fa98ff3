"""Predict with an exported model: top-k classes per image, one bad file never stops the rest.

The model (``clothopt study finalize`` writes it) takes raw RGB images of any size and does the
resize and preprocessing itself, so images are only decoded here (as training decoded them:
:func:`clothopt.data.load_image`, converted to RGB, not resized). Class names come from
``classes.json`` beside the model. Models load with Keras safe mode on.

A model from ``clothopt study finalize`` since issue #13 returns a dict: ``"probabilities"``,
``"clothing_score"`` (the shipped "not clothing" detector's score, higher = more like the train
split) and ``"accepted"`` (1.0 where the score reaches the threshold the model holds in its
layer ``"ood_threshold"``). An older model returns the probabilities alone; both load here.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.data import IMAGE_EXTENSIONS, UnusableImage, default_threads, load_image
from clothopt.errors import UserError

if TYPE_CHECKING:
    import keras

__all__ = [
    "ACCEPTED_OUTPUT",
    "CLASSES_FILE",
    "NO_DETECTOR_NOTE",
    "PROBABILITIES_OUTPUT",
    "SCORE_OUTPUT",
    "THRESHOLD_LAYER",
    "ModelOutput",
    "Prediction",
    "expand_paths",
    "iter_images",
    "load_classifier",
    "not_clothing_line",
    "predict_files",
    "predict_image",
    "read_classes",
    "run_model",
    "shipped_threshold",
]

CLASSES_FILE = "classes.json"  # beside the model: the class names, in output order
# the exported model's outputs when it carries the "not clothing" detector
PROBABILITIES_OUTPUT = "probabilities"
SCORE_OUTPUT = "clothing_score"
ACCEPTED_OUTPUT = "accepted"
THRESHOLD_LAYER = "ood_threshold"  # its bias is the threshold (a weight: see final.rejection)
NO_DETECTOR_NOTE = (
    'this model has no "not clothing" detector: it names a class for any picture '
    "(finalize the study again to get one)"
)


@dataclass(frozen=True)
class ModelOutput:
    """What the exported model says about one image; ``score``/``accepted`` are None for a
    model without the detector."""

    probabilities: np.ndarray
    score: float | None = None
    accepted: bool | None = None


@dataclass(frozen=True)
class Prediction:
    image: str
    top: tuple[tuple[str, float], ...] = ()  # (class, probability), most likely first
    error: str | None = None
    score: float | None = None  # the detector's (None: the model has none)
    threshold: float | None = None
    accepted: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        out: dict[str, Any] = {
            "image": self.image,
            "predictions": [{"class": c, "probability": p} for c, p in self.top],
        }
        if self.score is not None:
            out |= {"score": self.score, "threshold": self.threshold, "accepted": self.accepted}
        return out

    @property
    def verdict(self) -> str:
        """``not clothing (score s < threshold t)`` for a rejected image, else ""."""
        if self.accepted is False and self.score is not None and self.threshold is not None:
            return not_clothing_line(self.score, self.threshold)
        return ""


def not_clothing_line(score: float, threshold: float) -> str:
    """What the commands print for a picture the model's detector rejects."""
    return f"not clothing (score {score:.4f} < threshold {threshold:.4f})"


def read_classes(model_path: str | os.PathLike[str]) -> tuple[str, ...]:
    path = Path(model_path).with_name(CLASSES_FILE)
    try:
        classes = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no {CLASSES_FILE} beside the model (expected {path})") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise UserError(f"{path} must hold a JSON list of class names")
    return tuple(classes)


def load_classifier(path: str | os.PathLike[str]) -> tuple[keras.Model, tuple[str, ...]]:
    """The model (safe mode: no arbitrary code runs while loading) and its class names."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"model not found: {path}")
    classes = read_classes(path)
    import keras

    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, zipfile errors, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model {path}: {reason}") from None
    outputs = _probabilities_width(model)
    if outputs != len(classes):
        raise UserError(
            f"model {path} gives {outputs} outputs but {CLASSES_FILE} names {len(classes)} classes"
        )
    return model, classes


def _probabilities_width(model: keras.Model) -> int | None:
    out = model.output
    if isinstance(out, dict):
        if set(out) != {PROBABILITIES_OUTPUT, SCORE_OUTPUT, ACCEPTED_OUTPUT}:
            return None
        out = out[PROBABILITIES_OUTPUT]
    shape = getattr(out, "shape", None)
    return None if shape is None or len(shape) != 2 else shape[-1]


def shipped_threshold(model: keras.Model) -> float | None:
    """The "not clothing" threshold the model holds, or None for a model without detector."""
    if not isinstance(model.output, dict):
        return None
    return float(np.asarray(model.get_layer(THRESHOLD_LAYER).get_weights()[1]).reshape(-1)[0])


def run_model(model: keras.Model, image: np.ndarray) -> ModelOutput:
    """Probabilities (and the detector's verdict) for one raw ``(H, W, 3)`` image.

    One image per call (images differ in size), through ``predict_on_batch``: finalize scores
    the test split with exactly this call, so the reported figures are this function's.
    """
    out = model.predict_on_batch(image[None])
    if not isinstance(out, dict):
        return ModelOutput(np.asarray(out)[0])
    return ModelOutput(
        np.asarray(out[PROBABILITIES_OUTPUT])[0],
        float(np.asarray(out[SCORE_OUTPUT]).reshape(-1)[0]),
        bool(np.asarray(out[ACCEPTED_OUTPUT]).reshape(-1)[0] >= 0.5),
    )


def predict_image(model: keras.Model, image: np.ndarray) -> np.ndarray:
    """Class probabilities for one raw ``(H, W, 3)`` image (:func:`run_model`'s)."""
    return run_model(model, image).probabilities


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; a folder stands for the images under it (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            # a broken link with an image's name is listed too, so it gets its own error line
            out += sorted(
                f
                for f in p.rglob("*")
                if f.suffix.lower() in IMAGE_EXTENSIONS
                and (f.is_file() or (f.is_symlink() and not f.exists()))
            )
        else:
            out.append(p)
    return out


def _read(path: Path) -> np.ndarray | UserError:
    try:
        return load_image(path, None)
    except UnusableImage as exc:
        # load_image's hint about `clothopt data check` is for data sets, not for one picture
        return UserError(f"cannot read image {path}: {exc.detail}")
    except UserError as exc:
        return exc


def iter_images(
    paths: Sequence[Path], threads: int | None = None, prefetch: int = 4
) -> Iterator[tuple[Path, np.ndarray | UserError]]:
    """``(path, RGB array or the error reading it)`` in order, decoding ahead in threads."""
    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        todo = iter(paths)
        queued: deque[tuple[Path, Future[np.ndarray | UserError]]] = deque()
        for p in todo:
            queued.append((p, pool.submit(_read, p)))
            if len(queued) > prefetch:
                break
        while queued:
            path, fut = queued.popleft()
            if (nxt := next(todo, None)) is not None:
                queued.append((nxt, pool.submit(_read, nxt)))
            yield path, fut.result()


def predict_files(
    model: keras.Model,
    classes: Sequence[str],
    paths: Sequence[Path],
    top_k: int = 3,
    threads: int | None = None,
) -> Iterator[Prediction]:
    """One :class:`Prediction` per path, in order; unreadable files give one with ``error``."""
    k = max(1, min(top_k, len(classes)))
    threshold = shipped_threshold(model)
    for path, image in iter_images(paths, threads):
        if isinstance(image, UserError):
            yield Prediction(str(path), error=str(image))
            continue
        out = run_model(model, image)
        probs = out.probabilities
        order = np.argsort(-probs, kind="stable")[:k]
        top = tuple((classes[i], float(probs[i])) for i in order)
        yield Prediction(str(path), top, None, out.score, threshold, out.accepted)
