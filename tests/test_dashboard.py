"""The dashboard: a real optuna-dashboard server on a study built and run here, read over HTTP.

One small study (2 trials of mobilenet_025 on 32 px synthetic images) is built per module and
served on a free port; the tests read what the dashboard's own JSON API and its web page show.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from clothopt import paths
from clothopt import study as st
from clothopt.cli import _build_parser, main
from clothopt.dashboard import (
    REPORT_NAME,
    DashboardServer,
    artifact_dir,
    artifact_store,
    attach_files,
    describe_study,
    upload_validation_report,
)
from clothopt.data import open_dataset
from clothopt.engine import storage_of, study_id
from clothopt.errors import InvalidArgument, NotFound
from clothopt.features import FeatureCache
from clothopt.metrics import classification_metrics
from clothopt.objective import Objective
from conftest import chromium, keep_artifact, make_dataset, require_chromium, sigint_default

SPACE = """
description = "dashboard test grid"
sampler = "grid"
epochs = 1
[params]
image_size = [32]
batch_size = [8]
learning_rate = [0.01, 0.001]
"""


@dataclass
class Built:
    root: Path
    data: Path
    space: Path
    storage: str
    study: optuna.Study
    attached: dict[str, bytes]  # file name -> content, attached to the best trial
    study_file: bytes  # attached to the study itself


def _run(name: str, data: Path, storage: str, n_trials: int | None = None) -> None:
    study, config = st.load(name, storage)
    cache = FeatureCache(config.cache_dir, progress=False)
    st.optimize(
        study,
        config,
        Objective(config, open_dataset(data), cache),
        n_trials,
        progress=False,
        callbacks=[upload_validation_report],  # what `clothopt study optimize` registers
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("dash")
    data = make_dataset(root / "data")
    space = root / "space.toml"
    space.write_text(SPACE)
    storage = f"sqlite:///{root / 'studies' / 'clothopt.db'}"
    st.create(
        backbone="mobilenet_025",
        space=str(space),
        name="dash",
        storage=storage,
        data=str(data),
        weights="none",
        command="clothopt study create --backbone mobilenet_025 --name dash",
        on_create=describe_study,  # what `clothopt study create` passes
    )
    _run("dash", data, storage)
    study, _ = st.load("dash", storage)
    # what study finalize attaches to the finished best trial, and a file for the study
    files = {
        "report.json": b'{"test_f1_macro": 0.5}\n',
        "confusion_matrix.html": b"<html><body>matrix</body></html>\n",
        "model.keras": os.urandom(2048),
    }
    for name, content in files.items():
        (root / name).write_bytes(content)
    attach_files(study, study.best_trial.number, storage, [root / n for n in files])
    (root / "notes.txt").write_bytes(b"study-level file\n")
    attach_files(study, None, storage, [root / "notes.txt"])
    return Built(root, data, space, storage, study, files, b"study-level file\n")


@pytest.fixture(scope="module")
def server(built: Built) -> Iterator[DashboardServer]:
    with DashboardServer(built.storage, port=0).running() as srv:
        yield srv


def _get(srv: DashboardServer, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def _json(srv: DashboardServer, path: str) -> Any:
    status, _, body = _get(srv, path)
    assert status == 200, body[:300]
    return json.loads(body)


def _study_id(srv: DashboardServer, name: str) -> int:
    listed = _json(srv, "/api/studies")["study_summaries"]
    return next(s["study_id"] for s in listed if s["study_name"] == name)


def _attrs(trial: dict[str, Any]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


def _wait_for(predicate: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


# --------------------------------------------------------------------------- HTTP API


def test_the_study_is_listed_with_what_it_is(built: Built, server: DashboardServer) -> None:
    listed = _json(server, "/api/studies")["study_summaries"]
    (summary,) = [s for s in listed if s["study_name"] == "dash"]
    assert summary["directions"] == ["maximize"]
    attrs = {a["key"]: a["value"] for a in summary["user_attrs"]}
    assert attrs["backbone"] == "mobilenet_025"
    assert attrs["data_fingerprint"] == built.study.user_attrs["data_fingerprint"]


def test_trials_show_params_value_and_every_recorded_figure(
    built: Built, server: DashboardServer
) -> None:
    detail = _json(server, f"/api/studies/{_study_id(server, 'dash')}?after=0")
    trials = {t["number"]: t for t in detail["trials"]}
    assert sorted(trials) == [0, 1]
    stored = {t.number: t for t in built.study.get_trials()}
    for number, trial in trials.items():
        assert trial["state"] == "Complete"
        params = {p["name"]: p["param_external_value"] for p in trial["params"]}
        assert params == {k: str(v) for k, v in stored[number].params.items()}
        assert trial["values"] == [stored[number].value]
        attrs = _attrs(trial)
        for key in (
            "val_precision_macro",
            "val_recall_macro",
            "val_f1_macro",
            "val_accuracy",
            "val_f1_per_class",
            "extract_seconds",
            "train_seconds",
            "total_params",
            "trainable_params",
            "epoch_loss",
            "loss_diverged",
            "path",
            "seed",
        ):
            assert key in attrs, key
        assert float(attrs["val_f1_macro"]) == stored[number].value
        assert set(json.loads(attrs["val_f1_per_class"])) == {"hat", "pants", "shoes"}
    assert [t["number"] for t in detail["best_trials"]] == [built.study.best_trial.number]
    assert detail["objective_names"] == ["val_f1_macro"]
    # ?after=N returns only the trials after the first N: what the page polls for
    later = _json(server, f"/api/studies/{_study_id(server, 'dash')}?after=1")["trials"]
    assert [t["number"] for t in later] == [1]


def test_the_note_says_what_the_study_is(built: Built, server: DashboardServer) -> None:
    from optuna_dashboard import get_note

    note = _json(server, f"/api/studies/{_study_id(server, 'dash')}")["note"]
    body = note["body"]
    assert note["version"] >= 1 and body == get_note(built.study)
    fingerprint = built.study.user_attrs["data_fingerprint"]
    for text in (
        "# dash",
        "| Backbone | `mobilenet_025` |",
        "| Weights | `none` |",
        f"| Data set | `{built.data.absolute()}` |",
        f"| Data fingerprint | `{fingerprint}` |",
        "`hat, pants, shoes`",
        "| learning_rate | `0.01, 0.001` |",
        "## Sampler: grid",
        "| seed | `0` |",
        f"| optuna | `{optuna.__version__}` |",
        "clothopt study create --backbone mobilenet_025 --name dash",
        "dashboard test grid",
    ):
        assert text in body, text


def test_each_trial_report_downloads_and_matches_the_trial(
    built: Built, server: DashboardServer
) -> None:
    study_id = _study_id(server, "dash")
    trials = _json(server, f"/api/studies/{study_id}?after=0")["trials"]
    n_val = len(open_dataset(built.data)["validation"])
    for trial in trials:
        (meta,) = [a for a in trial["artifacts"] if a["filename"] == REPORT_NAME]
        status, ctype, body = _get(
            server, f"/artifacts/{study_id}/{trial['trial_id']}/{meta['artifact_id']}"
        )
        assert status == 200 and ctype.startswith("application/json")
        report = json.loads(body)
        assert report["trial"] == trial["number"] and report["study"] == "dash"
        assert report["classes"] == ["hat", "pants", "shoes"]
        assert report["f1_macro"] == trial["values"][0]
        per_class = report["per_class"]
        assert sum(c["support"] for c in per_class.values()) == n_val
        f1 = json.loads(_attrs(trial)["val_f1_per_class"])
        assert {c: v["f1"] for c, v in per_class.items()} == f1
        matrix = report["confusion_matrix"]
        assert len(matrix) == 3 and sum(map(sum, matrix)) == n_val
        # the matrix's rows are the true classes: row sums are the supports
        assert [sum(row) for row in matrix] == [per_class[c]["support"] for c in report["classes"]]


def test_files_attached_to_a_finished_trial_and_the_study_download(
    built: Built, server: DashboardServer
) -> None:
    study_id = _study_id(server, "dash")
    detail = _json(server, f"/api/studies/{study_id}?after=0")
    best = next(t for t in detail["trials"] if t["number"] == built.study.best_trial.number)
    metas = {a["filename"]: a for a in best["artifacts"]}
    assert set(metas) == {REPORT_NAME, *built.attached}
    for name, content in built.attached.items():
        status, ctype, body = _get(
            server, f"/artifacts/{study_id}/{best['trial_id']}/{metas[name]['artifact_id']}"
        )
        assert status == 200 and body == content, name
        assert ctype == metas[name]["mimetype"]
    assert metas["report.json"]["mimetype"] == "application/json"
    assert metas["confusion_matrix.html"]["mimetype"] == "text/html"
    (study_meta,) = detail["artifacts"]
    assert study_meta["filename"] == "notes.txt"
    status, _, body = _get(server, f"/artifacts/{study_id}/{study_meta['artifact_id']}")
    assert status == 200 and body == built.study_file
    # the other trial carries only its own report
    other = next(t for t in detail["trials"] if t["number"] != best["number"])
    assert [a["filename"] for a in other["artifacts"]] == [REPORT_NAME]


def test_attach_files_checks_everything_before_uploading(built: Built) -> None:
    before = len(list(artifact_dir(built.storage).iterdir()))
    with pytest.raises(NotFound, match="no such file"):
        attach_files(built.study, 0, built.storage, [built.root / "report.json", "/no/such"])
    with pytest.raises(NotFound, match="has no trial 7"):
        attach_files(built.study, 7, built.storage, [built.root / "report.json"])
    assert len(list(artifact_dir(built.storage).iterdir())) == before


# --------------------------------------------------------------------------- live


def test_trials_appear_and_update_while_the_study_runs(
    built: Built, server: DashboardServer
) -> None:
    st.create(
        backbone="mobilenet_025",
        space=str(built.space),
        name="live",
        storage=built.storage,
        data=str(built.data),
        weights="none",
    )
    study_id = _study_id(server, "live")
    trials = _json(server, f"/api/studies/{study_id}?after=0")["trials"]
    assert [t["state"] for t in trials] == ["Waiting", "Waiting"]

    _run("live", built.data, built.storage, n_trials=1)  # meanwhile the server keeps serving

    def first_complete() -> dict[str, Any] | None:
        t = _json(server, f"/api/studies/{study_id}?after=0")["trials"][0]
        return t if t["state"] == "Complete" else None

    # the dashboard caches a study's trials for 2 s: the change shows on a request after that
    done = _wait_for(first_complete, timeout=15)
    assert done is not None, "trial 0 never showed as complete"
    assert "val_f1_macro" in _attrs(done)
    assert [a["filename"] for a in done["artifacts"]] == [REPORT_NAME]
    study, _ = st.load("live", built.storage)
    study.enqueue_trial({"image_size": 32, "batch_size": 8, "learning_rate": 0.01})
    grown = _wait_for(
        lambda: len(_json(server, f"/api/studies/{study_id}?after=0")["trials"]) == 3, 15
    )
    assert grown, "an enqueued trial never appeared"


# --------------------------------------------------------------------------- artifacts


def test_artifact_folder_follows_the_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOTHOPT_ARTIFACTS", raising=False)
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "x" / "clothopt.db"
    assert artifact_dir(f"sqlite:///{db}") == tmp_path / "x" / "artifacts"
    assert artifact_dir(f"sqlite:///{db}") == paths.study_dir(f"sqlite:///{db}", "s").parents[1] / (
        "artifacts"
    )
    assert artifact_dir("postgresql+psycopg://u:p@h/db") == tmp_path / "studies" / "artifacts"
    assert artifact_dir(None) == tmp_path / "studies" / "artifacts"
    monkeypatch.setenv("CLOTHOPT_ARTIFACTS", str(tmp_path / "env"))
    assert artifact_dir(f"sqlite:///{db}") == tmp_path / "env"
    assert artifact_dir(f"sqlite:///{db}", tmp_path / "flag") == tmp_path / "flag"


def test_artifact_writes_are_atomic_and_stay_in_their_folder(tmp_path: Path) -> None:
    import io

    store = artifact_store(tmp_path / "a")
    store.write("abc", io.BytesIO(b"x" * 100))
    assert (tmp_path / "a" / "abc").read_bytes() == b"x" * 100
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["abc"]  # no temporary left

    class Broken(io.BytesIO):
        def read(self, *args: Any) -> bytes:
            raise OSError("disk went away")

    with pytest.raises(OSError, match="went away"):
        store.write("abc", Broken())
    assert (tmp_path / "a" / "abc").read_bytes() == b"x" * 100  # the old one, whole
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["abc"]
    for bad in ("../escape", "/etc/escape", "a/../../escape"):
        with pytest.raises(InvalidArgument, match="bad artifact id"):
            store.write(bad, io.BytesIO(b"no"))
    assert not (tmp_path / "escape").exists()


def _metrics() -> dict[str, Any]:
    import numpy as np

    return classification_metrics(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2]), ["a", "b", "c"])


def _finished_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """A COMPLETE trial with the metrics the objective records (as Objective does)."""
    m = _metrics()
    trial = study.ask()
    for key, value in {
        "val_precision_macro": m["precision_macro"],
        "val_recall_macro": m["recall_macro"],
        "val_f1_macro": m["f1_macro"],
        "val_accuracy": m["accuracy"],
        "val_per_class": m["per_class"],
        "val_confusion_matrix": m["confusion_matrix"],
    }.items():
        trial.set_user_attr(key, value)
    study.tell(trial, m["f1_macro"])
    return study.trials[-1]


def test_a_failed_report_upload_keeps_the_trial(
    storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("CLOTHOPT_ARTIFACTS", str(tmp_path / "file" / "artifacts"))
    (tmp_path / "studies").mkdir()
    study = optuna.create_study(storage=storage)
    frozen = _finished_trial(study)
    with caplog.at_level("WARNING", logger="clothopt.dashboard"):
        assert upload_validation_report(study, frozen) is None
    assert "artifact folder" in caplog.text
    assert study.trials[0].state.name == "COMPLETE"
    attrs = storage_of(study).get_study_system_attrs(study_id(study))
    assert not any(k.startswith("dashboard:artifacts:") for k in attrs)


def test_the_report_is_rebuilt_from_the_trial_and_listed_under_it(
    storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOTHOPT_ARTIFACTS", str(tmp_path / "artifacts"))
    (tmp_path / "studies").mkdir()
    study = optuna.create_study(storage=storage, study_name="r")
    frozen = _finished_trial(study)
    artifact_id = upload_validation_report(study, frozen)
    assert artifact_id is not None
    report = json.loads((tmp_path / "artifacts" / artifact_id).read_text())
    assert report == {
        **{k: v for k, v in _metrics().items()},
        "study": "r",
        "trial": 0,
        "params": {},
        "split": "validation",
        "classes": ["a", "b", "c"],
    }
    # a failed or pruned trial has no metrics: nothing to upload
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert upload_validation_report(study, study.trials[-1]) is None


def test_no_report_for_a_study_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOTHOPT_ARTIFACTS", raising=False)
    study = optuna.create_study()
    assert upload_validation_report(study, _finished_trial(study)) is None


def test_create_is_all_or_nothing_when_the_note_fails(
    tiny_data: Path, storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("note storage failed")

    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    with pytest.raises(RuntimeError, match="note storage failed"):
        st.create(
            backbone="mobilenet_025",
            space=str(space),
            storage=storage,
            data=str(tiny_data),
            weights="none",
            on_create=broken,
        )
    assert st.list_studies(storage) == []


# --------------------------------------------------------------------------- command


def test_the_command_binds_to_localhost_by_default() -> None:
    args = _build_parser().parse_args(["dashboard"])
    assert (args.host, args.port) == ("127.0.0.1", 8080)


@pytest.fixture
def never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that should fail must not start serving (and hang the test run)."""

    def fail(self: DashboardServer) -> None:
        raise AssertionError("the dashboard started serving")

    monkeypatch.setattr(DashboardServer, "serve_forever", fail)


