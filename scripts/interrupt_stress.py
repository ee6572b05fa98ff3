"""Interrupt `clothopt study optimize` at random moments, many times, and count what went wrong.

Each run starts a worker on a study of tiny synthetic images (random weights, one short trial
after another), sends it SIGINT or SIGTERM 0.3-6 s after its handler is up, and checks the
promise: exit 130 / 143 (or 0 if it finished first) with no traceback on stderr. The test suite
interrupts a few runs; this finds what lands once in hundreds (a signal inside a finalizer or a
storage call). Runs from this checkout's ``src``; stderr of every bad run is kept in WORKDIR.

    python scripts/interrupt_stress.py --workdir /tmp/stress --runs 300 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
SPACE = """sampler = "random"
n_trials = 100000
[params]
image_size = [32]
batch_size = [8]
learning_rate = { low = 1e-4, high = 1e-2, log = true }
"""


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "clothopt", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's
    )


def _wait_until_caught(proc: subprocess.Popen[str]) -> None:
    """Until the worker has its SIGTERM handler (Linux /proc SigCgt), its first act."""
    status = Path(f"/proc/{proc.pid}/status")
    while status.exists() and proc.poll() is None:
        masks = dict(line.split(":\t") for line in status.read_text().splitlines())
        if int(masks["SigCgt"], 16) & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.002)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="an empty or new folder for the study")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, str(SRC))
    from clothopt.data.synthetic import make_synthetic_dataset

    root = Path(args.workdir).resolve()
    if root.exists() and any(root.iterdir()):
        print(f"interrupt_stress: {root} is not empty", file=sys.stderr)
        return 2
    root.mkdir(parents=True, exist_ok=True)
    data = make_synthetic_dataset(root / "data")
    (root / "space.toml").write_text(SPACE)
    storage = f"sqlite:///{root / 'studies.db'}"
    create = _cli(
        *("study", "create", "--backbone", "mobilenet_025", "--weights", "none"),
        *("--space", str(root / "space.toml"), "--data", str(data), "--name", "s"),
        *("--storage", storage, "--max-retries", "100"),
    )
    _, err = create.communicate()
    if create.returncode != 0:
        print(err, file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    for run in range(1, args.runs + 1):
        proc = _cli("study", "optimize", "s", "--storage", storage, "--quiet")
        _wait_until_caught(proc)
        time.sleep(rng.uniform(0.3, 6.0))
        sig = rng.choice([signal.SIGINT, signal.SIGTERM])
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        expected = {signal.SIGINT: 130, signal.SIGTERM: 143}[sig]
        bad = "Traceback" in err or "Exception ignored" in err
        if proc.returncode not in (0, expected):
            outcome = f"exit {proc.returncode}"
        else:
            outcome = "traceback" if bad else "clean"
        outcomes[outcome] += 1
        if outcome != "clean":
            (root / f"run{run}.txt").write_text(f"{sig.name} -> {proc.returncode}\n{err}")
        if run % 25 == 0 or outcome != "clean":
            print(f"run {run}: {dict(outcomes)}", flush=True)
    print(f"{args.runs} runs: {dict(outcomes)}")
    return 0 if set(outcomes) == {"clean"} else 1


if __name__ == "__main__":
    sys.exit(main())
