"""System shared memory in the gateway: the settings decision, the slot pool's
accounting (lease, reuse, cap, retire, release on every path) and the request the
backend builds for a leased input. Real POSIX shm under /dev/shm; no Triton."""
from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway import shm
from gateway.app import create_app
from gateway.backend import TritonBackend, _lost_region
from gateway.errors import TritonOverloaded, TritonTimeout, TritonUnavailable
from gateway.settings import GatewaySettings
from tests.support.fakes import Registry, ShmFake

pytestmark = pytest.mark.skipif(not os.path.isdir(shm.SHM_DIR),
                                reason=f"{shm.SHM_DIR} is missing: no POSIX shared memory here")


# -- the decision ----------------------------------------------------------------------
@pytest.mark.parametrize("url,host", [("127.0.0.1:8001", "127.0.0.1"), ("[::1]:8001", "::1"),
                                      ("localhost:8001", "localhost"),
                                      ("dns:///triton.svc:8001", "triton.svc")])
def test_host_of(url, host):
    assert shm.host_of(url) == host


@pytest.mark.parametrize("mode,url,key,use", [
    ("auto", "127.0.0.1:8001", "k", True),
    ("auto", "[::1]:8001", "k", True),
    ("auto", "localhost:8001", "k", True),
    ("auto", "127.0.0.1:8001", None, False),      # no key: Triton would refuse
    ("auto", "10.0.0.5:8001", "k", False),        # another host cannot map our /dev/shm
    ("off", "127.0.0.1:8001", "k", False),
    ("on", "10.0.0.5:8001", "k", True),           # the operator says it is local (a pod)
])
def test_decide(mode, url, key, use):
    got, why = shm.decide(mode, url, key)
    assert got is use and why


def test_on_without_a_key_fails_fast():
    with pytest.raises(shm.SharedMemoryUnavailable, match="ADMIN_KEY"):
        shm.decide("on", "127.0.0.1:8001", None)


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("VISIONSERVE_GATEWAY_TRITON_ADMIN_KEY", "s3cret")
    monkeypatch.setenv("VISIONSERVE_GATEWAY_SHARED_MEMORY", "on")
    s = GatewaySettings()
    assert (s.triton_admin_key, s.shared_memory) == ("s3cret", "on")
    assert "s3cret" not in repr(s)
    monkeypatch.setenv("VISIONSERVE_GATEWAY_SHARED_MEMORY", "maybe")
    with pytest.raises(ValueError):
        GatewaySettings()
    monkeypatch.delenv("VISIONSERVE_GATEWAY_SHARED_MEMORY")
    monkeypatch.delenv("VISIONSERVE_GATEWAY_TRITON_ADMIN_KEY")
    assert (GatewaySettings().shared_memory, GatewaySettings().triton_admin_key) == ("auto", None)


# -- the pool ----------------------------------------------------------------------------
FRAME = 4 * 6 * 3          # bytes of one (4, 6) frame


def run(coro):
    return asyncio.run(coro)


def test_slots_are_leased_reused_capped_and_retired():
    reg = Registry()
    pool = shm.SlotPool(7 * FRAME, reg.register)      # two 3-frame slots and one frame

    async def go():
        a = await pool.lease((4, 6), 3, 2)
        assert a.array.shape == (2, 4, 6, 3) and a.array.dtype == np.uint8
        assert a.slot.capacity == 3 * 4 * 6 * 3                # sized for the max batch
        one = await pool.lease((4, 6), 3, 1)
        assert one.slot.capacity == 4 * 6 * 3                  # one image: a one-frame slot
        one.release()
        b = await pool.lease((4, 6), 3, 3)
        assert b.slot is not a.slot
        assert await pool.lease((4, 6), 3, 2) is None          # no room left: the wire
        assert await pool.lease((8, 8), 2, 3) is None          # over the max batch
        a.array[:] = 7
        b.array[:] = 9
        assert (a.array == 7).all()                            # slots do not overlap
        assert pool.stats() == {"slots": 3, "in_use": 2, "retired": 0, "free": 1,
                                "bytes": 7 * FRAME, "bytes_limit": 7 * FRAME, "failed": 0,
                                "reclaimed": 0, "fallbacks": 2}
        assert pool.fallbacks == {"pool_full": 1, "over_max_batch": 1}
        a.release()
        a.release()                                            # idempotent
        c = await pool.lease((4, 6), 3, 2)
        assert c.slot is a.slot and len(reg.names) == 3        # reused, not re-registered
        c.release(retire=True)                                 # Triton may still read it
        b.release()
        d = await pool.lease((4, 6), 3, 2)
        assert d.slot is b.slot
        assert await pool.lease((4, 6), 3, 2) is None          # the retired one counts
        assert pool.stats()["retired"] == 1
        assert await pool.reclaim() == 0                       # no unregister given: never
        d.release()
        names = [s.name for s in pool.slots]
        await pool.close(reg.unregister)
        return names

    names = run(go())
    assert sorted(reg.unregistered) == sorted(names)
    assert not any(os.path.exists(os.path.join(shm.SHM_DIR, n)) for n in names)


