"""Slow and idle clients against a real gateway on the stand-in Triton (issue 20): they
must not lock anyone out. One gateway for the module, its deadlines lowered through its
settings so each check takes seconds:

- idle uploads (a head with Content-Length, then nothing), three times the in-flight cap,
  hold no place and no memory: legitimate requests are all served meanwhile, and the
  idle ones get 408 `body_timeout` within the body deadline;
- a trickle upload gets 408 within the body deadline;
- an unfinished request head gets 408 `header_timeout`, a connection that sends nothing is
  closed, and an idle keep-alive connection is closed by uvicorn's own keep-alive timeout;
- one client address over `max_connections_per_client` is refused (429
  `too_many_connections`) while another address is served.

Client source addresses differ on loopback (127.0.0.x all reach `lo`), so the idle
uploads come from addresses of their own, under the per-client limit.
"""
from __future__ import annotations

import json
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.gateway import GatewayFactory, gauge
from tests.support.images import noise_jpeg

pytestmark = pytest.mark.integration

IN_FLIGHT = 8
PER_CLIENT = 6
BODY_S = 2.0
HEAD_S = 1.5
SLACK_S = 3.0           # what a loaded 2-core machine may add to a deadline
KEEP_ALIVE_S = 5.0      # uvicorn's timeout_keep_alive (its default; the gateway keeps it)
JPEG = noise_jpeg(160, 120)


@pytest.fixture(scope="module")
def gw(standin, tmp_path_factory):
    factory = GatewayFactory(tmp_path_factory.mktemp("slow_clients"))
    try:
        yield factory.start(standin.grpc_url, max_in_flight=IN_FLIGHT, body_timeout_s=BODY_S,
                            header_timeout_s=HEAD_S, max_connections_per_client=PER_CLIENT)
    finally:
        factory.stop_all()


def connect(gw, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5, source_address=(source, 0))
    s.settimeout(BODY_S + SLACK_S)
    return s


# the stand-in centernet has no queue deadline: a legitimate request queued behind a batch on a
# loaded machine is served late, never refused by Triton (yolo's 200 ms deadline gave 429s)
DETECT = "/v1/detect?model=centernet"


def head(path: str = DETECT, length: int | None = None, extra: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway", "Content-Type: image/jpeg"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def answer(s: socket.socket) -> tuple[int | None, dict]:
    """(status, JSON body) of the next answer, (None, {}) when the server closed first;
    bounded by the socket's timeout (socket.timeout when nothing came)."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            got = s.recv(65536)
        except ConnectionResetError:
            got = b""
        if not got:
            return None, {}
        data += got
    top, rest = data.split(b"\r\n\r\n", 1)
    lines = top.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(fields.get("content-length", 0))
    while len(rest) < length:
        got = s.recv(65536)
        if not got:
            break
        rest += got
    try:
        doc = json.loads(rest[:length]) if length else {}
    except ValueError:
        doc = {}
    return int(lines[0].split()[1]), doc


def code(doc: dict) -> str | None:
    return doc.get("error", {}).get("code")


def detect(gw, source: str = "127.0.0.1") -> int | str | None:
    """One legitimate request on its own connection: its status (with its error code
    when it is not a 200)."""
    with connect(gw, source) as s:
        s.settimeout(30)
        s.sendall(head(length=len(JPEG)) + JPEG)
        status, doc = answer(s)
        return status if status == 200 else f"{status} {code(doc)}"


def closed_by_server(s: socket.socket) -> bool:
    """True once the server closed (EOF or reset) within the socket's timeout."""
    try:
        while True:
            got = s.recv(65536)
            if not got:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_idle_uploads_hold_no_place_and_get_408_while_others_are_served(gw):
    """3 x the in-flight cap of connections announce a 1 MB body and send nothing: every
    legitimate request meanwhile is a 200, the budget holds none of their announced
    bytes, and each idle one gets 408 `body_timeout` within the body deadline."""
    idle = []
    for i in range(3 * IN_FLIGHT):
        s = connect(gw, f"127.0.0.{10 + i // PER_CLIENT}")   # under the per-client limit
        s.sendall(head(length=1_000_000))
        idle.append(s)
    t0 = time.monotonic()
    try:
        # 4 at a time: one stand-in batch
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda i: detect(gw, f"127.0.0.{20 + i % 4}"),
                                     range(2 * IN_FLIGHT)))
        in_use = gauge(gw, "memory_in_use_bytes")
        assert statuses == [200] * len(statuses), statuses
        assert in_use < 1_000_000, f"idle uploads hold {in_use} bytes of the budget"
        answers = [answer(s) for s in idle]
        took = time.monotonic() - t0
    finally:
        for s in idle:
            s.close()
    assert [(st, code(doc)) for st, doc in answers] == [(408, "body_timeout")] * len(idle)
    assert took <= BODY_S + SLACK_S, took
    assert detect(gw) == 200


