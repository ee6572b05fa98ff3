"""clothopt.store: one store for every machine, as a folder and as S3 (a local S3-compatible
server: bash .ci/s3.sh starts one and prints the $CLOTHOPT_TEST_S3 these tests read)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import make_dataset, run_cli

from clothopt.errors import DataError, InvalidArgument, NotFound, StorageUnavailable
from clothopt.store import Store, check_store_url, open_store
from conftest import SECRET


@pytest.fixture(params=["folder", pytest.param("s3", marks=pytest.mark.s3)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "folder":
        return f"file://{tmp_path / 'shared store'}"
    bucket = request.getfixturevalue("s3_env")
    return f"s3://{bucket}/team/studies"


# --------------------------------------------------------------------------- URLs


def test_store_urls_are_normalised_and_checked(tmp_path: Path) -> None:
    assert check_store_url(f"file://{tmp_path}/a/../b/") == f"file://{tmp_path}/a/../b"
    assert check_store_url("s3://my-bucket/") == "s3://my-bucket"
    assert check_store_url("s3://my-bucket//x/y/") == "s3://my-bucket/x/y"
    for bad in ("", "/plain/path", "file://relative/x", "http://host/x", "s3://B/x", "s3://a"):
        with pytest.raises(InvalidArgument):
            check_store_url(bad)


def test_a_store_url_with_credentials_is_refused_without_echoing_them() -> None:
    for url in (f"s3://AKIAXX:{SECRET}@bucket/p", f"s3://{SECRET}@bucket", f"file://u:{SECRET}@/x"):
        with pytest.raises(InvalidArgument) as err:
            check_store_url(url)
        assert SECRET not in str(err.value)


# --------------------------------------------------------------------------- put / get


def test_put_then_get_from_another_cache_is_the_same_file(store_url: str, tmp_path: Path) -> None:
    src = tmp_path / "entry.npz"
    src.write_bytes(os.urandom(3 << 20))  # past one read chunk
    writer = Store.open(store_url, tmp_path / "host-a")
    sha = writer.put_file("features/mobilenet/300.npz", src)
    assert writer.checksum("features/mobilenet/300.npz") == sha

    reader = Store.open(store_url, tmp_path / "host-b")  # another machine: an empty cache
    got = reader.get_file("features/mobilenet/300.npz")
    assert got == tmp_path / "host-b" / "features/mobilenet/300.npz"
    assert got.read_bytes() == src.read_bytes()
    # into a path of the caller's, and checked against a checksum the caller recorded
    dest = reader.get_file("features/mobilenet/300.npz", tmp_path / "here.npz", sha256=sha)
    assert dest.read_bytes() == src.read_bytes()
    assert not reader.exists("features/other.npz")
    with pytest.raises(NotFound):
        reader.get_file("features/other.npz")


def test_a_changed_object_is_refused_and_nothing_is_written(store_url: str, tmp_path: Path) -> None:
    import io

    src = tmp_path / "model.keras"
    src.write_bytes(b"the model" * 1000)
    store = Store.open(store_url, tmp_path / "cache")
    sha = store.put_file("final/model.keras", src)
    store.artifacts.write("final/model.keras", io.BytesIO(b"torn"))  # bytes and sum disagree
    with pytest.raises(DataError, match="checksum"):
        store.get_file("final/model.keras")
    assert not (tmp_path / "cache" / "final").exists() or not any(
        (tmp_path / "cache" / "final").iterdir()
    )  # no file, no temporary left behind
    # a good copy cached earlier stays good: fetched again only when it no longer matches
    store.put_file("final/model.keras", src)
    cached = store.get_file("final/model.keras", sha256=sha)
    cached.write_bytes(b"changed locally")
    assert store.get_file("final/model.keras", sha256=sha).read_bytes() == src.read_bytes()


def test_keys_cannot_leave_the_store(tmp_path: Path) -> None:
    store = Store.open(f"file://{tmp_path / 's'}", tmp_path / "c")
    for key in ("../x", "/abs", "a/../../x", "a//b", ".hidden", "x.sha256", ""):
        with pytest.raises(InvalidArgument):
            store.check_key(key)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=5000), name=st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True))
def test_any_bytes_round_trip_through_a_folder_store(
    tmp_path: Path, body: bytes, name: str
) -> None:
    root = tmp_path / uuid.uuid4().hex
    src = root / "in"
    src.parent.mkdir(parents=True)
    src.write_bytes(body)
    store = Store.open(f"file://{root / 'store'}", root / "cache")
    store.put_file(f"k/{name}", src)
    assert store.get_file(f"k/{name}").read_bytes() == body


def test_open_store_is_an_optuna_artifact_store(store_url: str) -> None:
    import io

    from optuna.artifacts.exceptions import ArtifactNotFound

    store = open_store(store_url)
    store.write("a/b", io.BytesIO(b"x"))
    assert store.open_reader("a/b").read() == b"x"
    store.remove("a/b")
    with pytest.raises(ArtifactNotFound):
        store.open_reader("a/b")


def test_an_unreachable_s3_server_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageUnavailable) as err:
        Store.open("s3://bucket/p", ".").checksum("k")
    assert "\n" not in str(err.value) and SECRET not in str(err.value)


# --------------------------------------------------------------------------- a study's store


TINY_SPACE = """
description = "tiny"
sampler = "grid"
epochs = 1
[params]
image_size = [32]
batch_size = [8]
learning_rate = [1e-2]
"""


def _grep(root: Path, secret: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and secret.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


@pytest.mark.slow
def test_final_model_by_study_name_on_a_host_that_did_not_finalize(
    store_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """create --store -> optimize -> finalize on host A; on host B (its own folders, the same
    database and store) predict, evaluate and index build take study:NAME."""
    import optuna

    from clothopt.store import FINAL_ATTR, INDEX_ATTR

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # set for S3 already; a folder ignores it
    data = make_dataset(tmp_path / "data")
    (tmp_path / "tiny.toml").write_text(TINY_SPACE)
    host_a = tmp_path / "host-a"
    storage = f"sqlite:///{host_a / 'clothopt.db'}"
    out: list[str] = []

    def cli(*argv: str) -> str:
        code, stdout, stderr = run_cli(list(argv))
        out.extend([stdout, stderr])
        assert code == 0, stderr
        return stdout

    cli(
        "study",
        "create",
        "--backbone",
        "mobilenet_025",
        "--space",
        str(tmp_path / "tiny.toml"),
        "--name",
        "shared",
        "--storage",
        storage,
        "--data",
        str(data),
        "--weights",
        "none",
        "--store",
        store_url,
    )
    cli("study", "optimize", "shared", "--storage", storage, "--quiet")
    cli(
        "study",
        "finalize",
        "shared",
        "--storage",
        storage,
        "--epochs",
        "1",
        "--not-clothing",
        "none",
        "--paper",
        "none",
        "--quiet",
    )
    study = optuna.load_study(study_name="shared", storage=storage)
    record = study.user_attrs[FINAL_ATTR]
    assert set(record["files"]) >= {"model.keras", "classes.json", "report.json"}
    assert all(len(f["sha256"]) == 64 for f in record["files"].values())

    # host B: the database file moved to a folder with no final/ and an empty cache
    host_b = tmp_path / "host-b"
    host_b.mkdir()
    for part in host_a.glob("clothopt.db*"):  # the database with its write-ahead log
        shutil.copy(part, host_b / part.name)
    storage_b = f"sqlite:///{host_b / 'clothopt.db'}"
    shutil.rmtree(host_a)  # nothing of host A is left to read
    images = sorted((data / "test" / "hat").iterdir())[:2]
    shown = json.loads(
        cli(
            "predict", "study:shared", *map(str, images), "--storage", storage_b, "--json"
        ).splitlines()[0]
    )
    assert shown["image"] == str(images[0]) and shown["predictions"]
    fetched = host_b / "store-cache" / "studies" / "shared" / "final"
    assert (fetched / "model.keras").is_file() and (fetched / "classes.json").is_file()
    report = json.loads(
        cli(
            "evaluate",
            "study:shared",
            str(data / "test"),
            "--storage",
            storage_b,
            "--json",
            "--resamples",
            "1000",
        )
    )
    assert 0 <= report["test"]["f1_macro"] <= 1
    index = host_b / "catalogue.npz"
    cli(
        "index",
        "build",
        "study:shared",
        str(data / "train"),
        "--out",
        str(index),
        "--storage",
        storage_b,
    )
    study = optuna.load_study(study_name="shared", storage=storage_b)
    assert "catalogue.npz" in study.user_attrs[INDEX_ATTR]["files"]

    # the dashboard on host B shows the final files and the trials' reports from the store
    from tests.test_dashboard import _get, _json, _study_id

    from clothopt.dashboard import DashboardServer

    with DashboardServer(storage_b, port=0, artifacts=host_b / "artifacts").running() as srv:
        study_id = _study_id(srv, "shared")
        detail = _json(srv, f"/api/studies/{study_id}?after=0")
        best = next(t for t in detail["trials"] if t["number"] == record["trial"])
        metas = {a["filename"]: a for a in best["artifacts"]}
        assert {"report.json", "model.keras", "validation_report.json"} <= set(metas)
        status, _, body = _get(
            srv, f"/artifacts/{study_id}/{best['trial_id']}/{metas['report.json']['artifact_id']}"
        )
        assert status == 200 and json.loads(body)["trial"] == record["trial"]
    assert not (host_b / "artifacts").exists() or not any((host_b / "artifacts").iterdir())

    # the credentials: in no file, no study attribute, no output, no log
    assert _grep(tmp_path, SECRET) == []
    from clothopt.engine.optuna_private import storage_of, study_id

    system = storage_of(study).get_study_system_attrs(study_id(study))
    trials = [[t.user_attrs, t.system_attrs] for t in study.trials]
    attrs = json.dumps([study.user_attrs, system, trials], default=str)
    assert SECRET not in attrs
    assert not any(SECRET in text for text in out)
    assert SECRET not in caplog.text

    # study delete removes what the study put in the store: another host then finds nothing
    published = [e["key"] for e in record["files"].values()]
    cli("study", "delete", "shared", "--storage", storage_b)
    gone = Store.open(store_url, tmp_path / "host-c")
    assert [k for k in published if gone.exists(k)] == []


def test_create_refuses_a_bad_store_and_creates_nothing(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    storage = f"sqlite:///{tmp_path / 'studies' / 'clothopt.db'}"
    code, out, err = run_cli(
        [
            "study",
            "create",
            "--backbone",
            "mobilenet_025",
            "--space",
            "quick",
            "--data",
            str(data),
            "--storage",
            storage,
            "--store",
            f"s3://k:{SECRET}@bucket/x",
        ]
    )
    assert code == 2 and err.startswith("clothopt: error:") and SECRET not in out + err
    assert len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["study", "list", "--storage", storage])
    assert "mobilenet" not in out


@pytest.mark.s3
def test_create_refuses_a_missing_bucket_in_one_line(s3_env: str, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    storage = f"sqlite:///{tmp_path / 'studies' / 'clothopt.db'}"
    argv = ["study", "create", "--backbone", "mobilenet_025", "--space", "quick", "--data"]
    code, out, err = run_cli(
        [*argv, str(data), "--storage", storage, "--store", "s3://no-such-b/x"]
    )
    assert code == 2 and err.startswith("clothopt: error: store s3://no-such-b/x")
    assert len(err.strip().splitlines()) == 1 and SECRET not in out + err
    code, out, err = run_cli([*argv, str(data), "--storage", storage, "--store", f"s3://{s3_env}"])
    assert code == 0, err


def test_a_study_without_a_store_records_none() -> None:
    from clothopt.config import StudyConfig
    from clothopt.spaces import load_space

    config = StudyConfig(
        name="n",
        backbone="b",
        data="/d",
        data_fingerprint="f",
        classes=("a",),
        space=load_space("quick"),
        sampler="grid",
        sampler_args={},
    )
    assert "store" not in config.to_dict()  # records of studies without one are unchanged
    with_store = StudyConfig.from_dict({**config.to_dict(), "store": "s3://b/p"})
    assert with_store.to_dict()["store"] == "s3://b/p"
    assert StudyConfig.from_json(with_store.to_json()) == with_store
