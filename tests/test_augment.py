"""Seeded augmentation views: the pixels, their cache entries, and where their rows go."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clothopt import study
from clothopt.augment import (
    AUGMENT_SEED,
    RECIPE,
    ViewParams,
    augment_batch,
    augment_image,
    image_identity,
    view_params,
)
from clothopt.data import load_batch, open_dataset
from clothopt.errors import InvalidArgument
from clothopt.features import FeatureCache, FeatureKey
from clothopt.model.backbones import get_backbone
from clothopt.pipeline import head_inputs
from clothopt.protocol import Protocol, protocol_inputs, protocol_members
from clothopt.trial_spec import PARAMS, TrialSpec

SPEC = get_backbone("mobilenet_025")
NONE = ViewParams(1.0, 1.0, 0.0, 0.0, 0.0, False, 1.0, 1.0, 1.0)  # the identity view


def _image(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- the draw


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    view=st.integers(1, 64),
    identity=st.text(min_size=1, max_size=40),
)
def test_a_views_draw_is_a_function_of_seed_view_and_image_within_the_recipe(
    seed: int, view: int, identity: str
) -> None:
    p = view_params(seed, view, identity)
    assert p == view_params(seed, view, identity)
    assert 0.6 - 1e-12 <= p.width * p.height <= 1.0 + 1e-12  # area, even where a side clips
    assert 0.5 < p.width <= 1.0 and 0.5 < p.height <= 1.0
    # the crop lies inside the image
    assert abs(p.cx) <= (1 - p.width) / 2 + 1e-12 and abs(p.cy) <= (1 - p.height) / 2 + 1e-12
    assert abs(p.degrees) <= 10.0
    for factor in (p.brightness, p.contrast, p.saturation):
        assert 0.8 <= factor <= 1.2
    others = {view_params(seed, view + 1, identity), view_params(seed + 1, view, identity)}
    others.add(view_params(seed, view, identity + "x"))
    assert p not in others


def test_views_mirror_about_half_the_time_and_view_zero_is_refused() -> None:
    mirrored = [view_params(0, v, f"c/{i}.jpg").mirror for v in (1, 2) for i in range(200)]
    assert 0.4 < np.mean(mirrored) < 0.6
    with pytest.raises(InvalidArgument, match="view must be >= 1"):
        view_params(0, 0, "c/a.jpg")


def test_an_images_identity_is_its_path_under_the_split(tmp_path: Path) -> None:
    assert image_identity(tmp_path / "train", tmp_path / "train/hat/a.jpg") == "hat/a.jpg"


# --------------------------------------------------------------------------- the pixels


def test_the_identity_view_and_a_pure_mirror_are_exact() -> None:
    img = _image()
    np.testing.assert_array_equal(augment_image(img, NONE), img)
    mirror = dataclasses.replace(NONE, mirror=True)
    np.testing.assert_array_equal(augment_image(img, mirror), img[:, ::-1])


def test_a_quarter_turn_is_a_quarter_turn() -> None:
    img = _image(32, 32)
    turned = augment_image(img, dataclasses.replace(NONE, degrees=90.0))
    # output (row, col) samples the source at the output's offset rotated by +90 degrees
    np.testing.assert_array_equal(turned, np.rot90(img, k=1))


def test_a_centre_crop_magnifies_a_ramp_linearly() -> None:
    """Bilinear sampling is exact on a linear ramp: a half-width centre crop halves its slope."""
    w = 64
    ramp = np.broadcast_to((np.arange(w) * 2)[None, :, None], (8, w, 3)).astype(np.uint8)
    got = augment_image(ramp, dataclasses.replace(NONE, width=0.5)).astype(float)
    # output column c samples source column (w - 1) / 2 + 0.5 * (c - (w - 1) / 2)
    source = (w - 1) / 2 + 0.5 * (np.arange(w) - (w - 1) / 2)
    np.testing.assert_allclose(got[0, :, 0], 2 * source, atol=0.5)
    np.testing.assert_array_equal(got[:, :, 0], got[:, :, 1])  # rows and channels alike


def test_colour_jitter_scales_brightness_and_keeps_greys_grey() -> None:
    grey = np.full((8, 8, 3), 100, np.uint8)
    brighter = augment_image(grey, dataclasses.replace(NONE, brightness=1.2))
    np.testing.assert_array_equal(brighter, np.full_like(grey, 120))
    # a grey image has no saturation and no contrast to scale
    other = dataclasses.replace(NONE, contrast=0.8, saturation=1.2)
    np.testing.assert_array_equal(augment_image(grey, other), grey)
    img = _image()
    dull = augment_image(img, dataclasses.replace(NONE, contrast=0.8)).astype(float)
    assert dull.std() < img.astype(float).std()


def test_views_are_deterministic_per_image_and_differ_between_views() -> None:
    batch = np.stack([_image(seed=s) for s in range(5)])
    names = [f"hat/{i}.jpg" for i in range(5)]
    one = augment_batch(batch, names, 3, 1)
    np.testing.assert_array_equal(one, augment_batch(batch, names, 3, 1))
    np.testing.assert_array_equal(one, augment_batch(batch, names, 3, 1, threads=3))
    # an image's view does not depend on its neighbours or its place in the batch
    np.testing.assert_array_equal(augment_batch(batch[3:4], names[3:4], 3, 1), one[3:4])
    for other in (augment_batch(batch, names, 3, 2), augment_batch(batch, names, 4, 1)):
        assert all(not np.array_equal(a, b) for a, b in zip(one, other, strict=True))
    assert one.dtype == np.uint8 and one.shape == batch.shape
    with pytest.raises(InvalidArgument, match="identities"):
        augment_batch(batch, names[:2], 3, 1)


# --------------------------------------------------------------------------- cache entries


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal up to float rounding, at the features' own scale (a random base's are ~1e-18)."""
    scale = float(np.abs(want).max())
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)


