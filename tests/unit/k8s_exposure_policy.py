"""Policy of what is reachable, over rendered manifests (see tests/unit/k8s_policy.py).

The gateway's metrics on their own port and Service, never the traffic Service's; its docs
off; Triton's restricted APIs left to the image (no override) and its admin key from a
Secret; NetworkPolicies: default deny, gateway -> Triton gRPC only, Prometheus -> metrics
ports only, DNS on port 53 in a way that works with NodeLocal DNSCache.
"""
from __future__ import annotations

import ipaddress

from tests.unit.k8s_policy import (GATEWAY_HTTP, GATEWAY_METRICS, TRITON_GRPC, TRITON_METRICS, app, container, env,
                                   find, matches, pod_labels, port_numbers, resolve_port, services_of, workloads)

DNS_CACHE_IP = "169.254.20.10"          # NodeLocal DNSCache's default link-local address
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}


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
    scraped = [s for s in services_of(objs, gw) if sm and matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
    if len(scraped) != 1 or scraped[0] is traffic:
        bad.append(f"the gateway ServiceMonitor selects {[s['metadata']['name'] for s in scraped]}, not one metrics Service")
    elif {resolve_port(p, c) for p in scraped[0]["spec"]["ports"]} != {GATEWAY_METRICS} or \
            {ep["port"] for ep in sm["spec"]["endpoints"]} != {"metrics"}:
        bad.append("the gateway is not scraped on its metrics port alone")
    return bad


def triton_admin(objs) -> list[str]:
    """Triton's restricted APIs are the image's (no flag override); its key comes from a Secret."""
    bad = []
    for o in workloads(objs):
        for c in o["spec"]["template"]["spec"].get("initContainers", []) + o["spec"]["template"]["spec"]["containers"]:
            text = " ".join(c.get("args", []) + c.get("command", []) + [str(v) for v in env(c).values()])
            if "restricted-api" in text or "restricted-protocol" in text:
                bad.append(f"{o['metadata']['name']}/{c['name']} overrides Triton's restricted APIs")
            for e in c.get("env", []):
                if e["name"] == "VISIONSERVE_TRITON_ADMIN_KEY" and "secretKeyRef" not in (e.get("valueFrom") or {}):
                    bad.append(f"{o['metadata']['name']}/{c['name']}: the admin key is not from a Secret")
    triton = container(app(objs, "triton"), "triton")
    if "VISIONSERVE_TRITON_ADMIN_KEY" not in env(triton):
        bad.append("Triton's admin key is not set from the triton-admin Secret")
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


def network_policies(objs) -> list[str]:
    bad = []
    deny = find(objs, "NetworkPolicy", "default-deny")
    if deny is None or deny["spec"]["podSelector"] != {} or set(deny["spec"]["policyTypes"]) != {"Ingress", "Egress"} \
            or deny["spec"].get("ingress") or deny["spec"].get("egress"):
        bad.append("no default deny of ingress and egress for every pod")
    triton, gateway = pod_labels(app(objs, "triton")), pod_labels(app(objs, "gateway"))
    for name, r in _rules(objs, triton, "ingress"):
        peers = r.get("from")
        if not peers:
            bad.append(f"{name}: admits anyone to Triton")
            continue
        for peer in peers:
            if "podSelector" in peer and "namespaceSelector" not in peer:
                if not matches(peer["podSelector"], gateway):
                    bad.append(f"{name}: admits pods other than the gateway to Triton")
                elif _ports(r) != {("TCP", TRITON_GRPC)}:
                    bad.append(f"{name}: the gateway reaches Triton on {sorted(_ports(r))}, want gRPC {TRITON_GRPC} only")
            elif peer.get("namespaceSelector", {}).get("matchLabels") == MONITORING and "podSelector" not in peer:
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
        ports = _ports(r)
        if ("TCP", GATEWAY_METRICS) in ports and not (
                r.get("from") and all(p.get("namespaceSelector", {}).get("matchLabels") == MONITORING
                                      for p in r["from"])):
            bad.append(f"{name}: the gateway's metrics port is open beyond the monitoring namespace")
        if not ports:
            bad.append(f"{name}: admits every port of the gateway")
    return bad


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
