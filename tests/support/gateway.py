"""The gateway in tests: one factory for `python -m gateway` processes (perf/gatewayproc.py
on free ports, each with its own log file, all stopped at the end of their fixture), and
what a gateway reports about itself read back from its own /metrics."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
import re
from pathlib import Path

from perf import openloop
from perf.gatewayproc import Gateway


class GatewayFactory:
    """`start(grpc_url, **settings)`: a ready gateway (settings as GatewaySettings names);
    `spawn(...)`: one not waited for; `stop_all()` stops every one started."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.started: list[Gateway] = []

    def spawn(self, grpc_url: str, **settings) -> Gateway:
        log = self.root / f"gateway{len(self.started)}.log"
        gw = Gateway(grpc_url, log, **settings)
        self.started.append(gw)
        return gw

    def start(self, grpc_url: str, ready_s: float = 120.0, **settings) -> Gateway:
        return self.spawn(grpc_url, **settings).wait_ready(ready_s)

    def stop_all(self) -> None:
        """Every gateway started, at once (each drains on its own)."""
        if self.started:
            with ThreadPoolExecutor(len(self.started)) as pool:
                list(pool.map(lambda gw: gw.stop(), self.started))
        self.started.clear()


def send(gw: Gateway, path: str, body: bytes, content_type: str = "image/jpeg", **kw):
    """One request to `gw` by the raw client (perf.openloop.request: a coroutine giving a
    Record, whatever the gateway answers or does to the connection); `kw` as request's
    (headers added to the Content-Type, keep_alive, timeout_s, declared, cut_after...)."""
    headers = {"Content-Type": content_type, **kw.pop("headers", {})}
    return openloop.request("127.0.0.1", gw.port, path, body, headers=headers, **kw)


def statuses(gw: Gateway) -> dict[str, float]:
    """{status: requests answered} over every route."""
    out: dict[str, float] = {}
    for (_, status), v in gw.series("requests_total").items():
        out[status] = out.get(status, 0) + v
    return out


def gauge(gw: Gateway, name: str) -> float:
    """An unlabelled visionserve_gateway_* value (nan when absent)."""
    m = re.search(rf"^visionserve_gateway_{name} (\S+)$", gw.metrics(), re.M)
    return float(m.group(1)) if m else float("nan")


def input_paths(gw: Gateway) -> dict[tuple[str, str], float]:
    """{(model, "shm" | "wire"): Triton calls}: how image tensors travelled."""
    return gw.series("triton_input_path_total")


def histogram(gw: Gateway, name: str, **labels) -> dict[float, float]:
    """{upper bound: cumulative count} of one visionserve_gateway_<name> histogram series,
    the one whose labels include `labels` (summed over the others)."""
    out: dict[float, float] = {}
    pattern = rf'^visionserve_gateway_{name}_bucket\{{([^}}]*)\}} (\S+)$'
    for text, value in re.findall(pattern, gw.metrics(), re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', text))
        if all(got.get(k) == str(v) for k, v in labels.items()):
            le = float(got["le"])
            out[le] = out.get(le, 0.0) + float(value)
    return dict(sorted(out.items()))


def delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    """The observations between two reads of one histogram."""
    return {le: n - before.get(le, 0.0) for le, n in after.items()}


def quantile(buckets: dict[float, float], q: float) -> float:
    """Prometheus' histogram_quantile over cumulative buckets: linear within the bucket
    holding the q-quantile (the largest finite bound when it falls in +Inf)."""
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for le, n in buckets.items():
        if n >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * ((rank - below) / max(n - below, 1e-12))
        lower, below = le, n
    return lower


def share_within(buckets: dict[float, float], bound_s: float) -> float:
    """The share of observations at or under `bound_s` (a bucket bound)."""
    total = buckets.get(math.inf, 0.0)
    return buckets.get(bound_s, math.nan) / total if total else math.nan
