"""perf_analyzer, installed by the project and always run under a memory cap.

The binary comes from the `tritonclient==2.50.0` manylinux1 wheel (later wheels are
empty of it); it needs Debian's libb64-0d and libcudart.so.12 from the PyPI package
nvidia-cuda-runtime-cu12. `make perf-setup` installs both; `missing()` says what is not.
"""
from __future__ import annotations

import csv
import ctypes.util
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from contract import defaults

from . import estimate as est
from .errors import RunFailed, SetupError, UsageError
from .memcap import CappedRun, run_capped
from .record import ResultRecord

if TYPE_CHECKING:
    import contract

LIBB64 = "libb64.so.0d"
LIBCUDART = "libcudart.so.12"


# --- installation --------------------------------------------------------------------
def binary() -> Path:
    for cand in (Path(sys.executable).parent / "perf_analyzer", shutil.which("perf_analyzer")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    raise SetupError("perf_analyzer not found next to this Python or on PATH: run `make perf-setup` "
                     "(it installs tritonclient==2.50.0, whose wheel ships the binary)")


def cudart_dir() -> Path | None:
    for sp in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}:
        d = Path(sp) / "nvidia" / "cuda_runtime" / "lib"
        if (d / LIBCUDART).is_file():
            return d
    return None


def _has_libb64() -> bool:
    if ctypes.util.find_library("b64"):
        return True
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return LIBB64 in out or any(Path(d, LIBB64).exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib"))


def missing() -> list[str]:
    """What perf_analyzer still needs, each with its fix; empty when it can run."""
    out = []
    try:
        binary()
    except SetupError as exc:
        out.append(str(exc))
    if not _has_libb64():
        out.append(f"{LIBB64} is missing: `apt-get install -y libb64-0d` as root (or `make perf-setup`)")
    if cudart_dir() is None:
        out.append(f"{LIBCUDART} is missing: `pip install nvidia-cuda-runtime-cu12` (or `make perf-setup`)")
    return out


def environment() -> dict:
    """os.environ plus LD_LIBRARY_PATH for libcudart; SetupError if anything is missing."""
    problems = missing()
    if problems:
        raise SetupError("perf_analyzer cannot run:\n  " + "\n  ".join(problems))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(cudart_dir()), env.get("LD_LIBRARY_PATH")]))
    return env


# --- one run -------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    model: str
    url: str = defaults.TRITON_GRPC
    protocol: str = "grpc"
    batch: int = 1
    concurrency: tuple[int, int, int] = (1, 1, 1)
    shared_memory: str = "none"
    max_threads: int | None = None
    measurement_mode: str = "count_windows"
    measurement_request_count: int = 50
    measurement_interval_ms: int = 2000
    stability_percentage: int = 10
    max_trials: int = 10
    input_data: str = "zero"           # zero | random | a directory | a JSON file (the CLI writes the real scene)
    string_length: int = 128
    metrics_url: str | None = None
    headers: tuple[str, ...] = ()      # "Header:Value" (HTTP headers; gRPC metadata over gRPC)
    admin_key: str | None = None       # Triton's statistics and shm APIs sit behind it
    extra: tuple[str, ...] = ()

    def shape(self, steps: int = 1) -> est.LoadShape:
        return est.LoadShape(batch=self.batch, concurrency=self.concurrency[1],
                             max_threads=self.max_threads or est.DEFAULT_MAX_THREADS,
                             steps=steps, shared_memory=self.shared_memory)


