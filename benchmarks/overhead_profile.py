"""Seconds per trial outside head training and feature extraction, on a synthetic data set.

    python -m benchmarks.overhead_profile --objective real --trials 30 [--profile out.prof]

Runs ``clothopt study optimize``'s loop (``study.optimize`` with the validation-report
callback) on SQLite in a temporary folder. ``--objective trivial`` only samples the trial's
parameters; ``attrs`` also records the user attributes the real objective records (fixed
values); ``real`` is :class:`clothopt.objective.Objective`. A trial's overhead is the time from
its start to the next trial's start less its ``train_seconds`` and ``extract_seconds``.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _fake_attrs(classes: list[str]) -> dict[str, Any]:
    per_class = {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 4} for c in classes}
    return {
        "val_precision_macro": 0.5,
        "val_recall_macro": 0.5,
        "val_f1_macro": 0.5,
        "val_accuracy": 0.5,
        "val_f1_per_class": {c: 0.5 for c in classes},
        "val_per_class": per_class,
        "val_confusion_matrix": [[1] * len(classes) for _ in classes],
        "extract_seconds": 0.0,
        "train_seconds": 0.0,
        "total_params": 1000,
        "trainable_params": 100,
        "epoch_loss": [1.0] * 10,
        "loss_diverged": False,
        "path": "cached",
        "seed": 1,
    }


def _set_user_attrs(trial: Any, attrs: dict[str, Any]) -> None:
    try:
        from clothopt.engine.storage import set_user_attrs
    except ImportError:  # a clothopt from before it (measuring "before")
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
    else:
        set_user_attrs(trial, attrs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", choices=("trivial", "attrs", "real"), default="real")
    p.add_argument("--space", default="wide")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--profile", help="write cProfile stats of optimize here")
    p.add_argument("--work", help="folder to work in (default: a temporary one)")
    p.add_argument("--out", help="also append the result (one JSON line) to this file")
    args = p.parse_args(argv)

    from clothopt import study as studies
    from clothopt.dashboard import upload_validation_report
    from clothopt.data import open_dataset
    from clothopt.data.synthetic import make_synthetic_dataset
    from clothopt.features import FeatureCache
    from clothopt.objective import Objective

    work = Path(args.work or tempfile.mkdtemp(prefix="clothopt-overhead-"))
    data = make_synthetic_dataset(work / "data")
    st, config = studies.create(
        backbone="mobilenet_025",
        space=args.space,
        n_trials=args.trials,
        name="overhead",
        storage=f"sqlite:///{work / 'study.db'}",
        data=str(data),
        weights="none",
        cache_dir=str(work / "features"),
    )
    dataset = open_dataset(config.data)
    cache = FeatureCache(config.cache_dir, batch_size=config.extract_batch_size, threads=1)
    if args.objective == "real":
        objective: Any = Objective(config, dataset, cache)
    else:
        attrs = _fake_attrs(list(dataset["train"].classes))

        def objective(trial: Any) -> float:
            config.space.suggest(trial)
            if args.objective == "attrs":
                # as the objective does: two before training, the rest at once
                trial.set_user_attr("backbone", config.backbone)
                trial.set_user_attr("features_cached", True)
                _set_user_attrs(trial, attrs)
            return 0.5

    if args.objective == "real":
        from clothopt._quiet import quiet_import_keras

        quiet_import_keras()  # as ``clothopt study optimize`` does, before the loop
    from sqlalchemy import event

    from clothopt.engine.storage import sql_engine_of

    commits: list[int] = []
    event.listen(sql_engine_of(st), "commit", lambda conn: commits.append(1))
    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    summary = studies.optimize(
        st, config, objective, progress=False, callbacks=[upload_validation_report]
    )
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    seconds = time.perf_counter() - start
    trials = sorted(st.get_trials(deepcopy=False), key=lambda t: t.datetime_start)
    overhead = []
    for t, nxt in itertools.pairwise(trials):
        a = t.user_attrs
        span = (nxt.datetime_start - t.datetime_start).total_seconds()
        overhead.append(span - a.get("train_seconds", 0.0) - a.get("extract_seconds", 0.0))
    # what was stored, to compare runs: parameters, values, attributes but the timings
    timing = {"train_seconds", "extract_seconds", "rss_mb"}
    stored = [
        [
            t.number,
            t.state.name,
            t.params,
            t.value,
            t.intermediate_values,
            *sorted((k, v) for k, v in t.user_attrs.items() if k not in timing),
        ]
        for t in trials
    ]
    out = {
        "commits_per_trial": round(len(commits) / max(summary.ran, 1), 1),
        "stored_sha": hashlib.sha256(json.dumps(stored, default=str).encode()).hexdigest()[:12],
        "objective": args.objective,
        "space": args.space,
        "trials": summary.ran,
        "complete": summary.complete,
        "seconds": round(seconds, 2),
        "median_overhead_s": round(statistics.median(overhead), 3),
        "mean_overhead_s": round(statistics.mean(overhead), 3),
        "median_overhead_after_10_s": round(statistics.median(overhead[10:]), 3),
        "load_1min": os.getloadavg()[0],  # what else the machine was running
    }
    print(json.dumps(out))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
