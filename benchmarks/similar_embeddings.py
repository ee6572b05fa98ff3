"""Which embedding finds items of the query's class: class precision@5 and @1.

    python benchmarks/similar_embeddings.py --data DATA --weights FILE [--cache-dir DIR]

Queries: the test split (``--queries validation`` to choose a setting without looking at
test); catalogue: the train split (the query is never in it). Features: the feature cache
(mobilenet_025, 300 px, "nearest"), head: ``objective.train_head`` (lr 1e-2, batch 64,
5 epochs), embeddings: :func:`clothopt.similar.embed_arrays`, the function the index uses.
"visual" is the mean cosine of pooled features between a query and its top 5: how alike the
pictures stay while the class precision rises.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def _l2(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> None:
    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache
    from clothopt.model.backbones import get_backbone
    from clothopt.objective import train_head
    from clothopt.similar import EMBEDDINGS, embed_arrays

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True, help="imagenet, none or a weights file")
    ap.add_argument("--backbone", default="mobilenet_025")
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--cache-dir", help="feature cache (default: memory only)")
    ap.add_argument("--queries", default="test", choices=("test", "validation"))
    args = ap.parse_args()

    ds = open_dataset(args.data)
    cache = FeatureCache(args.cache_dir, progress=True)
    spec = get_backbone(args.backbone)
    f = {
        s: cache.get(spec, args.weights, 0, args.size, "nearest", ds[s])
        for s in ("train", "validation", args.queries)
    }
    tr, va, qs = f["train"], f["validation"], f[args.queries]
    head = train_head(tr.x, tr.y, va.x, va.y, ds.classes, 1e-2, 64, 5, seed=0)
    kernel, bias = head.head_weights
    rows = []
    for name in EMBEDDINGS:
        q = embed_arrays(qs.x, qs.x @ kernel + bias, name)
        c = embed_arrays(tr.x, tr.x @ kernel + bias, name)
        top = np.argsort(-(q @ c.T), axis=1, kind="stable")[:, :5]
        same = tr.y[top] == qs.y[:, None]
        visual = (_l2(qs.x)[:, None, :] * _l2(tr.x)[top]).sum(-1).mean()
        rows.append(
            {
                "embedding": name,
                "queries": args.queries,
                "p@5": round(float(same.mean()), 3),
                "p@1": round(float(same[:, 0].mean()), 3),
                "visual": round(float(visual), 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    acc = float((np.argmax(qs.x @ kernel + bias, axis=1) == qs.y).mean())
    print(json.dumps({"head_accuracy": round(acc, 3), "queries": args.queries}))


if __name__ == "__main__":
    main()
