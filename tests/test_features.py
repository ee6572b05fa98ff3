from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clothopt.data import open_dataset
from clothopt.features import FeatureCache
from clothopt.model.backbones import get_backbone

SPEC = get_backbone("mobilenet_025")


def test_features_are_computed_once_then_read_from_disk(tiny_data: Path, tmp_path: Path) -> None:
    ds = open_dataset(tiny_data)
    root = tmp_path / "cache"
    first = FeatureCache(root).get(SPEC, "none", 0, 32, "nearest", ds["train"])
    assert not first.cached and first.x.shape == (len(ds["train"]), 256)
    np.testing.assert_array_equal(first.y, ds["train"].labels)
    # a new cache object (a later run) reads the same entry without a model
    again = FeatureCache(root)
    second = again.get(SPEC, "none", 0, 32, "nearest", ds["train"])
    assert second.cached and again._extractor is None
    np.testing.assert_array_equal(first.x, second.x)
    assert second.base_params == first.base_params > 0
    assert not list(root.rglob("*.tmp*")), "no temporary file may be left behind"


def test_cache_key_covers_size_split_weights_and_content(tiny_data: Path, tmp_path: Path) -> None:
    ds = open_dataset(tiny_data)
    cache = FeatureCache(tmp_path / "cache")
    base = cache.key(SPEC, "none", 0, 32, "nearest", ds["train"])
    assert base != cache.key(SPEC, "none", 0, 40, "nearest", ds["train"])
    assert base != cache.key(SPEC, "none", 0, 32, "nearest", ds["validation"])
    assert base != cache.key(SPEC, "none", 1, 32, "nearest", ds["train"])
    assert base != cache.key(SPEC, "none", 0, 32, "bilinear", ds["train"])
    img = next((tiny_data / "train" / "hat").iterdir())
    img.write_bytes(img.read_bytes() + b"\0")
    changed = open_dataset(tiny_data)
    assert base != cache.key(SPEC, "none", 0, 32, "nearest", changed["train"])


def test_a_corrupt_entry_is_recomputed(tiny_data: Path, tmp_path: Path) -> None:
    ds = open_dataset(tiny_data)
    root = tmp_path / "cache"
    good = FeatureCache(root).get(SPEC, "none", 0, 32, "nearest", ds["validation"])
    (entry,) = root.rglob("*.npz")
    entry.write_bytes(b"not an npz")
    again = FeatureCache(root).get(SPEC, "none", 0, 32, "nearest", ds["validation"])
    assert not again.cached
    np.testing.assert_allclose(again.x, good.x, atol=1e-6)


def test_memory_only_cache_writes_nothing(tiny_data: Path, tmp_path: Path) -> None:
    ds = open_dataset(tiny_data)
    cache = FeatureCache(None)
    a = cache.get(SPEC, "none", 0, 32, "nearest", ds["test"])
    b = cache.get(SPEC, "none", 0, 32, "nearest", ds["test"])
    assert not a.cached and b.cached
    assert not list(tmp_path.rglob("*.npz"))


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch the one decoder; the returned list gets one entry per decoded file."""
    from clothopt.data import images

    calls: list[int] = []
    real = images.load_image_sizes

    def counting(path, sizes, resize="nearest"):  # type: ignore[no-untyped-def]
        calls.append(len(sizes))
        return real(path, sizes, resize)

    monkeypatch.setattr(images, "load_image_sizes", counting)
    return calls


def test_get_many_decodes_once_and_equals_get_bit_for_bit(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split = open_dataset(tiny_data)["train"]
    sizes = [32, 40, 48]
    alone = {s: FeatureCache(None).get(SPEC, "none", 0, s, "nearest", split) for s in sizes}
    calls = _count_decodes(monkeypatch)
    root = tmp_path / "cache"
    many = FeatureCache(root).get_many(SPEC, "none", 0, sizes, "nearest", split)
    assert calls == [len(sizes)] * len(split)  # each file decoded once, for all three sizes
    assert list(many) == sizes
    for s in sizes:
        assert not many[s].cached and many[s].key == alone[s].key
        np.testing.assert_array_equal(many[s].x, alone[s].x)
        np.testing.assert_array_equal(many[s].y, alone[s].y)
        assert many[s].base_params == alone[s].base_params
    # written as entries that a later run's get() reads; get_many then computes only what's new
    calls.clear()
    later = FeatureCache(root)
    np.testing.assert_array_equal(later.get(SPEC, "none", 0, 40, "nearest", split).x, alone[40].x)
    more = later.get_many(SPEC, "none", 0, [32, 40, 56], "nearest", split)
    assert more[32].cached and more[40].cached and not more[56].cached
    assert calls == [1] * len(split)
    np.testing.assert_array_equal(
        more[56].x, FeatureCache(None).get(SPEC, "none", 0, 56, "nearest", split).x
    )


def test_the_objective_extracts_every_size_of_the_space_on_its_first_trial(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clothopt import study

    space = tmp_path / "space.toml"
    space.write_text(
        'sampler = "grid"\nepochs = 1\n[params]\nimage_size = [32, 40]\n'
        "batch_size = [8]\nlearning_rate = [0.01]\n"
    )
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    st, config = study.create(
        backbone="mobilenet_025",
        space=str(space),
        name="warm",
        storage=storage,
        data=str(tiny_data),
        weights="none",
        cache_dir=str(tmp_path / "features"),
    )
    from clothopt.objective import Objective

    calls = _count_decodes(monkeypatch)
    ds = open_dataset(tiny_data)
    objective = Objective(config, ds, FeatureCache(config.cache_dir))
    study.optimize(st, config, objective, progress=False)
    # train and validation decoded once each, at both sizes, by the first trial
    assert calls == [2] * (len(ds["train"]) + len(ds["validation"]))
    first, second = sorted(st.get_trials(), key=lambda t: t.number)
    assert first.user_attrs["extract_seconds"] > 0 and not first.user_attrs["features_cached"]
    assert second.user_attrs["features_cached"] and second.user_attrs["extract_seconds"] == 0


@pytest.mark.slow
def test_get_many_equals_get_on_real_photos(real_subset: Path, real_weights: Path) -> None:
    """The paper's sizes on real JPEGs (EXIF, odd sizes): one decode, the same bits."""
    split = open_dataset(real_subset)["validation"]
    sizes = [300, 400, 500]
    many = FeatureCache(None).get_many(SPEC, str(real_weights), 0, sizes, "nearest", split)
    for s in sizes:
        alone = FeatureCache(None).get(SPEC, str(real_weights), 0, s, "nearest", split)
        np.testing.assert_array_equal(many[s].x, alone.x)