def test_locate_finds_chunks_of_a_leased_batch():
    pool = shm.SlotPool(1 << 20, Registry().register)

    async def go():
        lease = await pool.lease((2, 2), 4, 4)
        slot, off = pool.locate(lease.array[2:4])
        assert slot is lease.slot and off == 2 * 2 * 2 * 3
        assert pool.locate(np.zeros((1, 2, 2, 3), np.uint8)) is None
        lease.release()
        assert pool.locate(lease.array[:1]) is None            # only leased slots count
        await pool.close()

    run(go())


def test_a_refused_registration_falls_back_and_leaves_nothing_behind():
    pool = shm.SlotPool(1 << 20, Registry(fail=True).register)
    before = set(os.listdir(shm.SHM_DIR))

    async def go():
        assert await pool.lease((4, 4), 2, 1) is None
        with pytest.raises(TritonUnavailable):
            await pool.prepare((4, 4))

    run(go())
    assert pool.stats()["failed"] == 1 and pool.stats()["slots"] == 0
    assert set(os.listdir(shm.SHM_DIR)) - before == set()


def test_retired_slots_are_reclaimed_once_triton_lets_go():
    reg = Registry()
    pool = shm.SlotPool(2 * FRAME, reg.register, reg.unregister)

    async def go():
        a, b = await pool.lease((4, 6), 3, 1), await pool.lease((4, 6), 3, 1)
        a.release(retire=True)
        b.release(retire=True)
        assert await pool.lease((4, 6), 3, 1) is None          # all retired: the wire
        reg.in_use = {a.slot.name}                             # Triton still reads `a`
        assert await pool.reclaim() == 1
        assert pool.stats()["retired"] == 1 and pool.stats()["free"] == 1
        assert reg.names.count(b.slot.name) == 2               # registered again
        c = await pool.lease((4, 6), 3, 1)
        assert c.slot is b.slot
        reg.in_use = set()                                     # Triton answered `a`
        assert await pool.reclaim() == 1
        s = pool.stats()
        assert (s["retired"], s["in_use"], s["free"], s["reclaimed"]) == (0, 1, 1, 2)
        c.release()
        await pool.close()

    run(go())
    assert pool.stats()["slots"] == 0


def test_reclaim_runs_in_the_background_and_survives_triton_away():
    reg = Registry()
    pool = shm.SlotPool(FRAME, reg.register, reg.unregister, reclaim_every_s=0.01)

    async def go():
        pool.start()
        a = await pool.lease((4, 6), 3, 1)
        reg.fail = True                                         # Triton away: register fails
        a.release(retire=True)
        await asyncio.sleep(0.1)
        assert pool.stats()["retired"] == 1
        reg.fail = False
        for _ in range(100):
            if pool.stats()["retired"] == 0:
                break
            await asyncio.sleep(0.01)
        assert (pool.stats()["retired"], pool.stats()["free"]) == (0, 1)
        await pool.close()

    run(go())


def test_pool_state_is_in_the_metrics():
    from gateway.metrics import Metrics

    m = Metrics()
    pool = shm.SlotPool(2 * FRAME, Registry().register, on_fallback=lambda r: m.shm_fallbacks.labels(r).inc())
    m.watch_pool(pool.stats)

    async def go():
        a = await pool.lease((4, 6), 3, 1)
        (await pool.lease((4, 6), 3, 1)).release(retire=True)
        assert await pool.lease((4, 6), 3, 1) is None
        text = m.text().decode()
        a.release()
        await pool.close()
        return text

    text = run(go())
    for line in ('visionserve_gateway_shm_slots{state="in_use"} 1.0',
                 'visionserve_gateway_shm_slots{state="retired"} 1.0',
                 'visionserve_gateway_shm_slots{state="free"} 0.0',
                 f"visionserve_gateway_shm_bytes {float(2 * FRAME)}",
                 'visionserve_gateway_shm_wire_fallbacks_total{reason="pool_full"} 1.0'):
        assert line in text, line


def test_a_new_size_evicts_free_slots_of_another():
    reg = Registry()
    pool = shm.SlotPool(3 * FRAME, reg.register, reg.unregister)

    async def go():
        ones = [await pool.lease((4, 6), 3, 1) for _ in range(3)]
        for lease in ones:
            lease.release()
        many = await pool.lease((4, 6), 3, 3)                  # room made from free ones
        assert many is not None and many.slot.capacity == 3 * FRAME
        assert sorted(reg.unregistered) == sorted(x.slot.name for x in ones)
        assert pool.stats()["bytes"] == 3 * FRAME
        assert await pool.lease((4, 6), 3, 1) is None           # the big one is in use
        many.release()
        await pool.close()

    run(go())


