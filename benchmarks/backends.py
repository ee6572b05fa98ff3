"""A finalized model served by TensorFlow, JAX and PyTorch: does each give the report's answers?

    python -m benchmarks.backends --model studies/runs/NAME/final/model.keras \
        [--not-clothing ../shared/datasets/not-clothing] [--out bench-results/backends.json] [--x64]

Runs scripts/serve_probe.py (plain ``keras.saving.load_model(..., safe_mode=True)``, no clothopt)
in each backend's environment (``make backends``; ``CLOTHOPT_BACKEND_PYTHONS="jax=PATH ..."``
names others) on the report's test images and, when given, the not-clothing photos, and compares
every backend with the predictions finalize recorded in report.json: the share of identical
classes and "accepted" answers, macro-F1, and the largest probability difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from clothopt._io import atomic_write_text
from clothopt.data import load_image, open_dataset
from clothopt.metrics import classification_metrics
from clothopt.predict import expand_paths

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "scripts" / "serve_probe.py"


def backend_pythons() -> dict[str, str]:
    """Interpreter of each non-TensorFlow backend: ``$CLOTHOPT_BACKEND_PYTHONS``
    (``"jax=PATH torch=PATH"``), else ``.venv-jax``/``.venv-torch`` (``make backends``); the
    paths are not checked here."""
    found = dict(i.split("=", 1) for i in os.environ.get("CLOTHOPT_BACKEND_PYTHONS", "").split())
    for backend in ("jax", "torch"):
        found.setdefault(backend, str(ROOT / f".venv-{backend}" / "bin" / "python"))
    return found


def interpreters() -> dict[str, str]:
    """This interpreter for TensorFlow, and each other backend whose interpreter exists."""
    found = {b: p for b, p in backend_pythons().items() if Path(p).is_file()}
    return {"tensorflow": sys.executable, **found}


def serve(
    python: str, backend: str, model: Path, images: Path, env_extra: dict[str, str] | None = None
) -> dict[str, np.ndarray]:
    """scripts/serve_probe.py's outputs for the images of ``images`` (.npz), on ``backend``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.npz"
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": ""}
        env.pop("JAX_ENABLE_X64", None)  # JAX as installed (32-bit) unless env_extra says so
        env.update(env_extra or {})
        cmd = [python, str(PROBE), str(model), str(images), str(out)]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        if run.returncode != 0:
            raise RuntimeError(f"{backend}: {run.stderr[-2000:]}")
        with np.load(out) as got:
            if str(got["backend"]) != backend:
                raise RuntimeError(f"asked for {backend}, served by {got['backend']}")
            return {k: got[k] for k in got.files if k != "backend"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a finalized model.keras (report.json beside)")
    ap.add_argument("--not-clothing", help="a folder of photos that are not clothing")
    ap.add_argument("--out", help="write the figures as JSON here too")
    ap.add_argument("--x64", action="store_true", help="also JAX with JAX_ENABLE_X64=1")
    args = ap.parse_args()
    model = Path(args.model)
    report = json.loads((model.parent / "report.json").read_text())
    classes = list(report["classes"])
    test = open_dataset(report["data"])["test"]
    paths, truth = list(test.paths), np.asarray(report["test_labels"])
    if len(paths) != len(truth) or not np.array_equal(np.asarray(test.labels), truth):
        sys.exit(f"{report['data']}: its test split is not the one the report was made on")
    recorded = np.asarray(report["test_predictions"])
    sets = {"test": paths}
    if args.not_clothing:
        sets["not_clothing"] = expand_paths([args.not_clothing])
    results: dict[str, Any] = {"model": str(model), "images": {k: len(v) for k, v in sets.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        outputs: dict[str, dict[str, Any]] = {}
        for name, files in sets.items():
            np.savez(Path(tmp) / f"{name}.npz", *[load_image(p, None) for p in files])
        found = interpreters()
        runs = [(b, p, {}) for b, p in found.items()]
        if args.x64 and "jax" in found:  # what a JAX user may try first: 64-bit mode
            runs.append(("jax", found["jax"], {"JAX_ENABLE_X64": "1"}))
        for backend, python, extra in runs:
            label = backend + ("+x64" if extra else "")
            outputs[label] = {
                n: serve(python, backend, model, Path(tmp) / f"{n}.npz", extra) for n in sets
            }
    ref = outputs["tensorflow"]
    for label, got in outputs.items():
        pred = got["test"]["probabilities"].argmax(axis=1)
        row = {
            "test_classes_as_report": float(np.mean(pred == recorded)),
            "test_macro_f1": classification_metrics(truth, pred, classes)["f1_macro"],
            "max_probability_difference_vs_tensorflow": float(
                np.abs(got["test"]["probabilities"] - ref["test"]["probabilities"]).max()
            ),
        }
        for name in sets:
            if "accepted" in got[name]:
                same = got[name]["accepted"] == ref[name]["accepted"]
                row[f"{name}_accepted_share"] = float(got[name]["accepted"].mean())
                row[f"{name}_accepted_as_tensorflow"] = float(same.mean())
        results[label] = row
        print(label, json.dumps(row))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
