"""Batching never mixes requests up: 8 DIFFERENT real inputs per model, sent 4 at a time
(so the dynamic batcher forms batches of different images) and one by one; every concurrent
response equals the sequential response to its own input, and a model with its own dynamic
batcher really batched them (Triton's own counts: fewer executions than requests)."""
from __future__ import annotations

import numpy as np
import pytest

import contract

from tests.support import real_images
from tests.support.polling import settled, wait_for
from tests.support.triton import burst

pytestmark = pytest.mark.integration
COMMITTED = contract.load_all()
# every model and pipeline with a batch axis (ensembles batch through the models they call)
BATCHED = sorted(m for m, c in COMMITTED.items() if c.max_batch_size > 0)
N, CONCURRENCY = 8, 4
# analyze runs yolo, faces, ocr and MobileCLIP per request: on 2 shared CPU cores, 12 in flight
# (measured before 6 were enough to batch)
# wait past its steps' queue deadline (10 s in the CPU profile) and are refused UNAVAILABLE, as
# overload should be. 4 in flight still makes its steps batch requests of different images.
IN_FLIGHT = {"analyze": 4}
# models that batch themselves (ensembles batch through their steps, BLS models call theirs)
OWN_BATCHER = {m for m, c in COMMITTED.items() if c.kind != "ensemble" and c.config.HasField("dynamic_batching")}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype == np.object_ or np.issubdtype(a.dtype, np.integer):
        return a.shape == b.shape and bool((a == b).all())
    # the same numbers up to float rounding of a different batch composition
    return a.shape == b.shape and bool(np.allclose(a, b, atol=2e-3, rtol=1e-3))


@pytest.mark.parametrize("model", BATCHED)
def test_concurrent_responses_equal_their_own_sequential_ones(served, model):
    served.need(model)
    # a variable dim (face_align's faces) at its range's opt: requests of one shape batch together
    feeds = real_images.inputs(served.contracts[model].with_variable_dims("opt").inputs, N)
    client = served.grpc()
    sequential = [served.infer("grpc", model, f, client=client) for f in feeds]

    def counts():
        m = served.metrics()
        return m.get(("nv_inference_count", model), 0.0), m.get(("nv_inference_exec_count", model), 0.0)

    n0, e0 = settled(counts, quiet_s=0.2)     # the sequential phase's last counts are in
    concurrent = burst(served.server.grpc_url, served.contracts[model], feeds, IN_FLIGHT.get(model, CONCURRENCY))
    assert not [r for r in concurrent if isinstance(r, Exception)], concurrent
    if model in OWN_BATCHER:
        # Triton records its statistics just after sending a response: polled, bounded
        wait_for(lambda: counts()[0] - n0 >= N, 10, f"{model}: Triton counting {N} inferences")
        n1, e1 = counts()
        assert n1 - n0 == N and 0 < e1 - e0 < N, f"{model}: {n1 - n0} inferences in {e1 - e0} executions"
    # the inputs differ, so the answers must too (else this test could not catch a mix-up)
    keys = {repr([v.tolist() if v.dtype == np.object_ else v.round(3).tolist() for v in r.values()])
            for r in sequential}
    assert len(keys) > N // 2, f"{model}: different inputs gave equal outputs"
    wrong = [(i, name) for i in range(N) for name in sequential[i]
             if not _same(concurrent[i][name], sequential[i][name])]
    assert not wrong, f"{model}: concurrent responses differ from their sequential ones at {wrong[:5]}"
