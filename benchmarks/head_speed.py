"""Per-trial seconds of head training on real cached features: today's ``train_head`` vs
:class:`clothopt.model.head.HeadTrainer` (paper head, bit-identical F1), plus a few wide heads.

    python -m benchmarks.head_speed --data DIR --weights FILE [--cache DIR] [--size 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script as well as with -m from the repository root
    sys.path.insert(0, str(ROOT))

from clothopt.data import open_dataset  # noqa: E402
from clothopt.features import FeatureCache  # noqa: E402
from clothopt.model.backbones import get_backbone  # noqa: E402
from clothopt.model.head import HeadParams, HeadTrainer  # noqa: E402
from clothopt.objective import batch_order, train_head, trial_seed  # noqa: E402

BATCHES = (32, 48, 64)
RATES = (1e-2, 1e-3, 1e-4)
WIDE = {
    "linear l2 adamw cosine 20ep": dict(
        optimizer="adamw", weight_decay=1e-4, schedule="cosine", normalize="l2", epochs=20
    ),
    "512 drop.5 ls.1 adamw cosine l2 10ep": dict(
        hidden_layers=1,
        dropout=0.5,
        label_smoothing=0.1,
        optimizer="adamw",
        weight_decay=1e-4,
        schedule="cosine",
        normalize="l2",
        epochs=10,
    ),
    "512 drop.5 ls.1 adamw cosine l2 20ep": dict(
        hidden_layers=1,
        dropout=0.5,
        label_smoothing=0.1,
        optimizer="adamw",
        weight_decay=1e-4,
        schedule="cosine",
        normalize="l2",
        epochs=20,
    ),
    "512 drop.5 sgd cosine std 20ep": dict(
        hidden_layers=1, dropout=0.5, optimizer="sgd", schedule="cosine", normalize="standardize",
        epochs=20,
    ),
}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--backbone", default="mobilenet_025")
    ap.add_argument("--cache", default="/tmp/head-cache", help="feature cache folder")
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="study seed (trial seeds derive from it)")
    args = ap.parse_args()

    ds = open_dataset(args.data)
    cache, spec = FeatureCache(args.cache), get_backbone(args.backbone)
    tr, va = (
        cache.get(spec, args.weights, 0, args.size, "nearest", ds[s])
        for s in ("train", "validation")
    )
    classes = ds["train"].classes
    data = (tr.x, tr.y, va.x, va.y, classes)
    trainer = HeadTrainer()
    print(f"features: train {tr.x.shape}, validation {va.x.shape}, {args.size}px")

    # warm-up: TensorFlow's first trace and the trainer's one compile are not a trial's cost
    train_head(*data, 1e-3, 32, 2, 0)
    trainer.train(*data, HeadParams(learning_rate=1e-3, batch_size=32), 0, batch_order)

    print(f"{'batch':>5} {'lr':>7} {'old s':>7} {'new s':>7}  val macro-F1 (old == new)")
    old_s, new_s, same = [], [], True
    for batch in BATCHES:
        for lr in RATES:
            seed = trial_seed(
                args.seed, {"image_size": args.size, "batch_size": batch, "learning_rate": lr}
            )
            t0 = time.perf_counter()
            old = train_head(*data, lr, batch, 2, seed)
            t1 = time.perf_counter()
            new = trainer.train(
                *data, HeadParams(learning_rate=lr, batch_size=batch), seed, batch_order
            )
            t2 = time.perf_counter()
            old_s.append(t1 - t0)
            new_s.append(t2 - t1)
            ok = old.epoch_f1 == new.epoch_f1 and (old.val_pred == new.val_pred).all()
            same &= bool(ok)
            print(
                f"{batch:>5} {lr:>7g} {t1 - t0:>7.3f} {t2 - t1:>7.3f}  "
                f"{new.epoch_f1[-1]:.6f} {'==' if ok else '!= ' + repr(old.epoch_f1[-1])}"
            )  # fmt: skip
    print(
        f"paper head median per trial: old {statistics.median(old_s):.3f} s, "
        f"new {statistics.median(new_s):.3f} s; F1 identical on every epoch: {same}"
    )

    print(f"\n{'wide head (lr 1e-3, batch 64)':<38} {'s/trial':>8} {'F1':>7}  (median of 3 seeds)")
    for name, kw in WIDE.items():
        params = HeadParams(learning_rate=1e-3, batch_size=64, **kw)  # type: ignore[arg-type]
        trainer.train(*data, params, 99, batch_order)  # this shape's one compile
        secs, f1s = [], []
        for seed in (1, 2, 3):
            t0 = time.perf_counter()
            res = trainer.train(*data, params, seed, batch_order)
            secs.append(time.perf_counter() - t0)
            f1s.append(res.epoch_f1[-1])
        print(f"{name:<38} {statistics.median(secs):>8.3f} {statistics.median(f1s):>7.4f}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
