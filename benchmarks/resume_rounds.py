"""Kill-and-resume rounds: SIGKILL workers at random moments, resume, check exactly-once.

Each round builds a fresh grid study (8 points, synthetic images, mobilenet_025 with random
weights, a fresh feature cache so kills also land in feature extraction), starts 1-3 real
`clothopt study optimize` workers, kills one or all of them with SIGKILL at a random moment,
runs one more worker to the end, and checks that every grid point is COMPLETE exactly once.

    python -m benchmarks.resume_rounds --rounds 20 [--storage postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clothopt import study as st
from clothopt._io import atomic_write_json
from clothopt.data.synthetic import make_synthetic_dataset

SPACE = "[params]\nimage_size = [32, 48]\nbatch_size = [4, 8]\nlearning_rate = [0.01, 0.001]\n"


def _worker(name: str, storage: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clothopt",
            "study",
            "optimize",
            name,
            "--storage",
            storage,
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def one_round(
    k: int, root: Path, data: Path, storage: str | None, rng: random.Random, tag: str
) -> dict:
    name = f"round-{tag}-{k}"  # unique in a shared database
    url = storage or f"sqlite:///{root / f'r{k}' / 'clothopt.db'}"
    space = root / "space.toml"
    st.create(
        backbone="mobilenet_025",
        space=str(space),
        data=str(data),
        storage=url,
        weights="none",
        name=name,
        cache_dir=str(root / f"r{k}" / "features"),
    )
    workers = [_worker(name, url) for _ in range(rng.randint(1, 3))]
    delay = rng.uniform(2.0, 14.0)  # start-up, feature extraction, a trial, or its write
    time.sleep(delay)
    victims = workers if rng.random() < 0.3 else [rng.choice(workers)]
    killed = 0
    for proc in victims:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
    for proc in workers:
        proc.wait()
    finisher = _worker(name, url)
    code = finisher.wait()
    study, config = st.load(name, url)
    grid = st.grid_status(study, config)
    ok = code == 0 and grid["complete_once"] == grid["points"] and not grid["duplicates"]
    return {
        "round": k,
        "workers": len(workers),
        "killed": killed,
        "kill_after_s": round(delay, 2),
        "finisher_exit": code,
        "complete_once": grid["complete_once"],
        "points": grid["points"],
        "duplicates": grid["duplicates"],
        "ok": ok,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--storage", help="default: a fresh SQLite file per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results/resume_rounds.json")
    args = parser.parse_args()
    os.environ.setdefault("CLOTHOPT_GRACE_PERIOD", "5")
    os.environ.setdefault("CLOTHOPT_HEARTBEAT_INTERVAL", "1")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="clothopt-rounds-") as tmp:
        root = Path(tmp)
        (root / "space.toml").write_text(SPACE)
        data = make_synthetic_dataset(root / "data")
        for k in range(args.rounds):
            res = one_round(k, root, data, args.storage, rng, f"{int(time.time())}")
            results.append(res)
            print(json.dumps(res), flush=True)
    passed = sum(r["ok"] for r in results)
    summary = {
        "rounds": len(results),
        "passed": passed,
        "kills": sum(r["killed"] for r in results),
        "storage": args.storage or "sqlite",
        "results": results,
    }
    atomic_write_json(args.out, summary)
    print(
        f"{passed}/{len(results)} rounds ended with every grid point complete exactly once "
        f"({summary['kills']} workers killed with SIGKILL)"
    )
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
