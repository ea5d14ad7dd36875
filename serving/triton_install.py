"""Where the embedded tritonserver lives: the paths inside the installed nvidia-pytriton
wheel (binary, libraries, python backend, one stub per Python version, cache
implementations), and a writable backend folder made from them for this Python."""
from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from contract import REPO_ROOT

BACKENDS_DIR = REPO_ROOT / "build" / "triton-backends"


class TritonServerError(RuntimeError):
    """tritonserver is missing, failed to start, or did not become ready in time."""


@dataclass(frozen=True)
class TritonInstall:
    """Paths inside the installed nvidia-pytriton wheel."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path
    caches: Path | None = None     # cache implementations (caches/local/libtritoncache_local.so)

    @classmethod
    def locate(cls, site_packages: Path | None = None) -> "TritonInstall":
        sp = Path(site_packages or sysconfig.get_paths()["purelib"])
        root = sp / "pytriton" / "tritonserver"
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        inst = cls(binary=root / "bin" / "tritonserver",
                   libs=sp / "nvidia_pytriton.libs",
                   python_backend=root / "backends" / "python",
                   stub=root / "python_backend_stubs" / py / "triton_python_backend_stub",
                   caches=root / "caches")
        missing = [p for p in (inst.binary, inst.libs, inst.python_backend, inst.stub) if not p.exists()]
        if missing:
            raise TritonServerError(
                "the embedded tritonserver is not installed (missing: "
                + ", ".join(map(str, missing))
                + "). Install it with `make setup` or `pip install 'nvidia-pytriton==0.7.0'`"
                + f" (it ships python-backend stubs for Python 3.8-3.13; this is {py}).")
        return inst

    def backend_dir(self, dest: Path = BACKENDS_DIR) -> Path:
        """A writable backend folder: python backend + the stub for this Python."""
        py_dir = Path(dest) / "python"
        stamp = py_dir / ".source"
        source = f"{self.python_backend}|{self.stub}|{self.stub.stat().st_mtime_ns}"
        if stamp.is_file() and stamp.read_text() == source:
            return Path(dest)
        # Several servers (tests, benches) may start at once: build aside, then rename.
        tmp = Path(dest) / f".python.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.python_backend, tmp, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(self.stub, tmp / "triton_python_backend_stub")
        (tmp / ".source").write_text(source)
        if py_dir.exists():   # stale (another wheel): move it away, running servers keep their files
            try:
                py_dir.rename(Path(dest) / f".python.old-{os.getpid()}")
            except OSError:
                pass
        try:
            tmp.rename(py_dir)
        except OSError:       # someone else just placed it
            shutil.rmtree(tmp, ignore_errors=True)
        return Path(dest)
