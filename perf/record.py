"""The common result record every load generator produces, and its JSON/CSV forms.

One record = one measured point (tool, model, batch, concurrency or rate). Latencies in
milliseconds, server-side times in microseconds per request (Triton's own unit).
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class ResultRecord:
    tool: str                       # "perf_analyzer", "bench_models", "bench_pipelines"
    target: str                     # model, pipeline or gateway route
    batch: int
    concurrency: int                # in-flight requests (0 when rate-driven)
    throughput: float               # inferences (batch items) per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float | None = None
    p90_ms: float | None = None
    requests: int | None = None         # sent, errors included
    errors: int = 0
    request_rate: float | None = None        # requests/s offered (rate-driven scenarios)
    scenario: str = ""
    avg_batch: float | None = None           # Triton: inference_count / exec_count delta
    queue_us: float | None = None            # Triton: per request
    compute_input_us: float | None = None
    compute_infer_us: float | None = None
    compute_output_us: float | None = None
    duration_s: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["error_rate"] = self.error_rate
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ResultRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def write_json(records: list[ResultRecord], path: Path, meta: dict | None = None) -> Path:
    Path(path).write_text(json.dumps({"meta": meta or {}, "results": [r.to_dict() for r in records]},
                                     indent=2, default=str))
    return Path(path)


def read_json(path: Path) -> tuple[dict, list[ResultRecord]]:
    data = json.loads(Path(path).read_text())
    return data.get("meta", {}), [ResultRecord.from_dict(r) for r in data["results"]]


def write_csv(records: list[ResultRecord], path: Path) -> Path:
    cols = [f.name for f in fields(ResultRecord) if f.name != "extra"] + ["error_rate"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r.to_dict())
    return Path(path)
