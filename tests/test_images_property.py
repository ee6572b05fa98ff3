"""Property: whatever file lies where an image should, `data check` and `predict` answer.

Hypothesis writes image files of random modes, sizes (1x1 up), bit depths and formats, cut
short or not, plus empty files and non-image bytes with image names. Both commands must exit
with their documented status (check: 0 usable, 1 not; predict: 0 all read, 1 some failed),
print no traceback, name every unusable file in exactly one line, and write nothing.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clothopt.cli import main
from clothopt.data import IMAGE_EXTENSIONS, UnusableImage, load_image
from conftest import save_tiny_model

CLASSES = ["hat", "pants"]
FORMATS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "WEBP": ".webp",
}
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
SIDES = (1, 2, 9, 33)
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file name, bytes): an image in some mode and format, maybe cut, or not an image."""
    kind = draw(st.sampled_from(["image", "image", "image", "cut", "empty", "junk"]))
    ext = draw(st.sampled_from([*IMAGE_EXTENSIONS, ".gif", ".webp"]))
    if kind == "empty":
        return ext, b""
    if kind == "junk":
        return ext, draw(st.binary(min_size=1, max_size=300))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    # few distinct sizes (1x1 among them): predict traces the model once per image shape
    w, h = draw(st.sampled_from(SIDES)), draw(st.sampled_from(SIDES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if mode in ("I;16", "I", "F"):
        top = draw(st.sampled_from([255, 65535, 2**31 - 1]))
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        img = Image.fromarray(rng.integers(0, top, (h, w), endpoint=True).astype(dtype))
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, fmt)
    except (OSError, ValueError, KeyError):  # the format cannot hold the mode: as RGB
        buf = io.BytesIO()
        img.convert("RGB").save(buf, fmt)
    data = buf.getvalue()
    if kind == "cut":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    # the extension follows the format most of the time, not always (a PNG named .jpg...)
    if draw(st.booleans()):
        ext = FORMATS[fmt]
    return ext, data


def _write(folder: Path, files: list[tuple[str, bytes]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (ext, data) in enumerate(files):
        paths.append(folder / f"f{i}{ext}")
        paths[-1].write_bytes(data)
    return paths


def _usable(path: Path) -> bool:
    try:
        load_image(path, None)
    except UnusableImage:
        return False  # any other exception type fails the test: that is the property too
    return True


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny exported model as finalize builds it (random base), as in test_predict.py."""
    return save_tiny_model(tmp_path_factory.mktemp("model"), CLASSES, seed=None)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples")


@SETTINGS
@given(files=st.lists(image_files(), min_size=1, max_size=4))
def test_data_check_names_every_unusable_file(
    files: list[tuple[str, bytes]], scratch: Path
) -> None:
    with tempfile.TemporaryDirectory(dir=scratch) as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        mp.chdir(root)  # a file written relative to the working folder would show in _tree
        data = root / "data"
        for split in ("train", "validation", "test"):
            for cls in CLASSES:
                (data / split / cls).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (3, 2), (10, 20, 30)).save(data / split / cls / "ok.png")
        generated = _write(data / "train" / "hat", files)
        before = _tree(root)

        code, out, err = _run(["data", "check", str(data)])

        assert _tree(root) == before
        assert err == "" and "Traceback" not in out
        images = [p for p in generated if p.suffix.lower() in IMAGE_EXTENSIONS]
        bad = [p for p in images if not _usable(p)]
        assert code == (1 if bad else 0), out
        lines = out.splitlines()
        for path in generated:  # every file: a problem, an ignored file, or counted
            named = [line for line in lines if f"train/hat/{path.name}:" in line]
            if path in bad:
                assert len(named) == 1, (path, out)
                assert named[0].split()[0] in {"unreadable", "truncated", "too-large"}
            elif path not in images:
                assert len(named) == 1 and "(ignored)" in named[0], (path, out)
            else:
                assert named == [], (path, out)
        hat = next(line for line in lines if line.split()[:1] == ["hat"])
        assert int(hat.split()[1]) == 1 + len(images) - len(bad)


@settings(SETTINGS, max_examples=12)  # each new image shape retraces the model (~1 s)
@given(files=st.lists(image_files(), min_size=1, max_size=4))
def test_predict_names_every_unusable_file(
    files: list[tuple[str, bytes]],
    model_file: Path,
    scratch: Path,
) -> None:
    with tempfile.TemporaryDirectory(dir=scratch) as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        mp.chdir(root)  # a file written relative to the working folder would show in _tree
        paths = _write(root / "in", files)
        before = _tree(root)

        code, out, err = _run(["predict", str(model_file), *map(str, paths)])

        assert _tree(root) == before
        assert "Traceback" not in out + err
        bad = [p for p in paths if not _usable(p)]
        assert code == (1 if bad else 0), err
        # this tiny model has no "not clothing" detector: predict says so once, first
        note = "clothopt: note: "
        assert sum(line.startswith(note) for line in err.splitlines()) == 1, err
        err_lines = [line for line in err.splitlines() if not line.startswith(note)]
        for path in paths:
            named = [line for line in err_lines if str(path) in line]
            in_table = [line for line in out.splitlines() if line.startswith(str(path) + " ")]
            if path in bad:
                assert len(named) == 1 and named[0].startswith("clothopt: error: "), err
                assert in_table == []
            else:
                assert named == [] and len(in_table) == 1, (path, out, err)
        if bad:
            assert err_lines[-1] == f"clothopt: {len(bad)} of {len(paths)} images failed"
            assert len(err_lines) == len(bad) + 1
        else:
            assert err_lines == []
