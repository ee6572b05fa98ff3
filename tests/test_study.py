"""Study engine: creation, the exactly-once grid, resume after crashes, faults inside trials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from clothopt import engine, paths
from clothopt import study as st
from clothopt.engine.queue import pop_waiting
from clothopt.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    StorageUnavailable,
    TrialFailed,
    UserError,
)
from conftest import sigint_default

SMALL_SPACE = """
description = "test grid"
sampler = "grid"
epochs = 2
[params]
image_size = [32, 40]
batch_size = [4, 8]
learning_rate = [0.01, 0.001]
"""


@pytest.fixture
def space_file(tmp_path: Path) -> str:
    path = tmp_path / "small.toml"
    path.write_text(SMALL_SPACE)
    return str(path)


def _create(tiny_data: Path, storage: str, space: str, **kw: object) -> tuple[optuna.Study, object]:
    kw.setdefault("name", "s")
    return st.create(
        backbone="mobilenet_025",
        space=space,
        data=str(tiny_data),
        storage=storage,
        weights="none",
        **kw,
    )


def fake_objective(trial: optuna.Trial) -> float:
    p = {
        n: trial.suggest_categorical(n, c)
        for n, c in (
            ("image_size", [32, 40]),
            ("batch_size", [4, 8]),
            ("learning_rate", [0.01, 0.001]),
        )
    }
    return p["image_size"] / 100 + p["batch_size"] / 1000 + p["learning_rate"]


def test_create_enqueues_the_whole_grid_and_stores_the_config(
    tiny_data: Path, storage: str, space_file: str
) -> None:
    study, config = _create(tiny_data, storage, space_file, seed=5)
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state == TrialState.WAITING for t in trials)
    assert {tuple(t.system_attrs["fixed_params"].values()) for t in trials} == {
        tuple(p.values()) for p in config.space.grid()
    }
    _, loaded = st.load("s", storage)
    assert loaded == config and loaded.seed == 5
    assert loaded.versions["optuna"] == optuna.__version__
    written = json.loads((paths.study_dir(storage, "s") / "config.json").read_text())
    assert written["data_fingerprint"] == config.data_fingerprint


def test_a_space_s_start_points_are_the_first_trials_then_the_sampler_asks(
    tiny_data: Path, storage: str, tmp_path: Path
) -> None:
    """The ``[[start]]`` configurations are enqueued at creation, in order, and count in the
    budget; the sampler proposes the rest."""
    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache
    from clothopt.objective import Objective

    path = tmp_path / "warm.toml"
    path.write_text(
        'sampler = "random"\nn_trials = 3\nepochs = 1\n[params]\nimage_size = [32]\n'
        "batch_size = [4, 8]\nlearning_rate = { low = 1e-4, high = 1e-1, log = true }\n"
        "[[start]]\nimage_size = 32\nbatch_size = 8\nlearning_rate = 0.0123\n"
        "[[start]]\nimage_size = 32\nbatch_size = 4\nlearning_rate = 0.000456\n"
    )
    study, config = _create(tiny_data, storage, str(path))
    waiting = study.get_trials()
    assert [t.state for t in waiting] == [TrialState.WAITING] * 2
    objective = Objective(config, open_dataset(tiny_data), FeatureCache(config.cache_dir))
    st.optimize(study, config, objective, progress=False)
    done = study.get_trials()
    assert [t.state for t in done] == [TrialState.COMPLETE] * 3
    assert done[0].params == {"image_size": 32, "batch_size": 8, "learning_rate": 0.0123}
    assert done[1].params == {"image_size": 32, "batch_size": 4, "learning_rate": 0.000456}
    assert done[2].params["learning_rate"] not in (0.0123, 0.000456)  # the sampler's


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "nope"}, "unknown backbone"),
        ({"backbone": "xception"}, "below the minimum of xception"),
        ({"space": "missing.toml"}, "neither a built-in"),
        ({"data": "/no/such/dir"}, "data directory not found"),
        ({"weights": "/no/such/file.h5"}, "weights file not found"),
        ({"pruner": "hyperband"}, "unknown pruner"),
        ({"epochs": 0}, "--epochs must be"),
    ],
)
def test_mistakes_change_nothing(
    tiny_data: Path, storage: str, space_file: str, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "backbone": "mobilenet_025",
        "space": space_file,
        "data": str(tiny_data),
        "storage": storage,
        "weights": "none",
        "name": "s",
    }
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        st.create(**args)  # type: ignore[arg-type]
    # nothing changed: the storage was not even created (read-only commands refuse it)
    assert not Path(storage.removeprefix("sqlite:///")).exists()
    with pytest.raises(NotFound, match="no storage at"):
        st.list_studies(storage)


def test_a_missing_split_is_refused(tiny_data: Path, storage: str, space_file: str) -> None:
    import shutil

    shutil.rmtree(tiny_data / "test")
    with pytest.raises(UserError, match="no test/ split"):
        _create(tiny_data, storage, space_file)


def test_an_existing_name_is_refused_and_kept(
    tiny_data: Path, storage: str, space_file: str
) -> None:
    _create(tiny_data, storage, space_file)
    with pytest.raises(AlreadyExists, match="already exists"):
        _create(tiny_data, storage, space_file)
    assert len(st.load("s", storage)[0].get_trials()) == 8


def test_bad_storage_urls_are_one_line(tmp_path: Path) -> None:
    for url, message in (("nonsense", "bad storage URL"), ("redis://x", "unsupported storage")):
        with pytest.raises(InvalidArgument, match=message):
            engine.open_storage(url)
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"cannot open storage .*\*\*\*") as info:
        engine.open_storage("postgresql+psycopg://me:hunter2@127.0.0.1:9/db")
    assert "hunter2" not in str(info.value) and time.monotonic() - start < 10


def test_unknown_study(storage: str) -> None:
    engine.open_storage(storage, create=True)  # an empty storage
    with pytest.raises(NotFound, match="no study named 'x'"):
        st.load("x", storage)
    with pytest.raises(NotFound, match="no study named 'x'"):
        st.delete("x", storage)


def test_optimize_runs_every_grid_point_once_and_resumes(
    tiny_data: Path, any_storage: str, space_file: str
) -> None:
    study, config = _create(tiny_data, any_storage, space_file)
    first = st.optimize(study, config, fake_objective, n_trials=3, progress=False)
    assert first.ran == 3
    study, config = st.load("s", any_storage)
    second = st.optimize(study, config, fake_objective, progress=False)
    assert second.ran == 5
    grid = st.grid_status(study, config)
    assert grid["complete_once"] == 8 and not grid["duplicates"] and not grid["missing"]
    assert second.best_params == {"image_size": 40, "batch_size": 8, "learning_rate": 0.01}
    # nothing left: a third run does nothing
    assert st.optimize(study, config, fake_objective, progress=False).ran == 0


def _leave_running(study: optuna.Study, owner: dict[str, object] | None) -> int:
    """What a SIGKILLed worker leaves: a popped trial, RUNNING, with its owner recorded."""
    trial = pop_waiting(study)
    assert trial is not None
    trial.suggest_categorical("image_size", [32, 40])
    if owner is not None:
        engine.storage_of(study).set_trial_system_attr(
            engine.trial_id(trial), engine.OWNER_ATTR, owner
        )
    return trial.number


def test_a_dead_local_worker_is_detected_at_once(
    tiny_data: Path, storage: str, space_file: str
) -> None:
    study, config = _create(tiny_data, storage, space_file)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    number = _leave_running(
        study, {"host": os.uname().nodename, "pid": int(dead.stdout), "token": "gone"}
    )
    summary = st.optimize(study, config, fake_objective, progress=False)
    assert summary.recovered == 1 and summary.ran == 8
    failed = study.trials[number]
    assert (
        failed.state == TrialState.FAIL
        and failed.user_attrs["fail_reason"] == "worker process died"
    )
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == study.trials[number].system_attrs["fixed_params"]
    assert st.grid_status(study, config)["complete_once"] == 8


def test_a_worker_on_another_host_is_failed_by_its_heartbeat(
    tiny_data: Path, storage: str, space_file: str
) -> None:
    study, config = _create(tiny_data, storage, space_file)
    number = _leave_running(study, {"host": "elsewhere", "pid": 1, "token": "x"})
    engine.storage_of(study).record_heartbeat(engine.trial_id(study.trials[number]))
    engine.recover(study)
    assert study.trials[number].state == TrialState.RUNNING  # heartbeat still fresh
    time.sleep(engine.GRACE_PERIOD + 1)
    summary = st.optimize(study, config, fake_objective, progress=False)
    assert summary.ran == 8
    assert study.trials[number].state == TrialState.FAIL
    assert st.grid_status(study, config)["complete_once"] == 8


def test_retries_stop_at_the_limit(tiny_data: Path, storage: str, space_file: str) -> None:
    study, _ = _create(tiny_data, storage, space_file, max_retries=1)
    number = _leave_running(study, None)
    assert engine.requeue(study, study.trials[number], "test")
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retries"] == 1
    popped = pop_waiting(study)  # the queue is FIFO: take grid trials until the retry
    while popped is not None and popped.number != retry.number:
        study.tell(popped, 0.0)
        popped = pop_waiting(study)
    assert popped is not None
    assert engine.requeue(study, study.trials[retry.number], "again")
    assert not study.get_trials(states=(TrialState.WAITING,)), "no third attempt"


def test_requeue_happens_once_when_two_workers_see_the_same_death(
    tiny_data: Path, any_storage: str, space_file: str
) -> None:
    study, _ = _create(tiny_data, any_storage, space_file)
    number = _leave_running(study, None)
    frozen = study.trials[number]
    assert engine.requeue(study, frozen, "seen by worker A")
    assert not engine.requeue(study, frozen, "seen by worker B")
    assert sum(t.user_attrs.get("retry_of") == number for t in study.trials) == 1


def test_faults_fail_the_trial_and_the_study_goes_on(
    tiny_data: Path, storage: str, space_file: str
) -> None:
    study, config = _create(tiny_data, storage, space_file)
    calls = {"n": 0}

    def flaky(trial: optuna.Trial) -> float:
        calls["n"] += 1
        if calls["n"] == 2:
            raise TrialFailed("cannot read image x.jpg: truncated")
        if calls["n"] == 3:
            raise MemoryError("host out of memory")
        return fake_objective(trial)

    summary = st.optimize(study, config, flaky, progress=False)
    assert summary.ran == 8 and summary.failed == 2 and summary.complete == 6
    reasons = [r["note"] for r in st.trial_rows(study) if r["state"] == "FAIL"]
    assert any("truncated" in r for r in reasons) and any("out of memory" in r for r in reasons)


def test_a_user_error_in_a_trial_stops_the_run_and_puts_the_trial_back(
    tiny_data: Path, storage: str, space_file: str
) -> None:
    study, config = _create(tiny_data, storage, space_file, max_retries=0)
    calls = {"n": 0}

    def misconfigured(trial: optuna.Trial) -> float:
        calls["n"] += 1
        if calls["n"] == 2:
            raise UserError("weights file not found: w.h5")
        return fake_objective(trial)

    with pytest.raises(UserError, match="weights file not found"):
        st.optimize(study, config, misconfigured, progress=False)
    assert calls["n"] == 2  # the run stopped at the error
    stopped = study.trials[1]
    assert stopped.state == TrialState.FAIL and "weights file" in stopped.user_attrs["fail_reason"]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 7  # 6 untouched grid points and the stopped one again
    (again,) = [t for t in waiting if t.user_attrs.get("retry_of") == 1]
    assert again.user_attrs["retries"] == 0  # not a retry: max_retries=0 still put it back
    assert again.system_attrs["fixed_params"] == stopped.system_attrs["fixed_params"]
    # once fixed, the run finishes the grid, every point exactly once
    summary = st.optimize(study, config, fake_objective, progress=False)
    assert summary.ran == 7 and summary.complete == 7
    assert st.grid_status(study, config)["complete_once"] == 8


def test_a_bug_in_the_objective_is_raised_not_hidden(
    tiny_data: Path, storage: str, space_file: str
) -> None:
    study, config = _create(tiny_data, storage, space_file)

    def broken(trial: optuna.Trial) -> float:
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        st.optimize(study, config, broken, progress=False)
    assert study.trials[0].state == TrialState.FAIL


def test_tpe_studies_stop_at_their_budget(tiny_data: Path, storage: str, tmp_path: Path) -> None:
    path = tmp_path / "tpe.toml"
    path.write_text(
        'sampler = "tpe"\nn_trials = 6\n[params]\nimage_size = [32, 40]\nbatch_size = [4, 8]\n'
        "learning_rate = { low = 1e-4, high = 1e-2, log = true }\n"
    )
    study, config = _create(tiny_data, storage, str(path))
    assert config.sampler_args["seed"] == 0

    def objective(trial: optuna.Trial) -> float:
        return config.space.suggest(trial)["learning_rate"]

    assert st.optimize(study, config, objective, n_trials=4, progress=False).ran == 4
    assert st.optimize(study, config, objective, progress=False).ran == 2
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6


# ----------------------------------------------------------------- real processes, real kills

WORKER = textwrap.dedent(
    """
    import sys, time
    from clothopt import study as st
    study, config = st.load(sys.argv[1], sys.argv[2])
    def objective(trial):
        p = config.space.suggest(trial)
        time.sleep(float(sys.argv[3]))
        trial.set_user_attr("worker", sys.argv[4])
        return p["image_size"] / 100 + p["batch_size"] / 1000 + p["learning_rate"]
    st.optimize(study, config, objective, progress=False)
    """
)


def _worker(name: str, storage: str, sleep: float, tag: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, name, storage, str(sleep), tag],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def run_kill_rounds(study_name: str, storage: str, rounds: int, seed: int) -> int:
    """Kill a worker at a random moment, start another, repeat; return the kills made."""
    import random

    rng = random.Random(seed)
    kills = 0
    for _ in range(rounds):
        proc = _worker(study_name, storage, 0.3, "victim")
        time.sleep(rng.uniform(0.5, 2.5))  # start-up, inside a trial, or between two
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
    return kills


def test_sigkill_at_random_moments_then_resume_completes_each_point_once(
    tiny_data: Path, any_storage: str, space_file: str
) -> None:
    study, config = _create(tiny_data, any_storage, space_file)
    kills = run_kill_rounds("s", any_storage, rounds=4, seed=1)
    final = _worker("s", any_storage, 0.0, "finisher")
    assert final.wait(timeout=120) == 0, final.stderr.read().decode() if final.stderr else ""
    study, config = st.load("s", any_storage)
    grid = st.grid_status(study, config)
    assert grid["complete_once"] == 8, grid
    assert not grid["duplicates"]
    assert kills >= 1


def test_three_workers_share_one_grid_without_lock_errors(
    tiny_data: Path, any_storage: str, space_file: str
) -> None:
    _create(tiny_data, any_storage, space_file)
    procs = [_worker("s", any_storage, 0.2, f"w{i}") for i in range(3)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    study, config = st.load("s", any_storage)
    grid = st.grid_status(study, config)
    assert grid["complete_once"] == 8 and not grid["duplicates"]
    assert (
        len({t.user_attrs["worker"] for t in study.get_trials(states=(TrialState.COMPLETE,))}) > 1
    )


@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_and_ctrl_c_put_the_trial_back(
    tiny_data: Path, storage: str, space_file: str, sig: str, code: int
) -> None:
    import signal

    _create(tiny_data, storage, space_file)
    # run through the CLI's own handling so the exit code is what a user sees
    cli = textwrap.dedent(
        f"""
        import sys, time
        import clothopt.objective as ob
        class Slow:
            def __init__(self, *a, **k):
                pass
            def __call__(self, trial):
                time.sleep(600)  # far past the wait below: only the signal can end it in time
        ob.Objective = Slow
        from clothopt.cli import main
        sys.exit(main(["study", "optimize", "s", "--storage", {storage!r}, "--quiet"]))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", cli], stderr=subprocess.PIPE, preexec_fn=sigint_default
    )
    study, _ = st.load("s", storage)
    _wait_for(
        lambda: any(
            t.state == TrialState.RUNNING and engine.OWNER_ATTR in t.system_attrs
            for t in study.get_trials()
        )
    )
    proc.send_signal(getattr(signal, sig))
    assert proc.wait(timeout=60) == code
    trials = study.get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    (stopped,) = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped.user_attrs["fail_reason"] in ("terminated", "interrupted")
    assert len([t for t in trials if t.state == TrialState.WAITING]) == 8  # 7 + its copy


