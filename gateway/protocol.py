"""uvicorn's httptools protocol with bounds on what a connection may hold, and for how long.

uvicorn (0.54) bounds neither a request's head nor how long a client may take to send
it: a connection that sends nothing, or a head a byte at a time, stays open forever (its
keep-alive timeout is armed only once an answer is sent, and any byte disarms it). Here,
per connection:

- **Head size**: llhttp (httptools) has no limit on the request line and headers, and
  httptools joins a header arriving in pieces by concatenating bytes (a 30 MB header held
  that memory and kept the event loop copying it). Bytes received while a head is
  incomplete are counted; past `max_head_bytes` (plus at most one socket read): 431
  `header_too_large`, before any of it reaches the app.
- **Head time**: a head not complete within `header_timeout_s` of the connection being
  opened or of its first byte: 408 `header_timeout` (a connection that sent nothing is
  just closed).
- **Body time**: the app answers 408 `body_timeout` to a body not in within
  `body_timeout_s` (gateway/admission.py); here, a connection whose body is still owed
  past that deadline once its answer is out is closed, so that neither a route that never
  reads its body nor a client that keeps trickling after its answer holds it open.
- **Connections per client address** (the socket's peer): past `per_client`, a new
  connection is answered 429 `too_many_connections` + Retry-After and closed before its
  request is read (no parsing, no app task).

Refusing connections linger: our side is shut for writing and what the client still sends
is read and dropped until it closes, at most LINGER_S (closing on unread data would send
a reset that can destroy the answer before the client reads it). Idle keep-alive
connections are uvicorn's own `timeout_keep_alive` (5 s), left as it is.
"""
from __future__ import annotations

import logging

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import GatewayError, HeaderTimeout, HeaderTooLarge, TooManyConnections

log = logging.getLogger("visionserve.gateway")
LINGER_S = 2.0
REASONS = {408: b"Request Timeout", 429: b"Too Many Requests",
           431: b"Request Header Fields Too Large"}


def bounded_httptools(settings, metrics=None) -> type:
    """The protocol class for uvicorn.Config(http=...): one server's limits from its
    GatewaySettings, and the connection count per address its connections share."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {
        "max_head_bytes": settings.max_header_bytes,
        "header_timeout_s": settings.header_timeout_s,
        "body_timeout_s": settings.body_timeout_s,
        "per_client": settings.connections_per_client,
        "retry_after": settings.retry_after_s,
        "clients": {}, "metrics": metrics})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 32 * 1024
    header_timeout_s = 10.0
    body_timeout_s = 30.0
    per_client = 0            # 0: no limit
    retry_after = 1
    clients: dict[str, int] = {}   # open connections by peer address (per server: above)
    metrics = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head = 0          # bytes received while the current head is incomplete
        self._in_head = True
        self._begun = False     # a byte of the current head has arrived
        self._in_body = False   # the head is in, the body not yet
        self._late = False      # ... and past its deadline
        self._closing = False
        self._timer = None      # the head's or the body's deadline
        self._linger = None
        self._peer: str | None = None

    # -- connections --------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        peer = self.client[0] if self.client else None
        if self.per_client and peer is not None:
            held = self.clients.get(peer, 0)
            if held >= self.per_client:
                if self.metrics is not None:
                    self.metrics.connections_refused.labels("per_client").inc()
                self._refuse(TooManyConnections(
                    f"{held} connections are open from this address (limit {self.per_client}); "
                    "reuse a connection or retry later", retry_after=self.retry_after))
                return
            self.clients[peer] = held + 1
            self._peer = peer
        self._arm(self.header_timeout_s, self._head_late)

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self._linger is not None:
            self._linger.cancel()
        if self._peer is not None:
            left = self.clients.get(self._peer, 1) - 1
            if left > 0:
                self.clients[self._peer] = left
            else:
                self.clients.pop(self._peer, None)
            self._peer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._in_head:
            self._head += len(data)
        super().data_received(data)
        # still in the head after this read (a head and its body may share one read)
        if self._in_head and self._head > self.max_head_bytes and not self._closing \
                and not self.transport.is_closing():
            self._refuse(HeaderTooLarge(
                f"the request line and headers are over {self.max_head_bytes} bytes"))

    # -- the parser's callbacks: where a head and a body begin and end ------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        if self._timer is None:
            self._arm(self.header_timeout_s, self._head_late)

    def on_headers_complete(self) -> None:
        self._in_head, self._head, self._begun = False, 0, False
        self._in_body, self._late = True, False
        self._arm(self.body_timeout_s, self._body_late)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._in_head, self._in_body = True, False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_body and self._late and not self.transport.is_closing():
            self._linger_close()

    # -- deadlines -----------------------------------------------------------------------
    def _arm(self, seconds: float, then) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_late(self) -> None:
        self._timer = None
        if self._closing or self.transport.is_closing():
            return
        if not self._begun:            # nothing sent since the connection was opened
            self.transport.close()
            return
        if self.metrics is not None:
            self.metrics.timeouts.labels("head").inc()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()     # a pipelined head: no answer can go in between
            return
        self._refuse(HeaderTimeout(
            f"the request line and headers did not arrive within {self.header_timeout_s:g} s"))

    def _body_late(self) -> None:
        """The app answers 408 itself (its receive has the same deadline, from a moment
        later); what is left here is a body still owed once the answer is out."""
        self._timer = None
        self._late = True
        if self.cycle is not None and self.cycle.response_complete \
                and not self.transport.is_closing():
            self._linger_close()

    # -- refusing ------------------------------------------------------------------------
    def _refuse(self, err: GatewayError) -> None:
        body = orjson.dumps(err.body())
        extra = b"".join(k.lower().encode() + b": " + v.encode() + b"\r\n"
                         for k, v in err.headers().items())
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n" % (err.status, REASONS[err.status])
            + b"content-type: application/json\r\nconnection: close\r\n" + extra
            + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self._linger_close()

    def _linger_close(self) -> None:
        self._closing = True
        self._disarm()
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()         # read (and drop) until the client closes
        self._linger = self.loop.call_later(LINGER_S, self.transport.close)
