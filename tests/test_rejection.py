"""The "not clothing" detector inside the exported model: predict, evaluate and similar use it.

Models are built as finalize builds them (random base, 32 px: fast); the detector is fitted on
the features the model's own extractor gives, so the numbers can be checked against NumPy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clothopt.cli import main
from clothopt.data import load_image, open_dataset
from clothopt.errors import DataError
from clothopt.final.evaluate import evaluate
from clothopt.final.ood import Detector
from clothopt.final.rejection import detector_outputs, fit_shipped_detector
from clothopt.metrics import auroc
from clothopt.model.backbones import get_backbone
from clothopt.predict import CLASSES_FILE, load_classifier, run_model, shipped_threshold
from conftest import make_dataset

SIZE = 32


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _features(paths: list[Path]) -> np.ndarray:
    from clothopt.model.compose import compose

    extractor = compose(get_backbone("mobilenet_025"), SIZE, "none", 0)
    from clothopt.data import load_batch

    return np.asarray(extractor.predict_on_batch(load_batch(paths, SIZE, "nearest")))


def _save(folder: Path, classes: list[str], detector: Detector | None) -> Path:
    from clothopt.model.compose import Head, compose

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    # the random base's features are tiny: a large kernel makes outputs depend on the image
    head = [rng.normal(0, 1e16, (256, len(classes))).astype("float32")]
    head.append(np.zeros(len(classes), "float32"))
    extra = None if detector is None else detector_outputs(detector)
    model = compose(
        get_backbone("mobilenet_025"),
        SIZE,
        "none",
        0,
        raw_input=True,
        head=Head(num_classes=len(classes), weights=head),
        softmax=True,
        extra_outputs=extra,
    )
    model.save(folder / "model.keras")
    (folder / CLASSES_FILE).write_text(json.dumps(classes))
    return folder / "model.keras"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A data set, a detector fitted on its train split, and models with and without it."""
    root = tmp_path_factory.mktemp("rejection")
    data = make_dataset(root / "data", counts=(8, 4, 4))
    ds = open_dataset(data)
    train = list(ds["train"].paths)
    val = list(ds["validation"].paths)
    detector = fit_shipped_detector(_features(train), _features(val))
    classes = list(ds.classes)
    everything = dataclasses.replace(detector, threshold=-1e9)  # accepts every picture
    nothing = dataclasses.replace(detector, threshold=1e9)  # rejects every picture
    return {
        "data": data,
        "classes": classes,
        "detector": detector,
        "model": _save(root / "shipped", classes, detector),
        "accept_all": _save(root / "accept_all", classes, everything),
        "reject_all": _save(root / "reject_all", classes, nothing),
        "old": _save(root / "old", classes, None),
    }


def test_the_models_detector_is_the_numpy_one(shipped: dict[str, Any]) -> None:
    model, classes = load_classifier(shipped["model"])
    det: Detector = shipped["detector"]
    assert set(model.output) == {"probabilities", "clothing_score", "accepted"}
    assert classes == tuple(shipped["classes"])
    assert shipped_threshold(model) == det.threshold  # a float32, held as is
    paths = sorted((shipped["data"] / "test").rglob("*.jpg"))
    want = det.score(_features(paths))
    got = [run_model(model, load_image(p, None)) for p in paths]
    np.testing.assert_allclose([g.score for g in got], want, rtol=1e-5)
    threshold = shipped_threshold(model)
    assert [g.accepted for g in got] == [g.score >= threshold for g in got]
    # validation was calibrated to 95%: at least 95% of it passes inside the model too
    val = sorted((shipped["data"] / "validation").rglob("*.jpg"))
    assert np.mean([run_model(model, load_image(p, None)).accepted for p in val]) >= 0.95


def test_predict_prints_not_clothing_for_a_rejected_picture(shipped: dict[str, Any]) -> None:
    picture = sorted((shipped["data"] / "test").rglob("*.jpg"))[0]
    code, out, err = _run(["predict", str(shipped["reject_all"]), str(picture)])
    assert code == 0, err
    assert "not clothing (score " in out and " < threshold 1000000000.0000)" in out
    assert not any(c in out.replace(str(picture), "") for c in shipped["classes"])
    code, out, _ = _run(["predict", str(shipped["reject_all"]), str(picture), "--json"])
    line = json.loads(out)
    assert line["accepted"] is False and line["threshold"] == 1e9
    assert line["score"] < 1e9 and len(line["predictions"]) == 3  # both: verdict and classes
    code, out, err = _run(["predict", str(shipped["accept_all"]), str(picture), "--json"])
    line = json.loads(out)
    assert code == 0 and line["accepted"] is True and "note" not in err
    code, out, _ = _run(["predict", str(shipped["accept_all"]), str(picture)])
    assert "not clothing" not in out
    assert any(c in out.replace(str(picture), "") for c in shipped["classes"])


