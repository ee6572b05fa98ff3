"""Feature entries shared by every machine of a study: computed once, fetched by the others.

An entry (a :class:`~clothopt.features.FeatureKey`) is split into shards of consecutive images
(``shard_images`` each, the last shorter). Each shard is one unit of work under a lease
(:class:`~clothopt.engine.leases.LeaseTable`, in the study's database) and one object pair in
the store (an Optuna ``ArtifactStore``: ``open_reader``, ``write``, ``remove``):

- ``<name>.<sha12>.npz``: the shard's features and labels, named by its content's SHA-256, so
  a file once complete is never rewritten with other bytes;
- ``<name>.json``: the manifest, written LAST, naming the data file and its full SHA-256.

A reader trusts a shard only through its manifest and only when the data's checksum and labels
match, so a worker killed while uploading leaves nothing a reader would use: its lease expires
and the next claimant computes the shard again. An entry is the shards joined in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import numpy as np

from clothopt.engine.leases import LeaseTable, deferral_allowed, new_holder
from clothopt.errors import InvalidArgument, NotReady
from clothopt.logging import get_logger

if TYPE_CHECKING:
    from clothopt.data import Split

__all__ = ["ArtifactStore", "Part", "ShareStats", "SharedEntries"]

_log = get_logger(__name__)

# shards of 512 images: the real train split (3,068) makes 6, enough for a few machines to
# share its extraction; a multiple of every extraction batch size, so batches are unchanged
DEFAULT_SHARD_IMAGES = 512
DEFAULT_TTL = 60.0
_FORMAT = 1


class FeatureKey(Protocol):
    """What this module reads of :class:`clothopt.features.FeatureKey` (which imports it)."""

    backbone: str
    image_size: int
    split: str
    flip: bool

    @property
    def digest(self) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


class ArtifactStore(Protocol):
    """Optuna's artifact-store protocol (``FileSystemArtifactStore``, ``Boto3ArtifactStore``)."""

    def open_reader(self, artifact_id: str) -> BinaryIO: ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...

    def remove(self, artifact_id: str) -> None: ...


@dataclass
class Part:
    """One shard of one entry: features, labels, what computing them cost."""

    x: np.ndarray
    y: np.ndarray
    seconds: float
    base_params: int
    computed: bool = False  # by this process, now


@dataclass
class ShareStats:
    """What this process did with the shared entries (the benchmark reads it)."""

    computed_shards: int = 0
    computed_images: int = 0
    fetched_shards: int = 0
    uploaded_bytes: int = 0
    downloaded_bytes: int = 0
    deferred: int = 0
    waited_seconds: float = 0.0
    computed_keys: list[str] = field(default_factory=list)


# compute(sub_split, sizes) -> {size: (x, seconds, base_params)}
Compute = Callable[["Split", list[int]], Mapping[int, tuple[np.ndarray, float, int]]]


