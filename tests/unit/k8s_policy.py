"""Policy assertions over rendered manifests: one function per point, each returning the
violations it finds as strings (empty = holds). tests/unit/test_deploy_k8s.py applies them
to every scenario's render and shows, by breaking a copy of it, that each one fails.

This module: lookup helpers; workload security; nothing exposed beyond ClusterIP; Triton's
Services (headless gRPC for the gateways, metrics only otherwise); drain and rollout of
Triton and the gateway; the plan store (only plan-build Jobs write it); the Triton pools
and plan-build Jobs, one per configured GPU kind; the storage pre-flight.
"""
from __future__ import annotations

import re

TRITON_GRPC, TRITON_METRICS = 8001, 8002
GATEWAY_HTTP, GATEWAY_METRICS = 8080, 8081
STORE_WRITERS = ("triton-plans", "plan-store-preflight")     # the Jobs that may write the plan store


# -- lookup helpers -------------------------------------------------------------------------
def find(objs, kind, name=None):
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return hits if name is None else (hits[0] if hits else None)


def workloads(objs):
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def pod_spec(obj) -> dict:
    return obj["spec"]["template"]["spec"]


def pod_labels(obj) -> dict:
    return obj["spec"]["template"]["metadata"].get("labels", {})


def matches(selector: dict, labels: dict) -> bool:
    sel = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


def apps(objs, name: str) -> list[dict]:
    """The Deployments whose pods are app.kubernetes.io/name=`name` (every Triton pool)."""
    return [d for d in find(objs, "Deployment") if pod_labels(d).get("app.kubernetes.io/name") == name]


def app(objs, name: str):
    hits = apps(objs, name)
    return hits[0] if hits else None


def jobs(objs, name: str) -> list[dict]:
    return [j for j in find(objs, "Job") if pod_labels(j).get("app.kubernetes.io/name") == name]


def pool(obj) -> str | None:
    return pod_labels(obj).get("visionserve.io/pool")


def containers(obj) -> list[dict]:
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def container(deployment, name: str | None = None) -> dict:
    cs = pod_spec(deployment)["containers"]
    return next((c for c in cs if c["name"] == name), cs[0]) if name else cs[0]


