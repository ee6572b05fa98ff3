"""Feature cache: pooled features of a frozen base, computed once and reused by every trial.

With a frozen base and no augmentation, what the head sees depends only on (backbone, weights,
image size, resize method, image). Entries are keyed by exactly that (plus the split's content
fingerprint and numeric precision), written atomically, and guarded by a file lock so several
workers needing the same entry compute it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt._io import atomic_path, atomic_write_json, file_lock
from clothopt.data import Split, default_threads, iter_batches
from clothopt.errors import UserError
from clothopt.model.backbones import PRECISIONS, BackboneSpec, weights_id
from clothopt.model.compose import compose

if TYPE_CHECKING:
    import keras

__all__ = [
    "CPU_EXTRACT_BATCH",
    "GPU_EXTRACT_BATCH",
    "FeatureCache",
    "FeatureKey",
    "Features",
    "default_extract_batch",
    "extract_features",
]

# Images per forward pass when extracting (not the trial's batch size: features do not depend
# on it, bit for bit). On CPU smaller batches keep activations in cache: with mobilenet_025 on
# 2 cores, batch 16 against 32 took about as long at 300 px and 10-20% less at 400 and 500 px,
# which hold most of a grid's extraction time (benchmarks/bench.py, "batch size by image
# size"). On a GPU the value before the measurement stays until gpu_bench.py measures it there.
CPU_EXTRACT_BATCH = 16
GPU_EXTRACT_BATCH = 32


def _gpu_present() -> bool:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def default_extract_batch() -> int:
    """The extraction batch size for this machine: small on CPU, larger on a GPU."""
    return GPU_EXTRACT_BATCH if _gpu_present() else CPU_EXTRACT_BATCH


@dataclass(frozen=True)
class FeatureKey:
    """What pooled features depend on; equal keys, equal features.

    ``flip``: features of the horizontally mirrored images. The mirror is taken AFTER the resize
    (on the ``image_size`` x ``image_size`` uint8 image the base sees, columns reversed), so a
    model that reproduces them flips its resized input: ``keras.ops.flip(x, axis=2)`` on NHWC.
    """

    backbone: str
    weights: str  # weights_id(): "imagenet", "file-<sha>", "random-seed<k>"
    image_size: int
    resize: str
    split: str
    split_fingerprint: str
    precision: str = "float32"
    flip: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The key's fields; ``flip`` only when set, so plain entries keep their digest."""
        out = asdict(self)
        if not self.flip:
            del out["flip"]
        return out

    @property
    def digest(self) -> str:
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    @property
    def filename(self) -> str:
        flip = "-flip" if self.flip else ""
        return f"{self.backbone}/{self.image_size}px-{self.split}{flip}-{self.digest}.npz"


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
    flip: bool = False,
) -> np.ndarray:
    """Run ``model`` (a :func:`~clothopt.model.compose.compose` extractor) over ``split``, in order.

    ``batch_size`` is only how many images go through the base at once: it changes speed and
    memory, not the features (beyond float rounding in the backend's kernels). ``flip``: mirror
    each resized image left-right first (see :class:`FeatureKey`).
    """
    out: list[np.ndarray] = []
    done = 0
    start = last = time.perf_counter()
    live = progress and sys.stderr.isatty()
    for batch in iter_batches(split.paths, image_size, batch_size, resize, threads):
        if flip:
            batch = np.ascontiguousarray(batch[:, :, ::-1, :])  # NHWC: reverse the columns
        # uint8 in: the model casts inside its compiled graph, cheaper than astype on the host
        feats = model.predict_on_batch(batch)
        out.append(np.asarray(feats, dtype=np.float32))
        done += len(batch)
        now = time.perf_counter()
        if progress and (done == len(split) or (live and now - last > 0.5)):
            last = now
            rate = done / max(now - start, 1e-9)
            end = "\n" if done == len(split) else ""
            print(
                f"\r  features {split.name} {image_size}px{' flipped' if flip else ''}: "
                f"{done}/{len(split)} ({rate:.0f} img/s)",
                end=end,
                file=sys.stderr,
                flush=True,
            )
    return np.concatenate(out) if out else np.zeros((0, model.output.shape[-1]), np.float32)


