"""A fixed-time stand-in served by the real tritonserver: it takes its time and batches."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving import standins
from tests.integration.conftest import require_triton, running

BATCH_MS = 300   # long enough that requests arriving meanwhile queue and batch


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    require_triton()
    root = tmp_path_factory.mktemp("standin")
    repo = standins.write_fixed_time_repository(root / "repo", {"yolo": BATCH_MS},
                                                queue_timeout_us=0)   # no queue deadline: none rejected
    with running(repo, root / "triton.log", 120) as server:
        yield server


def _infer(url: str, n: int = 1):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("images", [n, 640, 640, 3], "UINT8")
    inp.set_data_from_numpy(np.zeros((n, 640, 640, 3), np.uint8))
    t0 = time.perf_counter()
    r = c.infer("yolo", [inp], client_timeout=30)
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
    import json
    import urllib.request

    def stats():
        req = urllib.request.Request(f"http://{stand_in.http_url}/v2/models/yolo/stats",
                                     headers=stand_in.admin_headers)        # statistics are restricted
        with urllib.request.urlopen(req, timeout=10) as r:
            s = json.loads(r.read())["model_stats"][0]
        return s["inference_count"], s["execution_count"]

    before = stats()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: _infer(stand_in.grpc_url), range(16)))
    after = stats()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 16
    assert executions <= 6, f"{executions} executions for 16 concurrent requests"
