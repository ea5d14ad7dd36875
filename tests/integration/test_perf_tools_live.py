"""Smoke runs of the perf tools `make` exposes that start or load real servers: each tool's own
entry point, as its make target calls it, at the smallest configuration it accepts. Each must
exit 0, print its table with the columns docs/perf.md and docs/gateway.md describe, measure
something (throughput above zero, no errors) and leave no process behind."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from contract import REPO_ROOT
from tests.support import processes
from tests.support.exports import smallest_exported_network
from tests.support.polling import wait_for
from tests.support.triton import require_triton


def _rows(text: str, first_column: str) -> list[dict[str, str]]:
    """The markdown table of `text` whose header starts with `first_column`, as dicts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    head = cells(lines[start])
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, cells(line))))
    return rows


def _no_leftovers(tag: str) -> None:
    # a stopped tritonserver's python-backend stubs exit on their own a moment later
    wait_for(lambda: not processes.tagged(tag), 15, "every process the tool started to exit")


def test_the_leftover_check_finds_a_process_in_its_own_session():
    """What the smoke runs rely on: a tagged process is found though it left the tool's
    session (as tritonserver does), and not once it exited."""
    tag = processes.new_tag()
    child = subprocess.Popen(["sleep", "30"], env=dict(os.environ, **{processes.TAG: tag}), start_new_session=True)
    try:
        assert [f"{child.pid}: sleep 30"] == processes.tagged(tag)
    finally:
        child.kill()
        child.wait(5)
    # polled: once (CI) /proc still listed the reaped child right after wait()
    wait_for(lambda: processes.tagged(tag) == [], 5, "the killed process gone from /proc")


def test_bench_fleet_runs_one_replica_for_every_balancer(tmp_path):
    """`make bench-fleet` (python -m perf.bench_fleet) with one replica, one round."""
    from perf.bench_fleet import BALANCERS

    require_triton()
    tag = processes.new_tag()
    env = dict(os.environ, **{processes.TAG: tag})
    try:
        done = subprocess.run([sys.executable, "-m", "perf.bench_fleet", "--replicas", "1", "--rounds", "1",
                               "--seconds", "0.3", "--warmup", "0.2", "--work", str(tmp_path)],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    finally:
        _no_leftovers(tag)
    assert done.returncode == 0, done.stdout + done.stderr
    line = re.compile(r"^\s+(\w+)\s+replicas=1 c=(\d+)\s+([\d.]+) img/s\s+errors (\d+)\s+p50\s+([\d.]+)\s+"
                      r"p95\s+([\d.]+)\s+p99\s+([\d.]+) ms\s+share\s+([\d.]+)%$")
    points = {m[1]: m for m in map(line.match, done.stdout.splitlines()) if m}
    assert set(points) == set(BALANCERS), done.stdout
    for m in points.values():
        assert float(m[3]) > 0 and int(m[4]) == 0, m[0]
        assert 0 < float(m[5]) <= float(m[6]) <= float(m[7]), m[0]
        assert float(m[8]) == 100.0, m[0]                     # one replica served everything
    efficiency = re.findall(r"^\s+(\w+)\s+([\d.]+)\s*(met|NOT met)?$", done.stdout, re.M)
    assert {name for name, _, _ in efficiency} == set(BALANCERS), done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert {p["balancer"] for p in report["points"]} == set(BALANCERS)
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in report["points"])


