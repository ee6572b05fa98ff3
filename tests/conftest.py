"""Shared fixtures: tiny synthetic data sets made in the test, seeded, under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Fast failure detection for the resume tests; set before clothopt.study is imported
os.environ.setdefault("CLOTHOPT_HEARTBEAT_INTERVAL", "1")
os.environ.setdefault("CLOTHOPT_GRACE_PERIOD", "3")
os.environ.setdefault("CLOTHOPT_POLL_SECONDS", "0.2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared/datasets/clothing-dataset-small"
REAL_WEIGHTS = (
    Path(__file__).resolve().parents[1].parent / "shared/weights/mobilenet_2_5_224_tf_no_top.h5"
)
CLASSES = ("hat", "pants", "shoes")


def make_dataset(
    root: Path,
    classes: tuple[str, ...] = CLASSES,
    counts: tuple[int, int, int] = (8, 4, 4),
    seed: int = 0,
) -> Path:
    """A learnable synthetic data set: each class has its own colour, plus noise and odd sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "validation", "test"), counts, strict=True):
        for ci, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            base = np.zeros(3)
            base[ci % 3] = 200
            for i in range(n):
                h, w = rng.integers(36, 60, size=2)
                img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{cls}_{i:03d}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip("real data set not at ../shared/datasets")
    return REAL_DATA


@pytest.fixture
def real_weights() -> Path:
    if not REAL_WEIGHTS.is_file():
        pytest.skip("pretrained MobileNet weights not at ../shared/weights")
    return REAL_WEIGHTS


@pytest.fixture
def real_subset(tmp_path: Path, real_data: Path) -> Path:
    """A small subset of the real data set, linked (not copied) under tmp_path."""
    root = tmp_path / "subset"
    for split, n in (("train", 12), ("validation", 4), ("test", 4)):
        for cls_dir in sorted((real_data / split).iterdir()):
            dest = root / split / cls_dir.name
            dest.mkdir(parents=True)
            for img in sorted(cls_dir.iterdir())[:n]:
                (dest / img.name).symlink_to(img)
    return root


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies' / 'clothopt.db'}"
