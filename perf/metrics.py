"""Triton's Prometheus metrics: scrape, diff two scrapes, summarise one model.

Average batch = delta nv_inference_count / delta nv_inference_exec_count (items per
execution); queue and compute times are cumulative microseconds, divided by the delta
of successful requests to give per-request figures.
"""
from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

from .errors import ServerUnavailable

_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
            "nv_inference_exec_count", "nv_inference_queue_duration_us",
            "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
            "nv_inference_compute_output_duration_us", "nv_inference_request_duration_us")

Sample = dict  # (metric name, model) -> value, summed over versions


def parse(text: str) -> Sample:
    out: Sample = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m or m.group("name") not in COUNTERS:
            continue
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        key = (m.group("name"), labels.get("model", ""))
        try:
            out[key] = out.get(key, 0.0) + float(m.group("value"))
        except ValueError:
            continue
    return out


def metrics_url(url: str) -> str:
    """Accept 'host:port', 'http://host:port' or a full '.../metrics' URL."""
    url = url if url.startswith("http") else f"http://{url}"
    return url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"


def scrape(url: str, timeout_s: float = 5.0) -> Sample:
    try:
        with urllib.request.urlopen(metrics_url(url), timeout=timeout_s) as resp:
            return parse(resp.read().decode())
    except OSError as exc:
        raise ServerUnavailable(f"cannot scrape Triton metrics at {metrics_url(url)}: {exc}") from exc


@dataclass(frozen=True)
class ModelDelta:
    model: str
    requests: float
    failures: float
    inferences: float
    executions: float
    queue_us: float | None
    compute_input_us: float | None
    compute_infer_us: float | None
    compute_output_us: float | None

    @property
    def avg_batch(self) -> float | None:
        return self.inferences / self.executions if self.executions else None

    def to_dict(self) -> dict:
        return {**self.__dict__, "avg_batch": self.avg_batch}


def delta(before: Sample, after: Sample, model: str) -> ModelDelta:
    def d(name):
        return after.get((name, model), 0.0) - before.get((name, model), 0.0)

    req = d("nv_inference_request_success")

    def per_req(name):
        return d(name) / req if req else None

    return ModelDelta(model, req, d("nv_inference_request_failure"), d("nv_inference_count"),
                      d("nv_inference_exec_count"), per_req("nv_inference_queue_duration_us"),
                      per_req("nv_inference_compute_input_duration_us"),
                      per_req("nv_inference_compute_infer_duration_us"),
                      per_req("nv_inference_compute_output_duration_us"))


def models_in(sample: Sample) -> list[str]:
    return sorted({m for (_, m) in sample if m})
