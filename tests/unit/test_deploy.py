"""docker-compose.yml stays in step with the code (checked without a Docker engine)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from stream.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, object]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


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
