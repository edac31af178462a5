"""Settings: env prefix, frozen, secrets hidden, misconfiguration fails fast and clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream.config import ConfigError, Settings, load_settings


def test_env_prefix_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPETENCE_PARTITIONS", "8")
    monkeypatch.setenv("APPETENCE_REDIS_PASSWORD", "hunter2")
    settings = load_settings(slate_size=7)
    assert settings.partitions == 8 and settings.slate_size == 7
    assert "hunter2" not in repr(settings)
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == "hunter2"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("APPETENCE_PARTITIONS", "0", "APPETENCE_PARTITIONS"),
        ("APPETENCE_KAFKA_BOOTSTRAP", "localhost", "host:port"),
        ("APPETENCE_REDIS_URL", "http://x", "redis://"),
        ("APPETENCE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL", "APPETENCE_KAFKA_SASL_MECHANISM"),
        ("APPETENCE_NOT_A_SETTING", "1", "APPETENCE_NOT_A_SETTING"),
        ("APPETENCE_BATCH_MAX_SECONDS", "3", "APPETENCE_BATCH_MAX_SECONDS"),  # session: 10 s
        # an envelope the workers would dead-letter as too large (records: 1 MiB)
        (
            "APPETENCE_COLLECTOR_ENVELOPE_MAX_BYTES",
            str(2 * 1024 * 1024),
            "APPETENCE_COLLECTOR_ENVELOPE_MAX_BYTES",
        ),
    ],
)
def test_misconfiguration_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_cli_fails_fast_with_exit_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", "topics", "create"],
        env={"APPETENCE_PARTITIONS": "-1", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "APPETENCE_PARTITIONS" in result.stderr


def test_exclusion_list_and_blend_reach_the_processors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPETENCE_EXCLUDE_ITEMS", '["r1", "r2"]')
    monkeypatch.setenv("APPETENCE_POPULARITY_WEIGHT", "0.5")
    monkeypatch.setenv("APPETENCE_COOCCURRENCE_HALF_LIFE_SECONDS", "3600")
    config = load_settings().slice_config()
    assert config.assembly.exclude_items == frozenset({"r1", "r2"})
    assert config.assembly.popularity_weight == 0.5
    assert config.cooccurrence.half_life_ms == 3_600_000


def test_cooccurrence_decay_defaults_to_three_days_and_zero_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().slice_config().cooccurrence.half_life_ms == 3 * 24 * 3600 * 1000
    monkeypatch.setenv("APPETENCE_COOCCURRENCE_HALF_LIFE_SECONDS", "0")
    assert load_settings().slice_config().cooccurrence.half_life_ms is None
    monkeypatch.setenv("APPETENCE_COOCCURRENCE_HALF_LIFE_SECONDS", "-1")
    with pytest.raises(ConfigError, match="COOCCURRENCE_HALF_LIFE_SECONDS"):
        load_settings()


def test_a_list_setting_that_is_not_json_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APPETENCE_COLLECTOR_CORS_ORIGINS", "https://a.example")
    with pytest.raises(ConfigError, match="collector_cors_origins"):
        load_settings()


def test_no_secret_is_shown_in_a_repr_or_a_json_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "APPETENCE_KAFKA_SASL_PASSWORD": "kafka-secret-value-1",
        "APPETENCE_REDIS_PASSWORD": "redis-secret-value-2",
        "APPETENCE_MODEL_SIGNING_KEY": "signing-secret-value-3",
        "APPETENCE_AUDIENCE_API_TOKEN": "audience-secret-value-4",
        "APPETENCE_COLLECTOR_IP_KEY": "collector-secret-value-5",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("APPETENCE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("APPETENCE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("APPETENCE_KAFKA_SASL_USERNAME", "appetence")
    settings = load_settings()
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    for value in secrets.values():
        assert value not in shown
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == "kafka-secret-value-1"


def test_sasl_ssl_reaches_every_kind_of_kafka_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker (Faust), its followers and the collector (aiokafka), the CLI (kafka-python)."""
    from stream.app import _broker_credentials
    from stream.topics import aiokafka_client_options, kafka_client_options

    for name, value in {
        "APPETENCE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "APPETENCE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "APPETENCE_KAFKA_SASL_USERNAME": "appetence",
        "APPETENCE_KAFKA_SASL_PASSWORD": "scram-secret-0123",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    plain = kafka_client_options(settings)
    assert (plain["security_protocol"], plain["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert plain["sasl_plain_password"] == "scram-secret-0123"
    aio = aiokafka_client_options(settings)
    assert aio["security_protocol"] == "SASL_SSL" and aio["ssl_context"] is not None
    assert aio["sasl_mechanism"] == "SCRAM-SHA-512" and aio["sasl_plain_username"] == "appetence"
    credentials = _broker_credentials(settings)
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.ssl_context is not None


def test_faust_works_in_a_temporary_directory_unless_one_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream.app import create_app

    monkeypatch.chdir(tmp_path)
    built = create_app(Settings(app_id="scratch-test"))
    assert built.scratch is not None
    scratch = Path(built.scratch.name)
    assert Path(built.app.conf.datadir) == scratch and scratch.is_dir()
    assert not scratch.is_relative_to(tmp_path)  # not "<app id>-data" in the working directory
    built.scratch.cleanup()
    assert not scratch.exists()

    chosen = tmp_path / "faust"
    configured = create_app(Settings(app_id="scratch-test", data_dir=str(chosen)))
    assert configured.scratch is None and Path(configured.app.conf.datadir) == chosen