def test_an_old_single_output_model_still_predicts_with_a_one_line_note(
    shipped: dict[str, Any],
) -> None:
    picture = sorted((shipped["data"] / "test").rglob("*.jpg"))[0]
    code, out, err = _run(["predict", str(shipped["old"]), str(picture)])
    assert code == 0
    assert err.count("\n") == 1 and 'no "not clothing" detector' in err and "finalize" in err
    assert "not clothing" not in out
    assert any(c in out.replace(str(picture), "") for c in shipped["classes"])
    code, out, _ = _run(["predict", str(shipped["old"]), str(picture), "--json"])
    line = json.loads(out)
    assert "accepted" not in line and len(line["predictions"]) == 3


def test_evaluate_gives_finalizes_figures_in_json_and_text(
    shipped: dict[str, Any], tmp_path: Path
) -> None:
    from clothopt.final.scoring import labelled_report

    test_dir = shipped["data"] / "test"
    code, out, err = _run(["evaluate", str(shipped["model"]), str(test_dir), "--json"])
    assert code == 0, err
    report = json.loads(out)
    y, p = np.array(report["labels"]), np.array(report["predictions"])
    assert (
        report["images"] == 12
        and y.tolist() == open_dataset(shipped["data"])["test"].labels.tolist()
    )
    figures = labelled_report(y, p, shipped["classes"], resamples=2000, seed=0)
    assert {k: report[k] for k in figures} == json.loads(json.dumps(figures))
    model, _ = load_classifier(shipped["model"])
    paths = sorted(test_dir.rglob("*.jpg"))
    preds = [int(np.argmax(run_model(model, load_image(q, None)).probabilities)) for q in paths]
    assert preds == p.tolist()
    assert 0.0 <= report["rejected_share"] <= 1.0
    code, out, _ = _run(
        ["evaluate", str(shipped["reject_all"]), str(test_dir), "--out", str(tmp_path / "ev")]
    )
    assert code == 0 and "95% bootstrap CI" in out and "confusion matrix" in out
    assert 'rejected as "not clothing": 100.0%' in out
    written = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert written["rejected_share"] == 1.0
    assert (tmp_path / "ev" / "confusion_matrix.html").is_file()
    assert not list((tmp_path / "ev").glob(".evaluate-*"))


def _linked_test_split(shipped: dict[str, Any], folder: Path) -> Path:
    """``folder/<class>/`` linking the test split's images of every class."""
    for cls in shipped["classes"]:
        (folder / cls).mkdir(parents=True)
        for p in sorted((shipped["data"] / "test" / cls).iterdir()):
            (folder / cls / p.name).symlink_to(p)
    return folder


def _with_unknown(shipped: dict[str, Any], tmp_path: Path) -> Path:
    folder = _linked_test_split(shipped, tmp_path / "labelled")
    (folder / "cars").mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):  # stripes: nothing like the one-colour classes
        img = np.zeros((40, 50, 3), np.uint8)
        img[:, :: 2 + i] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(folder / "cars" / f"car{i}.png")
    return folder


