"""A real tritonserver on the derived CPU repository, shared by the integration tests.

The session fixture derives the "cpu" profile from model_repository/ into a temp dir
(models whose artifacts are not exported yet are left out, with the reason), adds one
scratch model for the queue-full test, and starts the embedded tritonserver on free
loopback ports. Tests ask for the models they need with `need(...)`, which skips naming
exactly what is missing and the command that builds it.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import contract
from serving import profiles
from serving.tritonserver import TritonInstall, TritonServer, TritonServerError, free_port

QUEUE_PROBE = "queue_probe"     # scratch copy of a small network model with max_queue_size 1
START_TIMEOUT_S = 600
CLIENT_TIMEOUT_S = 120


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
                                                connection_timeout=CLIENT_TIMEOUT_S,
                                                network_timeout=CLIENT_TIMEOUT_S)

    def metrics(self) -> dict[tuple[str, str], float]:
        """{(metric, model): value} for the nv_inference_* counters."""
        with urllib.request.urlopen(self.server.metrics_url, timeout=10) as resp:
            text = resp.read().decode()
        out = {}
        for m in re.finditer(r'^(nv_inference_\w+)\{model="([^"]+)",version="[^"]*"\} ([0-9.e+]+)$', text, re.M):
            out[(m.group(1), m.group(2))] = float(m.group(3))
        return out


def _add_queue_probe(repo: Path, contracts) -> str | None:
    """A scratch model: a served network model, one request at a time, queue of 1.

    A slow-per-image model (a detector, ~0.1 s on CPU) so a burst outruns it even on a
    fast machine; any network model otherwise."""
    nets = [name for name in contracts if contract.load(name).kind == "network"]
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


def require_triton() -> None:
    """Skip, saying what to install, when the embedded tritonserver is missing."""
    try:
        TritonInstall.locate()
    except TritonServerError as exc:
        pytest.skip(str(exc))


@contextlib.contextmanager
def running(repo: Path, log: Path, timeout_s: float = START_TIMEOUT_S) -> Iterator[TritonServer]:
    """A hardened tritonserver on `repo`, on free loopback ports, stopped afterwards."""
    server = TritonServer(repo, free_port(), free_port(), free_port(), log_path=log)
    server.start(timeout_s)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Served:
    require_triton()
    root = tmp_path_factory.mktemp("triton")
    derived = profiles.derive("cpu", dest=root / "repo", skip_missing=True)
    if not derived.models:
        pytest.skip("no model is exported: " + "; ".join(f"{m}: {w}" for m, w in derived.skipped.items())
                    + " (make export-onnx)")
    contracts = contract.load_all(derived.path)
    probe_source = _add_queue_probe(derived.path, contracts)
    with running(derived.path, root / "triton.log") as server:
        yield Served(server, derived, contracts, probe_source)


def sample_inputs(c: contract.ModelContract, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid inputs for any model from its contract (random pixels/tokens, short strings)."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in c.with_variable_dims("opt").inputs:
        shape = (batch, *spec.dims)
        if spec.dtype == np.object_:
            words = np.array([b"a photo of a cat", b"a diagram", b"hello world", b"face"], dtype=object)
            out[spec.name] = words[np.arange(int(np.prod(shape))) % len(words)].reshape(shape)
        elif spec.dtype == np.uint8:
            out[spec.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif spec.dtype == np.int32 and spec.name == "tokens":
            t = np.zeros(shape, np.int32)
            t[:, 0], t[:, 1:4], t[:, 4] = 49406, rng.integers(300, 40000, (batch, 3)), 49407
            out[spec.name] = t
        elif spec.name == "landmarks":
            out[spec.name] = (rng.random(shape) * 400 + 100).astype(spec.dtype)
        else:
            out[spec.name] = rng.random(shape).astype(spec.dtype)
    return out