def _legacy_digest(key: FeatureKey) -> str:
    """The digest as keys had it before views: the fields up to flip, flip only when set."""
    fields = dataclasses.asdict(key)
    old = {k: fields[k] for k in list(fields)[: list(fields).index("flip") + 1]}
    if not key.flip:
        del old["flip"]
    return hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:24]


def test_view_keys_are_distinct_and_plain_and_mirrored_keys_keep_their_digest(
    tiny_data: Path, tmp_path: Path
) -> None:
    ds = open_dataset(tiny_data)
    cache = FeatureCache(tmp_path / "cache")
    split = ds["train"]
    keys = [cache.key(SPEC, "none", 0, 32, "nearest", split)]
    keys.append(cache.key(SPEC, "none", 0, 32, "nearest", split, flip=True))
    keys += [cache.key(SPEC, "none", 0, 32, "nearest", split, view=v) for v in (1, 2)]
    keys.append(cache.key(SPEC, "none", 0, 40, "nearest", split, view=1))
    assert len({k.digest for k in keys}) == len({k.filename for k in keys}) == 5
    assert [_legacy_digest(k) for k in keys[:2]] == [k.digest for k in keys[:2]]
    assert "view" not in keys[0].as_dict() and "augment" not in keys[1].as_dict()
    view = keys[2]
    assert (view.view, view.augment, view.augment_seed) == (1, RECIPE, AUGMENT_SEED)
    assert "-view1-" in view.filename and view.as_dict()["augment"] == RECIPE
    # a new recipe (or seed) is a new entry
    assert dataclasses.replace(view, augment=RECIPE + "x").digest != view.digest
    assert dataclasses.replace(view, augment_seed=1).digest != view.digest
    for bad in ({"view": 1}, {"view": 1, "augment": RECIPE, "flip": True}, {"augment": RECIPE}):
        with pytest.raises(InvalidArgument, match="feature key"):
            dataclasses.replace(keys[0], **bad)


