"""Print the pip requirements of pyproject.toml for the given extras (none = the base install).

    python deploy/requirements.py                 base dependencies (the serving path)
    python deploy/requirements.py export          base + the `export` extra (torch, model zoos)
    python deploy/requirements.py --only gateway  the `gateway` extra alone (what gateway/ imports)

Images install dependencies from this list, pinned by constraints.txt (`pip install -c`),
and put the source tree on PYTHONPATH instead of installing the project itself, so
`model_repository/` is found beside the code, as in a checkout. Runs by path in a bare
python stage (before the project is copied): standard library only.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:          # Python 3.10: no tomllib (and no tomli either)
    tomllib = None

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _load(path: Path) -> dict:
    if tomllib is not None:
        return tomllib.loads(path.read_text())
    raise SystemExit("requirements.py needs Python 3.11+ (tomllib); run it in a python:3.11 stage")


def requirements(extras: list[str], path: Path = PYPROJECT, base: bool = True) -> list[str]:
    project = _load(path)["project"]
    name = project["name"]
    out = list(project.get("dependencies", [])) if base else []
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
    argv = sys.argv[1:]
    only = "--only" in argv
    print("\n".join(requirements([a for a in argv if a != "--only"], base=not only)))
