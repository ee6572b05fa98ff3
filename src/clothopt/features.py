"""Feature cache: pooled features of a frozen base, computed once and reused by every trial.

With a frozen base and no augmentation, what the head sees depends only on (backbone, weights,
image size, resize method, image). Entries are keyed by exactly that (plus the split's content
fingerprint and numeric precision), written atomically, and guarded by a file lock so several
workers needing the same entry compute it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt._io import atomic_path, atomic_write_json
from clothopt.backbones import BackboneSpec, build_extractor, weights_id
from clothopt.data import Split, default_threads, iter_batches

if TYPE_CHECKING:
    import keras

__all__ = ["FeatureCache", "FeatureKey", "Features", "extract_features"]


@dataclass(frozen=True)
class FeatureKey:
    backbone: str
    weights: str  # weights_id(): "imagenet", "file-<sha>", "random-seed<k>"
    image_size: int
    resize: str
    split: str
    split_fingerprint: str
    precision: str = "float32"

    @property
    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    @property
    def filename(self) -> str:
        return f"{self.backbone}/{self.image_size}px-{self.split}-{self.digest}.npz"


@dataclass(frozen=True)
class Features:
    x: np.ndarray  # (N, D) float32 pooled features
    y: np.ndarray  # (N,) int labels
    key: FeatureKey
    extract_seconds: float  # what computing them cost (once, whoever did it)
    cached: bool  # True when read from the cache rather than computed now
    base_params: int  # parameters of the frozen base (for the paper's parameter totals)


def extract_features(
    model: keras.Model,
    split: Split,
    image_size: int,
    resize: str = "nearest",
    batch_size: int = 32,
    threads: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Run ``model`` (an extractor from build_extractor) over every image of ``split``, in order."""
    out: list[np.ndarray] = []
    done = 0
    start = last = time.perf_counter()
    live = progress and sys.stderr.isatty()
    for batch in iter_batches(split.paths, image_size, batch_size, resize, threads):
        feats = model.predict_on_batch(batch.astype(np.float32))
        out.append(np.asarray(feats, dtype=np.float32))
        done += len(batch)
        now = time.perf_counter()
        if progress and (done == len(split) or (live and now - last > 0.5)):
            last = now
            rate = done / max(now - start, 1e-9)
            end = "\n" if done == len(split) else ""
            print(
                f"\r  features {split.name} {image_size}px: {done}/{len(split)} ({rate:.0f} img/s)",
                end=end,
                file=sys.stderr,
                flush=True,
            )
    return np.concatenate(out) if out else np.zeros((0, model.output.shape[-1]), np.float32)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # flock is dropped by the kernel when a holder dies, so a killed worker never wedges others
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class FeatureCache:
    """Feature entries under ``root``; ``root=None`` disables the disk (memory only)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        batch_size: int = 32,
        threads: int | None = None,
        progress: bool = False,
        memory_entries: int = 8,
    ) -> None:
        self.root = Path(root) if root is not None else None
        self.batch_size = batch_size
        self.threads = threads or default_threads()
        self.progress = progress
        self._memory: OrderedDict[str, Features] = OrderedDict()
        self._memory_entries = memory_entries
        self._extractor: tuple[tuple[str, int, str], keras.Model] | None = None

    def key(
        self,
        spec: BackboneSpec,
        weights: str,
        seed: int,
        image_size: int,
        resize: str,
        split: Split,
    ) -> FeatureKey:
        return FeatureKey(
            spec.name, weights_id(weights, seed), image_size, resize, split.name, split.fingerprint
        )

    def path(self, key: FeatureKey) -> Path | None:
        return None if self.root is None else self.root / key.filename

    def get(
        self,
        spec: BackboneSpec,
        weights: str,
        seed: int,
        image_size: int,
        resize: str,
        split: Split,
    ) -> Features:
        key = self.key(spec, weights, seed, image_size, resize, split)
        if key.digest in self._memory:
            self._memory.move_to_end(key.digest)
            hit = self._memory[key.digest]
            return Features(hit.x, hit.y, key, hit.extract_seconds, True, hit.base_params)
        path = self.path(key)
        if path is not None and (feats := self._read(path, key)) is not None:
            return self._remember(feats)
        if path is None:
            return self._remember(self._compute(spec, weights, seed, key, split))
        with _file_lock(path.with_suffix(".lock")):
            # another worker may have written it while this one waited for the lock
            if (feats := self._read(path, key)) is not None:
                return self._remember(feats)
            feats = self._compute(spec, weights, seed, key, split)
            with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
                np.savez(fh, x=feats.x, y=feats.y)
            atomic_write_json(
                path.with_suffix(".json"),
                {
                    "key": asdict(key),
                    "extract_seconds": feats.extract_seconds,
                    "images": len(feats.y),
                    "feature_dim": int(feats.x.shape[1]),
                    "base_params": feats.base_params,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )
        return self._remember(feats)

    def _remember(self, feats: Features) -> Features:
        self._memory[feats.key.digest] = feats
        self._memory.move_to_end(feats.key.digest)
        while len(self._memory) > self._memory_entries:
            self._memory.popitem(last=False)
        return feats

    def _read(self, path: Path, key: FeatureKey) -> Features | None:
        if not path.is_file():
            return None
        try:
            with np.load(path) as npz:
                x, y = npz["x"], npz["y"]
            meta = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError, KeyError):
            return None  # unreadable entry: recompute and replace it
        if meta.get("key") != asdict(key):
            return None
        return Features(x, y, key, float(meta["extract_seconds"]), True, int(meta["base_params"]))

    def _model(self, spec: BackboneSpec, weights: str, seed: int, image_size: int) -> keras.Model:
        ident = (spec.name, image_size, weights_id(weights, seed))
        if self._extractor is None or self._extractor[0] != ident:
            self._extractor = None
            self._extractor = (ident, build_extractor(spec, image_size, weights, seed))
        return self._extractor[1]

    def _compute(
        self, spec: BackboneSpec, weights: str, seed: int, key: FeatureKey, split: Split
    ) -> Features:
        start = time.perf_counter()
        model = self._model(spec, weights, seed, key.image_size)
        x = extract_features(
            model, split, key.image_size, key.resize, self.batch_size, self.threads, self.progress
        )
        seconds = time.perf_counter() - start
        return Features(x, split.labels.copy(), key, seconds, False, model.count_params())

    def release_model(self) -> None:
        """Drop the extractor (its memory) once every size a run needs is cached."""
        self._extractor = None

    def entries(self) -> list[dict[str, Any]]:
        if self.root is None or not self.root.is_dir():
            return []
        found = []
        for meta in sorted(self.root.glob("*/*.json")):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(meta.read_text()) | {"path": str(meta.with_suffix(".npz"))})
        return found
