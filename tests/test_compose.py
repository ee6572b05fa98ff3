"""One composition: the extractor, the end-to-end model and the exported model share one chain."""

from __future__ import annotations

import itertools
import json
import re
import zipfile
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clothopt.data import nearest_indices
from clothopt.errors import InvalidArgument
from clothopt.model import compose as compose_mod
from clothopt.model.backbones import get_backbone
from clothopt.model.compose import POOL_LAYER, Head, build_head, compose, nearest_corrections

SPEC = get_backbone("mobilenet_025")
SIZE = 32
CLASSES = 4


def _chain(model: Any) -> list[Any]:
    """The layers from preprocessing to pooling: no input, no in-model resize, nothing after."""
    import keras

    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.name.startswith("resize_"):
            continue
        layers.append(layer)
        if layer.name == POOL_LAYER:
            return layers
    raise AssertionError(f"{model.name} has no {POOL_LAYER!r} layer")


def _config(layer: Any) -> str:
    # the base's own input layer is named by Keras with a per-session counter: not a difference
    text = json.dumps(layer.get_config(), sort_keys=True, default=str)
    return re.sub(r'"input_layer_\d+"', '"input_layer"', text)


def _assert_same_layers(a: list[Any], b: list[Any]) -> None:
    assert [type(x) for x in a] == [type(x) for x in b]
    for x, y in zip(a, b, strict=True):
        assert _config(x) == _config(y), x.name
        wx, wy = x.get_weights(), y.get_weights()
        assert len(wx) == len(wy), x.name
        for u, v in zip(wx, wy, strict=True):
            np.testing.assert_array_equal(u, v, err_msg=x.name)


def _head_weights() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 1, (SPEC.feature_dim, CLASSES)).astype("float32")
    return [kernel, rng.normal(0, 1, CLASSES).astype("float32")]


def test_exported_model_is_the_extractor_then_the_trained_head() -> None:
    extractor = compose(SPEC, SIZE, "none", 3)
    head = _head_weights()
    exported = compose(
        SPEC,
        SIZE,
        "none",
        3,
        raw_input=True,
        head=Head(num_classes=CLASSES, weights=head),
        softmax=True,
        extra_outputs={"pooled": lambda pooled: pooled},
    )
    chain = _chain(extractor)
    assert [type(layer).__name__ for layer in chain][-2:] == [
        "Functional",
        "GlobalAveragePooling2D",
    ]
    _assert_same_layers(_chain(exported), chain)
    # after the pooling: the trained head, then softmax
    logits, softmax = exported.get_layer("logits"), exported.get_layer("probabilities")
    for got, want in zip(logits.get_weights(), head, strict=True):
        np.testing.assert_array_equal(got, want)
    assert type(softmax).__name__ == "Softmax"
    # an image already at the study size: the resize keeps it, so the features are the same bits
    images = np.random.default_rng(1).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    out = exported.predict_on_batch(images)
    np.testing.assert_array_equal(
        np.asarray(out["pooled"]), np.asarray(extractor.predict_on_batch(images))
    )
    probs = np.asarray(out["probabilities"])
    logit = np.asarray(out["pooled"], dtype=np.float64) @ head[0] + head[1]
    want = np.exp(logit - logit.max()) / np.exp(logit - logit.max()).sum()
    np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-6)