def env(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def port_numbers(c: dict) -> dict:
    return {p.get("name"): p["containerPort"] for p in c.get("ports", [])}


def resolve_port(service_port: dict, c: dict):
    t = service_port.get("targetPort", service_port["port"])
    return port_numbers(c).get(t, t) if isinstance(t, str) else t


def affinity_terms(obj) -> list[tuple[str, str, tuple]]:
    terms = (pod_spec(obj).get("affinity", {}).get("nodeAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", []))
    return [(e["key"], e["operator"], tuple(e.get("values", []))) for t in terms for e in t["matchExpressions"]]


def prestop_sleep(c: dict) -> int:
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0


def startup_allowance(c: dict) -> int:
    probe = c.get("startupProbe", {})
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


# -- workload security ------------------------------------------------------------------------
def _token_allowed(objs, sa: str) -> bool:
    """A pod may mount its token only when its ServiceAccount's Roles read ReplicaSets and nothing else."""
    roles = {b["roleRef"]["name"] for b in find(objs, "RoleBinding")
             if any(s.get("name") == sa for s in b.get("subjects", []))}
    rules = [r for role in find(objs, "Role") if role["metadata"]["name"] in roles for r in role.get("rules", [])]
    return bool(rules) and all(r.get("resources") == ["replicasets"] and set(r.get("verbs", [])) <= {"get", "list"}
                               for r in rules)


def workload_security(objs) -> list[str]:
    bad = []
    for o in workloads(objs):
        name, spec = o["metadata"]["name"], pod_spec(o)
        pod_sc = spec.get("securityContext", {})
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            bad.append(f"{name}: host namespaces")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            bad.append(f"{name}: no RuntimeDefault seccomp")
        if spec.get("automountServiceAccountToken") is not False and not _token_allowed(
                objs, spec.get("serviceAccountName", "default")):
            bad.append(f"{name}: service-account token mounted")
        if o["kind"] == "Deployment":
            keys = {t["topologyKey"] for t in spec.get("topologySpreadConstraints", [])}
            if "kubernetes.io/hostname" not in keys:
                bad.append(f"{name}: not spread across nodes")
        for c in containers(o):
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
            if o["kind"] == "Deployment" and c in spec["containers"]:
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if probe not in c:
                        bad.append(f"{cname}: no {probe}")
            if not re.search(r"[:@]", c["image"].rsplit("/", 1)[-1]) or c["image"].endswith(":latest"):
                bad.append(f"{cname}: image {c['image']} not pinned")
    return bad


def nothing_exposed(objs) -> list[str]:
    bad = []
    for s in find(objs, "Service"):
        spec = s["spec"]
        if spec.get("type", "ClusterIP") != "ClusterIP" or spec.get("externalIPs"):
            bad.append(f"Service {s['metadata']['name']} is exposed beyond the cluster")
        if any("nodePort" in p for p in spec.get("ports", [])):
            bad.append(f"Service {s['metadata']['name']} has a nodePort")
    return bad


# -- the fleet: gateways balance over every Triton pod of every pool -------------------------------
def triton_services(objs) -> list[str]:
    """gRPC on a headless Service of ready pods of every pool; metrics on one ClusterIP Service,
    scraped once; no Service offers Triton's gRPC/HTTP to clients the network policies block."""
    from gateway.target import TargetError, parse

    bad = []
    tritons, gateway = apps(objs, "triton"), app(objs, "gateway")
    gw = container(gateway)
    text = str(env(gw).get("VISIONSERVE_GATEWAY_TRITON_GRPC", ""))
    try:
        target = parse(text)                         # the gateway's own reading of the setting
    except TargetError:
        target = None
    if target is None or not target.dynamic or target.dns_server is not None:
        return [f"the gateways' Triton target {text!r} is not dns:///<headless service>:<port>"]
    svc = find(objs, "Service", target.name)
    if svc is None or svc["spec"].get("clusterIP") != "None":
        bad.append(f"the gateways' target {target.name} is not a headless Service")
    else:
        if svc["spec"].get("publishNotReadyAddresses"):
            bad.append(f"{target.name} publishes pods that are not ready")
        missed = [t["metadata"]["name"] for t in tritons if not matches(svc["spec"].get("selector", {}), pod_labels(t))]
        if missed:
            bad.append(f"{target.name} does not select the Triton pods of {missed}")
        if target.port not in {p["port"] for p in svc["spec"]["ports"]}:
            bad.append(f"{target.name} does not carry port {target.port}")
    if "VISIONSERVE_GATEWAY_STARTUP_WAIT_S" in env(gw) or gw.get("readinessProbe", {}).get("httpGet", {}).get(
            "path") != "/readyz":
        bad.append("the gateway may give up on a slow Triton, or takes traffic before /readyz")
    sm = find(objs, "ServiceMonitor", "triton")
    selecting = [s for s in find(objs, "Service") if tritons and matches(s["spec"].get("selector", {}),
                                                                          pod_labels(tritons[0]))]
    scraped = [s for s in selecting if sm and matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
    if len(scraped) != 1 or scraped[0]["spec"].get("clusterIP") == "None":
        bad.append(f"the Triton ServiceMonitor selects {[s['metadata']['name'] for s in scraped]}, not one ClusterIP Service")
    for s in selecting:
        if s["spec"].get("clusterIP") != "None" and {resolve_port(p, container(tritons[0], "triton"))
                                                     for p in s["spec"]["ports"]} != {TRITON_METRICS}:
            bad.append(f"Service {s['metadata']['name']} offers Triton beyond its metrics to clients the network "
                       "policies block")
    return bad


def triton_drain(objs, exit_timeout_s: int) -> list[str]:
    """Per pool: preStop outlasts DNS re-resolution, the grace period covers preStop + drain,
    a GPU pool rolls without a spare GPU."""
    bad = []
    for d in apps(objs, "triton"):
        name, c = d["metadata"]["name"], container(d, "triton")
        wait = prestop_sleep(c)
        if wait < 15 + 5:
            bad.append(f"{name}: preStop waits {wait} s, under the gateways' 15 s re-resolution + 5 s DNS TTL")
        if pod_spec(d).get("terminationGracePeriodSeconds", 30) < wait + exit_timeout_s + 5:
            bad.append(f"{name}: terminationGracePeriodSeconds does not cover preStop + Triton's drain")
        gpu = "nvidia.com/gpu" in c["resources"].get("limits", {})
        if gpu and d["spec"].get("strategy", {}).get("rollingUpdate") != {"maxSurge": 0, "maxUnavailable": 1}:
            bad.append(f"{name}: the GPU rollout needs a spare GPU (want maxSurge 0, maxUnavailable 1)")
    return bad


def progress_deadlines(objs) -> list[str]:
    """A rollout may not fail while a pod loads its models (Triton: its startup allowance plus
    the init check; the gateways: their /readyz waits for a loaded Triton)."""
    bad, slowest = [], 0
    for d in apps(objs, "triton"):
        allowance = startup_allowance(container(d, "triton")) + (300 if pod_spec(d).get("initContainers") else 0)
        slowest = max(slowest, allowance)
        if d["spec"].get("progressDeadlineSeconds", 600) < allowance:
            bad.append(f"{d['metadata']['name']}: progressDeadlineSeconds {d['spec'].get('progressDeadlineSeconds', 600)}"
                       f" < its startup allowance {allowance} s")
    gw = app(objs, "gateway")
    if gw["spec"].get("progressDeadlineSeconds", 600) < slowest:
        bad.append(f"gateway: progressDeadlineSeconds {gw['spec'].get('progressDeadlineSeconds', 600)} < Triton's "
                   f"startup allowance {slowest} s (its readiness waits for a Triton)")
    return bad


def gateway_drain(objs, graceful_s: int) -> list[str]:
    """The gateway leaves the Ingress's endpoints before it stops, and finishes in-flight requests."""
    c = container(app(objs, "gateway"))
    wait = prestop_sleep(c)
    bad = []
    if wait < 10:
        bad.append(f"the gateway's preStop waits {wait} s: the Ingress still sends it requests after SIGTERM")
    if pod_spec(app(objs, "gateway")).get("terminationGracePeriodSeconds", 30) < wait + graceful_s + 5:
        bad.append("the gateway's terminationGracePeriodSeconds does not cover preStop + its graceful shutdown")
    return bad


# -- the plan store -----------------------------------------------------------------------------
def _claims(spec: dict) -> dict[str, dict]:
    return {v["name"]: v["persistentVolumeClaim"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}


def plan_store(objs) -> list[str]:
    """One RWX claim; Triton pods (server and init check) read it only; only the plan-build
    (and pre-flight) Jobs mount it writable."""
    bad = []
    gpu_pools = [d for d in apps(objs, "triton") if "nvidia.com/gpu" in container(d, "triton")["resources"]["limits"]]
    for d in gpu_pools:
        name, spec = d["metadata"]["name"], pod_spec(d)
        claims = _claims(spec)
        if len(claims) != 1:
            bad.append(f"{name} mounts {len(claims)} claims, want the one plan store")
            continue
        (vol, claim), = claims.items()
        pvc = find(objs, "PersistentVolumeClaim", claim["claimName"])
        if pvc is None or pvc["spec"].get("accessModes") != ["ReadWriteMany"]:
            bad.append(f"the plan store {claim['claimName']} is not a ReadWriteMany claim")
        if not claim.get("readOnly"):
            bad.append(f"{name}: the plan store volume is not read-only")
        if not spec.get("securityContext", {}).get("fsGroup"):
            bad.append(f"{name}: no fsGroup: the plan store may not be readable by the image's user")
        init = [i for i in spec.get("initContainers", []) if i.get("args", [])[:1] == ["check"]]
        if len(init) != 1 or init[0]["image"] != container(d, "triton")["image"]:
            bad.append(f"{name}: no init step checks this image's plans (`check`, same image) before serving")
        for c in init + [container(d, "triton")]:
            m = next((m for m in c.get("volumeMounts", []) if m["name"] == vol), None)
            if not m or not m.get("readOnly") or m["mountPath"] != env(c).get("VISIONSERVE_PLAN_STORE"):
                bad.append(f"{name}/{c['name']} does not mount the plan store read-only where VISIONSERVE_PLAN_STORE says")
        if env(container(d, "triton")).get("VISIONSERVE_PLANS") != "require":
            bad.append(f"{name}: Triton may build plans (VISIONSERVE_PLANS is not `require`)")
    for o in workloads(objs):
        for vol, claim in _claims(pod_spec(o)).items():
            for c in containers(o):
                m = next((m for m in c.get("volumeMounts", []) if m["name"] == vol), None)
                writer = o["kind"] == "Job" and pod_labels(o).get("app.kubernetes.io/name") in STORE_WRITERS
                if m and not (m.get("readOnly") or claim.get("readOnly")) and not writer:
                    bad.append(f"{o['metadata']['name']}/{c['name']} can write the plan store (only the plan-build "
                               "Jobs may)")
    return bad


def preflight_job(objs) -> list[str]:
    """Two or more pods, on different GPU nodes, one run id, the store's claim, as the image user."""
    found = jobs(objs, "plan-store-preflight")
    if len(found) != 1:
        return [f"{len(found)} pre-flight Jobs, want one"]
    job, c = found[0], container(found[0])
    spec = pod_spec(job)
    bad = []
    args = c.get("args", [])
    peers = int(args[args.index("--peers") + 1]) if "--peers" in args else 1
    if not (peers >= 2 and job["spec"].get("parallelism") == job["spec"].get("completions") == peers):
        bad.append(f"--peers {peers} must equal parallelism and completions, and be at least 2")
    anti = spec.get("affinity", {}).get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
    if not any(a["topologyKey"] == "kubernetes.io/hostname" and matches(a["labelSelector"], pod_labels(job))
               for a in anti):
        bad.append("the pre-flight pods may share a node (cross-node locking unproven)")
    if not any(e["name"] == "VISIONSERVE_PREFLIGHT_RUN" and "controller-uid" in str(e.get("valueFrom"))
               for e in c.get("env", [])):
        bad.append("the pre-flight pods do not share the Job's uid as their run id")
    if not spec.get("securityContext", {}).get("fsGroup") or spec["securityContext"].get("runAsUser") != 1000:
        bad.append("the pre-flight does not run as the image's user with the pods' fsGroup")
    if not any(op == "Exists" for _, op, _ in affinity_terms(job)):
        bad.append("the pre-flight may run on nodes without GPUs (where the store is never mounted)")
    return bad


def disruption_budgets(objs) -> list[str]:
    """Each Deployment's pods have a budget; a drain never waits on pods that serve nothing
    (unhealthyPodEvictionPolicy AlwaysAllow); Triton's allows one pod out even with one GPU."""
    bad = []
    for d in find(objs, "Deployment"):
        pdbs = [p for p in find(objs, "PodDisruptionBudget") if matches(p["spec"]["selector"], pod_labels(d))]
        if len(pdbs) != 1:
            bad.append(f"{d['metadata']['name']}: {len(pdbs)} PodDisruptionBudgets select its pods, want one")
    for p in find(objs, "PodDisruptionBudget"):
        if p["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            bad.append(f"PodDisruptionBudget {p['metadata']['name']}: unhealthy pods are not always evictable: a "
                       "drain hangs while its pods are all unready")
        if p["spec"]["selector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "triton" and \
                "maxUnavailable" not in p["spec"]:
            bad.append("Triton's budget is not maxUnavailable: a single-GPU pool could never be drained")
    return bad
