"""``POST /v1/audiences/{audience_id}/members``: seed changes over HTTP, bearer-token auth.

Body: ``{"add": ["u1", ...], "remove": ["u9", ...]}`` (at most 1 MiB, 100,000 ids). Each id
is validated alone; valid changes are produced to the seed topic, which every worker follows.
Answers 202 with counts and the rejected ids with reasons; 401 without the right token; 503
when no token is configured (the endpoint is off); 400 for a body that is not the shape above;
413 over the size limit.
"""

from __future__ import annotations

import hmac
from typing import Any

import msgspec

from processors.audiences import seed_key, valid_id
from stream.config import Settings

MAX_BODY_BYTES = 1024 * 1024
MAX_IDS = 100_000


class MembersRequest(msgspec.Struct, forbid_unknown_fields=True):
    add: list[str] = []
    remove: list[str] = []


_decoder = msgspec.json.Decoder(MembersRequest)


def authorized(settings: Settings, header: str | None) -> bool:
    token = settings.audience_api_token
    if token is None or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].encode(), token.get_secret_value().encode())


async def audience_members_request(
    settings: Settings, request: Any, audience_id: str, topic: Any
) -> tuple[int, dict[str, Any]]:
    if settings.audience_api_token is None:
        return 503, {"error": "the audience API is off: set APPETENCE_AUDIENCE_API_TOKEN"}
    if not authorized(settings, request.headers.get("Authorization")):
        return 401, {"error": "missing or wrong bearer token"}
    if not valid_id(audience_id) or "/" in audience_id:
        return 400, {"error": "audience id: 1-128 printable characters, no '/'"}
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return 413, {"error": f"body over {MAX_BODY_BYTES} bytes"}
    body = await request.content.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return 413, {"error": f"body over {MAX_BODY_BYTES} bytes"}
    try:
        members = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        return 400, {"error": f'expected {{"add": [...], "remove": [...]}}: {error}'}
    if len(members.add) + len(members.remove) > MAX_IDS:
        return 413, {"error": f"more than {MAX_IDS} ids in one request"}
    rejected = []
    added = removed = 0
    for user_id, add in [(u, True) for u in members.add] + [(u, False) for u in members.remove]:
        if not valid_id(user_id):
            rejected.append({"user_id": user_id[:128], "reason": "invalid_field"})
            continue
        await topic.send(key=seed_key(audience_id, user_id), value=b"1" if add else None)
        added += add
        removed += not add
    return 202, {"audience_id": audience_id, "added": added, "removed": removed,
                 "rejected": rejected}  # fmt: skip
