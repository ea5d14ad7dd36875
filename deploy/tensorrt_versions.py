"""Which TensorRT each part of the GPU image carries, and the build-time assertion they agree.

    python3 -m deploy.tensorrt_versions library   print the libnvinfer version Triton's TensorRT
                                                  backend loads ("10.14.1"): the bindings to install
    python3 -m deploy.tensorrt_versions check     assert: Python bindings == that library ==
                                                  trtexec == the ONNX parser, the plan builder
                                                  supports it, and trtexec finds every library it
                                                  links and the builder's resource library;
                                                  prints the table, exit 1 otherwise

A plan built by the bindings (or trtexec) of one TensorRT and served by the library of
another is refused by Triton at load time, after every replica built it; a trtexec copied
without its libraries fails only when a build first needs it. The image build stops here
instead. Run inside the image (docker/triton.Dockerfile, stage gpu) with the project on
PYTHONPATH and its base dependencies installed.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path

from export.engines.gpu import require_supported_tensorrt, version_from_int

TRITON_TENSORRT_BACKEND = Path("/opt/tritonserver/backends/tensorrt/libtriton_tensorrt.so")
_LDD_LINE = re.compile(r"^\s*(\S+)\s*=>\s*(\S+)\s*\(0x[0-9a-f]+\)", re.MULTILINE)


def parse_ldd(text: str, soname_prefix: str) -> Path | None:
    """The resolved path of the first library whose name starts with `soname_prefix`."""
    for name, path in _LDD_LINE.findall(text):
        if name.startswith(soname_prefix) and path != "not":
            return Path(path)
    return None


def backend_library(name: str = "libnvinfer.so", backend: Path = TRITON_TENSORRT_BACKEND) -> Path:
    """The `name` library Triton's TensorRT backend is linked against, as the loader resolves it."""
    if not backend.is_file():
        raise SystemExit(f"{backend} not found: not an NGC Triton image with the TensorRT backend")
    out = subprocess.run(["ldd", str(backend)], capture_output=True, text=True, timeout=60).stdout
    path = parse_ldd(out, name)
    if path is None:
        raise SystemExit(f"{backend} does not resolve {name}* (ldd):\n{out}")
    return path


def library_version(path: Path | str, symbol: str = "getInferLibVersion") -> str:
    return version_from_int(int(getattr(ctypes.CDLL(str(path)), symbol)()))


def bindings_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return ".".join(tensorrt.__version__.split(".")[:3])


def trtexec_version(exe: str = "trtexec") -> str | None:
    """From the banner trtexec prints first: `&&&& RUNNING TensorRT.trtexec [TensorRT v101401] ...`."""
    try:
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    m = re.search(r"\[TensorRT v(\d+)\]", out.stdout + out.stderr)
    return version_from_int(int(m.group(1))) if m else None


def unresolved(ldd_text: str) -> list[str]:
    """Libraries ldd could not find ("libnvonnxparser.so.10 => not found")."""
    return re.findall(r"^\s*(\S+)\s*=>\s*not found", ldd_text, re.MULTILINE)


def library_problems(exe: str = "trtexec", version: str | None = None) -> list[str]:
    """What trtexec (and the builder) would miss at run time, found now."""
    path = shutil.which(exe)
    if path is None:
        return [f"{exe} is not on PATH"]
    out = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=60).stdout
    bad = [f"{exe} links {lib}, which is not installed (copy it from the TensorRT image)" for lib in unresolved(out)]
    if version:
        try:                           # loaded by libnvinfer at build time, not linked: ldd cannot see it
            ctypes.CDLL(f"libnvinfer_builder_resource.so.{version}")
        except OSError as exc:
            bad.append(f"the TensorRT builder's resource library is missing ({exc}): plans cannot be built")
    return bad


def problems(versions: dict[str, str | None]) -> list[str]:
    """Pure: what is wrong with {part: "major.minor.patch" or None}; empty when all agree."""
    out = [f"{part}: no TensorRT version found" for part, v in versions.items() if not v]
    found = {v for v in versions.values() if v}
    if len(found) > 1:
        out.append("TensorRT versions differ: " + ", ".join(f"{p} {v}" for p, v in versions.items()))
    return out


def collect() -> dict[str, str | None]:
    nvinfer = backend_library("libnvinfer.so")
    return {f"library Triton loads ({nvinfer})": library_version(nvinfer),
            "Python bindings (import tensorrt)": bindings_version(),
            "trtexec": trtexec_version(),
            "ONNX parser (libnvonnxparser)": library_version("libnvonnxparser.so."
                                                             + nvinfer.name.rsplit(".so.", 1)[1].split(".")[0],
                                                             "getNvOnnxParserVersion")}


def main(argv: list[str]) -> int:
    if argv[:1] == ["library"]:
        print(library_version(backend_library("libnvinfer.so")))
        return 0
    if argv[:1] != ["check"]:
        print(__doc__, file=sys.stderr)
        return 2
    versions = collect()
    for part, v in versions.items():
        print(f"  {part:<60} {v or '-'}")
    bad = problems(versions)
    if not bad:
        bad += library_problems(version=next(iter(versions.values())))
    if not bad:
        from export.engines.errors import UnsupportedTensorRT

        try:
            require_supported_tensorrt(next(iter(versions.values())), "this image")
        except UnsupportedTensorRT as exc:
            bad.append(str(exc))
    for b in bad:
        print(f"error: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
