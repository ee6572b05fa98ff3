"""Similar items: embed a catalogue with a finalized model, search it with faiss.

The embedding is read from the exported model (``clothopt study finalize``): its layer "pool"
gives the pooled backbone features, and the logits it answers with (:func:`embedding_taps`)
the class half. :func:`embed_arrays` turns those two into one vector; it is the only place
that does, so the figures measured by ``benchmarks/similar_embeddings.py`` are the ones the
index gives.

``pooled+probs = [sqrt(1 - w) l2(pooled), sqrt(w) sqrt(softmax(logits / T))]``, w = 0.5,
T = 0.1: the inner product is half the visual cosine, half the Bhattacharyya coefficient of
the two sharpened class distributions. The sharp class half is near one-hot, so it acts as a
gate: items the model puts in the query's class first, in the order of how alike they look.
w and T were picked on the validation split (queries; the train split is the catalogue) as
the highest class precision@5 among settings that keep the visual order within a class
(Spearman >= 0.95 between the scores and the visual cosine over the query's class) and whose
class half is not heavier than the visual one (w <= 0.5). With the
``wide`` demo model (mobilenet_025, 300 px, TTA; 85.2% test accuracy), test split: class
precision@5 0.853, @1 0.852, visual order 0.991, mean visual cosine of the top 5 0.817; the
previous embedding (T = 1) 0.834 / 0.839, order 0.852, cosine 0.808 (0.821 / 0.820 as it
read the logits of the unmirrored image only); pooled features alone
0.558 / 0.613, cosine 0.829. With the paper's weaker head (5 epochs on cached features,
80.9%): 0.772 / 0.785 (previous 0.787 / 0.801): precision@5 follows the head's accuracy.

The index is one ``.npz`` file (no pickles): faiss's serialized index, the catalogue's
relative paths and JSON metadata (the model's SHA-256, the catalogue's fingerprint, the
embedding's w and T). :mod:`clothopt.similar_index` reads it back, which refuses a file that is
not a safe index of this format, or whose model or catalogue changed since it was built; the
HTML page is :mod:`clothopt.similar_html`.
Search is exact below 100,000 items and IVF from there on (:mod:`clothopt.vector_index`).

The catalogue's fingerprint hashes every image's bytes (SHA-256, streamed), so an edit that
keeps a file's size and modification time is seen too. On the train split (3,068 JPEGs,
87.5 MB, page cache warm) that costs 0.48 ± 0.03 s a load against 0.075 s for the
size-and-mtime listing it replaced, plus 0.15 s to list the folder
(``benchmarks/catalogue_fingerprint.py``, a 2-core machine shared with other jobs). Files under
the folder that resolve outside it are left out of an index when it is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt._io import atomic_path
from clothopt.data import IMAGE_EXTENSIONS, UnusableImage, file_sha256, load_image
from clothopt.data.images import open_regular_file
from clothopt.errors import DataError, InvalidArgument, ModelError, NotFound, UserError
from clothopt.logging import get_logger
from clothopt.vector_index import index_info, make_index, plan_index

if TYPE_CHECKING:
    import faiss
    import keras

__all__ = [
    "CLASS_WEIGHT",
    "DEFAULT_EMBEDDING",
    "EMBEDDINGS",
    "INDEX_FORMAT",
    "TEMPERATURE",
    "BuildResult",
    "Hit",
    "SimilarIndex",
    "build_index",
    "catalogue_files",
    "catalogue_fingerprint",
    "embed_arrays",
    "embedder",
    "embedding_taps",
    "query",
    "rejections",
]

EMBEDDINGS = ("pooled", "pooled+probs")
DEFAULT_EMBEDDING = "pooled+probs"
# picked on the validation split (module docstring): equal halves, the class half sharp enough
# to act as a gate, which keeps the visual order within a class
CLASS_WEIGHT = 0.5
TEMPERATURE = 0.1
# bump when the file's layout, the embedding or the fingerprint changes; older files are then
# refused (3: the catalogue fingerprint hashes content)
INDEX_FORMAT = 3

logger = get_logger(__name__)


def _l2(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    # no floor but zero: features of an untrained base can be ~1e-16 and still tell images apart
    return v / np.where(norm > 0, norm, 1.0)


def embed_arrays(
    pooled: np.ndarray,
    logits: np.ndarray,
    name: str = DEFAULT_EMBEDDING,
    class_weight: float = CLASS_WEIGHT,
    temperature: float = TEMPERATURE,
) -> np.ndarray:
    """``(N, D)`` pooled features and ``(N, C)`` logits -> ``(N, dims)`` float32 unit vectors.

    ``pooled+probs``: ``[sqrt(1 - w) l2(pooled), sqrt(w) sqrt(softmax(logits / T))]``, so the
    inner product is ``(1 - w)`` visual cosine + ``w`` Bhattacharyya coefficient (the
    benchmark passes other ``w``, ``T`` to choose them; the index uses the defaults).
    """
    pooled = np.asarray(pooled, dtype=np.float64)
    if name not in EMBEDDINGS:
        raise InvalidArgument(f"unknown embedding {name!r} (choose from {', '.join(EMBEDDINGS)})")
    # a model that answers nan or inf would put garbage in the index without a word
    with np.errstate(all="ignore"):
        if name == "pooled":
            out = _l2(pooled)
        else:
            z = np.asarray(logits, dtype=np.float64) / temperature
            e = np.exp(z - z.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
            w = class_weight
            out = np.hstack([np.sqrt(1.0 - w) * _l2(pooled), np.sqrt(w) * np.sqrt(probs)])
    if not np.all(np.isfinite(out)):
        raise ModelError(
            "the model's features or logits for an image are not finite: the model is broken "
            "(trained to divergence?) and cannot be used"
        )
    return np.ascontiguousarray(out, dtype=np.float32)


def embedding_taps(model: keras.Model) -> keras.Model:
    """``model`` with two outputs: its pooled features (layer "pool") and the logits its own
    answer comes from ("tta_logits", the mean over the image and its mirror, when the model
    has test-time augmentation; else "logits"). An ensemble's answer is the average of its
    members' probabilities ("probabilities"): its logits are their log, which the class half's
    softmax reads as it reads a single head's (log-softmax differs from logits by a constant
    per image)."""
    import keras

    names = {layer.name for layer in model.layers}
    try:
        pool = model.get_layer("pool").output
        if "tta_logits" in names or "logits" in names:
            logits = model.get_layer("tta_logits" if "tta_logits" in names else "logits").output
        else:
            probabilities = model.get_layer("probabilities").output
            logits = keras.ops.log(keras.ops.maximum(probabilities, 1e-30))
        return keras.Model(model.inputs, [pool, logits])
    except ValueError as exc:
        raise ModelError(f"the model has no 'pool' and 'logits' layers: {exc}") from None


def embedder(
    model: keras.Model,
    name: str = DEFAULT_EMBEDDING,
    class_weight: float = CLASS_WEIGHT,
    temperature: float = TEMPERATURE,
) -> Callable[[np.ndarray], np.ndarray]:
    """A function: one raw ``(H, W, 3)`` RGB image -> its ``(dims,)`` embedding."""
    taps = embedding_taps(model)

    def embed(image: np.ndarray) -> np.ndarray:
        # one image per call: the model takes a batch of one size (as predict_image does)
        try:
            pooled, logits = taps.predict_on_batch(image[None])
        except Exception as exc:  # a model of another make: shapes, dtypes, ops it lacks
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else type(exc).__name__
            raise ModelError(f"the model failed on an image: {reason}") from None
        return embed_arrays(
            np.asarray(pooled), np.asarray(logits), name, class_weight, temperature
        )[0]

    return embed


# --------------------------------------------------------------------------- the catalogue


def catalogue_files(folder: str | os.PathLike[str], warn: bool = True) -> tuple[list[Path], int]:
    """The images under ``folder`` (recursive, sorted) and how many other files were skipped.

    Skipped: files without an image's name, anything but a regular file (a FIFO would block
    the reader), and links that resolve outside ``folder`` (the index never points there).
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotFound(f"catalogue folder not found: {root}")
    real_root = root.resolve()
    inside: dict[Path, bool] = {}  # per folder: resolving it once costs less than per file

    def leaves(path: Path) -> bool:
        if path.parent not in inside:
            inside[path.parent] = path.parent.resolve().is_relative_to(real_root)
        if not inside[path.parent]:
            return True
        return path.is_symlink() and not path.resolve().is_relative_to(real_root)

    images, skipped, outside = [], 0, 0
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped += 1
        elif leaves(path):
            outside += 1
        else:
            images.append(path)
    if outside and warn:
        logger.warning(
            "left out %d file(s) under %s that link to outside it: an index names files of its "
            "catalogue only",
            outside,
            root,
        )
    return images, skipped + outside


