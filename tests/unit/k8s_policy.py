"""Policy assertions over rendered manifests: one function per point, each returning the
violations it finds as strings (empty = holds). tests/unit/test_deploy_k8s.py applies them to
every rendered overlay and shows, by breaking a copy of the manifests, that each one fails.

Points: workload security; nothing exposed beyond ClusterIP; Triton's gRPC on a headless
Service, its metrics on a ClusterIP one scraped once; the gateway's dns:/// target; graceful
Triton drain and a rollout that fits the GPUs; the plan store (init step builds read-write,
Triton serves read-only); the plan-build and pre-flight Jobs; the autoscaling signal (KEDA,
and the prometheus-adapter alternative computing the same); exposure (gateway metrics on
their own port and Service, docs off, Triton's restricted APIs and admin key); network
policies (gateway -> Triton gRPC only, DNS that works with NodeLocal DNSCache).
"""
from __future__ import annotations


TRITON_GRPC, TRITON_METRICS = 8001, 8002
GATEWAY_HTTP, GATEWAY_METRICS = 8080, 8081


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


def app(objs, name: str):
    """The Deployment whose pods are app.kubernetes.io/name=`name`."""
    for d in find(objs, "Deployment"):
        if pod_labels(d).get("app.kubernetes.io/name") == name:
            return d
    return None


def services_of(objs, deployment) -> list[dict]:
    labels = pod_labels(deployment)
    return [s for s in find(objs, "Service") if matches(s["spec"].get("selector", {}), labels)]


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


# -- workload security ------------------------------------------------------------------------
def workload_security(objs) -> list[str]:
    bad = []
    for o in workloads(objs):
        name, spec = o["metadata"]["name"], pod_spec(o)
        pod_sc = spec.get("securityContext", {})
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            bad.append(f"{name}: host namespaces")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            bad.append(f"{name}: no RuntimeDefault seccomp")
        if spec.get("automountServiceAccountToken") is not False:
            bad.append(f"{name}: service-account token mounted")
        if o["kind"] == "Deployment":
            keys = {t["topologyKey"] for t in spec.get("topologySpreadConstraints", [])}
            if "kubernetes.io/hostname" not in keys:
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
            if o["kind"] == "Deployment" and c in spec["containers"]:
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if probe not in c:
                        bad.append(f"{cname}: no {probe}")
            if ":" not in c["image"] or c["image"].endswith(":latest"):
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


# -- the fleet: gateways balance over every Triton pod -----------------------------------------
def triton_services(objs) -> list[str]:
    """gRPC on a headless Service of ready pods; metrics on a ClusterIP one, scraped once."""
    from gateway.target import TargetError, parse

    bad = []
    triton, gateway = app(objs, "triton"), app(objs, "gateway")
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
        if not matches(svc["spec"].get("selector", {}), pod_labels(triton)):
            bad.append(f"{target.name} does not select the Triton pods")
        if target.port not in {p["port"] for p in svc["spec"]["ports"]}:
            bad.append(f"{target.name} does not carry port {target.port}")
    if "VISIONSERVE_GATEWAY_STARTUP_WAIT_S" in env(gw) or gw.get("readinessProbe", {}).get("httpGet", {}).get(
            "path") != "/readyz":
        bad.append("the gateway may give up on a slow Triton, or takes traffic before /readyz")
    sm = find(objs, "ServiceMonitor", "triton")
    scraped = [s for s in services_of(objs, triton) if sm and matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
    if len(scraped) != 1 or scraped[0]["spec"].get("clusterIP") == "None":
        bad.append(f"the Triton ServiceMonitor selects {[s['metadata']['name'] for s in scraped]}, not one ClusterIP Service")
    return bad


def triton_rollout(objs, exit_timeout_s: int, gpu: bool) -> list[str]:
    """preStop outlasts DNS re-resolution, the grace period covers preStop + drain, the
    rollout needs no spare GPU and may not fail while a pod still builds or loads."""
    bad = []
    d = app(objs, "triton")
    spec, c = pod_spec(d), container(d, "triton")
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    wait = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
    if wait < 15 + 5:
        bad.append(f"Triton's preStop waits {wait} s, under the gateways' 15 s re-resolution + 5 s DNS TTL")
    if spec.get("terminationGracePeriodSeconds", 30) < wait + exit_timeout_s + 5:
        bad.append("terminationGracePeriodSeconds does not cover preStop + Triton's drain")
    probe = c["startupProbe"]
    startup = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    init_wait = max([float(env(i).get("VISIONSERVE_PLAN_WAIT_S") or 0) for i in spec.get("initContainers", [])],
                    default=0)
    if d["spec"].get("progressDeadlineSeconds", 600) < startup + init_wait:
        bad.append(f"progressDeadlineSeconds {d['spec'].get('progressDeadlineSeconds', 600)} < the init step's "
                   f"plan wait {init_wait:.0f} s + the startup allowance {startup} s")
    if gpu and d["spec"].get("strategy", {}).get("rollingUpdate") != {"maxSurge": 0, "maxUnavailable": 1}:
        bad.append("the GPU rollout needs a spare GPU (want maxSurge 0, maxUnavailable 1)")
    return bad


# -- the plan store ---------------------------------------------------------------------------
def _mount(c: dict, claim_volumes: set[str]) -> dict | None:
    return next((m for m in c.get("volumeMounts", []) if m["name"] in claim_volumes), None)


def _claim_volumes(spec: dict, claim: str) -> set[str]:
    return {v["name"] for v in spec.get("volumes", []) if v.get("persistentVolumeClaim", {}).get("claimName") == claim}


def plan_store(objs) -> list[str]:
    """gpu overlay: an RWX claim; the init step builds read-write, Triton serves read-only."""
    d = app(objs, "triton")
    spec = pod_spec(d)
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v]
    if len(claims) != 1:
        return [f"Triton pods mount {len(claims)} claims, want the one plan store"]
    bad = []
    pvc = find(objs, "PersistentVolumeClaim", claims[0])
    if pvc is None or pvc["spec"].get("accessModes") != ["ReadWriteMany"]:
        bad.append(f"the plan store {claims[0]} is not a ReadWriteMany claim of this overlay")
    if not spec.get("securityContext", {}).get("fsGroup"):
        bad.append("no fsGroup: the plan store may not be writable by the image's user")
    vols = _claim_volumes(spec, claims[0])
    init = [i for i in spec.get("initContainers", []) if i.get("args", [])[:1] == ["build"]]
    if len(init) != 1:
        bad.append("no init step runs `build` (where no plan-build Job ran, nothing builds)")
    else:
        m = _mount(init[0], vols)
        if not m or m.get("readOnly") or m["mountPath"] != env(init[0]).get("VISIONSERVE_PLAN_STORE"):
            bad.append("the init step does not mount the plan store read-write where VISIONSERVE_PLAN_STORE says")
        if init[0]["image"] != container(d, "triton")["image"]:
            bad.append("the init step runs another image than Triton (other keys)")
    c = container(d, "triton")
    m = _mount(c, vols)
    if not m or not m.get("readOnly") or m["mountPath"] != env(c).get("VISIONSERVE_PLAN_STORE"):
        bad.append("Triton does not mount the plan store read-only where VISIONSERVE_PLAN_STORE says")
    if env(c).get("VISIONSERVE_PLANS") != "require":
        bad.append("Triton may build plans (VISIONSERVE_PLANS is not `require`)")
    return bad


