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