def test_a_view_entry_is_the_extractor_on_the_augmented_images_computed_once(
    tiny_data: Path, tmp_path: Path
) -> None:
    from clothopt.model.compose import compose

    ds = open_dataset(tiny_data)
    split = ds["validation"]
    got = FeatureCache(tmp_path / "cache").get(SPEC, "none", 0, 32, "nearest", split, view=2)
    assert not got.cached and got.key.view == 2
    assert (tmp_path / "cache" / got.key.filename).is_file()
    names = [image_identity(split.root, p) for p in split.paths]
    images = augment_batch(load_batch(split.paths, 32, "nearest"), names, AUGMENT_SEED, 2)
    want = compose(SPEC, 32, "none", 0).predict_on_batch(images)
    _close(got.x, np.asarray(want))
    np.testing.assert_array_equal(got.y, split.labels)
    again = FeatureCache(tmp_path / "cache")
    hit = again.get(SPEC, "none", 0, 32, "nearest", split, view=2)
    assert hit.cached and again._extractor is None
    np.testing.assert_array_equal(hit.x, got.x)
    # several sizes in one pass: each the view at that size, as get computes it
    many = FeatureCache(None).get_many(SPEC, "none", 0, [32, 40], "nearest", split, view=2)
    np.testing.assert_array_equal(many[32].x, got.x)
    one = FeatureCache(None).get(SPEC, "none", 0, 40, "nearest", split, view=2)
    np.testing.assert_array_equal(many[40].x, one.x)
    other = FeatureCache(None).get(SPEC, "none", 0, 32, "nearest", split, view=1)
    assert not np.array_equal(other.x, got.x)
    with pytest.raises(AssertionError):
        _close(other.x, got.x)


def test_a_view_entry_is_shared_like_any_other(
    tiny_data: Path, tmp_path: Path, storage: str
) -> None:
    """Shards of a view hold the views of their own images: joined, the whole split's."""
    from optuna.artifacts import FileSystemArtifactStore

    from clothopt.engine.leases import LeaseTable
    from clothopt.engine.storage import open_storage

    ds = open_dataset(tiny_data)
    (tmp_path / "store").mkdir()

    def shared(name: str) -> FeatureCache:
        return FeatureCache(
            tmp_path / name,
            store=FileSystemArtifactStore(tmp_path / "store"),
            leases=LeaseTable.of_storage(open_storage(storage, create=True)),
            shard_images=8,
            lease_ttl=30,
        )

    one, two = shared("one"), shared("two")
    first = one.get(SPEC, "none", 0, 32, "nearest", ds["train"], view=1)
    assert one.shared is not None and one.shared.stats.computed_shards == 3  # 24 images / 8
    fetched = two.get(SPEC, "none", 0, 32, "nearest", ds["train"], view=1)
    assert fetched.cached and two.shared is not None and two.shared.stats.computed_shards == 0
    np.testing.assert_array_equal(fetched.x, first.x)
    whole = FeatureCache(None).get(SPEC, "none", 0, 32, "nearest", ds["train"], view=1)
    _close(fetched.x, whole.x)
    plain = two.get(SPEC, "none", 0, 32, "nearest", ds["train"])  # not the view's shards
    assert not plain.cached and not np.array_equal(plain.x, whole.x)


# --------------------------------------------------------------------------- the parameter


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.integers(-20, 30), st.booleans(), st.floats(-2, 12)))
def test_aug_views_is_a_whole_number_within_its_limits(value: Any) -> None:
    point = {"image_size": 224, "batch_size": 32, "learning_rate": 1e-3}
    lo, hi = PARAMS["aug_views"].limits or (0, 0)
    valid = not isinstance(value, bool) and float(value).is_integer() and lo <= value <= hi
    if valid:
        spec = TrialSpec.of(point | {"aug_views": value}, _Study())
        assert spec.aug_views == int(value) and isinstance(spec.aug_views, int)
        assert not spec.is_paper
    else:
        with pytest.raises(InvalidArgument, match="aug_views"):
            TrialSpec.of(point | {"aug_views": value}, _Study())
    assert (lo, hi) == (0, 8)
    absent = TrialSpec.of(point, _Study())
    assert absent.aug_views == 0 and absent.seed == TrialSpec.of(dict(point), _Study()).seed


@dataclasses.dataclass(frozen=True)
class _Study:
    backbone: str = "mobilenet_025"
    seed: int = 0
    epochs: int = 2


# --------------------------------------------------------------------------- rows


def _study(tmp_path: Path, data: Path, space_text: str) -> tuple[Any, Any]:
    space = tmp_path / "space.toml"
    space.write_text(space_text)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    return study.create(
        space=str(space), data=str(data), storage=storage, backbone="mobilenet_025",
        weights="none", name="s",
    )  # fmt: skip


SPACE = (
    "sampler = 'tpe'\nn_trials = 2\n[params]\nimage_sizes = ['32+40']\nbatch_size = [8]\n"
    "learning_rate = [0.01]\nepochs = [3]\nflip = [true]\ntta = [true]\naug_views = [2]\n"
)
LR = {"batch_size": 8, "learning_rate": 0.01}


