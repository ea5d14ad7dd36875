"""Breakages of a rendered scenario, one per policy point: (point, scenario, how to break a
copy of its objects, what the policies must then say). tests/unit/test_deploy_k8s.py runs
each and checks the policies catch it; the first block is the list of issue 23's defects."""
from __future__ import annotations

import copy

from tests.unit.k8s_policy import app, apps, container, containers, find, jobs, pod_spec


def _triton(o, pool="l4"):
    return next(d for d in apps(o, "triton") if d["metadata"]["name"] in (f"triton-{pool}", "triton-cpu"))


def _tc(o, pool="l4"):
    return container(_triton(o, pool), "triton")


def _gw(o):
    return container(app(o, "gateway"))


def _so(o, pool="l4"):
    return find(o, "ScaledObject", f"triton-{pool}")


def _np(o, name):
    return find(o, "NetworkPolicy", name)


def _env(c, name, value):
    c.setdefault("env", []).append({"name": name, "value": value})


def _alert(o, name):
    return next(r for g in find(o, "PrometheusRule", "visionserve")["spec"]["groups"] for r in g["rules"]
                if r.get("alert") == name)


def _record(o, name):
    return next(r for g in find(o, "PrometheusRule", "visionserve")["spec"]["groups"] for r in g["rules"]
                if r.get("record") == name)


def _extra_job(o):
    j = copy.deepcopy(jobs(o, "triton-plans")[0])
    j["metadata"]["name"] = "triton-plans-h100"
    j["spec"]["template"]["metadata"]["labels"]["visionserve.io/pool"] = "h100"
    o.append(j)


def _store_writable(o):
    d = _triton(o)
    next(v for v in pod_spec(d)["volumes"] if v["name"] == "engines")["persistentVolumeClaim"].pop("readOnly")
    for c in containers(d):
        for m in c["volumeMounts"]:
            m.pop("readOnly", None)


