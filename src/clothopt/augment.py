"""Seeded augmentation views: fixed random variants of each training image, cached as features.

View ``v`` (1, 2, ...) of an image is a deterministic function of (augmentation seed, ``v``,
the image's identity: its path under the split folder, e.g. ``"hat/0a1b.jpg"``), so every
worker on every machine draws the same picture and the view's features are one cache entry
like the plain and mirrored ones (:class:`~clothopt.features.FeatureKey` with ``view``).

A view is taken on the resized ``size`` x ``size`` uint8 image the base sees (as the mirror
is), by one affine warp sampled bilinearly, edges replicated:

- a random resized crop: area 60-100% of the image, aspect ratio 3/4-4/3, anywhere inside it;
- a rotation of up to +-10 degrees about the crop's centre;
- a left-right mirror half of the time;

then colour jitter: brightness, contrast and saturation each scaled by a factor in 0.8-1.2.
The same view of an image at two sizes is the same geometric transform, so concatenated sizes
stay aligned. Only NumPy: it runs alike whatever Keras backend extracts the features, and
elementwise (no BLAS, no transcendental function per pixel), so a view's pixels are the same
on every machine with the same NumPy.

:data:`RECIPE` names this recipe in the cache key; a change to what a view is must change it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothopt.errors import InvalidArgument

__all__ = [
    "AUGMENT_SEED",
    "RECIPE",
    "ViewParams",
    "augment_batch",
    "augment_image",
    "image_identity",
    "view_params",
]

RECIPE = "crop0.6-rot10-mirror-jitter0.2/v1"
AUGMENT_SEED = 0  # one seed for every study: a view's entry is shared by all of them

_AREA = (0.6, 1.0)
_LOG_ASPECT = (math.log(3 / 4), math.log(4 / 3))
_MAX_DEGREES = 10.0
_JITTER = 0.2
# ITU-R 601 luma, as PIL's convert("L") weighs the channels
_LUMA = tuple(np.float32(c) for c in (0.299, 0.587, 0.114))


@dataclass(frozen=True)
class ViewParams:
    """One view's draw: the crop (width, height and centre as fractions of the image, centre
    relative to the image's centre), rotation, mirror and colour factors."""

    width: float
    height: float
    cx: float
    cy: float
    degrees: float
    mirror: bool
    brightness: float
    contrast: float
    saturation: float


def image_identity(root: str | Path, path: str | Path) -> str:
    """An image's identity for its views: its path under the split folder, '/'-separated
    (the same on every machine and for any copy of the data set)."""
    return Path(path).relative_to(root).as_posix()