def test_views_are_training_rows_after_the_mirrored_ones_and_never_evaluation_rows(
    tiny_data: Path, tmp_path: Path
) -> None:
    _, config = _study(tmp_path, tiny_data, SPACE)
    ds = open_dataset(tiny_data)
    cache = FeatureCache(None)
    params = {"image_sizes": "32+40", "flip": True, "tta": True, "aug_views": 2, **LR}
    got = head_inputs(cache, ds, config, TrialSpec.of(params, config), ("train", "validation"))
    tr, va = got["train"], got["validation"]
    n = len(ds["train"])
    assert (tr.blocks, tr.examples, tr.x.shape) == (4, n, (4 * n, 512))
    np.testing.assert_array_equal(tr.y, np.tile(ds["train"].labels, 4))

    def block(split: str, **kind: Any) -> np.ndarray:
        feats = [cache.get(SPEC, "none", 0, s, "nearest", ds[split], **kind) for s in (32, 40)]
        return np.concatenate([f.x for f in feats], 1)

    want = [block("train"), block("train", flip=True)]
    want += [block("train", view=1), block("train", view=2)]
    np.testing.assert_array_equal(tr.x, np.concatenate(want))
    # evaluation: plain and (tta) mirrored views only
    assert va.views == va.blocks == 2 and len(va.y) == len(ds["validation"])
    np.testing.assert_array_equal(
        va.x, np.concatenate([block("validation"), block("validation", flip=True)])
    )
    # a fold's rows: every block of its examples, the views included
    rows = np.array([0, 5])
    np.testing.assert_array_equal(
        tr.take(rows).x, tr.x[np.concatenate([rows + b * n for b in range(4)])]
    )
    assert tr.plain().x.shape == (n, 512)


def test_with_folds_validation_images_train_on_their_views_but_are_scored_without(
    tiny_data: Path, tmp_path: Path
) -> None:
    _, config = _study(tmp_path, tiny_data, SPACE)
    ds = open_dataset(tiny_data)
    cache = FeatureCache(None)
    spec = TrialSpec.of({"image_size": 32, "tta": True, "aug_views": 2, **LR}, config)
    protocol = Protocol(1, 3)
    inputs = protocol_inputs(cache, ds, config, spec, protocol)
    train, scored, members = protocol_members(spec, inputs, protocol, 0, 0)
    n_tr, n_va = len(ds["train"]), len(ds["validation"])
    n = n_tr + n_va
    assert (train.blocks, scored.views) == (3, 2)  # plain + 2 views; plain + tta mirror

    def both(**kind: Any) -> np.ndarray:
        return np.concatenate(
            [
                cache.get(SPEC, "none", 0, 32, "nearest", ds[s], **kind).x
                for s in ("train", "validation")
            ]
        )

    np.testing.assert_array_equal(train.x, np.concatenate([both(), both(view=1), both(view=2)]))
    np.testing.assert_array_equal(scored.x, np.concatenate([both(), both(flip=True)]))
    for m in members:
        own = np.setdiff1d(np.arange(n), m.val_examples)
        np.testing.assert_array_equal(m.train_rows, np.concatenate([own + b * n for b in range(3)]))
        assert m.val_examples is not None and not np.isin(m.val_examples, own).any()


def test_a_trial_with_two_views_trains_on_them_and_reuses_their_entries(
    tiny_data: Path, tmp_path: Path
) -> None:
    from clothopt.objective import Objective

    st_, config = _study(tmp_path, tiny_data, SPACE)
    root = tmp_path / "cache"
    objective = Objective(config, open_dataset(tiny_data), FeatureCache(root))
    study.optimize(st_, config, objective, n_trials=2, progress=False)
    a, b = st_.trials
    assert a.params["aug_views"] == 2 and 0.0 <= a.value <= 1.0
    assert a.value == b.value and b.user_attrs["features_cached"]
    views = sorted(p.name.split("-")[2] for p in root.rglob("*-view*.npz"))
    # views 1 and 2 of train at 32 and 40 px; none of validation (scored only)
    assert views == ["view1", "view1", "view2", "view2"]
    assert all("-train-view" in p.name for p in root.rglob("*-view*.npz"))
    # the trial is its head trained on the rows head_inputs lays out, views included
    from clothopt.model.head import HeadTrainer
    from clothopt.pipeline import train_spec

    ds = open_dataset(tiny_data)
    spec = TrialSpec.of(a.params, config)
    inputs = head_inputs(FeatureCache(root), ds, config, spec)
    assert spec.aug_views == 2 and inputs["train"].blocks == 4
    again = train_spec(spec, inputs, ds.classes, HeadTrainer())
    assert again.epoch_f1[-1] == a.value


