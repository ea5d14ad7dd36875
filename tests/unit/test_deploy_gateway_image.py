"""The gateway image holds what gateway/ imports and nothing else: the project files its
COPY lines bring cover the import closure of gateway/ (an AST walk), no project package
outside that closure is copied, and the `gateway` extra it installs declares every distribution that
closure imports, with the base install's specifiers."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

from deploy import requirements as reqs
from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "docker" / "gateway.Dockerfile"


def project_packages(root: Path = REPO_ROOT) -> set[str]:
    return {p.parent.name for p in root.glob("*/__init__.py")}


def _module_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imports(path: Path, root: Path) -> set[str]:
    """Absolute module names `path` imports (relative imports resolved; `from a import b`
    gives a.b when b is a submodule, else a)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root).with_suffix("").parts
    package = rel[:-1] if rel[-1] != "__init__" else rel[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] if node.level else ()) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            for a in node.names:
                sub = f"{mod}.{a.name}" if mod else a.name
                out.add(sub if _module_file(sub, root) else mod)
    return out


def import_closure(start: list[Path], root: Path = REPO_ROOT) -> tuple[set[Path], set[str]]:
    """(project files reachable from `start`, top-level names of the other imports)."""
    ours = project_packages(root)
    files, external, todo = set(), set(), list(start)
    while todo:
        f = todo.pop()
        if f in files:
            continue
        files.add(f)
        for mod in _imports(f, root):
            top = mod.split(".")[0]
            if top not in ours:
                external.add(top)
                continue
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):              # the module and every package above it
                target = _module_file(".".join(parts[:i]), root)
                if target is not None:
                    todo.append(target)
    return files, external


def copied_files(dockerfile_text: str, root: Path = REPO_ROOT) -> set[Path]:
    """Project-package .py files the final stage's COPY lines take from the build context."""
    final = re.split(r"^FROM ", dockerfile_text, flags=re.M)[-1]
    out = set()
    for line in final.splitlines():
        m = re.match(r"COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", line)
        for src in (m.group(1).split() if m else []):
            for hit in root.glob(src.rstrip("/")):
                out |= {hit} if hit.is_file() else {f for f in hit.rglob("*.py") if "__pycache__" not in f.parts}
    ours = project_packages(root)
    return {f for f in out if f.suffix == ".py" and f.relative_to(root).parts[0] in ours}


def coverage_violations(dockerfile_text: str, root: Path = REPO_ROOT) -> list[str]:
    gateway = sorted((root / "gateway").rglob("*.py"))
    needed, _ = import_closure(gateway, root)
    copied = copied_files(dockerfile_text, root)
    bad = [f"gateway imports {f.relative_to(root)}, which the image does not copy" for f in sorted(needed - copied)]
    # whole packages are copied (a COPY line per package): a surplus is a package none of
    # whose modules the gateway imports (contract/docs.py rides along with contract/)
    top = lambda files: {f.relative_to(root).parts[0] for f in files}  # noqa: E731
    bad += [f"the image copies {p}/, which gateway/ never imports" for p in sorted(top(copied) - top(needed))]
    return bad


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist(requirement: str) -> str:
    return _canonical(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])


def test_the_gateway_image_copies_exactly_the_code_gateway_imports():
    assert coverage_violations(DOCKERFILE.read_text()) == []
    files, _ = import_closure(sorted((REPO_ROOT / "gateway").rglob("*.py")))
    assert REPO_ROOT / "contract" / "__init__.py" in files           # the walk follows `import contract`


def test_the_coverage_check_catches_a_missing_and_a_surplus_package():
    text = DOCKERFILE.read_text()
    copy_line = next(line for line in text.splitlines() if line.startswith("COPY contract/"))
    missing = coverage_violations(text.replace(copy_line + "\n", ""))
    assert any("contract/__init__.py, which the image does not copy" in v for v in missing)
    surplus = coverage_violations(text.replace(copy_line, copy_line + "\nCOPY serving/ serving/"))
    assert any("copies serving/, which gateway/ never imports" in v for v in surplus)


def test_the_walk_follows_relative_and_nested_imports(tmp_path):
    (tmp_path / "gateway" / "routes").mkdir(parents=True)
    (tmp_path / "lower").mkdir()
    for f, text in {"gateway/__init__.py": "", "gateway/routes/__init__.py": "from ..helpers import x\n",
                    "gateway/helpers.py": "def f():\n    from lower import thing\n    import numpy\n",
                    "lower/__init__.py": "", "lower/thing.py": "import cv2\n", "lower/unused.py": ""}.items():
        (tmp_path / f).write_text(text)
    files, external = import_closure(sorted((tmp_path / "gateway").rglob("*.py")), tmp_path)
    assert {str(f.relative_to(tmp_path)) for f in files} == {"gateway/__init__.py", "gateway/routes/__init__.py",
                                                             "gateway/helpers.py", "lower/__init__.py",
                                                             "lower/thing.py"}
    assert external == {"numpy", "cv2"}


def test_the_gateway_extra_declares_every_distribution_the_closure_imports():
    _, external = import_closure(sorted((REPO_ROOT / "gateway").rglob("*.py")))
    third_party = sorted(m for m in external if m not in sys.stdlib_module_names and m != "__future__")
    dists = importlib.metadata.packages_distributions()
    extra = {_dist(r) for r in reqs.requirements(["gateway"], base=False)}
    undeclared = {m: dists.get(m) for m in third_party if not {_canonical(d) for d in dists.get(m, [m])} & extra}
    assert not undeclared, f"imported by gateway/ but not in the gateway extra: {undeclared}"
    assert {"fastapi", "numpy", "tritonclient", "dnspython"} <= extra
    assert not extra & {"onnxruntime", "openvino", "torch", "pillow", "nvidia-pytriton"}


def test_the_gateway_extra_uses_the_base_specifiers():
    base = {_dist(r): r for r in reqs.requirements([])}
    for r in reqs.requirements(["gateway"], base=False):
        same = base.get(_dist(r))
        if same is not None:
            spec = re.sub(r"\[[^\]]*\]", "", r)
            assert spec == re.sub(r"\[[^\]]*\]", "", same), f"gateway extra {r!r} vs base {same!r}"
