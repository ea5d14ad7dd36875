"""The served repository: the image's repository with each plan model's `model.plan` linked
to its key in the plan store, assembled per start in a pod-local folder.

Built aside and renamed into place, never edited afterwards: the same inputs reuse the
same folder (a container restarting in its pod), other inputs get another one. Configs
are copied, the image's other files linked.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from deploy.errors import StartupError

# Files of an image's version folder that are build products, never linked into a served one.
BUILT_SUFFIXES = (".plan", ".plan.json", ".lock", ".tmp")
COMPLETE = ".complete"


def _is_built(name: str) -> bool:
    return name.startswith(".") or name.endswith(BUILT_SUFFIXES)


def served_id(source: Path, plans: dict[str, tuple[str, Path]]) -> str:
    """Name of the served repository of `source` with `plans`: same inputs, same folder."""
    h = hashlib.sha256(str(Path(source).resolve()).encode())
    for cfg in sorted(Path(source).glob("*/config.pbtxt")):
        h.update(cfg.parent.name.encode() + b"\0" + cfg.read_bytes())
    for model, (version, plan) in sorted(plans.items()):
        h.update(f"{model}/{version}={plan}".encode())
    return h.hexdigest()[:16]


def assemble(source: Path, served_root: Path, plans: dict[str, tuple[str, Path]]) -> Path:
    """A served repository over `source` whose plan models load the stored keys; returns it.

    `plans` maps model -> (version folder, published plan).
    """
    source, served_root = Path(source), Path(served_root)
    models = sorted(p.parent.name for p in source.glob("*/config.pbtxt"))
    if not models:
        raise StartupError(f"{source} holds no model (no */config.pbtxt): wrong VISIONSERVE_HOME?")
    unknown = sorted(set(plans) - set(models))
    if unknown:
        raise StartupError(f"plans given for models the image does not have: {', '.join(unknown)}")
    dest = served_root / served_id(source, plans)
    if (dest / COMPLETE).is_file():
        return dest
    tmp = served_root / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for model in models:
        src_dir, dst_dir = source / model, tmp / model
        dst_dir.mkdir(parents=True)
        shutil.copyfile(src_dir / "config.pbtxt", dst_dir / "config.pbtxt")
        for src_version in sorted(p for p in src_dir.iterdir() if p.is_dir()):
            dst_version = dst_dir / src_version.name
            dst_version.mkdir()
            for f in sorted(src_version.iterdir()):
                if not _is_built(f.name):
                    os.symlink(f.resolve(), dst_version / f.name)
        if model in plans:
            version, plan = plans[model]
            (dst_dir / version).mkdir(exist_ok=True)
            os.symlink(plan, dst_dir / version / "model.plan")
            os.symlink(plan.with_name(plan.name + ".json"), dst_dir / version / "model.plan.json")
    (tmp / COMPLETE).write_text(json.dumps({m: str(p) for m, (_, p) in sorted(plans.items())}, indent=1))
    try:
        os.rename(tmp, dest)
    except OSError:                          # the same folder was just completed by another start
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / COMPLETE).is_file():
            raise
    return dest
