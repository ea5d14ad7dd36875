"""Triton in tests: the one way to start a tritonserver, what it reports about itself
(statistics, Prometheus metrics), one infer call for both protocols, and the stand-in
repository that every stand-in test shares."""
from __future__ import annotations

import contextlib
import json
import re
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import contract
from serving import standins
from serving.tritonserver import TritonInstall, TritonServer, TritonServerError, free_port

CLIENT_TIMEOUT_S = 120
QUEUE_PROBE = "queue_probe"     # the served Triton's scratch model: one request at a time, queue of 1


def require_triton() -> None:
    """Skip, saying what to install, when the embedded tritonserver is missing."""
    try:
        TritonInstall.locate()
    except TritonServerError as exc:
        pytest.skip(str(exc))


@contextlib.contextmanager
def running(repo: Path, log: Path, timeout_s: float = 300, **server_kw) -> Iterator[TritonServer]:
    """A hardened tritonserver on `repo` on free loopback ports, logging to `log`; stopped
    (and its python-backend stubs and /dev/shm regions reaped) afterwards."""
    require_triton()
    server = TritonServer(repo, free_port(), free_port(), free_port(), log_path=log, **server_kw)
    server.start(timeout_s)
    try:
        yield server
    finally:
        server.stop()


# -- what Triton says about itself -------------------------------------------------------
def stats(server: TritonServer, model: str) -> dict[str, int]:
    """Triton's own statistics of `model` (restricted: sent with the admin key):
    inference_count, execution_count, success, fail, queue (requests that were queued),
    cache_hit, cache_miss (Triton's response cache lookups)."""
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/stats",
                                 headers=server.admin_headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        s = json.loads(r.read())["model_stats"][0]
    inf = s["inference_stats"]
    return {"inference_count": int(s["inference_count"]), "execution_count": int(s["execution_count"]),
            "success": int(inf["success"]["count"]), "fail": int(inf["fail"]["count"]),
            "queue": int(inf["queue"]["count"]), "cache_hit": int(inf["cache_hit"]["count"]),
            "cache_miss": int(inf["cache_miss"]["count"])}


def metrics(url: str) -> dict[tuple[str, str], float]:
    """{(metric, model): value} of the per-model nv_* families of a metrics endpoint."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for m in re.finditer(r'^(nv_\w+)\{model="([^"]+)",version="[^"]*"\} ([0-9.e+-]+)$', text, re.M):
        out[(m.group(1), m.group(2))] = float(m.group(3))
    return out


def pending(server: TritonServer, model: str) -> int:
    """Requests of `model` waiting in Triton's queue now (not executing)."""
    return int(metrics(server.metrics_url).get(("nv_inference_pending_request_count", model), 0))


# -- one infer call ------------------------------------------------------------------------
def infer(url: str, c: contract.ModelContract, protocol: str, inputs: dict[str, np.ndarray],
          outputs: list[str] | None = None, client=None, **kw) -> dict[str, np.ndarray]:
    """Infer `c`'s model at `url` over "grpc" or "http" with binary tensors -> {output: array}.
    `dtype_<input>=...` overrides an input's datatype (wrong-dtype tests)."""
    outputs = outputs or [o.name for o in c.outputs]
    dtypes = {s.name: s.triton_dtype for s in c.inputs}
    if protocol == "grpc":
        import tritonclient.grpc as mod
        client = client or mod.InferenceServerClient(url)
        kw.setdefault("client_timeout", CLIENT_TIMEOUT_S)
        req_out = [mod.InferRequestedOutput(o) for o in outputs]
    else:
        import tritonclient.http as mod
        client = client or mod.InferenceServerClient(url, connection_timeout=CLIENT_TIMEOUT_S,
                                                     network_timeout=CLIENT_TIMEOUT_S)
        req_out = [mod.InferRequestedOutput(o, binary_data=True) for o in outputs]
    req_in = []
    for name, arr in inputs.items():
        t = mod.InferInput(name, list(arr.shape), kw.pop(f"dtype_{name}", None) or dtypes.get(name, "UINT8"))
        if protocol == "grpc":
            t.set_data_from_numpy(arr)
        else:
            t.set_data_from_numpy(arr, binary_data=True)
        req_in.append(t)
    result = client.infer(c.name, req_in, outputs=req_out, **kw)
    return {o: result.as_numpy(o) for o in outputs}


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


