"""A fixed-time stand-in served by the real tritonserver: it takes its time and batches.
(The shared stand-in Triton's `batching_probe`: yolo's interface, 300 ms per batch of up to
16, no queue deadline.)"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.support import triton as triton_support
from tests.support.polling import settled

pytestmark = pytest.mark.integration
MODEL = "batching_probe"
BATCH_MS = triton_support.STANDINS[MODEL][1]["batch_ms"]   # requests arriving meanwhile queue and batch


@pytest.fixture(scope="module")
def stand_in(standin):
    return standin


def _infer(url: str, n: int = 1):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("images", [n, 640, 640, 3], "UINT8")
    inp.set_data_from_numpy(np.zeros((n, 640, 640, 3), np.uint8))
    t0 = time.perf_counter()
    r = c.infer(MODEL, [inp], client_timeout=30)
    return time.perf_counter() - t0, r


def test_one_request_takes_the_fixed_time_and_answers_zeros(stand_in):
    seconds, r = _infer(stand_in.grpc_url, 2)
    assert seconds >= BATCH_MS / 1000
    assert r.as_numpy("boxes").shape == (2, 100, 4)
    assert not r.as_numpy("num_detections").any()


def test_concurrent_requests_share_one_execution(stand_in):
    """16 concurrent requests on one instance with max_batch_size 16: a handful of
    executions, not 16. Requests that arrive while one batch sleeps queue and leave
    together in the next, however slowly a loaded machine starts the client threads."""
    def stats():
        s = triton_support.stats(stand_in, MODEL)
        return s["inference_count"], s["execution_count"]

    before = stats()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: _infer(stand_in.grpc_url), range(16)))
    after = settled(stats, quiet_s=0.3)     # Triton counts a request just after answering it
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 16
    assert executions <= 6, f"{executions} executions for 16 concurrent requests"