def test_bench_cpu_runs_one_model_bare_and_served(tmp_path, monkeypatch, capsys):
    """`make bench-cpu BENCH_CPU_MODELS=<m> BENCH_CPU_PIPELINES=` at its smallest: bare points
    (perf/cpu_bare.py) and both served settings, each through its own tritonserver."""
    from perf import bench_cpu

    require_triton()
    model = smallest_exported_network().name
    tag = processes.new_tag()
    monkeypatch.setenv(processes.TAG, tag)           # inherited by the tritonservers it starts
    try:
        rc = bench_cpu.main(["--models", model, "--pipelines", "", "--batches", "1", "--bare-seconds", "0.05",
                             "--seconds", "0.3", "--variants", "", "--reports", str(tmp_path)])
    finally:
        _no_leftovers(tag)
    out = capsys.readouterr()
    assert rc == 0, out.err
    (row,) = _rows(out.out, "model")
    assert row["model"] == model
    assert set(row) == {"model", "bare ORT 1t b1 (baseline's path)", "best bare (runtime prec threads batch)",
                        "served baseline", "served default (avg batch)", "default / best bare", "target >= 0.9"}
    assert float(row["bare ORT 1t b1 (baseline's path)"]) > 0
    assert float(row["best bare (runtime prec threads batch)"].split()[0]) > 0
    assert float(row["served baseline"]) > 0
    assert float(row["served default (avg batch)"].split()[0]) > 0
    assert float(row["default / best bare"]) > 0 and row["target >= 0.9"] in ("PASS", "MISS")
    (report,) = tmp_path.glob("*-bench-cpu")
    results = json.loads((report / "results.json").read_text())
    for served in (results["served_default"][model], results["served_baseline"][model]):
        assert served["errors"] == 0 and served["items_per_s"] > 0, served
    assert {p["runtime"] for p in results["bare"]} >= {"onnxruntime", "openvino"}


def test_bench_models_cli_sweeps_one_model(served, tmp_path, capsys):
    """`make bench-<model>` (python -m perf.bench_models) against the running Triton, briefly."""
    from perf import bench_models

    model = smallest_exported_network().name
    served.need(model)
    rc = bench_models.main(["--models", model, "--url", served.server.grpc_url,
                            "--metrics-url", served.server.metrics_url, "--batch", "1", "--concurrency", "2",
                            "--requests", "6", "--seconds", "5", "--reports", str(tmp_path), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    (row,) = _rows(out.out, "target")
    assert row["target"] == model and row["conc"] == "2"
    assert float(row["infer/s"]) > 0 and row["errors"] == "0"
    assert float(row["avg batch"]) >= 1                      # read from Triton's own metrics


def test_bench_pipelines_cli_reports_an_sla_verdict(served, served_gateway, tmp_path, capsys):
    """`make bench-pipelines ROUTES=<route>` through the running gateway, every scenario, briefly.
    The route: a served one, a text route first (the cheapest to run); the SLA is wide: the
    verdict here judges errors, not this shared machine's latency."""
    from perf import bench_pipelines

    targets = bench_pipelines.targets()
    servable = [name for name in targets if ":" not in name and _route_model(name) in served.contracts]
    route = min(servable, key=lambda name: not targets[name].text, default=None)
    if route is None:
        pytest.skip("no route's default model is served (make export-onnx)")
    rc = bench_pipelines.main(["--url", served_gateway.url, "--routes", route, "--single", "2", "--burst", "2",
                               "--burst-rounds", "1", "--rate", "4", "--seconds", "1", "--sla-p95-ms", "60000",
                               "--reports", str(tmp_path), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    rows = _rows(out.out, "route")
    assert {r["scenario"] for r in rows} == {"single", "burst", "sustained"}
    for r in rows:
        assert r["route"] == route and int(r["requests"]) > 0 and r["errors"] == "0", r
        assert float(r["p95 ms"]) > 0 and r["verdict"] == "PASS", r


def _route_model(key: str) -> str:
    from contract.routes import route_table

    (route,) = [r for r in route_table().routes if r.key == key]
    return route.default.model


def test_tune_measures_one_point_and_recommends_it(tmp_path, monkeypatch, capsys):
    """`make tune MODEL=<m> SLA_P95_MS=..` (python -m perf.tune) on a one-point grid: a scratch
    repository, its own tritonserver, the knee and the CPU override it recommends."""
    from perf import tune

    require_triton()
    model = smallest_exported_network().name
    tag = processes.new_tag()
    monkeypatch.setenv(processes.TAG, tag)
    try:
        rc = tune.main(["--model", model, "--sla-p95-ms", "60000", "--delays", "0", "--preferred", "none",
                        "--instances", "1", "--concurrency", "2", "--requests", "6", "--seconds", "5",
                        "--reports", str(tmp_path), "--no-progress"])
    finally:
        _no_leftovers(tag)
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    (row,) = _rows(out.out, "target")
    assert row["target"] == model and row["conc"] == "2"
    assert float(row["infer/s"]) > 0 and row["errors"] == "0"
    assert f"knee: {row['scenario']} at concurrency 2" in out.out
    (recommended,) = tmp_path.glob(f"*-tune-{model}/recommended-*")
    assert "dynamic_batching" in recommended.read_text()
