"""The faiss index over the embeddings: exact (Flat) or IVF, chosen by the catalogue's size.

Both ``clothopt index build`` and ``benchmarks/similar_scale.py`` build through
:func:`make_index`, so the benchmark measures the index that ships. Figures (1,000,000
synthetic 256-d unit vectors, one thread, a shared machine): Flat answers in 74 ms per
query; IVF with ``4 * sqrt(n)`` lists (4,000) builds in 56 s and answers in 0.30 ms at the
default nprobe 16, recall@5 1.0 against exact (0.992 at nprobe 4).

- ``flat``: ``IndexFlatIP``, exact; vectors have unit norm, so inner product is cosine.
- ``ivf``: ``IndexIVFFlat`` (inner product) over ``nlist`` k-means lists, of which a query
  scans ``nprobe``. ``nlist`` defaults to ``4 * sqrt(n)``, capped so each list has
  :data:`TRAIN_PER_LIST` training points (a small catalogue gets few lists, down to one).
- ``auto``: ``ivf`` from :data:`AUTO_IVF_FROM` items on, where Flat passes ~5 ms a query.

No keras here: this module knows vectors only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.errors import InvalidArgument

if TYPE_CHECKING:
    import faiss

__all__ = [
    "AUTO_IVF_FROM",
    "DEFAULT_NPROBE",
    "INDEX_KINDS",
    "TRAIN_PER_LIST",
    "IndexPlan",
    "index_info",
    "make_index",
    "plan_index",
    "set_nprobe",
]

INDEX_KINDS = ("auto", "flat", "ivf")
# Flat costs ~45 ns per item and query on one core: 100k items is ~5 ms, the scale goal
AUTO_IVF_FROM = 100_000
# recall@5 against exact: 0.992 at 4 on the synthetic million (1.0 at 8), but real embeddings
# cluster less: 0.958 at 8 and 0.994 at 16 on the train split's (191 lists); 16 lists of a
# million cost 0.3 ms a query
DEFAULT_NPROBE = 16
# k-means points per list: the benchmark's setting (36 s to build a million at 4,000 lists)
TRAIN_PER_LIST = 16


@dataclass(frozen=True)
class IndexPlan:
    kind: str  # "flat" or "ivf" (never "auto": resolved)
    nlist: int = 0  # 0 for flat
    nprobe: int = 0  # 0 for flat


def plan_index(
    n: int,
    kind: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    auto_ivf_from: int = AUTO_IVF_FROM,
) -> IndexPlan:
    """Resolve the user's choices for ``n`` vectors; one that cannot work: InvalidArgument."""
    if kind not in INDEX_KINDS:
        raise InvalidArgument(f"unknown index kind {kind!r} (choose from {', '.join(INDEX_KINDS)})")
    for flag, value in (("--nlist", nlist), ("--nprobe", nprobe)):
        if value is not None and value < 1:
            raise InvalidArgument(f"{flag} must be at least 1, not {value}")
    if kind == "auto":
        kind = "ivf" if n >= auto_ivf_from else "flat"
        if kind == "flat":
            nlist = nprobe = None  # tuning for a large catalogue does not apply to a small one
    if kind == "flat":
        if nlist is not None or nprobe is not None:
            raise InvalidArgument("--nlist and --nprobe apply to an IVF index only (--index ivf)")
        return IndexPlan("flat")
    if nlist is None:
        nlist = max(1, min(round(4 * math.sqrt(n)), n // TRAIN_PER_LIST))
    elif nlist > n:
        # faiss's k-means needs at least one training point per list
        raise InvalidArgument(
            f"--nlist {nlist} needs at least {nlist} items to train on; the catalogue has {n} "
            "(leave --nlist out to pick it from the size)"
        )
    if nprobe is None:
        nprobe = min(DEFAULT_NPROBE, nlist)
    elif nprobe > nlist:
        raise InvalidArgument(f"--nprobe {nprobe} is more than the index's {nlist} lists")
    return IndexPlan("ivf", nlist, nprobe)


def make_index(x: np.ndarray, plan: IndexPlan, seed: int = 0) -> faiss.Index:
    """An inner-product index holding the ``(n, d)`` float32 rows of ``x``, as ``plan`` says."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    if plan.kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        return index
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, plan.nlist, faiss.METRIC_INNER_PRODUCT)
    # we size the sample ourselves; faiss would print a warning line below 39 points a list
    ivf.cp.min_points_per_centroid = 1
    ivf.cp.seed = seed
    size = min(n, TRAIN_PER_LIST * plan.nlist)
    rows = np.random.default_rng(seed).choice(n, size, replace=False) if size < n else slice(None)
    ivf.train(x[rows])
    ivf.add(x)
    ivf.nprobe = plan.nprobe
    return ivf


def set_nprobe(index: faiss.Index, nprobe: int | None) -> None:
    """Override an IVF index's nprobe (None keeps the stored one); InvalidArgument on Flat."""
    if nprobe is None:
        return
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        raise InvalidArgument(
            "--nprobe applies to an IVF index only; this index is exact"
        ) from None
    if not 1 <= nprobe <= ivf.nlist:
        raise InvalidArgument(f"--nprobe must be between 1 and the index's {ivf.nlist} lists")
    ivf.nprobe = nprobe


def index_info(index: faiss.Index) -> dict[str, Any]:
    """What the index file's metadata records about the index: its type, nlist and nprobe."""
    import faiss

    info: dict[str, Any] = {"index_type": type(index).__name__}
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return info
    return info | {"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe)}
