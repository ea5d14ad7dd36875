"""The gateway under hostile clients, as real processes: the shared tritonserver of
fixed-time stand-ins (tests/support/triton.STANDINS: capacity known, whatever the CPU)
and `python -m gateway`, driven by the raw client of perf/openloop.py. (Overload:
test_gateway_overload.py.)

- big bodies: 64 concurrent 30 MB multipart uploads against a 512 MiB budget;
- aborts: uploads cut mid-body and clients gone before the answer;
- the shm slot pool under requests cancelled at their deadline for SLOT_POOL_S (8 s here,
  120 s in make test-load), and Triton running none of them once their deadline passed;
- a cancelled request leaves Triton's queue; random 404 paths; an API-key dependency.
"""
from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from perf import openloop
import contract
from serving.tritonserver import free_port
from tests.support import triton as triton_support
from tests.support.gateway import gauge, send, statuses
from tests.support.images import noise_jpeg
from tests.support.polling import eventually, settled, wait_for

httpx = pytest.importorskip("httpx")
from perf.gatewayproc import GATEWAY_ROOT  # noqa: E402  (needs httpx)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# centernet: slow (400 ms per batch), for deadlines and hang-ups while queued
SLOW_MS, SLOW_BATCH = 400, 4
BUDGET = 512 * MiB
GONE = 6    # clients that leave while queued (under centernet's admitted 2 batches of 4)
# short in make test, full length in make test-load (mk/test.mk)
SLOT_POOL_S = float(os.environ.get("VISIONSERVE_SLOT_POOL_S", 8))
# the stand-ins' settings (tests/support/triton.STANDINS) these figures are derived from
assert triton_support.STANDINS["centernet"][1]["batch_ms"] == SLOW_MS
assert triton_support.STANDINS["centernet"][1]["max_batch_size"] == SLOW_BATCH


SMALL = noise_jpeg()


def shm_settings(standin) -> dict:
    return {"shared_memory": "on", "triton_admin_key": standin.admin_key}


# -- big bodies -----------------------------------------------------------------------------
def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = "hostileboundary7MA4YWxk"
    out = bytearray()
    for i, data in enumerate(parts):
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
                f'filename="{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n').encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def test_big_bodies_stay_within_the_budget_in_memory(start_gateway, tmp_path):
    import simplejpeg

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    gw = start_gateway(memory_budget_bytes=BUDGET, env={"TMPDIR": str(tmpdir)})
    rng = np.random.default_rng(0)
    big = simplejpeg.encode_jpeg(rng.integers(0, 255, (1800, 2400, 3), np.uint8), quality=95)
    body, ctype = _multipart([big] * 3)
    assert 30_000_000 <= len(body) <= 32 * MiB

    rss0 = openloop.rss_bytes(gw.pid)

    async def run():
        with openloop.Sampler(gw.pid, watch=str(tmpdir)) as sampler:
            # keep-alive, as HTTP clients are: with "Connection: close" uvicorn closes at
            # once on a refused, unread 31 MB body, and the reset can beat the 503 to a
            # client slowed by a loaded machine (13 of 49 refusals lost once in make test)
            recs = await asyncio.gather(*(send(gw, "/v1/detect", body, keep_alive=True,
                                               headers={"Content-Type": ctype}, timeout_s=120)
                                          for _ in range(64)))
        return recs, sampler

    recs, sampler = asyncio.run(run())
    codes = [r.status for r in recs]
    print(f"\n64 x {len(body) / 1e6:.1f} MB: {codes.count(200)} ok, {codes.count(503)} shed; "
          f"RSS {rss0 / MiB:.0f} MiB before, peak {sampler.peak_rss / MiB:.0f} MiB; "
          f"temp files seen: {sorted(sampler.seen)}")
    # 429: Triton's 200 ms queue timeout (3-frame requests run one per batch of 4 in the
    # 100 ms stand-in when several finish decoding together): a busy answer, not memory
    assert set(codes) <= {200, 429, 503}, [(r.status, r.error) for r in recs
                                           if r.status not in (200, 429, 503)]
    # capacity counts frames: the 100 ms stand-in admits about two 3-frame requests at a time,
    # and the 64 bodies complete within the same second, so most refusals are "capacity";
    # the memory budget must still have refused some, and a served one must exist (how many
    # is a race of 64 uploads on 2 cores: 1 to ~5 seen)
    assert codes.count(200) >= 1 and codes.count(503) >= 1
    assert all("retry-after" in r.headers for r in recs if r.status in (429, 503))
    shed = gw.series("shed_total")
    assert shed.get(("memory",), 0) >= 1, shed
    assert sum(shed.values()) >= codes.count(503), (shed, codes.count(503))   # each 503 has its reason
    assert sampler.peak_rss <= BUDGET + 200 * MiB, (rss0, sampler.peak_rss)
    assert not sampler.seen and not list(tmpdir.iterdir()), "a temporary file was written"
    assert gauge(gw, "memory_in_use_bytes") == 0


