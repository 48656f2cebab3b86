"""Decoding a pushed configuration: size and depth limits, JSON or a signed JWS, never a crash.

A push is either a plain JSON object (the same structure as the TOML file) or, when signatures
are required, a compact JWS (ES256/RS256) whose payload is that JSON object. A key twice in one
object is refused (which one would win is the sender's guess). NaN and Infinity literals are
let through to the schema, which refuses them with the setting's place and range.
"""

from __future__ import annotations

import json
from typing import Any

from gatewayd.errors import GatewaydError

MAX_DEPTH = 16  # the schema nests 4 deep; anything far deeper is hostile


class PushRejected(GatewaydError):
    """A pushed document was refused before validation; the message says why."""


def decode_push(payload: bytes, max_bytes: int, signing_key: Any | None = None) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise PushRejected(
            f"document of {len(payload)} bytes is over the limit of {max_bytes}; "
            "raise [remote_config] max_document_bytes or send less"
        )
    if signing_key is not None:
        payload = _verified(payload, signing_key)
    elif payload.lstrip()[:1] != b"{":
        raise PushRejected("not a JSON object; send the configuration as a JSON document")
    try:
        doc = json.loads(payload, object_pairs_hook=_unique_keys)
    except RecursionError as exc:
        raise PushRejected(f"nested deeper than {MAX_DEPTH} levels") from exc
    except _DuplicateKey as exc:
        raise PushRejected(str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PushRejected(f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise PushRejected("not a JSON object; send the configuration as a JSON document")
    _check_depth(doc)
    return doc


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(f"key {key!r} appears twice in one object; send it once")
            seen.add(key)
    return doc


def _verified(payload: bytes, key: Any) -> bytes:
    import jwt

    try:
        token = payload.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise PushRejected("unsigned or garbled document refused: require_signed = true") from exc
    if token.startswith("{"):
        raise PushRejected("unsigned document refused: require_signed = true")
    try:
        raw: bytes = jwt.PyJWS().decode(token, key, algorithms=["ES256", "RS256"])
    except jwt.PyJWTError as exc:
        raise PushRejected(f"signature check failed: {exc}") from exc
    return raw


def _check_depth(doc: Any) -> None:
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PushRejected(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
