"""The ``repeats`` section of ``make bench`` alone: one head fit (``HeadTrainer``) against M
members of the same configuration fitted as one stacked model (``StackedTrainer``: R seeds or
K folds of a trial), on synthetic features of the real shapes (mobilenet_025: 256 dims; 3,068
train rows, mirrored to 6,136; 341 validation images, two TTA views), for the paper's linear
head and a `wide` 1 x 512 head. Fits alternate (one fit, one stacked fit, ...) so both see the
same load. For the paper and wide heads also a whole K-fold trial through
``protocol.evaluate``, as the objective runs it, both ways: with a pruner (the first fold alone,
then the rest stacked) and without (every fold in one stacked fit), against one fit on the
split as given (flip and TTA: the layouts ``protocol_inputs`` builds). Wall and CPU seconds;
writes ``repeats.json`` and ``.md`` beside ``bench.json``.

    python -m benchmarks.repeats [--out DIR]
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from statistics import median
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.model.head import HeadParams, HeadTrainer
from clothopt.model.stacked import StackedTrainer, seed_members
from clothopt.pipeline import HeadInput, batch_order
from clothopt.protocol import Protocol, evaluate
from clothopt.trial_spec import TrialSpec

if TYPE_CHECKING:
    from benchmarks.measure import Settings

__all__ = ["HEADS", "measure_kfold_trial", "measure_repeats"]

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
    data: tuple[np.ndarray, ...], params: HeadParams, seed: int, members: int, tr: tuple
) -> dict[str, float]:
    """One fit and one stacked fit (seeds ``seed ..``), timed (wall and CPU seconds); member
    0's largest weight difference from the fit alone with the same seed. Stacked fits report
    F1 only (``reports=0``), as ``protocol.evaluate`` runs them."""
    solo, stacked = tr
    x, y, xv, yv = data
    t0, c0 = _clock()
    alone = solo.train(x, y, xv, yv, CLASSES, params, seed, batch_order, val_views=2)
    t1, c1 = _clock()
    seeds = seed_members(range(seed, seed + members))
    many = stacked.train(x, y, xv, yv, CLASSES, params, seeds, batch_order, val_views=2, reports=0)
    t2, c2 = _clock()
    diff = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(alone.weights, many.members[0].weights, strict=True)
    )
    return {
        "solo": t1 - t0,
        "stacked": t2 - t1,
        "solo_cpu": c1 - c0,
        "stacked_cpu": c2 - c1,
        "diff": diff,
        "f1_solo": alone.epoch_f1[-1],
        "f1_member0": float(many.f1[0]),
    }


def _trial_inputs(data: tuple[np.ndarray, ...]) -> dict[str, HeadInput]:
    """The four layouts ``protocol_inputs`` gives a flip + TTA trial with folds, from
    ``_features``' mirrored training rows and two validation views."""
    x, y, xv, yv = data
    n = len(y) // 2
    return {
        "train": HeadInput(x, y, 1, 0.0, True, 0, blocks=2),
        "validation": HeadInput(xv, yv, 2, 0.0, True, 0, blocks=2),
        "train_views": HeadInput(x, y[:n], 2, 0.0, True, 0, blocks=2),
        "validation_train": HeadInput(xv, np.tile(yv, 2), 1, 0.0, True, 0, blocks=2),
    }


def _trial_round(
    inputs: dict[str, HeadInput], spec: TrialSpec, folds: int, tr: tuple
) -> dict[str, Any]:
    """One fit (the split as given), then a ``folds``-fold trial through ``evaluate`` with a
    pruner watching (first fold alone, the rest stacked) and without (all stacked): seconds,
    CPU seconds, and the largest difference between the two ways' member weights."""
    protocol = Protocol(1, folds)
    train, val = inputs["train"], inputs["validation"]

    def watch(epoch: int, f1: float) -> None:  # a pruner that never prunes
        pass

    marks = [_clock()]
    tr[0].train(
        train.x, train.y, val.x, val.y, CLASSES, spec.head, spec.seed, batch_order, val_views=2
    )
    marks.append(_clock())
    got = []
    for on_epoch in (watch, None):
        got.append(evaluate(spec, inputs, CLASSES, protocol, 0, tr, on_epoch=on_epoch))
        marks.append(_clock())
    walls = [b[0] - a[0] for a, b in itertools.pairwise(marks)]
    cpus = [b[1] - a[1] for a, b in itertools.pairwise(marks)]
    diff = max(
        float(np.max(np.abs(a - b)))
        for ra, rb in zip(got[0].results, got[1].results, strict=True)
        for a, b in zip(ra.weights, rb.weights, strict=True)
    )
    return {"wall": walls, "cpu": cpus, "diff": diff, "same_f1": got[0].runs == got[1].runs}


def _spread(values: list[float]) -> dict[str, Any]:
    return {"median": round(median(values), 2), "range": [round(min(values), 2),
            round(max(values), 2)], "per_round": [round(v, 2) for v in values]}  # fmt: skip


