"""hiredis packing (the worker's Redis client) sends the bytes redis-py's own packer does."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from state.redis_writer import pack_with_hiredis

arguments = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=64).map(bytearray),
        st.binary(max_size=64).map(memoryview),
        st.text(max_size=32),
        st.integers(min_value=-(2**63), max_value=2**63),
    ),
    max_size=12,
)


def _hiredis_connection() -> Connection:
    connection_class = pack_with_hiredis(aioredis.Redis()).connection_pool.connection_class
    return connection_class()  # type: ignore[return-value]


@given(st.sampled_from(["EVALSHA", "HGETALL", b"EVALSHA"]), arguments)
def test_hiredis_packs_commands_as_redis_py_does(
    name: str | bytes, args: list[bytes | bytearray | memoryview | str | int]
) -> None:
    python = Connection()
    hiredis = _hiredis_connection()
    assert b"".join(hiredis.pack_command(name, *args)) == b"".join(python.pack_command(name, *args))


def test_multi_word_commands_are_split_and_floats_packed_like_redis_py() -> None:
    python, hiredis = Connection(), _hiredis_connection()
    for command in [("SCRIPT LOAD", "return 1"), ("ZADD", "k", 0.1, "m"), ("X", 1.5e20)]:
        assert b"".join(hiredis.pack_command(*command)) == b"".join(python.pack_command(*command))


def test_unpackable_arguments_raise_redis_py_s_error() -> None:
    with pytest.raises(DataError):
        _hiredis_connection().pack_command("SET", "k", object())  # type: ignore[arg-type]


def test_the_url_s_connection_kind_is_kept() -> None:
    for url, kind in [
        ("redis://127.0.0.1:1/0", Connection),
        ("rediss://127.0.0.1:1/0", SSLConnection),
        ("unix:///tmp/none.sock", UnixDomainSocketConnection),
    ]:
        client = pack_with_hiredis(aioredis.Redis.from_url(url))
        pack_with_hiredis(client)  # twice: wrapped once
        connection_class = client.connection_pool.connection_class
        assert issubclass(connection_class, kind)
        assert connection_class.__mro__.count(kind) == 1
        assert connection_class.__name__ == f"Hiredis{kind.__name__}"


def test_the_worker_s_redis_client_packs_with_hiredis_and_the_chunk_is_configurable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stream.app import make_redis
    from stream.config import ConfigError, load_settings

    monkeypatch.setenv("APPETENCE_REDIS_USERS_PER_CALL", "1")
    settings = load_settings()
    assert settings.redis_users_per_call == 1
    client = make_redis(settings)
    assert client.connection_pool.connection_class.__name__ == "HiredisConnection"
    monkeypatch.setenv("APPETENCE_REDIS_USERS_PER_CALL", "0")
    with pytest.raises(ConfigError, match="REDIS_USERS_PER_CALL"):
        load_settings()
