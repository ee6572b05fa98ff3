"""check: every problem in a data set is reported with its kind; nothing raises."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from clothopt.data.check import CheckReport, check
from clothopt.data.layout import SPLITS
from clothopt.errors import UserError

COUNTS = {"train": (5, 4), "validation": (2, 3), "test": (1, 2)}  # (hat, pants)


def make_tree(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, per_class in COUNTS.items():
        for cls, n in zip(("hat", "pants"), per_class, strict=True):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                # noise compresses badly, so half of the file cuts well into the scan data
                pixels = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)
    return root


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "data")


def kinds(report: CheckReport) -> list[tuple[str, str]]:
    return [(p.path.relative_to(report.root).as_posix(), p.kind) for p in report.problems]


def test_healthy_tree(tree: Path) -> None:
    report = check(tree, threads=2)
    assert report.usable
    assert report.problems == []
    assert report.classes == ("hat", "pants")
    assert report.counts == {
        "train": {"hat": 5, "pants": 4},
        "validation": {"hat": 2, "pants": 3},
        "test": {"hat": 1, "pants": 2},
    }
    text = report.format()
    lines = text.splitlines()
    assert lines[1].split() == ["class", *SPLITS, "total"]
    assert set(lines[2]) == {"-", " "}
    assert lines[3].split() == ["hat", "5", "2", "1", "8"]
    assert lines[4].split() == ["pants", "4", "3", "2", "9"]
    assert lines[5].split() == ["total", "9", "5", "3", "17"]
    assert lines[-1] == "verdict: usable"


def test_truncated_jpeg(tree: Path) -> None:
    image = tree / "train" / "hat" / "2.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    report = check(tree)
    assert kinds(report) == [("train/hat/2.jpg", "truncated")]
    assert not report.usable
    assert report.counts["train"]["hat"] == 4
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the check must not switch it on
    text = report.format()
    assert "truncated" in text and "train/hat/2.jpg" in text
    assert text.splitlines()[-1].startswith("verdict: NOT usable: 1 problem(s) (1 truncated)")


def test_text_file_named_jpg(tree: Path) -> None:
    (tree / "validation" / "pants" / "fake.jpg").write_text("hello, I am not a JPEG\n")
    report = check(tree)
    assert kinds(report) == [("validation/pants/fake.jpg", "unreadable")]
    assert not report.usable
    assert report.counts["validation"]["pants"] == 3


def test_non_image_files_are_only_warnings(tree: Path) -> None:
    (tree / "train" / "hat" / "notes.txt").write_text("notes")
    (tree / "test" / "pants" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    report = check(tree)
    assert kinds(report) == [
        ("test/pants/.DS_Store", "not-an-image"),
        ("train/hat/notes.txt", "not-an-image"),
    ]
    assert report.usable
    assert report.counts["train"]["hat"] == 5
    verdict = report.format().splitlines()[-1]
    assert verdict.startswith("verdict: usable; 2 file(s) that flow_from_directory ignores")


def test_class_missing_from_a_split(tree: Path) -> None:
    shutil.rmtree(tree / "test" / "pants")
    report = check(tree)
    assert kinds(report) == [("test/pants", "class-mismatch")]
    assert not report.usable
    assert report.counts["test"] == {"hat": 1}
    row = next(line for line in report.format().splitlines() if line.startswith("pants"))
    assert row.split() == ["pants", "4", "3", "-", "7"]


def test_extra_class_missing_split_and_empty_class(tree: Path) -> None:
    (tree / "validation" / "socks").mkdir()
    Image.new("RGB", (4, 4)).save(tree / "validation" / "socks" / "a.png")
    shutil.rmtree(tree / "test")
    for p in (tree / "train" / "pants").iterdir():
        p.unlink()
    report = check(tree)
    assert kinds(report) == [
        ("test", "missing-split"),
        ("train/pants", "empty-class"),
        ("validation/socks", "class-mismatch"),
    ]
    assert not report.usable
    text = report.format()
    assert "socks (not in train)" in text
    assert "NOT usable: 3 problem(s)" in text


def test_everything_at_once_is_all_reported(tree: Path) -> None:
    image = tree / "test" / "hat" / "0.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    header_only = tree / "validation" / "hat" / "0.jpg"
    header_only.write_bytes(header_only.read_bytes()[:30])  # too short to identify
    (tree / "train" / "pants" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tree / "train" / "README").write_text("stray file beside the class folders")
    report = check(tree)
    got = dict(kinds(report))
    assert got["test/hat/0.jpg"] == "truncated"
    assert got["train/pants/x.png"] == "unreadable"
    assert got["train/README"] == "not-an-image"
    assert got["validation/hat/0.jpg"] == "unreadable"
    assert got["test/hat"] == "empty-class"
    assert not report.usable


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        check(tmp_path / "nowhere")
    report = check(tmp_path)  # an empty folder is a report, not an exception
    assert [p.kind for p in report.problems] == ["missing-split"] * 3
    assert not report.usable
    assert "verdict: NOT usable" in report.format()


def _tree_with_bad_images(tree: Path) -> None:
    """A broken link, a 16-bit PNG, a 144-megapixel header, a palette PNG with byte
    transparency (PIL warns on it) and a FIFO named like a JPEG."""
    import os

    from test_data_images import write_png_header

    (tree / "train" / "hat" / "gone.jpg").symlink_to(tree / "nowhere.jpg")
    values = np.random.default_rng(7).integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(values).save(tree / "train" / "pants" / "deep.png")
    write_png_header(tree / "validation" / "hat" / "huge.png", 12000, 12000)
    rgb = np.random.default_rng(8).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).quantize(colors=8).save(
        tree / "test" / "pants" / "pal.png", transparency=bytes(range(8))
    )
    os.mkfifo(tree / "test" / "hat" / "pipe.jpg")


def test_broken_link_large_image_and_fifo_are_problems_16_bit_is_usable(tree: Path) -> None:
    _tree_with_bad_images(tree)
    report = check(tree, threads=2)
    assert kinds(report) == [
        ("test/hat/pipe.jpg", "unreadable"),
        ("train/hat/gone.jpg", "broken-link"),
        ("validation/hat/huge.png", "too-large"),
    ]
    assert report.counts["train"]["pants"] == 5  # the 16-bit PNG decodes (scaled, not white)
    assert report.counts["test"]["pants"] == 3
    text = report.format()
    assert "broken symbolic link to" in text
    assert "12000x12000 = 144.0 megapixels, above clothopt's limit of 50 megapixels" in text


def test_data_check_command_prints_findings_without_tracebacks_or_pil_warnings(
    tree: Path, tmp_path: Path
) -> None:
    """The command as a user runs it (its own process: warnings reach stderr as they would)."""
    import os
    import subprocess
    import sys

    _tree_with_bad_images(tree)
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir(), home.mkdir()
    before = sorted(p.as_posix() for p in tmp_path.rglob("*"))
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(cwd), "PYTHONWARNINGS": "default"}
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.run(
        [sys.executable, "-m", "clothopt", "data", "check", str(tree)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""  # no DecompressionBombWarning, no palette warning, no traceback
    assert proc.stdout.splitlines()[-1].startswith("verdict: NOT usable: 3 problem(s)")
    for name in ("gone.jpg", "huge.png", "pipe.jpg"):
        assert sum(name in line for line in proc.stdout.splitlines()) == 1, name
    assert sorted(p.as_posix() for p in tmp_path.rglob("*")) == before  # wrote nothing
