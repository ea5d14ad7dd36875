"""Crafted bytes against a real `python -m gateway` and the session's CPU tritonserver
(issue 20, codec part): each test is a defect of the gateway before imaging/ existed
(run it against another checkout's gateway with VISIONSERVE_TEST_GATEWAY_ROOT).

- a PNG of compressed text chunks: milliseconds of decoding, RSS under budget + 200 MB;
- a 30 MB JPEG of fill bytes and a 30 MB multipart body of tiny parts: /healthz keeps
  answering within 0.5 s while each is handled, and each is a 4xx;
- a multipart boundary over the parser's bound: 400, not 500;
- a request head over `max_header_bytes`: 431, the gateway serving on;
- a request with one bad image: its other decodes do not run on after the answer.
"""
from __future__ import annotations

import asyncio
import re
import time

import pytest

from perf import openloop
from tests.support.gateway import send
from tests.unit import crafted_images as crafted

httpx = pytest.importorskip("httpx")
from perf.gatewayproc import Gateway  # noqa: E402  (needs httpx)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
BUDGET = 512 * MiB


@pytest.fixture(scope="module")
def gateway(served, tmp_path_factory):
    served.need("yolo")
    # forward=pixels: these bound the gateway's own decoder (encoded bytes: test_gateway_forward_live)
    gw = Gateway(served.server.grpc_url, tmp_path_factory.mktemp("crafted") / "gateway.log",
                 memory_budget_bytes=BUDGET, forward="pixels")
    try:
        yield gw.wait_ready()
    finally:
        gw.stop()


def post(gw: Gateway, body: bytes, ctype: str = "image/jpeg", path: str = "/v1/detect",
         timeout_s: float = 120):
    return send(gw, path, body, ctype, keep_alive=True, timeout_s=timeout_s)


def counter(gw: Gateway, name: str) -> float:
    m = re.search(rf"^visionserve_gateway_{name} (\S+)$", gw.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def test_a_png_of_compressed_text_chunks_is_answered_fast_within_the_budget(gateway):
    """Four 0.77 MB PNGs of 100 zTXt chunks each (7.9 MB of zeros apiece): libpng spent
    ~1.9 s of a decode thread inflating each; the codec hands it none of the chunks."""
    bomb = crafted.png_text_bomb()
    assert len(bomb) < MiB
    decoding = counter(gateway, "decode_duration_seconds_sum")

    async def run():
        with openloop.Sampler(gateway.pid) as sampler:
            t0 = time.perf_counter()
            recs = await asyncio.gather(*(post(gateway, bomb, "image/png") for _ in range(4)))
            return recs, time.perf_counter() - t0, sampler.peak_rss

    recs, seconds, peak = asyncio.run(run())
    decoding = counter(gateway, "decode_duration_seconds_sum") - decoding
    print(f"\n4 x {len(bomb) / 1e6:.2f} MB PNG of 100 zTXt chunks: "
          f"{[r.status for r in recs]} in {seconds:.1f} s, {decoding:.2f} s of decoding; "
          f"peak RSS {peak / MiB:.0f} MiB")
    assert all(r.status is not None and 200 <= r.status < 500 for r in recs), \
        [(r.status, r.error) for r in recs]
    assert peak <= BUDGET + 200 * MiB
    # the text chunks never reach libpng: four 64x64 decodes, not seconds of inflating
    assert decoding < 1.0, f"{decoding:.1f} s of decode threads for four 64x64 PNGs"


async def _healthz_while(gw: Gateway, send) -> tuple[object, float, int]:
    """`send()` in flight while /healthz is asked every 50 ms on its own connections:
    (the answer, the slowest /healthz, how many were asked)."""
    task = asyncio.ensure_future(send())
    slowest, n = 0.0, 0
    while not task.done():
        rec = await openloop.request("127.0.0.1", gw.port, "/healthz", method="GET", timeout_s=30)
        assert rec.status == 200, rec
        slowest, n = max(slowest, rec.total_s), n + 1
        await asyncio.sleep(0.05)
    return await task, slowest, n


@pytest.mark.parametrize("kind", ["jpeg_fill_bytes", "multipart_tiny_parts"])
def test_healthz_answers_while_a_crafted_30mb_body_is_handled(gateway, kind):
    if kind == "jpeg_fill_bytes":
        body = crafted.jpeg_fill_bomb(30 * 1000 * 1000, crafted.jpeg(crafted.gradient(48, 64)))
        ctype = "image/jpeg"
    else:
        body, ctype = crafted.many_small_parts(30 * 1000 * 1000)
    rec, slowest, n = asyncio.run(_healthz_while(gateway, lambda: post(gateway, body, ctype)))
    print(f"\n{kind}: {len(body) / 1e6:.0f} MB answered {rec.status} {rec.code} in "
          f"{rec.total_s:.2f} s; slowest of {n} /healthz {slowest * 1e3:.0f} ms")
    assert rec.status is not None and 400 <= rec.status < 500, (rec.status, rec.error)
    assert slowest <= 0.5, f"/healthz took {slowest:.2f} s while the body was handled"


def test_a_multipart_boundary_over_the_bound_is_a_400(gateway):
    small = crafted.jpeg(crafted.gradient(48, 64))
    for length in (71, 300, 5000):
        body, ctype = crafted.multipart([("images", "a.jpg", small)], boundary="b" * length)
        rec = asyncio.run(post(gateway, body, ctype))
        assert (rec.status, rec.code) == (400, "invalid_payload"), (length, rec.status, rec.body)
    body, ctype = crafted.multipart([("images", "a.jpg", small)], boundary="b" * 70)
    assert asyncio.run(post(gateway, body, ctype)).status == 200


def test_a_request_head_over_the_limit_is_a_431_and_the_gateway_serves_on(gateway):
    rec = asyncio.run(openloop.request("127.0.0.1", gateway.port, "/healthz", method="GET",
                                       headers={"X-Padding": "a" * (200 * 1024)}, timeout_s=30))
    assert rec.status == 431, (rec.status, rec.error)
    assert rec.code == "header_too_large"
    ok = asyncio.run(openloop.request("127.0.0.1", gateway.port, "/healthz", method="GET",
                                      headers={"X-Padding": "a" * 8000}, timeout_s=30))
    assert ok.status == 200


def test_a_failed_images_other_decodes_do_not_outlive_the_request(gateway):
    """One truncated JPEG (header fine, data cut) and eight 12 MP PNGs (~0.1 s of
    decoding each): once the 400 is answered, no decode of the request still runs."""
    good = crafted.jpeg(crafted.gradient(480, 640))
    cut = good[:len(good) // 3]
    big = crafted.png(crafted.gradient(3000, 4000), compress_level=1)
    body, ctype = crafted.multipart([("images", "cut.jpg", cut)]
                                    + [("images", f"{i}.png", big) for i in range(8)])
    assert len(body) < 32 * MiB
    before = counter(gateway, "decode_duration_seconds_count")
    rec = asyncio.run(post(gateway, body, ctype))
    at_answer = counter(gateway, "decode_duration_seconds_count")
    time.sleep(2.0)
    after = counter(gateway, "decode_duration_seconds_count")
    print(f"\n{rec.status} {rec.code}: {at_answer - before:.0f} decodes finished by the answer, "
          f"{after - at_answer:.0f} after it")
    assert (rec.status, rec.code) == (400, "invalid_image"), (rec.status, rec.body)
    assert after == at_answer, f"{after - at_answer:.0f} decodes ran on after the answer"
    assert counter(gateway, "memory_in_use_bytes") == 0
