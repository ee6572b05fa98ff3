"""Which embedding finds items of the query's class, and keeps the pictures alike.

    python benchmarks/similar_embeddings.py --data DATA --weights FILE [--cache-dir DIR]
    python benchmarks/similar_embeddings.py --data DATA --model MODEL.keras

Catalogue: the train split (a query is never in it); queries: the validation split, on which
the class weight ``w`` and temperature ``T`` of ``pooled+probs`` are chosen, then the test
split, which reports. Features: the feature cache (mobilenet_025, 300 px, "nearest") with the
paper's head (``objective.train_head``: lr 1e-2, batch 64, 5 epochs); or, with ``--model``, the
exported model run on every image as ``clothopt index build`` runs it
(:func:`clothopt.similar.embedding_taps`). Embeddings: :func:`clothopt.similar.embed_arrays`,
the function the index uses.

Per setting: class precision@5 and @1; "visual", the mean cosine of pooled features between a
query and its top 5; "order", how much of the visual order survives within the query's class:
the Spearman correlation, over the catalogue items of the query's class, between the
embedding's scores and the visual cosine (1 for pooled features alone). The rule: the highest
validation precision@5 among settings whose validation "order" is at least --min-order.
Last, the recall@5 against exact search of the IVF index ``index build --index ivf`` would
build over these real embeddings (default nlist), for each nprobe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

WEIGHTS = (0.2, 0.3, 0.4, 0.5)  # the class half at most as heavy as the visual one
TEMPERATURES = (0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
PREVIOUS = (0.5, 1.0)  # the embedding shipped before: equal halves, plain softmax
SPLITS = ("train", "validation", "test")


def _l2(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _ranks(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(np.float64)


def score(q: np.ndarray, c: np.ndarray, visual: np.ndarray, qy: np.ndarray, cy: np.ndarray) -> dict:
    """Precision@5 and @1, visual, order (module docstring) of query and catalogue embeddings."""
    s = q @ c.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :5]
    same = cy[top] == qy[:, None]
    order = [
        np.corrcoef(_ranks(s[i, cy == qy[i]]), _ranks(visual[i, cy == qy[i]]))[0, 1]
        for i in range(len(q))
    ]
    return {
        "p@5": round(float(same.mean()), 4),
        "p@1": round(float(same[:, 0].mean()), 4),
        "visual": round(float(np.take_along_axis(visual, top, 1).mean()), 4),
        "order": round(float(np.mean(order)), 4),
    }


def _cached(args: argparse.Namespace, ds: object) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from clothopt.end_to_end import train_head
    from clothopt.features import FeatureCache
    from clothopt.model.backbones import get_backbone

    cache = FeatureCache(args.cache_dir, progress=True)
    spec = get_backbone(args.backbone)
    f = {s: cache.get(spec, args.weights, 0, args.size, "nearest", ds[s]) for s in SPLITS}  # type: ignore[index]
    tr, va = f["train"], f["validation"]
    head = train_head(tr.x, tr.y, va.x, va.y, ds.classes, 1e-2, 64, 5, seed=0)  # type: ignore[attr-defined]
    kernel, bias = head.head_weights
    return {s: (f[s].x, f[s].x @ kernel + bias) for s in SPLITS}


def _exported(model_path: str, ds: object) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from clothopt.predict import iter_images, load_classifier
    from clothopt.similar import embedding_taps

    model, classes = load_classifier(model_path)
    if tuple(classes) != tuple(ds.classes):  # type: ignore[attr-defined]
        raise SystemExit(f"the model's classes {classes} are not the data set's")
    taps = embedding_taps(model)
    out = {}
    for s in SPLITS:
        rows = []
        for path, image in iter_images(list(ds[s].paths)):  # type: ignore[index]
            if isinstance(image, Exception):
                raise SystemExit(f"{path}: {image}")
            rows.append([np.asarray(v)[0] for v in taps.predict_on_batch(image[None])])
        out[s] = (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))
    return out


def main() -> None:
    from clothopt.data import open_dataset
    from clothopt.similar import CLASS_WEIGHT, TEMPERATURE, embed_arrays

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", help="imagenet, none or a weights file (cached features)")
    ap.add_argument("--model", help="an exported model: embed with it instead")
    ap.add_argument("--backbone", default="mobilenet_025")
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--cache-dir", help="feature cache (default: memory only)")
    ap.add_argument("--min-order", type=float, default=0.95)
    args = ap.parse_args()
    if (args.weights is None) == (args.model is None):
        ap.error("give --weights (cached features, the paper's head) or --model")

    ds = open_dataset(args.data)
    feats = _exported(args.model, ds) if args.model else _cached(args, ds)
    source = Path(args.model).name if args.model else "cached features, paper head"
    y = {s: ds[s].labels for s in SPLITS}
    pooled, logits = feats["train"]

    def run(split: str, name: str, w: float = 0.5, t: float = 1.0) -> dict:
        q = embed_arrays(*feats[split], name, w, t)
        c = embed_arrays(pooled, logits, name, w, t)
        visual = _l2(feats[split][0]) @ _l2(pooled).T
        return score(q, c, visual, y[split], y["train"])

    grid = {(w, t): run("validation", "pooled+probs", w, t) for w in WEIGHTS for t in TEMPERATURES}
    kept = [k for k, m in grid.items() if m["order"] >= args.min_order] or list(grid)
    pick = max(kept, key=lambda k: (grid[k]["p@5"], grid[k]["order"]))
    for split in ("validation", "test"):
        acc = float((feats[split][1].argmax(1) == y[split]).mean())
        print(json.dumps({"source": source, "queries": split, "head_accuracy": round(acc, 4)}))
        shipped = (CLASS_WEIGHT, TEMPERATURE)
        rows = [("pooled", "pooled", 0.0, 1.0), ("previous", "pooled+probs", *PREVIOUS)]
        rows.append(("validation pick", "pooled+probs", *pick))
        if pick != shipped:
            rows.append(("shipped", "pooled+probs", *shipped))
        for label, name, w, t in rows:
            line = {"embedding": label, "w": w, "T": t, **run(split, name, w, t)}
            print(json.dumps({"queries": split, **line}), flush=True)
    print(json.dumps({"grid_on_validation": {f"w={w} T={t}": m for (w, t), m in grid.items()}}))
    _ivf_recall(embed_arrays(pooled, logits), embed_arrays(*feats["test"]))


def _ivf_recall(catalogue: np.ndarray, queries: np.ndarray) -> None:
    from clothopt.vector_index import make_index, plan_index, set_nprobe

    truth = make_index(catalogue, plan_index(len(catalogue), "flat")).search(queries, 5)[1]
    plan = plan_index(len(catalogue), "ivf")
    ivf = make_index(catalogue, plan)
    recall = {}
    for nprobe in (1, 2, 4, 8, 16, 32):
        if nprobe <= plan.nlist:
            set_nprobe(ivf, nprobe)
            got = ivf.search(queries, 5)[1]
            hits = [len(set(a) & set(b)) / 5 for a, b in zip(got, truth, strict=True)]
            recall[nprobe] = round(float(np.mean(hits)), 4)
    print(json.dumps({"ivf_nlist": plan.nlist, "default_nprobe": plan.nprobe, "recall@5": recall}))


if __name__ == "__main__":
    main()
