"""Run the `paper` grid on a data set and print every point's validation macro-F1 exactly.

The `paper` space's per-point F1 on the real data is a fixed result: run this before and after
a change and compare the two files (``--check REFERENCE`` does it, bit for bit, via float.hex).

    python scripts/paper_grid_f1.py --data ../shared/datasets/clothing-dataset-small \
        --weights ../shared/weights/mobilenet_2_5_224_tf_no_top.h5 --out f1.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--backbone", default="mobilenet_025")
    ap.add_argument("--out", help="write {point: F1 as float.hex} here")
    ap.add_argument("--check", help="a file written by --out to compare with, bit for bit")
    ap.add_argument("--workdir", help="keep the storage here (default: a temporary folder)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp).absolute()
        storage = f"sqlite:///{work}/grid.db"
        cli = [sys.executable, "-m", "clothopt"]
        common = ["--storage", storage]
        subprocess.run(
            [
                *cli,
                "study",
                "create",
                "--backbone",
                args.backbone,
                "--space",
                "paper",
                "--data",
                args.data,
                "--weights",
                args.weights,
                "--name",
                "grid",
                *common,
            ],
            check=True,
        )
        subprocess.run([*cli, "study", "optimize", "grid", "--quiet", *common], check=True)
        shown = subprocess.run(
            [*cli, "study", "show", "grid", "--json", *common],
            check=True,
            capture_output=True,
            text=True,
        )
    trials = json.loads(shown.stdout)["trials"]
    got = {
        f"{t['image_size']}/{t['batch_size']}/{t['learning_rate']:g}": float(t["val_f1"]).hex()
        for t in trials
        if t["state"] == "COMPLETE"
    }
    if args.out:
        Path(args.out).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    print(f"{len(got)} grid points complete")
    if args.check:
        want = json.loads(Path(args.check).read_text())
        diff = {
            k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)
        }
        for k, (w, g) in sorted(diff.items()):
            print(f"DIFFERS {k}: reference {w} now {g}")
        print("identical, bit for bit" if not diff else f"{len(diff)} point(s) differ")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
