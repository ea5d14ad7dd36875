"""API keys: the `api_keys_file` setting, checked in front of every route but the probes.

The file (a mounted Secret in k8s: /etc/visionserve/api-keys/keys) holds one key per line
as `label:key`; `#` starts a comment line, blank lines are skipped. The label names the
client in the metrics (`api_key_requests_total{key=<label>}`) and the logs; the key itself
is never logged, counted or echoed. Clients send `Authorization: Bearer <key>` or
`X-API-Key: <key>`; a missing or wrong key is 401 `unauthorized` with
`WWW-Authenticate: Bearer`, answered before admission (an unauthenticated request
holds no memory budget, no in-flight place, no capacity).

The comparison takes the same time whichever key (if any) matches: every configured key
is compared, with `secrets.compare_digest`, against the SHA-256 of what the client sent
(so neither the position of a match nor a key's length shows in the timing), and there is
no early exit.

The file is read at start-up: missing, unreadable, malformed or without a key, the
gateway refuses to start (`ApiKeysError`). It is read again when it changes (its
mtime, size or inode, looked at no more than once per `RELOAD_CHECK_S`; a k8s Secret
update replaces the file through a symlink swap): a changed file that is broken keeps
the keys in force and logs an error.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Callable

import orjson

log = logging.getLogger("visionserve.gateway.auth")
RELOAD_CHECK_S = 1.0
WWW_AUTHENTICATE = b'Bearer realm="visionserve"'


class ApiKeysError(ValueError):
    """The api_keys_file cannot be used (the message never contains a key)."""


def parse(text: str, source: str = "api_keys_file") -> list[tuple[str, bytes]]:
    """[(label, sha256 of the key)] from the file's text."""
    keys: list[tuple[str, bytes]] = []
    labels: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        label, sep, key = line.partition(":")
        label, key = label.strip(), key.strip()
        if not sep or not label or not key:
            raise ApiKeysError(f"{source} line {number}: expected `label:key`")
        if label in labels:
            raise ApiKeysError(f"{source} line {number}: label {label!r} appears twice")
        labels.add(label)
        keys.append((label, _digest(key.encode())))
    if not keys:
        raise ApiKeysError(f"{source} has no key (lines `label:key`): refusing to start "
                           "without the keys it was told to require")
    return keys


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class ApiKeys:
    """The configured keys; `match(presented)` -> the label of the key, or None."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.clock = clock
        self._stamp = None
        self._checked = clock()
        self.keys = self._read()

    def _read(self) -> list[tuple[str, bytes]]:
        try:
            st = os.stat(self.path)
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ApiKeysError(f"api_keys_file {self.path} cannot be read: "
                               f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}") from None
        keys = parse(text, f"api_keys_file {self.path}")
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        return keys

    def refresh(self) -> None:
        """Read the file again if it changed (at most one stat per RELOAD_CHECK_S)."""
        now = self.clock()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
        except OSError as exc:
            log.error("api_keys_file %s: %s; keeping the %d keys in force", self.path, exc,
                      len(self.keys))
            return
        if (st.st_mtime_ns, st.st_size, st.st_ino) == self._stamp:
            return
        try:
            self.keys = self._read()
        except ApiKeysError as exc:
            log.error("%s; keeping the %d keys in force", exc, len(self.keys))
            return
        log.info("api_keys_file %s reloaded: %d keys (%s)", self.path, len(self.keys),
                 ", ".join(label for label, _ in self.keys))

    def match(self, presented: bytes | None) -> str | None:
        """The label of the key `presented` is, or None. Every key is compared (no early
        exit), each comparison over two 32-byte digests."""
        if presented is None:
            return None
        digest = _digest(presented)
        found = None
        for label, key in self.keys:
            if secrets.compare_digest(digest, key):
                found = label
        return found


def presented_key(headers) -> bytes | None:
    """The key of `Authorization: Bearer <key>`, else of `X-API-Key: <key>` (ASGI headers)."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.strip()
    return bearer if bearer is not None else api_key


class ApiKeyAuth:
    """Pure ASGI middleware, outermost: 401 `unauthorized` unless the request carries a
    configured key; the key's label is counted with the answer's status."""

    def __init__(self, app, *, keys: ApiKeys, metrics, exempt: frozenset[str],
                 label: Callable[[dict], str]):
        self.app, self.keys, self.metrics = app, keys, metrics
        self.exempt, self.label = exempt, label

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        self.keys.refresh()
        who = self.keys.match(presented_key(scope["headers"]))
        if who is None:
            self.metrics.requests.labels(self.label(scope), "401").inc()
            self.metrics.api_key_requests.labels("", "401").inc()
            body = orjson.dumps({"error": {"code": "unauthorized", "message":
                                 "a valid API key is required: `Authorization: Bearer <key>` "
                                 "or `X-API-Key: <key>`"}})
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", WWW_AUTHENTICATE)]})
            await send({"type": "http.response.body", "body": body})
            return
        status = ["500"]

        async def counted(message):
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.api_key_requests.labels(who, status[0]).inc()


SCHEMES = {"bearer": {"type": "http", "scheme": "bearer",
                      "description": "`Authorization: Bearer <key>` (api_keys_file)"},
           "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                      "description": "`X-API-Key: <key>` (api_keys_file)"}}


def secure_openapi(schema: dict, exempt: frozenset[str]) -> dict:
    """`schema` with the API-key security schemes required by every operation but the
    exempt paths' (which require none), and the 401 they answer."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(SCHEMES)
    schema["security"] = [{"bearer": []}, {"apiKey": []}]
    for path, operations in schema.get("paths", {}).items():
        for op in operations.values():
            if path in exempt:
                op["security"] = []
            else:
                op.setdefault("responses", {})["401"] = {
                    "description": "no or a wrong API key (WWW-Authenticate)",
                    "content": {"application/json": {"example": {
                        "error": {"code": "unauthorized", "message": "..."}}}}}
    return schema
