"""The ``repeats`` section of ``make bench`` alone: one head fit (``HeadTrainer``) against M
members of the same configuration fitted as one stacked model (``StackedTrainer``: R seeds or
K folds of a trial), on synthetic features of the real shapes (mobilenet_025: 256 dims; 3,068
train rows, mirrored to 6,136; 341 validation images, two TTA views), for the paper's linear
head and a `wide` 1 x 512 head. Fits alternate (one fit, one stacked fit, ...) so both see the
same load; writes ``repeats.json`` and ``.md`` beside ``bench.json``.

    python -m benchmarks.repeats [--out DIR]
"""

from __future__ import annotations

import os
import sys
import time
from statistics import median
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.model.head import HeadParams, HeadTrainer
from clothopt.model.stacked import StackedTrainer, seed_members
from clothopt.pipeline import batch_order

if TYPE_CHECKING:
    from benchmarks.measure import Settings

__all__ = ["HEADS", "measure_repeats"]

CLASSES = tuple(f"c{i}" for i in range(10))
FEATURE_DIM, VAL_IMAGES = 256, 341
PAPER_RUNS = 5
# (name, what, head parameters, goal: stacked seconds / one fit's)
HEADS: tuple[tuple[str, str, dict[str, Any], float], ...] = (
    ("paper", "paper's linear head, Adam, batch 32", dict(learning_rate=1e-3, batch_size=32), 1.5),
    (
        "wide",
        "1 x 512, dropout 0.3, AdamW, smoothing 0.1, cosine, batch 64",
        dict(
            hidden_layers=1, hidden_units=512, dropout=0.3, optimizer="adamw",
            weight_decay=1e-4, label_smoothing=0.1, schedule="cosine", learning_rate=1e-3,
            batch_size=64,
        ),
        3.0,
    ),
    (
        "wide_fused_adam",
        "the same with StackedTrainer(fused_adam=True) (not within float tolerance of alone)",
        dict(
            hidden_layers=1, hidden_units=512, dropout=0.3, optimizer="adamw",
            weight_decay=1e-4, label_smoothing=0.1, schedule="cosine", learning_rate=1e-3,
            batch_size=64,
        ),
        3.0,
    ),
    (
        "wide_no_dropout",
        "the same without dropout (no per-member masks to draw)",
        dict(
            hidden_layers=1, hidden_units=512, optimizer="adamw", weight_decay=1e-4,
            label_smoothing=0.1, schedule="cosine", learning_rate=1e-3, batch_size=64,
        ),
        3.0,
    ),
)  # fmt: skip


def _features(rows: int, seed: int) -> tuple[np.ndarray, ...]:
    """Non-negative features like pooled ReLU activations, 10 classes, mirrored training rows
    (plain then mirror) and two validation views."""
    rng = np.random.default_rng(seed)
    # class means this far apart give validation F1 ~0.6 (linear) / ~0.8 (wide), as real
    # features do: a separable set would train to zero loss, where Adam's tiny moments make
    # any two float orders drift apart
    means = rng.gamma(1.0, 1.0, (len(CLASSES), FEATURE_DIM)) * 0.3

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, len(CLASSES), n)
        return np.abs(means[y] + rng.normal(0, 1.0, (n, FEATURE_DIM))).astype(np.float32), y

    x, y = draw(rows)
    xv, yv = draw(VAL_IMAGES)
    mirror = (x * rng.uniform(0.9, 1.1, x.shape)).astype(np.float32)
    vmirror = (xv * rng.uniform(0.9, 1.1, xv.shape)).astype(np.float32)
    return np.concatenate([x, mirror]), np.tile(y, 2), np.concatenate([xv, vmirror]), yv


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _pair(
    data: tuple[np.ndarray, ...],
    params: HeadParams,
    seed: int,
    members: int,
    tr: tuple,
    trial: bool = False,
) -> dict[str, float]:
    """One fit and one stacked fit (seeds ``seed ..``), timed (wall and CPU seconds); member
    0's largest weight difference from the fit alone with the same seed. Stacked fits report
    F1 only (``reports=0``), as ``protocol.evaluate`` runs them. ``trial``: also the rest of
    a trial as ``protocol.evaluate`` runs it after its first member alone (``members - 1``
    stacked)."""
    solo, stacked = tr
    x, y, xv, yv = data

    def fit(first: int, count: int) -> Any:
        seeds = seed_members(range(first, first + count))
        return stacked.train(
            x, y, xv, yv, CLASSES, params, seeds, batch_order, val_views=2, reports=0
        )

    t0, c0 = _clock()
    alone = solo.train(x, y, xv, yv, CLASSES, params, seed, batch_order, val_views=2)
    t1, c1 = _clock()
    many = fit(seed, members)
    t2, c2 = _clock()
    rest = fit(seed + 1, members - 1).train_seconds if trial else float("nan")
    t3 = time.perf_counter()
    diff = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(alone.weights, many.members[0].weights, strict=True)
    )
    return {
        "solo": t1 - t0,
        "stacked": t2 - t1,
        "rest": t3 - t2 if trial else rest,
        "solo_cpu": c1 - c0,
        "stacked_cpu": c2 - c1,
        "diff": diff,
        "f1_solo": alone.epoch_f1[-1],
        "f1_member0": float(many.f1[0]),
    }


