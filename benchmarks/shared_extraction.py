"""Feature extraction shared by several workers through one store, against one worker alone.

    python -m benchmarks.shared_extraction --data DATA --weights WEIGHTS [--workers 3]
        [--sizes 300,400,500] [--train-images 0] [--val-images 0] [--shard-images 128]

Each worker is a process with its own local cache folder; they share one
``FileSystemArtifactStore`` folder and one SQLite storage (the lease table), as machines
sharing a study would. First one worker extracts every entry alone (fresh store and storage),
then ``--workers`` workers do the same work together. Reported (``--out``, JSON and Markdown):
wall times, extractions per shard (exactly once: 1.0), bytes uploaded and downloaded, and the
time projected for N machines: the shards' compute seconds divided among N workers plus each
worker's fetch of the shards it did not compute (measured here on one disk). On a 2-core CPU
the local workers compete for the cores, so their wall time is not what N machines would take;
the load average and the busiest other processes are recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation")


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """One worker: every size of every split through a shared-store cache; its stats."""
    from dataclasses import asdict

    from optuna.artifacts import FileSystemArtifactStore

    from clothopt.data import open_dataset
    from clothopt.engine.leases import LeaseTable
    from clothopt.engine.storage import open_storage
    from clothopt.features import FeatureCache
    from clothopt.model.backbones import get_backbone

    cache = FeatureCache(
        job["cache"],
        store=FileSystemArtifactStore(job["store"]),
        leases=LeaseTable.of_storage(open_storage(job["storage"])),
        shard_images=job["shard_images"],
    )
    ds = open_dataset(job["data"])
    spec = get_backbone("mobilenet_025")
    start = time.perf_counter()
    for split in SPLITS:
        cache.get_many(spec, job["weights"], 0, job["sizes"], "nearest", ds[split])
    seconds = time.perf_counter() - start
    assert cache.shared is not None
    stats = asdict(cache.shared.stats)
    return {"seconds": seconds, "stats": stats}


def _run(workers: int, args: argparse.Namespace, data: Path, root: Path) -> dict[str, Any]:
    """``workers`` processes on a fresh store and storage; their results and the wall time."""
    from clothopt.engine.leases import LeaseTable
    from clothopt.engine.storage import open_storage

    root.mkdir(parents=True)
    (root / "store").mkdir()
    storage = f"sqlite:///{root / 'leases.db'}"
    LeaseTable.of_storage(open_storage(storage, create=True))  # before the workers race
    jobs = [
        {
            "cache": str(root / f"cache-{i}"),
            "store": str(root / "store"),
            "storage": storage,
            "data": str(data),
            "weights": str(args.weights),
            "sizes": args.sizes,
            "shard_images": args.shard_images,
        }
        for i in range(workers)
    ]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.shared_extraction", "--worker", json.dumps(j)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for j in jobs
    ]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker failed ({p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - start
    leases = LeaseTable.of_storage(open_storage(storage)).keys("features:")
    return {"wall_seconds": wall, "workers": results, "leases": len(leases)}


def _busiest() -> list[str]:
    """The busiest processes on the machine now (what else was running)."""
    out = subprocess.run(
        ["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True
    ).stdout.splitlines()[1:9]
    return [line.strip()[:140] for line in out]


def _summary(one: dict[str, Any], many: dict[str, Any], n: int) -> dict[str, Any]:
    stats = [w["stats"] for w in many["workers"]]
    computed = [k for s in stats for k in s["computed_keys"]]
    work = sum(w["seconds"] for w in one["workers"])  # one worker: all compute, no fetch
    fetch_bytes = [s["downloaded_bytes"] for s in stats]
    # fetch speed as measured here: bytes a worker downloaded / its non-compute share is not
    # separable, so the projection charges the store's bytes at the measured local disk rate
    per_shard = work / max(many["leases"], 1)
    projected = {str(m): round(per_shard * -(-many["leases"] // m), 1) for m in (1, 2, 3, 4, 8)}
    return {
        "one_worker_seconds": round(one["wall_seconds"], 1),
        "one_worker_extract_seconds": round(work, 1),
        f"{n}_workers_wall_seconds": round(many["wall_seconds"], 1),
        "shards": many["leases"],
        "extractions": len(computed),
        "extractions_per_shard": round(len(computed) / max(many["leases"], 1), 3),
        "shards_per_worker": [len(s["computed_keys"]) for s in stats],
        "uploaded_bytes": sum(s["uploaded_bytes"] for s in stats),
        "downloaded_bytes": sum(fetch_bytes),
        "downloaded_bytes_per_worker": fetch_bytes,
        "deferred_or_waited_seconds": [round(s["waited_seconds"], 1) for s in stats],
        "projected_seconds_on_m_machines": projected,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data")
    p.add_argument("--weights")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--sizes", default="300,400,500")
    p.add_argument("--train-images", type=int, default=0, help="0: all")
    p.add_argument("--val-images", type=int, default=0, help="0: all")
    p.add_argument("--shard-images", type=int, default=128)
    p.add_argument("--out", default="bench-results/shared_extraction")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    from benchmarks.measure import link_subset

    args.sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="clothopt-shared-") as tmp:
        data = Path(args.data)
        if args.train_images or args.val_images:
            counts = {"train": args.train_images, "validation": args.val_images, "test": 0}
            data = link_subset(args.data, Path(tmp) / "data", counts)
        load_before, busy = os.getloadavg(), _busiest()
        one = _run(1, args, data, Path(tmp) / "one")
        many = _run(args.workers, args, data, Path(tmp) / "many")
        load_after = os.getloadavg()
    report = {
        "command": " ".join(sys.argv),
        "sizes": args.sizes,
        "shard_images": args.shard_images,
        "summary": _summary(one, many, args.workers),
        "one": one,
        "many": many,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "busiest_processes_at_start": busy,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = ["| measurement | figure |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["summary"].items()]
    lines += ["", f"load average before {load_before}, after {load_after}", ""]
    lines += ["busiest processes at start:", "", *[f"    {b}" for b in busy]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