# -- the stand-in repository -----------------------------------------------------------------
# One tritonserver of fixed-time stand-ins (serving/standins.py: capacity known whatever
# this machine's cores) serves every stand-in test that can share it. Each entry: the
# served name -> (the committed model whose interface it keeps, add_fixed_time's settings).
# Gateway routes find yolo, mobileclip_image and centernet by their own names; the others
# are free names for tests that call Triton directly.
STANDINS: dict[str, tuple[str, dict]] = {
    # the gateway's overload and hostile-client tests: C = 4 / 0.1 s = 40 requests/s
    "yolo": ("yolo", {"batch_ms": 100, "max_batch_size": 4}),
    # a 1 s queue timeout: Triton's own timeout rejects only after a request waited it, so
    # the gateway's shedding is what an overload test sees
    "mobileclip_image": ("mobileclip_image", {"batch_ms": 100, "max_batch_size": 4,
                                              "queue_timeout_us": 1_000_000}),
    # slow, no queue timeout: a queued request leaves Triton's queue only when cancelled
    "centernet": ("centernet", {"batch_ms": 400, "max_batch_size": 4, "queue_timeout_us": 0}),
    # batches form while one executes (no queue deadline: none rejected)
    "batching_probe": ("yolo", {"batch_ms": 300, "queue_timeout_us": 0}),
    # the restricted-API tests: fast, and no queue deadline to trip on a busy machine
    "arcface": ("arcface", {"batch_ms": 2, "queue_timeout_us": 0}),
}


def write_standin_repository(dest: Path, entries: dict[str, tuple[str, dict]] = STANDINS) -> Path:
    """A fresh repository of the stand-ins in `entries` (served under their own names)."""
    dest = standins.write_fixed_time_repository(dest, {})
    staging = dest.parent / f".{dest.name}.staging"
    for name, (source, kw) in entries.items():
        folder = standins.add_fixed_time(staging if name != source else dest, source, **kw)
        if name != source:
            cfg = contract.parse_config((folder / "config.pbtxt").read_text())
            cfg.name = name
            folder.rename(dest / name)
            (dest / name / "config.pbtxt").write_text(
                f"# DERIVED by tests/support/triton.py: a fixed-time stand-in of {source} named {name}.\n"
                + contract.to_text(cfg))
    if staging.exists():
        staging.rmdir()
    return dest


def burst(url: str, c: contract.ModelContract, feeds: list[dict[str, np.ndarray]],
          in_flight: int | None = None) -> list:
    """Send `feeds` over one gRPC channel with `in_flight` requests outstanding at once
    (all by default: they reach Triton together, so its batcher sees them together).
    Returns, in order, {output: array} per request or the exception it raised."""
    import queue

    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    dtypes = {s.name: s.triton_dtype for s in c.inputs}
    outputs = [o.name for o in c.outputs]
    done: queue.Queue = queue.Queue()
    results: list = [None] * len(feeds)
    window = in_flight or len(feeds)
    try:
        for start in range(0, len(feeds), window):
            part = range(start, min(start + window, len(feeds)))
            for i in part:
                req = []
                for name, arr in feeds[i].items():
                    t = grpcclient.InferInput(name, list(arr.shape), dtypes[name])
                    t.set_data_from_numpy(arr)
                    req.append(t)
                client.async_infer(c.name, req, callback=lambda result, error, i=i: done.put((i, error or result)),
                                   client_timeout=CLIENT_TIMEOUT_S)
            for _ in part:
                i, r = done.get(timeout=CLIENT_TIMEOUT_S)
                results[i] = r if isinstance(r, Exception) else {o: r.as_numpy(o) for o in outputs}
    finally:
        client.close()
    return results
