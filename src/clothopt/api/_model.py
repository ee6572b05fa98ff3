"""The Python API's models: load a finalized model, predict, index a catalogue, find similar."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from clothopt.api._common import PathLike, fspath, is_path, url_of
from clothopt.errors import InvalidArgument, NotFound
from clothopt.logging import get_logger

if TYPE_CHECKING:
    import keras
    import numpy as np
    import optuna

    from clothopt.predict import Prediction
    from clothopt.similar import BuildResult, Hit, SimilarIndex

__all__ = [
    "ClothingModel",
    "SimilarItems",
    "build_index",
    "find_similar",
    "load_model",
    "predict_images",
]

logger = get_logger(__name__)

Image = Union[str, "os.PathLike[str]", "np.ndarray"]


@dataclass(frozen=True)
class ClothingModel:
    """An exported clothopt model: the Keras model (raw RGB images of any size in), its class
    names in output order, and its file."""

    keras_model: keras.Model
    classes: tuple[str, ...]
    path: Path

    @property
    def threshold(self) -> float | None:
        """The "not clothing" detector's threshold (None: a model without the detector)."""
        from clothopt.predict import shipped_threshold

        return shipped_threshold(self.keras_model)


def load_model(model: PathLike | optuna.Study) -> ClothingModel:
    """A finalized model: a ``model.keras`` file (``classes.json`` beside it), or a finalized
    study's (fetched from the study's store on a machine that did not finalize it). Loads
    with Keras safe mode on (no code in the file runs).

    Raises:
        NotFound, ModelError (not a model clothopt exported).
    """
    from clothopt.predict import load_classifier

    path = Path(os.fspath(model)).expanduser() if is_path(model) else _final_model_of(model)
    if not path.is_file():
        raise NotFound(f"model not found: {path}")
    keras_model, classes = load_classifier(path)
    return ClothingModel(keras_model, classes, path.expanduser().absolute())


def _final_model_of(study: Any) -> Path:
    """The study's final model: from its store when it has one (fetched, verified, cached),
    else its local ``final/``."""
    from clothopt.final.store import MODEL_FILE, final_dir
    from clothopt.store import fetch_final_model

    url = url_of(study)
    fetched = fetch_final_model(study, url)
    if fetched is not None:
        return fetched
    path = final_dir(url, study.study_name) / MODEL_FILE
    if not path.is_file():
        raise NotFound(f"study {study.study_name!r} has no final model: finalize it first")
    return path


def predict_images(
    model: ClothingModel | PathLike, images: Image | Sequence[Image], *, top_k: int = 3
) -> list[Prediction]:
    """Top-k classes of each image (``clothopt predict``), in order.

    ``images``: a file, a folder (the images under it, sorted), an RGB ``uint8`` array of
    shape ``(H, W, 3)`` (any size: the model resizes), or a list of them. A file that cannot
    be read gives a :class:`clothopt.predict.Prediction` with ``error`` set, and the rest are
    still predicted; a picture the model's detector rejects has ``accepted`` False and a
    ``verdict``.

    Raises:
        InvalidArgument (no images, a bad array or top_k), NotFound / ModelError (the model).
    """
    from clothopt.predict import expand_paths, predict_files

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidArgument(f"top_k must be a positive number, not {top_k!r}")
    loaded = model if isinstance(model, ClothingModel) else load_model(model)
    items = _image_list(images)
    out: list[Prediction] = []
    for i, item in enumerate(items):
        if is_path(item):
            paths = expand_paths([item])
            out += predict_files(loaded.keras_model, loaded.classes, paths, top_k)
        else:
            out.append(_predict_array(loaded, _checked_array(item), f"<array {i}>", top_k))
    if not out:
        raise InvalidArgument("no images to predict (an empty list, or folders without images)")
    return out


def _predict_array(model: ClothingModel, image: np.ndarray, label: str, k: int) -> Prediction:
    import numpy as np

    from clothopt.predict import Prediction, run_model

    result = run_model(model.keras_model, image)
    order = np.argsort(-result.probabilities, kind="stable")[: min(k, len(model.classes))]
    top = tuple((model.classes[i], float(result.probabilities[i])) for i in order)
    return Prediction(label, top, None, result.score, model.threshold, result.accepted)


