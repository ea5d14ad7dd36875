"""docker/compose.yaml: the one-GPU-host stack is complete, hardened, exposes the API only, and
its Prometheus alerts are the Kubernetes ones (k8s/base/monitoring.yaml)."""
from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from tests.conftest import REPO_ROOT

DOCKER = REPO_ROOT / "docker"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _bytes(size: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)b?", str(size).lower())
    assert m, size
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)]


def test_compose_services_healthchecks_limits(compose):
    services = compose["services"]
    assert set(services) == {"triton-0", "triton-1", "gateway", "prometheus", "grafana"}
    for name, svc in services.items():
        hc = svc.get("healthcheck", {})
        assert hc.get("test") and hc.get("interval") and hc.get("retries"), f"{name}: no healthcheck"
        assert _bytes(svc["deploy"]["resources"]["limits"]["memory"]) > 0, f"{name}: no memory limit"
        assert svc.get("read_only") is True and svc.get("cap_drop") == ["ALL"], f"{name}: not hardened"
        assert "no-new-privileges:true" in svc.get("security_opt", [])
        for port in svc.get("ports", []):
            if name != "gateway":     # only the gateway is public
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if "image" in svc and "build" not in svc:
            assert not svc["image"].endswith(":latest") and ":" in svc["image"], f"{name}: unpinned image"


def test_compose_one_triton_per_gpu_and_the_gateway_sees_them_all(compose):
    services = compose["services"]
    tritons = {n: s for n, s in services.items() if n.startswith("triton-")}
    gpus = []
    for name, triton in tritons.items():
        assert _bytes(triton["shm_size"]) >= 1 << 30      # python backend tensors pass through /dev/shm
        (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        gpus += device["device_ids"]
        # the container sees its one GPU as device 0: a host index here would hide it
        assert "CUDA_VISIBLE_DEVICES" not in triton.get("environment", {}), name
        assert triton["build"]["target"] == "gpu" and (REPO_ROOT / triton["build"]["dockerfile"]).is_file()
        assert "engines:/var/cache/visionserve" in triton["volumes"] and "engines" in compose["volumes"]
        assert "triton" in triton["networks"]["default"]["aliases"]
        assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert sorted(gpus) == [str(i) for i in range(len(tritons))], gpus   # one GPU each
    assert "profiles" not in tritons["triton-0"] and tritons["triton-1"]["profiles"] == ["gpu1"]
    published = [p.split(":")[1] for t in tritons.values() for p in t["ports"]]
    assert len(published) == len(set(published)), "two Tritons publish the same host port"
    gateway = services["gateway"]
    assert gateway["environment"]["VISIONSERVE_GATEWAY_TRITON_GRPC"] == "dns:///triton:8001"
    assert gateway["depends_on"]["triton-0"]["condition"] == "service_started"   # starts without Triton
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])


def test_compose_bind_mounts_exist_and_dashboard_is_provisioned(compose):
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DOCKER / src).exists(), f"{name}: mount source {src} missing"
    dashboards = DOCKER / "../perf/grafana"
    assert (dashboards / "visionserve.json").is_file(), "perf/grafana/visionserve.json (the perf dashboard) missing"
    json.loads((dashboards / "visionserve.json").read_text())
    grafana = compose["services"]["grafana"]
    assert "../perf/grafana:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/visionserve.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


def test_prometheus_scrapes_the_services(compose):
    cfg = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"triton", "gateway"}
    # every Triton container answers the alias `triton`: each one is scraped
    assert jobs["triton"]["dns_sd_configs"] == [{"names": ["triton"], "type": "A", "port": 8002,
                                                 "refresh_interval": "15s"}]
    assert jobs["gateway"]["static_configs"][0]["targets"] == ["gateway:8081"]     # its metrics port
    # every target is labelled as the cluster's are: the alert rules select namespace="visionserve"
    assert {"target_label": "namespace", "replacement": "visionserve"} in jobs["triton"]["relabel_configs"]
    assert jobs["gateway"]["static_configs"][0]["labels"] == {"namespace": "visionserve"}
    assert cfg["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def compose_exposure_violations(compose: dict, prometheus: dict) -> list[str]:
    """The gateway publishes its API only; /metrics on its own port, scraped by Prometheus on
    the compose network; docs off; every Triton gets one GPU it sees as device 0."""
    bad = []
    gateway = compose["services"]["gateway"]
    env = gateway.get("environment", {})
    if str(env.get("VISIONSERVE_GATEWAY_METRICS_PORT")) != "8081":
        bad.append("the gateway's metrics port is not 8081")
    if str(env.get("VISIONSERVE_GATEWAY_DOCS", "false")).lower() not in ("false", "0", ""):
        bad.append("the gateway serves /docs")
    if [str(p).rsplit(":", 1)[-1] for p in gateway.get("ports", [])] != ["8080"]:
        bad.append(f"the gateway publishes {gateway.get('ports')}, want its API (8080) only")
    targets = {t for j in prometheus["scrape_configs"] if j["job_name"] == "gateway"
               for c in j.get("static_configs", []) for t in c["targets"]}
    if targets != {"gateway:8081"}:
        bad.append(f"Prometheus scrapes the gateway at {sorted(targets)}, not its metrics port")
    for name, svc in compose["services"].items():
        if name.startswith("triton") and "CUDA_VISIBLE_DEVICES" in svc.get("environment", {}):
            bad.append(f"{name} sets CUDA_VISIBLE_DEVICES: its one GPU is device 0 in the container")
    return bad


@pytest.mark.parametrize("breaking, said", [
    (lambda c, p: c["services"]["gateway"]["ports"].append("8081:8081"), "want its API (8080) only"),
    (lambda c, p: c["services"]["gateway"]["environment"].update(VISIONSERVE_GATEWAY_DOCS="true"), "/docs"),
    (lambda c, p: c["services"]["gateway"]["environment"].pop("VISIONSERVE_GATEWAY_METRICS_PORT"), "not 8081"),
    (lambda c, p: p["scrape_configs"][1]["static_configs"][0].update(targets=["gateway:8080"]), "metrics port"),
    (lambda c, p: c["services"]["triton-1"].setdefault("environment", {}).update(CUDA_VISIBLE_DEVICES="1"),
     "CUDA_VISIBLE_DEVICES"),
], ids=["published", "docs", "port", "scrape", "cuda-visible-devices"])
def test_compose_exposure_policy(compose, breaking, said):
    prometheus = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    assert compose_exposure_violations(compose, prometheus) == []
    c, p = copy.deepcopy(compose), copy.deepcopy(prometheus)
    breaking(c, p)
    assert any(said in v for v in compose_exposure_violations(c, p))


def test_compose_alerts_are_the_kubernetes_alerts():
    """One set of alert rules: compose's file is a subset, verbatim, of the PrometheusRule."""
    compose_rules = yaml.safe_load((DOCKER / "prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    k8s = [d for d in yaml.safe_load_all((REPO_ROOT / "k8s/base/monitoring.yaml").read_text())
           if d and d["kind"] == "PrometheusRule"][0]
    k8s_rules = {r["alert"]: r for r in k8s["spec"]["groups"][0]["rules"]}
    names = {r["alert"] for r in compose_rules}
    assert names >= {"TritonQueueTimeHigh", "TritonErrorRateHigh", "TritonGpuMemoryNearFull", "TritonNotReady"}
    for rule in compose_rules:
        assert k8s_rules.get(rule["alert"]) == rule, f"{rule['alert']} differs between compose and k8s"
