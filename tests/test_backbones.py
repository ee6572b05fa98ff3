from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from clothopt.errors import UserError
from clothopt.model.backbones import (
    BACKBONES,
    build_base,
    get_backbone,
    preprocessing_layers,
    weights_id,
)
from clothopt.model.compose import compose

PAPER = Path(__file__).resolve().parents[1].parent / "shared/paper/final_test.csv"


def test_registry_holds_the_papers_backbones_and_more() -> None:
    assert {"xception", "densenet201", "efficientnetb6", "efficientnetb7"} == {
        n for n, s in BACKBONES.items() if s.paper
    }
    assert {"resnet50", "mobilenet_025"} <= set(BACKBONES)
    newer = {f"efficientnetv2{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")}
    newer |= {f"convnext_{v}" for v in ("tiny", "small", "base", "large", "xlarge")}
    assert newer | {"resnet50v2", "densenet121", "mobilenetv2"} <= set(BACKBONES)
    with pytest.raises(UserError, match="unknown backbone 'vgg'"):
        get_backbone("vgg")


def test_image_size_below_minimum_is_refused() -> None:
    with pytest.raises(UserError, match="minimum of xception"):
        get_backbone("xception").check_size(64)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_preprocessing_layers_equal_the_backbones_own_preprocess_input(name: str) -> None:
    spec = get_backbone(name)
    x = np.random.default_rng(0).integers(0, 256, (2, 9, 11, 3)).astype("float32")
    want = spec.preprocess_input()(x.copy())
    got = x
    for layer in preprocessing_layers(spec):
        got = layer(got)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5)


def test_imagenet_offline_fails_with_one_line_that_says_where_to_put_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from keras.src.utils import file_utils

    def offline(fname: str, origin: str, **kwargs: object) -> str:
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(UserError) as info:
        build_base(get_backbone("mobilenet_025"), 64, "imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert "mobilenet_2_5_224_tf_no_top.h5" in message and "--weights" in message


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="weights file not found"):
        weights_id(str(tmp_path / "nope.h5"))
    with pytest.raises(UserError, match="weights file not found"):
        build_base(get_backbone("mobilenet_025"), 64, str(tmp_path / "nope.h5"))


def test_random_weights_are_the_same_for_the_same_seed() -> None:
    spec = get_backbone("mobilenet_025")
    a = build_base(spec, 32, "none", seed=3).get_weights()[0]
    b = build_base(spec, 32, "none", seed=3).get_weights()[0]
    c = build_base(spec, 32, "none", seed=4).get_weights()[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_extractor_is_frozen_and_pools() -> None:
    model = compose(get_backbone("mobilenet_025"), 48, "none")
    assert model.output.shape[-1] == 256
    assert not model.trainable_weights


@pytest.mark.slow
def test_shared_pretrained_weights_load(real_weights: Path) -> None:
    base = build_base(get_backbone("mobilenet_025"), 224, str(real_weights))
    assert base.count_params() == 218_544


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xception", "densenet201", "efficientnetb6", "efficientnetb7"])
def test_parameter_totals_match_the_paper(name: str) -> None:
    if not PAPER.is_file():
        pytest.skip("paper tables not at ../shared/paper")
    with PAPER.open() as fh:
        row = next(r for r in csv.DictReader(fh) if r["metric"] == "total_parameters")
    spec = get_backbone(name)
    base = build_base(spec, max(spec.min_size, 75), "none")
    total = base.count_params() + spec.feature_dim * 10 + 10  # + Dense(10) head
    assert total == int(row[name])


@pytest.mark.parametrize(
    ("name", "params"),
    # include_top=False parameter counts from Keras's own models (not built here: too slow)
    [("efficientnetv2b0", 5_919_312), ("mobilenetv2", 2_257_984)],
)
def test_small_newer_backbones_build_with_their_feature_dim(name: str, params: int) -> None:
    spec = get_backbone(name)
    base = build_base(spec, 32, "none")
    assert base.count_params() == params
    assert base.output.shape[-1] == spec.feature_dim
    assert not base.trainable


def test_newer_backbones_preprocess_inside_the_model_where_keras_does() -> None:
    # EfficientNetV2 and ConvNeXt rescale inside: preprocess_input is the identity, no layers
    for name in ("efficientnetv2s", "convnext_tiny"):
        spec = get_backbone(name)
        assert spec.kwargs["include_preprocessing"] is True
        assert preprocessing_layers(spec) == []
        assert spec.min_size == 32
