"""Triton's statistics, trace and logging APIs sit behind the admin key, over HTTP and gRPC,
on a real hardened tritonserver (a fixed-time stand-in: no model weights, a few seconds);
and the perf tool that reads statistics (perf_analyzer) works only with the key."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from perf import analyzer
from perf import estimate as est
from perf.errors import RunFailed
import contract
from serving.tritonserver import GRPC_ADMIN_METADATA

pytestmark = pytest.mark.integration
MODEL = "arcface"       # the shared stand-in Triton's: 2 ms per batch, no queue deadline


@pytest.fixture(scope="module")
def hardened(standin):
    """The shared stand-in Triton: hardened like every TritonServer (restricted APIs)."""
    return standin


def _http(server, path, headers=None) -> int:
    req = urllib.request.Request(f"http://{server.http_url}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("path", [f"/v2/models/{MODEL}/stats", "/v2/trace/setting", "/v2/logging"])
def test_http_statistics_trace_and_logging_need_the_admin_key(hardened, path):
    assert _http(hardened, path) != 200
    assert _http(hardened, path, {"admin-key": "wrong"}) != 200
    assert _http(hardened, path, hardened.admin_headers) == 200
    assert _http(hardened, "/v2/health/ready") == 200 and _http(hardened, f"/v2/models/{MODEL}") == 200


def test_grpc_statistics_trace_and_logging_need_the_admin_key(hardened):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(hardened.grpc_url)
    key = {GRPC_ADMIN_METADATA: hardened.admin_key}
    try:
        for call in (lambda h: c.get_inference_statistics(MODEL, headers=h, client_timeout=10),
                     lambda h: c.get_trace_settings(headers=h, client_timeout=10),
                     lambda h: c.get_log_settings(headers=h, client_timeout=10)):
            with pytest.raises(InferenceServerException, match="restricted"):
                call(None)
            assert call(key) is not None
        assert c.is_model_ready(MODEL, client_timeout=10)           # inference and health stay open
    finally:
        c.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_reads_statistics_with_the_key_only(hardened, protocol, tmp_path):
    problems = analyzer.missing()
    if problems:
        pytest.skip("perf_analyzer cannot run: " + "; ".join(problems))
    url = hardened.grpc_url if protocol == "grpc" else hardened.http_url
    load = est.TensorLoad.from_contract(contract.load(MODEL, hardened.repository))

    def opts(key):
        # up to 10 windows: perf_analyzer stops at the first 3 stable ones; one stalled request
        # on a shared 2-core machine can put a window 10x off (CI: unstable after 4 windows)
        return analyzer.Options(model=MODEL, url=url, protocol=protocol, measurement_request_count=10,
                                max_trials=10, stability_percentage=1000, admin_key=key)

    with pytest.raises(RunFailed, match="behind its admin key") as err:
        analyzer.run(opts(None), load, 1 << 30, tmp_path / "nokey", timeout_s=120)
    assert hardened.admin_key not in str(err.value)
    run = analyzer.run(opts(hardened.admin_key), load, 1 << 30, tmp_path / "key", timeout_s=120)
    assert run.records and run.records[0].throughput > 0 and run.records[0].extra.get("cap")
