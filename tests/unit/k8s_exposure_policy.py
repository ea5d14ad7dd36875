"""Policy of what is reachable, over a scenario's render (see tests/unit/k8s_policy.py).

The gateway's metrics on their own port and Service, never the traffic Service's; its docs
off; the edge (Ingress): TLS, a body limit at least the gateway's, a rate limit; the
Secrets every pod needs are required (a typo fails the start, it does not hand out a random
key); Triton's restricted APIs left to the image; NetworkPolicies: default deny, the
Ingress controller's namespace -> gateway API only, gateway -> Triton gRPC only,
Prometheus's namespace -> metrics ports only, plan-build Jobs -> the API server only, DNS
on port 53 in a way that works with NodeLocal DNSCache.
"""
from __future__ import annotations

import ipaddress
import re

from tests.unit.k8s_policy import (GATEWAY_HTTP, GATEWAY_METRICS, TRITON_GRPC, TRITON_METRICS, app, apps, container,
                                   containers, env, find, matches, pod_labels, pod_spec, port_numbers, resolve_port,
                                   workloads)

DNS_CACHE_IP = "169.254.20.10"          # NodeLocal DNSCache's default link-local address
_QTY = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def gateway_exposure(objs) -> list[str]:
    bad = []
    gw = app(objs, "gateway")
    c = container(gw)
    ports, e = port_numbers(c), env(c)
    if ports.get("http") != GATEWAY_HTTP or ports.get("metrics") != GATEWAY_METRICS:
        bad.append(f"gateway ports {ports}, want http {GATEWAY_HTTP} and metrics {GATEWAY_METRICS}")
    if str(e.get("VISIONSERVE_GATEWAY_METRICS_PORT")) != str(GATEWAY_METRICS):
        bad.append("VISIONSERVE_GATEWAY_METRICS_PORT does not name the metrics port")
    if str(e.get("VISIONSERVE_GATEWAY_DOCS", "false")).lower() not in ("false", "0", "no", ""):
        bad.append("the gateway serves /docs and /openapi.json")
    traffic = find(objs, "Service", "gateway")
    if traffic is None or any(resolve_port(p, c) != GATEWAY_HTTP for p in traffic["spec"]["ports"]):
        bad.append("the traffic Service gateway routes something besides the API port")
    sm = find(objs, "ServiceMonitor", "gateway")
    scraped = [s for s in find(objs, "Service") if matches(s["spec"].get("selector", {}), pod_labels(gw))
               and sm and matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
    if len(scraped) != 1 or scraped[0] is traffic:
        bad.append(f"the gateway ServiceMonitor selects {[s['metadata']['name'] for s in scraped]}, not one metrics Service")
    elif {resolve_port(p, c) for p in scraped[0]["spec"]["ports"]} != {GATEWAY_METRICS} or \
            {ep["port"] for ep in sm["spec"]["endpoints"]} != {"metrics"}:
        bad.append("the gateway is not scraped on its metrics port alone")
    return bad


def _bytes(size: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)", str(size).strip().lower())
    return int(m.group(1)) * _QTY[m.group(2)] if m else 0


def edge(objs, max_body_bytes: int) -> list[str]:
    """An Ingress to the gateway's API with TLS for its host, a rate limit, and a body limit
    no smaller than the gateway's (ingress-nginx refuses more than 1 MiB by default)."""
    ingresses = find(objs, "Ingress")
    if not ingresses:
        return ["no Ingress example routes to the gateway"]
    bad = []
    for ing in ingresses:
        name, ann = ing["metadata"]["name"], ing["metadata"].get("annotations", {})
        backends = [p["backend"]["service"] for r in ing["spec"].get("rules", []) for p in r["http"]["paths"]]
        if any(b["name"] != "gateway" or b["port"].get("name", b["port"].get("number")) not in ("http", 80)
               for b in backends) or not backends:
            bad.append(f"Ingress {name} routes {backends}, want the gateway Service's API port only")
        hosts = {r.get("host") for r in ing["spec"].get("rules", [])}
        tls_hosts = {h for t in ing["spec"].get("tls", []) if t.get("secretName") for h in t.get("hosts", [])}
        if not hosts <= tls_hosts:
            bad.append(f"Ingress {name} serves {sorted(hosts - tls_hosts)} without TLS")
        limit = _bytes(ann.get("nginx.ingress.kubernetes.io/proxy-body-size", "1m"))
        if limit < max_body_bytes:
            bad.append(f"Ingress {name} accepts bodies up to {limit} bytes, under the gateway's max_body_bytes "
                       f"{max_body_bytes}: it refuses what the gateway serves")
        if not any(k.startswith("nginx.ingress.kubernetes.io/limit-r") for k in ann):
            bad.append(f"Ingress {name} has no rate limit per client")
    return bad


def secrets_required(objs) -> list[str]:
    """Every Secret a pod reads is required; the gateway reads its API keys from one."""
    bad = []
    for o in workloads(objs):
        name = o["metadata"]["name"]
        for c in containers(o):
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref is not None and ref.get("optional"):
                    bad.append(f"{name}/{c['name']}: Secret {ref['name']} is optional: a typo gives every pod its own "
                               "random key, silently")
        for v in pod_spec(o).get("volumes", []):
            if "secret" in v and v["secret"].get("optional"):
                bad.append(f"{name}: Secret volume {v['secret']['secretName']} is optional")
    gw = app(objs, "gateway")
    keys = env(container(gw)).get("VISIONSERVE_GATEWAY_API_KEYS_FILE")
    secret_mounts = {m["mountPath"] for m in container(gw).get("volumeMounts", []) if m.get("readOnly") and any(
        v["name"] == m["name"] and v.get("secret", {}).get("secretName") == "gateway-api-keys"
        for v in pod_spec(gw).get("volumes", []))}
    if not keys or not any(str(keys).startswith(p + "/") for p in secret_mounts):
        bad.append("the gateway's API keys file is not read from the gateway-api-keys Secret")
    return bad


def triton_admin(objs) -> list[str]:
    """Triton's restricted APIs are the image's (no flag override); its key comes from a Secret."""
    bad = []
    for o in workloads(objs):
        for c in containers(o):
            text = " ".join(c.get("args", []) + c.get("command", []) + [str(v) for v in env(c).values()])
            if "restricted-api" in text or "restricted-protocol" in text:
                bad.append(f"{o['metadata']['name']}/{c['name']} overrides Triton's restricted APIs")
            for e in c.get("env", []):
                if e["name"] == "VISIONSERVE_TRITON_ADMIN_KEY" and "secretKeyRef" not in (e.get("valueFrom") or {}):
                    bad.append(f"{o['metadata']['name']}/{c['name']}: the admin key is not from a Secret")
    for d in apps(objs, "triton"):
        if "VISIONSERVE_TRITON_ADMIN_KEY" not in env(container(d, "triton")):
            bad.append(f"{d['metadata']['name']}: Triton's admin key is not set from the triton-admin Secret")
    return bad


def _rules(objs, labels: dict, direction: str):
    """(policy name, rule) for every `direction` rule of a policy selecting pods with `labels`."""
    for p in find(objs, "NetworkPolicy"):
        sel = p["spec"]["podSelector"]
        if sel == {} or matches(sel, labels):
            for r in p["spec"].get(direction, []):
                yield p["metadata"]["name"], r


def _ports(rule) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}


