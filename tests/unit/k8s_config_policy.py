"""Policy of what the configuration surface (k8s/config: values.yaml and one folder per GPU
kind) decides, over a scenario's render (see tests/unit/k8s_policy.py): one Triton pool and
one plan-build Job per configured GPU kind and none for another, on that kind's nodes, with
its sizing, replica cap and parity waivers; every pod's ServiceAccount pulls with the pull
secret; the plan store's class; images by the configured reference (digests where given);
Guaranteed QoS for Triton; Prometheus wired where the values say; every Triton pool's
response cache at the one configured size, inside its memory limit.
"""
from __future__ import annotations

from tests.unit.k8s_policy import (affinity_terms, apps, container, containers, env, find, jobs, pod_spec, pool,
                                   workloads)

WAIVE = "VISIONSERVE_PARITY_WAIVE"


def _kind_label(kind: dict) -> tuple[str, str, tuple]:
    return kind["nodeLabel"]["key"], "In", (kind["nodeLabel"]["value"],)


def gpu_pools(objs, kinds: dict[str, dict]) -> list[str]:
    """A Triton Deployment and a plan-build Job per GPU kind, none for a kind not configured;
    each on its kind's nodes, sized by it, waiving what it waives, building what it serves."""
    bad = []
    deployments = {pool(d): d for d in apps(objs, "triton")}
    builds = {pool(j): j for j in jobs(objs, "triton-plans")}
    for what, have in (("Triton pool", deployments), ("plan-build Job", builds)):
        if set(have) != set(kinds):
            bad.append(f"{what}s for {sorted(k for k in have if k)}, GPU kinds configured {sorted(kinds)}")
    for name, kind in kinds.items():
        d, j = deployments.get(name), builds.get(name)
        for o in (x for x in (d, j) if x is not None):
            oname = o["metadata"]["name"]
            if affinity_terms(o) != [_kind_label(kind)]:
                bad.append(f"{oname}: node affinity {affinity_terms(o)}, want the {name} nodes {_kind_label(kind)}")
            for c in containers(o):
                res = c["resources"]
                if res.get("limits", {}).get("nvidia.com/gpu") != "1":
                    bad.append(f"{oname}/{c['name']} does not take one GPU")
                if (res["limits"].get("cpu"), res["limits"].get("memory")) != (kind["cpu"], kind["memory"]):
                    bad.append(f"{oname}/{c['name']}: sized {res['limits'].get('cpu')}/{res['limits'].get('memory')}, "
                               f"the {name} node shape says {kind['cpu']}/{kind['memory']}")
                if env(c).get(WAIVE, "") != kind.get("parityWaive", ""):
                    bad.append(f"{oname}/{c['name']}: {WAIVE}={env(c).get(WAIVE)!r}, the {name} values say "
                               f"{kind.get('parityWaive', '')!r}")
                if "VISIONSERVE_POOL" in env(c) and env(c)["VISIONSERVE_POOL"] != name:
                    bad.append(f"{oname}/{c['name']}: VISIONSERVE_POOL {env(c)['VISIONSERVE_POOL']!r}, want {name!r}")
        if d is not None and j is not None:
            t, p = container(d, "triton"), container(j)
            if p["image"] != t["image"] or env(p).get("VISIONSERVE_IMAGE") != t["image"]:
                bad.append(f"{j['metadata']['name']} builds (and records) {p['image']} / "
                           f"{env(p).get('VISIONSERVE_IMAGE')}, {d['metadata']['name']} serves {t['image']}")
            if p.get("args") != ["build", "--gc"] or env(p).get("VISIONSERVE_DEPLOYED_IMAGES") != "kubernetes":
                bad.append(f"{j['metadata']['name']} does not `build --gc` keeping the deployed images' keys")
            store = env(t).get("VISIONSERVE_PLAN_STORE")
            if not any(m["mountPath"] == store and not m.get("readOnly") for m in p.get("volumeMounts", [])):
                bad.append(f"{j['metadata']['name']} does not mount the plan store read-write at Triton's path")
            if not j["spec"].get("ttlSecondsAfterFinished") or not j["spec"].get("activeDeadlineSeconds"):
                bad.append(f"{j['metadata']['name']} is not bounded in time or never cleaned up")
            if not any(r["action"] == "FailJob" and 2 in r.get("onExitCodes", {}).get("values", [])
                       for r in j["spec"].get("podFailurePolicy", {}).get("rules", [])):
                bad.append(f"{j['metadata']['name']} retries a start an operator must fix (exit 2: driver, parity)")
    return bad


