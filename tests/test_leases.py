"""Leases (engine/leases.py) and feature entries shared by worker processes through one store.

The worker processes are this file run as a script (``python tests/test_leases.py JSON``): each
has its own local cache folder and shares one FileSystemArtifactStore folder and one storage,
as workers on separate machines would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SECRET, make_dataset

WORKER = Path(__file__).resolve()
SPACE = """
description = "shared features"
sampler = "grid"
epochs = 1
[params]
image_size = [32, 40]
batch_size = [4]
learning_rate = [0.01, 0.001]
"""


# --------------------------------------------------------------------------- the lease table


def _table(url: str) -> Any:
    from clothopt.engine.leases import LeaseTable
    from clothopt.engine.storage import open_storage

    return LeaseTable.of_storage(open_storage(url, create=True))


def test_one_claimant_wins_until_the_lease_expires(any_storage: str) -> None:
    leases = _table(any_storage)
    assert leases.claim("k", "a", 60) and not leases.claim("k", "b", 60)
    assert leases.claim("k", "a", 60), "its holder may claim again (a renewal)"
    assert leases.state("k").held and leases.state("k").holder == "a"
    assert leases.claim("short", "a", 0.3)
    time.sleep(0.6)
    assert not leases.state("short").held
    assert leases.claim("short", "b", 60), "an expired lease is taken over"
    assert not leases.renew("short", "a", 60) and not leases.complete("short", "a")
    assert leases.complete("short", "b") and not leases.claim("short", "c", 60)
    assert leases.state("short").done
    assert leases.release("k", "a") and leases.claim("k", "b", 60)
    assert leases.reopen("short") and not leases.reopen("short")
    assert leases.claim("short", "c", 60)
    assert [lease.key for lease in leases.keys("sh")] == ["short"]
    assert leases.state("never") is None


# operations on one lease: (name, holder, long ttl?)
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["claim", "renew", "release", "complete", "reopen"]),
        st.sampled_from(["a", "b", "c"]),
        st.booleans(),
    ),
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS)
def test_the_lease_table_behaves_as_its_model(storage: str, ops: list[Any]) -> None:
    """Every sequence of operations gives the answers of a three-field model; a TTL of 0 is
    expired at once, 60 s outlives the example."""
    leases, key = _table(storage), uuid.uuid4().hex
    holder, alive, done = None, False, False
    for name, who, long in ops:
        ttl = 60.0 if long else 0.0
        if name == "claim":
            expect = not done and (holder in (None, who) or not alive)
            got = leases.claim(key, who, ttl)
            if expect:
                holder, alive = who, long
        elif name == "reopen":
            expect, got = done, leases.reopen(key)
            if done:
                holder, alive, done = None, False, False
        else:
            expect = not done and holder == who
            got = getattr(leases, name)(key, who, ttl) if name == "renew" else None
            got = getattr(leases, name)(key, who) if got is None else got
            if expect and name == "renew":
                alive = long
            elif expect and name == "release":
                holder, alive = None, False
            elif expect:
                done = True
        assert got == expect, (name, who, long)


def test_simultaneous_claims_from_processes_have_one_winner(
    any_storage: str, tmp_path: Path
) -> None:
    _table(any_storage)  # the table exists before the race (its creation is tested above)
    go = tmp_path / "go"
    procs = [
        _spawn({"mode": "claim", "storage": any_storage, "go": str(go), "holder": f"w{i}"})
        for i in range(6)
    ]
    time.sleep(1.5)
    go.touch()
    won = [json.loads(_finish(p))["won"] for p in procs]
    assert sum(won) == 1, won


# --------------------------------------------------------------------------- worker processes


def _spawn(job: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 180) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out.strip().splitlines()[-1]


def _wait_for(path: Path, procs: list[subprocess.Popen[str]], timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        for p in procs:
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(p.stderr.read()[-3000:] if p.stderr else "worker failed")
        assert time.monotonic() < end, f"{path.name} never appeared"
        time.sleep(0.1)


def _job(root: Path, storage: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "storage": storage,
        "store": str(root / "store"),
        "cache": str(root / f"cache-{name}"),
        "data": str(root / "data"),
        "shard": 8,
        "ttl": 1.5,
        "plan": [["train", [32, 40]], ["validation", [32, 40]]],
        **extra,
    }


@pytest.fixture
def shared(tmp_path: Path, any_storage: str) -> Path:
    _table(any_storage)  # the storage exists before the workers start, as after study create
    make_dataset(tmp_path / "data", counts=(8, 4, 2))  # 24 train, 12 validation images
    (tmp_path / "store").mkdir()
    return tmp_path


def _local_features(root: Path, split: str, size: int) -> np.ndarray:
    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache
    from clothopt.model.backbones import get_backbone

    ds = open_dataset(root / "data")
    return (
        FeatureCache(None)
        .get(get_backbone("mobilenet_025"), "none", 0, size, "nearest", ds[split])
        .x
    )


def test_three_workers_compute_each_shard_exactly_once(shared: Path, any_storage: str) -> None:
    procs = [_spawn(_job(shared, any_storage, f"w{i}", mode="extract")) for i in range(3)]
    results = [json.loads(_finish(p)) for p in procs]
    computed = [k for r in results for k in r["stats"]["computed_keys"]]
    leases = _table(any_storage).keys("features:")
    # 24 train images in 3 shards + 12 validation in 2, at 2 sizes
    assert len(leases) == (3 + 2) * 2 and all(lease.done for lease in leases)
    assert sorted(computed) == sorted(lease.key for lease in leases), "each shard once"
    assert len({json.dumps(r["digests"], sort_keys=True) for r in results}) == 1
    # every worker holds the joined entries in its own cache, equal to a one-pass extraction
    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache
    from clothopt.model.backbones import get_backbone

    ds = open_dataset(shared / "data")
    for i in range(3):
        local = FeatureCache(shared / f"cache-w{i}")
        got = local.get(get_backbone("mobilenet_025"), "none", 0, 40, "nearest", ds["train"])
        assert got.cached and local._extractor is None
        np.testing.assert_allclose(got.x, _local_features(shared, "train", 40), atol=1e-5)
    moved = sum(r["stats"]["downloaded_bytes"] for r in results)
    assert sum(r["stats"]["uploaded_bytes"] for r in results) > 0 and moved > 0


@pytest.mark.s3
def test_three_workers_sharing_an_s3_store_compute_each_shard_once(
    shared: Path, any_storage: str, s3_env: str
) -> None:
    """The same, through an S3 store (the local S3 server .ci/run starts): each shard computed
    once, every worker's entries equal; the secret key in no file, lease or output."""
    url = f"s3://{s3_env}/team"
    jobs = [_job(shared, any_storage, f"w{i}", mode="extract", store_url=url) for i in range(3)]
    procs = [_spawn(job) for job in jobs]
    outputs = [_finish(p) for p in procs]
    results = [json.loads(o) for o in outputs]
    computed = [k for r in results for k in r["stats"]["computed_keys"]]
    leases = _table(any_storage).keys("features:")
    assert len(leases) == (3 + 2) * 2 and sorted(computed) == sorted(x.key for x in leases)
    assert len({json.dumps(r["digests"], sort_keys=True) for r in results}) == 1
    assert all(SECRET not in o for o in outputs)
    assert all(SECRET not in repr(lease) for lease in leases)
    for path in shared.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("where", ["extraction", "upload"])
