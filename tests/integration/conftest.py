"""Processes shared by the integration tests, each started one way (tests/support):

- `served`: the real tritonserver on the derived CPU repository (every exported model,
  plus a scratch queue probe), once per run; tests ask for models with `need(...)`, which
  skips naming what is missing and the command that builds it.
- `served_gateway`: one `python -m gateway` in front of it, once per run.
- `standin`: one tritonserver of fixed-time stand-ins (tests/support/triton.STANDINS),
  once per run, for the overload, hostile-client, batching and restricted-API tests.
- `gateways`: a factory for gateways a test configures itself, all stopped after it.
Every server gets its own free ports, derived repository folder and log file.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import contract
from serving import profiles
from serving.tritonserver import TritonServer
from tests.support import triton as triton_support
from tests.support.gateway import GatewayFactory
from tests.support.triton import QUEUE_PROBE

START_TIMEOUT_S = 600
SERVED_CACHE_BYTES = 64 << 20


@dataclass
class Served:
    server: TritonServer
    derived: profiles.Derived
    contracts: dict[str, contract.ModelContract]
    probe_source: str | None

    def need(self, *models: str) -> None:
        missing = [m for m in models if m not in self.contracts]
        if missing:
            why = "; ".join(f"{m}: {self.derived.skipped.get(m, 'not in the repository')}" for m in missing)
            exportable = sorted({m for m in missing if contract.load(m).kind == "network"})
            cmd = f" (make export-onnx MODELS={','.join(exportable)})" if exportable else ""
            pytest.skip(f"not served: {why}{cmd}")

    def grpc(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.server.grpc_url)

    def http(self, concurrency: int = 1):
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.server.http_url, concurrency=concurrency,
                                                connection_timeout=triton_support.CLIENT_TIMEOUT_S,
                                                network_timeout=triton_support.CLIENT_TIMEOUT_S)

    def infer(self, protocol: str, model: str, inputs: dict[str, np.ndarray], **kw) -> dict[str, np.ndarray]:
        url = self.server.grpc_url if protocol == "grpc" else self.server.http_url
        return triton_support.infer(url, self.contracts[model], protocol, inputs, **kw)

    def metrics(self) -> dict[tuple[str, str], float]:
        """{(metric, model): value} of Triton's per-model nv_* metrics."""
        return triton_support.metrics(self.server.metrics_url)

    def provenance(self, model: str) -> str:
        from tests.support.exports import provenance

        return provenance(model, self.derived.path)


def _add_queue_probe(repo: Path, contracts) -> str | None:
    """A scratch model: a served network model, one request at a time, queue of 1.

    A slow-per-image model (a detector, ~0.1 s on CPU) so a burst outruns it even on a
    fast machine; any network model otherwise."""
    committed = contract.load_all()      # derived-only models (encoded entry points) are no probe
    nets = [name for name in contracts if name in committed and committed[name].kind == "network"]
    if not nets:
        return None
    preferred = [m for m in ("yolo", "scrfd", "centerface", "ppocr_det") if m in nets]
    src = contracts[(preferred or nets)[0]]
    dst = repo / QUEUE_PROBE
    shutil.copytree(src.path.parent, dst, symlinks=True)
    cfg = contract.parse_config((dst / "config.pbtxt").read_text())
    cfg.name = QUEUE_PROBE
    cfg.max_batch_size = 1          # one request per execution, so requests must queue
    cfg.ClearField("model_warmup")
    db = cfg.dynamic_batching
    del db.preferred_batch_size[:]
    db.max_queue_delay_microseconds = 0
    db.default_queue_policy.max_queue_size = 1
    (dst / "config.pbtxt").write_text(contract.to_text(cfg))
    return src.name


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Served:
    triton_support.require_triton()
    root = tmp_path_factory.mktemp("triton")
    derived = profiles.derive("cpu", dest=root / "repo", skip_missing=True)
    if not derived.models:
        pytest.skip("no model is exported: " + "; ".join(f"{m}: {w}" for m, w in derived.skipped.items())
                    + " (make export-onnx)")
    contracts = contract.load_all(derived.path)
    probe_source = _add_queue_probe(derived.path, contracts)
    contracts = contract.load_all(derived.path)          # with the probe
    # with a response cache, as `python -m serving` runs by default (tests/integration/test_response_cache_live.py)
    with triton_support.running(derived.path, root / "triton.log", START_TIMEOUT_S,
                                response_cache_bytes=SERVED_CACHE_BYTES) as server:
        yield Served(server, derived, contracts, probe_source)


@pytest.fixture(scope="session")
def served_gateway(served, tmp_path_factory):
    """The gateway in front of `served` with its defaults (shared memory: auto, no key: wire)."""
    factory = GatewayFactory(tmp_path_factory.mktemp("served_gateway"))
    try:
        yield factory.start(served.server.grpc_url)
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def standin(tmp_path_factory) -> TritonServer:
    triton_support.require_triton()
    root = tmp_path_factory.mktemp("standin")
    repo = triton_support.write_standin_repository(root / "repo")
    with triton_support.running(repo, root / "triton.log", 180) as server:
        yield server


@pytest.fixture
def gateways(tmp_path):
    factory = GatewayFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def start_gateway(standin, gateways):
    """start_gateway(**settings): a gateway on the shared stand-in Triton, with these settings."""
    return lambda **settings: gateways.start(standin.grpc_url, **settings)
