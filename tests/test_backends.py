"""An exported model gives the same answers under TensorFlow, JAX and PyTorch.

A catalogue serves the ``.keras`` file, often without TensorFlow: each backend loads it with
plain ``keras.saving.load_model(..., safe_mode=True)`` in its own virtual environment
(``make backends``: ``.venv-jax``, ``.venv-torch``), through scripts/serve_probe.py, which
imports neither TensorFlow nor clothopt. ``CLOTHOPT_BACKEND_PYTHONS="jax=PATH torch=PATH"``
names other interpreters; CI sets ``CLOTHOPT_REQUIRE_BACKENDS=1`` so that a missing one fails.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from benchmarks.backends import backend_pythons, serve
from PIL import Image

from clothopt.data import load_batch, open_dataset
from clothopt.final.rejection import detector_outputs, fit_shipped_detector
from clothopt.model.backbones import get_backbone
from clothopt.model.compose import Head, compose, nearest_corrections, pil_nearest_resize
from conftest import make_dataset

SIZE = 45  # odd factors: many input sides where PIL's running sum needs the correction table


def _serve(model: Path, images: list[np.ndarray], tmp: Path) -> dict[str, dict[str, np.ndarray]]:
    """Each backend's outputs for ``images``, each image its own batch."""
    named = backend_pythons()
    missing = [f"{b}={p}" for b, p in named.items() if not Path(p).is_file()]
    if missing and os.environ.get("CLOTHOPT_REQUIRE_BACKENDS"):
        pytest.fail(f"CI needs the JAX and PyTorch environments (`make backends`): {missing}")
    if missing:
        pytest.skip("no JAX or PyTorch environment: `make backends` creates them")
    np.savez(tmp / "images.npz", *images)
    pythons = {"tensorflow": sys.executable, **named}
    return {b: serve(p, b, model, tmp / "images.npz") for b, p in pythons.items()}


def _sides() -> list[tuple[int, int]]:
    """Image shapes whose both sides need PIL's correction, some that need none, odd ones."""
    corrected = np.flatnonzero(nearest_corrections(SIZE)[0])
    plain = [n for n in range(1, 2000) if n not in set(corrected.tolist())]
    rng = np.random.default_rng(SIZE)
    pick = [int(v) for v in rng.choice(corrected[corrected < 2000], 8, replace=False)]
    shapes = list(zip(pick[:4], pick[4:], strict=True))
    shapes += [(pick[0], int(plain[100])), (int(plain[7]), pick[1]), (1, 1), (SIZE, SIZE)]
    return [*shapes, (2, 1333), (3001, 17)]


