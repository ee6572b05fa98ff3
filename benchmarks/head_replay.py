"""Head seconds of a finished study's trials, trained again with this checkout's HeadTrainer.

A study's ``train_seconds`` attributes are what its heads cost when it ran; replaying the same
parameters (same seeds, same cached features, one trainer for all, as a study has) on another
checkout gives a before/after figure on real trials rather than synthetic ones:

    python -m benchmarks.head_replay --storage URL --study NAME [--cache-dir DIR] [--every K]

Prints the median, quartiles and the sum of head seconds (validation F1 is checked to be the
one the study recorded where the checkout trains the same maths).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

from clothopt import study as studies
from clothopt.model.head import HeadTrainer
from clothopt.pipeline import head_inputs, train_spec
from clothopt.runs import open_run
from clothopt.trial_spec import TrialSpec


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--data", help="data set folder (default: the study's)")
    p.add_argument("--cache-dir", help="feature cache (default: the study's)")
    p.add_argument("--every", type=int, default=1, help="replay every K-th finished trial")
    args = p.parse_args(argv)
    st, cfg = studies.load(args.study, args.storage)
    dataset, cache = open_run(cfg, args.data, args.cache_dir, progress=False)
    trainer = HeadTrainer()
    done = [t for t in st.trials if t.state.name == "COMPLETE"][:: args.every]
    secs, recorded, same_f1 = [], [], 0
    for t in done:
        spec = TrialSpec.of(t.params, cfg)  # what the space suggested, as the objective saw it
        inputs = head_inputs(cache, dataset, cfg, spec)
        start = time.perf_counter()
        result = train_spec(spec, inputs, dataset["train"].classes, trainer)
        secs.append(time.perf_counter() - start)
        recorded.append(float(t.user_attrs["train_seconds"]))
        same_f1 += result.val_metrics["f1_macro"] == t.value
        print(f"trial {t.number}: {secs[-1]:.2f} s (recorded {recorded[-1]:.2f} s)", flush=True)
    q = statistics.quantiles(secs, n=4)
    print(
        f"{len(secs)} trials of {args.study}: head seconds median {statistics.median(secs):.2f} "
        f"(quartiles {q[0]:.2f}-{q[2]:.2f}), total {sum(secs):.1f}; as recorded by the study: "
        f"median {statistics.median(recorded):.2f}; validation F1 as recorded: "
        f"{same_f1}/{len(secs)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
