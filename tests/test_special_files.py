"""Things that are not regular files, given where an image (or a model, an index, a class list)
belongs: refused by name in one line, never opened, never a hang.

``open()`` on a FIFO blocks until a writer comes, and Python cannot interrupt that wait: a
test that reached it would hang, so each call runs in a thread with a deadline, and a FIFO
still waited on is then released by opening it for writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clothopt.cli import main
from clothopt.data import UnusableImage, check, load_image, open_dataset
from clothopt.data.images import open_regular_file, regular_file_problem
from clothopt.errors import DataError
from conftest import save_tiny_model

KINDS = ("fifo", "socket", "folder", "device", "broken-link", "link-loop", "link-to-fifo")
CLASSES = ["hat", "pants", "shoes"]
DEADLINE_S = 60.0


def make_special(path: Path, kind: str) -> Path:
    """Create ``path`` as a thing of ``kind`` that is no regular file."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))  # the file stays after close
        sock.close()
    elif kind == "folder":
        path.mkdir()
    elif kind == "device":
        path.symlink_to("/dev/zero")  # a character device that never ends
    elif kind == "broken-link":
        path.symlink_to(path.with_name("nowhere.png"))
    elif kind == "link-loop":
        path.symlink_to(path)
    elif kind == "link-to-fifo":
        target = path.with_name(f".{path.name}.fifo")
        os.mkfifo(target)
        path.symlink_to(target)
    else:
        raise AssertionError(kind)
    return path


def _release_fifos(folder: Path) -> None:
    for entry in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if entry.is_fifo():
                fd = os.open(entry, os.O_WRONLY | os.O_NONBLOCK)  # wakes a blocked reader
                os.close(fd)


def without_hang(folder: Path, call: Callable[[], Any]) -> Any:
    """``call()``'s result (or its exception, raised here), failing if it is still running
    after the deadline (then the FIFOs under ``folder`` are released so the thread ends)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        _release_fifos(folder)
        thread.join(10)
        pytest.fail(f"still waiting after {DEADLINE_S:.0f} s: a special file was opened")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def run_cli(folder: Path, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(argv)

    code = without_hang(folder, call)
    return code, out.getvalue(), err.getvalue()


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _digests(folder: Path) -> dict[str, str]:
    """Content hash of every regular file under ``folder`` (nothing else is opened)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if regular_file_problem(p) is None
    }


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    # hypothesis runs many examples in one test: a fresh short folder each (socket paths are
    # limited to about 100 characters)
    with tempfile.TemporaryDirectory(prefix="co-") as d:
        try:
            yield Path(d)
        finally:
            _release_fifos(Path(d))


# --------------------------------------------------------------------------- the library


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), name=st.sampled_from(["a.jpg", "b.PNG", "c.jpeg", "d"]))
def test_load_image_refuses_what_is_no_regular_file(kind: str, name: str) -> None:
    with _scratch() as d:
        path = make_special(d / name, kind)
        with pytest.raises(UnusableImage) as info:
            without_hang(d, lambda: load_image(path, None))
        assert info.value.kind in ("unreadable", "broken-link")
        assert str(path) in str(info.value) and len(str(info.value).splitlines()) == 1
        assert regular_file_problem(path) is not None
        with pytest.raises(UnusableImage):
            without_hang(d, lambda: open_regular_file(path, "index"))


def test_a_regular_file_and_a_link_to_one_open() -> None:
    with _scratch() as d:
        image = _png(d / "a.png")
        (d / "link.png").symlink_to(image)
        assert regular_file_problem(d / "link.png") is None
        assert load_image(d / "link.png", None).shape == (12, 10, 3)
        with open_regular_file(d / "link.png") as fh:
            assert fh.read() == image.read_bytes()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    # a folder with an image's name is a sub-folder of the class to flow_from_directory too
    kind=st.sampled_from([k for k in KINDS if k != "folder"]),
    split=st.sampled_from(["train", "validation", "test"]),
)
def test_a_data_set_with_a_special_file_is_refused_and_checked(kind: str, split: str) -> None:
    with _scratch() as d:
        for s in ("train", "validation", "test"):
            for i, cls in enumerate(CLASSES):
                _png(d / s / cls / "ok.png", i)
        bad = make_special(d / split / "pants" / "odd.jpg", kind)
        with pytest.raises(DataError) as info:
            without_hang(d, lambda: open_dataset(d))
        assert str(bad) in str(info.value)
        report = without_hang(d, lambda: check(d))
        assert not report.usable and any(p.path == bad for p in report.errors)