def test_end_to_end_model_is_the_extractor_plus_the_paper_head() -> None:
    import keras

    extractor = compose(SPEC, SIZE, "none", 3)
    e2e = compose(SPEC, SIZE, "none", 3, head=Head(num_classes=CLASSES, seed=7))
    _assert_same_layers(_chain(e2e), _chain(extractor))
    assert e2e.layers[-1].name == "logits" and e2e.output.shape == (None, CLASSES)
    # the head is the paper's, fresh from its seed: as a head trained on cached features starts
    fresh = build_head(CLASSES, 7)
    fresh.build((None, SPEC.feature_dim))
    assert e2e.layers[-1].get_config() == fresh.get_config()
    for got, want in zip(e2e.layers[-1].get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    images = np.random.default_rng(2).integers(0, 256, (2, SIZE, SIZE, 3)).astype("float32")
    features = keras.ops.convert_to_tensor(extractor.predict_on_batch(images))
    np.testing.assert_allclose(
        np.asarray(e2e.predict_on_batch(images)),
        np.asarray(e2e.layers[-1](features)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_every_head_comes_from_build_head(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    def spy(num_classes: int, seed: int) -> Any:
        calls.append((num_classes, seed))
        return build_head(num_classes, seed)

    monkeypatch.setattr(compose_mod, "build_head", spy)
    e2e = compose(SPEC, SIZE, "none", head=Head(num_classes=CLASSES, seed=5))
    exported = compose(
        SPEC,
        SIZE,
        "none",
        raw_input=True,
        head=Head(num_classes=CLASSES, seed=5, weights=_head_weights()),
        softmax=True,
    )
    assert calls == [(CLASSES, 5), (CLASSES, 5)]
    # same layer, only the weights differ (trained ones in the export)
    assert e2e.get_layer("logits").get_config() == exported.get_layer("logits").get_config()
    calls.clear()
    compose(SPEC, SIZE, "none")  # the extractor has no head
    assert calls == []


def test_outputs_are_named_and_checked() -> None:
    extractor = compose(SPEC, SIZE, "none")
    assert extractor.name == "mobilenet_025_features"
    assert extractor.output.shape == (None, SPEC.feature_dim) and not extractor.trainable_weights
    assert extractor.get_layer(POOL_LAYER).output is extractor.output
    with_extra = compose(
        SPEC,
        SIZE,
        "none",
        head=Head(num_classes=CLASSES),
        extra_outputs={"norm": _norm},
    )
    assert set(with_extra.output) == {"logits", "norm"}
    assert with_extra.output["norm"].shape == (None, 1)
    with pytest.raises(ValueError, match="softmax needs a head"):
        compose(SPEC, SIZE, "none", softmax=True)
    with pytest.raises(ValueError, match="replace the main output"):
        compose(SPEC, SIZE, "none", extra_outputs={"features": lambda pooled: pooled})


def _norm(pooled: Any) -> Any:
    """An extra output as an out-of-distribution score would be: a function of the features."""
    from keras import ops

    return ops.sqrt(ops.sum(ops.square(pooled), axis=-1, keepdims=True))


# --------------------------------------------------------------------------- any head


def _pil(image: np.ndarray, size: int, flip: bool = False) -> np.ndarray:
    """A decoded image PIL-nearest resized; ``flip`` mirrors it BEFORE the resize, which is not
    what the cache or the model do (they mirror the resized image): the contrast in a test."""
    from PIL import Image

    img = Image.fromarray(image)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img.resize((size, size), Image.NEAREST))


def _wide_weights(dims: list[int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for d_in, d_out in itertools.pairwise(dims):
        out += [rng.normal(0, 0.3, (d_in, d_out)).astype("float32")]
        out += [rng.normal(0, 0.3, d_out).astype("float32")]
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_exported_wide_head_with_tta_and_two_sizes_is_the_cached_head(
    tmp_path: Any, real_weights: Any
) -> None:
    """Exported probabilities == softmax(head(features)) from features computed as cached:
    each size's pooled features concatenated, the flipped view flipped after its resize."""
    import keras

    from clothopt.model.head import HeadParams, head_logits, normalize_features

    sizes = [32, 48]
    rng = np.random.default_rng(4)
    # width 64 -> 32 (or 48): nearest resize of a flipped image is not the flipped resize
    images = [rng.integers(0, 256, (45, 64, 3), dtype=np.uint8) for _ in range(3)]
    assert not np.array_equal(_pil(images[0], 32, flip=True), _pil(images[0], 32)[:, ::-1])

    def resized(image: np.ndarray, size: int, flip: bool = False) -> np.ndarray:
        out = _pil(image, size)
        return np.ascontiguousarray(out[:, ::-1]) if flip else out

    weights_file = str(real_weights)  # pretrained: random-weight features hardly vary
    extractors = {s: compose(SPEC, s, weights_file) for s in sizes}

    def features(flip: bool) -> np.ndarray:
        per_size = [
            np.asarray(
                extractors[s].predict_on_batch(np.stack([resized(i, s, flip) for i in images]))
            )
            for s in sizes
        ]
        return np.concatenate(per_size, axis=1)

    plain, flipped = features(False), features(True)
    params = HeadParams(
        hidden_layers=2,
        hidden_units=8,
        dropout=0.3,
        normalize="l2",
        learning_rate=1e-3,
        batch_size=4,
    )
    weights = _wide_weights([plain.shape[1], 8, 8, CLASSES], 1)
    head = Head.of(params, CLASSES, weights=weights)
    model = compose(SPEC, sizes, weights_file, raw_input=True, head=head, softmax=True, tta=True)
    assert [type(layer).__name__ for layer in model.layers].count("Dropout") == 2
    path = tmp_path / "wide.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)

    def cached(x: np.ndarray) -> np.ndarray:
        return head_logits(weights, normalize_features(x, x, "l2")[1])

    want = _softmax((cached(plain) + cached(flipped)) / 2)
    assert not np.allclose(want, _softmax(cached(plain)), atol=1e-3)  # the flip counts
    # and it is the flip of the resized image: flipping the decoded one first gives others
    flipped_first = [np.stack([_pil(i, s, flip=True) for i in images]) for s in sizes]
    early = np.concatenate(
        [
            np.asarray(extractors[s].predict_on_batch(b))
            for s, b in zip(sizes, flipped_first, strict=True)
        ],
        axis=1,
    )
    assert not np.allclose(early, flipped, rtol=1e-3)
    for m in (model, reloaded):
        got = np.stack([np.asarray(m.predict_on_batch(i[None]))[0] for i in images])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    with zipfile.ZipFile(path) as z:
        config = z.read("config.json").decode()
    assert "clothopt" not in config and "Lambda" not in config


def test_l2_head_without_hidden_layers_matches_normalize_features() -> None:
    from clothopt.model.head import HeadParams, head_logits, normalize_features

    params = HeadParams(normalize="l2", dropout=0.5, learning_rate=1e-3, batch_size=4)
    weights = _head_weights()
    model = compose(
        SPEC,
        SIZE,
        "none",
        3,
        raw_input=True,
        head=Head.of(params, CLASSES, weights=weights),
        softmax=True,
        extra_outputs={"pooled": lambda pooled: pooled},
    )
    assert model.get_layer("head_l2") is not None
    images = np.random.default_rng(5).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    out = model.predict_on_batch(images)
    pooled = np.asarray(out["pooled"])
    logits = head_logits(weights, normalize_features(pooled, pooled, "l2")[1])
    np.testing.assert_allclose(np.asarray(out["probabilities"]), _softmax(logits), rtol=1e-4)


def test_standardize_divides_by_a_std_below_keras_epsilon_as_the_trainer_does() -> None:
    """Normalization divides by max(sqrt(var), 1e-7); the export folds the rest into the kernel."""
    import keras

    from clothopt.model import compose as compose_mod
    from clothopt.model.head import feature_statistics, head_logits, normalize_features

    rng = np.random.default_rng(6)
    x_train = rng.normal(1.0, 1.0, (30, 5))
    x_train[:, 2] = rng.normal(0, 1e-9, 30)  # std ~1e-9: above 1e-12, below 1e-7
    x_train[:, 3] = 7.0  # constant: std taken as 1
    x_train = x_train.astype("float64")
    x = x_train[:4]
    mean, std = feature_statistics(x_train)
    assert 1e-12 < std[2] < 1e-8 and std[3] == 1.0
    weights = _wide_weights([5, 6, 3], 2)
    head = Head(
        num_classes=3,
        hidden_layers=1,
        hidden_units=6,
        normalize="standardize",
        weights=weights,
        mean=mean,
        std=std,
    )
    layers, dense, trained = compose_mod._head_layers(head)
    inputs = keras.Input((5,), dtype="float64")
    out = inputs
    for layer in layers:
        out = layer(out)
    model = keras.Model(inputs, out)
    for i, layer in enumerate(dense):
        layer.set_weights(trained[2 * i : 2 * i + 2])
    want = head_logits(
        [w.astype("float64") for w in weights], normalize_features(x_train, x, "standardize")[1]
    )
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(x)), want, rtol=1e-3, atol=1e-3)


def test_wide_head_starts_as_the_trainer_does_and_bad_heads_are_refused() -> None:
    from clothopt.model.head import HeadParams

    params = HeadParams(hidden_layers=1, hidden_units=5, learning_rate=1e-3, batch_size=4)
    e2e = compose(SPEC, SIZE, "none", head=Head.of(params, CLASSES, seed=9))
    import keras

    for name, seed in (("hidden0", 10), ("logits", 9)):  # HeadTrainer: hidden i gets seed+1+i
        layer = e2e.get_layer(name)
        want = keras.initializers.GlorotUniform(seed=seed)(layer.kernel.shape)
        np.testing.assert_array_equal(np.asarray(layer.kernel), np.asarray(want))
    with pytest.raises(ValueError, match="4 weight arrays, not 2"):
        compose(SPEC, SIZE, "none", head=Head.of(params, CLASSES, weights=_head_weights()))
    with pytest.raises(ValueError, match="need raw_input"):
        compose(SPEC, [SIZE, 48], "none")
    with pytest.raises(ValueError, match="needs a head"):
        compose(SPEC, SIZE, "none", raw_input=True, tta=True)
    with pytest.raises(ValueError, match="mean and std"):
        compose(SPEC, SIZE, "none", head=Head(num_classes=CLASSES, normalize="standardize"))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 1200), st.integers(1, 6000))
def test_the_correction_table_turns_the_exact_index_into_pils(size: int, side: int) -> None:
    # what pil_nearest_resize computes in the graph, read back in NumPy
    row_of_side, words = nearest_corrections(size, max_side=side)
    k = np.arange(size)
    word = words[int(row_of_side[side])][k // 24].astype(np.int64)
    fix = (word >> (k % 24)) & 1
    got = (2 * k + 1) * side // (2 * size) - fix
    np.testing.assert_array_equal(got, nearest_indices(side, size))
    assert row_of_side[-1] == 0  # longer sides: the closed form, no row


def test_an_ensemble_averages_its_members_probabilities_in_built_in_layers(
    tmp_path: Any,
) -> None:
    """Several heads: each member as it would be exported alone (TTA logits first), then the
    mean of their probabilities; one head in a list is exactly the single-head model."""
    import keras

    rng = np.random.default_rng(4)
    dim = SPEC.feature_dim

    def member(seed: int, normalize: str) -> Head:
        mean = std = None
        if normalize == "standardize":
            mean, std = rng.normal(0, 1, dim), rng.uniform(0.5, 2.0, dim)
        weights = [
            rng.normal(0, 0.3, (dim, 6)).astype("float32"),
            rng.normal(0, 0.3, 6).astype("float32"),
            rng.normal(0, 1, (6, CLASSES)).astype("float32"),
            rng.normal(0, 1, CLASSES).astype("float32"),
        ]
        return Head(
            num_classes=CLASSES, seed=seed, weights=weights, hidden_layers=1, hidden_units=6,
            dropout=0.3, normalize=normalize, mean=mean, std=std,
        )  # fmt: skip

    heads = [member(1, "standardize"), member(2, "l2"), member(3, "none")]

    def exported(head: Any) -> Any:
        return compose(
            SPEC, SIZE, "none", 3, raw_input=True, head=head, softmax=True, tta=True,
            extra_outputs={"pooled": lambda pooled: pooled},
        )  # fmt: skip

    images = rng.integers(0, 256, (3, 40, 52, 3)).astype("float32")
    ensemble = exported(heads)
    assert "Lambda" not in json.dumps(ensemble.get_config())
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    got = np.asarray(loaded.predict_on_batch(images)["probabilities"])
    alone = [np.asarray(exported(h).predict_on_batch(images)["probabilities"]) for h in heads]
    np.testing.assert_allclose(got, np.mean(alone, axis=0), rtol=1e-5, atol=1e-6)
    names = {layer.name for layer in loaded.layers}
    assert {
        f"member{i}_{n}" for i in range(3) for n in ("logits", "hidden0", "tta_logits")
    } <= names
    assert "probabilities" in names and "logits" not in names
    # a list of one head is the single head's model, layer for layer
    one, single = exported([heads[0]]), exported(heads[0])

    def names(model: Any) -> list[str]:  # Keras numbers unnamed layers process-wide
        return [re.sub(r"^dropout(_\d+)?$", "dropout", layer.name) for layer in model.layers]

    assert names(one) == names(single)
    np.testing.assert_array_equal(
        np.asarray(one.predict_on_batch(images)["probabilities"]),
        np.asarray(single.predict_on_batch(images)["probabilities"]),
    )
    with pytest.raises(InvalidArgument, match="needs softmax"):
        compose(SPEC, SIZE, "none", 3, raw_input=True, head=heads[:2])
    with pytest.raises(InvalidArgument, match="at least one head"):
        compose(SPEC, SIZE, "none", 3, raw_input=True, head=[], softmax=True)


def test_a_blend_of_configurations_weighs_heads_of_other_sizes_and_tta(tmp_path: Any) -> None:
    """Heads with their own sizes and TTA in one model: each member's probabilities are those
    of the model exported with it alone, averaged by the members' shares; ``pool`` stays the
    model's own sizes (what the detector and similar items read)."""
    import dataclasses

    import keras

    rng = np.random.default_rng(7)

    def member(sizes: tuple[int, ...], tta: bool, share: float, seed: int) -> Head:
        dim = SPEC.feature_dim * len(sizes)
        weights = [
            rng.normal(0, 0.3, (dim, CLASSES)).astype("float32"),
            rng.normal(0, 0.3, CLASSES).astype("float32"),
        ]
        return Head(
            num_classes=CLASSES, seed=seed, weights=weights, normalize="l2",
            sizes=sizes, tta=tta, share=share,
        )  # fmt: skip

    heads = [
        member((32,), False, 0.5, 1),
        member((48, 32), True, 0.3, 2),
        member((32,), True, 0.2, 3),
    ]
    model = compose(
        SPEC, 32, "none", 3, raw_input=True, head=heads, softmax=True,
        extra_outputs={"pooled": lambda pooled: pooled},
    )  # fmt: skip
    path = tmp_path / "blend.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = rng.integers(0, 256, (3, 41, 57, 3)).astype("float32")
    got = loaded.predict_on_batch(images)

    def alone(h: Head) -> np.ndarray:
        single = dataclasses.replace(h, sizes=None, tta=None, share=None)
        m = compose(
            SPEC, list(h.sizes or ()), "none", 3, raw_input=True, head=single, softmax=True,
            tta=bool(h.tta),
        )  # fmt: skip
        return np.asarray(m.predict_on_batch(images))

    want = sum((h.share or 0.0) * alone(h) for h in heads)
    np.testing.assert_allclose(got["probabilities"], want, rtol=1e-5, atol=1e-6)
    # the shares count: equal shares give another answer
    assert not np.allclose(got["probabilities"], np.mean([alone(h) for h in heads], axis=0))
    extractor = compose(SPEC, 32, "none", 3)
    plain = np.stack([_pil(i.astype(np.uint8), 32) for i in images]).astype("float32")
    np.testing.assert_allclose(
        got["pooled"], extractor.predict_on_batch(plain), rtol=1e-5, atol=1e-6
    )
    assert loaded.get_layer(POOL_LAYER).output.shape[-1] == SPEC.feature_dim
    assert "Lambda" not in json.dumps(loaded.get_config())
    with pytest.raises(InvalidArgument, match="shares"):
        bad = [dataclasses.replace(heads[0], share=None), heads[1]]
        compose(SPEC, 32, "none", 3, raw_input=True, head=bad, softmax=True)
    with pytest.raises(InvalidArgument, match="distinct"):
        compose(SPEC, 32, "none", 3, raw_input=True, softmax=True,
                head=[dataclasses.replace(heads[1], sizes=(32, 32)), heads[0]])  # fmt: skip