def view_params(seed: int, view: int, identity: str) -> ViewParams:
    """The draw of view ``view`` (>= 1) of the image ``identity`` under ``seed``."""
    if view < 1:
        raise InvalidArgument(f"augmentation view must be >= 1, not {view}")
    digest = hashlib.sha256(identity.encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    rng = np.random.default_rng(np.random.SeedSequence([seed, view, *words]))
    u = [float(x) for x in rng.random(9)]  # one fixed-length draw: a uniform per field
    area = _AREA[0] + (_AREA[1] - _AREA[0]) * u[0]
    aspect = math.exp(_LOG_ASPECT[0] + (_LOG_ASPECT[1] - _LOG_ASPECT[0]) * u[1])
    width = min(1.0, math.sqrt(area * aspect))
    height = min(1.0, math.sqrt(area / aspect))
    return ViewParams(
        width=width,
        height=height,
        cx=(1.0 - width) * (u[2] - 0.5),
        cy=(1.0 - height) * (u[3] - 0.5),
        degrees=_MAX_DEGREES * (2.0 * u[4] - 1.0),
        mirror=bool(u[5] < 0.5),
        brightness=1.0 + _JITTER * (2.0 * u[6] - 1.0),
        contrast=1.0 + _JITTER * (2.0 * u[7] - 1.0),
        saturation=1.0 + _JITTER * (2.0 * u[8] - 1.0),
    )


def _warp(image: np.ndarray, p: ViewParams) -> np.ndarray:
    """The crop, rotation and mirror as one inverse affine map, bilinear, edges replicated:
    (H, W, 3) uint8 in, float32 out."""
    h, w = image.shape[:2]
    # output pixel centres as offsets from the image's centre, in pixels
    u = ((np.arange(w, dtype=np.float64) + 0.5) / w - 0.5) * w
    v = ((np.arange(h, dtype=np.float64) + 0.5) / h - 0.5) * h
    if p.mirror:
        u = -u
    rad = math.radians(p.degrees)
    cos, sin = math.cos(rad), math.sin(rad)
    uu, vv = u[None, :], v[:, None]
    # rotate about the centre, scale to the crop's size, move to the crop's centre
    sx = np.clip((p.cx + 0.5) * w - 0.5 + p.width * (uu * cos - vv * sin), 0.0, w - 1.0)
    sy = np.clip((p.cy + 0.5) * h - 0.5 + p.height * (uu * sin + vv * cos), 0.0, h - 1.0)
    # the top-left neighbour (one short of the last row/column, so +1 stays inside)
    x0 = np.minimum(sx.astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(sy.astype(np.int64), max(h - 2, 0))
    fx = (sx - x0).astype(np.float32)[..., None]
    fy = (sy - y0).astype(np.float32)[..., None]
    first = (y0 * w + x0).ravel()
    flat = image.reshape(-1, 3)

    def at(shift: int) -> np.ndarray:
        return np.take(flat, first + shift, axis=0).astype(np.float32).reshape(h, w, 3)

    right, down = min(1, w - 1), min(1, h - 1) * w
    top_left, top_right = at(0), at(right)
    top = top_left + (top_right - top_left) * fx
    bottom_left, bottom_right = at(down), at(down + right)
    bottom = bottom_left + (bottom_right - bottom_left) * fx
    return top + (bottom - top) * fy


def _grey(x: np.ndarray) -> np.ndarray:
    # elementwise, not a matrix product: BLAS may sum in another order on another machine
    return x[..., 0] * _LUMA[0] + x[..., 1] * _LUMA[1] + x[..., 2] * _LUMA[2]


def _jitter(x: np.ndarray, p: ViewParams) -> np.ndarray:
    """Brightness, then contrast (about the mean grey), then saturation (about each pixel's
    grey), each clipped to 0-255 as a uint8 image would be between steps."""
    x = np.clip(x * np.float32(p.brightness), 0.0, 255.0)
    mean = np.float32(_grey(x).mean(dtype=np.float64))
    x = np.clip(mean + (x - mean) * np.float32(p.contrast), 0.0, 255.0)
    grey = _grey(x)[..., None]
    return np.clip(grey + (x - grey) * np.float32(p.saturation), 0.0, 255.0)


def augment_image(image: np.ndarray, p: ViewParams) -> np.ndarray:
    """``image`` (H, W, 3) uint8 as view ``p`` sees it: same shape, uint8."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidArgument(f"expected an (H, W, 3) image, got shape {image.shape}")
    return np.rint(_jitter(_warp(image, p), p)).astype(np.uint8)


def augment_batch(
    batch: np.ndarray,
    identities: Sequence[str],
    seed: int,
    view: int,
    threads: int | None = None,
) -> np.ndarray:
    """View ``view`` of each image of ``batch`` (N, H, W, 3), the i-th being ``identities[i]``;
    with ``threads`` > 1 the images in parallel (NumPy lets go of the GIL for per-pixel work),
    the same pixels either way."""
    if len(batch) != len(identities):
        raise InvalidArgument(f"{len(batch)} images but {len(identities)} identities")

    def one(i: int) -> np.ndarray:
        return augment_image(batch[i], view_params(seed, view, identities[i]))

    out = np.empty_like(batch)
    if threads is None or threads < 2 or len(batch) < 2:
        for i in range(len(batch)):
            out[i] = one(i)
        return out
    with ThreadPoolExecutor(min(threads, len(batch))) as pool:
        for i, image in enumerate(pool.map(one, range(len(batch)))):
            out[i] = image
    return out