# -- the request on the wire -------------------------------------------------------------
def test_request_carries_region_offset_and_size_instead_of_bytes():
    from tritonclient.grpc import service_pb2

    pool = shm.SlotPool(1 << 20, Registry().register)

    async def go():
        backend = TritonBackend("127.0.0.1:1")   # never connects: only builds a request
        lease = await pool.lease((2, 3), 4, 3)
        chunk = lease.array[1:3]
        req = backend._request("yolo", {"images": chunk}, ("boxes",),
                               {"images": pool.locate(chunk)})
        wire = backend._request("yolo", {"images": chunk}, ("boxes",))
        lease.release()
        await pool.close()
        await backend.close()
        return lease.slot.name, req, wire

    name, req, wire = run(go())
    r = service_pb2.ModelInferRequest.FromString(req)
    p = r.inputs[0].parameters
    assert p["shared_memory_region"].string_param == name
    assert p["shared_memory_offset"].int64_param == 2 * 3 * 3
    assert p["shared_memory_byte_size"].int64_param == 2 * 2 * 3 * 3
    assert list(r.inputs[0].shape) == [2, 2, 3, 3] and r.inputs[0].datatype == "UINT8"
    assert len(r.raw_input_contents) == 0
    w = service_pb2.ModelInferRequest.FromString(wire)
    assert len(w.raw_input_contents[0]) == 2 * 2 * 3 * 3 and not w.inputs[0].parameters


class _Err:
    def __init__(self, code, msg):
        import grpc

        self._code, self.msg = getattr(grpc.StatusCode, code), msg

    def code(self):
        return self._code

    def details(self):
        return self.msg


def test_lost_region_is_recognised_by_status_code_then_message():
    # what Triton 2.51 answers for a region it does not know (measured)
    assert _lost_region(_Err("NOT_FOUND", "Unable to find shared memory region: 'visionserve_gw_1'"))
    assert not _lost_region(_Err("INTERNAL", "Unable to find shared memory region: 'x'"))
    assert not _lost_region(_Err("NOT_FOUND", "Request for unknown model: 'yolo' is not found"))
    assert not _lost_region(_Err("UNAVAILABLE", "Exceeds maximum queue size"))
    assert not _lost_region(_Err("UNAVAILABLE", "failed to connect to all addresses"))


# -- every request path releases its slot -------------------------------------------------
# shared memory with the (loopback) endpoint, as beside a local Triton
SHM_ON = {"shared_memory": "on", "triton_admin_key": "key"}


def _client(fake):
    return TestClient(create_app(GatewaySettings(**SHM_ON), backend=fake))


def test_requests_decode_into_slots_and_always_give_them_back():
    from tests.support.fakes import JPEG, multipart

    fake = ShmFake()
    with _client(fake) as c:
        h = {"content-type": "image/jpeg"}
        assert c.post("/v1/detect", content=JPEG, headers=h).status_code == 200
        assert c.post("/v1/faces", files=multipart(3)).status_code == 200
        assert fake.in_slot and all(fake.in_slot)
        assert fake.pool.stats()["in_use"] == 0
        assert c.post("/v1/detect", content=JPEG[:2000], headers=h).status_code == 400
        assert fake.pool.stats()["in_use"] == 0                  # a corrupt image
        fake.fail = TritonOverloaded("queue full", retry_after=1)
        assert c.post("/v1/detect", content=JPEG, headers=h).status_code == 429
        s = fake.pool.stats()
        assert s["in_use"] == 0 and s["retired"] == 0            # Triton answered: reusable
        fake.fail = TritonTimeout("late")
        assert c.post("/v1/detect", content=JPEG, headers=h).status_code == 504
        s = fake.pool.stats()
        assert s["in_use"] == 0 and s["retired"] == 1            # may still be read: retired
        fake.fail = None
        n = len(fake.in_slot)
        assert c.post("/v1/detect", content=JPEG, headers=h).status_code == 200
        assert fake.in_slot[n:] == [True]
    run(fake.pool.close())


def test_more_images_than_the_max_batch_use_the_wire():
    from tests.support.fakes import multipart

    fake = ShmFake()
    limit = fake.contracts["yolo"].max_batch_size
    with TestClient(create_app(GatewaySettings(max_images=limit + 1, **SHM_ON),
                               backend=fake)) as c:
        assert c.post("/v1/detect", files=multipart(limit + 1)).status_code == 200
    assert fake.in_slot and not any(fake.in_slot)
    assert fake.pool.stats()["slots"] == 0
    run(fake.pool.close())


def test_large_wire_requests_are_assembled_off_the_event_loop():
    import threading

    from tritonclient.grpc import service_pb2

    threads = []

    async def go():
        backend = TritonBackend("127.0.0.1:1")   # never connects: only builds requests
        real = backend._request

        def spy(*a, **kw):
            threads.append(threading.current_thread() is threading.main_thread())
            return real(*a, **kw)

        backend._request = spy
        big = np.zeros((16, 640, 640, 3), np.uint8)
        small = np.zeros((1, 640, 640, 3), np.uint8)
        wire = await backend._wire_request("yolo", {"images": big}, ("boxes",), None)
        await backend._wire_request("yolo", {"images": small}, ("boxes",), None)
        await backend.close()
        return wire

    wire = run(go())
    assert threads == [False, True]        # 19.7 MB in a worker thread, 1.2 MB inline
    assert len(service_pb2.ModelInferRequest.FromString(wire).raw_input_contents[0]) == 16 * 640 * 640 * 3