# --------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"), CLASSES)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "folder"])  # a folder: its images
def test_predict_names_each_special_file_and_predicts_the_rest(
    model_file: Path, tmp_path: Path, kind: str
) -> None:
    good = _png(tmp_path / "good.png")
    bad = make_special(tmp_path / "bad.jpg", kind)
    code, out, err = run_cli(tmp_path, ["predict", str(model_file), str(bad), str(good)])
    assert code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3, err  # the no-detector note, the file, the tally
    assert str(bad) in lines[1] and ("regular file" in lines[1] or "link" in lines[1])
    assert lines[2] == "clothopt: 1 of 2 images failed"
    assert "good.png" in out and "bad.jpg" not in out


@pytest.mark.parametrize("what", ["model", "classes"])
@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "link-loop"])
def test_a_special_model_or_class_list_is_one_line(
    model_file: Path, tmp_path: Path, what: str, kind: str
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    image = _png(tmp_path / "good.png")
    if what == "model":
        make_special(folder / "model.keras", kind)
        (folder / "classes.json").write_text(json.dumps(CLASSES))
    else:
        (folder / "model.keras").write_bytes(model_file.read_bytes())
        make_special(folder / "classes.json", kind)
    before = _digests(tmp_path)
    code, out, err = run_cli(tmp_path, ["predict", str(folder / "model.keras"), str(image)])
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("clothopt: error:"), err
    assert _digests(tmp_path) == before


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "socket"])
def test_similar_refuses_a_special_index_and_index_build_skips_special_files(
    model_file: Path, tmp_path: Path, kind: str
) -> None:
    cat = tmp_path / "cat"
    for i in range(3):
        _png(cat / f"item{i}.png", i)
    make_special(cat / "odd.jpg", kind)
    out_file = tmp_path / "i.npz"
    code, out, err = run_cli(
        tmp_path, ["index", "build", str(model_file), str(cat), "--out", str(out_file)]
    )
    assert code == 0, err
    skipped = 0 if kind == "folder" else 1  # a folder is walked (and empty here)
    assert "indexed 3 images" in out and f"{skipped} non-image files skipped" in out

    query = str(cat / "item0.png")
    code, out, err = run_cli(tmp_path, ["similar", str(out_file), str(cat / "odd.jpg")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err

    index = make_special(tmp_path / "special.npz", kind)
    html = tmp_path / "page.html"
    before = _digests(tmp_path)
    code, out, err = run_cli(tmp_path, ["similar", str(index), query, "--html", str(html)])
    assert code == 2 and out == "" and "Traceback" not in err
    line = err.strip()
    assert len(line.splitlines()) == 1 and "not a readable similar-item index" in line, err
    assert not html.exists() and _digests(tmp_path) == before


def test_evaluate_reports_a_special_file_and_scores_the_rest(
    model_file: Path, tmp_path: Path
) -> None:
    for i, cls in enumerate(CLASSES):
        _png(tmp_path / "set" / cls / "a.png", i)
    make_special(tmp_path / "set" / "hat" / "pipe.jpg", "fifo")
    code, out, err = run_cli(
        tmp_path, ["evaluate", str(model_file), str(tmp_path / "set"), "--json"]
    )
    assert code == 0 and "Traceback" not in err
    assert "pipe.jpg" in err and "FIFO" in err
    assert json.loads(out)["images"] == 3
