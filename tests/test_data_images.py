"""Image decoding: same pixels as Keras load_img, PIL's nearest index tables, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clothopt.data.images import iter_batches, load_batch, load_image, nearest_indices
from clothopt.errors import UserError

REAL_TRAIN = Path("/work/shared/datasets/clothing-dataset-small/train")
OUT_SIZES = (1, 2, 3, 5, 7, 32, 150, 224, 299, 300, 400, 500)


@pytest.fixture(scope="module")
def keras_load_img():
    keras = pytest.importorskip("keras")  # slow (~4 s) but only once per module
    return keras.utils.load_img


def pil_nearest(in_size: int, out_size: int) -> np.ndarray:
    """The column PIL picks for each output pixel, read from an image of column indices."""
    cols = Image.fromarray(np.arange(in_size, dtype=np.int32)[None, :])
    assert cols.mode == "I"
    return np.asarray(cols.resize((out_size, 1), Image.NEAREST))[0].astype(np.int64)


def test_nearest_indices_match_pil() -> None:
    mismatches = [
        (in_size, out_size)
        for in_size in range(1, 701)
        for out_size in OUT_SIZES
        if not np.array_equal(nearest_indices(in_size, out_size), pil_nearest(in_size, out_size))
    ]
    assert mismatches == []  # array_equal also fails on a wrong length


def test_nearest_indices_match_pil_on_both_axes() -> None:
    rng = np.random.default_rng(1)
    for h, w, s in [(37, 91, 32), (640, 480, 224), (5, 700, 300), (333, 222, 500)]:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(pixels).resize((s, s), Image.NEAREST))
        got = pixels[nearest_indices(h, s)][:, nearest_indices(w, s)]
        np.testing.assert_array_equal(got, want)


def write_images(folder: Path, seed: int = 0) -> dict[str, Path]:
    """RGB JPEG, grayscale (L) PNG, RGBA PNG and palette PNG of awkward sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (61, 43, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (50, 77), dtype=np.uint8)
    rgba = rng.integers(0, 256, (33, 40, 4), dtype=np.uint8)
    paths = {
        "rgb": folder / "rgb.jpg",
        "gray": folder / "gray.png",
        "rgba": folder / "rgba.png",
        "palette": folder / "palette.png",
    }
    Image.fromarray(rgb).save(paths["rgb"], quality=90)
    Image.fromarray(gray).save(paths["gray"])
    Image.fromarray(rgba).save(paths["rgba"])
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.info["transparency"] = 3
    palette.save(paths["palette"], transparency=3)
    return paths


@pytest.mark.parametrize("kind", ["rgb", "gray", "rgba", "palette"])
@pytest.mark.parametrize("size", [16, 43, 224])
def test_load_image_matches_keras(tmp_path: Path, keras_load_img, kind: str, size: int) -> None:
    path = write_images(tmp_path)[kind]
    got = load_image(path, size)
    want = np.asarray(keras_load_img(path, target_size=(size, size), interpolation="nearest"))
    assert got.dtype == np.uint8
    assert got.shape == (size, size, 3)
    np.testing.assert_array_equal(got, want)


def test_load_image_without_resize(tmp_path: Path, keras_load_img) -> None:
    path = write_images(tmp_path)["gray"]
    got = load_image(path, None)
    assert got.shape == (50, 77, 3)
    np.testing.assert_array_equal(got, np.asarray(keras_load_img(path)))


def test_corrupt_file_is_a_clothopt_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a JPEG")
    with pytest.raises(UserError, match=r"cannot read image .*notes\.jpg"):
        load_image(text, 32)

    good = write_images(tmp_path)["rgb"]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cut\.jpg"):
        load_image(cut, 32)

    with pytest.raises(UserError):
        load_image(tmp_path / "missing.png", 32)


def test_iter_batches_order_shapes_and_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    paths = []
    for i in range(11):
        h, w = rng.integers(8, 40, 2)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(pixels).save(paths[-1])

    batches = list(iter_batches(paths, 20, batch_size=4, threads=3, prefetch=1))
    assert [b.shape for b in batches] == [(4, 20, 20, 3), (4, 20, 20, 3), (3, 20, 20, 3)]
    assert all(b.dtype == np.uint8 for b in batches)
    expected = np.stack([load_image(p, 20) for p in paths])
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    np.testing.assert_array_equal(load_batch(paths, 20), expected)

    # a batch size that divides the count exactly, and one larger than it
    assert [len(b) for b in iter_batches(paths[:8], 20, batch_size=4)] == [4, 4]
    assert [len(b) for b in iter_batches(paths, 20, batch_size=64)] == [11]
    assert list(iter_batches([], 20, batch_size=4)) == []


def test_iter_batches_reports_a_broken_file(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (9, 9), (i, i, i)).save(paths[-1])
    paths[3].write_text("broken")
    batches = iter_batches(paths, 8, batch_size=2)
    assert next(batches).shape == (2, 8, 8, 3)
    with pytest.raises(UserError, match=r"3\.png"):
        next(batches)


@pytest.mark.slow
def test_load_image_matches_keras_on_real_images(keras_load_img) -> None:
    if not REAL_TRAIN.is_dir():
        pytest.skip(f"{REAL_TRAIN} not present")
    files = sorted(p for p in REAL_TRAIN.rglob("*") if p.suffix.lower() == ".jpg")
    picked = files[:: max(1, len(files) // 30)][:30]
    assert len(picked) >= 10
    for i, path in enumerate(picked):
        size = (150, 224, 299)[i % 3]
        want = np.asarray(keras_load_img(path, target_size=(size, size), interpolation="nearest"))
        np.testing.assert_array_equal(load_image(path, size), want, err_msg=str(path))
