"""Policy of Triton's autoscaling over rendered manifests (see tests/unit/k8s_policy.py).

One signal - the worst model's queue time per request - delivered by KEDA (primary) or by
an HPA on prometheus-adapter rules appended to an existing adapter (alternative); exactly
one autoscaler owns the Deployment; the ScaledObject is checked field by field (no CRD
schema offline) and its query scoped to the namespace it is applied to.
"""
from __future__ import annotations

import re

from tests.unit.k8s_policy import app, find, services_of

SIGNAL_METRICS = ("nv_inference_queue_duration_us", "nv_inference_request_success")


# -- autoscaling --------------------------------------------------------------------------------
# What KEDA (v2) accepts: spec, trigger and prometheus-scaler metadata keys (KEDA's docs).
KEDA_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
             "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
KEDA_TRIGGER = {"type", "name", "metadata", "metricType", "useCachedMetrics", "authenticationRef"}
KEDA_PROMETHEUS = {"serverAddress", "query", "threshold", "activationThreshold", "namespace", "customHeaders",
                   "ignoreNullValues", "queryParameters", "unsafeSsl", "timeout", "authModes"}
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
    if not spec.get("scaleTargetRef", {}).get("name"):
        bad.append(f"{name}: no scaleTargetRef.name")
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        bad.append(f"{name}: replica bounds {lo}..{hi}")
    if not spec.get("triggers"):
        bad.append(f"{name}: no triggers")
    for t in spec.get("triggers", []):
        bad += [f"{name}: unknown trigger field {k}" for k in sorted(set(t) - KEDA_TRIGGER)]
        if t.get("metricType", "AverageValue") not in ("AverageValue", "Value", "Utilization"):
            bad.append(f"{name}: metricType {t.get('metricType')}")
        md = t.get("metadata", {})
        if not all(isinstance(v, str) for v in md.values()):
            bad.append(f"{name}: trigger metadata values must be strings")
        if t.get("type") == "prometheus":
            bad += [f"{name}: unknown prometheus metadata {k}" for k in sorted(set(md) - KEDA_PROMETHEUS)]
            if not {"serverAddress", "query", "threshold"} <= set(md):
                bad.append(f"{name}: prometheus trigger lacks serverAddress, query or threshold")
            elif not _QUANTITY.match(str(md["threshold"])):
                bad.append(f"{name}: threshold {md['threshold']!r} is not a number")
    return bad


def _compact(q: str) -> str:
    return re.sub(r"\s+", "", q)


def signal_shape(query: str) -> list[str]:
    """The signal: per model, queue time / successful requests over a window, then the max."""
    q = _compact(query)
    bad = []
    if not q.startswith("max("):
        bad.append("the signal is not the maximum over models")
    for metric in SIGNAL_METRICS:
        if not re.search(rf"sumby\(([^)]*,)?model\)\(rate\({metric}\{{[^}}]*\}}\[\d+m\]\)\)", q):
            bad.append(f"{metric} is not summed per model over a rate window")
    if "/clamp_min(" not in q:
        bad.append("queue time is not divided by the (clamped) request rate")
    return bad


def same_signal(keda_query: str, adapter_query: str) -> bool:
    """The adapter rule computes the KEDA query (label selections aside)."""
    a = _compact(adapter_query).replace("by(<<.GroupBy>>)", "").replace("<<.GroupBy>>,", "")
    k = _compact(keda_query)
    return re.sub(r"\{[^}]*\}", "{}", a) == re.sub(r"\{[^}]*\}", "{}", k)


def triton_autoscaling(objs, adapter_rules: list[dict]) -> list[str]:
    """Exactly one autoscaler owns Triton, on the signal; KEDA's query is scoped to this
    namespace; the adapter rules (the alternative) compute the same and are only rules."""
    triton = app(objs, "triton")
    name, ns = triton["metadata"]["name"], triton["metadata"].get("namespace")
    owners = [o for o in find(objs, "ScaledObject") + find(objs, "HorizontalPodAutoscaler")
              if o["spec"]["scaleTargetRef"]["name"] == name]
    if len(owners) != 1:
        return [f"{len(owners)} autoscalers own the Triton Deployment (KEDA's own HPA counts as one)"]
    so, bad = owners[0], []
    low = so["spec"].get("minReplicaCount", so["spec"].get("minReplicas", 1))
    if low < 2:
        bad.append(f"Triton may scale to {low} replica: a restart or an eviction is then an outage")
    rule = next((r for r in adapter_rules if r.get("name", {}).get("as") == "triton_worst_model_queue_us_per_request"),
                None)
    if rule is None or any(k in r for r in adapter_rules for k in ("default", "prometheus")):
        bad.append("k8s/prometheus-adapter/rules.yaml is not only the rules to append (or lacks the signal)")
    if so["kind"] == "ScaledObject":
        bad += keda_structure(so)
        (trigger,) = so["spec"]["triggers"][:1] or [{}]
        query = trigger.get("metadata", {}).get("query", "")
        bad += signal_shape(query)
        scoped = set(re.findall(r'namespace="([^"]*)"', query))
        if scoped != {ns}:
            bad.append(f"the query reads namespace {sorted(scoped)}, the Deployment is in {ns}")
        if trigger.get("metricType") != "Value":
            bad.append("the signal is a latency: metricType must be Value (not divided by replicas)")
        if trigger.get("metadata", {}).get("ignoreNullValues") != "false":
            bad.append("lost metrics would read as zero (ignoreNullValues must be \"false\")")
        if rule is not None and not same_signal(query, rule["metricsQuery"]):
            bad.append("the prometheus-adapter rule computes another signal than the KEDA trigger")
    else:
        metric = so["spec"]["metrics"][0]
        if metric.get("type") != "Object" or rule is None or metric["object"]["metric"]["name"] != rule["name"]["as"]:
            bad.append("the Triton HPA does not use the adapter rule's Object metric")
        elif metric["object"]["describedObject"]["name"] not in {s["metadata"]["name"] for s in services_of(objs, triton)}:
            bad.append("the HPA reads the metric of a Service that does not select Triton")
    return bad