class SharedEntries:
    """The shards of feature entries in ``store`` under leases in ``leases``."""

    def __init__(
        self,
        store: ArtifactStore,
        leases: LeaseTable,
        *,
        shard_images: int = DEFAULT_SHARD_IMAGES,
        ttl: float = DEFAULT_TTL,
        poll: float = 0.5,
    ) -> None:
        if shard_images < 1 or ttl <= 0:
            raise InvalidArgument("shard_images must be >= 1 and the lease TTL > 0")
        self.store, self.leases = store, leases
        self.shard_images, self.ttl, self.poll = shard_images, ttl, poll
        self.holder = new_holder()
        self.stats = ShareStats()

    def shards(self, n: int) -> list[tuple[int, int]]:
        """Image index ranges [start, stop) covering ``n`` images (one empty range for 0)."""
        step = self.shard_images
        return [(a, min(a + step, n)) for a in range(0, n, step)] or [(0, 0)]

    @staticmethod
    def name(key: FeatureKey, shard: tuple[int, int]) -> str:
        flip = "-flip" if key.flip else ""
        base = f"{key.backbone}-{key.image_size}px-{key.split}{flip}-{key.digest}"
        return f"features-{base}-{shard[0]}-{shard[1]}"

    def lease_key(self, key: FeatureKey, shard: tuple[int, int]) -> str:
        return f"features:{key.digest}:{shard[0]}-{shard[1]}"

    # ------------------------------------------------------------------ store

    def _read(self, artifact_id: str) -> bytes | None:
        try:
            with self.store.open_reader(artifact_id) as fh:
                return fh.read()
        except Exception:  # ArtifactNotFound, a missing object, a lost connection: not there
            return None

    def fetch(self, key: FeatureKey, shard: tuple[int, int], labels: np.ndarray) -> Part | None:
        """The shard from the store, checked (manifest, SHA-256, labels); None if absent."""
        raw = self._read(self.name(key, shard) + ".json")
        if raw is None:
            return None
        try:
            meta = json.loads(raw)
            ok = meta["format"] == _FORMAT and meta["key"] == key.as_dict()
            ok = ok and [meta["start"], meta["stop"]] == list(shard)
        except (ValueError, KeyError, TypeError):
            return None  # a manifest being written (a file store writes in place)
        data = self._read(meta["data"]) if ok else None
        if data is None or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            return None
        with np.load(io.BytesIO(data)) as npz:
            x, y = npz["x"], npz["y"]
        if len(x) != shard[1] - shard[0] or not np.array_equal(y, labels[shard[0] : shard[1]]):
            return None
        self.stats.fetched_shards += 1
        self.stats.downloaded_bytes += len(raw) + len(data)
        return Part(x, y, float(meta["extract_seconds"]), int(meta["base_params"]))

    def upload(self, key: FeatureKey, shard: tuple[int, int], part: Part) -> None:
        """Data first, then the manifest that makes it visible."""
        buf = io.BytesIO()
        np.savez(buf, x=part.x, y=part.y)
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        data_id = f"{self.name(key, shard)}.{sha[:12]}.npz"
        self.store.write(data_id, io.BytesIO(data))
        meta = {
            "format": _FORMAT,
            "key": key.as_dict(),
            "start": shard[0],
            "stop": shard[1],
            "data": data_id,
            "sha256": sha,
            "bytes": len(data),
            "extract_seconds": part.seconds,
            "base_params": part.base_params,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        manifest = json.dumps(meta, sort_keys=True).encode()
        self.store.write(self.name(key, shard) + ".json", io.BytesIO(manifest))
        self.stats.uploaded_bytes += len(data) + len(manifest)

    # ------------------------------------------------------------------ gather

    def gather(
        self, keys: Mapping[int, FeatureKey], split: Split, compute: Compute
    ) -> dict[int, Part]:
        """Every entry of ``keys`` ({size: key}) over ``split``, joined from its shards.

        Shards in the store are fetched; free ones are claimed and computed here (all the
        sizes of a shard in one pass); shards another worker holds are waited for, or, where
        :func:`~clothopt.engine.leases.deferral_allowed`, :class:`NotReady` is raised once
        everything this worker could take is done.
        """
        shards = self.shards(len(split))
        had: dict[tuple[int, tuple[int, int]], Part] = {}
        misses: dict[tuple[int, tuple[int, int]], int] = {}
        while True:
            for size, key in keys.items():
                for shard in shards:
                    if (size, shard) not in had and (p := self.fetch(key, shard, split.labels)):
                        had[size, shard] = p
            progressed = False
            for shard in shards:
                want = [s for s in keys if (s, shard) not in had]
                mine = [s for s in want if self.leases.claim(self._lk(keys, s, shard), *self._h)]
                if mine:
                    had |= self._compute(keys, mine, shard, split, compute)
                    progressed = True
            pending = [(s, sh) for s in keys for sh in shards if (s, sh) not in had]
            if not pending:
                return {s: self._join([had[s, sh] for sh in shards]) for s in keys}
            if progressed:
                continue
            if self._lost_results(keys, pending, misses):
                continue
            if deferral_allowed():
                self.stats.deferred += 1
                raise NotReady(
                    f"{len(pending)} feature shard(s) of {keys[pending[0][0]].split} are being "
                    "computed by another worker"
                )
            time.sleep(self.poll)
            self.stats.waited_seconds += self.poll

    @property
    def _h(self) -> tuple[str, float]:
        return self.holder, self.ttl

    def _lk(self, keys: Mapping[int, FeatureKey], size: int, shard: tuple[int, int]) -> str:
        return self.lease_key(keys[size], shard)

    def _compute(
        self,
        keys: Mapping[int, FeatureKey],
        sizes: list[int],
        shard: tuple[int, int],
        split: Split,
        compute: Compute,
    ) -> dict[tuple[int, tuple[int, int]], Part]:
        lease_keys = [self._lk(keys, s, shard) for s in sizes]
        a, b = shard
        sub = replace(split, paths=split.paths[a:b], labels=split.labels[a:b])
        out = {}
        with self.leases.holding(lease_keys, self.holder, self.ttl):
            got = compute(sub, sizes)
            for size in sizes:
                x, seconds, params = got[size]
                part = Part(x, sub.labels.copy(), seconds, params, computed=True)
                self.upload(keys[size], shard, part)
                out[size, shard] = part
        for lk in lease_keys:
            if not self.leases.complete(lk, self.holder):
                _log.warning("lease %s was taken over while this worker computed it", lk)
        self.stats.computed_shards += len(sizes)
        self.stats.computed_images += (b - a) * len(sizes)
        self.stats.computed_keys += lease_keys
        return out

    def _lost_results(
        self,
        keys: Mapping[int, FeatureKey],
        pending: list[tuple[int, tuple[int, int]]],
        misses: dict[tuple[int, tuple[int, int]], int],
    ) -> bool:
        """Shards whose lease is done but that the store does not give back: seen a few times
        in a row (not just a manifest being written), they are reopened to be computed again.
        True when one was reopened or may still appear (look again at once)."""
        again = False
        for size, shard in pending:
            lease = self.leases.state(self._lk(keys, size, shard))
            if lease is None or not lease.done:
                continue
            misses[size, shard] = misses.get((size, shard), 0) + 1
            if misses[size, shard] >= 3:
                _log.warning("feature shard %s is done but not in the store: recomputing", shard)
                with contextlib.suppress(Exception):
                    self.leases.reopen(self._lk(keys, size, shard))
            else:
                time.sleep(min(self.poll, 0.2))
            again = True
        return again

    @staticmethod
    def _join(parts: list[Part]) -> Part:
        if len(parts) == 1:
            return parts[0]
        return Part(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.y for p in parts]),
            sum(p.seconds for p in parts),
            parts[0].base_params,
            computed=any(p.computed for p in parts),
        )

    def describe(self) -> dict[str, Any]:
        return {"holder": self.holder, "shard_images": self.shard_images, "ttl": self.ttl}
