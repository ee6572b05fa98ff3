"""Predict with an exported model: top-k classes per image, one bad file never stops the rest.

The model (``clothopt study finalize`` writes it) takes raw RGB images of any size and does the
resize and preprocessing itself, so images are only decoded here (as training decoded them:
:func:`clothopt.data.load_image`, converted to RGB, not resized). Class names come from
``classes.json`` beside the model. Models load with Keras safe mode on.

A model from ``clothopt study finalize`` since issue #13 returns a dict: ``"probabilities"``,
``"clothing_score"`` (the shipped "not clothing" detector's score, higher = more like the train
split) and ``"accepted"`` (1.0 where the score reaches the threshold the model holds in its
layer ``"ood_threshold"``). An older model returns the probabilities alone; both load here.

A model clothopt did not make is refused in one line (:class:`~clothopt.errors.ModelError`):
it must take one ``(batch, height, width, 3)`` input of any size and answer with those outputs;
the probabilities of every image must be finite, in [0, 1] and sum to 1, the detector's score
finite. ``classes.json`` must name each class once.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.data import IMAGE_EXTENSIONS, UnusableImage, default_threads, load_image
from clothopt.data.images import NO_SUCH_FILE, open_regular_file, regular_file_problem
from clothopt.errors import DataError, ModelError, NotFound, UserError

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_classes(model_path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The class names in ``classes.json`` beside the model: a list of distinct, non-blank
    strings (a duplicate would make two outputs one class in every report)."""
    path = Path(model_path).with_name(CLASSES_FILE)
    if (problem := regular_file_problem(path)) is not None:
        if problem[1] == NO_SUCH_FILE:
            raise NotFound(f"no {CLASSES_FILE} beside the model (expected {path})")
        raise ModelError(f"cannot read {path}: {problem[1]}")
    try:
        with open_regular_file(path, CLASSES_FILE) as fh:
            classes = json.loads(fh.read().decode("utf-8"))
    except UnusableImage as exc:
        raise ModelError(f"cannot read {path}: {exc.detail}") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise ModelError(f"cannot read {path}: {_first_line(exc)}") from None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ModelError(f"{path} must hold a JSON list of class names")
    if blank := [i for i, c in enumerate(classes) if not c.strip()]:
        raise ModelError(f"{path}: class name {blank[0] + 1} of {len(classes)} is empty")
    if dup := [c for c, n in Counter(classes).items() if n > 1]:
        raise ModelError(f"{path} names class {dup[0]!r} twice: each output needs its own name")
    return tuple(classes)


def load_classifier(path: str | os.PathLike[str]) -> tuple[keras.Model, tuple[str, ...]]:
    """The model (safe mode: no arbitrary code runs while loading) and its class names.

    A model clothopt did not make (another input or outputs) is a :class:`ModelError`.
    """
    path = Path(path).expanduser()
    if (problem := regular_file_problem(path)) is not None:
        if problem[1] == NO_SUCH_FILE:
            raise NotFound(f"model not found: {path}")
        raise ModelError(f"cannot read model {path}: {problem[1]}")
    classes = read_classes(path)
    import keras

    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, zipfile errors, ...
        raise ModelError(f"cannot load model {path}: {_first_line(exc)}") from None
    if not isinstance(model, keras.Model):
        raise ModelError(f"{path} holds a {type(model).__name__}, not a Keras model")
    _check_input(model, path)
    outputs = _probabilities_width(model, path)
    if outputs != len(classes):
        raise ModelError(
            f"model {path} gives {outputs} outputs but {CLASSES_FILE} names {len(classes)} classes"
        )
    shipped_threshold(model)  # a detector without its threshold fails now, not per image
    return model, classes


def _check_input(model: keras.Model, path: Path) -> None:
    """One input of raw RGB images of any size: ``(None, None, None, 3)``."""
    inputs = model.inputs
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else None
    if shape is None or len(shape) != 4 or shape[-1] != 3 or shape[1:3] != (None, None):
        got = ", ".join(str(tuple(i.shape)) for i in inputs) or "none"
        raise ModelError(
            f"model {path} is not one clothopt exported: it must take one input of RGB images of "
            f"any size (None, None, None, 3), not {got}"
        )


