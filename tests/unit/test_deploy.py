"""docker-compose.yml stays in step with the code (checked without a Docker engine)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stream.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


#: What an operator exports before `docker compose up` (docker-compose.yml's header).
OPERATOR_ENV = {
    "APPETENCE_MODEL_SIGNING_KEY": "0123456789abcdef0123456789abcdef",
    "REDIS_WRITER_PASSWORD": "writer-password-for-the-test",
    "REDIS_ADSERVER_PASSWORD": "adserver-password-for-the-test",
    "GRAFANA_ADMIN_PASSWORD": "grafana-password-for-the-test",
}
_VARIABLE = re.compile(r"\$\{([A-Z_]+)(?::([?-])((?:[^{}]|\{[^}]*\})*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (the forms the file uses)."""

    def value(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if name in env:
            return env[name]
        if kind == "-":
            return rest
        raise AssertionError(f"{name} is required: {rest}")

    return _VARIABLE.sub(value, text)


def compose(env: dict[str, str] | None = None) -> dict[str, object]:
    text = interpolate((ROOT / "docker-compose.yml").read_text(), env or OPERATOR_ENV)
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def test_required_secrets_fail_fast_when_missing() -> None:
    for missing in OPERATOR_ENV:
        env = {k: v for k, v in OPERATOR_ENV.items() if k != missing}
        with pytest.raises(AssertionError, match=missing):
            compose(env)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_accepts_the_file() -> None:
    done = subprocess.run(
        ["docker-compose", "config", "-q"],
        cwd=ROOT,
        env={**os.environ, **OPERATOR_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_production_services_are_all_there() -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    for name in ("kafka", "redis", "worker-1", "worker-2", "collector", "prometheus", "grafana"):
        assert name in services, name
    assert services["simulator"]["profiles"] == ["demo"]
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in ("deploy/prometheus/prometheus.yml", "deploy/prometheus/alerts.yml",
                 "deploy/grafana/provisioning", "deploy/grafana/dashboards"):  # fmt: skip
        assert path in mounts and (ROOT / path).exists(), path
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]}  # fmt: skip
    assert targets == {"worker-1:6066", "worker-2:6066", "collector:8088"}


def test_every_appetence_variable_in_compose_is_a_valid_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    checked = 0
    for name, service in services.items():
        env = service.get("environment", {})
        appetence = {k: str(v) for k, v in env.items() if k.startswith("APPETENCE_")}
        if not appetence:
            continue
        for key in [k for k in os.environ if k.startswith("APPETENCE_")]:
            monkeypatch.delenv(key)
        for key, value in appetence.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        assert isinstance(settings, Settings), name
        checked += 1
    assert checked >= 3


def test_two_workers_share_one_consumer_group_and_partitions() -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    workers = [s for s in services.values() if s.get("command") == ["worker"]]
    assert len(workers) == 2
    envs = [w["environment"] for w in workers]
    assert envs[0] == envs[1]  # same app id, same partitions: one group
    assert (
        services["topics"]["environment"]["APPETENCE_PARTITIONS"] == envs[0]["APPETENCE_PARTITIONS"]
    )


def test_published_ports_bind_loopback_only() -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
