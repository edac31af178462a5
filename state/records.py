"""How a user's state is stored, in the worker's memory and in its changelog: the msgpack
record (``encode_user_state``) compressed with zstd and a dictionary trained on simulated
users.

A simulated user's record is ~2.6 KB of msgpack, much of it field names, event and item ids
that repeat across users; zstd at level 1 with the 4 KiB dictionary makes it ~0.55 KB
(plain zstd: ~1.1 KB), for ~13 µs to pack and ~8 µs to unpack. Each frame names its
dictionary, so a later dictionary can be added beside this one; records without the zstd
magic are plain msgpack (changelogs written before compression) and still read.

>>> from processors.user_state import UserState
>>> state = UserState(user_id="u1", partition=3)
>>> record = pack_user_state(state)
>>> record[:4] == ZSTD_MAGIC, unpack_user_state(record) == state
(True, True)
>>> from processors.user_state import encode_user_state
>>> unpack_user_state(encode_user_state(state)) == state  # an uncompressed record
True

Records name their dictionary: to change it, keep the old one beside the new as
``user_state-<name>.zdict`` (``python -m state.records train --out new.zdict`` makes a new
one and refuses to overwrite an existing file).
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
from pathlib import Path

import zstandard

from processors.user_state import UserState, decode_user_state, encode_user_state

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
DICTIONARY_PATH = Path(__file__).with_name("user_state.zdict")
_LEVEL = 1  # level 3 saves ~1% more for twice the time


@functools.cache
def _dictionaries() -> dict[int, zstandard.ZstdCompressionDict]:
    """The dictionaries records may name, by id: ``user_state.zdict`` (the one written with)
    and any earlier ones kept beside it as ``user_state-*.zdict`` (loaded on first use)."""
    paths = sorted(DICTIONARY_PATH.parent.glob("user_state*.zdict"))
    loaded = [zstandard.ZstdCompressionDict(path.read_bytes()) for path in paths]
    return {dictionary.dict_id(): dictionary for dictionary in loaded}


@functools.cache
def _compressor() -> zstandard.ZstdCompressor:
    current = zstandard.ZstdCompressionDict(DICTIONARY_PATH.read_bytes())
    return zstandard.ZstdCompressor(level=_LEVEL, dict_data=_dictionaries()[current.dict_id()])


@functools.cache
def _decompressor(dict_id: int) -> zstandard.ZstdDecompressor:
    dictionary = _dictionaries().get(dict_id)
    if dictionary is None:
        raise ValueError(
            f"user state record compressed with unknown dictionary {dict_id}: "
            f"known {sorted(_dictionaries())} (state/user_state*.zdict)"
        )
    return zstandard.ZstdDecompressor(dict_data=dictionary)


def pack_user_state(state: UserState) -> bytes:
    """The stored record of a user's state."""
    compressed = _compressor().compress(encode_user_state(state))
    # zstandard returns its output buffer, sized for the worst case (~2.7 KB for a 0.55 KB
    # record): held for every user, that would undo the compression. Keep an exact copy.
    return bytes(memoryview(compressed))


def unpack_user_state(record: bytes | memoryview) -> UserState:
    """A stored record back to the state (compressed, or plain msgpack)."""
    if record[:4] != ZSTD_MAGIC:
        return decode_user_state(record)
    dict_id = zstandard.get_frame_parameters(record).dict_id
    return decode_user_state(_decompressor(dict_id).decompress(record))


def train_dictionary(records: list[bytes], size: int = 4096) -> bytes:
    """A zstd dictionary for user state records (msgpack), from samples of them."""
    samples: list[bytes | bytearray | memoryview] = list(records)
    return zstandard.train_dictionary(size, samples).as_bytes()


def _simulated_records(events: int, seed: int) -> list[bytes]:
    """The records of the users of ``events`` simulated events, as the worker holds them
    after processing the events in 500-event batches."""
    from processors.pipeline import SliceConfig, SliceProcessor
    from processors.simulator import SimulationConfig, TrafficModel

    model = TrafficModel(SimulationConfig(seed=seed), start_ms=1_700_000_000_000)
    stream = model.events()
    processor = SliceProcessor(SliceConfig())
    for record in model.catalog_records():
        processor.apply_catalog(record)
    states: dict[str, UserState] = {}
    for _ in range(0, events, 500):
        batch = [(0, next(stream)) for _ in range(500)]
        states.update(processor.process_batch(batch, states, 1_700_000_000_000).touched)
    return [encode_user_state(state) for state in states.values()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m state.records")
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument(
        "--out", type=Path, required=True, help="a new file (never the dictionary in use)"
    )
    args = parser.parse_args(argv)
    if args.out.exists():
        # Records name the dictionary they were written with: overwriting one that a
        # changelog still uses would make those records unreadable.
        parser.error(f"{args.out} exists; write the new dictionary to a new file")
    records = _simulated_records(args.events, args.seed)
    samples = random.Random(args.seed).sample(records, min(len(records), 5_000))
    args.out.write_bytes(train_dictionary(samples, args.size))
    print(f"{args.out}: {args.size} bytes from {len(samples)} of {len(records)} user records")


if __name__ == "__main__":
    main(sys.argv[1:])
