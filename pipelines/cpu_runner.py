"""One ONNX graph on the CPU: OpenVINO (f32 or bf16) or ONNX Runtime, behind one small seam.

Used by the python-backend runner (pipelines/onnx_model.py), by `make
bench-cpu` (bare runtime figures) and by the bf16 parity tests, so all three run the
graph exactly the same way.

    runner = open_runner(path, ["boxes", "scores"], runtime="openvino", precision="bf16", threads=2)
    boxes, scores = runner.run({"images": batch})
    runner.description   # "openvino 2026.4.1 bf16, 2 threads" (or "onnxruntime ... (fallback: ...)")

OpenVINO reads the exported ONNX as it is (uint8 NHWC input, dynamic batch, TopK, NMS).
If it is not installed or cannot compile a graph, ONNX Runtime runs it instead and the
description says why: the caller logs it. Thread pools never spin while idle (several
model processes share the cores; a spinning pool steals them from the busy one):
ONNX Runtime's `allow_spinning` is off, OpenVINO runs one stream with the LATENCY hint
and no core pinning.
"""
from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger("visionserve.cpu")


class RunnerError(RuntimeError):
    """Neither runtime could load the graph."""


@dataclass
class Runner:
    runtime: str                      # "openvino" or "onnxruntime": what actually runs
    precision: str                    # "bf16" or "f32": what actually runs
    threads: int
    outputs: tuple[str, ...]
    _run: Callable[[dict], list]
    version: str = ""
    fallback_reason: str = ""         # why the preferred runtime is not the one running
    extra: dict = field(default_factory=dict)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._run(feed)

    @property
    def description(self) -> str:
        s = f"{self.runtime} {self.version} {self.precision}, {self.threads} threads".replace("  ", " ")
        return s + (f" (fallback: {self.fallback_reason})" if self.fallback_reason else "")


class GraphMismatch(RunnerError):
    """The graph lacks tensors the config names (a stale export): no runtime can serve it."""


def open_runner(path: Path | str, outputs: Sequence[str], runtime: str = "openvino", precision: str = "f32",
                threads: int = 1, cache_dir: Path | str | None = None, inputs: Sequence[str] = ()) -> Runner:
    """The preferred runtime, else ONNX Runtime f32 (with the reason recorded).

    `inputs`/`outputs`: the config's tensor names; a graph lacking any is a GraphMismatch."""
    path, outputs, inputs = Path(path), tuple(outputs), tuple(inputs)
    if not path.is_file():
        raise RunnerError(f"{path} does not exist")
    if runtime == "openvino":
        try:
            return _openvino(path, inputs, outputs, precision, threads, cache_dir)
        except GraphMismatch:
            raise
        except ImportError as exc:
            reason = f"openvino is not installed ({exc})"
        except Exception as exc:  # noqa: BLE001 - any OpenVINO read/compile failure falls back
            reason = f"OpenVINO could not load {path.name}: {type(exc).__name__}: {str(exc)[:300]}"
        log.warning("%s: %s; running ONNX Runtime f32 instead", path, reason)
        r = _onnxruntime(path, inputs, outputs, threads)
        r.fallback_reason = reason
        return r
    if runtime != "onnxruntime":
        raise RunnerError(f"unknown CPU runtime {runtime!r}")
    if precision != "f32":
        raise RunnerError(f"ONNX Runtime runs these graphs in f32 only, not {precision}")
    return _onnxruntime(path, inputs, outputs, threads)


def _check_names(path: Path, have_in: set, have_out: set, inputs: tuple, outputs: tuple) -> None:
    missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
    if missing:
        raise GraphMismatch(f"{path} lacks the config's tensors {missing}; graph has inputs {sorted(have_in)} "
                            f"outputs {sorted(have_out)}")


def _onnxruntime(path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...], threads: int) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle workers sleep instead of spinning: other model processes need the cores
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
        raise RunnerError(f"ONNX Runtime could not load {path}: {exc}") from exc
    _check_names(path, {i.name for i in session.get_inputs()}, {o.name for o in session.get_outputs()},
                 inputs, outputs)
    names = list(outputs)
    return Runner("onnxruntime", "f32", threads, outputs, lambda feed: session.run(names, feed),
                  ort.__version__, extra={"session": session})


def _openvino(path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...], precision: str, threads: int,
              cache_dir) -> Runner:
    import openvino as ov

    core = ov.Core()
    if cache_dir:
        core.set_property({"CACHE_DIR": str(cache_dir)})
    model = core.read_model(str(path))
    _check_names(path, {n for p in model.inputs for n in p.get_names()},
                 {n for p in model.outputs for n in p.get_names()}, inputs, outputs)
    config = {
        "PERFORMANCE_HINT": "LATENCY",            # one stream: batches come from Triton's batcher
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(threads),
        "INFERENCE_PRECISION_HINT": precision,
        "ENABLE_CPU_PINNING": "NO",               # several processes share the cores
    }
    compiled = core.compile_model(model, "CPU", config)
    got = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if precision == "bf16" and not ("bf16" in got or "bfloat16" in got):
        raise RunnerError(f"OpenVINO compiled {path.name} as {got}, not bf16 (this CPU lacks native bf16)")
    ports = [compiled.output(n) for n in outputs]
    request = compiled.create_infer_request()

    def run(feed: dict) -> list:
        result = request.infer(feed)
        # copies: the request's buffers are reused by the next call
        return [np.array(result[p]) for p in ports]

    return Runner("openvino", precision, threads, outputs, run, ov.get_version().split("-")[0],
                  extra={"compiled": compiled})


class ExecutionSlots:
    """At most `permits` graph executions at a time across every model process of one server.

    Each model's pool has every usable core, so a single busy route uses the whole machine;
    when a pipeline runs several steps at once (analyze: yolo, faces, ocr, mobileclip),
    at most `permits` of them run (2 with the default: one fills the other's serial gaps)
    instead of 4 x cores threads on the cores. Lock files in the served repository (`folder`),
    flock'ed: released by the kernel if a process dies, nothing to clean up."""

    def __init__(self, folder: Path | str, permits: int):
        self.permits = max(1, int(permits))
        self._fds = [os.open(str(Path(folder) / f".cpu-slot-{i}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
                     for i in range(self.permits)]

    def __enter__(self):
        for fd in self._fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._held = fd
                return self
            except BlockingIOError:
                continue
        self._held = self._fds[os.getpid() % self.permits]
        fcntl.flock(self._held, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._held, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
