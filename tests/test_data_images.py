"""Image decoding: same pixels as Keras load_img, PIL's nearest index tables, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clothopt.data.images import (
    MAX_IMAGE_PIXELS,
    UnusableImage,
    iter_batches,
    load_batch,
    load_image,
    nearest_indices,
)
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


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width``×``height`` (8-bit RGB) but holds almost no data:
    enough to test the pixel limit without gigabytes on disk or in memory."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat))
    return path


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("1", "png"), ("L", "bmp"), ("LA", "png"), ("RGBA", "tif"), ("CMYK", "jpg"), ("P", "gif")],
)
def test_other_8_bit_modes_match_keras(tmp_path: Path, keras_load_img, mode: str, fmt: str) -> None:
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (29, 31, 3), dtype=np.uint8))
    img = rgb.quantize(colors=32) if mode == "P" else rgb.convert(mode)
    path = tmp_path / f"x.{fmt}"
    img.save(path)
    assert Image.open(path).mode == mode
    for size in (None, 20):
        target = None if size is None else (size, size)
        want = np.asarray(keras_load_img(path, target_size=target, interpolation="nearest"))
        np.testing.assert_array_equal(load_image(path, size), want)


def test_palette_with_byte_transparency_matches_keras(tmp_path: Path, keras_load_img) -> None:
    rgb = np.random.default_rng(4).integers(0, 256, (12, 9, 3), dtype=np.uint8)
    path = tmp_path / "p.png"
    Image.fromarray(rgb).quantize(colors=16).save(path, transparency=bytes(range(16)))
    np.testing.assert_array_equal(load_image(path, None), np.asarray(keras_load_img(path)))


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16_bit_gray_is_scaled_like_a_viewer_not_clipped_white(tmp_path: Path, fmt: str) -> None:
    values = np.random.default_rng(5).integers(0, 65536, (23, 17), dtype=np.uint16)
    path = tmp_path / f"g16.{fmt}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    got = load_image(path, None)
    want = (values >> 8).astype(np.uint8)
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, axis=2))
    assert got.mean() < 200  # load_img gives 253.8 here: nearly everything clipped to 255
    resized = load_image(path, 8)
    np.testing.assert_array_equal(
        resized[..., 0], want[nearest_indices(23, 8)][:, nearest_indices(17, 8)]
    )


def test_16_bit_pgm_opens_as_mode_i_and_is_scaled(tmp_path: Path) -> None:
    path = tmp_path / "g.ppm"
    path.write_bytes(b"P5\n3 1\n65535\n\xff\xff\x80\x00\x00\xff")
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(load_image(path, None)[0, :, 0], [255, 128, 0])


@pytest.mark.parametrize("kind", ["int32", "float32"])
def test_32_bit_pixels_are_refused_not_guessed(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.tif"
    Image.fromarray(np.arange(12, dtype=kind).reshape(3, 4) * 1000).save(path)
    with pytest.raises(UnusableImage, match=r"mode [IF]\) have no agreed 8-bit scale") as info:
        load_image(path, 8)
    assert info.value.kind == "unreadable" and isinstance(info.value, UserError)


@pytest.mark.parametrize(
    "size",
    [(8661, 5774), (12000, 12000), (20000, 20000)],
    ids=["limit", "pil-warns", "pil-refuses"],
)
def test_images_above_the_pixel_limit_are_refused_from_the_header(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    assert size[0] * size[1] > MAX_IMAGE_PIXELS
    path = write_png_header(tmp_path / "big.png", *size)
    with pytest.raises(UnusableImage, match=r"above clothopt's limit of 50 megapixels") as info:
        load_image(path, 300)
    assert info.value.kind == "too-large"
    assert "\n" not in str(info.value)
    # just under the limit, the same header is decoded (and found truncated)
    ok = write_png_header(tmp_path / "ok.png", 100, MAX_IMAGE_PIXELS // 100)
    with pytest.raises(UnusableImage) as info:
        load_image(ok, 300)
    assert info.value.kind == "truncated"


def test_broken_symlink_is_named_as_such(tmp_path: Path) -> None:
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(
        UnusableImage, match=r"gone\.jpg: broken symbolic link to .*nowhere"
    ) as info:
        load_image(link, 32)
    assert info.value.kind == "broken-link"
