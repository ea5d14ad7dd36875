"""The `gateway` extra (pyproject.toml) holds what gateway/, contract/ and imaging/ import:
the gateway image needs nothing else (no ONNX Runtime, OpenVINO or torch)."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.conftest import REPO_ROOT

PACKAGES = ("gateway", "contract", "imaging")
PROJECT = {"contract", "imaging", "gateway", "pipelines", "serving", "export", "perf", "deploy", "tests"}


def third_party_imports(root=REPO_ROOT) -> dict[str, str]:
    """{top-level module: a file importing it} over PACKAGES (lazy imports included)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PROJECT:
                        found.setdefault(top, str(path.relative_to(root)))
    return found


def _extra() -> set[str]:
    spec = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gateway"]
    return {re.split(r"[\[<>=!~ ;]", s, maxsplit=1)[0].lower().replace("_", "-") for s in spec}


def test_the_gateway_extra_covers_every_import():
    dists = packages_distributions()
    extra = _extra()
    missing = {}
    for module, where in third_party_imports().items():
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & extra:
            missing[module] = (where, sorted(names))
    assert not missing, f"imported by the gateway layer but not in the gateway extra: {missing}"


def test_the_gateway_extra_carries_no_runtime_or_build_package():
    assert not _extra() & {"onnxruntime", "openvino", "torch", "nvidia-pytriton", "onnx", "ultralytics"}


def test_a_missing_dependency_is_found(tmp_path):
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "x.py").write_text("def f():\n    import onnxruntime\n")
    assert "onnxruntime" in third_party_imports(tmp_path)