def command(opts: Options, csv_path: Path, load: est.TensorLoad | None = None) -> list[str]:
    if opts.protocol not in ("grpc", "http"):
        raise UsageError(f"protocol must be grpc or http, not {opts.protocol!r}")
    if opts.measurement_mode not in ("count_windows", "time_windows"):
        raise UsageError(f"measurement mode must be count_windows or time_windows, not {opts.measurement_mode!r}")
    s, e, step = opts.concurrency
    cmd = [str(binary()), "-m", opts.model, "-u", opts.url, "-i", opts.protocol, "-b", str(opts.batch),
           "--concurrency-range", f"{s}:{e}:{step}", "--measurement-mode", opts.measurement_mode,
           "-s", str(opts.stability_percentage), "-r", str(opts.max_trials),
           "--input-data", opts.input_data, "--string-length", str(opts.string_length),
           "-f", str(csv_path), "--verbose-csv"]
    if opts.measurement_mode == "count_windows":
        cmd += ["--measurement-request-count", str(opts.measurement_request_count)]
    else:
        cmd += ["-p", str(opts.measurement_interval_ms)]
    if opts.max_threads:
        cmd += ["--max-threads", str(opts.max_threads)]
    if opts.shared_memory != "none":
        cmd += ["--shared-memory", opts.shared_memory]
        if load is not None:
            cmd += ["--output-shared-memory-size", str(max(load.outputs, default=0) * opts.batch or 102400)]
    if opts.metrics_url:
        cmd += ["--collect-metrics", "--metrics-url", opts.metrics_url.removeprefix("http://")]
    for h in opts.headers + admin_headers(opts.protocol, opts.admin_key):
        cmd += ["-H", h]
    return cmd + list(opts.extra)


def admin_headers(protocol: str, admin_key: str | None) -> tuple[str, ...]:
    """perf_analyzer reads Triton's statistics each window: behind the admin key on a hardened
    server. Its -H goes out as an HTTP header, or as gRPC metadata (which Triton expects
    prefixed, see serving/tritonserver.py)."""
    from serving.tritonserver import ADMIN_HEADER, GRPC_ADMIN_METADATA

    if not admin_key:
        return ()
    return (f"{GRPC_ADMIN_METADATA if protocol == 'grpc' else ADMIN_HEADER}:{admin_key}",)


def redacted(cmd: list[str]) -> str:
    """The command line for logs and reports, admin key values hidden."""
    out, hide = [], False
    for a in cmd:
        out.append(a.split(":", 1)[0] + ":***" if hide and "admin-key:" in a else a)
        hide = a == "-H"
    return " ".join(out)


def variable_shapes(c: contract.ModelContract) -> tuple[str, ...]:
    """`--shape name:d1,d2,..` for inputs with variable dims (perf_analyzer needs them), at the
    range's max: the heaviest request the model takes."""
    at_max = c.with_variable_dims("max")
    return tuple(f"--shape={t.name}:{','.join(map(str, m.dims))}"
                 for t, m in zip(c.inputs, at_max.inputs) if any(d < 0 for d in t.dims))


@dataclass
class AnalyzerRun:
    records: list[ResultRecord]
    capped: CappedRun
    estimate: est.Estimate
    command: list[str]
    csv_path: Path
    log_path: Path
    notes: list[str] = field(default_factory=list)


def run(opts: Options, load: est.TensorLoad, cap_bytes: int, out_dir: Path, timeout_s: float = 600) -> AnalyzerRun:
    """Pre-flight check (OverCapError), then perf_analyzer under the cap; parsed records."""
    estimate = est.check(load, opts.shape(), cap_bytes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, log_path, err_path = out_dir / "perf_analyzer.csv", out_dir / "perf_analyzer.log", \
        out_dir / "perf_analyzer.stderr.log"
    cmd = command(opts, csv_path, load)
    capped = run_capped(cmd, cap_bytes, env=environment(), stdout_path=log_path, stderr_path=err_path,
                        timeout_s=timeout_s)
    stdout = log_path.read_text(errors="replace")
    if capped.returncode != 0 or not csv_path.is_file():
        why = ("killed at the memory cap: " + capped.cap.describe()) if capped.killed_at_cap else \
            ("timed out" if capped.timed_out else f"exit code {capped.returncode}")
        tail = "\n".join((stdout + err_path.read_text(errors="replace")).splitlines()[-15:])
        if "stable measurement" in tail:
            why += "; on a shared machine raise --stability (STABILITY=50) or --request-count"
        if "restricted, expecting header" in tail:
            why += ("; Triton's statistics API is behind its admin key: pass --admin-key or set "
                    "VISIONSERVE_TRITON_ADMIN_KEY")
        raise RunFailed(f"perf_analyzer failed ({why}); command: {redacted(cmd)}\n{tail}")
    records = parse_csv(csv_path.read_text(), model=opts.model, batch=opts.batch, stdout=stdout)
    for r in records:
        r.extra.update(peak_rss_bytes=capped.peak_rss_bytes, cap=capped.cap.describe(),
                       shared_memory=opts.shared_memory)
    return AnalyzerRun(records, capped, estimate, cmd, csv_path, log_path)


# --- parsing -------------------------------------------------------------------------
def _num(row: dict, key: str) -> float | None:
    v = (row.get(key) or "").strip()
    return float(v) if v else None


def _ms(row: dict, key: str) -> float | None:
    v = _num(row, key)
    return None if v is None else v / 1000.0


_BLOCK = re.compile(r"^(Request concurrency|Request Rate): (\d+(?:\.\d+)?)", re.MULTILINE)


def parse_stdout(text: str) -> dict[float, dict[str, int]]:
    """Per concurrency (or rate): client request count and Triton's inference/execution counts."""
    out: dict[float, dict[str, int]] = {}
    marks = list(_BLOCK.finditer(text))
    for i, m in enumerate(marks):
        block = text[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)]
        counts = {}
        for key, pat in (("requests", r"Client:\s*\n\s*Request count: (\d+)"),
                         ("inference_count", r"Inference count: (\d+)"),
                         ("execution_count", r"Execution count: (\d+)"),
                         ("success_count", r"Successful request count: (\d+)")):
            mm = re.search(pat, block)
            if mm:
                counts[key] = int(mm.group(1))
        out[float(m.group(2))] = counts
    return out


