"""Policy of replica ownership and scaling, over a scenario's render (see tests/unit/k8s_policy.py).

Exactly one autoscaler owns each Deployment and no Deployment states `replicas` (an apply
would reset what the autoscaler set); each Triton pool is capped at its GPUs; a pool scales
on a utilization trigger (proportional to load) beside the worst busy model's queue time
(a saturation guard), both read from series the PrometheusRule records per pool; the
recorded queue signal is the maximum over models busier than a floor; the ScaledObject is
checked field by field (no CRD schema offline); the prometheus-adapter alternative reads the
same recorded series; alert rules name the namespace they watch.
"""
from __future__ import annotations

import re

from tests.unit.k8s_policy import apps, find, pool, startup_allowance, container

UTILIZATION = "visionserve:triton_gpu_utilization:sum"
WORST_QUEUE = "visionserve:triton_worst_model_queue_us_per_request"
PER_MODEL_QUEUE = "visionserve:triton_model_queue_us_per_request"

# What KEDA (v2) accepts: spec, trigger and prometheus-scaler metadata keys (KEDA's docs).
KEDA_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
             "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
KEDA_TRIGGER = {"type", "name", "metadata", "metricType", "useCachedMetrics", "authenticationRef"}
KEDA_PROMETHEUS = {"serverAddress", "query", "threshold", "activationThreshold", "namespace", "customHeaders",
                   "ignoreNullValues", "queryParameters", "unsafeSsl", "timeout", "authModes"}
