"""runs.open_run: a study's data set (checked) and feature cache on this machine."""

from __future__ import annotations

from pathlib import Path

from clothopt import study as study_mod
from clothopt.engine import storage_of
from clothopt.model.backbones import get_backbone
from clothopt.runs import open_run


def test_a_study_with_a_store_shares_each_feature_entry_between_hosts(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Two hosts (two feature caches, one storage, one store): the first computes every
    shard, the second fetches them all from the store and computes none."""
    space = tmp_path / "one.toml"
    space.write_text("[params]\nimage_size = [32]\nbatch_size = [8]\nlearning_rate = [0.01]\n")
    storage = f"sqlite:///{tmp_path / 'st' / 'c.db'}"
    st, cfg = study_mod.create(
        backbone="mobilenet_025",
        space=str(space),
        name="shared",
        storage=storage,
        data=str(tiny_data),
        weights="none",
        store=(tmp_path / "store").as_uri(),
    )
    ds, one = open_run(cfg, cache_dir=str(tmp_path / "host-a"), storage=storage_of(st))
    _, two = open_run(cfg, cache_dir=str(tmp_path / "host-b"), storage=storage_of(st))
    assert one.shared is not None and two.shared is not None
    first = one.get_many(
        get_backbone("mobilenet_025"), "none", cfg.seed, [32], cfg.resize, ds["train"]
    )[32]
    fetched = two.get(get_backbone("mobilenet_025"), "none", cfg.seed, 32, cfg.resize, ds["train"])
    assert one.shared.stats.computed_shards >= 1
    assert two.shared.stats.computed_shards == 0 and fetched.cached
    assert (fetched.x == first.x).all()
    # a study without a store keeps each host's cache to itself
    _, local = open_run(
        study_mod.create(
            backbone="mobilenet_025",
            space=str(space),
            name="local",
            storage=storage,
            data=str(tiny_data),
            weights="none",
        )[1],
        cache_dir=str(tmp_path / "host-c"),
        storage=storage_of(st),
    )
    assert local.shared is None
