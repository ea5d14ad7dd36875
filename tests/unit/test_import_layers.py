"""Imports point down the layers of docs/architecture.md, checked by walking every module's AST
(function-level imports included: a lazy import is still a dependency).

    perf/  deploy/                tools on top: anything below
    gateway/                      contract/ and imaging/ only
    export/ (+ export/engines/)   build: contract/, imaging/, pipelines/ (export/* never imports export.engines)
    serving/   pipelines/         runtime: pipelines/ imports contract/ and imaging/; serving/ those and pipelines/
    contract/  imaging/           bottom: no project package
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

BOTTOM = {"contract", "imaging"}
ALLOWED: dict[str, set[str]] = {
    "contract": set(),
    "imaging": set(),
    "pipelines": BOTTOM,
    "serving": BOTTOM | {"pipelines"},
    "export": BOTTOM | {"pipelines"},
    "gateway": BOTTOM,
    "perf": BOTTOM | {"pipelines", "serving", "export", "gateway"},
    "deploy": BOTTOM | {"pipelines", "serving", "export", "gateway", "perf"},
}
# inside a package: these subpackages sit above the rest of it
INNER = {"export": "export.engines"}


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, relative ones resolved."""
    module = _module_name(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # `from pkg import sub` may import a submodule: count it as pkg.sub
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return out


def violations(root: Path, allowed: dict[str, set[str]] = ALLOWED) -> list[str]:
    """Every import in the packages under `root` that goes up or sideways."""
    found = []
    for package, may in allowed.items():
        for path in sorted((root / package).rglob("*.py")):
            module = _module_name(root, path)
            for line, target in _imports(root, path):
                top = target.split(".")[0]
                where = f"{path.relative_to(root)}:{line}: {module} imports {target.rsplit('.', 1)[0] or target}"
                if top in allowed and top != package and top not in may:
                    found.append(f"{where} ({package}/ may import {', '.join(sorted(may)) or 'no project package'})")
                inner = INNER.get(package)
                if top == package and inner and target.startswith(inner + ".") and not module.startswith(inner):
                    found.append(f"{where} ({inner} is built on {package}/, not the other way)")
    return found


def test_imports_point_down():
    assert violations(REPO_ROOT) == []


def test_every_package_is_placed_in_a_layer():
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(ALLOWED), \
        f"unplaced packages: {packages - set(ALLOWED)} (add them to ALLOWED and docs/architecture.md)"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for package in ALLOWED:
        (tmp_path / package).mkdir(exist_ok=True)
    return tmp_path


def test_a_lower_layer_importing_a_higher_one_fails(tmp_path):
    root = _tree(tmp_path, {
        "contract/__init__.py": "",
        "contract/facts.py": "def f():\n    from gateway import app\n",              # lazy: still a dependency
        "gateway/__init__.py": "",
        "gateway/app.py": "import contract\nfrom serving.profiles import derive\n",   # sideways into the runtime
        "pipelines/__init__.py": "",
        "pipelines/ok.py": "from contract import load\nfrom . import ok\n",            # allowed
        "export/__init__.py": "",
        "export/verify.py": "from .engines import parity\n",                         # export -> export.engines
        "export/engines/__init__.py": "",
        "export/engines/parity.py": "from .. import registry\n",                     # allowed: engines -> export
        "serving/__init__.py": "",
        "serving/profiles.py": "from export.bf16_parity import never\n",              # runtime -> build
    })
    found = violations(root)
    assert len(found) == 4, found
    assert any("contract/facts.py:2" in v and "gateway" in v for v in found)
    assert any("gateway/app.py:2" in v and "serving.profiles" in v for v in found)
    assert any("export/verify.py:1" in v and "export.engines" in v for v in found)
    assert any("serving/profiles.py:1" in v for v in found)