def test_a_trickle_upload_gets_408_within_the_body_deadline(gw):
    """100 bytes every 0.1 s of a 1 MB body: 408 `body_timeout` within the deadline,
    never a body taking as long as the client likes."""
    with connect(gw) as s:
        s.sendall(head(length=1_000_000) + JPEG[:100])
        t0 = time.monotonic()
        while time.monotonic() - t0 < BODY_S + SLACK_S:
            if select.select([s], [], [], 0.1)[0]:
                break                          # an answer (or the close) is there
            try:
                s.sendall(JPEG[:100])
            except OSError:
                break
        s.settimeout(SLACK_S)
        try:
            status, doc = answer(s)
        except socket.timeout:
            status, doc = None, {}
        took = time.monotonic() - t0
    assert (status, code(doc)) == (408, "body_timeout"), took
    assert took <= BODY_S + SLACK_S, took


def test_an_unfinished_head_gets_408_and_silent_connections_are_closed(gw):
    """A head that never ends: 408 `header_timeout`; a connection that sends nothing, and
    an idle keep-alive one after its answer, are closed by the server (the latter by
    uvicorn's keep-alive timeout, which the gateway relies on)."""
    partial, silent, kept = connect(gw), connect(gw), connect(gw)
    try:
        kept.settimeout(30)
        kept.sendall(head(length=len(JPEG)) + JPEG)
        assert answer(kept)[0] == 200
        partial.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: gateway\r\nContent-Le")
        t0 = time.monotonic()
        status, doc = answer(partial)
        assert (status, code(doc)) == (408, "header_timeout")
        assert time.monotonic() - t0 <= HEAD_S + SLACK_S
        assert closed_by_server(silent), "a connection that sent nothing is still open"
        kept.settimeout(KEEP_ALIVE_S + SLACK_S)
        assert closed_by_server(kept), "an idle keep-alive connection is still open"
    finally:
        for s in (partial, silent, kept):
            s.close()


def test_one_address_over_its_connection_limit_is_refused_another_is_served(gw):
    """PER_CLIENT keep-alive connections from 127.0.0.2: the next from it is refused at once
    with 429 `too_many_connections` + Retry-After; 127.0.0.3 is served; once one closes,
    127.0.0.2 is served again."""
    held = [connect(gw, "127.0.0.2") for _ in range(PER_CLIENT)]
    for s in held:   # each answered once, then idle within the keep-alive timeout
        s.settimeout(30)
        s.sendall(head(length=len(JPEG)) + JPEG)
    assert [answer(s)[0] for s in held] == [200] * PER_CLIENT
    try:
        with connect(gw, "127.0.0.2") as extra:
            extra.sendall(head(length=len(JPEG)) + JPEG)
            status, doc = answer(extra)
        assert (status, code(doc)) == (429, "too_many_connections")
        assert detect(gw, "127.0.0.3") == 200
        held.pop().close()
        deadline = time.monotonic() + 5
        while (got := detect(gw, "127.0.0.2")) != 200 and time.monotonic() < deadline:
            time.sleep(0.05)   # the server sees the close a moment after the client
        assert got == 200
    finally:
        for s in held:
            s.close()
