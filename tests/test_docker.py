"""Docker cannot run here: check what can be checked of the files it would use."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_names_the_services_and_images_the_readme_says() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "store", "store-bucket", "worker", "dashboard"}
    assert services["postgres"]["image"].startswith("postgres:")
    for name in ("worker", "dashboard"):
        assert services[name]["image"] == "clothopt-worker:latest"
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
        storage = services[name]["environment"]["CLOTHOPT_STORAGE"]
        assert storage.startswith("postgresql+psycopg://") and "@postgres:5432/" in storage
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        bucket = services[name]["depends_on"]["store-bucket"]["condition"]
        assert bucket == "service_completed_successfully"
        assert services[name]["environment"]["AWS_ENDPOINT_URL"] == "http://store:9000"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    assert services["worker"]["command"][:2] == ["study", "optimize"]
    assert services["dashboard"]["command"][0] == "dashboard"
    readme = (ROOT / "README.md").read_text()
    for word in ("docker/compose.yaml", "docker/Dockerfile", "clothopt-worker", "--scale worker="):
        assert word in readme, word


def _env_default(value: str) -> str | None:
    """The default of a ``${VAR:-default}`` reference; None for ``${VAR:?error}`` (required)."""
    m = re.fullmatch(r"\$\{(\w+)(:-|:\?)([^}]*)\}", value)
    assert m, value
    return m.group(3) if m.group(2) == ":-" else None


def test_compose_has_no_default_password_and_listens_on_loopback() -> None:
    text = (ROOT / "docker" / "compose.yaml").read_text()
    services = yaml.safe_load(text)["services"]
    postgres = services["postgres"]
    # compose refuses to start without a password: no ${VAR:-default} fallback anywhere
    assert _env_default(postgres["environment"]["POSTGRES_PASSWORD"]) is None
    assert "POSTGRES_PASSWORD:-" not in text
    for name in ("worker", "dashboard"):
        storage = services[name]["environment"]["CLOTHOPT_STORAGE"]
        assert "${POSTGRES_PASSWORD:?" in storage, storage
    # the database port: 127.0.0.1 unless the user opts in; never a bare "5432:5432"
    (db_port,) = postgres["ports"]
    bind, host_port, container_port = db_port.rsplit(":", 2)
    assert (host_port, container_port) == ("5432", "5432")
    assert _env_default(bind) == "127.0.0.1"
    (dash_port,) = services["dashboard"]["ports"]
    assert dash_port.startswith("127.0.0.1:")
    # the store: its account required, its port on loopback unless opted in
    store = services["store"]
    for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert _env_default(store["environment"][key]) is None, key
    for name in ("worker", "dashboard"):
        env = services[name]["environment"]
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert _env_default(env[key]) is None, (name, key)
    (store_port,) = store["ports"]
    bind, host_port, _ = store_port.rsplit(":", 2)
    assert _env_default(bind) == "127.0.0.1" and host_port == "9000"


def test_compose_keeps_no_state_on_the_host_but_the_database_and_the_store() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    # named volumes only (no host folder but the read-only data set): the database's, the
    # store's and a cache; workers and the dashboard share nothing but the two services
    assert set(compose["volumes"]) == {"pgdata", "storedata", "cache"}
    for name in ("worker", "dashboard"):
        mounts = {re.search(r":(/[^:]*)(:ro)?$", v).group(1): v for v in services[name]["volumes"]}
        assert set(mounts) == {"/data", "/cache"}, mounts
        assert mounts["/data"].endswith(":ro")
        assert "CLOTHOPT_ARTIFACTS" not in services[name]["environment"]
    assert services["store"]["volumes"] == ["storedata:/data"]
    assert services["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    bucket = " ".join(services["store-bucket"]["entrypoint"])
    assert "mc mb --ignore-existing" in bucket


def test_dockerfile_builds_on_tensorflows_gpu_image_and_runs_clothopt() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG TF_IMAGE=tensorflow/tensorflow:[\d.]+-gpu$", text, re.M)
    assert "FROM ${TF_IMAGE}" in text
    assert "'.[postgres,s3]'" in text
    assert 'ENTRYPOINT ["clothopt"]' in text
    # every path the Dockerfile copies exists in the repository
    for src in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), part
