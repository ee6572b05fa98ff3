"""Image decoding and resizing, exactly as Keras ``load_img`` does it for ``flow_from_directory``.

Training, evaluation, prediction and ``clothopt data check`` all read images through
:func:`load_image`; the exported model reproduces the same nearest-neighbour index tables
(:func:`nearest_indices`) in Keras ops.

The rules where clothopt departs from ``load_img`` (which would train on a wrong picture or
exhaust memory without a word):

- 16-bit grayscale (PIL modes ``I;16*``, and ``I`` read from a 16-bit PNG, PGM/PPM or TIFF) is
  scaled to 8 bits by its high byte, as PIL itself reads 16-bit RGB PNGs; ``load_img`` clips it
  to 255 (an all-white picture).
- 32-bit integer (``I``) and floating-point (``F``) pixels have no agreed 8-bit scale: refused.
- More than :data:`MAX_IMAGE_PIXELS` pixels: refused from the header, before decoding.
- Anything but a regular file (after symbolic links: a FIFO, a socket, a device, a folder) is
  refused before it is opened: ``open()`` on a FIFO blocks until a writer comes, and Python
  cannot interrupt that wait (Ctrl-C and SIGTERM only take effect after it returns).

Every other mode (8-bit RGB, L, P with or without transparency, LA, RGBA, CMYK, 1, ...) decodes
bit for bit as ``load_img`` does: ``convert("RGB")``.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from itertools import islice
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from clothopt.errors import DataError, InvalidArgument

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "MAX_IMAGE_PIXELS",
    "NO_SUCH_FILE",
    "RESIZE_METHODS",
    "UnusableImage",
    "default_threads",
    "iter_batches",
    "iter_batches_sizes",
    "load_batch",
    "load_image",
    "load_image_sizes",
    "nearest_indices",
    "open_regular_file",
    "regular_file_problem",
]

RESIZE_METHODS = ("nearest", "bilinear", "bicubic")
NO_SUCH_FILE = "no such file"  # the detail of a path that is not there (not a broken link)

MAX_IMAGE_PIXELS = 50_000_000
"""The largest image clothopt decodes (width × height; 50 megapixels, e.g. 8660×5773).

Above any camera's photo of a garment, and a bound on memory: a decoded image takes 3 bytes a
pixel (150 MB here), and ``predict`` hands the full image to the model, which converts it to
float32 before resizing (about 1 GB at this limit). A larger file is refused from its header,
before anything is decoded. It is lower than PIL's own threshold (``Image.MAX_IMAGE_PIXELS``,
89.5 MP, where PIL only warns), so PIL's warning never comes into play.
"""

# Our limit is checked right after PIL's own (which only warns up to 2x its threshold), and
# palette transparency is handled exactly as load_img handles it: PIL's warnings would only
# print its source lines to the user. Filters, not catch_warnings: decoding runs in threads.
warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds", module=r"PIL\.")
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


class UnusableImage(DataError):
    """An image clothopt will not train on or predict, with ``kind`` (as ``data check`` names
    it: unreadable, truncated, too-large, broken-link) and a one-line ``detail``."""

    def __init__(
        self, path: str | os.PathLike[str], kind: str, detail: str, what: str = "image"
    ) -> None:
        hint = " (run `clothopt data check` on the data set)" if what == "image" else ""
        super().__init__(f"cannot read {what} {path}: {detail}{hint}")
        self.path, self.kind, self.detail = path, kind, detail


_FILE_TYPES = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _file_type(mode: int) -> str:
    return next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")


def regular_file_problem(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """None when ``path`` is a regular file (after links), else ``(kind, detail)`` as
    :class:`UnusableImage` names them. Only ``stat``: nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return "broken-link", f"broken symbolic link to {os.readlink(path)}"
        return "unreadable", NO_SUCH_FILE
    except OSError as exc:  # a link loop (ELOOP), a folder we may not enter (EACCES), ...
        kind = "broken-link" if os.path.islink(path) else "unreadable"
        return kind, exc.strerror or type(exc).__name__
    if stat.S_ISREG(mode):
        return None
    return "unreadable", f"not a regular file: {_file_type(mode)}"