@pytest.mark.usefixtures("never_serve")
def test_a_busy_port_is_one_line(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["dashboard", "--storage", built.storage, "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"clothopt: error: port {port} on 127.0.0.1 is in use (pick another --port)\n"


@pytest.mark.usefixtures("never_serve")
def test_no_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["dashboard", "--storage", url, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clothopt: error: no studies at") and err.count("\n") == 1
    assert not (tmp_path / "none.db").exists()  # looking does not create an empty database


def test_the_command_serves_warns_when_exposed_and_stops_on_ctrl_c(built: Built) -> None:
    cmd = [sys.executable, "-m", "clothopt", "dashboard", "--storage", built.storage]
    proc = subprocess.Popen(
        [*cmd, "--host", "0.0.0.0", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    try:
        assert proc.stderr is not None
        # logged (stderr): the warning first, then where it serves
        lines = [proc.stderr.readline() for _ in range(4)]
        assert lines[0].startswith("clothopt: warning: the dashboard has no authentication")
        assert lines[1] == f"optuna-dashboard on {built.storage}\n"
        assert lines[2] == f"artifacts in {artifact_dir(built.storage)}\n"
        assert lines[3].startswith("open http://") and "/dashboard/" in lines[3]
        port = int(lines[3].split("://")[1].split("/")[0].rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as r:
            names = [s["study_name"] for s in json.load(r)["study_summaries"]]
        assert "dash" in names
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out == ""  # stdout is for results; the server has none
    assert err.endswith("dashboard stopped\n")
    assert "Traceback" not in err


# --------------------------------------------------------------------------- browser


def _page_text(url: str, profile: Path, expect: list[str]) -> str:
    """The rendered page's text; the budget grows if the page had not rendered yet."""
    import re

    text = ""
    for budget in (10_000, 20_000, 40_000):
        dom = chromium([f"--virtual-time-budget={budget}", "--dump-dom", url], profile).stdout
        dom = re.sub(r"<(style|script|svg)\b.*?</\1>", " ", dom, flags=re.S)
        text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
        if all(e in text for e in expect):
            break
    return text


@pytest.mark.browser
@pytest.mark.filterwarnings("ignore:Target and region quantiles")  # the page's importances
def test_chromium_shows_the_study_its_trials_and_note(
    built: Built, server: DashboardServer, tmp_path: Path
) -> None:
    require_chromium()
    study_id = _study_id(server, "dash")
    base = f"http://127.0.0.1:{server.port}/dashboard/studies/{study_id}"
    best = built.study.best_trial

    study_page = _page_text(base, tmp_path / "profile", ["Best Trial"])
    assert "dash (id=" in study_page
    assert f"Best Trial (number={best.number})" in study_page
    assert f"learning_rate: {best.params['learning_rate']}" in study_page

    trials_page = _page_text(f"{base}/trials", tmp_path / "profile", ["Trial 1"])
    assert "2 Trials" in trials_page
    assert "Trial 0" in trials_page and "Trial 1" in trials_page
    assert "val_f1_macro" in trials_page and REPORT_NAME in trials_page

    note_page = _page_text(f"{base}/note", tmp_path / "profile", ["Data fingerprint"])
    assert "mobilenet_025" in note_page
    assert built.study.user_attrs["data_fingerprint"] in note_page

    for name, url in (("dashboard-study.png", base), ("dashboard-trials.png", f"{base}/trials")):
        shot = tmp_path / name
        chromium(["--virtual-time-budget=10000", f"--screenshot={shot}", url], tmp_path / "profile")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        keep_artifact(shot)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_two_workers_on_postgres_are_watched_live(
    postgres_storage: str, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOTHOPT_ARTIFACTS", str(tmp_path / "shared-artifacts"))
    space = tmp_path / "space.toml"
    space.write_text(SPACE.replace("batch_size = [8]", "batch_size = [4, 8]"))
    st.create(
        backbone="mobilenet_025",
        space=str(space),
        name="pg",
        storage=postgres_storage,
        data=str(tiny_data),
        weights="none",
        cache_dir=str(tmp_path / "features"),
    )
    cmd = [sys.executable, "-m", "clothopt", "study", "optimize", "pg", "--quiet"]
    with DashboardServer(postgres_storage, port=0).running() as srv:
        study_id = _study_id(srv, "pg")
        workers = [
            subprocess.Popen(
                [*cmd, "--storage", postgres_storage],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=os.environ | {"CLOTHOPT_ARTIFACTS": str(tmp_path / "shared-artifacts")},
            )
            for _ in range(2)
        ]
        seen: set[tuple[int, str]] = set()

        def all_complete() -> bool:
            trials = _json(srv, f"/api/studies/{study_id}?after=0")["trials"]
            seen.update((t["number"], t["state"]) for t in trials)
            return len(trials) == 4 and all(t["state"] == "Complete" for t in trials)

        try:
            assert _wait_for(all_complete, timeout=300), sorted(seen)
        finally:
            for w in workers:
                w.wait(timeout=60)
        assert [w.returncode for w in workers] == [0, 0], [w.stderr.read() for w in workers]
        # the page saw them change: queued (and running) before complete
        assert any(state != "Complete" for _, state in seen)
        trials = _json(srv, f"/api/studies/{study_id}?after=0")["trials"]
        for t in trials:
            (meta,) = [a for a in t["artifacts"] if a["filename"] == REPORT_NAME]
            status, _, body = _get(
                srv, f"/artifacts/{study_id}/{t['trial_id']}/{meta['artifact_id']}"
            )
            assert status == 200 and json.loads(body)["trial"] == t["number"]