BREAKS = [
    # issue 23's defects, each as it was shipped
    ("replicas under KEDA", "gpu", lambda o: _triton(o)["spec"].update(replicas=2), "sets spec.replicas"),
    ("replicas under HPA", "cpu", lambda o: app(o, "gateway")["spec"].update(replicas=2), "sets spec.replicas"),
    ("no pull secret", "gpu", lambda o: find(o, "ServiceAccount", "visionserve").pop("imagePullSecrets"),
     "does not pull with"),
    ("default ServiceAccount", "cpu", lambda o: pod_spec(app(o, "gateway")).pop("serviceAccountName"),
     "ServiceAccount 'default'"),
    ("no storage class", "gpu", lambda o: find(o, "PersistentVolumeClaim", "triton-engines")["spec"].pop(
        "storageClassName"), "leaves the claim Pending"),
    ("a kind without its Job", "gpu", lambda o: o.remove(jobs(o, "triton-plans")[0]), "plan-build Jobs for"),
    ("a Job for an absent kind", "gpu", _extra_job, "plan-build Jobs for"),
    ("a kind without its pool", "gpu", lambda o: o.remove(_triton(o)), "Triton pools for"),
    ("Job pinned to one product", "gpu", lambda o: pod_spec(jobs(o, "triton-plans")[0])["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0].update(
        values=["NVIDIA-H100-80GB-HBM3"]), "node affinity"),
    ("store mounted writable", "gpu", lambda o: [m.pop("readOnly", None) for m in _tc(o)["volumeMounts"]],
     "does not mount the plan store read-only"),
    ("store volume writable", "gpu", lambda o: next(v for v in pod_spec(_triton(o))["volumes"] if v["name"] ==
                                                    "engines")["persistentVolumeClaim"].pop("readOnly"),
     "volume is not read-only"),
    ("init step builds", "gpu", lambda o: pod_spec(_triton(o))["initContainers"][0].update(args=["build"]),
     "no init step checks"),
    ("every pod can write the store", "gpu", _store_writable, "can write the plan store"),
    ("serve builds", "gpu", lambda o: [e.update(value="build") for e in _tc(o)["env"] if e["name"] ==
                                       "VISIONSERVE_PLANS"], "may build plans"),
    ("no gateway preStop", "cpu", lambda o: _gw(o).pop("lifecycle"), "gateway's preStop waits 0 s"),
    ("gateway grace", "gpu", lambda o: pod_spec(app(o, "gateway")).update(terminationGracePeriodSeconds=20),
     "its graceful shutdown"),
    ("gateway progress deadline", "gpu", lambda o: app(o, "gateway")["spec"].pop("progressDeadlineSeconds"),
     "gateway: progressDeadlineSeconds 600"),
    ("PDB drains hang", "gpu", lambda o: find(o, "PodDisruptionBudget", "triton")["spec"].pop(
        "unhealthyPodEvictionPolicy"), "a drain hangs"),
    ("Burstable Triton", "gpu", lambda o: _tc(o)["resources"]["requests"].update(memory="4Gi"),
     "not Guaranteed QoS"),
    ("Burstable init step", "gpu", lambda o: pod_spec(_triton(o))["initContainers"][0]["resources"]["limits"].update(
        cpu="8"), "not Guaranteed QoS"),
    ("admin Secret optional", "gpu", lambda o: [e["valueFrom"]["secretKeyRef"].update(optional=True)
                                                for e in _tc(o)["env"] if e["name"] == "VISIONSERVE_TRITON_ADMIN_KEY"],
     "is optional"),
    ("API keys Secret optional", "cpu", lambda o: next(v for v in pod_spec(app(o, "gateway"))["volumes"]
                                                        if "secret" in v)["secret"].update(optional=True), "is optional"),
    ("ingress 1 MiB body", "cpu", lambda o: find(o, "Ingress", "gateway")["metadata"]["annotations"].pop(
        "nginx.ingress.kubernetes.io/proxy-body-size"), "under the gateway's max_body_bytes"),
    ("ingress no TLS", "gpu", lambda o: find(o, "Ingress", "gateway")["spec"].pop("tls"), "without TLS"),
    ("ingress no rate limit", "cpu", lambda o: [find(o, "Ingress", "gateway")["metadata"]["annotations"].pop(k) for k in
                                                ("nginx.ingress.kubernetes.io/limit-rps",)], "no rate limit"),
    ("image by tag", "gpu", lambda o: _tc(o).update(image="registry.example.com/visionserve/triton:0.1.0-gpu"),
     "is none the values name"),
    ("more replicas than GPUs", "gpu", lambda o: _so(o).update(spec={**_so(o)["spec"], "maxReplicaCount": 4}),
     "the values say"),
    ("one replica in all", "cpu", lambda o: _so(o, "cpu")["spec"].update(minReplicaCount=1), "in all"),
    ("queue time alone", "gpu", lambda o: _so(o)["spec"]["triggers"].pop(0), "no utilization trigger"),
    ("a low-traffic model drives scaling", "gpu", lambda o: _record(
        o, "visionserve:triton_worst_model_queue_us_per_request").update(expr=_record(
            o, "visionserve:triton_worst_model_queue_us_per_request")["expr"].replace(" > 1\n", "\n")),
     "low-traffic models are not filtered"),
    ("alerts not namespaced", "cpu", lambda o: _alert(o, "TritonQueueTimeHigh").update(
        expr=_alert(o, "TritonQueueTimeHigh")["expr"].replace(',namespace="visionserve"', "")),
     "reads series of other namespaces"),
    ("TritonNotReady while loading", "gpu", lambda o: _alert(o, "TritonNotReady").update({"for": "5m"}),
     "every rollout pages"),
    ("Prometheus release fixed", "gpu", lambda o: find(o, "ServiceMonitor", "triton")["metadata"]["labels"].update(
        release="prometheus"), "release label"),
    ("Prometheus URL fixed", "cpu", lambda o: _so(o, "cpu")["spec"]["triggers"][1]["metadata"].update(
        serverAddress="http://prometheus.monitoring:9090"), "the values say http"),
    ("triton Service for clients", "gpu", lambda o: find(o, "Service", "triton-metrics")["spec"]["ports"].append(
        {"name": "grpc", "port": 8001, "targetPort": "grpc"}), "offers Triton beyond its metrics"),
    ("API open to every namespace", "cpu", lambda o: _np(o, "gateway")["spec"]["ingress"][0].pop("from"),
     "open beyond the"),
    # the rest of the policy points
    ("cache size not from the values", "cpu", lambda o: [e.update(value="0") for e in _tc(o, "cpu")["env"]
                                                          if e["name"] == "VISIONSERVE_RESPONSE_CACHE_BYTES"],
     "the values say"),
    ("cache bigger than the pod", "gpu", lambda o: _tc(o)["resources"]["limits"].update(memory="512Mi"),
     "over a quarter of its memory limit"),
    ("security", "gpu", lambda o: _tc(o)["securityContext"].update(privileged=True), "privileged"),
    ("limits", "cpu", lambda o: _gw(o)["resources"].pop("limits"), "limits lack"),
    ("probes", "gpu", lambda o: _tc(o).pop("readinessProbe"), "no readinessProbe"),
    ("token", "cpu", lambda o: pod_spec(app(o, "gateway")).update(automountServiceAccountToken=True),
     "service-account token mounted"),
    ("exposed", "cpu", lambda o: find(o, "Service", "gateway")["spec"].update(type="LoadBalancer"),
     "exposed beyond the cluster"),
    ("headless", "gpu", lambda o: find(o, "Service", "triton-grpc")["spec"].pop("clusterIP"), "not a headless"),
    ("a pool outside the fleet", "gpu", lambda o: find(o, "Service", "triton-grpc")["spec"]["selector"].update(
        {"visionserve.io/pool": "a10g"}), "does not select the Triton pods"),
    ("target", "cpu", lambda o: _gw(o)["env"].__setitem__(0, {"name": "VISIONSERVE_GATEWAY_TRITON_GRPC",
                                                              "value": "triton:8001"}), "is not dns:///"),
    ("scraped once", "gpu", lambda o: find(o, "Service", "triton-grpc")["metadata"]["labels"].update(
        {"visionserve.io/metrics": "true"}), "not one ClusterIP Service"),
    ("wait for triton", "cpu", lambda o: _env(_gw(o), "VISIONSERVE_GATEWAY_STARTUP_WAIT_S", "600"),
     "give up on a slow Triton"),
    ("triton preStop", "gpu", lambda o: _tc(o).pop("lifecycle"), "preStop waits 0 s"),
    ("triton grace", "cpu", lambda o: pod_spec(_triton(o, "cpu")).update(terminationGracePeriodSeconds=30),
     "does not cover preStop"),
    ("triton progress", "gpu", lambda o: _triton(o)["spec"].update(progressDeadlineSeconds=600),
     "progressDeadlineSeconds 600"),
    ("gpu rollout", "gpu", lambda o: _triton(o)["spec"]["strategy"]["rollingUpdate"].update(maxSurge=1),
     "needs a spare GPU"),
    ("store rwx", "gpu", lambda o: find(o, "PersistentVolumeClaim", "triton-engines")["spec"].update(
        accessModes=["ReadWriteOnce"]), "not a ReadWriteMany claim"),
    ("fsGroup", "gpu", lambda o: pod_spec(_triton(o))["securityContext"].pop("fsGroup"), "no fsGroup"),
    ("parity waiver differs", "gpu", lambda o: [e.update(value="yolo") for e in _tc(o)["env"]
                                                if e["name"] == "VISIONSERVE_PARITY_WAIVE"], "the l4 values say"),
    ("Job builds another image", "gpu", lambda o: container(jobs(o, "triton-plans")[0]).update(
        image="registry.example.com/visionserve/triton@sha256:" + "9" * 64), "builds (and records)"),
    ("Job gc ignores deployed images", "gpu", lambda o: container(jobs(o, "triton-plans")[0])["env"].pop(),
     "keeping the deployed images' keys"),
    ("Job retries a parity failure", "gpu", lambda o: jobs(o, "triton-plans")[0]["spec"].pop("podFailurePolicy"),
     "retries a start an operator must fix"),
    ("Job on another node shape", "gpu", lambda o: container(jobs(o, "triton-plans")[1])["resources"][
        "limits"].update(memory="24Gi"), "node shape says"),
    ("two autoscalers", "gpu", lambda o: o.append({"kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
                                                   "spec": {"scaleTargetRef": {"kind": "Deployment",
                                                                               "name": "triton-l4"}}}),
     "2 autoscalers own"),
    ("keda field", "gpu", lambda o: _so(o)["spec"].update(maxReplicas=4), "unknown field spec.maxReplicas"),
    ("keda metadata", "cpu", lambda o: _so(o, "cpu")["spec"]["triggers"][1]["metadata"].update(threshold=20000),
     "must be strings"),
    ("signal: another pool", "gpu", lambda o: _so(o)["spec"]["triggers"][1]["metadata"].update(
        query=_so(o)["spec"]["triggers"][1]["metadata"]["query"].replace('"l4"', '"a10g"')), "not namespace"),
    ("signal: averaged latency", "gpu", lambda o: _so(o)["spec"]["triggers"][1].update(metricType="AverageValue"),
     "neither the pool's"),
    ("signal: nulls read as zero", "gpu", lambda o: _so(o)["spec"]["triggers"][0]["metadata"].update(
        ignoreNullValues="true"), "read as zero"),
    ("adapter HPA", "gpu-prometheus-adapter", lambda o: find(o, "HorizontalPodAutoscaler", "triton-l4")["spec"][
        "metrics"][1]["object"]["metric"].update(name="triton_queue_duration_us"), "the adapter HPA reads"),
    ("gateway metrics", "cpu", lambda o: find(o, "Service", "gateway")["spec"]["ports"].append(
        {"name": "metrics", "port": 8081, "targetPort": "metrics"}), "routes something besides the API"),
    ("metrics scraped on api", "gpu", lambda o: find(o, "ServiceMonitor", "gateway")["spec"]["endpoints"][0].update(
        port="http"), "not scraped on its metrics port"),
    ("docs on", "cpu", lambda o: _env(_gw(o), "VISIONSERVE_GATEWAY_DOCS", "true"), "serves /docs"),
    ("restricted override", "gpu", lambda o: _env(_tc(o), "VISIONSERVE_TRITON_ARGS",
                                                  "--http-restricted-api=shared-memory:k=v"),
     "overrides Triton's restricted APIs"),
    ("admin key literal", "cpu", lambda o: [e.update(value="k", valueFrom=None) for e in _tc(o, "cpu")["env"]
                                            if e["name"] == "VISIONSERVE_TRITON_ADMIN_KEY"], "not from a Secret"),
    ("triton http open", "gpu", lambda o: _np(o, "triton-from-gateway-only")["spec"]["ingress"][0]["ports"].append(
        {"protocol": "TCP", "port": 8000}), "want gRPC 8001 only"),
    ("metrics from another namespace", "gpu", lambda o: _np(o, "triton-from-gateway-only")["spec"]["ingress"][1][
        "from"][0]["namespaceSelector"]["matchLabels"].update({"kubernetes.io/metadata.name": "default"}), "admits"),
    ("gateway egress", "cpu", lambda o: _np(o, "gateway")["spec"]["egress"][0]["ports"].append(
        {"protocol": "TCP", "port": 8000}), "want Triton gRPC only"),
    ("metrics port open", "gpu", lambda o: _np(o, "gateway")["spec"]["ingress"][0]["ports"].append(
        {"protocol": "TCP", "port": 8081}), "open beyond the"),
    ("API server for everyone", "gpu", lambda o: _np(o, "plan-build-to-api-server")["spec"].update(podSelector={}),
     "opens the API server's ports"),
    ("deny", "cpu", lambda o: o.remove(_np(o, "default-deny")), "no default deny"),
    ("dns kube-system only", "gpu", lambda o: _np(o, "allow-dns")["spec"]["egress"][0].update(
        to=[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]),
     "NodeLocal DNSCache"),
    ("dns wide", "cpu", lambda o: _np(o, "allow-dns")["spec"]["egress"][0]["ports"].append(
        {"protocol": "TCP", "port": 443}), "want UDP and TCP 53 only"),
    ("preflight peers", "gpu", lambda o: jobs(o, "plan-store-preflight")[0]["spec"].update(parallelism=1),
     "must equal parallelism"),
    ("preflight one node", "gpu", lambda o: pod_spec(jobs(o, "plan-store-preflight")[0])["affinity"].pop(
        "podAntiAffinity"), "may share a node"),
    ("preflight run id", "gpu", lambda o: container(jobs(o, "plan-store-preflight")[0])["env"].pop(), "Job's uid"),
]
