"""Similar-item search at catalogue scale: exact (Flat) against IVF, on synthetic vectors.

    python benchmarks/similar_scale.py [--n 1000000] [--dim 256] [--queries 1000]

Vectors are unit-norm float32 with cluster structure (random centres plus noise), as real
embeddings have; queries are fresh points of the same distribution. For each index: build
seconds, resident memory added, query latency at k=5 (one query per call, as the CLI asks,
and batched), and for IVF the recall@5 against exact search for each nprobe, up to the first
nprobe reaching --recall and the default one. Both indexes come from
:func:`clothopt.vector_index.make_index`, the builder ``clothopt index build`` uses, with its
defaults (``--nlist`` overrides).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from clothopt.engine.runner import rss_mb
from clothopt.vector_index import make_index, plan_index


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _data(n: int, dim: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    x = np.empty((n, dim), np.float32)
    for lo in range(0, n, 100_000):  # in chunks: the noise of all rows at once doubles memory
        hi = min(n, lo + 100_000)
        x[lo:hi] = centres[rng.integers(0, len(centres), hi - lo)]
        x[lo:hi] += rng.standard_normal((hi - lo, dim), dtype=np.float32)
    q = centres[rng.integers(0, len(centres), queries)]
    q = q + rng.standard_normal((queries, dim), dtype=np.float32)
    return _unit(x), _unit(q.astype(np.float32))


def _latency_ms(index: object, q: np.ndarray, k: int, single: int) -> tuple[float, float]:
    """Median ms per query, one query per call; and ms per query in one batch of all."""
    times = []
    for row in q[:single]:
        t = time.perf_counter()
        index.search(row[None], k)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    index.search(q, k)  # type: ignore[attr-defined]
    batch = (time.perf_counter() - t) / len(q)
    return 1000 * float(np.median(times)), 1000 * batch


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256, help="256: mobilenet_025's pooled width")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200, help="queries timed one by one")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--recall", type=float, default=0.95)
    ap.add_argument("--threads", type=int, help="faiss threads (default: all cores)")
    ap.add_argument("--nlist", type=int, help="IVF lists (default: index build's choice)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    x, q = _data(args.n, args.dim, args.queries, args.seed)
    out: dict[str, object] = {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "threads": faiss.omp_get_max_threads(),
        "faiss": faiss.__version__,
    }

    rss = rss_mb()
    t = time.perf_counter()
    flat = make_index(x, plan_index(args.n, "flat"))
    build = time.perf_counter() - t
    one, batch = _latency_ms(flat, q, args.k, args.single)
    _, truth = flat.search(q, args.k)
    out["flat"] = {
        "build_s": round(build, 2),
        "rss_added_mb": round(rss_mb() - rss, 1),
        "ms_per_query_single": round(one, 3),
        "ms_per_query_batched": round(batch, 4),
    }
    print(json.dumps({"flat": out["flat"]}), flush=True)

    plan = plan_index(args.n, "ivf", args.nlist)
    nlist = plan.nlist
    rss = rss_mb()
    t = time.perf_counter()
    ivf = make_index(x, plan, seed=args.seed)
    build = time.perf_counter() - t
    rows = []
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        if nprobe > nlist:
            break
        ivf.nprobe = nprobe
        _, got = ivf.search(q, args.k)
        recall = float(
            np.mean([len(set(a) & set(b)) / args.k for a, b in zip(got, truth, strict=True)])
        )
        one, batch = _latency_ms(ivf, q, args.k, args.single)
        rows.append(
            {
                "nprobe": nprobe,
                "recall_at_k": round(recall, 4),
                "ms_per_query_single": round(one, 3),
                "ms_per_query_batched": round(batch, 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        if recall >= args.recall and nprobe >= plan.nprobe:  # the shipped default measured too
            break
    out["ivf"] = {
        "nlist": nlist,
        "default_nprobe": plan.nprobe,
        "build_s": round(build, 2),
        "rss_added_mb": round(rss_mb() - rss, 1),
        "nprobe": rows,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
