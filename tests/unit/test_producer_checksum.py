"""The kafka-python producers (simulator, replay, CLI, tests) checksum their record batches
with the C CRC-32C of the ``crc32c`` package: without it kafka-python falls back to a pure
Python one that cost the simulator's producer most of its CPU (pyproject.toml)."""

from __future__ import annotations

from kafka.record import util


def test_kafka_python_checksums_record_batches_in_c() -> None:
    assert util.crc32c_c is not None, "install crc32c: kafka-python's CRC-32C is pure Python"
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert util.calc_crc32c(b"123456789") == util.crc32c_py(b"123456789")
