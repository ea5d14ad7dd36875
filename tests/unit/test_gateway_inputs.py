"""Request bodies: multipart parsed in memory (never a temporary file), big JSON/base64
bodies parsed off the event loop, large responses rendered off it."""
from __future__ import annotations

import base64
import io
import tempfile
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway import inputs
from tests.unit.crafted_images import multipart
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend


def jpeg_bytes(w, h, seed=0, quality=95) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


BIG = jpeg_bytes(1600, 1200)        # ~1.5-2 MB of noise: over Starlette's 1 MiB spool size
SMALL = jpeg_bytes(64, 48)


def client(**kw) -> TestClient:
    return TestClient(create_app(GatewaySettings(startup_wait_s=0, metrics_port=0, **kw),
                                 backend=FakeBackend()))


@pytest.fixture
def no_temp_files(monkeypatch):
    """Fail on any temporary file (Starlette spools parts over 1 MiB to one)."""
    made = []

    def refuse(*a, **kw):
        made.append(a)
        raise AssertionError("a temporary file was created")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "SpooledTemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    return made


def test_multipart_parts_stay_in_memory(no_temp_files):
    assert len(BIG) > 1024 * 1024
    with client() as c:
        r = c.post("/v1/detect", files=[("images", ("a.jpg", BIG, "image/jpeg")),
                                        ("images", ("b.jpg", SMALL, "image/jpeg"))])
    assert r.status_code == 200, r.text
    assert [(x["width"], x["height"]) for x in r.json()["results"]] == [(1600, 1200), (64, 48)]
    assert no_temp_files == []


def test_multipart_keeps_file_parts_in_order_and_ignores_fields():
    body, ctype = _multipart([("note", None, b"hello"), ("images", "a.jpg", SMALL),
                              ("images", "b.jpg", BIG)])
    parts = inputs.parse_multipart(body, ctype, max_images=4)
    assert [bytes(p) for p in parts] == [SMALL, BIG]


@pytest.mark.parametrize("body,why", [
    (b"--xx\r\nContent-Disposition: form-data; name=\"a\"; filename=\"a\"\r\n\r\nabc", "malformed"),
    (b"no boundary here", "malformed"),
])
def test_malformed_multipart_is_a_400(body, why):
    from gateway.errors import InvalidPayload

    with pytest.raises(InvalidPayload, match=why):
        inputs.parse_multipart(body, "multipart/form-data; boundary=xx", max_images=4)


def test_too_many_parts_is_413():
    from gateway.errors import TooManyImages

    body, ctype = _multipart([("images", f"{i}.jpg", SMALL) for i in range(5)])
    with pytest.raises(TooManyImages):
        inputs.parse_multipart(body, ctype, max_images=4)


def _multipart(parts):
    return multipart(parts, boundary="visionserveboundary", file_type="image/jpeg")


def test_big_json_bodies_are_parsed_off_the_event_loop(monkeypatch):
    threads = []
    real = inputs.decode_json_images

    def spy(*a, **kw):
        threads.append(threading.current_thread().name)
        return real(*a, **kw)

    monkeypatch.setattr(inputs, "decode_json_images", spy)
    with client() as c:
        r = c.post("/v1/detect", json={"images": [base64.b64encode(BIG).decode()]})
    assert r.status_code == 200, r.text
    assert threads and all(t.startswith("decode") for t in threads), threads


def test_large_responses_are_rendered_off_the_event_loop(monkeypatch):
    import orjson

    from gateway import responses

    threads = []
    real = orjson.dumps

    def spy(obj, *a, **kw):
        out = real(obj, *a, **kw)
        if len(out) > 100_000:
            threads.append(threading.current_thread().name)
        return out

    monkeypatch.setattr(responses.orjson, "dumps", spy)
    fake = FakeBackend()
    fake.detections = np.tile(np.array([[10.0, 20.0, 110.0, 220.0]], np.float32), (64, 1))
    with TestClient(create_app(GatewaySettings(startup_wait_s=0, metrics_port=0),
                               backend=fake)) as c:
        r = c.post("/v1/faces", files=[("images", (f"{i}.jpg", SMALL, "image/jpeg"))
                                       for i in range(8)], params={"score_threshold": 0.3})
    assert r.status_code == 200, r.text
    assert len(r.content) > 100_000
    assert threads and all(t.startswith("decode") for t in threads), threads


@pytest.mark.parametrize("length", [71, 257, 5000])
def test_a_boundary_over_the_bound_is_a_400_not_a_500(length):
    from gateway.errors import InvalidPayload

    body, ctype = _multipart([("images", "a.jpg", SMALL)])
    ctype = f"multipart/form-data; boundary={'b' * length}"
    body = body.replace(b"visionserveboundary", b"b" * length)
    with pytest.raises(InvalidPayload, match="boundary"):
        inputs.parse_multipart(body, ctype, max_images=4)
    with client() as c:
        r = c.post("/v1/detect", content=body, headers={"content-type": ctype})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_payload")


def test_multipart_stops_at_the_first_part_over_the_bound():
    from gateway.errors import InvalidPayload
    from tests.unit.crafted_images import many_small_parts

    body, ctype = many_small_parts(2_000_000)
    seen = []
    real = inputs.parse_options_header

    def spy(value):   # called once per part header by the parser's callbacks
        seen.append(value)
        return real(value)

    import unittest.mock as mock
    with mock.patch.object(inputs, "parse_options_header", spy):
        with pytest.raises(InvalidPayload, match=f"over {4 + inputs.MAX_FIELD_PARTS} parts"):
            inputs.parse_multipart(body, ctype, max_images=4)
    assert len(seen) <= 4 + inputs.MAX_FIELD_PARTS + 1


@pytest.mark.parametrize("header,why", [
    (b"X-Long: " + b"a" * 5000, "header size"),
    (b"".join(b"X-%d: 1\r\n" % i for i in range(20))[:-2], "header count"),
])
def test_part_headers_are_bounded(header, why):
    from gateway.errors import InvalidPayload

    body = (b"--xx\r\n" + header + b"\r\nContent-Disposition: form-data; name=\"a\"; "
            b"filename=\"a\"\r\n\r\nabc\r\n--xx--\r\n")
    with pytest.raises(InvalidPayload, match=f"(?i){why}"):
        inputs.parse_multipart(body, "multipart/form-data; boundary=xx", max_images=4)


def test_big_multipart_bodies_are_parsed_off_the_event_loop(monkeypatch):
    threads = []
    real = inputs.parse_multipart

    def spy(*a, **kw):
        threads.append(threading.current_thread().name)
        return real(*a, **kw)

    monkeypatch.setattr(inputs, "parse_multipart", spy)
    with client() as c:
        r = c.post("/v1/detect", files=[("images", ("a.jpg", BIG, "image/jpeg"))])
    assert r.status_code == 200, r.text
    assert threads and all(t.startswith("decode") for t in threads), threads
