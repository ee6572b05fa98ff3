"""The ``make bench`` measurements on a GPU machine, with ``KERAS_BACKEND=jax`` (or torch).

One short run (a few minutes on one GPU) that needs no TensorFlow:

    KERAS_BACKEND=jax python benchmarks/gpu_bench.py [--data DIR] [--weights FILE] [--out DIR]

Without the data set (the default ../shared copy or --data) it writes a synthetic one of
JPEGs the size of the real images (10 classes, 400x533) into its scratch folder; without a
weights file it uses random weights (speed is the same; F1 then means nothing). It writes
``gpu_bench.json`` and ``gpu_bench.md`` and says plainly when no GPU was found, in which case
its figures are CPU figures of the JAX or torch backend, not GPU ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

# before anything imports keras: the backend, and JAX taking GPU memory only as it needs it
# (each section runs in its own process, so none may grab 75% of the card up front)
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.bench import main  # noqa: E402

__all__ = ["GPU_PROFILE", "make_synthetic_dataset", "run"]

SHARED_DATA = ROOT.parent / "shared/datasets/clothing-dataset-small"
SHARED_WEIGHTS = ROOT.parent / "shared/weights/mobilenet_2_5_224_tf_no_top.h5"

# A GPU extracts far faster than 2 CPU cores: more images per figure, larger batches, more
# decode threads; the search and the memory grid stay at the CPU run's scale.
GPU_PROFILE: dict[str, Any] = {
    "extract_images": 1024,
    "rounds": 3,
    "option_images": 512,
    "option_rounds": 2,
    "option_batches": [32, 64, 128, 256],
    "option_threads": [4, 8, 16],
    "slow_variant_seconds": 30.0,
    "train_images": 1000,
    "val_images": 0,
}


def make_synthetic_dataset(
    root: Path, classes: int = 10, counts: tuple[int, int, int] = (1000, 341, 20), seed: int = 0
) -> Path:
    """JPEGs shaped like the real ones (400x533, smooth colour fields plus noise), by class."""
    from PIL import Image

    if (root / "test").is_dir():
        return root
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:533, 0:400].astype(np.float32)
    for split, n in zip(("train", "validation", "test"), counts, strict=True):
        for k in range(n):
            c = k % classes
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            f1, f2 = rng.uniform(0.005, 0.05, 2)
            base = np.stack(
                [
                    127 + 100 * np.sin(f1 * xx + c),
                    127 + 100 * np.cos(f2 * yy + 2 * c),
                    np.full_like(xx, 25.0 * c),
                ],
                axis=-1,
            )
            img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"img{k:05d}.jpg", quality=90)
    return root


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    notes: list[str] = []
    if "--data" not in argv:
        if SHARED_DATA.is_dir():
            argv += ["--data", str(SHARED_DATA)]
        else:
            synthetic = Path(tempfile.gettempdir()) / "clothopt-gpu-bench-data"
            print(f"[gpu_bench] no data set: writing a synthetic one to {synthetic}")
            argv += ["--data", str(make_synthetic_dataset(synthetic))]
            notes.append("synthetic images (the data set was not found); F1 means nothing")
    if "--weights" not in argv:
        weights = str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else "none"
        argv += ["--weights", weights]
        if weights == "none":
            notes.append("random weights (no weights file found): same speed, F1 means nothing")
    title = f"clothopt GPU benchmarks (KERAS_BACKEND={os.environ['KERAS_BACKEND']})"
    rc = main(argv, profile=GPU_PROFILE, stem="gpu_bench", title=title, extra={"notes": notes})
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("bench-results")
    with contextlib.suppress(OSError, ValueError, KeyError):
        if not json.loads((out / "gpu_bench.json").read_text())["summary"]["gpu"]:
            print(
                f"[gpu_bench] NO GPU FOUND: KERAS_BACKEND={os.environ['KERAS_BACKEND']} ran on "
                "the CPU; these are not GPU figures."
            )
    return rc


if __name__ == "__main__":
    sys.exit(run())
