"""Smoke test of the benchmark code (benchmarks/) on tiny synthetic data: keys and sane numbers.

It checks that every section runs and reports what the README and the issue name; it never
asserts a speed (benchmarks show speed; ``make bench`` measures it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from benchmarks.bench import goal_rows, run_all
from benchmarks.measure import SECTIONS, Settings, _within_block_slope, link_subset


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture
def report(tiny_data: Path, tmp_path: Path) -> dict:
    grid = tmp_path / "tiny-grid.toml"
    grid.write_text(
        'sampler = "grid"\nepochs = 1\n[params]\nimage_size = [32, 40]\n'
        "batch_size = [8]\nlearning_rate = [0.01, 0.001]\n"
    )
    settings = Settings(
        data=str(tiny_data),
        weights="none",
        work=str(tmp_path / "work"),
        image_size=32,
        extract_sizes=[32, 40],
        extract_batch=8,
        threads=2,
        extract_images=16,
        rounds=1,
        option_images=16,
        option_rounds=1,
        option_batches=[8, 16],
        option_threads=[1, 2],
        precisions=["float32", "bfloat16"],
        batch_sizes_px=[32, 40],
        batch_images=16,
        slow_variant_seconds=5.0,
        train_images=0,
        val_images=0,
        search_batches=[8],
        search_lrs=[0.01, 0.001],
        epochs=1,
        wide_trials=2,
        wide_extra_size=40,
        memory_train_images=0,
        memory_val_images=0,
        memory_space=str(grid),
        repeats_runs=1,
        repeats_train_rows=40,
        repeats_wide_epochs=1,
    )
    return run_all(settings, SECTIONS, tmp_path / "out", in_process=True)


def test_bench_writes_every_documented_figure(report: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(report["summary"]))
    md = (out / "bench.md").read_text()
    for heading in ("## Figures", "## Search cost", "## Feature extraction", "## Memory"):
        assert heading in md
    assert "## Extraction options" in md and "make bench" in md
    summary = report["summary"]
    assert summary["failed_sections"] == []
    assert summary["device"] == "cpu" and summary["gpu"] is False

    s = summary["search"]
    assert s["trials"] == 2 and s["train_images"] == 24 and s["val_images"] == 12
    assert _positive(s["end_to_end_seconds"]) and _positive(s["cached_seconds"])
    assert _positive(s["ratio"]) and s["goal"] == 15.0 and isinstance(s["met"], bool)
    assert s["max_f1_diff"] is not None and 0 <= s["max_f1_diff"] <= 1
    assert s["extract_seconds"] > 0

    e = summary["extraction"]
    assert e["images"] == 16 and e["batch_size"] == 8 and e["decode_threads"] == 2
    assert [r["image_size"] for r in e["sizes"]] == [32, 40] and e["goal"] == 0.9
    for row in e["sizes"]:
        for key in ("forward_img_s", "pipeline_img_s", "decode_only_img_s", "pipeline_vs_forward"):
            assert _positive(row[key]), key
        assert 0 < row["cpu_bound"] <= 1 and isinstance(row["met"], bool)
    assert all(r["same_features"] for r in report["sections"]["extraction"]["sizes"])

    sd = e["shared_decode"]
    assert sd["sizes"] == [32, 40] and _positive(sd["pipeline_vs_forward"])
    assert _positive(sd["speedup_vs_size_by_size"]) and isinstance(sd["met"], bool)

    h = summary["head"]
    assert h["train_images"] == 24
    for name, goal in (("paper", 0.1), ("wide", 1.0)):
        fig = h[name]
        assert fig["trials"] == 2 and fig["goal_seconds"] == goal
        assert _positive(fig["seconds_per_trial"]) and isinstance(fig["met"], bool)
        assert 0 <= fig["f1_median"] <= 1
    assert h["wide"]["params"]["hidden_layers"] == 1 and h["wide"]["params"]["epochs"] == "10-30"
    # wide trials see two sizes concatenated and mirrored rows, as a `wide` study's do
    assert h["wide"]["train_rows"] == 2 * h["paper"]["train_rows"] == 48
    assert h["wide"]["feature_dim"] == 2 * h["paper"]["feature_dim"]
    t = summary["search_trial"]
    assert _positive(t["train_seconds"]) and t["outside_training_seconds"] is not None
    assert t["goal"] == 0.3 and isinstance(t["met"], bool)
    r = summary["repeats"]
    assert r["members"] == 5 and r["runs"] == 1 and r["train_rows"] == 80
    assert [h["name"] for h in r["heads"]] == [
        "paper",
        "wide",
        "wide_fused_adam",
        "wide_no_dropout",
    ]
    for head in r["heads"]:
        assert _positive(head["solo_seconds"]) and _positive(head["stacked_seconds"])
        assert head["max_weight_diff"] < 1e-3 and isinstance(head["met"], bool)
    assert [h["goal"] for h in r["heads"]] == [1.5, 3.0, 3.0, 3.0]
    for head in r["heads"][:2]:  # a whole 5-fold trial both ways, through protocol.evaluate
        k = head["kfold_trial"]
        assert k["folds"] == 5 and k["rounds"] == head["runs"] and k["same_member_f1_both_ways"]
        assert k["max_weight_diff_between_ways"] < 1e-3 and isinstance(k["met"], bool)
        for way in ("first_alone", "all_stacked"):
            assert _positive(k[f"{way}_seconds"]) and _positive(k[f"{way}_cpu_seconds"])
            assert _positive(k[f"{way}_ratio"]["median"])
    from benchmarks.repeats import kfold_markdown

    table = kfold_markdown(report["sections"]["repeats"])
    assert "## K-fold trial vs one fit" in table
    assert all(f"| {h} | {w} |" in table for h in ("paper", "wide") for w in ("first alone",
               "all stacked"))  # fmt: skip
    o = summary["overhead"]
    assert o["trials"] == 27 and _positive(o["ms_per_trial"]) and o["storage"] == "sqlite"
    assert o["goal_ms"] == 300 and isinstance(o["met"], bool)

    m = summary["memory"]
    assert m["trials"] == 4 and _positive(m["peak_rss_mb"])
    assert m["rss_max_mb"] >= m["rss_first_mb"] > 0 and isinstance(m["flat"], bool)
    assert m["peak_rss_mb"] >= m["rss_max_mb"] - 1

    opts = summary["options"]
    assert set(opts) == {"precision=bfloat16", "decode_threads=1", "jit_compile=True"}
    assert all(_positive(v["speedup"]) for v in opts.values())
    variants = {f"{v['option']}={v['value']}": v for v in report["sections"]["options"]["variants"]}
    # options that only change speed give the same features up to float rounding
    assert variants["decode_threads=1"]["max_abs_diff"] == 0
    assert len(variants["precision=bfloat16"]["f1"]) == 2
    bbs = summary["batch_by_size"]
    assert set(bbs["grid_seconds_per_1000_images"]) == {8, 16} and bbs["best"] in (8, 16)
    assert all(_positive(v) for v in bbs["grid_seconds_per_1000_images"].values())
    assert all(len(r) == 4 for r in goal_rows(summary))


def test_subset_links_keep_class_shares(tiny_data: Path, tmp_path: Path) -> None:
    dest = link_subset(tiny_data, tmp_path / "sub", {"train": 12, "validation": 0, "test": 3})
    train = sorted(p.parent.name for p in (dest / "train").rglob("*.jpg"))
    assert len(train) == 12 and {train.count(c) for c in set(train)} == {4}
    assert all(p.is_symlink() for p in (dest / "train").rglob("*.jpg"))
    assert len(list((dest / "validation").rglob("*.jpg"))) == 12  # 0: the whole split


def test_memory_slope_ignores_the_step_of_a_new_image_size() -> None:
    def row(n: int, size: int, rss: float) -> dict:
        return {"number": n, "state": "COMPLETE", "image_size": size, "rss_mb": rss}

    flat = [row(i, 300, 900.0) for i in range(4)] + [row(i + 4, 400, 1100.0) for i in range(4)]
    assert _within_block_slope(flat) == 0.0
    leak = [row(i, 300, 900.0 + 5 * i) for i in range(4)]
    assert _within_block_slope(leak) == pytest.approx(5.0)


# --------------------------------------------------------------------------- the options measured


def test_extraction_options_keep_features_within_their_tolerance(tiny_data: Path) -> None:
    """Batch size, decode threads and XLA change speed only; precision is part of the key."""
    import numpy as np

    from clothopt.data import open_dataset
    from clothopt.errors import UserError
    from clothopt.features import CPU_EXTRACT_BATCH, FeatureCache
    from clothopt.model.backbones import get_backbone

    spec, split = get_backbone("mobilenet_025"), open_dataset(tiny_data)["train"]

    def feats(**kwargs: object) -> np.ndarray:
        return FeatureCache(None, **kwargs).get(spec, "none", 0, 32, "nearest", split).x

    ref = feats(batch_size=16, threads=2)
    np.testing.assert_array_equal(feats(batch_size=5, threads=1), ref)
    np.testing.assert_allclose(feats(jit_compile=True), ref, atol=1e-4 * np.abs(ref).max())
    low = FeatureCache(None, precision="bfloat16")
    x16 = low.get(spec, "none", 0, 32, "nearest", split)
    assert x16.x.dtype == np.float32 and np.isfinite(x16.x).all()
    assert x16.key.precision == "bfloat16"
    assert x16.key != FeatureCache(None).key(spec, "none", 0, 32, "nearest", split)
    assert FeatureCache(None).batch_size == CPU_EXTRACT_BATCH  # no GPU in the test run
    with pytest.raises(UserError, match="precision"):
        FeatureCache(None, precision="float8")


def test_extractor_takes_uint8_images_as_they_are_decoded() -> None:
    import numpy as np

    from clothopt.model.backbones import get_backbone
    from clothopt.model.compose import compose

    model = compose(get_backbone("mobilenet_025"), 32, "none")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        np.asarray(model.predict_on_batch(images)),
        np.asarray(model.predict_on_batch(images.astype(np.float32))),
    )
