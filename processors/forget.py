"""Forgetting a user (GDPR erasure): the request record and the bounded list of forgotten
users that keeps their older in-flight events from bringing them back.

A forget request is keyed by the user id on ``{prefix}.forget``; every worker follows the
topic. A request erases what exists *up to its time*: state whose latest event is older, and
any event of the user timed at or before the request that is still on its way (lag,
replays). A user who comes back later starts afresh.

>>> forgotten = ForgottenUsers(max_users=10, keep_ms=1_000)
>>> forgotten.remember("u1", requested_at=500)
True
>>> forgotten.drops("u1", ts=400), forgotten.drops("u1", ts=600), forgotten.drops("u2", ts=1)
(True, False, False)
>>> forgotten.expire(now_ms=2_000)
1
>>> forgotten.drops("u1", ts=400)
False
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

import msgspec

UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class ForgetRequest(msgspec.Struct, frozen=True):
    user_id: UserId
    requested_at: Annotated[int, msgspec.Meta(ge=0)]  # ms since the epoch


_decoder = msgspec.json.Decoder(ForgetRequest)
_encoder = msgspec.json.Encoder()


def valid_user_id(user_id: str) -> bool:
    return 0 < len(user_id) <= 128


def encode_forget_request(user_id: str, requested_at: int) -> bytes:
    """The value of a forget record (its key is the user id).

    >>> decode_forget_request(b"u1", encode_forget_request("u1", 5))
    ForgetRequest(user_id='u1', requested_at=5)
    """
    return _encoder.encode(ForgetRequest(user_id, requested_at))


def decode_forget_request(key: bytes | None, value: bytes | None) -> ForgetRequest | None:
    """A valid request whose key matches its user id, or None.

    >>> decode_forget_request(b"u2", encode_forget_request("u1", 5)) is None
    True
    >>> decode_forget_request(b"u1", b"{") is None
    True
    """
    if not key or not value:
        return None
    try:
        request = _decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    return request if key == request.user_id.encode() else None


class ForgottenUsers:
    """user id -> the latest forget request time; bounded in count and age.

    Entries live ``keep_ms`` (the worker's maximum event age: older events are rejected
    anyway), at most ``max_users`` of them (the oldest request is dropped first).
    """

    def __init__(self, max_users: int, keep_ms: int) -> None:
        self.max_users = max_users
        self.keep_ms = keep_ms
        self._at: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._at

    def remember(self, user_id: str, requested_at: int) -> bool:
        """Record a request; False when an equal or later one was already known."""
        known = self._at.get(user_id)
        if known is not None and known >= requested_at:
            return False
        self._at.pop(user_id, None)
        self._at[user_id] = requested_at
        if len(self._at) > self.max_users:
            self._at.popitem(last=False)
        return True

    def requested_at(self, user_id: str) -> int | None:
        return self._at.get(user_id)

    def drops(self, user_id: str, ts: int) -> bool:
        """True for an event of a forgotten user that happened before the request."""
        at = self._at.get(user_id)
        return at is not None and ts <= at

    def expire(self, now_ms: int) -> int:
        """Drop requests older than ``keep_ms``; returns how many."""
        horizon = now_ms - self.keep_ms
        old = [user for user, at in self._at.items() if at < horizon]
        for user in old:
            del self._at[user]
        return len(old)
