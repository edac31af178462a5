"""HMAC-SHA256 signed pickles: model snapshots shared between workers through Kafka.

Nothing is unpickled before its signature verifies (constant-time compare), so a record
forged or corrupted on the topic is rejected, never executed.

>>> blob = signed_pickle({"a": 1}, b"k" * 32)
>>> verified_unpickle(blob, b"k" * 32)
{'a': 1}
>>> verified_unpickle(blob, b"another key, also 32 bytes long.")
Traceback (most recent call last):
...
ValueError: snapshot signature does not match the configured key
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any

_DIGEST = 32


def signed_pickle(obj: Any, key: bytes) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return hmac.new(key, payload, hashlib.sha256).digest() + payload


def verified_unpickle(blob: bytes, key: bytes) -> Any:
    signature, payload = blob[:_DIGEST], blob[_DIGEST:]
    expected = hmac.new(key, payload, hashlib.sha256).digest()
    if len(blob) <= _DIGEST or not hmac.compare_digest(signature, expected):
        raise ValueError("snapshot signature does not match the configured key")
    return pickle.loads(payload)  # signed by a holder of our key: trusted
