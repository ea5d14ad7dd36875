"""uvicorn's httptools protocol with a bound on the request head.

llhttp (httptools) sets no limit on the request line and headers, and httptools joins a
header that arrives in pieces by concatenating bytes: one client sending a 30 MB header
held that memory and kept the event loop copying it. Here the bytes received while a
request's head is incomplete are counted; past `max_head_bytes` (plus at most one read
from the socket) the client gets 431 `header_too_large`, before any of it reaches the
app. The connection then lingers: our side is shut for writing and what the client still
sends is read and dropped until it closes, at most LINGER_S (closing on unread data
would send a reset that can destroy the 431 before the client reads it).
"""
from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import HeaderTooLarge

LINGER_S = 2.0


def bounded_httptools(max_head_bytes: int) -> type:
    """The protocol class for uvicorn.Config(http=...), with this limit."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,),
                {"max_head_bytes": max_head_bytes})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 32 * 1024

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head = 0          # bytes received while the current head is incomplete
        self._in_head = True
        self._refused = False
        self._linger = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head += len(data)
        super().data_received(data)
        # still in the head after this read (a head and its body may share one read)
        if self._in_head and self._head > self.max_head_bytes and not self.transport.is_closing():
            self._refuse()

    def on_headers_complete(self) -> None:
        self._in_head, self._head = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def connection_lost(self, exc) -> None:
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def _refuse(self) -> None:
        self._refused = True
        err = HeaderTooLarge(f"the request line and headers are over {self.max_head_bytes} bytes")
        body = orjson.dumps(err.body())
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = self.loop.call_later(LINGER_S, self.transport.close)