KEDA_CPU = {"value", "containerName"}
KEDA_ADVANCED = {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount", "scalingModifiers"}
HPA_CONFIG = {"name", "behavior"}
_QUANTITY = re.compile(r"^\d+(\.\d+)?$")


def keda_structure(so: dict) -> list[str]:
    """A ScaledObject KEDA would accept (no schema offline: checked field by field)."""
    name = f"ScaledObject {so['metadata']['name']}"
    bad = []
    if so.get("apiVersion") != "keda.sh/v1alpha1":
        bad.append(f"{name}: apiVersion {so.get('apiVersion')}")
    spec = so.get("spec", {})
    bad += [f"{name}: unknown field spec.{k}" for k in sorted(set(spec) - KEDA_SPEC)]
    bad += [f"{name}: unknown field spec.advanced.{k}" for k in sorted(set(spec.get("advanced", {})) - KEDA_ADVANCED)]
    hpa = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
    bad += [f"{name}: unknown field horizontalPodAutoscalerConfig.{k}" for k in sorted(set(hpa) - HPA_CONFIG)]
    if not spec.get("triggers"):
        bad.append(f"{name}: no triggers")
    for t in spec.get("triggers", []):
        bad += [f"{name}: unknown trigger field {k}" for k in sorted(set(t) - KEDA_TRIGGER)]
        md = t.get("metadata", {})
        if not all(isinstance(v, str) for v in md.values()):
            bad.append(f"{name}: trigger metadata values must be strings")
        known = {"prometheus": KEDA_PROMETHEUS, "cpu": KEDA_CPU}.get(t.get("type"))
        if known is None:
            bad.append(f"{name}: trigger type {t.get('type')!r}")
            continue
        bad += [f"{name}: unknown {t['type']} metadata {k}" for k in sorted(set(md) - known)]
        if t["type"] == "prometheus" and not {"serverAddress", "query", "threshold"} <= set(md):
            bad.append(f"{name}: prometheus trigger lacks serverAddress, query or threshold")
        number = md.get("threshold", md.get("value", ""))
        if not _QUANTITY.match(str(number)):
            bad.append(f"{name}: threshold {number!r} is not a number")
    return bad


def _selects(query: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', query))


def _series(query: str) -> str:
    return re.split(r"[{\s(]", query.strip(), maxsplit=1)[0]


def _owners(objs, deployment: dict) -> list[dict]:
    name = deployment["metadata"]["name"]
    return [o for o in find(objs, "ScaledObject") + find(objs, "HorizontalPodAutoscaler")
            if o["spec"]["scaleTargetRef"]["name"] == name and o["spec"]["scaleTargetRef"].get("kind") == "Deployment"]


def replica_ownership(objs) -> list[str]:
    """One autoscaler per Deployment, and no `replicas` for an apply to reset."""
    bad = []
    for d in find(objs, "Deployment"):
        name = d["metadata"]["name"]
        owners = _owners(objs, d)
        if len(owners) != 1:
            bad.append(f"{len(owners)} autoscalers own Deployment {name} (KEDA's own HPA counts as one)")
        if "replicas" in d["spec"]:
            bad.append(f"Deployment {name} sets spec.replicas while its autoscaler owns the count: every apply "
                       "scales it back")
    return bad


def _caps(o: dict) -> tuple:
    s = o["spec"]
    return s.get("minReplicaCount", s.get("minReplicas", 1)), s.get("maxReplicaCount", s.get("maxReplicas"))


def triton_scaling(objs, kinds: dict[str, dict], values: dict) -> list[str]:
    """Per pool: capped at its GPUs, a utilization trigger beside the queue-time guard, both on
    this pool's recorded series in this namespace; the pools' minimums add up to 2 or more."""
    bad, floor = [], 0
    for d in apps(objs, "triton"):
        owners = _owners(objs, d)
        if len(owners) != 1:
            continue                                   # replica_ownership says it
        so, name, p, ns = owners[0], d["metadata"]["name"], pool(d), d["metadata"].get("namespace")
        lo, hi = _caps(so)
        cap = kinds[p]["gpus"] if p in kinds else values["tritonCpu"]["maxReplicas"]
        want_lo = kinds[p]["minReplicas"] if p in kinds else lo
        if hi != cap or lo != want_lo or not 1 <= lo <= hi:
            bad.append(f"{name}: replicas {lo}..{hi}, the values say {want_lo}..{cap} (one replica per GPU at most)")
        floor += lo
        if so["kind"] == "ScaledObject":
            bad += keda_structure(so)
            bad += _keda_triggers(so, name, p, ns)
        else:
            bad += _adapter_metrics(so, name)
    if apps(objs, "triton") and floor < 2:
        bad.append(f"the Triton pools may scale to {floor} replica in all: a restart or an eviction is an outage")
    return bad


def _keda_triggers(so: dict, name: str, p: str, ns: str) -> list[str]:
    bad, kinds_seen = [], set()
    for t in so["spec"]["triggers"]:
        md = t.get("metadata", {})
        if t["type"] == "cpu" and t.get("metricType") == "Utilization":
            kinds_seen.add("utilization")
            continue
        series = _series(md.get("query", ""))
        if series == UTILIZATION and t.get("metricType") == "AverageValue":
            kinds_seen.add("utilization")
        elif series == WORST_QUEUE and t.get("metricType") == "Value":
            kinds_seen.add("queue")
        else:
            bad.append(f"{name}: trigger {t.get('name')} reads {series!r} as {t.get('metricType')}, neither the pool's "
                       "utilization (AverageValue) nor its worst queue time (Value)")
        sel = _selects(md.get("query", ""))
        if sel != {"namespace": ns, "visionserve_io_pool": p}:
            bad.append(f"{name}: trigger {t.get('name')} selects {sel}, not namespace {ns} and pool {p}")
        if md.get("ignoreNullValues") != "false":
            bad.append(f"{name}: lost metrics would read as zero (ignoreNullValues must be \"false\")")
    if "utilization" not in kinds_seen:
        bad.append(f"{name}: no utilization trigger: queue time alone jumps from ~0 to the timeout and flaps")
    if "queue" not in kinds_seen:
        bad.append(f"{name}: no queue-time guard")
    return bad


def _adapter_metrics(hpa: dict, name: str) -> list[str]:
    names = set()
    for m in hpa["spec"]["metrics"]:
        if m["type"] == "Resource" and m["resource"]["name"] == "cpu":
            names.add("utilization")
        elif m["type"] == "Object" and m["object"]["describedObject"]["name"] == name:
            names.add(m["object"]["metric"]["name"])
    want = {"triton_worst_model_queue_us_per_request"}
    if not want <= names or not names & {"utilization", "triton_gpu_utilization"}:
        return [f"{name}: the adapter HPA reads {sorted(names)}, want its own utilization and worst queue time"]
    return []


def recorded_signals(objs) -> list[str]:
    """The recorded queue signal: per pool, the max over models busier than a floor of queue
    time / successful requests; 0 (not absent) while the pool's pods are up."""
    rules = {r["record"]: r["expr"] for o in find(objs, "PrometheusRule") for g in o["spec"]["groups"]
             for r in g["rules"] if "record" in r}
    bad = [f"no recording rule {r}" for r in (UTILIZATION, WORST_QUEUE, PER_MODEL_QUEUE) if r not in rules]
    if bad:
        return bad
    per_model = re.sub(r"\s+", "", rules[PER_MODEL_QUEUE])
    for metric in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        if not re.search(rf"sumby\(namespace,visionserve_io_pool,model\)\(rate\({metric}\{{[^}}]*\}}\[\d+m\]\)\)", per_model):
            bad.append(f"{metric} is not summed per pool and model over a rate window")
    worst = re.sub(r"\s+", "", rules[WORST_QUEUE])
    if "maxby(namespace,visionserve_io_pool)(" + PER_MODEL_QUEUE not in worst:
        bad.append("the queue signal is not the maximum over models per pool")
    floor = re.search(r"rate\(nv_inference_request_success\{[^}]*\}\[\d+m\]\)\)>(\d+(\.\d+)?)", worst)
    if not floor or float(floor.group(1)) <= 0:
        bad.append("low-traffic models are not filtered out of the queue signal")
    if "up{" not in worst:
        bad.append("the queue signal is absent (an error) instead of 0 while the pool is up and idle")
    if "nv_gpu_utilization" not in rules[UTILIZATION]:
        bad.append("the utilization signal does not read the GPUs' utilization")
    return bad


def adapter_rules(rules: list[dict]) -> list[str]:
    """k8s/prometheus-adapter/rules.yaml: only rules, each serving a recorded series as an
    Object metric of the pool's Deployment."""
    bad = []
    if any(not isinstance(r, dict) or {"default", "prometheus"} & set(r) for r in rules):
        bad.append("k8s/prometheus-adapter/rules.yaml is not only the rules to append")
    served = {}
    for r in rules:
        served[r["name"]["as"]] = _series(r["seriesQuery"])
        if set(r["resources"]["overrides"]) != {"namespace", "deployment"}:
            bad.append(f"adapter rule {r['name']['as']} is not an Object metric of a namespace's Deployment")
    if served.get("triton_worst_model_queue_us_per_request") != WORST_QUEUE or \
            served.get("triton_gpu_utilization") != UTILIZATION:
        bad.append(f"the adapter serves {served}, not the series KEDA reads")
    return bad


def alerts_scoped(objs, namespace: str) -> list[str]:
    """Every series an alert reads is this namespace's; 'no Triton serves' waits out the startup allowance."""
    bad = []
    for o in find(objs, "PrometheusRule"):
        for g in o["spec"]["groups"]:
            for r in (r for r in g["rules"] if "alert" in r):
                expr = r["expr"]
                selectors = re.findall(r"\b[a-z_][a-z0-9_:]*\{([^}]*)\}", expr)
                bare = re.findall(r"\b(nv_\w+|visionserve_\w+|kube_\w+|up)\b(?!\{)", re.sub(r"by \([^)]*\)", "", expr))
                if bare or not selectors or any(f'namespace="{namespace}"' not in s for s in selectors):
                    bad.append(f"alert {r['alert']} reads series of other namespaces: {expr[:80]}...")
                if r["alert"] == "TritonNotReady":
                    minutes = int(re.match(r"(\d+)m", r["for"]).group(1))
                    allowance = max((startup_allowance(container(d, "triton")) for d in apps(objs, "triton")),
                                    default=0)
                    if minutes * 60 < allowance:
                        bad.append(f"TritonNotReady fires after {r['for']}, inside Triton's startup allowance "
                                   f"({allowance} s): every rollout pages")
    return bad
