"""The plan store as the cluster uses it: a parity waiver per model (explicit, keyed apart,
recorded, announced), image key records and gc that never removes a key of a deployed
image, the Kubernetes API read that says which images are deployed, the driver check."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy import cluster, driver, entrypoint, plans
from deploy.errors import StartupError
from export.engines import parity
from export.engines.build import Options
from export.engines.errors import EngineError
from export.engines.metadata import read_sidecar
from export.engines.request import BuildOutput
from export.engines.store import PlanKey, PlanStore
from tests.unit.test_deploy_entrypoint import H100, host, image, run  # noqa: F401  (host is a fixture)
from tests.support.engines import tinyface_onnx
from tests.unit.test_engines_store import StandInBuilder


class WrongTinyface(StandInBuilder):
    """Compiles tinyface into a plan that disagrees with its ONNX (other weights): parity fails."""

    def __call__(self, req):
        if req.model != "tinyface":
            return super().__call__(req)
        self.calls.append(req.model)
        return BuildOutput(tinyface_onnx(seed=77).SerializeToString(), self.version, "stand-in")


@pytest.fixture()
def wrong_builder(host, monkeypatch):
    import export.engines.builders as builders

    b = WrongTinyface()
    monkeypatch.setattr(builders, "pick_builder", lambda name: (b, parity.onnxrt_runner))
    return b


def test_a_parity_failure_blocks_until_waived_for_that_model_and_the_waiver_is_never_silent(
        wrong_builder, host, tmp_path, monkeypatch, caplog, capsys):
    store, src, served = tmp_path / "store", image(tmp_path / "img"), tmp_path / "served"
    assert run("build", store, src, served) == 2
    assert "tinyface: plan differs from ONNX Runtime" in caplog.text and "VISIONSERVE_PARITY_WAIVE" in caplog.text
    assert not [k for k in PlanStore(store).keys() if k[1] == "tinyface"]        # nothing published for it
    checked_key = [json.loads(r) for r in _keys(store, src, served, capsys)][1]["key"]

    monkeypatch.setenv("VISIONSERVE_PARITY_WAIVE", "tinyface")
    assert run("build", store, src, served) == 0
    rows = [json.loads(r) for r in _keys(store, src, served, capsys)]
    waived = rows[1]
    assert waived["parity_waived"] and waived["published"] and waived["key"] != checked_key   # a key of its own
    assert not rows[0]["parity_waived"]                                          # tinydet still checked
    plan = store / "plans" / waived["key"] / "model.plan"
    sidecar = read_sidecar(plan)
    assert sidecar.parity["waived"] is True and "WAIVED" in sidecar.parity["figures"]

    caplog.clear()
    monkeypatch.setenv("VISIONSERVE_PLANS", "require")
    assert run("serve", store, src, served) == 0
    assert any(r.levelname == "WARNING" and "parity WAIVED" in r.message and "tinyface" in r.message
               for r in caplog.records)
    monkeypatch.delenv("VISIONSERVE_PARITY_WAIVE")                # lifting the waiver never serves the unchecked plan
    assert run("serve", store, src, served) == 2 and checked_key.rsplit("/", 1)[1] in caplog.text
    monkeypatch.setenv("VISIONSERVE_PARITY_WAIVE", "nosuchmodel")
    assert run("build", store, src, served) == 2
    assert "parity waived for nosuchmodel, which this image builds no plan for" in caplog.text


def _keys(store, src, served, capsys):
    capsys.readouterr()
    assert run("keys", store, src, served) == 0
    return capsys.readouterr().out.splitlines()


# -- gc and the deployed images ------------------------------------------------------------------
def _build(store, version_root, seed, image_ref, monkeypatch):
    src = image(version_root, seed=seed)
    monkeypatch.setenv("VISIONSERVE_IMAGE", image_ref)
    assert run("build", store, src, version_root / "served") == 0
    return {json.loads(line)["model"]: json.loads(line)["key"] for line in _lines(store, src)}


def _lines(store, src):
    rows = plans.plan_keys(store, src, plans.Settings.from_env())
    return [json.dumps(r) for r in rows]


def test_gc_never_removes_a_key_a_deployed_image_uses(host, tmp_path, monkeypatch, caplog):
    store = tmp_path / "store"
    v1 = _build(store, tmp_path / "v1", 0, "reg/triton@sha256:" + "1" * 64, monkeypatch)
    v2 = _build(store, tmp_path / "v2", 9, "reg/triton@sha256:" + "2" * 64, monkeypatch)
    v3 = _build(store, tmp_path / "v3", 11, "reg/triton@sha256:" + "3" * 64, monkeypatch)
    assert len({v1["tinyface"], v2["tinyface"], v3["tinyface"]}) == 3 and v1["tinydet"] == v3["tinydet"]
    s = PlanStore(store)
    # v1 still runs somewhere (a paused rollout, a rollback target): keep=1 would drop it by age
    s.gc(1, lambda m: None, deployed={"reg/triton@sha256:" + "1" * 64})
    left = {f"{g}/{m}/{n}" for g, m, n in s.keys()}
    assert {v1["tinyface"], v3["tinyface"], v1["tinydet"]} <= left and v2["tinyface"] not in left
    with pytest.raises(EngineError, match="gc removed nothing: deployed image"):
        s.gc(1, lambda m: None, deployed={"reg/triton:handmade"})
    assert {f"{g}/{m}/{n}" for g, m, n in s.keys()} == left
    gone = PlanKey("tinyface", "nvidia-h100-80gb-hbm3-sm90", "10.3.0", "f" * 64)
    s.record_image("reg/triton:long-gone", [gone])                 # an image none of whose keys is left
    s.gc(1, lambda m: None, deployed=set())                        # nothing deployed: recency alone
    assert v1["tinyface"] not in {f"{g}/{m}/{n}" for g, m, n in s.keys()}
    records = {json.loads(r.read_text())["image"] for r in (store / "images").glob("*/*.json")}
    assert records == {"reg/triton@sha256:" + c * 64 for c in "123"}    # all share tinydet's live key


def test_the_jobs_gc_asks_the_cluster_and_removes_nothing_when_it_cannot(host, tmp_path, monkeypatch, caplog):
    store = tmp_path / "store"
    ref1, ref2 = "reg/triton@sha256:" + "1" * 64, "reg/triton@sha256:" + "2" * 64
    v1 = _build(store, tmp_path / "v1", 0, ref1, monkeypatch)
    _build(store, tmp_path / "v2", 9, ref2, monkeypatch)
    monkeypatch.setenv("VISIONSERVE_DEPLOYED_IMAGES", "kubernetes")

    def unreachable():
        raise cluster.ClusterError("cannot list replicasets: connection refused")

    monkeypatch.setattr(cluster, "deployed_images", unreachable)
    before = PlanStore(store).keys()
    assert entrypoint.main(["gc", "--store", str(store), "--keep", "1"]) == 0
    assert PlanStore(store).keys() == before and "gc removed nothing: cannot list replicasets" in caplog.text
    monkeypatch.setattr(cluster, "deployed_images", lambda: {ref1})
    assert entrypoint.main(["gc", "--store", str(store), "--keep", "1"]) == 0
    assert v1["tinyface"] in {f"{g}/{m}/{n}" for g, m, n in PlanStore(store).keys()}
    monkeypatch.setenv("VISIONSERVE_DEPLOYED_IMAGES", "helm")
    assert entrypoint.main(["gc", "--store", str(store), "--keep", "1"]) == 2


# -- which images are deployed: the Kubernetes API -------------------------------------------------
def _replicaset(*images, init=()):
    return {"spec": {"template": {"spec": {"containers": [{"name": "triton", "image": i} for i in images],
                                           "initContainers": [{"name": "plans", "image": i} for i in init]}}}}


class _Api(BaseHTTPRequestHandler):
    pages: dict = {}
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = self.pages.get(self.path.split("&continue=")[-1] if "&continue=" in self.path else "", None)
        if body is None or self.headers.get("Authorization") != "Bearer t0ken":
            self.send_response(403)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def api(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t0ken\n")
    (sa / "namespace").write_text("visionserve")
    _Api.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}", sa
    server.shutdown()
    server.server_close()


def test_deployed_images_come_from_every_triton_replicaset_page_by_page(api):
    url, sa = api
    _Api.pages = {"": {"items": [_replicaset("reg/t@sha256:a", init=["reg/t@sha256:a"])],
                       "metadata": {"continue": "p2"}},
                  "p2": {"items": [_replicaset("reg/t@sha256:b"), _replicaset("reg/t@sha256:a")],
                         "metadata": {}}}
    assert cluster.deployed_images(url, sa_dir=sa, timeout_s=5) == {"reg/t@sha256:a", "reg/t@sha256:b"}
    paths = [p for p, _ in _Api.seen]
    assert len(paths) == 2 and all(p.startswith("/apis/apps/v1/namespaces/visionserve/replicasets?") for p in paths)
    assert "labelSelector=app.kubernetes.io%2Fname%3Dtriton" in paths[0] and "continue=p2" in paths[1]


def test_the_api_read_fails_loudly(api, tmp_path):
    url, sa = api
    (sa / "token").write_text("wrong")
    _Api.pages = {"": {"items": []}}
    with pytest.raises(cluster.ClusterError, match="cannot list replicasets"):
        cluster.deployed_images(url, sa_dir=sa, timeout_s=5)
    with pytest.raises(cluster.ClusterError, match="automountServiceAccountToken"):
        cluster.deployed_images(url, sa_dir=tmp_path / "nothing", timeout_s=5)


# -- the driver ----------------------------------------------------------------------------------
def test_driver_versions_are_read_from_what_the_node_says():
    text = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U22)\n"
            "GCC version:  gcc version 12.2.0\n")
    assert driver.kernel_driver(text) == "580.95.05"
    assert driver.kernel_driver("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.216.01  Wed Oct\n") == "535.216.01"
    assert driver.kernel_driver("garbage") is None
    assert driver.image_cuda("13.1.0.036") == (13, 1) and driver.image_cuda("") is None


@pytest.mark.parametrize("supported, image_cuda, fails", [
    (13000, (13, 1), False),         # minor-version compatibility within CUDA 13
    (13010, (13, 1), False),
    (12090, (13, 1), True),          # an R575 driver: CUDA 12.9 at most
    (12020, (12, 9), False),         # CUDA 12 image on R535
    (None, (13, 1), False),          # no libcuda: the GPU lookup reports it
    (12020, None, False),            # not an NGC image: nothing to compare
])
def test_the_driver_check(supported, image_cuda, fails):
    if fails:
        with pytest.raises(StartupError, match="R580"):
            driver.check(supported, image_cuda, "575.57.08")
    else:
        driver.check(supported, image_cuda, "580.95.05")


def test_store_key_of_matches_what_ensure_publishes(tmp_path):
    """plan_keys (what `check` compares) and ensure (what the Job publishes) agree, waived or not."""
    store, src = PlanStore(tmp_path / "store"), image(tmp_path / "img")
    opts = Options(repository=src, default_plan=False, timing_cache_dir=store.timing_cache_dir(H100))
    for waive in (False, True):
        out = store.ensure("tinydet", H100, "10.3.0", opts, builder=StandInBuilder(), candidate=parity.onnxrt_runner,
                           log=lambda m: None, waive_parity=waive)
        assert store.key_of("tinydet", H100, "10.3.0", opts, waive)[0] == out.key and store.published(out.key)
