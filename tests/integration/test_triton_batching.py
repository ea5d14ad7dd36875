"""Dynamic batching under concurrent load, and requests Triton must refuse (not hang on)."""
from __future__ import annotations

import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

import contract

from .conftest import CLIENT_TIMEOUT_S, QUEUE_PROBE, sample_inputs
from .triton_calls import infer

pytestmark = pytest.mark.integration
COMMITTED = contract.load_all()
# Models with their own dynamic batcher (ensembles batch through their steps).
BATCHED = sorted(m for m, c in COMMITTED.items() if c.kind != "ensemble" and c.config.HasField("dynamic_batching"))
CONCURRENCY = 16


def _counts(served, model):
    m = served.metrics()
    return m.get(("nv_inference_count", model), 0.0), m.get(("nv_inference_exec_count", model), 0.0)


@pytest.mark.parametrize("model", BATCHED)
def test_concurrent_requests_are_batched(served, model):
    served.need(model)
    c = served.contracts[model]
    x = sample_inputs(c, 1, seed=3)
    n0, e0 = _counts(served, model)
    results = _burst(served, model, x, CONCURRENCY)
    assert all(not isinstance(r, Exception) for r in results), results
    # Triton records the statistics just after sending a response: poll briefly.
    deadline = time.monotonic() + 10
    while True:
        n1, e1 = _counts(served, model)
        if n1 - n0 >= CONCURRENCY or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    count, execs = n1 - n0, e1 - e0
    assert count == CONCURRENCY, f"{model}: metrics show {count} inferences for {CONCURRENCY} requests"
    assert 0 < execs and count / execs > 1.0, f"{model}: {count} inferences in {execs} executions"


def _burst(served, model, inputs, n, c=None):
    """`n` requests in flight at once (async gRPC, one channel), results in order."""
    import queue

    import tritonclient.grpc as grpcclient

    client = served.grpc()
    dtypes = {s.name: s.triton_dtype for s in (c or served.contracts[model]).inputs}
    req = []
    for name, arr in inputs.items():
        t = grpcclient.InferInput(name, list(arr.shape), dtypes[name])
        t.set_data_from_numpy(arr)
        req.append(t)
    done: queue.Queue = queue.Queue()
    for i in range(n):
        client.async_infer(model, req, callback=lambda result, error, i=i: done.put((i, error or result)),
                           client_timeout=CLIENT_TIMEOUT_S)
    results = [None] * n
    for _ in range(n):
        i, r = done.get(timeout=CLIENT_TIMEOUT_S)
        results[i] = r
    client.close()
    return results


def _image_model(served):
    for m in ("yolo", "scrfd", "faces", "detect_embed", "ppocr_det", "centerface"):
        if m in served.contracts:
            return m
    pytest.skip("no model taking 640x640 images is served (make export-onnx MODELS=yolo)")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_requests_get_tritons_error_and_the_server_stays_ready(served, protocol):
    model = _image_model(served)
    c = served.contracts[model]
    name = c.inputs[0].name
    mbs = c.max_batch_size
    cases = {
        "wrong shape": ({name: np.zeros((1, 320, 320, 3), np.uint8)}, {}),
        "wrong dtype": ({name: np.zeros((1, 640, 640, 3), np.float32)}, {f"dtype_{name}": "FP32"}),
        "batch over max": ({name: np.zeros((mbs + 1, 640, 640, 3), np.uint8)}, {}),
    }
    for case, (inputs, kw) in cases.items():
        with pytest.raises(InferenceServerException) as err:
            infer(served, protocol, model, inputs, **kw)
        msg = str(err.value).lower()
        assert any(w in msg for w in ("shape", "dims", "data-type", "datatype", "batch", "size")), f"{case}: {msg}"
    assert served.server.is_ready()
    # ... and still serves a good request.
    out = infer(served, protocol, model, sample_inputs(c, 1))
    assert out[c.outputs[0].name].shape[0] == 1


def test_missing_input_and_unknown_model_are_refused(served):
    model = _image_model(served)
    with pytest.raises(InferenceServerException):
        infer(served, "grpc", model, {})
    with pytest.raises(InferenceServerException, match="(?i)unknown model|not found|unavailable"):
        served.grpc().get_model_metadata("no_such_model")
    assert served.server.is_ready()


def test_a_full_queue_rejects_instead_of_hanging(served):
    if served.probe_source is None:
        pytest.skip("no network model is exported to build the queue probe from (make export-onnx)")
    c = contract.load(served.probe_source)
    outcomes = _burst(served, QUEUE_PROBE, sample_inputs(c, 1), CONCURRENCY, c)
    rejected = [str(o) for o in outcomes if isinstance(o, Exception)]
    assert rejected, "16 concurrent requests to a one-at-a-time model with a queue of 1 were all accepted"
    assert all("queue" in o.lower() for o in rejected), rejected[:3]
    assert len(rejected) < CONCURRENCY          # the ones that fit were served
    assert served.server.is_ready()
