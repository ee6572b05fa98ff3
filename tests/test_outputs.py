"""Issue #18 A, C, D: what a command may write (clothopt.outputs), output folders written as one
unit, and every refused write in one line with the previous results intact."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as hs
from PIL import Image

from clothopt import outputs
from clothopt._io import atomic_write_text, write_failed
from clothopt.errors import OutputConflict, WriteFailed
from conftest import one_error_line, run_cli, save_tiny_model

CLASSES = ["hat", "pants", "shoes"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _sums(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (links not followed), by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (24, 20, 3)).astype(np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- the checks


def _index_file(path: Path) -> Path:
    from clothopt.similar import INDEX_FORMAT

    np.savez(path, meta=np.array(json.dumps({"format": INDEX_FORMAT})), paths=np.array(["a"]))
    return path


def test_an_output_file_is_never_an_input_nor_a_file_of_another_kind(tmp_path: Path) -> None:
    photo = _image(tmp_path / "photo1.jpg")
    (tmp_path / "link.html").symlink_to(photo)
    os.link(photo, tmp_path / "hard.html")
    before = _sums(tmp_path)
    kind = outputs.SIMILAR_PAGE
    for path, word in [
        (photo, "reads"),  # the input itself
        (tmp_path / "link.html", "reads"),  # the same file through a link
        (tmp_path / "hard.html", "reads"),  # and through a hard link
        (tmp_path / ".." / tmp_path.name / "photo1.jpg", "reads"),
    ]:
        with pytest.raises(OutputConflict, match=word):
            outputs.check_output_file(path, kind, [photo], "--html")
    other = _image(tmp_path / "photo2.jpg", 1)
    before = _sums(tmp_path)
    with pytest.raises(OutputConflict, match="not a similar-items page"):
        outputs.check_output_file(other, kind, [photo], "--html")
    with pytest.raises(OutputConflict, match="another kind"):
        outputs.check_output_file(tmp_path / "new.jpg", kind, [photo], "--html")
    (tmp_path / "sub").mkdir()
    with pytest.raises(OutputConflict, match="is a folder"):
        outputs.check_output_file(tmp_path / "sub", kind, [photo], "--html")
    with pytest.raises(OutputConflict, match="special file"):
        outputs.check_output_file("/dev/null", kind, [photo], "--html")
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    with pytest.raises(OutputConflict, match="special file"):
        outputs.check_output_file(fifo, kind, [photo], "--html")
    assert _sums(tmp_path) == before
    # a new name, and a page of its own kind, are fine
    assert (
        outputs.check_output_file(tmp_path / "page.html", kind, [photo]) == tmp_path / "page.html"
    )
    from clothopt.similar_html import write_html

    write_html(tmp_path / "page.html", [str(photo)], [[]])
    outputs.check_output_file(tmp_path / "page.html", kind, [photo])
    # an index is recognised by its format, whatever its name
    idx = _index_file(tmp_path / "mine.npz")
    outputs.check_output_file(idx, outputs.INDEX, [photo])
    with pytest.raises(OutputConflict, match="not a similar-item index"):
        outputs.check_output_file(tmp_path / "page.html", outputs.INDEX, [photo])


def test_an_output_folder_replaces_only_its_own_kind(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _image(data / "hat" / "a.png")
    final = tmp_path / "runs" / "s" / "final"
    final.mkdir(parents=True)
    (final / "model.keras").write_bytes(b"model")
    (final / "report.json").write_text(json.dumps({"trial": 0}))
    kind = outputs.EVALUATION
    cases = [
        (data, "reads"),  # the labelled folder itself
        (data / "hat", "reads"),  # inside it: a new class folder
        (tmp_path, "reads"),  # holding it: replacing it would take the data along
        (final, "not an evaluation"),  # finalize's folder
        (data / "hat" / "a.png", "reads"),
    ]
    before = _sums(tmp_path)
    for path, word in cases:
        with pytest.raises(OutputConflict, match=word):
            outputs.check_output_dir(path, kind, [data])
    with pytest.raises(OutputConflict, match="inside"):
        outputs.check_output_dir(final / "model.keras", kind, [data])
    (tmp_path / "notes.txt").write_text("mine")
    before = _sums(tmp_path)
    with pytest.raises(OutputConflict, match="file, not a folder"):
        outputs.check_output_dir(tmp_path / "notes.txt", kind, [data])
    assert _sums(tmp_path) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    outputs.check_output_dir(empty, kind, [data])
    outputs.check_output_dir(tmp_path / "new" / "deeper", kind, [data])
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "report.json").write_text(json.dumps({"model": "m", "dir": "d", "images": 3}))
    (earlier / "confusion_matrix.html").write_text("<html>")
    outputs.check_output_dir(earlier, kind, [data])
    # an evaluation is not finalize's to replace either
    from clothopt.final.store import check_replaceable

    with pytest.raises(OutputConflict, match="not written by clothopt study finalize"):
        check_replaceable(earlier)
    check_replaceable(final)


def test_a_folder_that_cannot_be_written_is_found_before_the_work(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(WriteFailed, match="afile is not a folder"):
        outputs.check_writable(afile / "sub")
    with pytest.raises(WriteFailed):
        outputs.check_output_dir(afile / "out", outputs.EVALUATION, [])
    outputs.check_writable(tmp_path / "not" / "yet")  # made when written


# --------------------------------------------------------------------------- generated paths


def _setup_world(root: Path) -> dict[str, Path]:
    world = {
        "index": _index_file(root / "in" / "similar.npz")
        if (root / "in").mkdir() is None
        else root,
        "model": root / "in" / "model.keras",
        "photo": _image(root / "in" / "photo.jpg"),
        "other_image": _image(root / "other.png", 2),
        "afile": root / "notes.txt",
    }
    world["model"].write_bytes(b"PK model")
    world["afile"].write_text("mine")
    (root / "link_to_photo.html").symlink_to(world["photo"])
    (root / "dir").mkdir()
    (root / "dir" / "keep.txt").write_text("keep")
    os.mkfifo(root / "fifo.html")
    return world


_REFUSED = [
    "index",
    "model",
    "photo",
    "other_image",
    "afile",
    "link_to_photo.html",
    "dir",
    "fifo.html",
    "/dev/null",
    "notes.txt/under.html",
]
_REFUSED_FILE_NAMES = ["new.jpg", "new.keras", "new.png"]  # a new file named for another kind


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    choice=hs.sampled_from(_REFUSED + _REFUSED_FILE_NAMES),
    kind=hs.sampled_from(["SIMILAR_PAGE", "INDEX", "EVALUATION", "COMPARE_BACKBONES"]),
)
def test_generated_output_paths_are_refused_and_change_nothing(
    tmp_path_factory: pytest.TempPathFactory, choice: str, kind: str
) -> None:
    root = tmp_path_factory.mktemp("w")
    world = _setup_world(root)
    inputs = [world["index"], world["model"], world["photo"]]
    path = world.get(choice) or (Path(choice) if choice.startswith("/") else root / choice)
    before = _sums(root)
    folder = kind in ("EVALUATION", "COMPARE_BACKBONES")
    check = outputs.check_output_dir if folder else outputs.check_output_file
    if folder and choice in _REFUSED_FILE_NAMES:
        assert check(path, getattr(outputs, kind), inputs) == path  # a folder may take any name
        return
    with pytest.raises((OutputConflict, WriteFailed)) as info:
        check(path, getattr(outputs, kind), inputs)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert _sums(root) == before


# --------------------------------------------------------------------------- one unit


def test_a_staged_folder_is_the_old_set_or_the_new_one(tmp_path: Path) -> None:
    dest = tmp_path / "ev"
    dest.mkdir()
    (dest / "report.json").write_text("old")
    (dest / "confusion_matrix.html").write_text("old")
    before = _sums(dest)
    with pytest.raises(KeyboardInterrupt), outputs.staged_dir(dest) as tmp:
        (tmp / "report.json").write_text("new")
        raise KeyboardInterrupt  # between the two files
    assert _sums(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]  # no staging left
    with outputs.staged_dir(dest) as tmp:
        (tmp / "report.json").write_text("new")
    assert {p.name: p.read_text() for p in dest.iterdir()} == {"report.json": "new"}
    assert oct(dest.stat().st_mode & 0o777) == oct(0o755)


def test_a_signal_during_the_swap_waits_until_the_new_set_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clothopt.engine.interrupts import interrupts_raise

    dest = tmp_path / "ev"
    dest.mkdir()
    (dest / "report.json").write_text("old")
    real_replace = os.replace

    def replace_then_signal(src: object, dst: object) -> None:
        real_replace(src, dst)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGTERM)  # between the two renames

    from clothopt.errors import Terminated

    with interrupts_raise(), pytest.raises(Terminated), outputs.staged_dir(dest) as tmp:
        (tmp / "report.json").write_text("new")
        monkeypatch.setattr(os, "replace", replace_then_signal)
    monkeypatch.undo()
    assert (dest / "report.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]


def test_a_kill_between_the_renames_brings_the_old_set_back(tmp_path: Path) -> None:
    dest = tmp_path / "ev"
    aside = tmp_path / ".ev.old-999999999-abc"  # moved aside by a process that is gone
    aside.mkdir()
    (aside / "report.json").write_text("old")
    (tmp_path / ".ev.stage-999999999-x").mkdir()
    with outputs.staged_dir(dest) as tmp:
        assert (dest / "report.json").read_text() == "old"  # recovered before the work
        (tmp / "report.json").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]


# --------------------------------------------------------------------------- refused writes


def test_refused_writes_become_one_line_naming_the_path() -> None:
    for code in (errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT):
        failed = write_failed(OSError(code, os.strerror(code), "/x/report.json"))
        assert isinstance(failed, WriteFailed)
        assert str(failed) == f"cannot write /x/report.json: {os.strerror(code)}"
    for code in (errno.EACCES, errno.ENOTDIR):  # a reader meets these too: no verb unless known
        failed = write_failed(OSError(code, os.strerror(code), "/x/report.json"))
        assert str(failed) == f"/x/report.json: {os.strerror(code)}"
        failed = write_failed(OSError(code, os.strerror(code), "/x/.tmp"), "/x/report.json")
        assert str(failed) == f"cannot write /x/report.json: {os.strerror(code)}"
    assert write_failed(OSError(errno.ENOENT, "No such file", "/x")) is None  # a reader's
    assert write_failed(ValueError("x")) is None


def test_a_full_disk_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "page.html"
    dest.write_text("old")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteFailed, match=f"cannot write {dest}: No space left on device"):
        atomic_write_text(dest, "new")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_file_size_limit_is_one_line_and_keeps_the_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "big.json"
    dest.write_text("old")
    code = (
        "import sys\nfrom clothopt._io import atomic_write_text\n"
        "from clothopt.errors import WriteFailed\n"
        "try:\n    atomic_write_text(sys.argv[1], 'x' * 100000)\n"
        "except WriteFailed as exc:\n    print(exc)\n    sys.exit(2)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(dest)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        preexec_fn=_limit_file_size,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip() == f"cannot write {dest}: File too large"
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["big.json"]


def test_a_write_the_cli_did_not_foresee_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clothopt.cli.data import DataCheck

    def fails(self: object, args: object) -> int:
        raise OSError(errno.EFBIG, "File too large", str(tmp_path / "f"))

    monkeypatch.setattr(DataCheck, "run", fails)
    code, out, err = run_cli(["data", "check", str(tmp_path)])
    assert code == 2 and out == ""
    one_error_line(err, f"cannot write {tmp_path / 'f'}: File too large")


# --------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cmds")
    model = save_tiny_model(root / "final", CLASSES)
    (root / "final" / "report.json").write_text(json.dumps({"trial": 0}))
    data = root / "data"
    for i, cls in enumerate(CLASSES):
        for j in range(2):
            _image(data / cls / f"{j}.png", 3 * i + j)
    index = root / "similar.npz"
    code, _, err = run_cli(["index", "build", str(model), str(data), "--out", str(index)])
    assert code == 0, err
    return {"root": root, "model": model, "data": data, "index": index}


def _refused(argv: list[str], root: Path, *words: str) -> None:
    before = _sums(root)
    code, _, err = run_cli(argv)
    assert code == 2, err
    one_error_line(err, "clothopt: error:", *words)
    assert _sums(root) == before


def test_similar_html_never_writes_over_an_input_or_an_image(world: dict[str, Path]) -> None:
    root, index = world["root"], world["index"]
    photo1, photo2 = sorted((world["data"] / "hat").iterdir())
    # --html read as a switch: the page would go over the first photo
    _refused(["similar", str(index), "--html", str(photo1), str(photo2)], root, str(photo1))
    _refused(["similar", str(index), str(photo1), "--html", str(index)], root, "reads")
    _refused(["similar", str(index), str(photo1), "--html", str(world["model"])], root, "reads")


def test_index_build_never_writes_over_the_model_or_a_catalogue_image(
    world: dict[str, Path],
) -> None:
    root, model, data = world["root"], world["model"], world["data"]
    _refused(["index", "build", str(model), str(data), "--out", str(model)], root, "reads")
    image = next((data / "hat").iterdir())
    _refused(["index", "build", str(model), str(data), "--out", str(image)], root, "reads")
    _refused(["index", "build", str(model), str(data), "--out", str(root / "data")], root)
    page = root / "notes.txt"
    page.write_text("mine")
    _refused(["index", "build", str(model), str(data), "--out", str(page)], root, "not a")
    page.unlink()


def test_evaluate_never_replaces_a_final_folder_nor_its_data(world: dict[str, Path]) -> None:
    root, model, data = world["root"], world["model"], world["data"]
    for out in (model.parent, data, data / "hat", root):
        _refused(["evaluate", str(model), str(data), "--out", str(out)], root, str(out))


def test_evaluate_out_is_one_unit_and_a_failed_write_keeps_the_earlier_one(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clothopt.final import scoring

    model, data, out = world["model"], world["data"], tmp_path / "ev"
    argv = ["evaluate", str(model), str(data), "--out", str(out), "--resamples", "1000"]
    code, _, err = run_cli(argv)
    assert code == 0, err
    before = _sums(tmp_path)
    assert "ev/report.json" in before and "ev/confusion_matrix.html" in before

    def full(*args: object, **kwargs: object) -> list[str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(scoring, "confusion_figure", full)  # after report.json is staged
    code, _, err = run_cli(argv)
    assert code == 2
    one_error_line(err, f"cannot write {out}: No space left on device")
    assert _sums(tmp_path) == before

    def interrupted(*args: object, **kwargs: object) -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(scoring, "confusion_figure", interrupted)
    code, _, err = run_cli(argv)
    assert code == 130
    one_error_line(err, "clothopt: interrupted; nothing was changed")
    assert _sums(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]


def test_only_commands_that_run_trials_speak_of_a_trial(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from clothopt.cli.model import Similar

    def stop(self: object, args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(Similar, "run", stop)
    code, _, err = run_cli(["similar", str(world["index"]), "x.jpg"])
    assert code == 130
    assert one_error_line(err) == "clothopt: interrupted; nothing was changed"


# --------------------------------------------------------------------------- trials, finalize


def test_a_refused_write_in_a_trial_puts_it_back_uncounted(tiny_data: Path, storage: str) -> None:
    import optuna
    from optuna.trial import TrialState

    from clothopt import study as study_mod

    space = tiny_data.parent / "one.toml"
    space.write_text("[params]\nimage_size = [32]\nbatch_size = [8]\nlearning_rate = [0.01, 0.1]\n")
    study, config = study_mod.create(
        backbone="mobilenet_025",
        space=str(space),
        data=str(tiny_data),
        storage=storage,
        weights="none",
        name="s",
        max_retries=0,
    )

    def disk_full(trial: optuna.Trial) -> float:
        trial.suggest_categorical("learning_rate", [0.01, 0.1])
        raise OSError(errno.ENOSPC, "No space left on device", "/cache/features.npy")

    with pytest.raises(WriteFailed, match=r"cannot write /cache/features\.npy: No space left"):
        study_mod.optimize(study, config, disk_full, progress=False)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 2  # the other point, and the stopped one again
    (again,) = [t for t in waiting if "retry_of" in t.user_attrs]
    assert again.user_attrs["retries"] == 0  # not counted as a dead worker's retry
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.COMPLETE))


def _final_report(folder: Path, trial: int, created: str) -> dict[str, object]:
    report = {"trial": trial, "created": created, "test": {"f1_macro": 0.5 + trial / 10}}
    report["f1_macro_ci95"] = [0.4, 0.6]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "model.keras").write_bytes(f"model {trial}".encode())
    return report


def test_the_study_record_follows_final_whatever_moment_the_signal_came(tmp_path: Path) -> None:
    import optuna

    from clothopt.final.store import FINAL_ATTR, reconcile, set_final_attr

    st = optuna.create_study()
    dest = tmp_path / "runs" / "s" / "final"
    old = _final_report(dest, 0, "2026-01-01T00:00:00Z")
    set_final_attr(st, dest, old, 0.5, [0.4, 0.6])
    new = _final_report(tmp_path / "new", 1, "2026-02-01T00:00:00Z")
    os.replace(dest, dest.parent / ".final-old-999999999-a")  # killed between the two renames
    assert reconcile(st, dest)["trial"] == 0  # the previous result comes back, still recorded
    assert st.user_attrs[FINAL_ATTR]["trial"] == 0
    # a finalize stopped after the swap, before the record: final/ holds trial 1
    import shutil

    shutil.rmtree(dest)
    os.replace(tmp_path / "new", dest)
    assert reconcile(st, dest) == new
    attr = st.user_attrs[FINAL_ATTR]
    assert (attr["trial"], attr["created"], attr["dir"]) == (1, "2026-02-01T00:00:00Z", str(dest))
    assert attr["test_f1_macro"] == 0.6


@pytest.mark.parametrize("swapped", [False, True])
def test_an_interrupted_finalize_says_what_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swapped: bool
) -> None:
    import optuna

    from clothopt.cli import study as cli_study
    from clothopt.final.store import FINAL_ATTR, set_final_attr

    st = optuna.create_study()
    dest = tmp_path / "final"
    old = _final_report(dest, 0, "2026-01-01T00:00:00Z")
    set_final_attr(st, dest, old, 0.5, [0.4, 0.6])
    monkeypatch.setattr(cli_study, "_load_study", lambda name, storage: st)
    monkeypatch.setattr("clothopt.final.store.final_dir", lambda storage, name: dest)

    def finalize(args: object, study: object) -> dict[str, object]:
        if swapped:  # the swap done, the signal before the record
            import shutil

            shutil.rmtree(dest)
            _final_report(dest, 1, "2026-02-01T00:00:00Z")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_study.StudyFinalize, "_finalize", staticmethod(finalize))
    code, _, err = run_cli(["study", "finalize", "s", "--paper", "none"])
    assert code == 130
    line = one_error_line(err)
    trial = 1 if swapped else 0
    assert st.user_attrs[FINAL_ATTR]["trial"] == trial
    assert json.loads((dest / "report.json").read_text())["trial"] == trial
    if swapped:
        assert (
            line == "clothopt: interrupted; the new final model (trial 1) is in place and recorded"
        )
    else:
        assert line == "clothopt: interrupted; the previous final model (trial 0) was kept"


def test_finalize_refuses_an_unwritable_study_folder_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from clothopt.cli import study as cli_study

    blocker = tmp_path / "runs"
    blocker.write_text("a file where the study folders go")
    monkeypatch.setattr(cli_study, "_load_study", lambda name, storage: optuna.create_study())
    monkeypatch.setattr(
        "clothopt.final.store.final_dir", lambda storage, name: blocker / "s" / "final"
    )

    def never(args: object) -> dict[str, object]:
        raise AssertionError("trained although the result could not be written")

    monkeypatch.setattr(cli_study.StudyFinalize, "_finalize", staticmethod(never))
    code, _, err = run_cli(["study", "finalize", "s", "--paper", "none"])
    assert code == 2
    one_error_line(err, "cannot write", "is not a folder")
    assert blocker.read_text() == "a file where the study folders go"


def _one_point_study(tiny_data: Path, tmp_path: Path) -> str:
    from conftest import create_args

    space = tmp_path / "one.toml"
    space.write_text("[params]\nimage_size = [32]\nbatch_size = [8]\nlearning_rate = [0.01]\n")
    storage = f"sqlite:///{tmp_path / 'st' / 'c.db'}"
    assert run_cli(create_args(space, tiny_data, "s", storage))[0] == 0
    return storage


def test_optimize_with_a_feature_folder_it_cannot_write_stops_before_a_trial(
    tiny_data: Path, tmp_path: Path
) -> None:
    from optuna.trial import TrialState

    from clothopt import study as study_mod

    storage = _one_point_study(tiny_data, tmp_path)
    (tmp_path / "st" / "features").write_text("a file where the feature cache goes")
    code, _, err = run_cli(["study", "optimize", "s", "--storage", storage])
    assert code == 2
    one_error_line(err, f"cannot write {tmp_path / 'st' / 'features'}", "is not a folder")
    study, _ = study_mod.load("s", storage)
    assert [t.state for t in study.trials] == [TrialState.WAITING]  # no trial taken


def test_a_disk_that_fills_under_a_trial_is_one_line_and_the_trial_goes_back_uncounted(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optuna.trial import TrialState

    from clothopt import study as study_mod

    storage = _one_point_study(tiny_data, tmp_path)

    def full(fd: int) -> None:  # the feature cache's flush, after the extraction
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = run_cli(["study", "optimize", "s", "--storage", storage, "--quiet"])
    monkeypatch.undo()
    assert code == 2
    line = one_error_line(err, "cannot write", "No space left on device")
    assert str(tmp_path / "st" / "features") in line
    study, _ = study_mod.load("s", storage)
    (stopped,) = study.get_trials(states=(TrialState.FAIL,))
    assert stopped.user_attrs["fail_reason"] == f"stopped: {line.removeprefix('clothopt: error: ')}"
    (again,) = study.get_trials(states=(TrialState.WAITING,))
    assert again.user_attrs["retries"] == 0 and again.user_attrs["retry_of"] == stopped.number
    assert not list((tmp_path / "st" / "features").rglob("*.npz"))  # no half-written cache


def test_a_database_locked_under_a_trial_is_one_line_and_the_trial_goes_back(
    tiny_data: Path, storage: str
) -> None:
    import sqlite3

    import optuna
    from optuna.trial import TrialState
    from sqlalchemy import event

    from clothopt import study as study_mod
    from clothopt.engine.storage import rdb_of, storage_errors, storage_of
    from clothopt.errors import StorageUnavailable

    space = tiny_data.parent / "one.toml"
    space.write_text("[params]\nimage_size = [32]\nbatch_size = [8]\nlearning_rate = [0.01]\n")
    study, config = study_mod.create(
        backbone="mobilenet_025",
        space=str(space),
        data=str(tiny_data),
        storage=storage,
        weights="none",
        name="s",
    )
    locked = {"writes": 0}

    def another_program_holds_the_lock(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if threading.current_thread() is not threading.main_thread():
            return  # the heartbeat's own writes (every second here) must not take the failure
        if locked["writes"] and statement.lstrip().upper().startswith(("UPDATE", "INSERT")):
            locked["writes"] -= 1
            raise sqlite3.OperationalError("database is locked")

    engine = rdb_of(storage_of(study)).engine
    event.listen(engine, "before_cursor_execute", another_program_holds_the_lock)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("learning_rate", [0.01])
        locked["writes"] = 1  # the next write fails; the lock is gone after it
        return 0.5

    locked_message = "lost the storage: database is locked"
    with pytest.raises(StorageUnavailable, match=locked_message), storage_errors("s"):
        study_mod.optimize(study, config, objective, progress=False)
    event.remove(engine, "before_cursor_execute", another_program_holds_the_lock)
    (again,) = study.get_trials(states=(TrialState.WAITING,))
    assert again.user_attrs["retries"] == 0  # back in the queue, not counted as a dead worker
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.COMPLETE))


# --------------------------------------------------------------------------- generated, per command

_KINDS_OF_PATH = hs.sampled_from(
    [
        "index",  # each of the command's inputs
        "model",
        "classes",
        "query",
        "catalogue_image",
        "link_to_query",  # a link to an input
        "final",  # a folder of another command
        "image_elsewhere",  # an existing file of another kind
        "text_elsewhere",
        "fifo",  # special files
        "/dev/null",
        "under_a_file",  # a folder that cannot be written
    ]
)


def _generated(world: dict[str, Path], tmp: Path, what: str) -> Path:
    data, model = world["data"], world["model"]
    paths = {
        "index": world["index"],
        "model": model,
        "classes": model.with_name("classes.json"),
        "query": sorted((data / "hat").iterdir())[0],
        "catalogue_image": sorted((data / "shoes").iterdir())[-1],
        "final": model.parent,
        "/dev/null": Path("/dev/null"),
    }
    if what in paths:
        return paths[what]
    if what == "link_to_query":
        link = tmp / "link.html"
        link.symlink_to(paths["query"])
        return link
    if what == "image_elsewhere":
        return _image(tmp / "holiday.jpg", 9)
    if what == "text_elsewhere":
        (tmp / "notes.html").write_text("my own notes")
        return tmp / "notes.html"
    if what == "fifo":
        os.mkfifo(tmp / "pipe.npz")
        return tmp / "pipe.npz"
    (tmp / "afile").write_text("x")
    return tmp / "afile" / "out.html"


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(what=_KINDS_OF_PATH, command=hs.sampled_from(["similar", "index", "evaluate", "compare"]))
def test_generated_output_paths_are_refused_by_every_command(
    world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, what: str, command: str
) -> None:
    assume(not (command == "index" and what == "index"))  # an index replaces an index
    tmp = tmp_path_factory.mktemp("gen")
    out = _generated(world, tmp, what)
    query = sorted((world["data"] / "hat").iterdir())[0]
    model, data, index = str(world["model"]), str(world["data"]), str(world["index"])
    argv = {
        "similar": ["similar", index, str(query), "--html", str(out)],
        "index": ["index", "build", model, data, "--out", str(out)],
        "evaluate": ["evaluate", model, data, "--out", str(out)],
        "compare": ["compare", "backbones", "a", "--storage", f"sqlite:///{tmp}/c.db"],
    }[command]
    if command == "compare":
        argv += ["--paper", "none", "--out", str(out)]
    before = {**_sums(world["root"]), **_sums(tmp)}
    code, stdout, err = run_cli(argv)
    assert code == 2, err
    line = one_error_line(err, "clothopt: error:")
    assert str(out) in line or "reads" in line, line
    assert {**_sums(world["root"]), **_sums(tmp)} == before
    assert stdout == ""  # refused before any work


def test_compare_never_replaces_a_study_folder_or_the_database(tmp_path: Path) -> None:
    final = tmp_path / "runs" / "a" / "final"
    _final_report(final, 0, "2026-01-01T00:00:00Z")
    db = tmp_path / "c.db"
    db.write_bytes(b"SQLite format 3\x00")
    storage = f"sqlite:///{db}"
    for out in (final, tmp_path / "runs", tmp_path, db, tmp_path / "runs" / "a" / "report"):
        argv = ["compare", "backbones", "a", "--storage", storage, "--paper", "none"]
        _refused([*argv, "--out", str(out)], tmp_path, str(out))
    argv = ["compare", "samplers", "--backbone", "mobilenet_025", "--storage", storage]
    _refused([*argv, "--data", str(tmp_path), "--out", str(final)], tmp_path, "reads")


def test_index_build_under_a_file_size_limit_is_one_line(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "similar.npz"
    out.write_bytes(world["index"].read_bytes())  # an earlier index, to be kept
    before = _sums(tmp_path)
    argv = ["index", "build", str(world["model"]), str(world["data"]), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "clothopt", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        preexec_fn=_limit_index_size,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    one_error_line(done.stderr, f"clothopt: error: cannot write {out}: File too large")
    assert _sums(tmp_path) == before


def _limit_index_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # the index is larger than 1 KiB


def test_nothing_is_written_inside_a_folder_another_command_replaces_whole(
    tmp_path: Path,
) -> None:
    from clothopt.final.store import make_staging, publish

    final = tmp_path / "final"
    _final_report(final, 0, "2026-01-01T00:00:00Z")
    for path, check, kind in [
        (final / "ev", outputs.check_output_dir, outputs.EVALUATION),
        (final / "page.html", outputs.check_output_file, outputs.SIMILAR_PAGE),
        (final / "other.npz", outputs.check_output_file, outputs.INDEX),
    ]:
        with pytest.raises(OutputConflict, match="inside"):
            check(path, kind, [])
    # the one exception: index build's default, an index beside the model
    assert (
        outputs.check_output_file(final / "similar.npz", outputs.INDEX, []) == final / "similar.npz"
    )
    index = _index_file(final / "similar.npz")
    kept = index.read_bytes()
    # which finalize keeps when it replaces the folder (stale now: similar says so)
    tmp = make_staging(final)
    _final_report(tmp, 1, "2026-02-01T00:00:00Z")
    publish(tmp, final)
    assert (final / "similar.npz").read_bytes() == kept
    assert json.loads((final / "report.json").read_text())["trial"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_study_create_where_its_folder_cannot_be_made_is_one_line_and_creates_nothing(
    tiny_data: Path, tmp_path: Path
) -> None:
    from conftest import create_args

    space = tmp_path / "one.toml"
    space.write_text("[params]\nimage_size = [32]\nbatch_size = [8]\nlearning_rate = [0.01]\n")
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "runs").write_text("a file where the study folders go")
    storage = f"sqlite:///{tmp_path / 'st' / 'c.db'}"
    before = _sums(tmp_path / "st")
    code, out, err = run_cli(create_args(space, tiny_data, "s", storage))
    assert code == 2 and out == ""
    one_error_line(err, f"cannot write {tmp_path / 'st' / 'runs' / 's'}", "Not a directory")
    # the storage file and its WAL companions (-wal, -shm) are the storage's, made first
    assert {k: v for k, v in _sums(tmp_path / "st").items() if not k.startswith("c.db")} == before
    code, _, err = run_cli(["study", "show", "s", "--storage", storage])
    assert code == 2 and "no study named 's'" in err


def test_the_working_folder_and_the_root_are_never_an_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    for name in (".", "./", "sub/..", str(here), str(tmp_path)):
        with pytest.raises(OutputConflict, match="working folder"):
            outputs.check_output_dir(name, outputs.EVALUATION, [])
    with pytest.raises(OutputConflict, match="root folder"):
        outputs.check_output_dir("/", outputs.EVALUATION, [])
    with pytest.raises(OutputConflict, match="is a folder"):
        outputs.check_output_file(".", outputs.SIMILAR_PAGE, [])
    assert outputs.check_output_dir("ev", outputs.EVALUATION, []) == here / "ev"
    assert list(here.iterdir()) == []


def test_a_fifo_where_a_report_would_be_is_never_read(tmp_path: Path) -> None:
    folder = tmp_path / "looks_like_a_report"
    folder.mkdir()
    for name in ("report.json", "report.md", "comparison.json"):
        os.mkfifo(folder / name)  # reading one would block for ever
    page = folder / "page.html"
    assert outputs.check_output_file(page, outputs.SIMILAR_PAGE, []) == page
    with pytest.raises(OutputConflict, match="holds files"):
        outputs.check_output_dir(folder, outputs.EVALUATION, [])