def catalogue_fingerprint(root: Path, images: Sequence[Path]) -> str:
    """SHA-256 over each image's relative path, size and content hash (streamed): any edit,
    add or delete shows, one that keeps the size and the modification time too."""
    h = hashlib.sha256()
    for path in sorted(images):
        try:
            with open_regular_file(path, "catalogue image") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        except UnusableImage:  # gone or replaced since it was listed: the fingerprint differs
            digest = "-"
        h.update(f"{path.relative_to(root).as_posix()}\t{digest}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class Hit:
    path: str  # the catalogue image (catalogue folder / relative path)
    relpath: str  # relative to the catalogue folder, as stored in the index
    score: float  # inner product of unit vectors: 1 is identical

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "score": self.score}


@dataclass
class SimilarIndex:
    index: faiss.Index
    paths: list[str]  # relative to meta["catalogue"], in the index's order
    meta: dict[str, Any]
    path: Path | None = None  # the file it was read from

    @property
    def root(self) -> Path:
        return Path(self.meta["catalogue"])


@dataclass
class BuildResult:
    out: Path
    images: int
    skipped: int  # files under the folder that are not images
    failed: list[str] = field(default_factory=list)  # unreadable images: one message each
    dims: int = 0
    seconds: float = 0.0
    index: str = ""  # "flat", or "ivf nlist=N nprobe=P"


