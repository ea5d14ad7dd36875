"""Tune dynamic batching and instances against a live Triton, in a scratch repository.

    python -m perf.tune --model yolo --sla-p95-ms 200

For every point of the grid (max_queue_delay_microseconds x preferred_batch_size set x
instance count) a scratch copy of the derived CPU repository (only the model and what
it calls) gets the point's config, a fresh tritonserver serves it on free loopback
ports (restart per point: `--model-control-mode none` stays, no API is opened), and
bench_models measures the concurrency sweep on the real scene. The knee is the highest
throughput whose p95 meets the SLA with zero errors. The committed repository is never
touched. The measurement is of the CPU profile, so the recommendation is a CPU override
(`recommended-cpu_override.pbtxt`: copy it to model_repository/<model>/cpu_override.pbtxt,
which serving.profiles applies to the CPU profile only), never a block for the GPU config.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from serving.profiles import CPU_OVERRIDE, transform

from . import report
from .bench_models import Sweep, bench_model
from .errors import PerfError, UsageError
from .record import ResultRecord
from .units import parse_int_list


@dataclass(frozen=True)
class Point:
    delay_us: int
    preferred: tuple[int, ...]
    instances: int

    @property
    def label(self) -> str:
        pref = "/".join(map(str, self.preferred)) or "none"
        return f"delay={self.delay_us}us pref={pref} inst={self.instances}"


def grid(delays, preferred_sets, instances) -> list[Point]:
    return [Point(d, tuple(p), i) for d, p, i in itertools.product(delays, preferred_sets, instances)]


def apply(config, point: Point):
    """A copy of `config` (ModelConfig) with the point's batching and instance count."""
    cfg = type(config)()
    cfg.CopyFrom(config)
    db = cfg.dynamic_batching
    db.max_queue_delay_microseconds = point.delay_us
    del db.preferred_batch_size[:]
    db.preferred_batch_size.extend(b for b in point.preferred if b <= cfg.max_batch_size)
    if not cfg.instance_group:
        cfg.instance_group.add()
    for g in cfg.instance_group:
        g.count = point.instances
    cfg.ClearField("model_warmup")   # warmup only delays each restart; the sweep warms up
    return cfg


def knee(evidence: list[tuple[Point, ResultRecord]], sla_p95_ms: float):
    """(point, record) with the highest throughput meeting the SLA with no errors, or None."""
    ok = [(p, r) for p, r in evidence if r.errors == 0 and r.p95_ms == r.p95_ms and r.p95_ms <= sla_p95_ms]
    return max(ok, key=lambda pr: pr[1].throughput, default=None)


def recommended_block(committed, point: Point) -> str:
    """The dynamic_batching + instance_group of a CPU override (serving.profiles.CPU_OVERRIDE)."""
    import contract

    cfg = apply(committed, point)
    out = type(committed)()
    out.dynamic_batching.CopyFrom(cfg.dynamic_batching)
    out.instance_group.extend(cfg.instance_group)
    return contract.to_text(out)


def measure_point(model: str, point: Point, sweep: Sweep, workdir: Path, start_timeout_s: float) -> list[ResultRecord]:
    import contract
    from serving import profiles
    from serving.tritonserver import TritonServer, free_port

    repo = workdir / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    derived = profiles.derive("cpu", dest=repo, models=[model])
    cfg_path = derived.path / model / "config.pbtxt"
    cfg = contract.parse_config(cfg_path.read_text(), cfg_path)
    cfg_path.write_text(contract.to_text(apply(cfg, point)))
    with TritonServer(derived.path, free_port(), free_port(), free_port(),
                      log_path=workdir / f"triton-{point.delay_us}-{point.instances}.log") as server:
        server.start(start_timeout_s)
        s = replace(sweep, url=server.grpc_url, metrics_url=server.metrics_url)
        records = asyncio.run(bench_model(model, s))
    for r in records:
        r.scenario = point.label
        r.extra["point"] = point.__dict__
    return records