def test_an_unknown_class_folder_is_an_error_or_should_be_rejected(
    shipped: dict[str, Any], tmp_path: Path
) -> None:
    folder = _with_unknown(shipped, tmp_path)
    code, out, err = _run(["evaluate", str(shipped["model"]), str(folder)])
    assert code == 2 and err.count("\n") == 1 and "cars is not a class of the model" in err
    code, out, err = _run(
        ["evaluate", str(shipped["model"]), str(folder), "--unknown-as-reject", "--json"]
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 12 and report["unknown"]["images"] == 4
    model, _ = load_classifier(shipped["model"])

    def scores(paths: list[Path]) -> list[float]:
        return [run_model(model, load_image(p, None)).score for p in paths]

    known = scores(sorted(p for c in shipped["classes"] for p in (folder / c).iterdir()))
    cars = scores(sorted((folder / "cars").iterdir()))
    assert report["unknown"]["auroc"] == pytest.approx(auroc(np.array(known), np.array(cars)))
    thr = shipped_threshold(model)
    assert report["unknown"]["accepted_share"] == np.mean([s >= thr for s in cars])
    code, out, _ = _run(["evaluate", str(shipped["model"]), str(folder), "--unknown-as-reject"])
    assert code == 0 and "should be rejected (cars): 4 images" in out and "AUROC" in out
    code, _, err = _run(["evaluate", str(shipped["old"]), str(folder), "--unknown-as-reject"])
    assert code == 2 and err.count("\n") == 1 and 'no "not clothing" detector' in err


def test_evaluate_input_mistakes_are_one_line_errors(
    shipped: dict[str, Any], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    for cls in shipped["classes"]:
        (empty / cls).mkdir(parents=True)
        (empty / cls / "broken.jpg").write_text("not a JPEG")
    code, _, err = _run(["evaluate", str(shipped["model"]), str(empty)])
    *warnings, line = err.splitlines()  # each unreadable picture is named first
    assert code == 2 and len(warnings) == 3 and "no usable images of the model" in line
    (tmp_path / "none").mkdir()
    code, _, err = _run(["evaluate", str(shipped["model"]), str(tmp_path / "none")])
    assert code == 2 and err.count("\n") == 1 and "no class folders" in err
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "model.keras").write_bytes(shipped["model"].read_bytes())
    code, _, err = _run(["evaluate", str(lonely / "model.keras"), str(shipped["data"] / "test")])
    assert code == 2 and err.count("\n") == 1 and "no classes.json beside the model" in err
    # a note and a broken picture among the images: reported, the rest still scored
    mixed = _linked_test_split(shipped, tmp_path / "mixed")
    cls = shipped["classes"][0]
    (mixed / cls / "notes.txt").write_text("not a picture")
    (mixed / cls / "broken.jpg").write_text("not a JPEG either")
    report = evaluate(shipped["model"], mixed, log=lambda line: None)
    assert report["images"] == 12 and report["skipped_files"] == 1
    assert len(report["unreadable"]) == 1 and "broken.jpg" in report["unreadable"][0]
    code, out, err = _run(["evaluate", str(shipped["model"]), str(mixed)])
    assert code == 0 and "broken.jpg" in err and "1 files that are not images" in err
    assert "left out: 1 files that are not images, 1 unreadable images" in out


def test_similar_says_a_rejected_query_is_not_clothing(
    shipped: dict[str, Any], tmp_path: Path
) -> None:
    catalogue = shipped["data"] / "train"
    index = tmp_path / "similar.npz"
    model = str(shipped["reject_all"])
    code, _, err = _run(["index", "build", model, str(catalogue), "--out", str(index)])
    assert code == 0, err
    query = sorted((shipped["data"] / "test").rglob("*.jpg"))[0]
    code, out, err = _run(["similar", str(index), str(query)])
    assert code == 0, err
    assert "not clothing (score " in out and ".jpg 0." not in out  # no neighbours listed
    code, out, _ = _run(["similar", str(index), str(query), "--json"])
    line = json.loads(out)
    assert line["rejected"] is True and line["similar"] == [] and line["threshold"] == 1e9
    index2 = tmp_path / "all.npz"
    model = str(shipped["accept_all"])
    assert _run(["index", "build", model, str(catalogue), "--out", str(index2)])[0] == 0
    code, out, _ = _run(["similar", str(index2), str(query), "--json", "-k", "2"])
    line = json.loads(out)
    assert "rejected" not in line and len(line["similar"]) == 2


def test_a_class_of_the_model_missing_from_the_folder_is_refused(
    shipped: dict[str, Any], tmp_path: Path
) -> None:
    """Each class of the model needs images: absent (no folder, an empty one, only unreadable
    files) it would count as F1 0 in the macro-F1, so evaluate refuses in one line and writes
    nothing."""
    import shutil

    classes = shipped["classes"]
    for case, gone in enumerate((classes[1:2], classes[:2])):
        for how in ("no folder", "empty", "unreadable"):
            folder = _linked_test_split(shipped, tmp_path / f"{how}-{case}")
            for cls in gone:
                shutil.rmtree(folder / cls)
                if how != "no folder":
                    (folder / cls).mkdir()
                if how == "unreadable":
                    (folder / cls / "broken.jpg").write_text("not a JPEG")
            out = tmp_path / f"ev-{how}-{case}"
            argv = ["evaluate", str(shipped["model"]), str(folder), "--out", str(out)]
            code, stdout, err = _run(argv)
            *warnings, line = err.splitlines()  # an unreadable picture is named first
            assert code == 2 and stdout == "" and line.startswith("clothopt: error: "), err
            assert len(warnings) == (len(gone) if how == "unreadable" else 0), err
            assert f"of the model's class(es) {', '.join(gone)}:" in line, err
            assert ("no usable images" in line) == (how == "unreadable"), err
            assert not out.exists()
            with pytest.raises(DataError, match="would count each missing class as F1 0"):
                evaluate(shipped["model"], folder, log=lambda line: None)
    # every class present: the same folder scores
    report = evaluate(shipped["model"], _linked_test_split(shipped, tmp_path / "all"))
    assert sorted(set(report["labels"])) == list(range(len(classes)))