def open_regular_file(path: str | os.PathLike[str], what: str = "image") -> BinaryIO:
    """Open ``path`` for binary reading only when it is a regular file, else
    :class:`UnusableImage` (``what`` names it in the message: "image", "index", ...).

    Checked with ``stat`` before opening, and again with ``fstat`` on a descriptor opened
    non-blocking: a FIFO swapped in between cannot make ``open()`` wait for a writer.
    """
    if (problem := regular_file_problem(path)) is not None:
        raise UnusableImage(path, *problem, what=what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnusableImage(path, "unreadable", exc.strerror or str(exc), what=what) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        detail = f"not a regular file: {_file_type(mode)}"
        raise UnusableImage(path, "unreadable", detail, what=what)
    os.set_blocking(fd, True)  # no effect on a regular file; plain reads from here on
    return os.fdopen(fd, "rb")


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _pil_filter(method: str) -> int:
    from PIL import Image

    try:
        return {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[
            method
        ]
    except KeyError:
        raise InvalidArgument(
            f"unknown resize method {method!r} (choose from {', '.join(RESIZE_METHODS)})"
        ) from None


def load_image(
    path: str | os.PathLike[str], size: int | None, resize: str = "nearest"
) -> np.ndarray:
    """Decode one image to an ``(H, W, 3)`` uint8 RGB array, resized to ``size``×``size``.

    Same steps as ``keras.utils.load_img(path, target_size=(size, size),
    interpolation=resize)``: convert to RGB, resize only when the size differs; the departures
    (16-bit, 32-bit, too large) are in the module's docstring. Raises :class:`UnusableImage`.
    """
    return load_image_sizes(path, (size,), resize)[0]


def load_image_sizes(
    path: str | os.PathLike[str], sizes: Sequence[int | None], resize: str = "nearest"
) -> list[np.ndarray]:
    """Decode one image once and resize it to each of ``sizes`` (None: as decoded).

    Each array is bit for bit what :func:`load_image` gives for that size: every resize starts
    from the same decoded RGB picture.
    """

    resample = _pil_filter(resize) if any(s is not None for s in sizes) else None
    with open_regular_file(path) as fh:
        return _decode(path, fh, sizes, resample)


def _decode(
    path: str | os.PathLike[str], fh: BinaryIO, sizes: Sequence[int | None], resample: int | None
) -> list[np.ndarray]:
    from PIL import Image

    # PIL raises many types (OSError, SyntaxError, struct.error, ...): each one is a finding
    try:
        img = Image.open(fh)
    except Image.DecompressionBombError as exc:  # above 2x PIL's threshold: PIL refuses to open
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        detail = _too_large(int(pixels[1]) if pixels else None)
        raise UnusableImage(path, "too-large", detail) from None
    except Image.UnidentifiedImageError:  # its own text names the file object, not the path
        raise UnusableImage(path, "unreadable", "cannot identify image file") from None
    except Exception as exc:
        raise UnusableImage(path, "unreadable", _describe(exc)) from None
    with img:
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            raise UnusableImage(path, "too-large", _too_large(width * height, img.size))
        try:
            # LOAD_TRUNCATED_IMAGES stays False (Keras' default), so a cut file fails here
            img.load()
        except Exception as exc:
            raise UnusableImage(path, "truncated", _describe(exc)) from None
        try:
            rgb = _to_rgb(img)
        except _NoScale as exc:
            raise UnusableImage(path, "unreadable", str(exc)) from None
        except Exception as exc:
            detail = f"cannot convert {img.mode} to RGB: {_describe(exc)}"
            raise UnusableImage(path, "unreadable", detail) from None
        return [
            np.asarray(
                rgb if s is None or rgb.size == (s, s) else rgb.resize((s, s), resample),
                dtype=np.uint8,
            )
            for s in sizes
        ]


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img`` in mode RGB: as ``load_img`` converts it, but 16-bit scaled and 32-bit refused."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if _is_16_bit(img):
        # the high byte, as PIL reads 16-bit RGB PNGs (convert() would clip at 255: all white)
        high = (np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(high, mode="L").convert("RGB")
    if img.mode in ("I", "F"):
        what = "32-bit integer" if img.mode == "I" else "floating-point"
        raise _NoScale(f"{what} pixels (mode {img.mode}) have no agreed 8-bit scale")
    return img.convert("RGB")


class _NoScale(Exception):
    pass


def _is_16_bit(img: Image.Image) -> bool:
    if img.mode.startswith("I;16"):
        return True
    if img.mode != "I":
        return False
    if img.format in ("PNG", "PPM"):  # at most 16 bits a sample (PPM scales to 0..65535)
        return True
    if img.format == "TIFF":
        tags = img.tag_v2  # type: ignore[attr-defined]
        bits, sample_format = tags.get(258, ()), tags.get(339, 1)
        bits = tuple(bits) if isinstance(bits, tuple | list) else (bits,)
        fmt = tuple(sample_format) if isinstance(sample_format, tuple | list) else (sample_format,)
        return bits == (16,) and fmt == (1,)  # unsigned 16-bit
    return False


def _too_large(pixels: int | None, size: tuple[int, int] | None = None) -> str:
    shown = f"{size[0]}x{size[1]} = " if size else ""
    amount = f"{shown}{pixels / 1e6:.1f} megapixels" if pixels else "too many pixels"
    return (
        f"{amount}, above clothopt's limit of {MAX_IMAGE_PIXELS / 1e6:g} megapixels "
        "(MAX_IMAGE_PIXELS); shrink it first"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__


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
    with closing(iter_batches_sizes(paths, (size,), batch_size, resize, threads, prefetch)) as it:
        for batches in it:
            yield batches[0]


def iter_batches_sizes(
    paths: Sequence[str | os.PathLike[str]],
    sizes: Sequence[int],
    batch_size: int,
    resize: str = "nearest",
    threads: int | None = None,
    prefetch: int = 2,
) -> Iterator[list[np.ndarray]]:
    """As :func:`iter_batches`, decoding each image once: one batch per size, in ``sizes`` order."""
    threads = threads or default_threads()
    sizes = tuple(sizes)
    todo = iter(paths)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clothopt-decode") as pool:
        queued: deque[Future[list[np.ndarray]]] = deque(
            pool.submit(load_image_sizes, p, sizes, resize)
            for p in islice(todo, (prefetch + 1) * batch_size)
        )
        try:
            while queued:
                batch = []
                for _ in range(min(batch_size, len(queued))):
                    batch.append(queued.popleft().result())
                    if (nxt := next(todo, None)) is not None:
                        queued.append(pool.submit(load_image_sizes, nxt, sizes, resize))
                yield [np.stack(per_size) for per_size in zip(*batch, strict=True)]
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