def test_a_killed_workers_claim_expires_and_another_finishes_it(
    shared: Path, any_storage: str, where: str
) -> None:
    """SIGKILL while extracting (from outside) or halfway through writing the shard's data
    (the worker kills itself): nothing it left is used, its lease expires, another computes."""
    started = shared / "started"
    plan = [["train", [32]]]
    extra = (
        {"slow": 120, "started": str(started)} if where == "extraction" else {"die_in_upload": 1}
    )
    first = _spawn(_job(shared, any_storage, "a", mode="extract", shard=64, plan=plan, **extra))
    if where == "extraction":
        _wait_for(started, [first])
        first.send_signal(signal.SIGKILL)
    first.wait(timeout=120)
    assert first.returncode == -signal.SIGKILL
    (lease,) = _table(any_storage).keys("features:")
    assert (
        not lease.done and lease.holder is not None and lease.holder.split(":")[1] == str(first.pid)
    )
    assert not list((shared / "store").glob("*.json")), "no manifest: nothing a reader would use"
    second = json.loads(
        _finish(_spawn(_job(shared, any_storage, "b", mode="extract", shard=64, plan=plan)))
    )
    assert second["stats"]["computed_keys"] == [lease.key]
    (lease,) = _table(any_storage).keys("features:")
    assert lease.done and lease.holder.split(":")[1] != str(first.pid)
    # a third worker reads the entry from the store: checked, whole, equal to a fresh pass
    third = json.loads(
        _finish(_spawn(_job(shared, any_storage, "c", mode="extract", shard=64, plan=plan)))
    )
    assert third["stats"]["computed_keys"] == [] and third["digests"] == second["digests"]
    np.testing.assert_allclose(
        np.load(Path(third["arrays"]["train-32"])), _local_features(shared, "train", 32), atol=1e-5
    )


