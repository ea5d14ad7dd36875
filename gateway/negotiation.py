"""Which format an answer goes out in: the Accept header weighed against what the gateway
offers (RFC 9110 section 12.5.1).

Each offered type takes the quality of the MOST SPECIFIC media range that matches it
(`application/msgpack` over `application/*` over `*/*`); the highest quality above 0
wins, ties go to the earlier type in `OFFERED` (JSON first). No Accept header, or one
with no well-formed range, is "anything": JSON. Well-formed ranges of which none matches
an offered type with q > 0: None, which the caller answers 406 `not_acceptable`.
A range that cannot be parsed (no `type/subtype`, a q that is not a number in [0, 1])
is skipped, not an error: one odd entry in a browser's list must not refuse the rest.
"""
from __future__ import annotations

from functools import lru_cache

JSON = "application/json"
MSGPACK = "application/msgpack"
# The names MessagePack goes by (`application/vnd.msgpack` is IANA's registration,
# `application/x-msgpack` the older convention): the answer carries the name the client used.
MSGPACK_ALIASES = ("application/x-msgpack", "application/vnd.msgpack")
OFFERED = (JSON, MSGPACK, *MSGPACK_ALIASES)


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """[(type, subtype, q)] of the well-formed media ranges of an Accept value."""
    out = []
    for item in accept.split(","):
        parts = item.split(";")
        kind, _, sub = parts[0].strip().lower().partition("/")
        if not kind or not sub or (kind == "*" and sub != "*"):
            continue
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
                break
        if 0.0 <= q <= 1.0:
            out.append((kind, sub, q))
    return out


def _quality(offered: str, ranges: list[tuple[str, str, float]]) -> float:
    kind, sub = offered.split("/")
    best, specificity = 0.0, -1
    for k, s, q in ranges:
        level = 2 if (k, s) == (kind, sub) else 1 if (k == kind and s == "*") else \
            0 if (k, s) == ("*", "*") else -1
        if level > specificity:
            best, specificity = q, level
    return best


@lru_cache(maxsize=256)
def negotiate(accept: str | None) -> str | None:
    """The offered media type to answer in, or None when the header excludes them all.
    (Cached: clients send the same few headers; the value is bounded by max_header_bytes.)"""
    if not accept:
        return JSON
    ranges = _ranges(accept)
    if not ranges:
        return JSON
    best, chosen = 0.0, None
    for offered in OFFERED:
        q = _quality(offered, ranges)
        if q > best:
            best, chosen = q, offered
    return chosen
