"""Entrypoint of the GPU Triton image: build or reuse the TensorRT plans for this GPU, then serve.

    triton_entrypoint.py build     build/reuse the plans, then exit (a Kubernetes init container)
    triton_entrypoint.py serve     build/reuse, then exec tritonserver on the served repository
    triton_entrypoint.py key       print the cache key of this host (sm90-trt10.5.0) and exit

The image holds the production repository read-only (`/opt/visionserve/model_repository`:
configs, ONNX, python models). Plans belong to one GPU kind and one TensorRT version, so
they live on a volume (`VISIONSERVE_ENGINE_CACHE`, default /var/cache/visionserve), in a
served repository keyed by both:

    <cache>/sm90-trt10.5.0/repository/<model>/config.pbtxt      copied from the image
    <cache>/sm90-trt10.5.0/repository/<model>/1/model.onnx      symlink into the image
    <cache>/sm90-trt10.5.0/repository/<model>/1/model.plan      built here (export.engines)
    <cache>/sm90-trt10.5.0/timing-cache/                         TensorRT timing cache

Several replicas (pods on one shared volume, or several GPUs of one host) may start at
once: the repository is assembled under a lock and every plan has its own build lock
(export/engines/lock.py), so the first builds and the others wait, then reuse. A node
with another GPU kind, or a new image with another TensorRT, gets its own folder.

tritonserver is started with the hardened flags of the embedded default
(serving/tritonserver.py: `--model-control-mode=none`, strict readiness, the
model-repository and shared-memory APIs behind the `admin-key` header) but bound to
0.0.0.0: inside a container the network policy, not the bind address, keeps it private.
Environment: VISIONSERVE_TRITON_ADMIN_KEY (else a random key per start),
VISIONSERVE_ENGINE_ARGS (extra `python -m export.engines` flags, e.g. "--max-batch 8"),
VISIONSERVE_TRITON_ARGS (extra tritonserver flags).
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

PROJECT = Path(os.environ.get("VISIONSERVE_HOME", "/opt/visionserve"))
TRITON_HOME = Path(os.environ.get("TRITON_HOME", "/opt/tritonserver"))
DEFAULT_CACHE = Path(os.environ.get("VISIONSERVE_ENGINE_CACHE", "/var/cache/visionserve"))
# Files of a version folder that are built here, never linked from the image.
BUILT_SUFFIXES = (".plan", ".plan.json", ".lock", ".tmp")

log = logging.getLogger("visionserve.entrypoint")


class EntrypointError(RuntimeError):
    """A start-up condition the operator must fix (no GPU, no TensorRT, bad volume): exit 2."""


def cache_key(sm: str, trt_version: str | None) -> str:
    """Folder name for one GPU kind and TensorRT version: "sm90-trt10.5.0"."""
    if not trt_version:
        raise EntrypointError("cannot tell the TensorRT version of this image (no `tensorrt` module and no "
                              "libnvinfer found): the Triton image must carry TensorRT")
    return f"{sm}-trt{trt_version}"


def _is_built(name: str) -> bool:
    return name.startswith(".") or name.endswith(BUILT_SUFFIXES)


def _replace_symlink(target: Path, link: Path) -> None:
    """Atomically point `link` at `target` (readers never see it missing)."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _replace_copy(src: Path, dest: Path) -> None:
    if dest.is_file() and not dest.is_symlink() and dest.read_bytes() == src.read_bytes():
        return
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def assemble(source: Path, dest: Path) -> list[str]:
    """Make `dest` a served repository over `source`; returns the model names.

    Configs are copied (Triton reads them, a later image may change them); every other file
    of a version folder is a symlink into the image, so big ONNX files are not duplicated.
    Plans and sidecars already in `dest` are kept (export.engines judges their staleness);
    links to files the image no longer has, and models it no longer has, are removed.
    Idempotent; callers hold a lock so concurrent starts do not interleave.
    """
    source, dest = Path(source), Path(dest)
    models = sorted(p.parent.name for p in source.glob("*/config.pbtxt"))
    if not models:
        raise EntrypointError(f"{source} holds no model (no */config.pbtxt): wrong VISIONSERVE_HOME?")
    dest.mkdir(parents=True, exist_ok=True)
    for stale in sorted(p for p in dest.iterdir() if p.is_dir() and p.name not in models):
        shutil.rmtree(stale)
    for model in models:
        src_dir, dst_dir = source / model, dest / model
        dst_dir.mkdir(exist_ok=True)
        _replace_copy(src_dir / "config.pbtxt", dst_dir / "config.pbtxt")
        for src_version in sorted(p for p in src_dir.iterdir() if p.is_dir()):
            dst_version = dst_dir / src_version.name
            dst_version.mkdir(exist_ok=True)
            wanted = {f.name for f in src_version.iterdir() if not _is_built(f.name)}
            for name in sorted(wanted):
                _replace_symlink((src_version / name).resolve(), dst_version / name)
            for old in dst_version.iterdir():
                if old.is_symlink() and old.name not in wanted:
                    old.unlink()
    return models


