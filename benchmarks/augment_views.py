"""What an augmentation view costs to extract, and (``--quality``) what it buys.

    python -m benchmarks.augment_views --data DATA --weights WEIGHTS [--out DIR]
        [--sizes 224,300] [--images 0] [--rounds 1] [--quality] [--seeds 3]

Cost: per size, one pass of the train split (``--images`` evenly spaced ones; 0: all) through
the frozen mobilenet_025 extractor as the feature cache runs it (``extract_features_sizes``),
plain and as augmentation view 1, alternating so both see the same load; the view's extra is
the NumPy augmentation (:mod:`clothopt.augment`), also timed alone on one thread. A view of
``aug_views`` costs one such pass per image size, once per study (then cached and shared).

Quality (``--quality``): a fixed wide configuration at 300 px (1 x 512, AdamW, flip + TTA)
trained with ``aug_views`` 0 and 2 for ``--seeds`` head seeds each, scored on validation
(macro-F1, TTA); features cached under ``DIR/cache``, so a second run only trains.

Writes ``DIR/augment_views.json``; the load average and the busiest other processes are
recorded with the figures (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clothopt.augment import AUGMENT_SEED, RECIPE, augment_image, image_identity, view_params
from clothopt.data import Split, default_threads, load_batch, open_dataset

QUALITY_HEAD = {
    "image_size": 300, "batch_size": 64, "learning_rate": 1e-3, "epochs": 20,
    "hidden_layers": 1, "hidden_units": 512, "dropout": 0.3, "weight_decay": 1e-4,
    "label_smoothing": 0.1, "optimizer": "adamw", "schedule": "cosine", "flip": True,
    "tta": True,
}  # fmt: skip


def _busiest() -> list[str]:
    out = subprocess.run(
        ["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True
    ).stdout.splitlines()[1:7]
    return [line.strip()[:140] for line in out]


def _subset(split: Split, n: int) -> Split:
    if not n or n >= len(split):
        return split
    idx = np.linspace(0, len(split) - 1, n).round().astype(int)
    return Split(
        split.name, split.root, split.classes, tuple(split.paths[i] for i in idx), split.labels[idx]
    )


def _pass(model: Any, split: Split, size: int, view: int, batch: int) -> tuple[float, float]:
    """(wall, this process's CPU) seconds of one extraction pass."""
    from clothopt.features import extract_features_sizes

    wall, cpu = time.perf_counter(), time.process_time()
    extract_features_sizes(
        {size: model}, split, "nearest", batch, default_threads(), view=view,
        augment_seed=AUGMENT_SEED,
    )  # fmt: skip
    return time.perf_counter() - wall, time.process_time() - cpu


def _augment_ms(split: Split, size: int, n: int = 128) -> float:
    """Milliseconds of one thread's CPU per image for the augmentation alone."""
    paths = split.paths[:n]
    images = load_batch(paths, size, "nearest")
    params = [view_params(AUGMENT_SEED, 1, image_identity(split.root, p)) for p in paths]
    start = time.process_time()
    for image, p in zip(images, params, strict=True):
        augment_image(image, p)
    return 1000 * (time.process_time() - start) / len(paths)


def measure_cost(data: Path, weights: str, sizes: list[int], images: int, rounds: int) -> Any:
    from clothopt.features import FeatureCache
    from clothopt.model.backbones import get_backbone
    from clothopt.model.compose import compose

    split = _subset(open_dataset(data)["train"], images)
    batch = FeatureCache(None).batch_size
    spec = get_backbone("mobilenet_025")
    out: dict[str, Any] = {}
    for size in sizes:
        model = compose(spec, size, weights, 0)
        _pass(model, _subset(split, 2 * batch), size, 0, batch)  # build and trace first
        _pass(model, _subset(split, 2 * batch), size, 1, batch)
        plain, view = [], []
        for _ in range(rounds):
            plain.append(_pass(model, split, size, 0, batch))
            view.append(_pass(model, split, size, 1, batch))
        p_wall = statistics.median(w for w, _ in plain)
        v_wall = statistics.median(w for w, _ in view)
        out[str(size)] = {
            "plain_pass_seconds": round(p_wall, 2),
            "view_pass_seconds": round(v_wall, 2),
            "view_ms_per_image": round(1000 * v_wall / len(split), 2),
            "plain_ms_per_image": round(1000 * p_wall / len(split), 2),
            "view_over_plain": round(v_wall / p_wall, 3),
            # the least-loaded round: nearest what the pass costs on a machine of its own
            "plain_pass_seconds_min": round(min(w for w, _ in plain), 2),
            "view_pass_seconds_min": round(min(w for w, _ in view), 2),
            "augment_cpu_ms_per_image_one_thread": round(_augment_ms(split, size), 2),
            "plain_cpu_seconds": round(statistics.median(c for _, c in plain), 2),
            "view_cpu_seconds": round(statistics.median(c for _, c in view), 2),
            "rounds": {"plain": plain, "view": view},
        }
        per_full = 1000 * v_wall / len(split) * 3068 / 1000
        out[str(size)]["view_seconds_full_train_split"] = round(per_full, 1)
        print(f"{size}px: plain {p_wall:.1f}s, view {v_wall:.1f}s for {len(split)} images")
    return {"images": len(split), "extract_batch": batch, "threads": default_threads(), **out}


@dataclass(frozen=True)
class _Config:
    """What head_inputs reads of a StudyConfig."""

    weights: str
    seed: int = 0
    resize: str = "nearest"
    backbone: str = "mobilenet_025"
    epochs: int = 20


def measure_quality(data: Path, weights: str, cache_dir: Path, seeds: int) -> dict[str, Any]:
    from clothopt.features import FeatureCache
    from clothopt.model.head import HeadTrainer
    from clothopt.pipeline import head_inputs, train_spec
    from clothopt.trial_spec import TrialSpec

    ds = open_dataset(data)
    cache = FeatureCache(cache_dir, progress=True)
    config = _Config(weights)
    trainer = HeadTrainer()
    out: dict[str, Any] = {"head": QUALITY_HEAD, "seeds": list(range(seeds))}
    for views in (0, 2):
        params = QUALITY_HEAD | ({"aug_views": views} if views else {})
        spec = TrialSpec.of(params, config)
        start = time.perf_counter()
        inputs = head_inputs(cache, ds, config, spec)  # type: ignore[arg-type]
        features_s = time.perf_counter() - start
        f1, seconds = [], []
        for seed in range(seeds):
            result = train_spec(spec, inputs, ds.classes, trainer, seed=seed)
            f1.append(float(result.epoch_f1[-1]))
            seconds.append(result.train_seconds)
        out[f"aug_views_{views}"] = {
            "train_rows": len(inputs["train"].x),
            "val_f1_macro_tta": [round(v, 4) for v in f1],
            "mean": round(statistics.mean(f1), 4),
            "sd": round(statistics.stdev(f1), 4) if len(f1) > 1 else 0.0,
            "train_seconds_mean": round(statistics.mean(seconds), 1),
            "features_seconds_this_run": round(features_s, 1),
        }
        print(f"aug_views={views}: F1 {statistics.mean(f1):.4f} over {seeds} seeds ({f1})")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", default="bench-results", type=Path)
    ap.add_argument("--sizes", default="224,300")
    ap.add_argument("--images", type=int, default=0, help="train images timed (0: all)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quality", action="store_true", help="also aug_views 0 vs 2 on validation")
    ap.add_argument("--no-cost", action="store_true", help="skip the cost section")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "recipe": RECIPE,
        "backbone": "mobilenet_025",
        "weights": Path(args.weights).name,
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "busiest_processes_at_start": _busiest(),
        "command": "python -m benchmarks.augment_views " + " ".join(argv or []),
    }
    sizes = [int(s) for s in args.sizes.split(",")]
    if not args.no_cost:
        report["cost"] = measure_cost(args.data, args.weights, sizes, args.images, args.rounds)
    if args.quality:
        report["quality"] = measure_quality(args.data, args.weights, args.out / "cache", args.seeds)
    report["load_average_after"] = os.getloadavg()
    path = args.out / "augment_views.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