def _probabilities_width(model: keras.Model, path: Path) -> int | None:
    out = model.output
    if isinstance(out, dict):
        wanted = {PROBABILITIES_OUTPUT, SCORE_OUTPUT, ACCEPTED_OUTPUT}
        if set(out) != wanted:
            raise ModelError(
                f"model {path} is not one clothopt exported: its outputs are "
                f"{', '.join(sorted(map(str, out)))}, not {', '.join(sorted(wanted))}"
            )
        out = out[PROBABILITIES_OUTPUT]
    elif isinstance(out, list | tuple):
        raise ModelError(
            f"model {path} is not one clothopt exported: it has {len(out)} unnamed outputs"
        )
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2:
        raise ModelError(
            f"model {path} is not one clothopt exported: its probabilities have shape "
            f"{None if shape is None else tuple(shape)}, not (batch, classes)"
        )
    return shape[-1]


def shipped_threshold(model: keras.Model) -> float | None:
    """The "not clothing" threshold the model holds, or None for a model without detector."""
    if not isinstance(model.output, dict):
        return None
    try:
        threshold = float(
            np.asarray(model.get_layer(THRESHOLD_LAYER).get_weights()[1]).reshape(-1)[0]
        )
    except (ValueError, IndexError) as exc:  # no such layer, or one without a bias
        raise ModelError(
            f"the model's detector has no threshold (layer {THRESHOLD_LAYER!r}): {_first_line(exc)}"
        ) from None
    if not math.isfinite(threshold):
        raise ModelError(f"the model's detector threshold is {threshold}, not a finite number")
    return threshold


def run_model(model: keras.Model, image: np.ndarray) -> ModelOutput:
    """Probabilities (and the detector's verdict) for one raw ``(H, W, 3)`` image.

    One image per call (images differ in size), through ``predict_on_batch``: finalize scores
    the test split with exactly this call, so the reported figures are this function's.
    Outputs that are no probabilities (not finite, outside [0, 1], not summing to 1) are a
    :class:`ModelError`: every figure made from them would be meaningless.
    """
    try:
        out = model.predict_on_batch(image[None])
    except Exception as exc:  # a model of another make: shapes, dtypes, ops it lacks
        raise ModelError(f"the model failed on an image: {_first_line(exc)}") from None
    if not isinstance(out, dict):
        return ModelOutput(_probabilities(out))
    score = float(np.asarray(out[SCORE_OUTPUT]).reshape(-1)[0])
    if not math.isfinite(score):
        raise ModelError(f"the model's detector scores an image {score}, not a finite number")
    return ModelOutput(
        _probabilities(out[PROBABILITIES_OUTPUT]),
        score,
        bool(np.asarray(out[ACCEPTED_OUTPUT]).reshape(-1)[0] >= 0.5),
    )


def _probabilities(batch: Any) -> np.ndarray:
    probs = np.asarray(batch)
    if probs.ndim != 2 or probs.shape[0] != 1:
        raise ModelError(f"the model answers with shape {probs.shape}, not (1, classes)")
    probs = probs[0]
    if not np.all(np.isfinite(probs)):
        bad = probs[~np.isfinite(probs)][0]
        raise ModelError(
            f"the model's probabilities for an image are not finite ({bad}): the model is "
            "broken (trained to divergence?) and cannot be used"
        )
    # float32 softmax sums to 1 within ~1e-6; logits or another activation are far off
    if probs.min() < -1e-3 or probs.max() > 1 + 1e-3 or abs(float(probs.sum()) - 1) > 1e-3:
        raise ModelError(
            "the model's outputs for an image are not probabilities (sum "
            f"{float(probs.sum()):.4g}, range {float(probs.min()):.4g}..{float(probs.max()):.4g})"
        )
    return probs


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
        return DataError(f"cannot read image {path}: {exc.detail}")
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
        try:
            out = run_model(model, image)
        except ModelError as exc:  # the whole model is at fault: stop, naming the image
            raise ModelError(f"{exc} ({path})") from None
        probs = out.probabilities
        order = np.argsort(-probs, kind="stable")[:k]
        top = tuple((classes[i], float(probs[i])) for i in order)
        yield Prediction(str(path), top, None, out.score, threshold, out.accepted)