def test_a_second_worker_trains_on_ready_entries_while_the_first_still_extracts(
    shared: Path, any_storage: str
) -> None:
    """Worker 1 has extracted 32 px and is in the middle of 40 px (held at a gate); worker 2,
    with an empty cache, completes a 32 px trial before worker 1's extraction ends, computing
    nothing, then finishes the grid once the 40 px entry arrives."""
    from clothopt import study as study_mod

    (shared / "space.toml").write_text(SPACE)
    study_mod.create(
        backbone="mobilenet_025",
        space=str(shared / "space.toml"),
        name="shared",
        storage=any_storage,
        data=str(shared / "data"),
        weights="none",
    )
    gate, started, first_done = shared / "gate", shared / "started", shared / "first-done"
    plan = [["validation", [32, 40]], ["train", [32]], ["train", [40]]]
    one = _spawn(
        _job(shared, any_storage, "one", mode="extract", shard=64, plan=plan, ttl=30)
        | {"gate": str(gate), "gate_size": 40, "gate_split": "train", "started": str(started)}
    )
    _wait_for(started, [one])  # 32 px done, 40 px of train claimed and being extracted
    two = _spawn(
        _job(shared, any_storage, "two", mode="optimize", shard=64, ttl=30)
        | {"study": "shared", "first_done": str(first_done)}
    )
    _wait_for(first_done, [one, two])
    assert one.poll() is None, "worker 1 is still extracting"
    train40 = [k for k in _table(any_storage).keys("features:") if not k.done]
    assert len(train40) == 1 and train40[0].held
    gate.touch()
    _finish(one)
    result = json.loads(_finish(two))
    assert result["stats"]["computed_keys"] == [], "worker 2 extracted nothing"
    assert result["stats"]["deferred"] >= 1 and result["complete"] == 4
    assert result["first_size"] == 32
    st, _ = study_mod.load("shared", any_storage)
    params = [tuple(sorted(t.params.items())) for t in st.trials if t.state.name == "COMPLETE"]
    assert len(params) == len(set(params)) == 4, "every grid point complete exactly once"


# --------------------------------------------------------------------------- the worker


def _claim_main(job: dict[str, Any]) -> dict[str, Any]:
    leases = _table(job["storage"])
    while not Path(job["go"]).exists():
        time.sleep(0.01)
    return {"won": leases.claim("race", job["holder"], 60)}


def _patch_extraction(job: dict[str, Any]) -> None:
    """Slow, gated or dying extraction/upload, as the job asks."""
    import clothopt.features as features_mod
    import clothopt.features_shared as shared_mod

    real = features_mod.extract_features_sizes

    def patched(models: Any, split: Any, *args: Any, **kwargs: Any) -> Any:
        gated = job.get("gate") and job["gate_size"] in models and split.name == job["gate_split"]
        if job.get("started") and (gated or not job.get("gate")):
            Path(job["started"]).touch()
        if job.get("slow"):
            time.sleep(job["slow"])
        while gated and not Path(job["gate"]).exists():
            time.sleep(0.05)
        return real(models, split, *args, **kwargs)

    features_mod.extract_features_sizes = patched
    if job.get("die_in_upload"):
        real_upload = shared_mod.SharedEntries.upload

        class Dying:
            def __init__(self, store: Any) -> None:
                self.store = store

            def write(self, artifact_id: str, body: Any) -> None:
                data = body.read()
                with open(Path(job["store"]) / artifact_id, "wb") as fh:
                    fh.write(data[: len(data) // 2])  # half the data file, then gone
                os.kill(os.getpid(), signal.SIGKILL)

        def upload(self: Any, key: Any, shard: Any, part: Any) -> None:
            self.store = Dying(self.store)
            real_upload(self, key, shard, part)

        shared_mod.SharedEntries.upload = upload  # type: ignore[method-assign]


def _worker_main(job: dict[str, Any]) -> dict[str, Any]:
    import hashlib
    from dataclasses import asdict

    import numpy as np
    from optuna.artifacts import FileSystemArtifactStore

    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache
    from clothopt.model.backbones import get_backbone

    _patch_extraction(job)
    if "store_url" in job:  # a store as a study names it (s3://...), credentials from the env
        from clothopt.store import open_store

        store: Any = open_store(job["store_url"])
    else:
        store = FileSystemArtifactStore(job["store"])
    cache = FeatureCache(
        job["cache"],
        store=store,
        leases=_table(job["storage"]),
        shard_images=job["shard"],
        lease_ttl=job["ttl"],
    )
    ds = open_dataset(job["data"])
    out: dict[str, Any] = {"digests": {}, "arrays": {}}
    if job["mode"] == "extract":
        for split, sizes in job["plan"]:
            got = cache.get_many(
                get_backbone("mobilenet_025"), "none", 0, sizes, "nearest", ds[split]
            )
            for size, feats in got.items():
                out["digests"][f"{split}-{size}"] = hashlib.sha256(feats.x.tobytes()).hexdigest()
                path = Path(job["cache"]) / f"{split}-{size}.npy"
                np.save(path, feats.x)
                out["arrays"][f"{split}-{size}"] = str(path)
    else:
        from clothopt import study as study_mod
        from clothopt.objective import Objective

        st, cfg = study_mod.load(job["study"], job["storage"])

        def on_end(study: Any, trial: Any) -> None:
            if trial.state.name == "COMPLETE" and "first_size" not in out:
                out["first_size"] = trial.params["image_size"]
                Path(job["first_done"]).touch()

        summary = study_mod.optimize(
            st, cfg, Objective(cfg, ds, cache), progress=False, callbacks=[on_end]
        )
        out["complete"] = summary.complete
    assert cache.shared is not None
    return out | {"stats": asdict(cache.shared.stats)}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    job = json.loads(sys.argv[1])
    print(json.dumps(_claim_main(job) if job["mode"] == "claim" else _worker_main(job)))