@pytest.mark.slow
def test_pretrained_features_separate_real_classes(real_subset: Path, real_weights: Path) -> None:
    ds = open_dataset(real_subset)
    feats = FeatureCache(None).get(SPEC, str(real_weights), 0, 96, "nearest", ds["train"])
    assert np.isfinite(feats.x).all() and feats.x.std() > 0


def test_flipped_features_have_their_own_key_and_are_the_mirrored_input(
    tiny_data: Path, tmp_path: Path
) -> None:
    import hashlib
    import json
    from dataclasses import asdict

    from clothopt.data import load_batch
    from clothopt.model.compose import compose

    ds = open_dataset(tiny_data)
    cache = FeatureCache(tmp_path / "cache")
    plain = cache.key(SPEC, "none", 0, 32, "nearest", ds["validation"])
    mirrored = cache.key(SPEC, "none", 0, 32, "nearest", ds["validation"], flip=True)
    assert plain != mirrored and plain.digest != mirrored.digest
    assert "-flip-" in mirrored.filename and "-flip-" not in plain.filename
    # entries written before the flip (and view) fields keep their digest (and so their file)
    later = ("flip", "view", "augment", "augment_seed")
    before = {k: v for k, v in asdict(plain).items() if k not in later}
    blob = json.dumps(before, sort_keys=True).encode()
    assert plain.digest == hashlib.sha256(blob).hexdigest()[:24]
    got = cache.get(SPEC, "none", 0, 32, "nearest", ds["validation"], flip=True)
    assert got.key == mirrored and (tmp_path / "cache" / mirrored.filename).is_file()
    # mirrored after the resize: the extractor on the resized images, columns reversed
    images = load_batch(ds["validation"].paths, 32, "nearest")
    want = compose(SPEC, 32, "none", 0).predict_on_batch(images[:, :, ::-1, :])
    np.testing.assert_allclose(got.x, np.asarray(want), atol=1e-6)
    again = FeatureCache(tmp_path / "cache").get(
        SPEC, "none", 0, 32, "nearest", ds["validation"], flip=True
    )
    assert again.cached
    np.testing.assert_array_equal(again.x, got.x)


