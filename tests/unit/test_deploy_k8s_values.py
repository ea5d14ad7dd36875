"""The configuration surface: the same tree rendered with a second, different set of values
(another registry and digests, pull secret, storage class, Prometheus URL/namespace/release,
Ingress, and other GPU kinds: one on GKE's accelerator label) keeps every policy against
those values (which check every place a value must reach), and differs from the default
render only where a value explains the difference, with no default value left behind.
"""
from __future__ import annotations

import shutil

import pytest
import yaml

from tests.unit.k8s_render import K8S, SCENARIOS, gpu_kinds, scenario, values
from tests.unit.test_deploy_k8s import every_policy

SECOND = {
    "images": {"registry": "eu.gcr.io/acme-prod/vision",
               "gateway": "vs-gateway@sha256:" + "a" * 64,
               "tritonGpu": "vs-triton@sha256:" + "b" * 64,
               "tritonCpu": "vs-triton-cpu@sha256:" + "c" * 64},
    "pullSecret": "gcr-pull",
    "planStore": {"storageClassName": "enterprise-rwx", "size": "64Gi"},
    "prometheus": {"url": "http://prom-operated.observability.svc:9090", "namespace": "observability",
                   "release": "prom-stack"},
    "ingress": {"controllerNamespace": "edge", "className": "nginx-public", "host": "api.acme.example",
                "tlsSecret": "acme-tls"},
    "tritonCpu": {"cpu": "14", "memory": "28Gi", "maxReplicas": 5},
    "tritonResponseCacheBytes": "536870912",
    "quotaGpus": "9",
}
# Other GPU kinds: H100 nodes on GKE (its accelerator label, no GPU feature discovery) and T4s.
KINDS = {
    "h100": {"nodeLabel": {"key": "cloud.google.com/gke-accelerator", "value": "nvidia-h100-80gb"},
             "gpus": 4, "minReplicas": 2, "cpu": "22", "memory": "170Gi", "parityWaive": "yolo"},
    "t4": {"nodeLabel": {"key": "nvidia.com/gpu.product", "value": "Tesla-T4"},
           "gpus": 3, "minReplicas": 1, "cpu": "7", "memory": "26Gi", "parityWaive": ""},
}


@pytest.fixture(scope="module")
def second_tree(tmp_path_factory):
    k8s = tmp_path_factory.mktemp("second") / "k8s"
    shutil.copytree(K8S, k8s)
    doc = yaml.safe_load((k8s / "config" / "values.yaml").read_text())
    assert set(doc["spec"]) == set(SECOND), "a value was added to values.yaml: give this test a second one"
    doc["spec"] = SECOND
    (k8s / "config" / "values.yaml").write_text(yaml.safe_dump(doc))
    kinds_dir = k8s / "config" / "gpu-kinds"
    template = (kinds_dir / "l4")
    for old in gpu_kinds():
        if old != "l4":
            shutil.rmtree(kinds_dir / old)
    for name, spec in KINDS.items():
        shutil.copytree(template, kinds_dir / name)
        kz = yaml.safe_load((kinds_dir / name / "kustomization.yaml").read_text())
        kz["nameSuffix"], kz["labels"][0]["pairs"] = f"-{name}", {"visionserve.io/pool": name}
        (kinds_dir / name / "kustomization.yaml").write_text(yaml.safe_dump(kz))
        kind = yaml.safe_load((kinds_dir / name / "kind.yaml").read_text())
        assert set(kind["spec"]) == set(spec), "a GPU kind value was added: give this test a second one"
        kind["metadata"]["name"], kind["spec"] = name, spec
        (kinds_dir / name / "kind.yaml").write_text(yaml.safe_dump(kind))
    shutil.rmtree(template)
    (kinds_dir / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": sorted(KINDS)}))
    return k8s


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (i,))
    else:
        yield path, node


def _pairs(first: dict, second: dict):
    """Leaf values of `first` -> `second` (same shape), strings and numbers alike."""
    return {a: b for (pa, a), (pb, b) in zip(_leaves(first), _leaves(second)) if a != b}


