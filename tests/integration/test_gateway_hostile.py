"""The gateway under overload and hostile clients, as real processes: a tritonserver of
fixed-time stand-ins (serving/standins.py: capacity known, whatever the CPU) and
`python -m gateway`, driven by the raw client of perf/openloop.py.

- overload: 4 x C for 60 s: accepted p99 <= 2 x their p99 at 0.7 x C, every refusal a
  fast 429/503 with Retry-After (over 50 ms only while the hypervisor took
  >= 10% of the VM's CPU, measured, or 0.1% of them), no other error, RSS under the budget + 200 MB;
- big bodies: 64 concurrent 30 MB multipart uploads against a 512 MiB budget;
- aborts: uploads cut mid-body and clients gone before the answer;
- the shm slot pool under requests cancelled at their deadline for 2 minutes;
- a cancelled request leaves Triton's queue; random 404 paths; an API-key dependency.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request

import numpy as np
import pytest

from perf import openloop
from serving import standins
from serving.tritonserver import TritonServer, free_port
from tests.integration.conftest import require_triton

httpx = pytest.importorskip("httpx")
from perf.gatewayproc import GATEWAY_ROOT, Gateway  # noqa: E402  (needs httpx)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# yolo and mobileclip_image: 100 ms per batch of at most 4, one instance: C = 40
# requests/s. The overload runs on mobileclip_image: its 256x256 frames (196 KB) keep
# Triton's own per-request copying small beside the fixed batch time.
BATCH_MS, MAX_BATCH = 100, 4
C = MAX_BATCH / (BATCH_MS / 1000)
# centernet: slow (400 ms per batch), for deadlines and hang-ups while queued
SLOW_MS = 400
BUDGET = 512 * MiB
GONE = 6    # clients that leave while queued (under centernet's admitted 2 batches of 4)
OVERLOAD_S = float(os.environ.get("VISIONSERVE_OVERLOAD_S", 60))
SLOT_POOL_S = float(os.environ.get("VISIONSERVE_SLOT_POOL_S", 120))


def jpeg(w=320, h=240, seed=0, quality=85) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h // 8, w // 8, 3), np.uint8).repeat(8, 0).repeat(8, 1)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


SMALL = jpeg()
TINY = jpeg(64, 48)      # the overload's images: the gateway's own CPU stays small beside C


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    require_triton()
    root = tmp_path_factory.mktemp("hostile")
    repo = root / "repo"
    repo.mkdir()
    standins.add_fixed_time(repo, "yolo", batch_ms=BATCH_MS, max_batch_size=MAX_BATCH)
    # a 1 s queue timeout instead of the committed 200 ms: Triton's own timeout rejects only
    # after the request waited it (never "within 50 ms"), and a CPU-starved stand-in on a
    # loaded 2-core box runs late; the gateway's shedding is what is under test (a gateway
    # that queued would blow the accepted p99 either way)
    standins.add_fixed_time(repo, "mobileclip_image", batch_ms=BATCH_MS, max_batch_size=MAX_BATCH,
                            queue_timeout_us=1_000_000)
    # no queue timeout: a request queued behind its 400 ms batches leaves Triton's queue
    # only when it is cancelled (the gRPC call of a client gone, a deadline)
    standins.add_fixed_time(repo, "centernet", batch_ms=SLOW_MS, max_batch_size=MAX_BATCH,
                            queue_timeout_us=0)
    server = TritonServer(repo, free_port(), free_port(), free_port(), log_path=root / "triton.log")
    server.start(180)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_gateway(standin, tmp_path):
    started = []

    def start(**settings):
        gw = Gateway(standin.grpc_url, tmp_path / f"gateway{len(started)}.log", **settings)
        started.append(gw)
        return gw.wait_ready()

    yield start
    for gw in started:
        gw.stop()


def shm_settings(standin) -> dict:
    return {"shared_memory": "on", "triton_admin_key": standin.admin_key}


def triton_stats(server, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of a model, from Triton's own statistics."""
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/stats",
                                 headers=server.admin_headers)   # statistics are restricted
    with urllib.request.urlopen(req, timeout=10) as r:
        s = json.loads(r.read())["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def post(gw: Gateway, path: str, body: bytes, **kw):
    headers = {"Content-Type": "image/jpeg", **kw.pop("headers", {})}
    return openloop.request("127.0.0.1", gw.port, path, body, headers=headers, **kw)


def gauge(gw: Gateway, name: str) -> float:
    """An unlabelled visionserve_gateway_* value."""
    import re

    m = re.search(rf"^visionserve_gateway_{name} (\S+)$", gw.metrics(), re.M)
    return float(m.group(1)) if m else float("nan")


def statuses(gw: Gateway) -> dict[str, float]:
    out: dict[str, float] = {}
    for (_, status), v in gw.series("requests_total").items():
        out[status] = out.get(status, 0) + v
    return out


def wait_for(predicate, timeout_s=10.0, every_s=0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


# -- overload ----------------------------------------------------------------------------
def test_overload_sheds_fast_and_keeps_accepted_latency(start_gateway):
    gw = start_gateway()

    async def phase(rate, seconds, seed):
        return await openloop.open_loop(lambda: post(gw, "/v1/embed/image", TINY), rate,
                                        seconds, seed)

    async def run():
        await phase(C / 2, 3, 0)                       # warm up, learn the capacity
        calm = await phase(0.7 * C, 20, 1)
        with openloop.Sampler(gw.pid) as sampler, openloop.StealWatch() as watch:
            storm = await phase(4 * C, OVERLOAD_S, 2)
        return calm, storm, sampler.peak_rss, watch

    calm, storm, peak_rss, watch = asyncio.run(run())
    ok_calm = [r.total_s for r in calm if r.status == 200]
    ok_storm = [r.total_s for r in storm if r.status == 200]
    refused = [r for r in storm if r.status != 200]
    p99_calm, p99_storm = openloop.percentile(ok_calm, 99), openloop.percentile(ok_storm, 99)
    print(f"\n0.7xC: {len(calm)} sent, {len(ok_calm)} ok, p99 {p99_calm * 1e3:.0f} ms; "
          f"4xC: {len(storm)} sent, {len(ok_storm)} ok, p99 {p99_storm * 1e3:.0f} ms, "
          f"{len(refused)} refused, slowest refusal "
          f"{max((r.first_s or 0 for r in refused), default=0) * 1e3:.1f} ms; "
          f"peak RSS {peak_rss / MiB:.0f} MiB")
    for name, recs in (("0.7xC", calm), ("4xC", storm)):
        by: dict = {}
        for r in recs:
            by.setdefault((r.status, r.code), []).append(r.first_s or 0)
        print(name, ", ".join(f"{len(v)} x {s} {c} (slowest {max(v) * 1e3:.0f} ms)"
                              for (s, c), v in sorted(by.items(), key=lambda kv: -len(kv[1]))))
    # at 0.7 x C Poisson bursts beyond one batch waiting are shed too (the stand-in's batch
    # time is half its queue timeout): most are served
    assert len(ok_calm) >= 0.8 * len(calm), "requests refused at 0.7 x C"
    assert len(ok_storm) >= 0.8 * C * OVERLOAD_S, "the gateway did not keep Triton busy"
    assert p99_storm <= 2 * p99_calm, (p99_storm, p99_calm)
    assert {r.status for r in refused} <= {429, 503}, {r.status for r in refused}
    assert all("retry-after" in r.headers for r in refused)
    # a refusal slower than 50 ms is the machine's when the hypervisor took >= 10% of this
    # VM's CPU during it or just before (perf.openloop.StealWatch); others at most 0.1%
    # (shorter stalls hide in its 0.5 s windows; see perf/soak.py)
    slow = [r for r in refused if r.first_s > 0.05]
    shown = [(round(r.first_s * 1e3), watch.during(r, 0.25)) for r in slow]
    print(f"refusals over 50 ms (ms, CPU stolen): {shown}; {watch.summary()}")
    unexplained = watch.unexplained(slow, 0.25)
    assert len(unexplained) <= 0.001 * len(refused), f"refusals over 50 ms, no steal: {shown}"
    assert not [r.error for r in calm + storm if r.status is None]
    assert set(statuses(gw)) <= {"200", "429", "503"}, statuses(gw)
    assert peak_rss <= BUDGET + 200 * MiB


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

    async def run():
        with openloop.Sampler(gw.pid, watch=str(tmpdir)) as sampler:
            # keep-alive, as HTTP clients are: with "Connection: close" uvicorn closes at
            # once on a refused, unread 31 MB body, and the reset can beat the 503 to a
            # client slowed by a loaded machine (13 of 49 refusals lost once in make test)
            recs = await asyncio.gather(*(post(gw, "/v1/detect", body, keep_alive=True,
                                               headers={"Content-Type": ctype}, timeout_s=120)
                                          for _ in range(64)))
        return recs, sampler

    recs, sampler = asyncio.run(run())
    codes = [r.status for r in recs]
    print(f"\n64 x {len(body) / 1e6:.1f} MB: {codes.count(200)} ok, {codes.count(503)} shed; "
          f"peak RSS {sampler.peak_rss / MiB:.0f} MiB; temp files seen: {sorted(sampler.seen)}")
    # 429: Triton's 200 ms queue timeout (3-frame requests run one per batch of 4 in the
    # 100 ms stand-in when several finish decoding together): a busy answer, not memory
    assert set(codes) <= {200, 429, 503}, [(r.status, r.error) for r in recs
                                           if r.status not in (200, 429, 503)]
    assert codes.count(200) >= 4 and codes.count(503) >= 1
    assert all("retry-after" in r.headers for r in recs if r.status in (429, 503))
    assert gw.series("shed_total").get(("memory",), 0) >= 1
    assert sampler.peak_rss <= BUDGET + 200 * MiB
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
    assert wait_for(lambda: gw.series("shm_slots")[("retired",)] == 0)
    gw.client.close()          # its keep-alive connection would be counted, then time out
    before = _settled(gw.pid)
    blob = b"\xff\xd8\xff" + bytes(MiB)

    async def run():
        ten = asyncio.Semaphore(10)   # 10 x 20 MB announced: within the budget, no 503

        async def cut():
            async with ten:
                return await post(gw, "/v1/detect", blob, declared=20_000_000, cut_after=MiB)

        with openloop.Sampler(gw.pid, watch=str(tmpdir)) as sampler:
            # full bodies, then gone while their (slow) answer is queued in Triton (as
            # many as the model's capacity admits at once: 2 batches of 4)
            await asyncio.gather(*(cut() for _ in range(100)), leave(GONE))
        return sampler

    sampler = asyncio.run(run())
    wait_for(lambda: gauge(gw, "in_flight_requests") == 0)
    disconnects = gw.series("client_disconnects_total")
    assert disconnects.get(("/v1/detect", "body")) == 100, disconnects
    assert disconnects.get(("/v1/detect", "response")) == 2 * GONE, disconnects
    assert not any(s.startswith("5") for s in statuses(gw)), statuses(gw)
    assert "Traceback" not in gw.log_text()
    assert wait_for(lambda: gw.series("shm_slots")[("in_use",)] == 0
                    and gw.series("shm_slots")[("retired",)] == 0), gw.series("shm_slots")
    assert wait_for(lambda: _gateway_files(gw.pid) == before), (before, _gateway_files(gw.pid))
    assert not sampler.seen and not list(tmpdir.iterdir())


def _settled(pid: int) -> tuple[int, int]:
    """_gateway_files once two looks half a second apart agree (connections closing)."""
    last = _gateway_files(pid)
    for _ in range(20):
        time.sleep(0.5)
        now = _gateway_files(pid)
        if now == last:
            return now
        last = now
    return last


def post_sync(gw, path, body=SMALL):
    return asyncio.run(post(gw, path, body))


async def _hang_up_after(gw, path, body, seconds):
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    await writer.drain()
    await asyncio.sleep(seconds)
    writer.close()
    await writer.wait_closed()


def test_a_client_gone_takes_its_request_out_of_tritons_queue(start_gateway, standin):
    """Requests queued behind a running batch of the slow stand-in whose clients
    leave: Triton runs none of them (its own counts), and the live request is not delayed."""
    gw = start_gateway()
    post_sync(gw, "/v1/detect?model=centernet")
    n0, _ = triton_stats(standin, "centernet")

    async def run():
        live = asyncio.ensure_future(post(gw, "/v1/detect?model=centernet", SMALL))
        await asyncio.sleep(0.05)           # the live one is executing: the rest queue
        await asyncio.gather(*(_hang_up_after(gw, "/v1/detect?model=centernet", SMALL, 0.1)
                               for _ in range(GONE)))
        return await live

    live = asyncio.run(run())
    assert live.status == 200 and live.total_s < 2 * SLOW_MS / 1000 + 0.2, live
    time.sleep(3 * SLOW_MS / 1000)   # what had stayed queued would have run by now
    n1, _ = triton_stats(standin, "centernet")
    print(f"\nTriton ran {n1 - n0} requests (1 live, {GONE} whose clients left)")
    assert n1 - n0 == 1, f"Triton ran {n1 - n0 - 1} requests whose clients had left"
    assert gw.series("client_disconnects_total")[("/v1/detect", "response")] == GONE


# -- the shared-memory slot pool ------------------------------------------------------------
def test_requests_cancelled_at_their_deadline_do_not_drain_the_slot_pool(start_gateway, standin):
    gw = start_gateway(triton_timeout_s=0.25, **shm_settings(standin))
    n0, _ = triton_stats(standin, "centernet")

    async def worker(stop_at):
        codes = []
        while time.monotonic() < stop_at:
            codes.append((await post(gw, "/v1/detect?model=centernet", SMALL)).status)
        return codes

    async def run():
        stop_at = time.monotonic() + SLOT_POOL_S
        return sum(await asyncio.gather(*(worker(stop_at) for _ in range(4))), [])

    codes = asyncio.run(run())
    n1, _ = triton_stats(standin, "centernet")
    print(f"\n{len(codes)} requests at a 250 ms deadline in {SLOT_POOL_S:.0f} s: "
          f"{ {c: codes.count(c) for c in sorted(set(codes))} }; Triton ran {n1 - n0}; "
          f"slots {gw.series('shm_slots')}")
    # the deadline (504), or Triton's queue timeout, which the fleet sets to the time left
    # when that is shorter (429): either way the request is abandoned or answered early
    gave_up = codes.count(504) + codes.count(429)
    assert gave_up >= 0.95 * len(codes) and codes.count(504) >= len(codes) / 2
    assert len(codes) > 4 * SLOT_POOL_S and set(codes) <= {504, 429, 503, 200}
    # requests already in a running batch are executed; the ones still queued are not
    assert n1 - n0 < 0.75 * len(codes), "cancelled requests still ran in Triton"
    assert wait_for(lambda: gw.series("shm_slots")[("in_use",)] == 0
                    and gw.series("shm_slots")[("retired",)] == 0, 15), gw.series("shm_slots")
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
            assert wait_for(lambda: _up(c), 60), (tmp_path / "app.log").read_text()
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
