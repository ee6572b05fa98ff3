"""A small learnable synthetic data set in the on-disk layout, for tests, demos and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["make_synthetic_dataset"]


def make_synthetic_dataset(
    root: str | Path,
    classes: tuple[str, ...] = ("hat", "pants", "shoes"),
    counts: tuple[int, int, int] = (8, 4, 4),
    seed: int = 0,
    size_range: tuple[int, int] = (36, 60),
) -> Path:
    """Write ``root/train|validation|test/<class>/*.jpg``: one colour per class plus noise.

    Image sizes vary (and are not square) so resizing is exercised as on real photos.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "validation", "test"), counts, strict=True):
        for ci, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            base = np.zeros(3)
            base[ci % 3] = 200
            base[(ci // 3) % 3] += 55 * (ci // 3 > 0)
            for i in range(n):
                h, w = rng.integers(size_range[0], size_range[1], size=2)
                img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{cls}_{i:03d}.jpg", quality=90)
    return root