def test_three_workers_one_killed_mid_trial_still_complete_each_point_once(
    tiny_data: Path, any_storage: str, space_file: str
) -> None:
    _create(tiny_data, any_storage, space_file)
    procs = [_worker("s", any_storage, 0.5, f"w{i}") for i in range(3)]
    victim = procs[1]
    study, config = st.load("s", any_storage)

    def victim_is_inside_a_trial() -> bool:
        return any(
            t.state == TrialState.RUNNING
            and t.system_attrs.get(engine.OWNER_ATTR, {}).get("pid") == victim.pid
            for t in study.get_trials()
        )

    _wait_for(victim_is_inside_a_trial)
    victim.kill()
    assert victim.wait() != 0
    for proc in (procs[0], procs[2]):
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    grid = st.grid_status(study, config)
    assert grid["complete_once"] == 8 and not grid["duplicates"], grid
    (lost,) = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert lost.system_attrs[engine.OWNER_ATTR]["pid"] == victim.pid
    assert not [
        t for t in study.get_trials() if t.state in (TrialState.RUNNING, TrialState.WAITING)
    ]


POPPER = textwrap.dedent(
    """
    import sys
    from clothopt import study as st
    from clothopt.engine.queue import pop_waiting
    study, _ = st.load(sys.argv[1], sys.argv[2])
    got = []
    while (trial := pop_waiting(study)) is not None:
        got.append(trial.number)
    print(" ".join(map(str, got)))
    """
)