@pytest.mark.parametrize("flip", [False, True])
def test_a_trial_without_views_has_todays_rows_and_entries(
    tiny_data: Path, tmp_path: Path, flip: bool
) -> None:
    _, config = _study(tmp_path, tiny_data, SPACE)
    ds = open_dataset(tiny_data)
    root = tmp_path / "cache"
    cache = FeatureCache(root)
    params = {"image_size": 32, "flip": flip, "tta": True, **LR}
    spec = TrialSpec.of(params, config)
    got = head_inputs(cache, ds, config, spec)
    plain = cache.get(SPEC, "none", 0, 32, "nearest", ds["train"])
    mirrored = cache.get(SPEC, "none", 0, 32, "nearest", ds["train"], flip=True)
    want = np.concatenate([plain.x, mirrored.x]) if flip else plain.x
    assert got["train"].blocks == 1 + flip
    np.testing.assert_array_equal(got["train"].x, want)
    # every entry it wrote is named by the digest keys had before views existed
    for meta in root.rglob("*.json"):
        key = FeatureKey(**json.loads(meta.read_text())["key"])
        assert key.view == 0 and meta.name.endswith(f"-{_legacy_digest(key)}.json")


def test_the_cost_benchmark_writes_its_figures(tiny_data: Path, tmp_path: Path) -> None:
    from benchmarks.augment_views import main

    out = tmp_path / "bench"
    main(["--data", str(tiny_data), "--weights", "none", "--out", str(out), "--sizes", "32"])
    report = json.loads((out / "augment_views.json").read_text())
    cost = report["cost"]["32"]
    assert report["cost"]["images"] == 24 and report["recipe"] == RECIPE
    assert cost["view_pass_seconds"] > 0 and cost["plain_pass_seconds"] > 0
    assert cost["augment_cpu_ms_per_image_one_thread"] > 0 and "quality" not in report


def test_finalize_trains_the_final_head_on_the_views_too(
    tmp_path: Path, real_weights: Path
) -> None:
    """The parameter reaches finalize through the trial's spec: the shipped head is the one
    trained on plain + view rows, not on the plain rows alone."""
    import keras
    import optuna
    from optuna.distributions import CategoricalDistribution

    from clothopt.final.finalize import finalize
    from clothopt.final.store import load_final
    from clothopt.model.head import HeadTrainer
    from clothopt.pipeline import train_spec
    from conftest import make_dataset

    data = make_dataset(tmp_path / "data", counts=(8, 4, 6))
    storage = f"sqlite:///{tmp_path / 'studies' / 'clothopt.db'}"
    st_, config = study.create(
        backbone="mobilenet_025", space="quick", name="views", storage=storage,
        data=str(data), weights=str(real_weights),
    )  # fmt: skip
    params = {"image_size": 32, "aug_views": 1, **LR}
    dists = {k: CategoricalDistribution([v]) for k, v in params.items()}
    st_.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.5))
    report = finalize("views", storage, epochs=2)
    assert report["params"] == params
    ds = open_dataset(data)
    spec = TrialSpec.of(params, config).with_epochs(2)
    inputs = head_inputs(FeatureCache(None), ds, config, spec)
    assert inputs["train"].blocks == 2
    val = {"validation": inputs["validation"].plain()}
    with_views = train_spec(spec, {"train": inputs["train"], **val}, ds.classes, HeadTrainer())
    plain = train_spec(spec, {"train": inputs["train"].plain(), **val}, ds.classes, HeadTrainer())
    _, folder = load_final("views", storage)
    model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    (kernel, _), want = model.get_layer("logits").get_weights(), with_views.weights[0]
    np.testing.assert_allclose(kernel, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(kernel, plain.weights[0], rtol=1e-5, atol=1e-6)
