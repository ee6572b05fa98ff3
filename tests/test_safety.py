"""Issue #11: nothing lost, nothing leaked, nothing written outside the storage folder.

Every test goes through the command line (``main`` in process, or ``python -m clothopt``) and
checks the exit status, a single stderr line without a traceback, the files under the
temporary root, and the study's state.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clothopt import paths
from clothopt import study as st
from clothopt.cli import main, recorded_command, run_it_line
from clothopt.errors import UserError
from conftest import create_args, one_error_line, sigint_default

TWO = "[params]\nimage_size = [32]\nbatch_size = [8]\nlearning_rate = [0.01, 0.001]\n"
ONE = "[params]\nimage_size = [32]\nbatch_size = [8]\nlearning_rate = [0.01]\n"
SECRET = "SECRETPW"


def _listing(root: Path, skip: Path | None = None) -> set[str]:
    """Every path under ``root`` except those under ``skip`` (the storage folder)."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if skip is None or not p.is_relative_to(skip)
    }


def _space(tmp_path: Path, text: str = TWO) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    env.update(extra)
    return env


def _cli(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "clothopt", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=kw.pop("env", None) or _env(),  # type: ignore[arg-type]
        preexec_fn=sigint_default,  # interrupted with SIGINT too, whatever the runner ignores
        **kw,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------- 1, 12: names become paths


@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs", "x" * 300, "", ".hidden", "a b"])
def test_a_bad_study_name_is_one_line_and_writes_nothing(
    tiny_data: Path, storage: str, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    space = _space(tmp_path)
    before = _listing(tmp_path)
    assert main(create_args(space, tiny_data, name, storage)) == 2
    one_error_line(capsys.readouterr().err, "bad study name", paths.NAME_RULE)
    assert _listing(tmp_path) == before  # not even the storage
    assert not Path("/tmp/abs").exists() or name != "/tmp/abs"


def test_delete_removes_the_run_folder_and_only_its_own_artifacts(
    tiny_data: Path, storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = _space(tmp_path)
    for name in ("a", "b"):
        assert main(create_args(space, tiny_data, name, storage)) == 0
        assert main(["study", "optimize", name, "--storage", storage, "--quiet"]) == 0
    artifacts = paths.artifact_dir(storage)
    assert len(list(artifacts.iterdir())) == 4  # a validation report per trial
    before = _listing(tmp_path, skip=paths.studies_root(storage))
    capsys.readouterr()
    assert main(["study", "delete", "a", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "deleted study 'a'" in out and "2 artifact file(s)" in out
    assert str(paths.study_dir(storage, "a")) in out
    assert not paths.study_dir(storage, "a").exists()
    assert (paths.study_dir(storage, "b") / "config.json").is_file()
    assert len(list(artifacts.iterdir())) == 2  # b's stay
    b, _ = st.load("b", storage)
    from clothopt.dashboard import artifact_ids

    assert sorted(p.name for p in artifacts.iterdir()) == artifact_ids(b)
    assert [s["name"] for s in st.list_studies(storage)] == ["b"]
    assert _listing(tmp_path, skip=paths.studies_root(storage)) == before


def test_finalize_never_replaces_a_final_folder_it_did_not_write(tmp_path: Path) -> None:
    from clothopt.final.store import make_staging, publish

    dest = tmp_path / "runs" / "s" / "final"
    dest.mkdir(parents=True)
    (dest / "precious.txt").write_text("mine")
    with pytest.raises(UserError, match="not written by clothopt"):
        make_staging(dest)
    assert (dest / "precious.txt").read_text() == "mine"
    assert [p.name for p in dest.parent.iterdir()] == ["final"]  # no staging left behind
    # one of ours (it has a report.json) is replaced whole
    (dest / "precious.txt").unlink()
    (dest / "report.json").write_text("{}")
    tmp = make_staging(dest)
    (tmp / "report.json").write_text('{"new": 1}')
    publish(tmp, dest)
    assert json.loads((dest / "report.json").read_text()) == {"new": 1}


# ----------------------------------------------------------------- 4: a one-point grid


def test_a_one_point_grid_runs(
    tiny_data: Path, storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(create_args(_space(tmp_path, ONE), tiny_data, "one", storage)) == 0
    assert main(["study", "optimize", "one", "--storage", storage, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "grid: 1/1 points complete exactly once" in captured.out
    assert "Traceback" not in captured.err and "grid_id" not in captured.err
    study, config = st.load("one", storage)
    assert st.grid_status(study, config)["complete_once"] == 1


# ----------------------------------------------------------------- 5: passwords


def test_a_password_is_never_printed_nor_stored(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:9/postgres"
    assert main(create_args(_space(tmp_path), tiny_data, "p", url)) == 2
    err = capsys.readouterr().err
    one_error_line(err, "cannot open storage", "***")
    assert SECRET not in err
    # what would be stored and printed had it connected
    command = recorded_command(["study", "create", "--name", "p", "--storage", url])
    assert SECRET not in command and "postgres:***@127.0.0.1:9" in command
    assert SECRET not in recorded_command([f"--storage={url}", "--data", "x"])
    line = run_it_line("p", url)
    assert SECRET not in line and '--storage "$CLOTHOPT_STORAGE"' in line and ".pgpass" in line
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


@pytest.mark.postgres
def test_a_postgresql_password_is_nowhere(
    tiny_data: Path,
    tmp_path: Path,
    postgres_storage: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.engine import make_url

    password = make_url(postgres_storage).password
    assert password
    monkeypatch.chdir(tmp_path)  # the run folder of a PostgreSQL storage is ./studies
    assert main(create_args(_space(tmp_path), tiny_data, "pg", postgres_storage)) == 0
    assert main(["study", "show", "pg", "--json", "--storage", postgres_storage]) == 0
    printed = capsys.readouterr()
    assert password not in printed.out + printed.err
    study, _ = st.load("pg", postgres_storage)
    from clothopt.engine import storage_of, study_id

    attrs = json.dumps(
        [
            study.user_attrs,
            storage_of(study).get_study_system_attrs(study_id(study)),
            [(t.user_attrs, t.system_attrs) for t in study.trials],
        ],
        default=str,
    )
    assert password not in attrs  # the config, the command and the dashboard's note
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or password.encode() not in path.read_bytes(), path


# ----------------------------------------------------------------- 12, 13: storages


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x", "needs the driver"),
        ("sqlite:///", "names no file"),
        ("sqlite://", "names no file"),
        ("redis://x", "unsupported storage"),
    ],
)
def test_bad_storage_urls_are_one_line(
    tiny_data: Path, tmp_path: Path, url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _listing(tmp_path)
    assert main(create_args(_space(tmp_path), tiny_data, "s", url)) == 2
    one_error_line(capsys.readouterr().err, message)
    assert _listing(tmp_path) == before | {"space.toml"}


@pytest.mark.parametrize(
    "command",
    [
        ["study", "list"],
        ["study", "show", "s"],
        ["study", "delete", "s"],
        ["study", "report", "s", "--paper", "none"],
        ["study", "optimize", "s"],
        ["dashboard", "--port", "0"],
    ],
)
def test_read_only_commands_create_nothing(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'nonexistent' / 'dir' / 'x.db'}"
    assert main([*command, "--storage", storage]) == 2
    one_error_line(capsys.readouterr().err, "no ")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- 11: two creates at once


def test_two_creates_at_the_same_moment_make_one_study(tiny_data: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'fresh' / 'clothopt.db'}"  # a fresh database too
    args = create_args(_space(tmp_path), tiny_data, "X", storage)
    procs = [_cli(*args) for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert sorted(code for code, _ in results) == [0, 2, 2], results
    for code, err in results:
        if code:
            one_error_line(err, "already exists")
    assert [s["name"] for s in st.list_studies(storage)] == ["X"]
    assert len(st.load("X", storage)[0].get_trials()) == 2


# ----------------------------------------------------------------- 10: delete while optimizing

SLOW_OPTIMIZE = textwrap.dedent(
    """
    import sys, time
    import clothopt.objective as ob
    class Slow:
        def __init__(self, *a, **k):
            pass
        def __call__(self, trial):
            time.sleep(float(sys.argv[2]))
            return 0.5
    ob.Objective = Slow
    from clothopt.cli import main
    sys.exit(main(["study", "optimize", "s", "--storage", sys.argv[1], "--quiet"]))
    """
)


def _running(storage: str) -> bool:
    from optuna.trial import TrialState

    from clothopt.engine import OWNER_ATTR

    try:
        study, _ = st.load("s", storage)
    except UserError:
        return False
    return any(
        t.state == TrialState.RUNNING and OWNER_ATTR in t.system_attrs for t in study.get_trials()
    )


def _wait_for(predicate: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_delete_while_optimizing_stops_it_with_one_line(
    tiny_data: Path, storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(create_args(_space(tmp_path), tiny_data, "s", storage)) == 0
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_OPTIMIZE, storage, "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    _wait_for(lambda: _running(storage))
    assert main(["study", "delete", "s", "--storage", storage]) == 0
    assert proc.wait(timeout=60) == 2
    one_error_line(proc.stderr.read(), "study 's' was deleted")  # type: ignore[union-attr]
    assert not paths.study_dir(storage, "s").exists()


# ----------------------------------------------------------------- 15: messages


def test_the_run_it_line_is_shell_quoted(tmp_path: Path) -> None:
    import shlex

    storage = f"sqlite:///{tmp_path / 'my studies' / 'c.db'}"
    line = run_it_line("s", storage).removeprefix("run it: ")
    assert shlex.split(line) == ["clothopt", "study", "optimize", "s", "--storage", storage]


# ----------------------------------------------------------------- 2, 3: interrupts


def _finish(storage: str) -> dict[str, object]:
    proc = _cli("study", "optimize", "s", "--storage", storage, "--quiet")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    study, config = st.load("s", storage)
    return st.grid_status(study, config)


def _wait_until_caught(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    """Until the child has a handler for ``sig`` (Linux: /proc's SigCgt mask), so a moment
    counts from when the process can answer a signal at all, not from a fork that a loaded
    machine may take a second to turn into a running interpreter."""
    status = Path(f"/proc/{proc.pid}/status")
    deadline = time.monotonic() + 60
    while status.exists() and proc.poll() is None and time.monotonic() < deadline:
        masks = dict(line.split(":\t") for line in status.read_text().splitlines())
        if int(masks["SigCgt"], 16) & (1 << (sig - 1)):
            return
        time.sleep(0.002)


def _interrupt_at(storage: str, seconds: float, sig: signal.Signals) -> tuple[int, str]:
    proc = _cli("study", "optimize", "s", "--storage", storage, "--quiet")
    _wait_until_caught(proc, signal.SIGTERM)  # the entry point's first act
    time.sleep(seconds)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_an_interrupt_a_library_turns_into_another_error_puts_the_trial_back(
    tmp_path: Path,
) -> None:
    # TensorFlow, interrupted while tracing, raised a SystemError in place of the interrupt:
    # the trial must still go back uncounted and the run end as interrupted, not as a bug
    import optuna

    from clothopt import engine
    from clothopt.errors import Terminated

    storage = engine.open_storage(f"sqlite:///{tmp_path / 's.db'}", create=True)
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"x": 1.0})

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0.0, 2.0)
        try:
            signal.raise_signal(signal.SIGTERM)  # the runner's handler raises Terminated
        except Terminated:
            raise SystemError("bad argument to internal function") from None
        return 0.0

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        engine.optimize(study, objective, budget=1, progress=False)
    states = [(t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert states == [("FAIL", "terminated"), ("WAITING", None)], states
    assert signal.getsignal(signal.SIGTERM) is before  # the runner's handler is gone again

    # without a signal, the same SystemError is a bug: the trial fails with it and it is raised
    def buggy(trial: optuna.Trial) -> float:
        raise SystemError("a real bug")

    with pytest.raises(SystemError):
        engine.optimize(study, buggy, budget=1, progress=False)
    assert "a real bug" in study.trials[1].user_attrs["fail_reason"]


class _SignalOnCollect:
    """Sends ``sig`` from its finalizer, where Python swallows what the handler raises (it
    prints "Exception ignored" and goes on): a Ctrl-C landing in a garbage collection. With
    ``as_error`` the finalizer turns the interrupt into a SystemError first, as TensorFlow's
    C++ did (printed without a header)."""

    def __init__(self, sig: signal.Signals, as_error: bool = False) -> None:
        self.sig, self.as_error = sig, as_error

    def __del__(self) -> None:
        try:
            signal.raise_signal(self.sig)
        except BaseException as exc:
            if self.as_error:
                raise SystemError("returned a result with an exception set") from exc
            raise


@pytest.mark.parametrize("as_error", [False, True])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_a_finalizer_swallowed_still_stops_the_run_silently(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sig: signal.Signals,
    as_error: bool,
) -> None:
    # CI saw both: the trial ran on, and stderr got a traceback. Now the trial goes back
    # uncounted when the objective returns, the run ends as interrupted, stderr stays clean.
    import optuna

    from clothopt import engine
    from clothopt.errors import Terminated

    storage = engine.open_storage(f"sqlite:///{tmp_path / 's.db'}", create=True)
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"x": 1.0})
    ran_on: list[bool] = []

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0.0, 2.0)
        _SignalOnCollect(sig, as_error)  # collected at once: the signal lands in __del__
        ran_on.append(True)
        return 0.0

    reported: list[BaseException | None] = []  # what Python would have printed
    monkeypatch.setattr(sys, "unraisablehook", lambda info: reported.append(info.exc_value))
    previous = (signal.getsignal(signal.SIGINT), sys.unraisablehook, sys.excepthook)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's Ctrl-C finds it
    try:
        with pytest.raises(KeyboardInterrupt if sig == signal.SIGINT else Terminated):
            engine.optimize(study, objective, budget=1, progress=False)
    finally:
        signal.signal(signal.SIGINT, previous[0])
    assert (sys.unraisablehook, sys.excepthook) == previous[1:]  # the hooks are gone again
    assert ran_on == [True]  # Python went on after the finalizer, as it does
    reason = "interrupted" if sig == signal.SIGINT else "terminated"
    states = [(t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert states == [("FAIL", reason), ("WAITING", None)], states
    assert not reported, reported
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_a_held_signal_goes_to_the_handler_that_was_there_when_the_outermost_block_ends() -> None:
    from clothopt.engine.interrupts import signals_held

    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as CI's background jobs
    try:
        with signals_held():
            with signals_held():  # a storage call inside a step held as a whole
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGINT)
            assert got == []  # not in the middle of the outer block
        assert got == [signal.SIGTERM]  # an ignored SIGINT stays ignored
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def test_an_interrupt_inside_a_storage_call_waits_until_the_call_is_done(tmp_path: Path) -> None:
    # one landing inside SQLAlchemy once left the process's SQLite write lock behind, and
    # putting the trial back then failed with "database is locked" (a random-interrupt loop)
    import sqlite3

    import optuna
    from sqlalchemy import event

    from clothopt import engine
    from clothopt.engine.interrupts import interrupts_raise
    from clothopt.engine.storage import sql_engine_of
    from clothopt.errors import Terminated

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=engine.open_storage(url, create=True), study_name="s")
    sent: list[str] = []

    def mid_call(conn: object, cursor: object, statement: str, *rest: object) -> None:
        if statement.startswith("INSERT") and not sent:
            sent.append(statement)
            signal.raise_signal(signal.SIGTERM)

    event.listen(sql_engine_of(study), "before_cursor_execute", mid_call)
    with interrupts_raise(), pytest.raises(Terminated):
        study.set_user_attr("k", "v")
    assert sent  # the signal came in the middle of the call
    assert optuna.load_study(study_name="s", storage=url).user_attrs == {"k": "v"}
    with sqlite3.connect(tmp_path / "s.db", timeout=0) as other:  # no lock left behind
        other.execute("BEGIN IMMEDIATE")


def test_a_swallowed_interrupt_is_raised_at_the_next_safe_point_and_only_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from clothopt.engine.interrupts import interrupts_raise, raise_swallowed
    from clothopt.errors import Terminated
    from clothopt.final.progress import say

    with interrupts_raise():
        raise_swallowed()  # none yet: nothing happens
        _SignalOnCollect(signal.SIGTERM)
        with pytest.raises(Terminated):
            say(False, "the next step")  # finalize's step lines are safe points
        raise_swallowed()  # raised once, then gone
        _SignalOnCollect(signal.SIGTERM, as_error=True)  # left for no safe point
    with interrupts_raise():
        raise_swallowed()  # a new outermost block starts clean
    assert "Traceback" not in capsys.readouterr().err

    # a finalizer's own bug is not an interrupt: it goes to the hook that was there before
    class Buggy:
        def __del__(self) -> None:
            raise ValueError("a finalizer's bug")

    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: reported.append(info.exc_value))
    with interrupts_raise():
        Buggy()
        raise_swallowed()
    assert [type(e) for e in reported] == [ValueError], reported


_SLOW_ARGPARSE = """
import importlib.util, os, sys, sysconfig, time
time.sleep(10)  # the CLI's imports, made slow enough to be caught in the act
spec = importlib.util.spec_from_file_location(
    "argparse", os.path.join(sysconfig.get_paths()["stdlib"], "argparse.py")
)
module = importlib.util.module_from_spec(spec)
sys.modules["argparse"] = module
spec.loader.exec_module(module)
"""


_ESCAPED_RUN_STRING = """
import ctypes, sys
from clothopt.__main__ import exit_with
run_string = ctypes.pythonapi.PyRun_String
run_string.restype = ctypes.py_object
run_string.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]
try:
    run_string(b"raise KeyboardInterrupt", 257, {}, {})  # a library's embedded code, interrupted
except KeyboardInterrupt:
    print("clothopt: interrupted", file=sys.stderr)  # handled, as the CLI does
exit_with(130)
"""


def test_an_interrupt_that_escaped_embedded_code_still_exits_130(tmp_path: Path) -> None:
    # CPython marks such a KeyboardInterrupt "unhandled" and, under python -m, then ended the
    # process by SIGINT (-2) although the CLI had handled it (a stress loop: ~1 run in 100)
    (tmp_path / "escaped.py").write_text(_ESCAPED_RUN_STRING)
    proc = subprocess.run(
        [sys.executable, "-m", "escaped"], capture_output=True, text=True, cwd=tmp_path, env=_env()
    )
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert proc.stderr == "clothopt: interrupted\n", proc.stderr


@pytest.mark.parametrize("entry", ["console script", "python -m"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_imports_ends_with_one_line(
    entry: str, sig: signal.Signals, tmp_path: Path
) -> None:
    # A signal while the CLI is still importing (seconds under load) must end like one during
    # a trial; the console script used to install its handler only after those imports (-15).
    # An argparse that sleeps first holds the imports open: the CLI imports it, start-up not.
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "argparse.py").write_text(_SLOW_ARGPARSE)
    script = Path(sys.executable).with_name("clothopt")
    if entry == "console script" and not script.exists():
        pytest.skip("clothopt is not installed as a console script beside this Python")
    argv = [str(script)] if entry == "console script" else [sys.executable, "-m", "clothopt"]
    proc = subprocess.Popen(
        [*argv, "--version"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(PYTHONPATH=f"{tmp_path / 'shim'}{os.pathsep}{_env().get('PYTHONPATH', '')}"),
        preexec_fn=sigint_default,
    )
    # Python's own SIGINT handler marks a running interpreter; the shim then holds the CLI's
    # imports for 10 s, so a second later they are surely still going
    _wait_until_caught(proc, signal.SIGINT)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
    one_error_line(err, "interrupted" if sig == signal.SIGINT else "terminated")


@pytest.mark.slow  # ~70 s: six start-ups of TensorFlow
def test_an_interrupt_at_any_moment_puts_the_trial_back_uncounted(
    tiny_data: Path, storage: str, tmp_path: Path
) -> None:
    # max-retries 0: an interrupt counted as a retry would drop its grid point for good
    args = create_args(_space(tmp_path), tiny_data, "s", storage, "--max-retries", "0")
    assert main(args) == 0
    moments = [0.5, 1.0, 2.0, 3.0, 5.0, 8.0]
    for i, seconds in enumerate(moments):
        sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
        code, err = _interrupt_at(storage, seconds, sig)
        if code == 0:
            break  # it finished before the signal came
        assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
        one_error_line(err, "interrupted" if sig == signal.SIGINT else "terminated")
    grid = _finish(storage)
    assert grid["complete_once"] == 2 and not grid["duplicates"], grid
    study, _ = st.load("s", storage)
    reasons = {t.user_attrs.get("fail_reason") for t in study.trials if t.state.name == "FAIL"}
    assert reasons <= {"interrupted", "terminated"}, reasons


@pytest.mark.slow
def test_random_interrupts_then_resume_complete_each_point_once(
    tiny_data: Path, storage: str, tmp_path: Path
) -> None:
    rng = random.Random(11)
    # two SIGKILLs may each count (a dead worker), so max-retries 2; the rest must not count
    args = create_args(_space(tmp_path), tiny_data, "s", storage, "--max-retries", "2")
    assert main(args) == 0
    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL] * 2 + [signal.SIGINT, signal.SIGTERM]
    rng.shuffle(sigs)
    start = time.monotonic()
    for sig in sigs:
        code, err = _interrupt_at(storage, rng.uniform(0.3, 6.0), sig)
        assert "Traceback" not in err, err
        assert code in (0, 130, 143, -signal.SIGKILL), (sig, code, err)
        if time.monotonic() - start > 75:
            break
    grid = _finish(storage)
    assert grid["complete_once"] == 2 and not grid["duplicates"], grid


# ----------------------------------------------------------------- 16: native noise


def test_tensorflow_start_up_lines_only_with_verbose(
    tiny_data: Path, storage: str, tmp_path: Path
) -> None:
    assert main(create_args(_space(tmp_path, ONE), tiny_data, "s", storage)) == 0
    env = _env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    quiet = _cli("study", "optimize", "s", "--storage", storage, "--quiet", env=env)
    _, err = quiet.communicate(timeout=300)
    assert quiet.returncode == 0, err
    assert "oneDNN" not in err and "cuda" not in err.lower(), err
    assert main(["study", "delete", "s", "--storage", storage]) == 0
    assert main(create_args(_space(tmp_path, ONE), tiny_data, "s", storage)) == 0
    loud = _cli("--verbose", "study", "optimize", "s", "--storage", storage, "--quiet", env=env)
    _, err = loud.communicate(timeout=300)
    assert loud.returncode == 0, err
    assert "oneDNN" in err or "cuda" in err.lower(), err


# ----------------------------------------------------------------- property: create never breaks


def test_create_with_generated_names_urls_and_spaces_is_0_or_2_and_stays_inside(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib
    import io
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as hs

    word = hs.text("abcxyz019_-.", min_size=1, max_size=12)
    names = hs.one_of(hs.text(max_size=120), word, hs.sampled_from(["..", "../x", "/tmp/a", ""]))
    urls = hs.one_of(
        hs.sampled_from(
            [
                "sqlite:///studies/c.db",
                "sqlite:///",
                "sqlite://",
                "sqlite:///:memory:",
                "mysql://x",
                "nonsense",
                "redis://h/0",
                f"postgresql+psycopg://u:{SECRET}@127.0.0.1:9/x",
            ]
        ),
        hs.builds(lambda w: f"sqlite:///db/{w.strip('.') or 'x'}.db", word),
    )
    values = hs.one_of(
        hs.lists(hs.sampled_from(["32", "40", "0", "-1", "1e9", '"a"', "0.01"]), max_size=3).map(
            lambda xs: "[" + ", ".join(xs) + "]"
        ),
        hs.sampled_from(["{ low = 1e-4, high = 1e-2, log = true }", "3", '"x"', "{}"]),
    )
    spaces = hs.builds(
        lambda size, batch, lr, extra: (
            f"{extra}\n[params]\nimage_size = {size}\nbatch_size = {batch}\nlearning_rate = {lr}\n"
        ),
        values,
        values,
        values,
        hs.sampled_from(["", 'sampler = "tpe"', 'sampler = "grid"', "epochs = 0", "[[["]),
    )
    outside = _listing(tmp_path)

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(name=names, url=urls, space=spaces)
    def check(name: str, url: str, space: str) -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path) as root:
            monkeypatch.chdir(root)
            (Path(root) / "s.toml").write_text(space)
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = main(create_args(Path(root) / "s.toml", tiny_data, name, url))
                except SystemExit as exc:  # argparse's own one-line errors ("-x" as a value)
                    code = exc.code
            assert code in (0, 2), err.getvalue()
            assert "Traceback" not in err.getvalue() and SECRET not in err.getvalue()
            if code == 2:
                one_error_line(err.getvalue())
            monkeypatch.chdir(tmp_path)
        assert _listing(tmp_path) == outside  # nothing beside the example's folder

    check()
