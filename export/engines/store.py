"""Content-keyed, immutable TensorRT plans on a shared volume (the GPU image's plan store).

A plan is a function of its ONNX, the build recipe (profile, precision rule, TF32 off,
workspace, optimisation level), the TensorRT version and the exact GPU. The store files
every plan under a key of all of these and never changes a published key:

    <root>/plans/<gpu>/<model>/<trt>-<digest>/model.plan        read-only once published
    <root>/plans/<gpu>/<model>/<trt>-<digest>/model.plan.json   its sidecar (plan_key = the folder)
    <root>/plans/<gpu>/<model>/.<trt>-<digest>.lock             build lock of that key (flock)
    <root>/plans/<gpu>/<model>/.partial-<trt>-<digest>+<host>+<pid>/   a build in progress
    <root>/uses/<gpu>/<model>/<trt>-<digest>                     mtime = last time an image used it
    <root>/images/<gpu>/<image digest>.json                      the keys an image (by reference) uses
    <root>/timing-cache/<gpu>/                                   TensorRT timing caches

`<gpu>` is the GPU's name and compute capability ("nvidia-a100-sxm4-80gb-sm80"): an A30
and an A100 (both 8.0) get their own plans, as TensorRT asks. Two image versions, or an
image and its rollback, find their own keys side by side; nothing is rebuilt in place or
deleted while serving. A build happens under the key's lock into a private folder that
is renamed into place only once plan, sidecar and parity are done, so a reader sees a
whole key or none, and a builder that crashed leaves only a `.partial-*` folder (cleaned
by the next builder of that key, or by `gc`). `gc(keep=N)` keeps the N most recently
used keys per GPU kind and model, and every key of the images it is told are still
deployed (their key lists are recorded when a builder names its image).

A model whose parity check is waived (`waive_parity`) gets a key of its own (the waiver
is part of the key material): an unchecked plan is never found by an image that asks
for a checked one, and its sidecar says it was waived.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from export.base import sha256_file

from . import build as build_mod
from .errors import EngineError
from .gpu import GpuInfo
from .lock import Deadline, lock_path, target_lock
from .metadata import DEFAULT_PLAN, read_sidecar, sidecar_path, write_sidecar

KEY_SCHEMA = 1
STORE_LOCK_TARGET = "store"         # lock file <root>/.store.lock: shared by users, exclusive for gc
_READ_ONLY_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_READ_ONLY_DIR = _READ_ONLY_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def gpu_slug(gpu: GpuInfo) -> str:
    """"NVIDIA H100 80GB HBM3", 9.0 -> "nvidia-h100-80gb-hbm3-sm90" (a folder name)."""
    name = re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-") or "gpu"
    return f"{name}-{gpu.sm}"


def key_material(onnx_sha256: str, build_flags: dict, tensorrt_version: str, gpu: GpuInfo,
                 parity_waived: bool = False) -> dict:
    """Everything a plan depends on; its hash is the key."""
    material = {"schema": KEY_SCHEMA, "onnx_sha256": onnx_sha256, "build_flags": build_flags,
                "tensorrt_version": tensorrt_version, "gpu_name": gpu.name,
                "compute_capability": gpu.compute_capability}
    if parity_waived:                  # only then: the keys of checked plans stay what they were
        material["parity"] = "waived"
    return material


@dataclass(frozen=True)
class PlanKey:
    model: str
    gpu: str                        # gpu_slug()
    tensorrt_version: str
    digest: str                     # sha256 of the canonical key material

    @property
    def name(self) -> str:
        return f"trt{self.tensorrt_version}-{self.digest[:20]}"

    def __str__(self) -> str:
        return f"{self.gpu}/{self.model}/{self.name}"


def plan_key(model: str, onnx_sha256: str, build_flags: dict, tensorrt_version: str, gpu: GpuInfo,
             parity_waived: bool = False) -> PlanKey:
    material = key_material(onnx_sha256, build_flags, tensorrt_version, gpu, parity_waived)
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return PlanKey(model, gpu_slug(gpu), tensorrt_version, digest)


@dataclass(frozen=True)
class Stored:
    key: PlanKey
    plan: Path                      # <key folder>/model.plan
    status: str                     # "reused" | "built" | "built meanwhile"
    version: str = "1"              # the model's version folder the plan serves
    seconds: float = 0.0
    parity: str = ""
    parity_waived: bool = False


Log = Callable[[str], None]
WAIVED = ("WAIVED: not checked against ONNX Runtime (VISIONSERVE_PARITY_WAIVE); its outputs may differ "
          "from the reference by any amount")


class PlanMissing(EngineError):
    """`ensure(build=False)` found no published plan for the key (the message names it)."""

    def __init__(self, message: str, key: PlanKey):
        super().__init__(message)
        self.key = key


class PlanStore:
    """The plan store rooted at `root` (a volume shared by builders and servers)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- where things are ------------------------------------------------------------------
    def key_dir(self, key: PlanKey) -> Path:
        return self.root / "plans" / key.gpu / key.model / key.name

    def use_marker(self, key: PlanKey) -> Path:
        return self.root / "uses" / key.gpu / key.model / key.name

    def timing_cache_dir(self, gpu: GpuInfo) -> Path:
        return self.root / "timing-cache" / gpu_slug(gpu)

    def published(self, key: PlanKey) -> Path | None:
        """The key's plan when it is published whole (plan + sidecar naming this key), else None."""
        d = self.key_dir(key)
        plan = d / DEFAULT_PLAN
        sc = read_sidecar(plan) if plan.is_file() else None
        return plan if sc is not None and sc.plan_key == key.name else None

    # -- building ----------------------------------------------------------------------------
    def key_of(self, model: str, gpu: GpuInfo, tensorrt_version: str, opts: build_mod.Options,
               waive_parity: bool = False) -> tuple[PlanKey, "build_mod.Plan"]:
        """This image's key for `model` on `gpu` (cheap: hashes, no TensorRT)."""
        p = build_mod.prepare(model, gpu, opts)
        return plan_key(model, p.onnx_sha256, p.flags, tensorrt_version, gpu, waive_parity), p

    def ensure(self, model: str, gpu: GpuInfo, tensorrt_version: str, opts: build_mod.Options, *,
               builder: build_mod.Builder, candidate: build_mod.Candidate | None, log: Log,
               deadline: Deadline | None = None, build: bool = True, waive_parity: bool = False) -> Stored:
        """The published plan of `model` for this image, GPU and TensorRT; builds it when
        missing (unless `build` is False: then a missing key is PlanMissing). `waive_parity`
        builds without the parity check, under a key of its own, recorded in the sidecar."""
        key, p = self.key_of(model, gpu, tensorrt_version, opts, waive_parity)
        version = p.onnx.parent.name
        plan = self.published(key)
        if plan is not None:
            return Stored(key, plan, "reused", version, parity_waived=waive_parity)
        if not build:
            raise PlanMissing(f"{model}: no plan {key} in the plan store {self.root}: nothing built it for "
                              f"this image on {gpu.name} (TensorRT {tensorrt_version}); build it with the plan-build Job "
                              "of this GPU kind (or the image's `build` mode) before serving", key)
        if waive_parity:
            opts = replace(opts, parity=False)
            log(f"  {model}: parity check {WAIVED}")
        d = self.key_dir(key)
        d.parent.mkdir(parents=True, exist_ok=True)
        with target_lock(d, on_wait=log, deadline=deadline):
            plan = self.published(key)
            if plan is not None:
                log(f"  {model}: {key} built meanwhile by another builder")
                return Stored(key, plan, "built meanwhile", version)
            self._remove_partials(d)             # we hold the key's lock: any partial is a dead builder's
            partial = d.with_name(f".partial-{d.name}+{os.uname().nodename}+{os.getpid()}")
            partial.mkdir()
            try:
                log(f"  {model}: building {key}")
                out, report, seconds = build_mod.compile_plan(
                    p, gpu, tensorrt_version, opts, builder=builder, candidate=candidate, log=log,
                    workdir=partial)
                if waive_parity:
                    report = {"passed": None, "waived": True, "figures": WAIVED}
                if out.tensorrt_version != tensorrt_version:
                    raise EngineError(f"{model}: the builder used TensorRT {out.tensorrt_version} but this host "
                                      f"reports {tensorrt_version}: the plan would be filed under the wrong key "
                                      "(the image's TensorRT bindings and library disagree)")
                self._publish(partial, d, p, gpu, out, report, seconds, key)
            finally:
                if partial.exists():
                    _remove_tree(partial)
        self.record_use([key])
        return Stored(key, d / DEFAULT_PLAN, "built", version, seconds, report.get("figures", ""), waive_parity)

    def _publish(self, partial: Path, dest: Path, p, gpu: GpuInfo, out, report: dict, seconds: float,
                 key: PlanKey) -> None:
        plan = partial / DEFAULT_PLAN
        with open(plan, "wb") as f:
            f.write(out.plan)
            f.flush()
            os.fsync(f.fileno())
        write_sidecar(plan, build_mod.make_sidecar(p, gpu, out, sha256_file(plan), seconds, report, key.name))
        for f in (plan, sidecar_path(plan)):
            os.chmod(f, _READ_ONLY_FILE)
        os.chmod(partial, _READ_ONLY_DIR)
        os.rename(partial, dest)                  # atomic: the key appears whole

    def _remove_partials(self, key_dir: Path) -> None:
        for stale in key_dir.parent.glob(f".partial-{key_dir.name}+*"):
            _remove_tree(stale)

    # -- use and garbage collection -----------------------------------------------------------
    def session(self, deadline: Deadline | None = None, log: Log | None = None):
        """Shared hold on the store for finding/building keys and recording their use: `gc`
        (exclusive) never removes a key between an image finding it and marking it used."""
        self.root.mkdir(parents=True, exist_ok=True)
        return target_lock(self.root / STORE_LOCK_TARGET, shared=True, deadline=deadline, on_wait=log)


    def record_use(self, keys) -> None:
        """Mark `keys` as used now (what gc's "most recently used" counts)."""
        for key in keys:
            marker = self.use_marker(key)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            os.utime(marker)

    def keys(self) -> list[tuple[str, str, str]]:
        """Published key folders as (gpu, model, name)."""
        out = []
        for d in sorted((self.root / "plans").glob("*/*/*")):
            if d.is_dir() and not d.name.startswith("."):
                out.append((d.parent.parent.name, d.parent.name, d.name))
        return out

    def _last_used(self, gpu: str, model: str, name: str) -> float:
        for p in (self.root / "uses" / gpu / model / name, self.root / "plans" / gpu / model / name):
            try:
                return p.stat().st_mtime
            except OSError:
                continue
        return 0.0

    # -- which deployed image uses which keys ---------------------------------------------------
    def image_record(self, image: str, gpu: str) -> Path:
        return self.root / "images" / gpu / f"{hashlib.sha256(image.encode()).hexdigest()[:32]}.json"

    def record_image(self, image: str, keys) -> None:
        """Remember that `image` (its reference as the pods name it, ideally by digest) serves
        `keys`: gc keeps them for as long as it is told the image is deployed."""
        by_gpu: dict[str, dict[str, str]] = {}
        for key in keys:
            by_gpu.setdefault(key.gpu, {})[key.model] = key.name
        for gpu, models in sorted(by_gpu.items()):
            path = self.image_record(image, gpu)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"image": image, "gpu": gpu, "keys": models}, indent=1, sort_keys=True))
            os.replace(tmp, path)

    def image_keys(self, images) -> tuple[set[tuple[str, str, str]], list[str]]:
        """(the (gpu, model, name) keys recorded for `images`, the images with no record at all)."""
        keys, unknown = set(), []
        for image in sorted(set(images)):
            records = sorted((self.root / "images").glob(f"*/{self.image_record(image, 'x').name}"))
            if not records:
                unknown.append(image)
            for path in records:
                rec = json.loads(path.read_text())
                keys |= {(rec["gpu"], model, name) for model, name in rec["keys"].items()}
        return keys, unknown

    def gc(self, keep: int, log: Log = print, wait_s: float = 600.0, deployed=None) -> list[Path]:
        """Keep the `keep` most recently used keys per GPU kind and model and every key of the
        `deployed` images (references); remove the others, their use markers, and partial
        folders no live builder holds. Returns what went.

        With `deployed` given, an image among them that has no key record stops gc before it
        removes anything (EngineError): its keys are unknown, so none may go. Runs alone
        (exclusive store lock, waiting up to `wait_s` for images that are finding or building
        their plans)."""
        if keep < 1:
            raise EngineError(f"gc keeps at least the newest key per model; got keep={keep}")
        self.root.mkdir(parents=True, exist_ok=True)
        with target_lock(self.root / STORE_LOCK_TARGET, timeout_s=wait_s, on_wait=log):
            protected: set[tuple[str, str, str]] = set()
            if deployed is not None:
                protected, unknown = self.image_keys(deployed)
                if unknown:
                    raise EngineError(f"gc removed nothing: deployed image(s) {', '.join(unknown)} have no key record "
                                      f"in {self.root / 'images'} (built before records existed, or by hand), so "
                                      "their keys are unknown. Run the plan-build Job for those images, or gc "
                                      "without the deployed-image check once they are gone")
            return self._gc(keep, log, protected)

    def _gc(self, keep: int, log: Log, protected: set[tuple[str, str, str]]) -> list[Path]:
        removed: list[Path] = []
        groups: dict[tuple[str, str], list[str]] = {}
        for gpu, model, name in self.keys():
            groups.setdefault((gpu, model), []).append(name)
        for (gpu, model), names in sorted(groups.items()):
            names.sort(key=lambda n: self._last_used(gpu, model, n), reverse=True)
            for name in names[keep:]:
                if (gpu, model, name) in protected:
                    log(f"gc: keeping {gpu}/{model}/{name} (older than the {keep} most recently used, but a "
                        "deployed image uses it)")
                    continue
                d = self.root / "plans" / gpu / model / name
                log(f"gc: removing {gpu}/{model}/{name} (not among the {keep} most recently used)")
                _remove_tree(d)
                (self.root / "uses" / gpu / model / name).unlink(missing_ok=True)
                lock_path(d).unlink(missing_ok=True)   # no builder waits on it: they hold the store shared
                removed.append(d)
        for partial in sorted((self.root / "plans").glob("*/*/.partial-*")):
            key_name = partial.name.removeprefix(".partial-").split("+")[0]
            if _try_exclusive(lock_path(partial.parent / key_name)):
                log(f"gc: removing {partial} (its builder is gone)")
                _remove_tree(partial)
                removed.append(partial)
        live = set(self.keys())
        for record in sorted((self.root / "images").glob("*/*.json")):
            rec = json.loads(record.read_text())
            if not any((rec["gpu"], m, n) in live for m, n in rec["keys"].items()):
                record.unlink()                 # every key of that image is gone: so is its record
        return removed


