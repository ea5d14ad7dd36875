"""Requests Triton must refuse (not hang on). (That concurrent requests are batched, and
never mixed up: test_distinct_batching.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.support.triton import QUEUE_PROBE, burst, sample_inputs

pytestmark = pytest.mark.integration
CONCURRENCY = 16


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
            served.infer(protocol, model, inputs, **kw)
        msg = str(err.value).lower()
        assert any(w in msg for w in ("shape", "dims", "data-type", "datatype", "batch", "size")), f"{case}: {msg}"
    assert served.server.is_ready()
    # ... and still serves a good request.
    out = served.infer(protocol, model, sample_inputs(c, 1))
    assert out[c.outputs[0].name].shape[0] == 1


def test_missing_input_and_unknown_model_are_refused(served):
    model = _image_model(served)
    with pytest.raises(InferenceServerException):
        served.infer("grpc", model, {})
    with pytest.raises(InferenceServerException, match="(?i)unknown model|not found|unavailable"):
        served.grpc().get_model_metadata("no_such_model")
    assert served.server.is_ready()


def test_a_full_queue_rejects_instead_of_hanging(served):
    if served.probe_source is None:
        pytest.skip("no network model is exported to build the queue probe from (make export-onnx)")
    c = served.contracts[QUEUE_PROBE]
    outcomes = burst(served.server.grpc_url, c, [sample_inputs(c, 1)] * CONCURRENCY)
    rejected = [str(o) for o in outcomes if isinstance(o, Exception)]
    assert rejected, "16 concurrent requests to a one-at-a-time model with a queue of 1 were all accepted"
    assert all("queue" in o.lower() for o in rejected), rejected[:3]
    assert len(rejected) < CONCURRENCY          # the ones that fit were served
    assert served.server.is_ready()
