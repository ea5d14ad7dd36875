"""The runbook: one ordered list, the same in docs/deploy.md and k8s/README.md, whose commands
name render roots, Jobs and Secrets that exist, in the order the issue fixed (namespace ->
Secrets -> PVC -> pre-flight (wait) -> plan build per GPU kind (wait) -> workloads ->
rollout status), with a troubleshooting table for the failures a first rollout meets."""
from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import REPO_ROOT
from tests.unit.k8s_policy import containers, find, jobs, pod_spec, workloads
from tests.unit.k8s_render import ROOTS, render, scenario, values

DOCS = (REPO_ROOT / "docs" / "deploy.md", REPO_ROOT / "k8s" / "README.md")
BLOCK = re.compile(r"<!-- runbook[^>]*-->\n(.*?)<!-- /runbook -->", re.S)
ORDER = ["setup", "secrets", "plan-store", "preflight apply", "preflight wait", "plan-build apply",
         "plan-build wait", "workloads", "rollout status"]


def runbook(path) -> str:
    found = BLOCK.findall(path.read_text())
    assert len(found) == 1, f"{path}: want one runbook block, found {len(found)}"
    return found[0]


def commands(text: str) -> list[list[str]]:
    """The kubectl commands of the runbook's code blocks, in order (continuations joined)."""
    out = []
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("kubectl"):
                out.append(shlex.split(line.replace('"$(openssl rand -hex 16)"', "RANDOM")))
    return out


def step(cmd: list[str]) -> str | None:
    text = " ".join(cmd)
    if "create secret" in text:
        return "secrets"
    if "rollout status" in text:
        return "rollout status"
    if cmd[1] == "apply":
        root = cmd[cmd.index("-k") + 1].removeprefix("k8s/")
        return {"setup": "setup", "plan-store": "plan-store", "storage-preflight": "preflight apply",
                "plan-build": "plan-build apply"}.get(root, "workloads")
    if cmd[1:4] == ["-n", "visionserve", "wait"]:
        return "preflight wait" if "plan-store-preflight" in text else "plan-build wait"
    return None


def test_the_runbook_is_the_same_in_both_documents():
    first, second = (runbook(p) for p in DOCS)
    assert first == second, "docs/deploy.md and k8s/README.md carry different runbooks"


def test_the_steps_come_in_order():
    seen = [s for s in (step(c) for c in commands(runbook(DOCS[0]))) if s]
    assert [s for i, s in enumerate(seen) if s not in seen[:i]] == ORDER, seen


def test_the_order_check_sees_a_swap():
    text = runbook(DOCS[0])
    swapped = text.replace("kubectl apply -k k8s/plan-store", "kubectl apply -k k8s/PLACEHOLDER").replace(
        "kubectl apply -k k8s/plan-build", "kubectl apply -k k8s/plan-store").replace(
        "kubectl apply -k k8s/PLACEHOLDER", "kubectl apply -k k8s/plan-build")
    seen = [s for s in (step(c) for c in commands(swapped)) if s]
    assert [s for i, s in enumerate(seen) if s not in seen[:i]] != ORDER


def test_every_command_names_what_renders():
    cmds = commands(runbook(DOCS[0]))
    for c in cmds:
        if c[1] == "apply":
            assert c[c.index("-k") + 1].removeprefix("k8s/") in ROOTS, c
        for arg in c:
            if arg.startswith("job/"):
                assert any(j["metadata"]["name"] == arg[4:] for r in ROOTS for j in find(render(r), "Job")), c
            if arg.startswith("app.kubernetes.io/name="):
                name = arg.split("=", 1)[1]
                assert any(jobs(render(r), name) for r in ROOTS), c
            if arg.startswith("app.kubernetes.io/part-of="):
                assert all(d["metadata"]["labels"].get("app.kubernetes.io/part-of") == arg.split("=", 1)[1]
                           for d in find(scenario("gpu"), "Deployment")), c


@pytest.mark.parametrize("name", ["gpu", "cpu"])
def test_the_secrets_step_creates_every_secret_the_pods_need(name):
    created = {}
    for c in commands(runbook(DOCS[0])):
        if "secret" in c and "create" in c:
            kind, secret = c[c.index("secret") + 1], c[c.index("secret") + 2]
            keys = {a.split("=", 1)[1].split("=", 1)[0] for a in c if a.startswith(("--from-literal=", "--from-file="))}
            created[secret] = (kind, keys)
    objs = scenario(name)
    needed = {}
    for o in workloads(objs):
        for ctr in containers(o):
            for e in ctr.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    needed.setdefault(ref["name"], ("generic", set()))[1].add(ref["key"])
        for v in pod_spec(o).get("volumes", []):
            if "secret" in v:
                needed.setdefault(v["secret"]["secretName"], ("generic", set()))[1].update(
                    i["key"] for i in v["secret"].get("items", []))
    for sa in find(objs, "ServiceAccount"):
        for s in sa.get("imagePullSecrets", []):
            needed[s["name"]] = ("docker-registry", set())
    for ing in find(objs, "Ingress"):
        for t in ing["spec"].get("tls", []):
            needed[t["secretName"]] = ("tls", set())
    assert values()["pullSecret"] in needed
    for secret, (kind, keys) in needed.items():
        assert secret in created, f"the runbook never creates Secret {secret}"
        assert created[secret][0] == kind and keys <= created[secret][1], (secret, created[secret], keys)


def test_the_troubleshooting_table_covers_a_first_rollout():
    rows = [line for line in runbook(DOCS[0]).splitlines() if line.startswith("| ") and "---" not in line]
    text = "\n".join(rows)
    for symptom in ("`Pending`", "ImagePullBackOff", "Init:CrashLoopBackOff", "plan differs from ONNX Runtime",
                    "driver", "Insufficient", "DiskPressure"):
        assert symptom in text, f"no troubleshooting row for {symptom}"
    assert all(len([c for c in r.split("|") if c.strip()]) == 3 for r in rows[1:]), "a row lacks symptom/cause/fix"
