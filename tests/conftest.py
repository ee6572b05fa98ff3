"""Shared fixtures: tiny synthetic data sets made in the test, seeded, under tmp_path."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clothopt.data.synthetic import make_synthetic_dataset

# Fast failure detection for the resume tests; set before clothopt.study is imported
os.environ.setdefault("CLOTHOPT_HEARTBEAT_INTERVAL", "1")
os.environ.setdefault("CLOTHOPT_GRACE_PERIOD", "3")
os.environ.setdefault("CLOTHOPT_POLL_SECONDS", "0.2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared/datasets/clothing-dataset-small"
REAL_WEIGHTS = (
    Path(__file__).resolve().parents[1].parent / "shared/weights/mobilenet_2_5_224_tf_no_top.h5"
)


make_dataset = make_synthetic_dataset  # tests import it from here


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip("real data set not at ../shared/datasets")
    return REAL_DATA


@pytest.fixture
def real_weights() -> Path:
    if not REAL_WEIGHTS.is_file():
        pytest.skip("pretrained MobileNet weights not at ../shared/weights")
    return REAL_WEIGHTS


@pytest.fixture
def real_subset(tmp_path: Path, real_data: Path) -> Path:
    """A small subset of the real data set, linked (not copied) under tmp_path."""
    root = tmp_path / "subset"
    for split, n in (("train", 12), ("validation", 4), ("test", 4)):
        for cls_dir in sorted((real_data / split).iterdir()):
            dest = root / split / cls_dir.name
            dest.mkdir(parents=True)
            for img in sorted(cls_dir.iterdir())[:n]:
                (dest / img.name).symlink_to(img)
    return root


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies' / 'clothopt.db'}"


def _postgres_url() -> str | None:
    url = os.environ.get("CLOTHOPT_TEST_POSTGRES")
    if not url:
        if os.environ.get("CLOTHOPT_REQUIRE_POSTGRES"):
            pytest.fail("CLOTHOPT_TEST_POSTGRES is not set but PostgreSQL tests are required")
        pytest.skip("no PostgreSQL: set CLOTHOPT_TEST_POSTGRES (bash .ci/postgres.sh prints it)")
    return url


@pytest.fixture
def postgres_storage() -> object:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(_postgres_url())
    name = f"clothopt_test_{uuid.uuid4().hex[:12]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_storage(request: pytest.FixtureRequest, storage: str) -> str:
    if request.param == "sqlite":
        return storage
    return request.getfixturevalue("postgres_storage")


@pytest.fixture(autouse=True)
def _library_logging_as_a_caller_finds_it() -> Iterator[None]:
    """A command run in-process installs the CLI's stderr handler on the ``clothopt`` logger
    (``clothopt.logging.set_verbosity``); take it off after each test, so the next one sees
    the library as a Python caller does."""
    yield
    import logging

    import clothopt.logging as clothopt_logging

    clothopt_logging.disable_default_handler()
    logging.getLogger("clothopt").setLevel(logging.NOTSET)


def one_error_line(err: str, *words: str) -> str:
    """The one line a failed command printed: no traceback, each of ``words`` in it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], err
    return lines[0]


def create_args(space: Path, data: Path, name: str, storage: str, *extra: str) -> list[str]:
    """``clothopt study create`` of mobilenet_025 with random weights (fast plumbing)."""
    args = ["study", "create", "--backbone", "mobilenet_025", "--space", str(space)]
    args += ["--data", str(data), "--weights", "none", "--name", name, "--storage", storage]
    return [*args, *extra]


def save_tiny_model(folder: Path, classes: list[str], seed: int | None = 0) -> Path:
    """An exported model as finalize builds it (random base, 32 px: fast) without a detector,
    and its classes.json. ``seed``: a random head with a large kernel (the random base's
    features are tiny, so outputs then depend on the image); None: an all-zero head."""
    import json

    import numpy as np

    from clothopt.model.backbones import get_backbone
    from clothopt.model.compose import Head, compose
    from clothopt.predict import CLASSES_FILE

    n = len(classes)
    if seed is None:
        kernel = np.zeros((256, n), "float32")
    else:
        kernel = np.random.default_rng(seed).normal(0, 1e16, (256, n)).astype("float32")
    trained = Head(num_classes=n, weights=[kernel, np.zeros(n, "float32")])
    spec = get_backbone("mobilenet_025")
    model = compose(spec, 32, "none", 0, raw_input=True, head=trained, softmax=True)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / CLASSES_FILE).write_text(json.dumps(classes))
    return folder / "model.keras"


def sigint_default() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: the default disposition,
    as a terminal's Ctrl-C finds it (a shell's background jobs, CI's included, ignore SIGINT,
    and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --------------------------------------------------------------------------- headless Chromium

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


def require_chromium() -> None:
    """Skip without Chromium, unless CI requires it ($CLOTHOPT_REQUIRE_CHROMIUM): then fail."""
    if CHROMIUM.is_file():
        return
    message = f"no {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CLOTHOPT_REQUIRE_CHROMIUM"):
        pytest.fail(message)
    pytest.skip(message)


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium (Debian's package) with a fresh profile folder."""
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def keep_artifact(path: Path) -> None:
    """Copy ``path`` to ``$CLOTHOPT_TEST_ARTIFACTS`` (a folder CI collects after the run)."""
    folder = os.environ.get("CLOTHOPT_TEST_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(folder) / path.name)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``clothopt ARGV`` in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from clothopt.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's exit for a bad option, as the console script ends
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def make_tiny_study(
    root: Path, weights: str, space: str, counts: tuple[int, int, int] = (8, 4, 6)
) -> str:
    """Study "tiny" of mobilenet_025 on synthetic data under ``root`` with the TOML ``space``,
    optimized to the end; returns its storage URL."""
    from clothopt import study as study_mod
    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache
    from clothopt.objective import Objective

    data = make_dataset(root / "data", counts=counts)
    (root / "tiny.toml").write_text(space)
    storage = f"sqlite:///{root / 'studies' / 'clothopt.db'}"
    st, cfg = study_mod.create(
        backbone="mobilenet_025",
        space=str(root / "tiny.toml"),
        name="tiny",
        storage=storage,
        data=str(data),
        weights=weights,
    )
    study_mod.optimize(
        st, cfg, Objective(cfg, open_dataset(data), FeatureCache(cfg.cache_dir)), progress=False
    )
    return storage


# --------------------------------------------------------------------------- S3

SECRET = "s3-Secret-9b71d0c4e2"  # distinctive: every file, attribute and log is searched for it


def _s3_endpoint() -> str:
    url = os.environ.get("CLOTHOPT_TEST_S3")
    if not url:
        if os.environ.get("CLOTHOPT_REQUIRE_S3"):
            pytest.fail("CLOTHOPT_TEST_S3 is not set but the S3 tests are required")
        pytest.skip("no S3 server: set CLOTHOPT_TEST_S3 (bash .ci/s3.sh prints it)")
    pytest.importorskip("boto3")
    return url


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket on the local S3 server; boto3 configured only through the environment.
    Yields the bucket's name."""
    endpoint = _s3_endpoint()
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "clothopt-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"clothopt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    yield bucket