def measure_kfold_trial(
    data: tuple[np.ndarray, ...], spec: dict[str, Any], epochs: int, s: Settings, rounds: int,
    goal: float, tr: tuple,
) -> dict[str, Any]:  # fmt: skip
    """A ``s.repeats_members``-fold trial against one fit over ``rounds`` rounds (after one
    that compiles every shape): each way's seconds / one fit's, per round (wall and CPU)."""
    params = spec | {"image_size": 224, "flip": True, "tta": True}
    trial = TrialSpec.from_params(params, backbone="mobilenet_025", study_seed=0, epochs=epochs)
    inputs, folds = _trial_inputs(data), s.repeats_members
    _trial_round(inputs, trial, folds, tr)
    runs = [_trial_round(inputs, trial, folds, tr) for _ in range(rounds)]
    out: dict[str, Any] = {
        "folds": folds, "rounds": rounds, "pool_examples": inputs["validation"].examples
        + inputs["train"].examples,
        "one_fit_seconds": round(median(r["wall"][0] for r in runs), 3),
        "one_fit_cpu_seconds": round(median(r["cpu"][0] for r in runs), 3),
    }  # fmt: skip
    for i, way in ((1, "first_alone"), (2, "all_stacked")):
        out[f"{way}_seconds"] = round(median(r["wall"][i] for r in runs), 3)
        out[f"{way}_cpu_seconds"] = round(median(r["cpu"][i] for r in runs), 3)
        out[f"{way}_ratio"] = _spread([r["wall"][i] / r["wall"][0] for r in runs])
        out[f"{way}_cpu_ratio"] = _spread([r["cpu"][i] / r["cpu"][0] for r in runs])
    out |= {
        "max_weight_diff_between_ways": max(r["diff"] for r in runs),
        "same_member_f1_both_ways": all(r["same_f1"] for r in runs),
        "goal": goal,
        "met": out["all_stacked_ratio"]["median"] <= goal,
    }
    return out


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
        _pair(data, params, 10_000, s.repeats_members, trainers)  # compiles the shapes
        count = s.repeats_runs * (PAPER_RUNS if name == "paper" else 1)
        runs = [_pair(data, params, r, s.repeats_members, trainers) for r in range(count)]
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
        if name in ("paper", "wide"):  # what a K-fold trial costs over a one-fit trial
            out[name]["kfold_trial"] = measure_kfold_trial(
                data, spec, epochs, s, count, goal, (alone, exact)
            )
    out["load_after"] = round(os.getloadavg()[0], 2)
    return out


def kfold_markdown(section: dict[str, Any]) -> str:
    """The K-fold trial figures as a Markdown section (``bench.md``'s tables have none)."""
    rows = []
    for name in ("paper", "wide"):
        if not (k := section.get(name, {}).get("kfold_trial")):
            continue
        for way in ("first_alone", "all_stacked"):
            wall, cpu = k[f"{way}_ratio"], k[f"{way}_cpu_ratio"]
            rows.append(
                f"| {name} | {way.replace('_', ' ')} | {k[f'{way}_seconds']:.3f} s vs "
                f"{k['one_fit_seconds']:.3f} s | {wall['median']}x [{wall['range'][0]}, "
                f"{wall['range'][1]}] | {cpu['median']}x [{cpu['range'][0]}, {cpu['range'][1]}]"
                f" | {k['rounds']} | <= {k['goal']:g}x | {k['max_weight_diff_between_ways']:.0e} |"
            )
    if not rows:
        return ""
    return "\n".join([
        "## K-fold trial vs one fit",
        f"A {k['folds']}-fold trial ({k['pool_examples']} pooled examples, flip + TTA) through "
        "`protocol.evaluate`, with a pruner (first fold alone, the rest stacked: `first alone`)"
        " and without (`all stacked`, the default), against one fit on the split as given. "
        "Ratios: median [min, max] over the rounds, wall and CPU seconds (process time: other "
        f"processes' load moves it less). Load average {section.get('load_before')} before, "
        f"{section.get('load_after')} after.",
        "",
        "| head | trial | median seconds | wall ratio | CPU ratio | rounds | goal | max dw |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip


def main(argv: list[str]) -> int:
    """``bench.main`` on the repeats section, then the K-fold trial table in ``repeats.md``."""
    import json
    from pathlib import Path

    from benchmarks.bench import _parser
    from benchmarks.bench import main as bench_main
    from clothopt._io import atomic_write_text

    argv = ["--sections", "repeats", *argv]
    code = bench_main(argv, stem="repeats", title=__doc__)
    out = Path(_parser().parse_args(argv).out)
    if (out / "repeats.json").is_file() and "--section" not in argv:
        section = json.loads((out / "repeats.json").read_text())["sections"]["repeats"]
        if table := kfold_markdown(section):
            md = out / "repeats.md"
            atomic_write_text(md, md.read_text() + "\n" + table + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
