"""The command line: fast help, one-line errors, the study commands end to end."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clothopt.cli import main
from conftest import create_args

SPACE = "[params]\nimage_size = [32]\nbatch_size = [8]\nlearning_rate = [0.01, 0.001]\n"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clothopt", *args], capture_output=True, text=True, timeout=300
    )


def test_help_and_study_commands_do_not_import_tensorflow(storage: str) -> None:
    code = (
        "import sys\nfrom clothopt.cli import main\n"
        f"main(['study', 'list', '--storage', {storage!r}])\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert "study" in run("--help").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["study", "create", "--backbone", "nope"], "unknown backbone 'nope'"),
        (["study", "show", "missing"], "no study named 'missing'"),
        (
            ["study", "list", "--storage", "postgresql+psycopg://u:pw@127.0.0.1:9/x"],
            "cannot open storage",
        ),
        (["study", "optimize", "x", "--n-trials", "0"], "must be at least 1"),
        (["study", "frobnicate"], "invalid choice"),
        (["data", "check", "/no/such/folder"], "not"),
    ],
)
def test_user_errors_are_one_line_with_no_traceback(
    args: list[str], message: str, storage: str
) -> None:
    if args[:2] in (["study", "show"], ["study", "create"]):
        args = [*args, "--storage", storage]
    if args[:2] == ["study", "show"]:  # an empty storage: a read-only command needs one
        from clothopt.engine import open_storage

        open_storage(storage, create=True).engine.dispose()
    result = run(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "pw@" not in result.stderr


def test_create_optimize_show_delete(tiny_data: Path, storage: str, tmp_path: Path) -> None:
    space = tmp_path / "s.toml"
    space.write_text(SPACE)
    common = ["--storage", storage]
    created = run(*create_args(space, tiny_data, "t", storage))
    assert created.returncode == 0, created.stderr
    again = run(*create_args(space, tiny_data, "t", storage))
    assert again.returncode == 2 and "already exists" in again.stderr
    opt = run("study", "optimize", "t", "--quiet", *common)
    assert opt.returncode == 0, opt.stderr
    assert "grid: 2/2 points complete exactly once" in opt.stdout
    shown = run("study", "show", "t", "--json", *common)
    data = json.loads(shown.stdout)
    assert [t["state"] for t in data["trials"]] == ["COMPLETE", "COMPLETE"]
    values = [t["val_f1"] for t in data["trials"]]
    assert values == sorted(values, reverse=True), "best first"
    assert data["config"]["backbone"] == "mobilenet_025"
    listed = run("study", "list", *common)
    assert "t " in listed.stdout and "mobilenet_025" in listed.stdout
    assert run("study", "delete", "t", *common).returncode == 0
    assert "(none)" in run("study", "list", *common).stdout


def test_optimize_refuses_a_changed_data_set(tiny_data: Path, storage: str, tmp_path: Path) -> None:
    space = tmp_path / "s.toml"
    space.write_text(SPACE)
    assert main(create_args(space, tiny_data, "t", storage)) == 0
    victim = next((tiny_data / "train" / "hat").iterdir())
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    assert main(["study", "optimize", "t", "--storage", storage, "--quiet"]) == 2


@pytest.mark.postgres
def test_every_study_command_works_on_postgresql(
    tiny_data: Path, postgres_storage: str, tmp_path: Path
) -> None:
    space = tmp_path / "s.toml"
    space.write_text(SPACE)
    common = ["--storage", postgres_storage]
    assert main(create_args(space, tiny_data, "pg", postgres_storage)) == 0
    assert main(["study", "optimize", "pg", "--quiet", *common]) == 0
    assert main(["study", "show", "pg", *common]) == 0
    assert main(["study", "list", *common]) == 0
    assert main(["study", "delete", "pg", *common]) == 0
    assert main(["study", "show", "pg", *common]) == 2


@pytest.mark.postgres
def test_a_wrong_postgresql_password_is_one_line_without_the_password(
    postgres_storage: str,
) -> None:
    import time

    from sqlalchemy.engine import make_url

    wrong = make_url(postgres_storage).set(password="not-the-password")
    start = time.monotonic()
    result = run("study", "list", "--storage", wrong.render_as_string(hide_password=False))
    assert time.monotonic() - start < 30
    assert result.returncode == 2
    assert (
        "not-the-password" not in result.stderr
        and "password authentication failed" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_user_error_inside_a_trial_stops_optimize_with_one_line(
    tiny_data: Path,
    storage: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from clothopt import study
    from clothopt.errors import UserError
    from clothopt.objective import Objective

    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    assert main(create_args(space, tiny_data, "s", storage)) == 0

    def misconfigured(self: Objective, trial: object) -> float:
        raise UserError("weights file not found: /gone/w.h5")

    monkeypatch.setattr(Objective, "_run", misconfigured)
    capsys.readouterr()
    assert main(["study", "optimize", "s", "--storage", storage, "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert err == "clothopt: error: weights file not found: /gone/w.h5\n" and out == ""
    st, _ = study.load("s", storage)
    states = [t.state.name for t in st.trials]
    assert states == ["FAIL", "WAITING", "WAITING"]  # the stopped trial is queued again
    assert st.trials[2].user_attrs["retry_of"] == 0


def test_an_unreadable_image_fails_only_its_trial(
    tiny_data: Path, storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clothopt import study

    victim = sorted((tiny_data / "train").glob("*/*"))[0]
    victim.write_bytes(b"not an image")
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    assert main(create_args(space, tiny_data, "s", storage)) == 0
    # every trial it ran failed: exit 1 (issue #11), after running them all
    assert main(["study", "optimize", "s", "--storage", storage, "--quiet"]) == 1
    assert "ran 2 trial(s)" in capsys.readouterr().out  # the second ran after the first failed
    st, _ = study.load("s", storage)
    assert [t.state.name for t in st.trials] == ["FAIL", "FAIL"]
    for t in st.trials:
        assert t.user_attrs["fail_reason"].startswith(f"cannot read image {victim}")


def _one_line(code: int, err: str, message: str) -> None:
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def _content(db: Path) -> list[str]:
    """A SQLite file's rows, as SQL (its bytes move when WAL is checkpointed into it)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.iterdump())


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_a_class_folder_with_no_images_is_refused_by_create_and_optimize(
    tiny_data: Path, storage: str, tmp_path: Path, split: str
) -> None:
    from conftest import run_cli

    space = tmp_path / "s.toml"
    space.write_text(SPACE)
    db = Path(storage.removeprefix("sqlite:///"))
    images = sorted((tiny_data / split / "hat").iterdir())
    moved = tmp_path / "moved"
    moved.mkdir()
    for image in images:  # the folder stays, empty
        image.rename(moved / image.name)
    message = f"class 'hat' of the {split} split has no images"
    code, out, err = run_cli(create_args(space, tiny_data, "t", storage))
    _one_line(code, err, message)
    assert out == "" and not db.exists()  # nothing written

    for image in images:  # created on the full set, then a class emptied
        (moved / image.name).rename(image)
    assert main(create_args(space, tiny_data, "t", storage)) == 0
    for image in images:
        image.rename(moved / image.name)
    (tiny_data / split / "hat" / "notes.txt").write_text("not an image")
    before = _content(db)
    code, out, err = run_cli(["study", "optimize", "t", "--storage", storage, "--quiet"])
    _one_line(code, err, message)
    assert _content(db) == before  # refused before any trial was taken from the queue
    code, out, err = run_cli(["study", "show", "t", "--storage", storage, "--json"])
    assert code == 0 and {t["state"] for t in json.loads(out)["trials"]} == {"WAITING"}