def _try_exclusive(lock_file: Path) -> bool:
    """True when nobody holds `lock_file` (checked by taking and releasing it)."""
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """rmtree for published (read-only) folders: make them writable first, then remove."""
    if not path.exists():
        return
    for d, _, _ in os.walk(path):
        os.chmod(d, stat.S_IRWXU)
    shutil.rmtree(path)


def ensure_all(store: PlanStore, models: list[str], gpu: GpuInfo, tensorrt_version: str,
               opts: build_mod.Options, *, builder, candidate, log: Log, deadline: Deadline | None = None,
               build: bool = True, waive_parity=()) -> dict[str, Stored]:
    """`ensure` for every model, in order; {model: Stored}. `waive_parity`: the models whose
    parity check is waived (each must be one of `models`)."""
    unknown = sorted(set(waive_parity) - set(models))
    if unknown:
        raise EngineError(f"parity waived for {', '.join(unknown)}, which this image builds no plan for "
                          f"(plan models: {', '.join(models)})")
    t0 = time.perf_counter()
    out = {}
    for i, model in enumerate(models, 1):
        out[model] = store.ensure(model, gpu, tensorrt_version, opts, builder=builder, candidate=candidate,
                                  log=log, deadline=deadline, build=build, waive_parity=model in waive_parity)
        log(f"[{i}/{len(models)}] {model}: {out[model].status} {out[model].key}")
    log(f"{len(models)} plans ready in {time.perf_counter() - t0:.1f} s")
    return out
