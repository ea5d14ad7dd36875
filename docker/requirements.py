"""Print the pip requirements of pyproject.toml for the given extras (none = the base install).

    python docker/requirements.py                 base dependencies (what serving + gateway import)
    python docker/requirements.py export          base + the `export` extra (torch, model zoos)

Images install dependencies from this list and put the source tree on PYTHONPATH instead
of installing the project itself, so `serving.contract.REPO_ROOT` is the image's project
folder and `model_repository/` is found beside the code, as in a checkout.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:          # Python 3.10 (the NGC Triton image): tomli is not there either
    tomllib = None

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _load(path: Path) -> dict:
    if tomllib is not None:
        return tomllib.loads(path.read_text())
    raise SystemExit("requirements.py needs Python 3.11+ (tomllib); run it in a python:3.11 stage")


def requirements(extras: list[str], path: Path = PYPROJECT) -> list[str]:
    project = _load(path)["project"]
    name = project["name"]
    out = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject.toml has {', '.join(optional)}")
        seen.add(extra)
        for req in optional[extra]:
            self_ref = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", req.replace(" ", ""))
            if self_ref:                      # "visionserve[triton,export]" -> those extras
                todo.extend(self_ref.group(1).split(","))
            elif req not in out:
                out.append(req)
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
