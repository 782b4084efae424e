"""docker-compose.yml validated by Debian's docker-compose (no Docker engine needed for `config`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO


def _config(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's docker-compose package)")
    env = {**os.environ, "GENROBUST_API_KEY": "test-key"}
    return subprocess.run([binary, "-f", str(REPO / "docker-compose.yml"), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


def test_compose_file_declares_the_services_profile_and_volumes():
    import yaml  # schemathesis depends on PyYAML

    names = _config("--profile", "gpu", "config", "--services")
    assert names.returncode == 0, names.stderr
    assert set(names.stdout.split()) == {"redis", "api", "worker", "worker-gpu"}
    assert set(_config("config", "--volumes").stdout.split()) == {"redis-data", "models", "data"}

    full = _config("--profile", "gpu", "config")
    assert full.returncode == 0, full.stderr
    services = yaml.safe_load(full.stdout)["services"]
    assert [n for n, s in services.items() if s.get("profiles")] == ["worker-gpu"]  # only it waits for --profile
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert any(v.startswith("redis-data:/data") for v in map(_volume, services["redis"]["volumes"]))
    for name in ("api", "worker", "worker-gpu"):
        assert any(v.startswith("models:/models") for v in map(_volume, services[name]["volumes"])), name
        assert services[name]["environment"]["GENROBUST_REDIS_URL"].startswith("redis://redis:")
    assert services["worker"]["command"][:3] == ["celery", "-A", "worker"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    device = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert json.dumps(services["api"]["ports"]).count("8000") >= 1


def _volume(v) -> str:
    return v if isinstance(v, str) else f"{v['source']}:{v['target']}"


def test_compose_requires_an_api_key():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed")
    env = {k: v for k, v in os.environ.items() if k != "GENROBUST_API_KEY"}
    r = subprocess.run([binary, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=60)
    assert r.returncode != 0 and "GENROBUST_API_KEY" in r.stderr
