"""Work of a request that failed or was cancelled ends before its answer (issue 20):
a shared-memory slot eviction cancelled midway keeps the pool's accounting true and
leaves no slot behind; the chunk calls of a multi-chunk request that failed are
cancelled and awaited before the request answers. No Triton: fakes."""
from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from gateway import shm
from gateway.errors import TritonError
from gateway.metrics import Metrics
from gateway.service import Service
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend
from tests.support.fakes import Registry

FRAME = 4 * 6 * 3   # bytes of one (4, 6) frame


class SlowUnregister(Registry):
    """Triton's unregister RPC, held until `go` is set (a slow control plane)."""

    def __init__(self):
        super().__init__()
        self.go = asyncio.Event()
        self.started = asyncio.Event()

    async def unregister(self, name):
        self.started.set()
        await self.go.wait()
        await super().unregister(name)


def files(pool) -> set[str]:
    return {f for f in os.listdir(shm.SHM_DIR) if f.startswith(pool.prefix)}


@pytest.mark.skipif(not os.path.isdir(shm.SHM_DIR), reason=f"{shm.SHM_DIR} is missing")
def test_a_lease_cancelled_while_evicting_leaks_neither_bytes_nor_slots():
    async def go():
        reg = SlowUnregister()
        pool = shm.SlotPool(3 * FRAME, reg.register, reg.unregister)
        ones = [await pool.lease((4, 6), 3, 1) for _ in range(3)]
        for lease in ones:
            lease.release()                                  # 3 free one-frame slots: full
        task = asyncio.ensure_future(pool.lease((4, 6), 3, 3))   # evicts all three
        await asyncio.wait_for(reg.started.wait(), 2)
        task.cancel()                                        # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        # the accounting holds only the real slots: no reservation of the cancelled one
        assert pool._bytes == sum(s.capacity for s in pool.slots) == pool.stats()["bytes"]
        reg.go.set()                                         # the eviction runs to its end
        for _ in range(100):
            if len(reg.unregistered) == 3:
                break
            await asyncio.sleep(0.01)
        assert sorted(reg.unregistered) == sorted(x.slot.name for x in ones)
        assert files(pool) == set() and pool.slots == []
        assert pool._bytes == 0
        many = await pool.lease((4, 6), 3, 3)                # the room is usable again
        assert many is not None and pool._bytes == 3 * FRAME
        many.release()
        await pool.close()
        assert files(pool) == set()

    asyncio.run(go())


# -- the chunk calls of one request ----------------------------------------------------------------
class OneChunkFails(FakeBackend):
    """yolo in chunks of its max batch: the chunk holding row 0 fails at once, the others
    take `slow_s`; records which calls are running, were cancelled and finished."""

    def __init__(self, slow_s=5.0):
        super().__init__(models=("yolo",))
        self.slow_s = slow_s
        self.running = 0
        self.cancelled = 0
        self.finished = 0

    async def infer(self, model, inputs, outputs, *, timeout_s=None, queue_timeout_us=None):
        first = inputs["images"][0, 0, 0, 0] == 1
        self.running += 1
        try:
            if first:
                await asyncio.sleep(0.01)
                raise TritonError("the model failed")
            await asyncio.sleep(self.slow_s)
            self.finished += 1
            return await super().infer(model, inputs, outputs)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


def service(fake):
    from gateway.catalog import Catalog

    svc = Service(GatewaySettings(), fake, Metrics())
    catalog = asyncio.run(Catalog.learn(fake, GatewaySettings().contract_repository))
    fake.catalog = catalog         # what the Service reads as the fleet's catalog
    return svc, catalog


def test_a_failed_chunk_cancels_and_awaits_its_siblings_before_the_answer():
    fake = OneChunkFails()
    svc, catalog = service(fake)
    step = catalog.models["yolo"].max_batch_size
    pixels = np.zeros((3 * step, 640, 640, 3), np.uint8)
    pixels[0, 0, 0, 0] = 1                                    # the first chunk fails

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TritonError):
            await svc.infer("yolo", {"images": pixels}, ("boxes",))
        return loop.time() - t0, fake.running, fake.cancelled, fake.finished

    try:
        took, running, cancelled, finished = asyncio.run(go())
    finally:
        svc.close()
    assert running == 0, f"{running} chunk calls still running after the answer"
    assert (cancelled, finished) == (2, 0)
    assert took < 2.0                                        # not waiting out the slow ones


def test_a_cancelled_request_cancels_and_awaits_every_chunk_call():
    fake = OneChunkFails(slow_s=5.0)
    svc, catalog = service(fake)
    step = catalog.models["yolo"].max_batch_size
    pixels = np.zeros((2 * step, 640, 640, 3), np.uint8)       # no chunk fails

    async def go():
        task = asyncio.ensure_future(svc.infer("yolo", {"images": pixels}, ("boxes",)))
        while fake.running < 2:
            await asyncio.sleep(0.01)
        task.cancel()                                         # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        return fake.running, fake.cancelled

    try:
        running, cancelled = asyncio.run(go())
    finally:
        svc.close()
    assert (running, cancelled) == (0, 2)


def test_chunks_that_all_answer_are_joined_in_order():
    fake = OneChunkFails(slow_s=0.0)
    svc, catalog = service(fake)
    step = catalog.models["yolo"].max_batch_size
    pixels = np.zeros((2 * step + 1, 640, 640, 3), np.uint8)

    try:
        out = asyncio.run(svc.infer("yolo", {"images": pixels}, ("boxes", "num_detections")))
    finally:
        svc.close()
    assert out["boxes"].shape[0] == 2 * step + 1 and fake.finished == 3
