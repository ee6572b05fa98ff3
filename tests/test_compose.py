"""One composition: the extractor, the end-to-end model and the exported model share one chain."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from clothopt.model import compose as compose_mod
from clothopt.model.backbones import get_backbone
from clothopt.model.compose import POOL_LAYER, Head, build_head, compose

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