# -- aborts --------------------------------------------------------------------------------
def _gateway_files(pid: int) -> tuple[int, int]:
    fds = openloop.open_fds(pid)
    return len(fds), len([f for f in os.listdir("/dev/shm") if f.startswith(f"visionserve_gw_{pid}_")])


def test_aborted_uploads_are_not_errors_and_leak_nothing(start_gateway, standin, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    gw = start_gateway(env={"TMPDIR": str(tmpdir)}, **shm_settings(standin))
    assert post_sync(gw, "/v1/detect?model=centernet").status == 200

    async def leave(n):
        await asyncio.gather(*(_hang_up_after(gw, "/v1/detect?model=centernet", SMALL, 0.1)
                               for _ in range(n)))

    # once, so that the pool has its working size (slots are kept for reuse; each holds
    # an fd: Python's mmap keeps one), and every retired slot reclaimed
    asyncio.run(leave(GONE))
    wait_for(lambda: gw.series("shm_slots")[("retired",)] == 0, 10, "every retired slot reclaimed")
    gw.client.close()          # its keep-alive connection would be counted, then time out
    before = settled(lambda: _gateway_files(gw.pid), quiet_s=0.5)
    blob = b"\xff\xd8\xff" + bytes(MiB)

    async def run():
        ten = asyncio.Semaphore(10)   # 10 x 20 MB announced: within the budget, no 503

        async def cut():
            async with ten:
                return await send(gw, "/v1/detect", blob, declared=20_000_000, cut_after=MiB)

        with openloop.Sampler(gw.pid, watch=str(tmpdir)) as sampler:
            # full bodies, then gone while their (slow) answer is queued in Triton (as
            # many as the model's capacity admits at once: 2 batches of 4)
            await asyncio.gather(*(cut() for _ in range(100)), leave(GONE))
        return sampler

    sampler = asyncio.run(run())
    wait_for(lambda: gauge(gw, "in_flight_requests") == 0 and gauge(gw, "receiving_requests") == 0,
             10, "no request in flight or receiving its body")
    disconnects = gw.series("client_disconnects_total")
    assert disconnects.get(("/v1/detect", "body")) == 100, disconnects
    assert disconnects.get(("/v1/detect", "response")) == 2 * GONE, disconnects
    assert not any(s.startswith("5") for s in statuses(gw)), statuses(gw)
    assert "Traceback" not in gw.log_text()
    wait_for(lambda: gw.series("shm_slots")[("in_use",)] == 0 and gw.series("shm_slots")[("retired",)] == 0,
             10, f"every slot free again ({gw.series('shm_slots')})")
    wait_for(lambda: _gateway_files(gw.pid) == before, 10, f"fds and slot files back to {before}")
    assert not sampler.seen and not list(tmpdir.iterdir())


def post_sync(gw, path, body=SMALL):
    return asyncio.run(send(gw, path, body))


async def _hang_up_after(gw, path, body, seconds):
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    await writer.drain()
    await asyncio.sleep(seconds)
    writer.close()
    await writer.wait_closed()


def _idle_stats(server, model: str) -> dict[str, int]:
    """Triton's statistics of `model` once its queue is empty and its counts stopped moving
    for two batches' time (what was queued would have run by then)."""
    wait_for(lambda: triton_support.pending(server, model) == 0, 30, f"{model}'s queue empty")
    return settled(lambda: triton_support.stats(server, model), quiet_s=2 * SLOW_MS / 1000, timeout_s=60)


def test_a_client_gone_takes_its_request_out_of_tritons_queue(start_gateway, standin):
    """A direct request and the live one through the gateway: Triton's own pending count
    shows one executing and one queued (the instance busy, whichever came first). Then
    GONE requests whose clients leave while queued behind them: Triton runs none of them
    (its own counts: 2 requests), and the live request is not delayed by them."""
    import tritonclient.grpc as grpcclient

    gw = start_gateway()
    post_sync(gw, "/v1/detect?model=centernet")
    n0 = _idle_stats(standin, "centernet")["inference_count"]
    client = grpcclient.InferenceServerClient(standin.grpc_url)
    spec = contract.load("centernet").inputs[0]
    inp = grpcclient.InferInput(spec.name, [1, *spec.dims], spec.triton_dtype)
    inp.set_data_from_numpy(np.zeros((1, *spec.dims), spec.dtype))
    client.is_server_live()                          # the channel is up before the clock starts
    direct: list = []

    def occupy():
        try:
            direct.append(client.infer("centernet", [inp], client_timeout=30))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            direct.append(exc)

    async def run():
        threading.Thread(target=occupy, daemon=True).start()
        live = asyncio.ensure_future(send(gw, "/v1/detect?model=centernet", SMALL))
        busy = await eventually(lambda: triton_support.pending(standin, "centernet") == 1, 10)
        assert busy, "the direct and the live request never showed as one executing, one queued"
        await asyncio.gather(*(_hang_up_after(gw, "/v1/detect?model=centernet", SMALL, 0.1)
                               for _ in range(GONE)))
        return await live

    try:
        live = asyncio.run(run())
        wait_for(lambda: direct, 10, "the direct request answered")
    finally:
        client.close()
    assert not isinstance(direct[0], Exception), direct
    # behind at most one batch of the direct request, then its own. Triton's count below is
    # the check that no GONE request ran; this loose wall bound (a loaded 2-core machine
    # added 0.2 s to 0.8 s) only catches the live one stuck behind GONE executions (+0.4 s each)
    assert live.status == 200 and live.total_s < (2 + GONE) * SLOW_MS / 1000, live
    n1 = _idle_stats(standin, "centernet")["inference_count"]
    print(f"\nTriton ran {n1 - n0} requests (1 direct, 1 live, {GONE} whose clients left)")
    assert n1 - n0 == 2, f"Triton ran {n1 - n0 - 2} requests whose clients had left"
    assert gw.series("client_disconnects_total")[("/v1/detect", "response")] == GONE


# -- the shared-memory slot pool ------------------------------------------------------------
@pytest.mark.load
def test_requests_cancelled_at_their_deadline_do_not_drain_the_slot_pool(start_gateway, standin):
    """4 clients in a closed loop at a 250 ms deadline against the 400 ms stand-in for
    SLOT_POOL_S: every slot comes back, the pool still serves through shared memory, and
    Triton runs none of the requests once their deadline passed. That last part is judged
    after Triton's queue drained (a request whose cancellation did not reach Triton would
    still run then): the clients send 16 requests/s, the stand-in can run 10/s, so with
    cancellation Triton runs at most 10/s of the run and about 0.6 of what was sent,
    without it everything sent."""
    gw = start_gateway(triton_timeout_s=0.25, **shm_settings(standin))
    n0 = _idle_stats(standin, "centernet")["inference_count"]

    async def worker(stop_at):
        codes = []
        while time.monotonic() < stop_at:
            codes.append((await send(gw, "/v1/detect?model=centernet", SMALL)).status)
        return codes

    async def run():
        stop_at = time.monotonic() + SLOT_POOL_S
        return sum(await asyncio.gather(*(worker(stop_at) for _ in range(4))), [])

    t0 = time.monotonic()
    codes = asyncio.run(run())
    elapsed = time.monotonic() - t0
    n1 = _idle_stats(standin, "centernet")["inference_count"]
    capacity = SLOW_BATCH * math.ceil((elapsed + 0.25) / (SLOW_MS / 1000)) + SLOW_BATCH
    print(f"\n{len(codes)} requests at a 250 ms deadline in {elapsed:.0f} s: "
          f"{ {c: codes.count(c) for c in sorted(set(codes))} }; Triton ran {n1 - n0} "
          f"(at most {capacity} within the run); slots {gw.series('shm_slots')}")
    # the deadline (504), or Triton's queue timeout, which the fleet sets to the time left
    # when that is shorter (429): either way the request is abandoned or answered early
    gave_up = codes.count(504) + codes.count(429)
    assert gave_up >= 0.95 * len(codes) and codes.count(504) >= len(codes) / 2
    assert len(codes) > 4 * SLOT_POOL_S and set(codes) <= {504, 429, 503, 200}
    # requests already in a running batch are executed; the ones still queued are not,
    # not even later: everything Triton ran fits in the run itself
    assert n1 - n0 <= capacity and n1 - n0 < 0.75 * len(codes), "cancelled requests still ran in Triton"
    wait_for(lambda: gw.series("shm_slots")[("in_use",)] == 0 and gw.series("shm_slots")[("retired",)] == 0,
             15, f"every slot free again ({gw.series('shm_slots')})")
    assert gauge(gw, "shm_bytes") <= gauge(gw, "shm_bytes_limit")
    # the pool still serves: the next requests go through shared memory
    before = gw.series("triton_input_path_total")
    assert post_sync(gw, "/v1/detect").status == 200
    after = gw.series("triton_input_path_total")
    assert after[("yolo", "shm")] == before.get(("yolo", "shm"), 0) + 1, after
    assert gw.series("shm_wire_fallbacks_total").get(("pool_full",), 0) == 0


# -- labels and auth ----------------------------------------------------------------------------
def test_random_404_paths_add_no_label_values(start_gateway):
    gw = start_gateway()
    assert post_sync(gw, "/v1/detect").status == 200
    before = set(gw.series("requests_total"))
    rng = np.random.default_rng(1)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for _ in range(1000):
            assert c.get(f"/v1/{rng.bytes(6).hex()}").status_code == 404
    after = set(gw.series("requests_total"))
    print(f"\n1,000 random 404 paths: {len(after - before)} new requests_total label sets")
    assert after - before <= {("unmatched", "404")}, sorted(after - before)[:5]
    assert gw.series("requests_total")[("unmatched", "404")] == 1000


APP_WITH_KEY = textwrap.dedent("""
    import sys, uvicorn
    from fastapi import Depends, Header, HTTPException
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    async def api_key(x_api_key: str | None = Header(None)):
        if x_api_key != "s3cret":
            raise HTTPException(401, "missing or wrong API key")

    app = create_app(GatewaySettings(triton_grpc=sys.argv[1]), dependencies=[Depends(api_key)])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
""")


def test_an_api_key_dependency_protects_every_route_of_a_running_gateway(standin, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", APP_WITH_KEY, standin.grpc_url, str(port)],
                            cwd=GATEWAY_ROOT, env=dict(os.environ, PYTHONPATH=GATEWAY_ROOT),
                            stdout=open(tmp_path / "app.log", "wb"), stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            wait_for(lambda: _up(c), 60, "the app with an API key ready (app.log)")
            for path in ("/v1/faces", "/v1/detect", "/v1/ocr", "/v1/analyze", "/v1/embed/image",
                         "/v1/embed/text"):
                r = c.post(path, content=SMALL, headers={"content-type": "image/jpeg"})
                assert r.status_code == 401, (path, r.text)
            assert c.get("/v1/models").status_code == 401
            r = c.post("/v1/detect", content=SMALL,
                       headers={"content-type": "image/jpeg", "x-api-key": "s3cret"})
            assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        proc.wait(20)


def _up(client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False
