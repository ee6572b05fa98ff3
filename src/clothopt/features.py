"""Feature cache: pooled features of a frozen base, computed once and reused by every trial.

With a frozen base, what the head sees depends only on (backbone, weights, image size, resize
method, image, and the mirror or augmentation view taken of it). Entries are keyed by exactly
that (plus the split's content fingerprint and numeric precision), written atomically, and
guarded by a file lock so several workers needing the same entry compute it once. Given a
shared store and a lease table (:mod:`clothopt.features_shared`), an entry missing here is
fetched from the store, or computed by exactly one worker of any machine and uploaded for the
others. The extraction itself is :mod:`clothopt.features_extract`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt._io import atomic_path, atomic_write_json, file_lock
from clothopt.augment import AUGMENT_SEED, RECIPE
from clothopt.data import Split, default_threads
from clothopt.errors import InvalidArgument
from clothopt.features_extract import (
    CPU_EXTRACT_BATCH,
    GPU_EXTRACT_BATCH,
    default_extract_batch,
    extract_features,
    extract_features_sizes,
    gpu_name,
)
from clothopt.model.backbones import PRECISIONS, BackboneSpec, weights_id
from clothopt.model.compose import compose

if TYPE_CHECKING:
    import keras

    from clothopt.engine.leases import LeaseTable
    from clothopt.features_shared import ArtifactStore, SharedEntries

__all__ = [
    "CPU_EXTRACT_BATCH",
    "GPU_EXTRACT_BATCH",
    "FeatureCache",
    "FeatureKey",
    "Features",
    "default_extract_batch",
    "extract_features",
    "extract_features_sizes",
    "gpu_name",
]


@dataclass(frozen=True)
class FeatureKey:
    """What pooled features depend on; equal keys, equal features.

    ``flip``: features of the horizontally mirrored images. The mirror is taken AFTER the resize
    (on the ``image_size`` x ``image_size`` uint8 image the base sees, columns reversed), so a
    model that reproduces them flips its resized input: ``keras.ops.flip(x, axis=2)`` on NHWC.

    ``view`` (>= 1): features of augmentation view ``view`` of each image, drawn with
    ``augment_seed`` by recipe ``augment`` (:mod:`clothopt.augment`; training rows only); 0 is
    the image itself, with ``augment`` empty.
    """

    backbone: str
    weights: str  # weights_id(): "imagenet", "file-<sha>", "random-seed<k>"
    image_size: int
    resize: str
    split: str
    split_fingerprint: str
    precision: str = "float32"
    flip: bool = False
    view: int = 0
    augment: str = ""
    augment_seed: int = 0

    def __post_init__(self) -> None:
        if self.view < 0 or (self.view > 0) != bool(self.augment) or (self.view and self.flip):
            raise InvalidArgument(
                f"feature key: view {self.view} with augment {self.augment!r} and flip "
                f"{self.flip} (a view >= 1 names its recipe and is not also mirrored)"
            )

    def as_dict(self) -> dict[str, Any]:
        """The key's fields; ``flip`` and the view's only when set, so plain entries keep
        their digest."""
        out = asdict(self)
        if not self.flip:
            del out["flip"]
        if not self.view:
            for name in ("view", "augment", "augment_seed"):
                del out[name]
        return out

    @property
    def digest(self) -> str:
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    @property
    def filename(self) -> str:
        flip = "-flip" if self.flip else f"-view{self.view}" if self.view else ""
        return f"{self.backbone}/{self.image_size}px-{self.split}{flip}-{self.digest}.npz"


@dataclass(frozen=True)
class Features:
    x: np.ndarray  # (N, D) float32 pooled features
    y: np.ndarray  # (N,) int labels
    key: FeatureKey
    extract_seconds: float  # what computing them cost (once, whoever did it)
    cached: bool  # True when read from the cache rather than computed now
    base_params: int  # parameters of the frozen base (for the paper's parameter totals)


class FeatureCache:
    """Feature entries under ``root``; ``root=None`` disables the disk (memory only).

    Extraction options (``benchmarks/bench.py`` measures each): ``batch_size`` (None:
    :func:`default_extract_batch`) and ``threads`` (decode threads) change only speed;
    ``precision`` ("float32", "bfloat16", "float16": the base's compute dtype) changes the
    features slightly, so it is part of the key; ``jit_compile`` (XLA for the forward pass;
    None leaves Keras's "auto") changes them by float rounding only and is not.

    ``store`` (an Optuna ``ArtifactStore``) and ``leases`` (a ``LeaseTable`` in the study's
    database) share entries between machines (:mod:`clothopt.features_shared`, where
    ``shard_images`` and ``lease_ttl`` are explained).
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
        *,
        store: ArtifactStore | None = None,
        leases: LeaseTable | None = None,
        shard_images: int | None = None,
        lease_ttl: float | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise InvalidArgument(
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
        self.shared: SharedEntries | None = None
        if (store is None) != (leases is None):
            raise InvalidArgument("a shared feature store needs a lease table, and vice versa")
        if store is not None and leases is not None:
            from clothopt.features_shared import DEFAULT_SHARD_IMAGES, DEFAULT_TTL, SharedEntries

            self.shared = SharedEntries(
                store,
                leases,
                shard_images=shard_images or DEFAULT_SHARD_IMAGES,
                ttl=lease_ttl or DEFAULT_TTL,
            )

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
        view: int = 0,
    ) -> FeatureKey:
        """The entry's key; ``view`` >= 1: that augmentation view (this version's recipe)."""
        return FeatureKey(
            spec.name,
            weights_id(weights, seed),
            image_size,
            resize,
            split.name,
            split.fingerprint,
            self.precision,
            flip,
            view,
            RECIPE if view else "",
            AUGMENT_SEED if view else 0,
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
        view: int = 0,
    ) -> Features:
        """The split's pooled features (``flip``: of the mirrored images; ``view``: of that
        augmentation view), cached."""
        key = self.key(spec, weights, seed, image_size, resize, split, flip=flip, view=view)
        if key.digest in self._memory:
            self._memory.move_to_end(key.digest)
            hit = self._memory[key.digest]
            return Features(hit.x, hit.y, key, hit.extract_seconds, True, hit.base_params)
        path = self.path(key)
        if path is not None and (feats := self._read(path, key)) is not None:
            return self._remember(feats)
        if self.shared is not None:
            return self._remember(self._share(spec, weights, seed, {image_size: key}, split)[0])
        if path is None:
            return self._remember(self._compute(spec, weights, seed, key, split))
        with file_lock(path.with_suffix(".lock")):
            # another worker may have written it while this one waited for the lock
            if (feats := self._read(path, key)) is not None:
                return self._remember(feats)
            feats = self._compute(spec, weights, seed, key, split)
            self._write(path, feats)
        return self._remember(feats)

    def get_many(
        self,
        spec: BackboneSpec,
        weights: str,
        seed: int,
        sizes: Sequence[int],
        resize: str,
        split: Split,
        flip: bool = False,
        view: int = 0,
    ) -> dict[int, Features]:
        """:meth:`get` at each of ``sizes``, as ``{size: Features}``.

        The sizes not cached yet are extracted in one pass that decodes each image once
        (:func:`extract_features_sizes`): bit for bit what :meth:`get` computes size by size.
        """
        keys = {
            s: self.key(spec, weights, seed, s, resize, split, flip=flip, view=view) for s in sizes
        }
        found = {size: f for size, key in keys.items() if (f := self._lookup(key)) is not None}
        if self.shared is not None and (missing := sorted(set(keys) - set(found))):
            got = self._share(spec, weights, seed, {s: keys[s] for s in missing}, split)
            found |= dict(zip(missing, got, strict=True))
        elif missing := sorted(set(keys) - set(found)):
            with contextlib.ExitStack() as locks:
                paths = {size: self.path(keys[size]) for size in missing}
                for path in paths.values():  # sorted by size: one lock order for every worker
                    if path is not None:
                        locks.enter_context(file_lock(path.with_suffix(".lock")))
                # another worker may have written some while this one waited for the locks
                found |= {s: f for s in missing if (f := self._lookup(keys[s])) is not None}
                todo = {size: keys[size] for size in missing if size not in found}
                computed = self._compute_many(spec, weights, seed, todo, split) if todo else {}
                for size, feats in computed.items():
                    if (path := paths[size]) is not None:
                        self._write(path, feats)
                found |= computed
        return {size: self._remember(found[size]) for size in keys}

    def _lookup(self, key: FeatureKey) -> Features | None:
        """The entry from memory or disk (``cached`` set), or None when it must be computed."""
        if key.digest in self._memory:
            hit = self._memory[key.digest]
            return Features(hit.x, hit.y, key, hit.extract_seconds, True, hit.base_params)
        path = self.path(key)
        return None if path is None else self._read(path, key)

    def _share(self, spec: BackboneSpec, weights: str, seed: int, keys: Any, split: Split) -> Any:
        """``keys`` ({size: key}) from the shared store (fetched, or computed here under
        leases), as a list in order; each is also written to the local cache."""
        assert self.shared is not None
        models: dict[int, keras.Model] = {}  # one per size for all the shards of this call

        def compute(part: Split, sizes: list[int]) -> dict[int, tuple[np.ndarray, float, int]]:
            models.update(
                {s: self._model(spec, weights, seed, s) for s in sizes if s not in models}
            )
            todo = {s: keys[s] for s in sizes}
            got = self._extract({s: models[s] for s in sizes}, todo, part, time.perf_counter())
            return {s: (f.x, f.extract_seconds, f.base_params) for s, f in got.items()}

        out = []
        parts = self.shared.gather(keys, split, compute)
        for key, p in zip(keys.values(), parts.values(), strict=True):
            out.append(Features(p.x, p.y, key, p.seconds, not p.computed, p.base_params))
            if (path := self.path(key)) is not None:
                self._write(path, out[-1])
        return out

    def _write(self, path: Path, feats: Features) -> None:
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, x=feats.x, y=feats.y)
        atomic_write_json(
            path.with_suffix(".json"),
            {
                "key": feats.key.as_dict(),
                "extract_seconds": feats.extract_seconds,
                "images": len(feats.y),
                "feature_dim": int(feats.x.shape[1]),
                "base_params": feats.base_params,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )

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
        return self._compute_many(spec, weights, seed, {key.image_size: key}, split)[key.image_size]

    def _compute_many(
        self,
        spec: BackboneSpec,
        weights: str,
        seed: int,
        keys: Mapping[int, FeatureKey],
        split: Split,
    ) -> dict[int, Features]:
        start = time.perf_counter()
        # the dict keeps each size's extractor alive; the cache's slot holds only the last one
        models = {size: self._model(spec, weights, seed, size) for size in keys}
        return self._extract(models, keys, split, start)

    def _extract(
        self,
        models: Mapping[int, keras.Model],
        keys: Mapping[int, FeatureKey],
        split: Split,
        start: float,
    ) -> dict[int, Features]:
        first = next(iter(keys.values()))
        xs = extract_features_sizes(
            models,
            split,
            first.resize,
            self.batch_size,
            self.threads,
            self.progress,
            flip=first.flip,
            view=first.view,
            augment_seed=first.augment_seed,
        )
        # one shared pass: each size is charged an equal share of it
        seconds = (time.perf_counter() - start) / len(keys)
        return {
            size: Features(
                xs[size], split.labels.copy(), key, seconds, False, models[size].count_params()
            )
            for size, key in keys.items()
        }

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
