"""Build a plan with the `trtexec` binary, where only it exists (no TensorRT Python API).

The command line is built by a pure function (tested on any machine); running it needs
the binary and a GPU. trtexec loads and saves the timing cache itself; it works on a
private copy which then replaces the shared cache atomically (last writer wins: a lost
update costs re-timing, never a wrong plan).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path

from .errors import BuildFailed, TensorRTUnavailable, UnsupportedTensorRT
from .gpu import require_supported_tensorrt, tensorrt_version, version_from_int
from .lock import place_file, target_lock
from .shapes import trtexec_shapes
from .request import BuildOutput, BuildRequest

_VERSION_RE = re.compile(r"\[TensorRT v(\d+)\]")


def find_trtexec() -> Path | None:
    """$TRTEXEC, then PATH, then the NGC containers' /usr/src/tensorrt/bin."""
    for cand in (os.environ.get("TRTEXEC"), shutil.which("trtexec"), "/usr/src/tensorrt/bin/trtexec"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    return None


def command(exe: Path | str, req: BuildRequest, plan_out: Path, cache_file: Path) -> list[str]:
    """The trtexec argv for `req` (pure)."""
    p = req.shapes
    argv = [str(exe), f"--onnx={req.onnx}", f"--saveEngine={plan_out}",
            f"--minShapes={trtexec_shapes(p, 'min')}", f"--optShapes={trtexec_shapes(p, 'opt')}",
            f"--maxShapes={trtexec_shapes(p, 'max')}",
            f"--memPoolSize=workspace:{req.workspace_mb}M",
            f"--builderOptimizationLevel={req.opt_level}",
            f"--timingCacheFile={cache_file}", f"--device={req.device}",
            "--skipInference",
            # TensorRT 10 runs FP32 convolutions/matmuls as TF32 unless told not to; the layers
            # kept FP32 (and FP32-only models) must compute in FP32.
            "--noTF32"]
    if req.precision.fp16:
        # trtexec applies a named precision only to float layers' compute; marked layers
        # computing in FP32 hand FP32 to their (also marked) consumers.
        argv += ["--fp16", "--precisionConstraints=obey", f"--layerPrecisions={req.fp32_pattern}:fp32"]
    return argv


def parse_version(log_text: str) -> str | None:
    """`&&&& RUNNING TensorRT.trtexec [TensorRT v100300] ...` -> "10.3.0"."""
    m = _VERSION_RE.search(log_text)
    return version_from_int(int(m.group(1))) if m else None


def _refuse_unsupported(proc: subprocess.Popen, version: str, exe: Path) -> None:
    """Stop trtexec as soon as its banner names a TensorRT the recipe cannot drive."""
    try:
        require_supported_tensorrt(version, f"trtexec at {exe}")
    except UnsupportedTensorRT:
        proc.kill()
        proc.wait()
        raise


def build(req: BuildRequest, exe: Path | None = None) -> BuildOutput:
    exe = exe or find_trtexec()
    if exe is None:
        raise TensorRTUnavailable("trtexec not found ($TRTEXEC, PATH, /usr/src/tensorrt/bin) and the TensorRT "
                                  "Python API is not importable: build inside an NGC TensorRT/Triton container "
                                  "(docs/engines.md)")
    with tempfile.TemporaryDirectory(prefix=f"trtexec-{req.model}-") as tmp:
        plan_out, cache = Path(tmp) / "model.plan", Path(tmp) / "timing.cache"
        if req.timing_cache.is_file():
            shutil.copyfile(req.timing_cache, cache)
        argv = command(exe, req, plan_out, cache)
        req.log(f"  {req.model}: {' '.join(argv)}")
        t0 = time.perf_counter()
        tail: deque[str] = deque(maxlen=40)
        banner = None
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                tail.append(line.rstrip())
                if banner is None and (banner := parse_version(line)) is not None:
                    _refuse_unsupported(proc, banner, exe)
                if "[E]" in line or "[W]" in line:
                    req.log(f"  trtexec: {line.rstrip()}")
        if proc.returncode != 0 or not plan_out.is_file():
            raise BuildFailed(f"{req.model}: trtexec exited {proc.returncode}:\n" + "\n".join(tail))
        req.log(f"  {req.model}: engine built in {time.perf_counter() - t0:.1f} s")
        version = banner or tensorrt_version()
        if version is None:
            raise BuildFailed(f"{req.model}: cannot tell which TensorRT version trtexec used (no "
                              "'[TensorRT vNNNNNN]' in its log, no libnvinfer loadable); the sidecar needs it")
        if cache.is_file():
            req.timing_cache.parent.mkdir(parents=True, exist_ok=True)
            with target_lock(req.timing_cache, timeout_s=600):
                place_file(cache, req.timing_cache)
        return BuildOutput(plan_out.read_bytes(), version, "trtexec")
