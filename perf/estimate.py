"""Pre-flight estimate of perf_analyzer's client memory, and what would fit a cap.

perf_analyzer's allocation pattern (why it reached 437 GB on SCRFD in the field):
- without shared memory, input buffers are prepared per worker thread x data stream x
  step, each for the whole batch;
- every in-flight request serialises a full copy of its inputs (the protobuf request
  plus gRPC's send buffer: two copies), and every in-flight response holds its outputs
  twice likewise (wire buffer + the deserialised result);
- with `--shared-memory=system`, inputs live once per stream x step in a shared region
  and outputs in one region per output x batch per concurrent context, no serialised
  tensor copies; with `cuda` those regions live on the GPU and the host keeps only the
  data loader's copy.
The numbers are deliberately an upper bound: refusing a run that would have fit costs a
flag; starting one that eats the machine costs the machine.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import OverCapError, UsageError
from .units import human_bytes

# The binary, gRPC, cudart, bookkeeping. Measured peak RSS: 30 MiB on 96 KiB requests but
# 229 MiB on clip_resize (2.4 MiB requests, concurrency 4), above the per-request terms:
# gRPC keeps buffers the copy model does not see, so the base is generous.
BASE_BYTES = 320 << 20
SERIALISED_COPIES = 2
DEFAULT_MAX_THREADS = 16        # perf_analyzer's default in concurrency mode
SHM_MODES = ("none", "system", "cuda")


@dataclass(frozen=True)
class TensorLoad:
    """Bytes of one batch item of each input and output tensor."""
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    @classmethod
    def from_contract(cls, contract, string_length: int = 128) -> "TensorLoad":
        contract = contract.with_variable_dims("max")   # variable dims: the heaviest request
        def nbytes(spec):
            if spec.triton_dtype == "BYTES":  # 4-byte length prefix + the string, per element
                n = 1
                for d in spec.dims:
                    n *= max(d, 1)
                return n * (4 + string_length)
            return spec.nbytes_per_item
        return cls(tuple(nbytes(s) for s in contract.inputs), tuple(nbytes(s) for s in contract.outputs))


@dataclass(frozen=True)
class LoadShape:
    batch: int = 1
    concurrency: int = 1                 # the END of the concurrency range: the peak
    max_threads: int = DEFAULT_MAX_THREADS
    streams: int = 1
    steps: int = 1                       # data steps (e.g. images in --input-data dir)
    shared_memory: str = "none"

    def __post_init__(self):
        if self.shared_memory not in SHM_MODES:
            raise UsageError(f"shared memory must be one of {SHM_MODES}, not {self.shared_memory!r}")
        if min(self.batch, self.concurrency, self.max_threads, self.streams, self.steps) < 1:
            raise UsageError(f"batch, concurrency, threads, streams and steps must be >= 1: {self}")

    @property
    def threads(self) -> int:
        return min(self.max_threads, self.concurrency)


@dataclass(frozen=True)
class Estimate:
    total: int
    parts: dict = field(default_factory=dict)   # name -> bytes
    shape: LoadShape = LoadShape()

    def describe(self) -> str:
        parts = ", ".join(f"{k} {human_bytes(v)}" for k, v in self.parts.items())
        return f"{human_bytes(self.total)} ({parts})"


def estimate(load: TensorLoad, shape: LoadShape) -> Estimate:
    per_req_in = shape.batch * sum(load.inputs)
    per_req_out = shape.batch * sum(load.outputs)
    data = shape.streams * shape.steps * per_req_in
    if shape.shared_memory == "none":
        parts = {
            "prepared inputs": shape.threads * data,
            "in-flight requests": shape.concurrency * SERIALISED_COPIES * per_req_in,
            "in-flight responses": shape.concurrency * SERIALISED_COPIES * per_req_out,
        }
    elif shape.shared_memory == "system":
        parts = {"input regions": data, "output regions": shape.concurrency * per_req_out}
    else:  # cuda: regions on the device; the host keeps the loader's data once
        parts = {"host data": data}
    parts = {"base": BASE_BYTES, **parts}
    return Estimate(sum(parts.values()), parts, shape)


def suggestions(load: TensorLoad, shape: LoadShape, cap: int) -> tuple[str, ...]:
    """Flag sets that fit under `cap`, most faithful to the request first."""
    out: list[str] = []
    for shm in ("system", "cuda"):
        if shm != shape.shared_memory and SHM_MODES.index(shm) > SHM_MODES.index(shape.shared_memory):
            if estimate(load, replace(shape, shared_memory=shm)).total <= cap:
                out.append(f"--shared-memory={shm} --output-shared-memory-size="
                           f"{max(load.outputs, default=0) * shape.batch}"
                           + ("  (needs a GPU and CUDA IPC)" if shm == "cuda" else ""))
    best_c = _largest(lambda c: estimate(load, replace(shape, concurrency=c)).total <= cap, shape.concurrency)
    if best_c:
        out.append(f"--concurrency-range 1:{best_c}  (at batch {shape.batch})")
    best_b = _largest(lambda b: estimate(load, replace(shape, batch=b)).total <= cap, shape.batch)
    if best_b:
        out.append(f"-b {best_b}  (at concurrency {shape.concurrency})")
    if shape.steps > 1 and estimate(load, replace(shape, steps=1)).total <= cap:
        out.append("--input-data zero  (one data step instead of a directory/JSON of many)")
    if shape.threads > 1 and estimate(load, replace(shape, max_threads=1)).total <= cap:
        best_t = _largest(lambda t: estimate(load, replace(shape, max_threads=t)).total <= cap, shape.threads)
        out.append(f"--max-threads {best_t}")
    # Not a memory bound per request, but bounds how many latency records pile up.
    out.append("--measurement-mode count_windows --measurement-request-count 50")
    return tuple(out)


def _largest(fits, upper: int) -> int | None:
    """Largest n in [1, upper) with fits(n) (monotone), or None."""
    lo, hi = 0, upper - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo if lo >= 1 and fits(lo) else None


def check(load: TensorLoad, shape: LoadShape, cap: int, what: str = "perf_analyzer") -> Estimate:
    """The estimate if it fits under `cap`; otherwise OverCapError with what would fit."""
    est = estimate(load, shape)
    if est.total <= cap:
        return est
    fits = suggestions(load, shape, cap)
    lines = "\n".join(f"  {s}" for s in fits)
    raise OverCapError(
        f"refusing to start {what}: estimated client memory {est.describe()} exceeds the cap "
        f"{human_bytes(cap)} (batch {shape.batch}, concurrency {shape.concurrency}, threads "
        f"{shape.threads}, shared memory {shape.shared_memory}).\nFlags that would fit:\n{lines}\n"
        f"or raise the cap with MEM=... if the machine really has it.", est, fits)