def tune(model: str, sla_p95_ms: float, points: list[Point], sweep: Sweep, name: str | None = None,
         reports_root: Path = report.REPORTS_DIR, start_timeout_s: float = 600, log=print):
    import contract

    committed = contract.load(model).config
    if not committed.HasField("dynamic_batching"):
        raise UsageError(f"model {model!r} has no dynamic_batching to tune (ensembles are tuned through "
                         "the models they call)")
    evidence: list[tuple[Point, ResultRecord]] = []
    with tempfile.TemporaryDirectory(prefix=f"visionserve-tune-{model}-") as tmp:
        for i, point in enumerate(points, 1):
            log(f"[{i}/{len(points)}] {model}: {point.label}")
            for r in measure_point(model, point, sweep, Path(tmp), start_timeout_s):
                evidence.append((point, r))
    best = knee(evidence, sla_p95_ms)
    out = report.new_dir(name or f"tune-{model}", reports_root)
    sections = {}
    if best is None:
        verdict = f"no point meets p95 <= {sla_p95_ms:g} ms with zero errors; lower concurrency or relax the SLA"
    else:
        p, r = best
        block = recommended_block(transform(committed, "cpu"), p)     # what was measured: the CPU profile
        (out / f"recommended-{CPU_OVERRIDE}").write_text(
            f"# CPU profile only: copy to model_repository/{model}/{CPU_OVERRIDE} (serving.profiles applies it\n"
            f"# to the derived CPU config; the committed GPU config is not for a CPU measurement).\n"
            f"# make tune MODEL={model} SLA_P95_MS={sla_p95_ms:g}: knee at {p.label}, concurrency "
            f"{r.concurrency}: {r.throughput:.1f} infer/s, p95 {r.p95_ms:.1f} ms, avg batch "
            f"{(r.avg_batch or 0):.2f}\n{block}")
        verdict = (f"knee: {p.label} at concurrency {r.concurrency}: {r.throughput:.1f} infer/s, "
                   f"p95 {r.p95_ms:.1f} ms (SLA {sla_p95_ms:g} ms), avg batch {(r.avg_batch or 0):.2f}")
        sections["Recommended CPU override"] = (
            f"```\n{block}```\nMeasured on the CPU profile: copy `recommended-{CPU_OVERRIDE}` to "
            f"`model_repository/{model}/{CPU_OVERRIDE}` (the CPU profile applies it). It is not a GPU "
            "setting: tune GPU batching on a GPU host.")
    sections["Verdict"] = verdict
    meta = {"tool": "tune (scratch CPU repository, tritonserver restarted per point)", "model": model,
            "SLA": f"p95 <= {sla_p95_ms:g} ms, 0 errors", "points": len(points),
            "concurrencies": list(sweep.concurrencies), "batch": list(sweep.batches),
            "bounds": f"{sweep.requests} requests or {sweep.seconds:.0f} s per measurement",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    report.write(out, f"tune: {model}", [r for _, r in evidence], meta, sections)
    return out, best, evidence


def _delays(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"delays {text!r} must be a comma list of microseconds") from None
    if not out or any(d < 0 for d in out):
        raise UsageError(f"delays {text!r} must be non-negative microseconds")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.tune", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--sla-p95-ms", type=float, required=True)
    ap.add_argument("--delays", default="0,2000,8000", help="max_queue_delay_microseconds values")
    ap.add_argument("--preferred", default="none;4,8",
                    help="preferred_batch_size sets separated by ';' ('none' = empty)")
    ap.add_argument("--instances", default="1,2")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--reports", type=Path, default=report.REPORTS_DIR)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    from contract import ContractError
    from serving.profiles import ProfileError
    from serving.tritonserver import TritonServerError

    try:
        prefs = [() if s.strip() in ("", "none") else tuple(parse_int_list(s)) for s in a.preferred.split(";")]
        points = grid(_delays(a.delays), prefs, parse_int_list(a.instances))
        sweep = Sweep(concurrencies=tuple(parse_int_list(a.concurrency)), requests=a.requests,
                      seconds=a.seconds, progress=not a.no_progress)
        out, best, _ = tune(a.model, a.sla_p95_ms, points, sweep, reports_root=a.reports,
                            log=lambda m: print(m, file=sys.stderr))
    except (PerfError, ContractError, ProfileError, TritonServerError) as exc:
        # serving's errors here are the user's to fix: artifacts not exported, server won't start
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((out / "summary.md").read_text())
    return 0 if best else 1


if __name__ == "__main__":
    sys.exit(main())
