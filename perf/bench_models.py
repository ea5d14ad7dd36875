"""Async gRPC load straight to Triton: batch x concurrency sweeps per model or pipeline.

    python -m perf.bench_models --models yolo,detect_embed --batch 1,4 --concurrency 1,4,16

Each point sends at most `--requests` requests or runs at most `--seconds`, whichever
ends first, from `concurrency` coroutines sharing ONE channel, and scrapes Triton's
metrics before and after (average batch, queue and compute time per request).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export import scene

from contract import defaults

from . import metrics, report
from .errors import PerfError, ServerUnavailable, UsageError
from .net import grpc_target, require_loopback
from .record import ResultRecord
from .units import parse_int_list


@dataclass(frozen=True)
class Sweep:
    url: str = defaults.TRITON_GRPC
    metrics_url: str = defaults.TRITON_METRICS_URL
    batches: tuple[int, ...] = (1,)
    concurrencies: tuple[int, ...] = (1, 4)
    requests: int = 200                 # per point
    seconds: float = 20.0               # per point
    warmup: int = 4
    timeout_s: float = 60.0             # per request
    progress: bool = True


def make_inputs(config: dict, batch: int):
    """tritonclient InferInputs for `batch` items of the real scene (export.scene: a face, objects,
    text, captions), from the server's model config (JSON form), so every pipeline branch runs."""
    from tritonclient.grpc import InferInput

    from contract import ContractError, from_json

    try:
        # variable dims (face_align's faces per image): the range's opt, what the model usually gets
        specs = from_json(config).with_variable_dims("opt").inputs
    except ContractError as exc:
        raise UsageError(str(exc)) from exc
    batched = int(config.get("max_batch_size", 0)) > 0
    try:
        feed = scene.inputs_for(specs, batch if batched else 1)
    except scene.SceneError as exc:
        raise UsageError(str(exc)) from exc
    out = []
    for s in specs:
        arr = feed[s.name] if batched else feed[s.name][0]
        inp = InferInput(s.name, list(arr.shape), s.triton_dtype)
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


async def _point(client, model, inputs, sweep: Sweep, concurrency: int, bar) -> tuple[np.ndarray, int, int, float, str]:
    """(latencies in s, sent, errors, elapsed s, first error) for one concurrency level."""
    latencies: list[float] = []
    errors = 0
    first_error = ""
    sent = 0
    deadline = time.monotonic() + sweep.seconds

    async def worker():
        nonlocal sent, errors, first_error
        while sent < sweep.requests and time.monotonic() < deadline:
            sent += 1
            t0 = time.perf_counter()
            try:
                await client.infer(model, inputs, client_timeout=sweep.timeout_s)
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # tritonclient raises InferenceServerException and grpc errors
                errors += 1
                first_error = first_error or str(exc)[:300]
            if bar is not None:
                bar.update(1)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return np.asarray(latencies), sent, errors, time.monotonic() - t0, first_error


async def bench_model(model: str, sweep: Sweep) -> list[ResultRecord]:
    from tqdm import tqdm
    from tritonclient.grpc.aio import InferenceServerClient

    target = grpc_target(require_loopback(sweep.url))
    require_loopback(metrics.metrics_url(sweep.metrics_url))
    client = InferenceServerClient(target)
    try:
        try:
            ready = await asyncio.wait_for(client.is_model_ready(model), 10)
        except Exception as exc:
            raise ServerUnavailable(f"no Triton answered at {target}: {exc}") from exc
        if not ready:
            raise UsageError(f"model {model!r} is not ready on Triton at {target}")
        config = (await client.get_model_config(model, as_json=True))["config"]
        max_batch = int(config.get("max_batch_size", 0))
        records = []
        for batch in sweep.batches:
            if batch > max(max_batch, 1):
                print(f"{model}: skipping batch {batch} > max_batch_size {max_batch}", file=sys.stderr)
                continue
            inputs = make_inputs(config, batch)
            for _ in range(sweep.warmup):
                await client.infer(model, inputs, client_timeout=sweep.timeout_s)
            for conc in sweep.concurrencies:
                before = metrics.scrape(sweep.metrics_url)
                bar = tqdm(total=sweep.requests, desc=f"{model} b={batch} c={conc}", unit="req",
                           leave=False, disable=not sweep.progress)
                lat, sent, errors, elapsed, first_error = await _point(client, model, inputs, sweep, conc, bar)
                bar.close()
                after = await _settled_scrape(sweep.metrics_url, before, model, sent)
                rec = _record(model, batch, conc, lat, sent, errors, elapsed, first_error,
                                      metrics.delta(before, after, model))
                # An ensemble executes once per request; the batching happens in the models it calls.
                rec.extra["composing"] = {m: metrics.delta(before, after, m).avg_batch
                                          for m in metrics.models_in(after) if m != model
                                          and metrics.delta(before, after, m).requests > 0}
                records.append(rec)
        return records
    finally:
        await client.close()