def measure_repeats(s: Settings) -> dict[str, Any]:
    """Per head: median seconds of one fit and of an M-member stacked fit over
    ``s.repeats_runs`` alternating pairs (after one pair that compiles both; the paper head,
    ~0.1 s a pair and the noisiest, gets ``PAPER_RUNS`` times as many), their ratio; for the
    paper and wide heads also a whole trial's (first member alone, the rest stacked)."""
    data = _features(s.repeats_train_rows, s.seed)
    out: dict[str, Any] = {
        "members": s.repeats_members,
        "runs": s.repeats_runs,
        "train_rows": len(data[1]),
        "feature_dim": FEATURE_DIM,
        "val_rows": len(data[2]),
        "load_before": round(os.getloadavg()[0], 2),
    }
    alone, exact, fused = HeadTrainer(), StackedTrainer(), StackedTrainer(fused_adam=True)
    for name, what, spec, goal in HEADS:
        trainers = (alone, fused if name.endswith("fused_adam") else exact)
        epochs = 2 if name == "paper" else s.repeats_wide_epochs
        params = HeadParams(**(spec | {"epochs": epochs}))
        trial = name in ("paper", "wide")
        _pair(data, params, 10_000, s.repeats_members, trainers, trial)  # compiles the shapes
        count = s.repeats_runs * (PAPER_RUNS if name == "paper" else 1)
        runs = [_pair(data, params, r, s.repeats_members, trainers, trial) for r in range(count)]
        solo, stacked = median(r["solo"] for r in runs), median(r["stacked"] for r in runs)
        ratios = sorted(r["stacked"] / r["solo"] for r in runs)
        out[name] = {
            "what": what,
            "epochs": epochs,
            "solo_seconds": round(solo, 3),
            "stacked_seconds": round(stacked, 3),
            "runs": count,
            "ratio": round(stacked / solo, 2),
            "ratio_per_run": [round(r["stacked"] / r["solo"], 2) for r in runs],
            "ratio_range": [round(ratios[0], 2), round(ratios[-1], 2)],
            "cpu_ratio": round(
                median(r["stacked_cpu"] for r in runs) / median(r["solo_cpu"] for r in runs), 2
            ),
            "max_weight_diff": max(r["diff"] for r in runs),
            "f1_solo_vs_member0": [
                (round(r["f1_solo"], 4), round(r["f1_member0"], 4)) for r in runs
            ],
            "goal": goal,
            "met": stacked / solo <= goal,
        }
        if trial:  # what a K-fold trial costs over a one-fit trial
            rest = median(r["solo"] + r["rest"] for r in runs)
            out[name]["trial_ratio"] = round(rest / solo, 2)
    out["load_after"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":
    from benchmarks.bench import main

    sys.exit(main(["--sections", "repeats", *sys.argv[1:]], stem="repeats", title=__doc__))