def test_concurrent_pops_never_hand_out_a_trial_twice(
    tiny_data: Path, any_storage: str, tmp_path: Path
) -> None:
    path = tmp_path / "wide.toml"
    path.write_text(
        "[params]\nimage_size = [32, 40, 48, 56, 64]\nbatch_size = [2, 4, 8, 16]\n"
        "learning_rate = [0.1, 0.01, 0.001]\n"
    )
    _create(tiny_data, any_storage, str(path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", POPPER, "s", any_storage],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    popped: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        popped += [int(n) for n in out.split()]
    assert sorted(popped) == list(range(60)), "each trial popped by exactly one worker"


def _orphan(study: optuna.Study, reason: str | None) -> int:
    """What a worker killed between failing a dead trial and enqueueing its copy leaves."""
    number = _leave_running(study, None)
    trial_id = engine.trial_id(study.trials[number])
    if reason is not None:
        engine.storage_of(study).set_trial_user_attr(trial_id, "fail_reason", reason)
    engine.storage_of(study).set_trial_state_values(trial_id, state=TrialState.FAIL)
    return number


def test_an_orphaned_failure_is_requeued_and_a_fault_is_not(
    tiny_data: Path, storage: str, space_file: str
) -> None:
    study, config = _create(tiny_data, storage, space_file)
    died = _orphan(study, engine.DIED)
    stale = _orphan(study, None)  # failed by Optuna's heartbeat check, callback never ran
    fault = _orphan(study, "cannot read image x.jpg")
    st.optimize(study, config, fake_objective, progress=False)
    copies = {t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs}
    assert copies == {died, stale}
    grid = st.grid_status(study, config)
    assert grid["complete_once"] == 7 and not grid["duplicates"]
    assert grid["missing"] == [
        str(tuple(study.trials[fault].system_attrs["fixed_params"].values()))
    ]


SWEEPER = textwrap.dedent(
    """
    import sys
    from clothopt import study as st
    from clothopt import engine
    study, _ = st.load(sys.argv[1], sys.argv[2])
    engine.recover(study)
    """
)


def test_concurrent_sweeps_enqueue_one_copy_per_orphan(
    tiny_data: Path, any_storage: str, space_file: str
) -> None:
    study, _ = _create(tiny_data, any_storage, space_file)
    orphans = {_orphan(study, engine.DIED) for _ in range(3)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SWEEPER, "s", any_storage], stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    copies = [t.user_attrs["retry_of"] for t in study.get_trials() if "retry_of" in t.user_attrs]
    assert sorted(copies) == sorted(orphans)


def test_configs_of_earlier_versions_load_without_retired_keys(
    tiny_data: Path, storage: str, space_file: str
) -> None:
    from clothopt.config import CONFIG_ATTR, StudyConfig

    study, config = _create(tiny_data, storage, space_file, max_retries=5)
    old = config.to_dict() | {"heartbeat_interval": 10, "grace_period": 30}
    assert StudyConfig.from_dict(old) == config
    with pytest.raises(InvalidArgument, match=r"unknown config key.*heartbeat_intervl"):
        StudyConfig.from_dict(config.to_dict() | {"heartbeat_intervl": 10})
    # a study stored before the engine read max_retries from its own attribute
    before = optuna.create_study(study_name="old", storage=engine.open_storage(storage))
    before.set_user_attr(CONFIG_ATTR, json.dumps(old))
    study, loaded = st.load("old", storage)
    assert loaded == config and engine.max_retries(study) == 5


def test_a_grid_with_conditional_parameters_completes_each_valid_point_once(
    tiny_data: Path, storage: str, tmp_path: Path
) -> None:
    space = tmp_path / "cond.toml"
    space.write_text(
        "[params]\nimage_size = [32]\nbatch_size = [8]\nlearning_rate = [0.01, 0.001]\n"
        "hidden_layers = [0, 1]\n"
        "dropout = { choices = [0.0, 0.5], when = { hidden_layers = [1] } }\n"
    )
    study, config = _create(tiny_data, storage, str(space))
    assert len(study.trials) == 2 * (1 + 2)  # dropout only where there is a hidden layer

    def objective(trial: optuna.Trial) -> float:
        p = config.space.suggest(trial)  # type: ignore[attr-defined]
        return p["learning_rate"] + p.get("dropout", 0.0)

    assert st.optimize(study, config, objective, progress=False).ran == 6  # type: ignore[arg-type]
    study, config = st.load("s", storage)
    grid = st.grid_status(study, config)
    assert grid == {"points": 6, "complete_once": 6, "duplicates": {}, "missing": []}
    # the learning rate is recorded as a log-scale float, as the space's sampler says
    assert all(t.distributions["learning_rate"].log for t in study.trials)
    rows = st.trial_rows(study)
    # best first: dropout 0.5 at each learning rate
    assert [(r["learning_rate"], r["val_f1"]) for r in rows][:2] == [(0.01, 0.51), (0.001, 0.501)]


def test_sqlite_commits_in_wal_mode_and_transactions_stay_immediate(storage: str) -> None:
    """Optuna commits each parameter and attribute on its own: on SQLite they append to the
    write-ahead log (``synchronous=NORMAL``: no fsync per commit); every transaction still
    takes the write lock at BEGIN (the queue's atomic pop)."""
    from sqlalchemy import event

    from clothopt.engine.storage import set_user_attrs, sql_engine_of

    study = optuna.create_study(storage=engine.open_storage(storage, create=True))
    sql = sql_engine_of(study)
    statements: list[str] = []
    event.listen(sql, "before_cursor_execute", lambda c, cur, stmt, *a: statements.append(stmt))
    with sql.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    trial = study.ask()
    mutable = {"v": [1]}
    statements.clear()
    set_user_attrs(trial, {"m": mutable, "n": 2})
    mutable["v"].append(2)  # stored as it was when set
    assert statements.count("BEGIN IMMEDIATE") == 2  # one transaction per attribute
    assert study.trials[-1].user_attrs == {"m": {"v": [1]}, "n": 2}
    # another connection (another worker) sees the commits at once
    again = optuna.load_study(study_name=study.study_name, storage=engine.open_storage(storage))
    assert again.trials[-1].user_attrs == {"m": {"v": [1]}, "n": 2}