def _pool(o) -> str | None:
    return o["metadata"].get("labels", {}).get("visionserve.io/pool")


def _explained(old, new, subs: dict) -> bool:
    """`new` is `old` with the values swapped: whole leaves, or inside longer strings (image
    references, queries, the pool's name in a name or a selector)."""
    if old in subs and subs[old] == new:
        return True
    if not isinstance(old, str) or not isinstance(new, str):
        return False
    out = old
    for a, b in sorted(((a, b) for a, b in subs.items() if isinstance(a, str) and len(a) >= 2),
                       key=lambda ab: -len(ab[0])):
        out = out.replace(f'"{a}"', f'"{b}"').replace(f"-{a}", f"-{b}") if len(a) < 4 else out.replace(a, b)
    return out == new


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_second_set_of_values_keeps_every_policy(second_tree, name):
    assert every_policy(name, scenario(name, second_tree), second_tree) == []


def differences(first: list[dict], second: list[dict]) -> list[str]:
    """What differs between the default render and the second one that no value explains,
    objects without a counterpart, and default values left in the second render."""
    subs = _pairs(values(), SECOND)
    kind_map = {"a10g": "h100", "l4": "t4"}
    assert set(gpu_kinds()) == set(kind_map), "the default GPU kinds changed: map them to this test's kinds"
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in second}
    out, seen = [], set()
    for o in first:
        pool = _pool(o)
        local = dict(subs)
        if pool in kind_map:
            local.update(_pairs(gpu_kinds()[pool], KINDS[kind_map[pool]]))
            local[pool] = kind_map[pool]
        key = (o["kind"], o["metadata"]["name"].replace(f"-{pool}", f"-{kind_map[pool]}") if pool in kind_map
               else o["metadata"]["name"])
        twin = by_key.get(key)
        if twin is None:
            out.append(f"{key} has no counterpart in the second render")
            continue
        seen.add(key)
        a, b = dict(_leaves(o)), dict(_leaves(twin))
        out += [f"{key}{p}: only in one render" for p in sorted(set(a) ^ set(b), key=str)]
        out += [f"{key}{p}: {a[p]!r} -> {b[p]!r}" for p in a if p in b and a[p] != b[p]
                and not _explained(a[p], b[p], local)]
    out += [f"{key} only in the second render" for key in sorted(set(by_key) - seen)]
    leftovers = {v for v in subs if isinstance(v, str) and len(v) > 3}
    leftovers |= {k["nodeLabel"]["value"] for k in gpu_kinds().values()}
    out += [f"{o['kind']}/{o['metadata']['name']}{p}: default value left: {v}" for o in second for p, v in _leaves(o)
            if isinstance(v, str) and any(v == old or (len(old) >= 12 and old in v) for old in leftovers)]
    return out


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_second_values_change_what_they_name_and_nothing_else(second_tree, name):
    assert differences(scenario(name), scenario(name, second_tree)) == []


def test_the_comparison_sees_a_change_no_value_explains(second_tree):
    first, second = scenario("gpu"), scenario("gpu", second_tree)
    gw = next(o for o in second if o["kind"] == "Deployment" and o["metadata"]["name"] == "gateway")
    gw["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 99
    pvc = next(o for o in second if o["kind"] == "PersistentVolumeClaim")
    pvc["spec"]["storageClassName"] = values()["planStore"]["storageClassName"]      # a value that did not reach it
    found = differences(first, second)
    assert any("terminationGracePeriodSeconds" in f and "-> 99" in f for f in found), found
    assert any("default value left: efs-sc" in f or "'efs-sc' -> 'efs-sc'" in f for f in found), found


def test_the_second_kinds_replace_the_first(second_tree):
    objs = scenario("gpu", second_tree)
    pools = {o["metadata"]["name"] for o in objs if o["kind"] in ("Deployment", "Job") and _pool(o)}
    assert pools == {"triton-h100", "triton-t4", "triton-plans-h100", "triton-plans-t4"}
    assert "plan-store-preflight" in {o["metadata"]["name"] for o in objs if o["kind"] == "Job"}