def test_the_in_model_resize_gives_pils_pixels_on_every_backend(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((None, None, 3), dtype="float32")
    path = tmp_path / "resize.keras"
    keras.Model(inputs, pil_nearest_resize(inputs, SIZE)).save(path)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in _sides()]
    want = [np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.NEAREST)) for im in images]
    results = _serve(path, images, tmp_path)
    assert len(results) >= 2  # TensorFlow and at least one other
    for backend, got in results.items():
        for i, image in enumerate(images):
            np.testing.assert_array_equal(
                got["output"][i], want[i], err_msg=f"{backend}: {image.shape[:2]} -> {SIZE}"
            )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An exported model as finalize builds it, with the "not clothing" outputs."""
    root = tmp_path_factory.mktemp("backends")
    ds = open_dataset(make_dataset(root / "data", counts=(8, 4, 4)))
    spec = get_backbone("mobilenet_025")
    extractor = compose(spec, SIZE, "none", 0)

    def features(split: str) -> np.ndarray:
        paths = list(ds[split].paths)
        return np.asarray(extractor.predict_on_batch(load_batch(paths, SIZE, "nearest")))

    train = features("train")
    detector = fit_shipped_detector(train, features("validation"))
    rng = np.random.default_rng(1)
    # logits of order 1: the random base's features are tiny, the kernel scales them up
    kernel = rng.normal(0, 1.0 / (train.std() + 1e-12), (train.shape[1], len(ds.classes)))
    head = Head(
        num_classes=len(ds.classes),
        weights=[kernel.astype("float32"), np.zeros(len(ds.classes), "float32")],
    )

    def exported_with(threshold: float) -> Any:
        chosen = dataclasses.replace(detector, threshold=threshold)
        return compose(
            spec,
            SIZE,
            "none",
            0,
            raw_input=True,
            head=head,
            softmax=True,
            extra_outputs=detector_outputs(chosen),
        )

    images = [np.asarray(Image.open(p).convert("RGB")) for p in ds["test"].paths]
    images += [np.random.default_rng(h).integers(0, 256, (h, w, 3), np.uint8) for h, w in _sides()]
    # a random base accepts every picture at the fitted threshold: put it in the widest gap
    # between the middle scores, so that both answers occur and none is a float's width away
    first = exported_with(detector.threshold)
    scores = np.sort(
        [float(first.predict_on_batch(im[None])["clothing_score"][0]) for im in images]
    )
    middle = scores[len(scores) // 4 : 3 * len(scores) // 4 + 1]
    gap = int(np.argmax(np.diff(middle)))
    exported_with((middle[gap] + middle[gap + 1]) / 2).save(root / "model.keras")
    return {"model": root / "model.keras", "images": images, "root": root}


def test_an_exported_model_with_its_detector_agrees_on_every_backend(
    exported: dict[str, Any],
) -> None:
    results = _serve(exported["model"], exported["images"], exported["root"])
    ref = results.pop("tensorflow")
    assert set(ref) == {"probabilities", "clothing_score", "accepted"}
    assert 0 < ref["accepted"].sum() < len(ref["accepted"])  # both answers are exercised
    for backend, got in results.items():
        assert set(got) == set(ref), backend
        # convolutions sum in other orders per backend: floats within tolerance, answers equal
        np.testing.assert_allclose(got["probabilities"], ref["probabilities"], atol=1e-5)
        np.testing.assert_allclose(got["clothing_score"], ref["clothing_score"], atol=1e-5)
        np.testing.assert_array_equal(
            got["probabilities"].argmax(axis=1), ref["probabilities"].argmax(axis=1), backend
        )
        np.testing.assert_array_equal(got["accepted"], ref["accepted"], backend)


def test_a_blend_of_configurations_agrees_on_every_backend(tmp_path: Path) -> None:
    """finalize's blend: members on other sizes (a second branch) and TTA, averaged by their
    weights in built-in layers, gives each backend TensorFlow's probabilities."""
    spec = get_backbone("mobilenet_025")
    rng = np.random.default_rng(3)
    dim = spec.feature_dim

    def member(sizes: tuple[int, ...] | None, tta: bool | None, share: float) -> Head:
        width = dim * (len(sizes) if sizes else 1)
        kernel = rng.normal(0, 30.0, (width, 4)).astype("float32")
        return Head(
            num_classes=4, weights=[kernel, np.zeros(4, "float32")], normalize="l2",
            sizes=sizes, tta=tta, share=share,
        )  # fmt: skip

    heads = [member(None, None, 0.5), member((33, SIZE), True, 0.3), member((33,), False, 0.2)]
    model = compose(spec, SIZE, "none", 0, raw_input=True, head=heads, softmax=True,
                    extra_outputs={"pooled": lambda pooled: pooled})  # fmt: skip
    model.save(tmp_path / "blend.keras")
    images = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in _sides()[:6]]
    results = _serve(tmp_path / "blend.keras", images, tmp_path)
    ref = results.pop("tensorflow")
    assert ref["probabilities"].shape == (len(images), 4)
    assert len(np.unique(ref["probabilities"].argmax(axis=1))) > 1  # not one answer for all
    for backend, got in results.items():
        np.testing.assert_allclose(got["probabilities"], ref["probabilities"], atol=1e-5)
        np.testing.assert_allclose(got["pooled"], ref["pooled"], atol=1e-5, err_msg=backend)
