"""Data sets: layout, fingerprints, image decoding, download and checks."""

from __future__ import annotations

from clothopt.data.check import CheckReport, check
from clothopt.data.fetch import (
    DATASET_COMMIT,
    DATASET_FINGERPRINT,
    DATASET_IMAGES,
    DATASET_REPO,
    DATASET_URL,
    fetch,
)
from clothopt.data.images import (
    MAX_IMAGE_PIXELS,
    RESIZE_METHODS,
    UnusableImage,
    default_threads,
    iter_batches,
    iter_batches_sizes,
    load_batch,
    load_image,
    load_image_sizes,
    nearest_indices,
)
from clothopt.data.layout import (
    IMAGE_EXTENSIONS,
    SPLITS,
    Dataset,
    Split,
    file_sha256,
    open_dataset,
)

__all__ = [
    "DATASET_COMMIT",
    "DATASET_FINGERPRINT",
    "DATASET_IMAGES",
    "DATASET_REPO",
    "DATASET_URL",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "RESIZE_METHODS",
    "SPLITS",
    "CheckReport",
    "Dataset",
    "Split",
    "UnusableImage",
    "check",
    "default_threads",
    "fetch",
    "file_sha256",
    "iter_batches",
    "iter_batches_sizes",
    "load_batch",
    "load_image",
    "load_image_sizes",
    "nearest_indices",
    "open_dataset",
]
