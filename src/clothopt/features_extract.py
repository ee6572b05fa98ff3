"""Feature extraction: a frozen extractor run over a split's images, in order, in batches.

:class:`~clothopt.features.FeatureCache` stores what these functions compute; the batch size
for this machine (small on CPU, larger on a GPU) is here with them. A split's images may be
taken mirrored (``flip``) or as an augmentation view (``view``, :mod:`clothopt.augment`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from clothopt.augment import AUGMENT_SEED, augment_batch, image_identity
from clothopt.data import Split, iter_batches_sizes
from clothopt.errors import InvalidArgument
from clothopt.logging import get_logger

if TYPE_CHECKING:
    import keras

__all__ = [
    "CPU_EXTRACT_BATCH",
    "GPU_EXTRACT_BATCH",
    "default_extract_batch",
    "extract_features",
    "extract_features_sizes",
    "gpu_name",
]

# Images per forward pass when extracting (not the trial's batch size: features do not depend
# on it, bit for bit). On CPU smaller batches keep activations in cache: with mobilenet_025 on
# 2 cores, batch 16 against 32 took about as long at 300 px and 10-20% less at 400 and 500 px,
# which hold most of a grid's extraction time (benchmarks/bench.py, "batch size by image
# size"). On a GPU the value before the measurement stays until gpu_bench.py measures it there.
CPU_EXTRACT_BATCH = 16
GPU_EXTRACT_BATCH = 32

_log = get_logger("clothopt.features")  # the cache's lines: one logger for features


def gpu_name() -> str | None:
    """The GPU Keras's backend runs on, or None on a CPU-only machine."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return str(getattr(gpus[0], "device_kind", "gpu")) if gpus else None
    if backend == "torch":
        import torch

        return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return str(gpus[0].name) if gpus else None
    return None


def default_extract_batch() -> int:
    """The extraction batch size for this machine: small on CPU, larger on a GPU."""
    return GPU_EXTRACT_BATCH if gpu_name() else CPU_EXTRACT_BATCH


def extract_features(
    model: keras.Model,
    split: Split,
    image_size: int,
    resize: str = "nearest",
    batch_size: int = 32,
    threads: int | None = None,
    progress: bool = False,
    flip: bool = False,
    view: int = 0,
    augment_seed: int = AUGMENT_SEED,
) -> np.ndarray:
    """Run ``model`` (a :func:`~clothopt.model.compose.compose` extractor) over ``split``, in order.

    ``batch_size`` is only how many images go through the base at once: it changes speed and
    memory, not the features (beyond float rounding in the backend's kernels). ``flip``: mirror
    each resized image left-right first; ``view`` (>= 1): that augmentation view of each
    resized image instead (see :class:`FeatureKey`).
    """
    return extract_features_sizes(
        {image_size: model}, split, resize, batch_size, threads, progress, flip=flip,
        view=view, augment_seed=augment_seed,
    )[image_size]  # fmt: skip


def extract_features_sizes(
    models: Mapping[int, keras.Model],
    split: Split,
    resize: str = "nearest",
    batch_size: int = 32,
    threads: int | None = None,
    progress: bool = False,
    flip: bool = False,
    view: int = 0,
    augment_seed: int = AUGMENT_SEED,
) -> dict[int, np.ndarray]:
    """:func:`extract_features` for several sizes (``{size: extractor}``), decoding once.

    Each image is decoded once and resized to every size from that one decoded picture, so
    each size's features are bit for bit those of :func:`extract_features` at that size.
    """
    from tqdm import tqdm

    if view and flip:
        raise InvalidArgument("an augmentation view is not also mirrored (it mirrors itself)")
    sizes = list(models)
    out: dict[int, list[np.ndarray]] = {size: [] for size in sizes}
    start = time.perf_counter()
    shown = "/".join(map(str, sizes)) + (
        "px flipped" if flip else f"px view {view}" if view else "px"
    )
    ids = [image_identity(split.root, p) for p in split.paths] if view else []
    done = 0
    with tqdm(
        total=len(split),
        desc=f"features {split.name} {shown}",
        unit="img",
        file=sys.stderr,
        disable=None if progress else True,  # None: only on a terminal
        leave=False,
        dynamic_ncols=True,
    ) as bar:
        for batches in iter_batches_sizes(split.paths, sizes, batch_size, resize, threads):
            names = ids[done : done + len(batches[0])]
            for size, batch in zip(sizes, batches, strict=True):
                if flip:
                    batch = np.ascontiguousarray(batch[:, :, ::-1, :])  # NHWC: reverse columns
                elif view:
                    batch = augment_batch(batch, names, augment_seed, view, threads)
                # uint8 in: the model casts inside its compiled graph, cheaper than astype
                out[size].append(np.asarray(models[size].predict_on_batch(batch), dtype=np.float32))
            bar.update(len(batches[0]))
            done += len(batches[0])
    if progress:
        seconds = max(time.perf_counter() - start, 1e-9)
        _log.info(
            "features %s %s: %d images (%.0f img/s)",
            split.name,
            shown,
            len(split),
            len(split) / seconds,
        )
    return {
        size: np.concatenate(parts)
        if parts
        else np.zeros((0, models[size].output.shape[-1]), np.float32)
        for size, parts in out.items()
    }