def _namespace(peer: dict) -> str | None:
    return peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")


def network_policies(objs, values: dict) -> list[str]:
    monitoring, edge_ns = values["prometheus"]["namespace"], values["ingress"]["controllerNamespace"]
    bad = []
    deny = find(objs, "NetworkPolicy", "default-deny")
    if deny is None or deny["spec"]["podSelector"] != {} or set(deny["spec"]["policyTypes"]) != {"Ingress", "Egress"} \
            or deny["spec"].get("ingress") or deny["spec"].get("egress"):
        bad.append("no default deny of ingress and egress for every pod")
    triton, gateway = pod_labels(apps(objs, "triton")[0]), pod_labels(app(objs, "gateway"))
    for name, r in _rules(objs, triton, "ingress"):
        for peer in r.get("from") or [None]:
            if peer is None:
                bad.append(f"{name}: admits anyone to Triton")
            elif "podSelector" in peer and "namespaceSelector" not in peer:
                if not matches(peer["podSelector"], gateway):
                    bad.append(f"{name}: admits pods other than the gateway to Triton")
                elif _ports(r) != {("TCP", TRITON_GRPC)}:
                    bad.append(f"{name}: the gateway reaches Triton on {sorted(_ports(r))}, want gRPC {TRITON_GRPC} only")
            elif _namespace(peer) == monitoring and "podSelector" not in peer:
                if _ports(r) != {("TCP", TRITON_METRICS)}:
                    bad.append(f"{name}: Prometheus reaches Triton on {sorted(_ports(r))}, want metrics only")
            else:
                bad.append(f"{name}: admits {peer} to Triton")
    for name, r in _rules(objs, gateway, "egress"):
        if _ports(r) <= {("UDP", 53), ("TCP", 53)}:
            continue                       # DNS (checked by dns_egress)
        to = r.get("to", [])
        if not to or any(not matches(p.get("podSelector", {}), triton) or "namespaceSelector" in p for p in to) \
                or _ports(r) != {("TCP", TRITON_GRPC)}:
            bad.append(f"{name}: the gateway may send {sorted(_ports(r))} to {to or 'anyone'}, want Triton gRPC only")
    for name, r in _rules(objs, gateway, "ingress"):
        ports, peers = _ports(r), r.get("from") or []
        allowed = {("TCP", GATEWAY_HTTP): edge_ns, ("TCP", GATEWAY_METRICS): monitoring}
        for port in ports or {("any", 0)}:
            want = allowed.get(port)
            if want is None or not peers or any(_namespace(p) != want or "podSelector" in p for p in peers):
                bad.append(f"{name}: the gateway's port {port[1] or 'every port'} is open beyond the "
                           f"{want or 'nobody'} namespace")
    for p in find(objs, "NetworkPolicy"):
        for r in p["spec"].get("egress", []):
            if _ports(r) & {("TCP", 443), ("TCP", 6443)} and pod_labels_of(p) != {"app.kubernetes.io/name": "triton-plans"}:
                bad.append(f"{p['metadata']['name']}: opens the API server's ports to pods besides the plan-build Jobs")
    return bad


def pod_labels_of(policy: dict) -> dict:
    return policy["spec"]["podSelector"].get("matchLabels", {})


def dns_egress(objs) -> list[str]:
    """Every pod may resolve names: UDP and TCP 53, to a peer set NodeLocal DNSCache is in."""
    rules = [r for name, r in _rules(objs, {"any": "pod"}, "egress") if ("UDP", 53) in _ports(r)]
    if not rules:
        return ["no egress rule lets every pod resolve names (UDP 53)"]
    bad = []
    for r in rules:
        if _ports(r) != {("UDP", 53), ("TCP", 53)}:
            bad.append(f"the DNS rule opens {sorted(_ports(r))}, want UDP and TCP 53 only")
        to = r.get("to")
        cache_ok = not to or any("ipBlock" in p and ipaddress.ip_address(DNS_CACHE_IP) in
                                 ipaddress.ip_network(p["ipBlock"]["cidr"]) for p in to)
        if not cache_ok:
            bad.append("DNS egress only to selected pods/namespaces: NodeLocal DNSCache (hostNetwork, "
                       f"{DNS_CACHE_IP} or the intercepted kube-dns ClusterIP) would be blocked")
    return bad