def pull_secrets(objs, values: dict) -> list[str]:
    """Every pod runs as a ServiceAccount of the render that pulls with the configured Secret."""
    accounts = {sa["metadata"]["name"]: [s["name"] for s in sa.get("imagePullSecrets", [])]
                for sa in find(objs, "ServiceAccount")}
    bad = []
    for o in workloads(objs):
        sa = pod_spec(o).get("serviceAccountName", "default")
        if values["pullSecret"] not in accounts.get(sa, []) and values["pullSecret"] not in [
                s["name"] for s in pod_spec(o).get("imagePullSecrets", [])]:
            bad.append(f"{o['metadata']['name']}: its ServiceAccount {sa!r} does not pull with {values['pullSecret']!r}")
    return bad


def plan_store_class(objs, values: dict) -> list[str]:
    pvc = find(objs, "PersistentVolumeClaim", "triton-engines")
    if pvc is None:
        return []
    want = values["planStore"]["storageClassName"]
    if pvc["spec"].get("storageClassName") != want or not want:
        return [f"the plan store claims class {pvc['spec'].get('storageClassName')!r}, the values say {want!r} "
                "(without one, the default single-node class leaves the claim Pending)"]
    return []


def images(objs, values: dict) -> list[str]:
    """Every container runs exactly an image reference the values name: by digest where they
    give one (a tag can move under a running Deployment; a digest cannot)."""
    refs = {f"{values['images']['registry']}/{values['images'][k]}" for k in ("gateway", "tritonGpu", "tritonCpu")}
    bad = []
    for o in workloads(objs):
        for c in containers(o):
            if c["image"] not in refs:
                bad.append(f"{o['metadata']['name']}/{c['name']}: image {c['image']} is none the values name "
                           f"({', '.join(sorted(refs))})")
    return bad


def guaranteed_qos(objs) -> list[str]:
    """Every Triton pod is Guaranteed: cpu and memory requests equal limits in every container."""
    bad = []
    for d in apps(objs, "triton"):
        for c in containers(d):
            res = c.get("resources", {})
            for r in ("cpu", "memory"):
                if res.get("requests", {}).get(r) is None or res.get("requests", {}).get(r) != res.get("limits", {}).get(r):
                    bad.append(f"{d['metadata']['name']}/{c['name']}: {r} request != limit (not Guaranteed QoS)")
    return bad


def prometheus_wiring(objs, values: dict) -> list[str]:
    """KEDA asks the configured Prometheus; its operator release picks the monitors and rules up."""
    prom, bad = values["prometheus"], []
    for o in find(objs, "ServiceMonitor") + find(objs, "PrometheusRule"):
        if o["metadata"].get("labels", {}).get("release") != prom["release"]:
            bad.append(f"{o['kind']} {o['metadata']['name']}: release label "
                       f"{o['metadata'].get('labels', {}).get('release')!r}, the values say {prom['release']!r}")
    for so in find(objs, "ScaledObject"):
        for t in so["spec"]["triggers"]:
            if t["type"] == "prometheus" and t["metadata"].get("serverAddress") != prom["url"]:
                bad.append(f"ScaledObject {so['metadata']['name']} asks {t['metadata'].get('serverAddress')}, "
                           f"the values say {prom['url']}")
    return bad


CACHE_ENV = "VISIONSERVE_RESPONSE_CACHE_BYTES"
_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "K": 10**3, "M": 10**6, "G": 10**9}


def _bytes(quantity: str) -> int:
    for suffix, mult in _UNITS.items():
        if str(quantity).endswith(suffix):
            return int(float(str(quantity)[: -len(suffix)]) * mult)
    return int(quantity)


def response_cache(objs, values: dict) -> list[str]:
    """Every Triton pool (cpu and each GPU kind) runs the response cache the values set, and
    it fits its pod: at most a quarter of the container's memory limit (the cache is Triton's
    own memory, beside the models and the python backend's shared memory)."""
    from serving.tritonserver import MIN_RESPONSE_CACHE_BYTES

    want, bad = str(values["tritonResponseCacheBytes"]), []
    for d in apps(objs, "triton"):
        c = container(d, "triton")
        have = env(c).get(CACHE_ENV)
        name = d["metadata"]["name"]
        if have != want:
            bad.append(f"{name}: {CACHE_ENV}={have!r}, the values say {want!r}")
            continue
        size = int(have)
        if 0 < size < MIN_RESPONSE_CACHE_BYTES:
            bad.append(f"{name}: a response cache of {size} bytes is refused at start (0, or >= 1 MiB)")
        limit = c.get("resources", {}).get("limits", {}).get("memory")
        if size and limit and size > _bytes(limit) // 4:
            bad.append(f"{name}: a response cache of {size} bytes is over a quarter of its memory limit {limit}")
    return bad