def build_index(
    model_path: str | os.PathLike[str],
    catalogue_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    embedding: str = DEFAULT_EMBEDDING,
    log: Callable[[str], None] | None = None,
    index_kind: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
) -> BuildResult:
    """Embed every image under ``catalogue_dir`` and write one index file to ``out_path``.

    ``index_kind``, ``nlist``, ``nprobe``: the faiss index (:func:`vector_index.plan_index`).
    An unreadable image is left out and reported (in the result and through ``log``); a folder
    with no readable image is a :class:`DataError`. The file is written atomically.
    """
    import faiss

    from clothopt._version import version
    from clothopt.predict import iter_images, load_classifier

    start = time.perf_counter()
    root = Path(catalogue_dir).expanduser().resolve()
    images, skipped = catalogue_files(root)
    if not images:
        raise DataError(f"no images under {root} ({skipped} other files skipped)")
    plan_index(len(images), index_kind, nlist, nprobe)  # a bad choice fails before embedding
    model_path = Path(model_path).expanduser().resolve()
    model, _ = load_classifier(model_path)
    embed = embedder(model, embedding)
    vectors, kept, failed = [], [], []
    for path, image in iter_images(images):
        if isinstance(image, UserError):
            failed.append(str(image))
            if log:
                log(f"warning: {image}")
            continue
        vectors.append(embed(image))
        kept.append(path.relative_to(root).as_posix())
    if not vectors:
        raise DataError(f"none of the {len(images)} images under {root} could be read")
    x = np.stack(vectors)
    plan = plan_index(len(x), index_kind, nlist, nprobe)
    if plan.kind == "flat" and (nlist, nprobe) != (None, None) and log:
        log(f"note: {len(x)} images are searched exactly; --nlist and --nprobe do not apply")
    index = make_index(x, plan)
    meta = {
        "format": INDEX_FORMAT,
        "clothopt": version(),
        "model": str(model_path),
        "model_sha256": file_sha256(model_path),
        "catalogue": str(root),
        # over every image file, read or not: the same listing load_index checks
        "catalogue_fingerprint": catalogue_fingerprint(root, images),
        "embedding": embedding,
        "class_weight": CLASS_WEIGHT,
        "temperature": TEMPERATURE,
        "dims": int(x.shape[1]),
        "count": len(kept),
        "faiss": faiss.__version__,
        **index_info(index),  # index_type, and nlist, nprobe for IVF
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(out_path).expanduser()
    with atomic_path(out, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            index=faiss.serialize_index(index),
            paths=np.array(kept, dtype=np.str_),
            meta=np.array(json.dumps(meta, sort_keys=True)),
        )
    kind = "ivf nlist={nlist} nprobe={nprobe}".format(**meta) if "nlist" in meta else "flat"
    took = time.perf_counter() - start
    return BuildResult(out, len(kept), skipped, failed, x.shape[1], took, kind)


def query(
    index: SimilarIndex,
    model: keras.Model,
    images: Sequence[np.ndarray | str | os.PathLike[str]],
    k: int = 5,
) -> list[list[Hit]]:
    """The ``k`` most similar catalogue items of each image (an array or a file), best first.

    ``model`` is the classifier the index was built with (``predict.load_classifier``).
    """
    # the settings the index was built with: the constants may have moved on since
    meta = index.meta
    embed = embedder(model, meta["embedding"], meta["class_weight"], meta["temperature"])
    vectors = []
    for image in images:
        if not isinstance(image, np.ndarray):
            image = _load_query(image)
        vectors.append(embed(image))
    if not vectors:
        return []
    if vectors[0].shape[0] != index.index.d:
        raise ModelError(
            f"the model gives {vectors[0].shape[0]}-dimensional embeddings; the index holds "
            f"{index.index.d}: rebuild it with this model"
        )
    k = max(1, min(k, index.index.ntotal))
    scores, ids = index.index.search(np.stack(vectors), k)
    root = index.root
    return [
        [
            Hit(str(root / index.paths[i]), index.paths[i], float(s))
            for s, i in zip(row_s, row_i, strict=True)
            if i >= 0
        ]
        for row_s, row_i in zip(scores, ids, strict=True)
    ]


def _load_query(path: str | os.PathLike[str]) -> np.ndarray:
    try:
        return load_image(path, None)
    except UnusableImage as exc:  # its hint about `clothopt data check` is for data sets
        raise DataError(f"cannot read image {path}: {exc.detail}") from None


def rejections(
    model: keras.Model, images: Sequence[str | os.PathLike[str]]
) -> list[dict[str, Any] | None]:
    """Per image file: ``{"score", "threshold", "verdict"}`` when the model's "not clothing"
    detector rejects it (a catalogue of clothing has no neighbours to offer), else None;
    all None for a model without the detector."""
    from clothopt.predict import not_clothing_line, run_model, shipped_threshold

    threshold = shipped_threshold(model)
    if threshold is None:
        return [None] * len(images)
    out: list[dict[str, Any] | None] = []
    for path in images:
        image = _load_query(path)
        verdict = run_model(model, image)
        if verdict.accepted or verdict.score is None:
            out.append(None)
        else:
            line = not_clothing_line(verdict.score, threshold)
            out.append({"score": verdict.score, "threshold": threshold, "verdict": line})
    return out
