"""What the CPU profile derives from the machine: usable cores, native bf16, runtime choice.

Pure and cheap (no openvino/onnxruntime import unless asked): serving/profiles.py
resolves the settings once at derive time and writes them into each network model's
config parameters, where the runner (pipelines/onnx_model.py) reads them
and `GET /v1/models` on the gateway shows them.

Usable cores = the CPUs this process may run on (sched_getaffinity) capped by the
cgroup CPU quota (a container with `cpus: 2` on a 64-core host gets 2, not 64).
Native bf16 = the CPU executes bf16 matmuls itself (avx512_bf16 or AMX); elsewhere a
bf16 request would be emulated or ignored, so "auto" means f32 there.
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

RUNTIMES = ("openvino", "onnxruntime")
PRECISIONS = ("auto", "bf16", "f32")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ENV_RUNTIME = "VISIONSERVE_CPU_RUNTIME"
ENV_PRECISION = "VISIONSERVE_CPU_PRECISION"
ENV_THREADS = "VISIONSERVE_CPU_THREADS"


class CpuSettingsError(ValueError):
    """A CPU runtime setting the user gave cannot be honoured (unknown name, bad number)."""


# -- the machine ---------------------------------------------------------------------------------
def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 cpu.max or v1 cfs quota/period), None = no quota."""
    v2 = root / "cpu.max"
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        q, p = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota, period = int(q.read_text()), int(p.read_text())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
    return None


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    return bool((cpu_flags() if flags is None else flags) & BF16_FLAGS)


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


# -- the settings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuSettings:
    """What the user asked for (CLI flags / env vars of `python -m serving`)."""
    runtime: str = "openvino"          # preferred runtime; onnxruntime is always the fallback
    precision: str = "auto"            # auto = bf16 where the CPU has it natively, else f32
    threads: int | None = None         # per model instance; None = every usable core
    slots: int | None = None           # executions at once across models; None = 2 x cores // threads, 0 = no limit

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise CpuSettingsError(f"unknown CPU runtime {self.runtime!r}; known: {', '.join(RUNTIMES)}")
        if self.precision not in PRECISIONS:
            raise CpuSettingsError(f"unknown CPU precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if self.threads is not None and self.threads < 1:
            raise CpuSettingsError(f"CPU threads must be >= 1, got {self.threads}")
        if self.slots is not None and self.slots < 0:
            raise CpuSettingsError(f"CPU slots must be >= 0 (0 = no limit), got {self.slots}")

    @classmethod
    def from_env(cls, env=None) -> "CpuSettings":
        env = os.environ if env is None else env
        threads = env.get(ENV_THREADS) or None
        try:
            n = int(threads) if threads else None
        except ValueError:
            raise CpuSettingsError(f"{ENV_THREADS}={threads!r} is not a number") from None
        return cls(env.get(ENV_RUNTIME) or cls.runtime, env.get(ENV_PRECISION) or cls.precision, n)

    def resolve(self, cores: int | None = None, bf16: bool | None = None,
                have_openvino: bool | None = None) -> "ResolvedCpu":
        cores = usable_cores() if cores is None else cores
        bf16 = native_bf16() if bf16 is None else bf16
        have_openvino = openvino_available() if have_openvino is None else have_openvino
        notes = []
        runtime = self.runtime
        if runtime == "openvino" and not have_openvino:
            runtime = "onnxruntime"
            notes.append("openvino is not installed: ONNX Runtime instead")
        if self.precision == "auto":
            # ONNX Runtime's CPU provider has no bf16 execution for these graphs: f32 there.
            precision = "bf16" if bf16 and runtime == "openvino" else "f32"
        elif self.precision == "bf16" and runtime != "openvino":
            raise CpuSettingsError("bf16 needs the openvino runtime (ONNX Runtime's CPU provider runs f32)")
        elif self.precision == "bf16" and not bf16:
            raise CpuSettingsError("this CPU has no native bf16 (avx512_bf16 / amx_bf16): use --cpu-precision "
                                   "f32 or auto")
        else:
            precision = self.precision
        threads = self.threads or cores
        # two executions per set of cores: the second fills the first's serial gaps (faces at
        # c=8: 5.4 img/s without a limit vs 3.4 with one slot), without the 4-5x
        # oversubscription of analyze's concurrent steps (bench-cpu, docs/perf.md)
        slots = 2 * max(1, cores // threads) if self.slots is None else self.slots
        return ResolvedCpu(runtime, precision, threads, cores, tuple(notes), slots=slots,
                           threads_fixed=self.threads is not None, precision_fixed=self.precision != "auto")


@dataclass(frozen=True)
class ResolvedCpu:
    """The settings written into each derived CPU config (and shown by /v1/models)."""
    runtime: str
    precision: str
    threads: int
    cores: int
    notes: tuple[str, ...] = ()
    slots: int = 0                     # graph executions at once across the server's models; 0 = no limit
    threads_fixed: bool = False        # the user chose the thread count (else: every usable core)
    precision_fixed: bool = False      # the user chose the precision (else: auto)

    def parameters(self) -> dict[str, str]:
        return {"cpu_runtime": self.runtime, "cpu_precision": self.precision,
                "cpu_threads": str(self.threads), "cpu_slots": str(self.slots), "cpu_fallback": "onnxruntime"}

    def with_runtime(self, runtime: str, precision: str = "f32") -> "ResolvedCpu":
        return replace(self, runtime=runtime, precision=precision)

    def describe(self) -> str:
        slots = f"{self.slots} at a time" if self.slots else "no execution limit"
        return (f"{self.runtime} {self.precision}, {self.threads} threads per model, {slots} "
                f"({self.cores} usable cores)")


def add_arguments(parser) -> None:
    """`--cpu-runtime/--cpu-precision/--cpu-threads` (defaults from the VISIONSERVE_CPU_* env)."""
    env = CpuSettings.from_env()
    parser.add_argument("--cpu-runtime", choices=RUNTIMES, default=env.runtime,
                        help=f"cpu/openvino profiles: runtime of every network model (env {ENV_RUNTIME}; "
                             "ONNX Runtime is the fallback when OpenVINO is absent or cannot compile a graph)")
    parser.add_argument("--cpu-precision", choices=PRECISIONS, default=env.precision,
                        help=f"auto = bf16 where the CPU has it natively (OpenVINO), else f32 (env {ENV_PRECISION})")
    parser.add_argument("--cpu-threads", type=int, default=env.threads,
                        help=f"threads per model (default: every usable core; env {ENV_THREADS})")
    parser.add_argument("--cpu-slots", type=int, default=None,
                        help="graph executions at once across all models (default 2 x cores // threads; 0 = no limit)")


def from_args(args) -> CpuSettings:
    return CpuSettings(args.cpu_runtime, args.cpu_precision, args.cpu_threads, args.cpu_slots)