class FeatureCache:
    """Feature entries under ``root``; ``root=None`` disables the disk (memory only).

    Extraction options (``benchmarks/bench.py`` measures each): ``batch_size`` (None:
    :func:`default_extract_batch`) and ``threads`` (decode threads) change only speed;
    ``precision`` ("float32", "bfloat16", "float16": the base's compute dtype) changes the
    features slightly, so it is part of the key; ``jit_compile`` (XLA for the forward pass;
    None leaves Keras's "auto") changes them by float rounding only and is not.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        batch_size: int | None = None,
        threads: int | None = None,
        progress: bool = False,
        memory_entries: int = 8,
        precision: str = "float32",
        jit_compile: bool | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise UserError(
                f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})"
            )
        self.root = Path(root) if root is not None else None
        self._batch_size = batch_size
        self.threads = threads or default_threads()
        self.progress = progress
        self.precision = precision
        self.jit_compile = jit_compile
        self._memory: OrderedDict[str, Features] = OrderedDict()
        self._memory_entries = memory_entries
        self._extractor: tuple[tuple[str, int, str], keras.Model] | None = None

    @property
    def batch_size(self) -> int:
        # resolved when first needed: finding the device imports the Keras backend
        if self._batch_size is None:
            self._batch_size = default_extract_batch()
        return self._batch_size

    def key(
        self,
        spec: BackboneSpec,
        weights: str,
        seed: int,
        image_size: int,
        resize: str,
        split: Split,
        *,
        flip: bool = False,
    ) -> FeatureKey:
        return FeatureKey(
            spec.name,
            weights_id(weights, seed),
            image_size,
            resize,
            split.name,
            split.fingerprint,
            self.precision,
            flip,
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
        *,
        flip: bool = False,
    ) -> Features:
        """The split's pooled features (``flip``: of the mirrored images), cached."""
        key = self.key(spec, weights, seed, image_size, resize, split, flip=flip)
        if key.digest in self._memory:
            self._memory.move_to_end(key.digest)
            hit = self._memory[key.digest]
            return Features(hit.x, hit.y, key, hit.extract_seconds, True, hit.base_params)
        path = self.path(key)
        if path is not None and (feats := self._read(path, key)) is not None:
            return self._remember(feats)
        if path is None:
            return self._remember(self._compute(spec, weights, seed, key, split))
        with file_lock(path.with_suffix(".lock")):
            # another worker may have written it while this one waited for the lock
            if (feats := self._read(path, key)) is not None:
                return self._remember(feats)
            feats = self._compute(spec, weights, seed, key, split)
            with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
                np.savez(fh, x=feats.x, y=feats.y)
            atomic_write_json(
                path.with_suffix(".json"),
                {
                    "key": key.as_dict(),
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
        if meta.get("key") != key.as_dict():
            return None
        return Features(x, y, key, float(meta["extract_seconds"]), True, int(meta["base_params"]))

    def _model(self, spec: BackboneSpec, weights: str, seed: int, image_size: int) -> keras.Model:
        ident = (spec.name, image_size, weights_id(weights, seed))
        if self._extractor is None or self._extractor[0] != ident:
            self._extractor = None
            model = compose(spec, image_size, weights, seed, precision=self.precision)
            if self.jit_compile is not None:
                model.jit_compile = self.jit_compile
            self._extractor = (ident, model)
        return self._extractor[1]

    def _compute(
        self, spec: BackboneSpec, weights: str, seed: int, key: FeatureKey, split: Split
    ) -> Features:
        start = time.perf_counter()
        model = self._model(spec, weights, seed, key.image_size)
        x = extract_features(
            model,
            split,
            key.image_size,
            key.resize,
            self.batch_size,
            self.threads,
            self.progress,
            flip=key.flip,
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