@pytest.mark.parametrize("progress", [True, False])
def test_progress_is_one_log_line_and_no_bar_off_a_terminal(
    tiny_data: Path,
    progress: bool,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    ds = open_dataset(tiny_data)
    with caplog.at_level(logging.INFO, logger="clothopt"):
        FeatureCache(None, progress=progress).get(SPEC, "none", 0, 32, "nearest", ds["test"])
    lines = [r.getMessage() for r in caplog.records if r.name == "clothopt.features"]
    n = len(ds["test"])
    assert [line.split(" (")[0] for line in lines] == (
        [f"features test 32px: {n} images"] if progress else []
    )
    captured = capsys.readouterr()  # stderr is not a terminal here: tqdm draws nothing
    assert "features test" not in captured.err and captured.out == ""


# --------------------------------------------------------------------------- a shared store


def _shared_cache(root: Path, storage: str, name: str, shard: int = 8) -> FeatureCache:
    from optuna.artifacts import FileSystemArtifactStore

    from clothopt.engine.leases import LeaseTable
    from clothopt.engine.storage import open_storage

    (root / "store").mkdir(exist_ok=True)
    return FeatureCache(
        root / f"cache-{name}",
        store=FileSystemArtifactStore(root / "store"),
        leases=LeaseTable.of_storage(open_storage(storage, create=True)),
        shard_images=shard,
        lease_ttl=30,
    )


def test_a_shared_entry_is_computed_once_and_fetched_by_another_cache(
    tiny_data: Path, tmp_path: Path, storage: str
) -> None:
    ds = open_dataset(tiny_data)
    one, two = _shared_cache(tmp_path, storage, "one"), _shared_cache(tmp_path, storage, "two")
    first = one.get_many(SPEC, "none", 0, [32, 40], "nearest", ds["train"])
    assert not first[32].cached and one.shared.stats.computed_shards == 2 * 3  # 24 images / 8
    fetched = two.get(SPEC, "none", 0, 40, "nearest", ds["train"])
    assert fetched.cached and two._extractor is None and two.shared.stats.computed_shards == 0
    np.testing.assert_array_equal(fetched.x, first[40].x)
    np.testing.assert_array_equal(fetched.y, ds["train"].labels)
    assert fetched.extract_seconds == pytest.approx(first[40].extract_seconds)
    # sharded extraction equals one pass over the split
    whole = FeatureCache(None).get(SPEC, "none", 0, 40, "nearest", ds["train"])
    np.testing.assert_allclose(fetched.x, whole.x, atol=1e-5)
    # and the fetched entry is now in the second cache's own folder
    assert (
        FeatureCache(tmp_path / "cache-two").get(SPEC, "none", 0, 40, "nearest", ds["train"]).cached
    )


@pytest.mark.parametrize("damage", ["torn manifest", "torn data", "other data"])
def test_a_damaged_shard_in_the_store_is_never_used(
    tiny_data: Path, tmp_path: Path, storage: str, damage: str
) -> None:
    ds = open_dataset(tiny_data)
    one = _shared_cache(tmp_path, storage, "one", shard=64)
    good = one.get(SPEC, "none", 0, 32, "nearest", ds["validation"])
    store = tmp_path / "store"
    (manifest,) = store.glob("*.json")
    (data,) = store.glob("*.npz")
    if damage == "torn manifest":
        manifest.write_bytes(manifest.read_bytes()[:40])
    elif damage == "torn data":
        data.write_bytes(data.read_bytes()[:100])
    else:  # bytes that are a valid npz, but not the ones the manifest's checksum names
        other = np.zeros_like(good.x)
        with open(data, "wb") as fh:
            np.savez(fh, x=other, y=good.y)
    two = _shared_cache(tmp_path, storage, "two", shard=64)
    assert two.shared.fetch(good.key, (0, len(good.y)), ds["validation"].labels) is None
    # its lease says done but the store cannot give it: reopened and computed again
    again = two.get(SPEC, "none", 0, 32, "nearest", ds["validation"])
    assert two.shared.stats.computed_shards == 1
    np.testing.assert_allclose(again.x, good.x, atol=1e-6)


def test_an_entry_another_worker_holds_is_deferred_in_a_trial_and_awaited_elsewhere(
    tiny_data: Path, tmp_path: Path, storage: str
) -> None:
    import threading

    from clothopt.engine.leases import allow_deferral
    from clothopt.errors import NotReady

    ds = open_dataset(tiny_data)
    one, two = _shared_cache(tmp_path, storage, "one"), _shared_cache(tmp_path, storage, "two")
    key = two.key(SPEC, "none", 0, 32, "nearest", ds["test"])
    shards = two.shared.shards(len(ds["test"]))
    lease_keys = [two.shared.lease_key(key, s) for s in shards]
    assert all(one.shared.leases.claim(k, one.shared.holder, 30) for k in lease_keys)
    with allow_deferral(), pytest.raises(NotReady):
        two.get(SPEC, "none", 0, 32, "nearest", ds["test"])
    assert two.shared.stats.computed_shards == 0 and two.shared.stats.deferred == 1
    # outside a trial it waits: here until the holder gives its claims up, then computes
    threading.Timer(
        1.0, lambda: [one.shared.leases.release(k, one.shared.holder) for k in lease_keys]
    ).start()
    got = two.get(SPEC, "none", 0, 32, "nearest", ds["test"])
    assert not got.cached and two.shared.stats.computed_shards == len(shards)
    assert two.shared.stats.waited_seconds > 0


def test_a_store_needs_a_lease_table(tmp_path: Path) -> None:
    from optuna.artifacts import FileSystemArtifactStore

    from clothopt.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        FeatureCache(tmp_path, store=FileSystemArtifactStore(tmp_path))