def prepare(cache: Path, source: Path, engine_args: list[str]) -> Path:
    """Assemble the served repository for this GPU and build/reuse its plans; returns it."""
    from export.engines import EngineError, current_gpu, tensorrt_version
    from export.engines.__main__ import main as engines_main
    from export.engines.lock import target_lock

    try:
        gpu = current_gpu()
    except EngineError as exc:
        raise EntrypointError(f"{exc}. The GPU image needs a GPU (docker: --gpus / compose `devices`; "
                              "Kubernetes: a nvidia.com/gpu limit); the cpu image serves without one") from exc
    key = cache_key(gpu.sm, tensorrt_version())
    root = Path(cache) / key
    repo = root / "repository"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EntrypointError(f"engine cache {cache} is not writable ({exc}): mount a volume there "
                              "writable by this user (uid 1000 in the image)") from exc
    log.info("GPU %s (compute capability %s); served repository %s", gpu.name, gpu.compute_capability, repo)
    with target_lock(repo, on_wait=log.info):
        models = assemble(source, repo)
    log.info("%d models; building or reusing TensorRT plans", len(models))
    code = engines_main(["--repository", str(repo), "--timing-cache-dir", str(root / "timing-cache"), *engine_args])
    if code != 0:
        raise EntrypointError(f"building the TensorRT plans failed (exit {code}); see the messages above")
    return repo


def triton_command(repository: Path, admin_key: str | None, extra: list[str]) -> list[str]:
    """The NGC tritonserver with the embedded default's hardened flags, bound to 0.0.0.0."""
    from serving.tritonserver import TritonInstall, TritonServer

    install = TritonInstall(binary=TRITON_HOME / "bin" / "tritonserver", libs=TRITON_HOME / "lib",
                            python_backend=TRITON_HOME / "backends" / "python",
                            stub=TRITON_HOME / "backends" / "python" / "triton_python_backend_stub")
    server = TritonServer(repository, host="0.0.0.0", admin_key=admin_key,
                          backends_dir=TRITON_HOME / "backends", extra_args=tuple(extra))
    return server.command(install)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="triton_entrypoint", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("build", "serve", "key"), nargs="?", default="serve")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="engine cache volume")
    p.add_argument("--source", type=Path, default=PROJECT / "model_repository", help="repository in the image")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s entrypoint %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        if args.mode == "key":
            from export.engines import current_gpu, tensorrt_version

            print(cache_key(current_gpu().sm, tensorrt_version()))
            return 0
        repo = prepare(args.cache, args.source, shlex.split(os.environ.get("VISIONSERVE_ENGINE_ARGS", "")))
        if args.mode == "build":
            return 0
        cmd = triton_command(repo, os.environ.get("VISIONSERVE_TRITON_ADMIN_KEY"),
                             shlex.split(os.environ.get("VISIONSERVE_TRITON_ARGS", "")))
    except EntrypointError as exc:
        log.error("%s", exc)
        return 2
    log.info("exec %s", " ".join(c if "admin-key=" not in c else c.split("admin-key=")[0] + "admin-key=***"
                                  for c in cmd))
    sys.stdout.flush()
    # exec: tritonserver replaces this process (PID 1 in the container) and gets SIGTERM itself.
    os.execv(cmd[0], cmd)
    return 0   # not reached


if __name__ == "__main__":
    sys.exit(main())