async def _settled_scrape(url: str, before, model: str, sent: int, wait_s: float = 2.0):
    """Triton counts a request in its metrics just after answering it: scrape again (briefly)
    until every request we sent is counted, so the last ones of a point are not lost."""
    deadline = time.monotonic() + wait_s
    after = metrics.scrape(url)
    while time.monotonic() < deadline:
        d = metrics.delta(before, after, model)
        if d.requests + d.failures >= sent:
            break
        await asyncio.sleep(0.05)
        after = metrics.scrape(url)
    return after


def _record(model, batch, conc, lat, sent, errors, elapsed, first_error, d: metrics.ModelDelta) -> ResultRecord:
    ms = lat * 1000.0
    pct = np.percentile(ms, [50, 90, 95, 99]) if len(ms) else [float("nan")] * 4
    extra = {"triton": d.to_dict()}
    if first_error:
        extra["first_error"] = first_error
    return ResultRecord(tool="bench_models", target=model, batch=batch, concurrency=conc,
                        throughput=len(ms) * batch / elapsed if elapsed else 0.0,
                        p50_ms=float(pct[0]), p90_ms=float(pct[1]), p95_ms=float(pct[2]), p99_ms=float(pct[3]),
                        avg_ms=float(ms.mean()) if len(ms) else None, requests=sent, errors=errors,
                        avg_batch=d.avg_batch, queue_us=d.queue_us, compute_input_us=d.compute_input_us,
                        compute_infer_us=d.compute_infer_us, compute_output_us=d.compute_output_us,
                        duration_s=elapsed, extra=extra)


def run(models: list[str], sweep: Sweep, name: str = "bench-models", reports_root: Path = report.REPORTS_DIR):
    """Sweep every model, write the report; returns (report dir, records)."""
    records: list[ResultRecord] = []
    for m in models:
        records += asyncio.run(bench_model(m, sweep))
    out = report.new_dir(name, reports_root)
    meta = {"tool": "bench_models (async gRPC, tritonclient.grpc.aio)", "triton": sweep.url,
            "models": ", ".join(models), "batches": list(sweep.batches),
            "concurrencies": list(sweep.concurrencies),
            "bounds": f"{sweep.requests} requests or {sweep.seconds:.0f} s per point",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    report.write(out, f"bench_models: {', '.join(models)}", records, meta)
    return out, records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.bench_models", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=None, help="comma list of models or pipelines (default: every pipeline "
                    "of the contract: models that call others)")
    ap.add_argument("--url", default=defaults.TRITON_GRPC, help="Triton gRPC (loopback only)")
    ap.add_argument("--metrics-url", default=defaults.TRITON_METRICS_URL)
    ap.add_argument("--batch", default="1", help="batch sizes: 1,4,8 or 1:8:1")
    ap.add_argument("--concurrency", default="1,4,16", help="in-flight requests: 1,4,16 or 1:16:4")
    ap.add_argument("--requests", type=int, default=200, help="at most this many requests per point")
    ap.add_argument("--seconds", type=float, default=20.0, help="at most this long per point")
    ap.add_argument("--name", default=None, help="report name (default bench-<models>)")
    ap.add_argument("--reports", type=Path, default=report.REPORTS_DIR)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.models:
        models = [m for m in a.models.split(",") if m]
    else:
        import contract
        from contract.facts import pipelines

        models = list(pipelines(contract.load_all()))
    sweep = Sweep(url=a.url, metrics_url=a.metrics_url, batches=tuple(parse_int_list(a.batch)),
                  concurrencies=tuple(parse_int_list(a.concurrency)), requests=a.requests,
                  seconds=a.seconds, progress=not a.no_progress)
    try:
        out, records = run(models, sweep, a.name or f"bench-{'-'.join(models)}", a.reports)
    except PerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.table(records))
    print(f"\nreport: {out}/summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