def build_index(
    model: ClothingModel | PathLike,
    catalogue: PathLike,
    out: PathLike | None = None,
    *,
    index: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
) -> BuildResult:
    """Embed every image under ``catalogue`` (any layout) and write a similar-item index file
    (``clothopt index build``; default ``similar.npz`` beside the model).

    ``index``: ``flat`` (exact), ``ivf`` or ``auto`` (ivf from 100,000 images); ``nlist`` and
    ``nprobe`` tune IVF. An unreadable image is left out, logged and listed in the result.

    Raises:
        InvalidArgument, NotFound, DataError (no readable image), ModelError.
    """
    from clothopt.similar import build_index as _build

    path = model.path if isinstance(model, ClothingModel) else Path(os.fspath(model))
    target = Path(os.fspath(out)) if out is not None else path.with_name("similar.npz")
    return _build(
        path,
        os.fspath(catalogue),
        target,
        log=logger.warning,
        index_kind=index,
        nlist=nlist,
        nprobe=nprobe,
    )


@dataclass(frozen=True)
class SimilarItems:
    """The catalogue items most like one image, best first; a picture the model's detector
    rejects has no items and ``rejected`` holds its ``score``, ``threshold`` and ``verdict``."""

    image: str
    items: list[Hit]
    rejected: dict[str, Any] | None = None


def find_similar(
    index: PathLike | SimilarIndex,
    images: PathLike | Sequence[PathLike],
    *,
    k: int = 5,
    model: ClothingModel | PathLike | None = None,
    nprobe: int | None = None,
) -> list[SimilarItems]:
    """The ``k`` catalogue items most similar to each image file (``clothopt similar``).

    ``index``: a file from :func:`build_index` (or a loaded ``clothopt.similar.SimilarIndex``);
    it is refused when its model or catalogue changed since. ``model``: default, the one the
    index was built with. ``nprobe``: IVF lists to scan (default: the index's own).

    Raises:
        InvalidArgument, NotFound, DataError (an unreadable image, a stale index), ModelError.
    """
    from clothopt.predict import expand_paths
    from clothopt.similar import SimilarIndex, query, rejections
    from clothopt.similar_index import load_index

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgument(f"k must be a positive number, not {k!r}")
    given = [images] if is_path(images) else list(images)  # type: ignore[arg-type]
    if not all(is_path(p) for p in given):
        raise InvalidArgument("similar takes image files or folders")
    paths = expand_paths(given)
    if not paths:
        raise InvalidArgument("no images given (an empty list, or folders without images)")
    for path in paths:
        if not path.is_file():
            raise NotFound(f"image not found: {path}")
    model_path = model.path if isinstance(model, ClothingModel) else fspath(model)
    if isinstance(index, SimilarIndex):
        if nprobe is not None:
            raise InvalidArgument("nprobe applies when the index is read: pass its file")
        found_index = index
    else:
        found_index = load_index(os.fspath(index), model_path, nprobe=nprobe)
    if isinstance(model, ClothingModel):
        loaded = model
    else:
        loaded = load_model(model_path or found_index.meta["model"])
    rejected = rejections(loaded.keras_model, paths)
    kept = [p for p, r in zip(paths, rejected, strict=True) if r is None]
    found = iter(query(found_index, loaded.keras_model, kept, k))
    return [
        SimilarItems(str(p), next(found) if r is None else [], r)
        for p, r in zip(paths, rejected, strict=True)
    ]


def _image_list(images: Image | Sequence[Image]) -> list[Image]:
    if is_path(images) or getattr(images, "ndim", None) == 3:
        return [images]  # type: ignore[list-item]
    if hasattr(images, "ndim"):
        raise InvalidArgument(
            f"an image array has shape (H, W, 3), not {images.shape}"  # type: ignore[union-attr]
        )
    return list(images)  # type: ignore[arg-type]


def _checked_array(image: Any) -> np.ndarray:
    import numpy as np

    if not isinstance(image, np.ndarray):
        raise InvalidArgument(
            f"an image is a file, a folder or an array, not {type(image).__name__}"
        )
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise InvalidArgument(f"an image array has shape (H, W, 3), not {image.shape}")
    if image.dtype != np.uint8:
        raise InvalidArgument(f"an image array holds uint8 RGB values, not {image.dtype}")
    return image
