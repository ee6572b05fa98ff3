"""Image decoding and resizing, exactly as Keras ``load_img`` does it for ``flow_from_directory``.

Training, evaluation and prediction all read images through :func:`load_image`; the exported
model reproduces the same nearest-neighbour index tables (:func:`nearest_indices`) in Keras ops.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice

import numpy as np

from clothopt.errors import UnreadableImage, UserError

__all__ = [
    "RESIZE_METHODS",
    "default_threads",
    "iter_batches",
    "load_batch",
    "load_image",
    "nearest_indices",
]

RESIZE_METHODS = ("nearest", "bilinear", "bicubic")


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _pil_filter(method: str) -> int:
    from PIL import Image

    try:
        return {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[
            method
        ]
    except KeyError:
        raise UserError(
            f"unknown resize method {method!r} (choose from {', '.join(RESIZE_METHODS)})"
        ) from None


def load_image(
    path: str | os.PathLike[str], size: int | None, resize: str = "nearest"
) -> np.ndarray:
    """Decode one image to an ``(H, W, 3)`` uint8 RGB array, resized to ``size``×``size``.

    Same steps as ``keras.utils.load_img(path, target_size=(size, size),
    interpolation=resize)``: convert to RGB, resize only when the size differs.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode != "RGB":
                img = img.convert("RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), _pil_filter(resize))
            return np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise UnreadableImage(
            f"cannot read image {path}: {exc} (run `clothopt data check` on the data set)"
        ) from None


def load_batch(
    paths: Sequence[str | os.PathLike[str]],
    size: int,
    resize: str = "nearest",
    pool: ThreadPoolExecutor | None = None,
) -> np.ndarray:
    """Decode ``paths`` (in parallel when a pool is given) into one ``(N, size, size, 3)`` batch."""
    if pool is None:
        arrays = [load_image(p, size, resize) for p in paths]
    else:
        arrays = list(pool.map(lambda p: load_image(p, size, resize), paths))
    return np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)


def iter_batches(
    paths: Sequence[str | os.PathLike[str]],
    size: int,
    batch_size: int,
    resize: str = "nearest",
    threads: int | None = None,
    prefetch: int = 2,
) -> Iterator[np.ndarray]:
    """Yield uint8 batches in order while the next ``prefetch`` batches decode in threads.

    PIL releases the GIL while decoding, so the threads overlap decoding with the forward pass.
    """
    threads = threads or default_threads()
    todo = iter(paths)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clothopt-decode") as pool:
        queued: deque[Future[np.ndarray]] = deque(
            pool.submit(load_image, p, size, resize)
            for p in islice(todo, (prefetch + 1) * batch_size)
        )
        try:
            while queued:
                batch = []
                for _ in range(min(batch_size, len(queued))):
                    batch.append(queued.popleft().result())
                    if (nxt := next(todo, None)) is not None:
                        queued.append(pool.submit(load_image, nxt, size, resize))
                yield np.stack(batch)
        finally:
            for fut in queued:
                fut.cancel()


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel for PIL's NEAREST resize along one axis.

    Pillow walks the output with a running double ``x = scale / 2; x += scale`` and takes
    ``int(x)``; the accumulated rounding is part of its result, so it is reproduced here
    step for step (a closed form differs from PIL at about 15% of size pairs).
    """
    scale = in_size / out_size
    steps = np.full(out_size, scale, dtype=np.float64)
    steps[0] = 0.5 * scale
    return np.minimum(np.floor(np.add.accumulate(steps)).astype(np.int64), in_size - 1)
