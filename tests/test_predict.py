"""``clothopt predict``: top-k per image, per-file errors, safe-mode loading.

The pictures are not clothing (scikit-learn's and scikit-image's sample images, installed with
them): the paper's experiment of asking a clothing classifier about an apple or a cat.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clothopt.cli import main
from clothopt.data import load_image
from clothopt.errors import UserError
from clothopt.predict import CLASSES_FILE, expand_paths, load_classifier, predict_files
from conftest import save_tiny_model

CLASSES = ["hat", "pants", "shoes", "skirt"]


def _sample_pictures() -> list[Path]:
    """Photos that ship inside installed packages (no download): a temple, a flower, a cat..."""
    import sklearn.datasets

    found = [
        Path(sklearn.datasets.__file__).parent / "images" / n for n in ("china.jpg", "flower.jpg")
    ]
    skimage = pytest.importorskip("skimage")
    folder = Path(skimage.__file__).parent / "data"
    found += [folder / n for n in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")]
    return [p for p in found if p.is_file()]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported model as finalize builds it (random base: fast), with a random head."""
    return save_tiny_model(tmp_path_factory.mktemp("model"), CLASSES, seed=0)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.jpg"
    text.write_text("this is not a JPEG")
    good = _sample_pictures()[0]
    cut = folder / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:2000])
    return {"text": text, "cut": cut, "missing": folder / "missing.png"}


def test_json_lines_give_top_k_and_per_file_errors(model_file: Path, tmp_path: Path) -> None:
    pictures = _sample_pictures()
    assert len(pictures) >= 2
    bad = _bad_files(tmp_path)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (41, 67), dtype=np.uint8)).save(gray)
    order = [pictures[0], bad["text"], *pictures[1:], bad["cut"], gray, bad["missing"]]
    code, out, _ = _run(["predict", str(model_file), *map(str, order), "--json", "--top-k", "3"])
    assert code == 1  # some failed
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in order]  # all, in order

    import keras

    model = keras.saving.load_model(model_file, safe_mode=True)
    for path, line in zip(order, lines, strict=True):
        if path in bad.values():
            assert set(line) == {"image", "error"}
            assert path.name in line["error"] and "clothopt data check" not in line["error"]
            continue
        probs = np.asarray(model.predict_on_batch(load_image(path, None)[None]))[0]
        want = np.argsort(-probs, kind="stable")[:3]
        got = line["predictions"]
        assert [g["class"] for g in got] == [CLASSES[i] for i in want]
        assert [g["probability"] for g in got] == pytest.approx(probs[want].tolist(), abs=1e-7)
        assert got[0]["probability"] >= got[1]["probability"] >= got[2]["probability"]
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    # the outputs depend on the picture: not one answer for everything
    tops = {tuple(g["class"] for g in line["predictions"]) for line in lines if "error" not in line}
    assert len(tops) > 1


def test_table_for_good_pictures_and_exit_zero(model_file: Path) -> None:
    pictures = _sample_pictures()
    code, out, err = _run(["predict", str(model_file), *map(str, pictures), "--top-k", "9"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["image", "top", "1", "top", "2", "top", "3", "top", "4"]
    assert len(lines) == 2 + len(pictures)  # top-k above the number of classes: all of them
    assert all(any(c in line for c in CLASSES) for line in lines[2:])


def test_errors_go_to_stderr_in_table_mode(model_file: Path, tmp_path: Path) -> None:
    bad = _bad_files(tmp_path)
    code, out, err = _run(
        ["predict", str(model_file), str(_sample_pictures()[0]), str(bad["text"])]
    )
    assert code == 1
    assert "notes.jpg" in err and "notes.jpg" not in out
    assert "1 of 2 images failed" in err


def test_a_folder_stands_for_its_images(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "a.PNG", "sub/c.jpeg"):
        Image.new("RGB", (5, 5)).save(tmp_path / name)
    (tmp_path / "readme.txt").write_text("not an image")
    got = expand_paths([tmp_path, tmp_path / "x.jpg"])
    assert got == [
        tmp_path / "a.PNG",
        tmp_path / "b.jpg",
        tmp_path / "sub/c.jpeg",
        tmp_path / "x.jpg",
    ]


def test_model_mistakes_are_one_line_errors(model_file: Path, tmp_path: Path) -> None:
    picture = str(_sample_pictures()[0])
    code, _, err = _run(["predict", str(tmp_path / "nope.keras"), picture])
    assert code == 2 and "model not found" in err and err.count("\n") == 1

    lonely = tmp_path / "lonely" / "model.keras"  # no classes.json beside it
    lonely.parent.mkdir()
    lonely.write_bytes(model_file.read_bytes())
    code, _, err = _run(["predict", str(lonely), picture])
    assert code == 2 and "classes.json" in err

    (lonely.parent / CLASSES_FILE).write_text(json.dumps(["a", "b"]))
    with pytest.raises(UserError, match=r"4 outputs but classes\.json names 2"):
        load_classifier(lonely)

    junk = tmp_path / "junk" / "model.keras"
    junk.parent.mkdir()
    junk.write_text("not a zip")
    (junk.parent / CLASSES_FILE).write_text(json.dumps(CLASSES))
    code, _, err = _run(["predict", str(junk), picture])
    assert code == 2 and "cannot load model" in err and err.count("\n") == 1


def test_safe_mode_refuses_a_model_with_a_lambda_layer(tmp_path: Path) -> None:
    """What safe mode is for: a model file cannot run code of its own while loading."""
    import keras

    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(keras.layers.Dense(4)(pooled))
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    (tmp_path / CLASSES_FILE).write_text(json.dumps(CLASSES))
    with pytest.raises(UserError, match="cannot load model"):
        load_classifier(tmp_path / "model.keras")


def test_predict_files_is_the_library_behind_the_command(model_file: Path, tmp_path: Path) -> None:
    model, classes = load_classifier(model_file)
    assert classes == tuple(CLASSES)
    bad = _bad_files(tmp_path)
    preds: list[Any] = list(
        predict_files(model, classes, [bad["missing"], _sample_pictures()[1]], 2)
    )
    assert preds[0].error is not None and preds[0].top == ()
    assert preds[1].error is None and len(preds[1].top) == 2
    assert preds[1].to_dict()["predictions"][0]["class"] in CLASSES