def parse_csv(text: str, model: str, batch: int, stdout: str = "") -> list[ResultRecord]:
    """perf_analyzer's `-f` CSV (plain or --verbose-csv) -> one record per row; usec -> ms."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "Inferences/Second" not in rows[0]:
        raise RunFailed(f"not a perf_analyzer CSV (header: {text.splitlines()[:1]})")
    counts = parse_stdout(stdout) if stdout else {}
    records = []
    for row in rows:
        conc = _num(row, "Concurrency")
        rate = _num(row, "Request Rate")
        key = conc if conc is not None else rate
        c = counts.get(key, {})
        avg_batch = c["inference_count"] / c["execution_count"] if c.get("execution_count") else None
        extra = {k: v for k, v in row.items() if k and v and k.startswith(("Avg GPU", "Max GPU", "Total GPU"))}
        extra.update({k: _num(row, k) for k in ("Client Send", "Network+Server Send/Recv", "Client Recv")
                      if _num(row, k) is not None})
        records.append(ResultRecord(
            tool="perf_analyzer", target=model, batch=batch, concurrency=int(conc or 0),
            request_rate=rate, throughput=_num(row, "Inferences/Second") or 0.0,
            p50_ms=_ms(row, "p50 latency"), p90_ms=_ms(row, "p90 latency"), p95_ms=_ms(row, "p95 latency"),
            p99_ms=_ms(row, "p99 latency"), avg_ms=_ms(row, "Avg latency"),
            requests=c.get("requests"), errors=0, avg_batch=avg_batch,
            queue_us=_num(row, "Server Queue"), compute_input_us=_num(row, "Server Compute Input"),
            compute_infer_us=_num(row, "Server Compute Infer"),
            compute_output_us=_num(row, "Server Compute Output"), extra=extra))
    # perf_analyzer writes rows in its own order (not always by concurrency)
    return sorted(records, key=lambda r: (r.concurrency, r.request_rate or 0))


# --- CLI: make perf MODEL=... -----------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    import argparse
    import dataclasses
    import time

    import contract
    from contract import encoded
    from export import scene

    from . import report
    from .memcap import default_cap
    from .net import require_loopback
    from .units import human_bytes, parse_bytes, parse_range

    ap = argparse.ArgumentParser(prog="python -m perf.analyzer",
                                 description="perf_analyzer under a memory cap, with a pre-flight estimate")
    ap.add_argument("--model", required=True)
    ap.add_argument("--url", default=defaults.TRITON_GRPC)
    ap.add_argument("--protocol", default="grpc", choices=("grpc", "http"))
    ap.add_argument("--metrics-url", default=defaults.TRITON_METRICS_URL)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--concurrency", default="1:16:4", help="start:end:step")
    ap.add_argument("--mem", default=None, help="memory cap, e.g. 4G (default min(4G, MemAvailable/2))")
    ap.add_argument("--shared-memory", default="none", choices=est.SHM_MODES,
                    help="system/cuda on either protocol; a hardened Triton needs --admin-key for its shm API")
    ap.add_argument("--admin-key", default=os.environ.get("VISIONSERVE_TRITON_ADMIN_KEY") or None,
                    help="key of the restricted APIs: statistics, shared memory (default "
                         "$VISIONSERVE_TRITON_ADMIN_KEY); sent as the admin-key header over HTTP, as "
                         "triton-grpc-protocol-admin-key metadata over gRPC")
    ap.add_argument("--input-data", default="scene",
                    help="scene (default: export.scene's real frame, captions and landmarks as a JSON; "
                         "an encoded entry point gets distinct 1280x720 JPEG files), "
                         "zero, random, a directory or a JSON file")
    ap.add_argument("--images", type=int, default=16,
                    help="with --input-data scene on an encoded entry point (<model>_encoded): how "
                         "many distinct JPEGs perf_analyzer cycles through (with Triton's response "
                         "cache on, each one is a miss only on its first pass)")
    ap.add_argument("--max-threads", type=int, default=None)
    ap.add_argument("--request-count", type=int, default=50, help="requests per count window")
    ap.add_argument("--stability", type=int, default=10,
                    help="allowed %% variation between windows (raise it on a shared, noisy machine)")
    ap.add_argument("--repository", type=Path, default=contract.MODEL_REPOSITORY,
                    help="where the model's config.pbtxt is read for the estimate")
    ap.add_argument("--estimate-only", action="store_true", help="print the estimate and exit")
    ap.add_argument("--reports", type=Path, default=report.REPORTS_DIR)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args(argv)
    try:
        cap = parse_bytes(a.mem) if a.mem else default_cap()
        require_loopback(a.url)
        model_contract = encoded.load_any(a.model, a.repository)
        load = est.TensorLoad.from_contract(model_contract)
        opts = Options(model=a.model, url=a.url, protocol=a.protocol, batch=a.batch, input_data=a.input_data,
                       extra=variable_shapes(model_contract),
                       concurrency=parse_range(a.concurrency), shared_memory=a.shared_memory,
                       max_threads=a.max_threads, measurement_request_count=a.request_count,
                       stability_percentage=a.stability,
                       metrics_url=a.metrics_url, admin_key=a.admin_key)
        estimate = est.check(load, opts.shape(), cap)
        print(f"pre-flight estimate {estimate.describe()} <= cap {human_bytes(cap)}")
        if a.estimate_only:
            return 0
        out = report.new_dir(f"perf-{a.model}-b{a.batch}", a.reports)
        if a.input_data == "scene":   # every pipeline branch runs (a face, objects, text), not black frames
            # variable dims at the range's max, as --shape says (variable_shapes)
            specs = model_contract.with_variable_dims("max").inputs
            jpegs = any(encoded.takes_files(t) for t in specs)
            path = scene.perf_analyzer_json(specs, out / "input_data.json",
                                            steps=max(a.batch, a.images) if jpegs else a.batch)
            opts = dataclasses.replace(opts, input_data=str(path))
        res = run(opts, load, cap, out, timeout_s=a.timeout)
    except contract.ContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except est.OverCapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (RunFailed, SetupError, UsageError, scene.SceneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = {"tool": "perf_analyzer (tritonclient 2.50.0 wheel)", "model": a.model, "triton": a.url,
            "command": redacted(res.command), "input data": a.input_data,
            "memory cap": res.capped.cap.describe(),
            "pre-flight estimate": res.estimate.describe(),
            "peak RSS of perf_analyzer": human_bytes(res.capped.peak_rss_bytes),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    report.write(out, f"perf_analyzer: {a.model}", res.records, meta)
    print(report.table(res.records))
    print(f"\n{res.capped.cap.describe()}; peak RSS {human_bytes(res.capped.peak_rss_bytes)}")
    print(f"report: {out}/summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