def plan_build_job(job_objs, gpu_objs) -> list[str]:
    """The Job builds what the gpu overlay serves: same image, same claim, same path."""
    jobs = find(job_objs, "Job")
    if len(jobs) != 1:
        return [f"{len(jobs)} Jobs, want one plan-build Job"]
    job, triton = jobs[0], app(gpu_objs, "triton")
    spec, c = pod_spec(job), container(jobs[0])
    bad = []
    t = container(triton, "triton")
    if c["image"] != t["image"]:
        bad.append(f"the Job builds with {c['image']}, Triton serves {t['image']}: other keys")
    if c.get("args", [])[:1] != ["build"] or "--gc" not in c.get("args", []):
        bad.append("the Job does not run `build --gc`")
    t_claims = {v["persistentVolumeClaim"]["claimName"] for v in pod_spec(triton).get("volumes", [])
                if "persistentVolumeClaim" in v}
    j_claims = {v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
    if j_claims != t_claims:
        bad.append(f"the Job writes {sorted(j_claims)}, Triton reads {sorted(t_claims)}")
    m = _mount(c, _claim_volumes(spec, next(iter(j_claims), "")))
    if not m or m.get("readOnly") or m["mountPath"] != env(t).get("VISIONSERVE_PLAN_STORE"):
        bad.append("the Job does not mount the plan store read-write at Triton's path")
    if c["resources"]["limits"].get("nvidia.com/gpu") != "1" or "nvidia.com/gpu.product" not in spec.get("nodeSelector", {}):
        bad.append("the Job does not take one GPU of a named kind (nvidia.com/gpu.product)")
    if not spec.get("securityContext", {}).get("fsGroup"):
        bad.append("the Job has no fsGroup")
    if not job["spec"].get("ttlSecondsAfterFinished") or not job["spec"].get("activeDeadlineSeconds"):
        bad.append("the Job is not bounded in time or never cleaned up")
    return bad


def preflight_job(objs) -> list[str]:
    """Two or more pods, on different nodes, one run id, the store's claim, as the image user."""
    jobs = find(objs, "Job")
    if len(jobs) != 1:
        return [f"{len(jobs)} Jobs, want one pre-flight Job"]
    job, c = jobs[0], container(jobs[0])
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
    run = c.get("env", [])
    if not any(e["name"] == "VISIONSERVE_PREFLIGHT_RUN" and "controller-uid" in str(e.get("valueFrom")) for e in run):
        bad.append("the pre-flight pods do not share the Job's uid as their run id")
    if not spec.get("securityContext", {}).get("fsGroup") or spec["securityContext"].get("runAsUser") != 1000:
        bad.append("the pre-flight does not run as the image's user with the pods' fsGroup")
    return bad
