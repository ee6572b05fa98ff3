"""Serve an exported model as a catalogue would: plain Keras, any backend, no clothopt.

    KERAS_BACKEND=jax python scripts/serve_probe.py MODEL.keras IMAGES.npz OUT.npz

``IMAGES.npz`` holds uint8 RGB arrays ``(H, W, 3)`` of any sizes (``arr_0``, ``arr_1``, ...);
each is one batch, as ``clothopt predict`` runs them. ``OUT.npz`` gets, per output of the
model (``probabilities``, ``clothing_score``, ``accepted``, or ``output`` for a single-output
model), the stacked results, and ``backend``. Only keras and numpy are imported, so the file runs
in a virtual environment that has no TensorFlow and no clothopt (tests/test_backends.py,
benchmarks/backends.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    import keras

    model_path, images_path, out_path = argv
    model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    with np.load(images_path) as arrays:
        images = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    outputs: dict[str, list[np.ndarray]] = {}
    for image in images:
        got = model.predict_on_batch(image[None].astype("float32"))
        if not isinstance(got, dict):
            got = {"output": got}
        for name, value in got.items():
            outputs.setdefault(name, []).append(np.asarray(value)[0])
    result = {name: np.stack(values) for name, values in outputs.items()}
    tmp = Path(out_path).with_suffix(".tmp.npz")
    np.savez(tmp, backend=np.array(keras.backend.backend()), **result)
    tmp.replace(out_path)  # whoever reads it sees all of it or nothing
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
