"""Docker cannot run here: check what can be checked of the files it would use."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_names_the_services_and_images_the_readme_says() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "worker", "dashboard"}
    assert services["postgres"]["image"].startswith("postgres:")
    for name in ("worker", "dashboard"):
        assert services[name]["image"] == "clothopt-worker:latest"
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
        storage = services[name]["environment"]["CLOTHOPT_STORAGE"]
        assert storage.startswith("postgresql+psycopg://") and "@postgres:5432/" in storage
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
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


def test_compose_workers_and_dashboard_share_runs_and_artifacts() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    workdir = re.findall(r"^WORKDIR (\S+)$", (ROOT / "docker" / "Dockerfile").read_text(), re.M)
    # with PostgreSQL storage the runs/ and artifacts/ folders are ./studies (clothopt.paths)
    studies = f"{workdir[-1]}/studies"
    mounts = {}
    for name in ("worker", "dashboard"):
        volumes = dict(v.split(":")[:2] for v in services[name]["volumes"])
        mounts[name] = {dst: src for src, dst in volumes.items()}
        assert mounts[name].get(studies) == "studies", (name, volumes)
        artifacts = services[name]["environment"]["CLOTHOPT_ARTIFACTS"]
        assert artifacts.startswith(studies + "/"), artifacts
    assert "studies" in compose["volumes"]  # a named volume, not each container's filesystem
    command = services["dashboard"]["command"]
    assert command[command.index("--artifacts") + 1] == artifacts


def test_dockerfile_builds_on_tensorflows_gpu_image_and_runs_clothopt() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG TF_IMAGE=tensorflow/tensorflow:[\d.]+-gpu$", text, re.M)
    assert "FROM ${TF_IMAGE}" in text
    assert "'.[postgres]'" in text
    assert 'ENTRYPOINT ["clothopt"]' in text
    # every path the Dockerfile copies exists in the repository
    for src in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), part
