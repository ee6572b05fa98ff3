"""The ``make bench`` measurements on a GPU machine, with ``KERAS_BACKEND=jax`` (or torch).

One short run (a few minutes on one GPU) that needs no TensorFlow:

    KERAS_BACKEND=jax python -m benchmarks.gpu_bench [--data DIR] [--weights FILE] [--out DIR]

Without the data set (the default ../shared copy or --data) it writes a synthetic one of
JPEGs about the size of the real images (10 classes, 400-533 px a side) into its scratch
folder; without a weights file it uses random weights (speed is the same; F1 then means
nothing). It writes ``gpu_bench.json`` and ``gpu_bench.md`` and says plainly when no GPU
was found, in which case its figures are CPU figures of the JAX or torch backend, not GPU ones.
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

from benchmarks.bench import ROOT, main
from clothopt.data.synthetic import make_synthetic_dataset

__all__ = ["GPU_PROFILE", "run"]

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


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    notes: list[str] = []
    if "--data" not in argv:
        if SHARED_DATA.is_dir():
            argv += ["--data", str(SHARED_DATA)]
        else:
            synthetic = Path(tempfile.gettempdir()) / "clothopt-gpu-bench-data"
            print(f"[gpu_bench] no data set: writing a synthetic one to {synthetic}")
            if not (synthetic / "test").is_dir():
                # 10 classes of photo-sized JPEGs, as many as the CPU run's search subset
                make_synthetic_dataset(
                    synthetic,
                    classes=tuple(f"class{c:02d}" for c in range(10)),
                    counts=(100, 34, 2),
                    size_range=(400, 534),
                )
            argv += ["--data", str(synthetic)]
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
