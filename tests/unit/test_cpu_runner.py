"""pipelines/cpu_runner.py on a tiny graph: both runtimes agree, fallback to ONNX Runtime says why,
a graph lacking the config's tensors fails loudly (no runtime can fix a stale export)."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines import cpu_runner
from pipelines.cpu_runner import GraphMismatch, RunnerError, open_runner

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """uint8 [B,4,4,3] -> float (x / 255 * w), like the project's normalising first layers."""
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [3], [0.5, 1.0, 2.0])
    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["f", "s"], ["g"]),
             helper.make_node("Mul", ["g", "w"], ["scaled"])]
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [255.0])
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 4, 4, 3])],
                          [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 4, 4, 3])], [w, s])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path_factory.mktemp("g") / "model.onnx"
    onnx.save(m, str(path))
    return path


def frames(b=3):
    return np.random.default_rng(0).integers(0, 256, (b, 4, 4, 3), dtype=np.uint8)


def test_both_runtimes_agree_at_any_batch(graph):
    pytest.importorskip("openvino")
    ort = open_runner(graph, ["scaled"], "onnxruntime", "f32", threads=1, inputs=["images"])
    ov = open_runner(graph, ["scaled"], "openvino", "f32", threads=2, inputs=["images"])
    assert (ort.runtime, ov.runtime) == ("onnxruntime", "openvino") and not ov.fallback_reason
    assert ov.description.startswith("openvino ") and "f32, 2 threads" in ov.description
    for b in (1, 3, 8):
        x = frames(b)
        want = x.astype(np.float32) / 255 * np.array([0.5, 1.0, 2.0], np.float32)
        np.testing.assert_allclose(ort.run({"images": x})[0], want, rtol=1e-6)
        np.testing.assert_allclose(ov.run({"images": x})[0], want, rtol=1e-6)


def test_openvino_failure_falls_back_to_onnxruntime_and_says_why(graph, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("Cannot compile: unsupported layer Frobnicate")

    monkeypatch.setattr(cpu_runner, "_openvino", broken)
    with caplog.at_level("WARNING", logger="visionserve.cpu"):
        r = open_runner(graph, ["scaled"], "openvino", "bf16", threads=2, inputs=["images"])
    assert (r.runtime, r.precision) == ("onnxruntime", "f32")
    assert "Frobnicate" in r.fallback_reason and "fallback" in r.description
    assert "running ONNX Runtime f32 instead" in caplog.text
    monkeypatch.setattr(cpu_runner, "_openvino", lambda *a, **k: (_ for _ in ()).throw(ImportError("no openvino")))
    assert "not installed" in open_runner(graph, ["scaled"], inputs=["images"]).fallback_reason


def test_stale_graphs_and_bad_settings_fail_loudly(graph, tmp_path):
    for runtime in ("onnxruntime", "openvino"):
        with pytest.raises(GraphMismatch, match="lacks the config's tensors"):
            open_runner(graph, ["boxes"], runtime, "f32", inputs=["images"])
    with pytest.raises(RunnerError, match="does not exist"):
        open_runner(tmp_path / "none.onnx", ["scaled"])
    with pytest.raises(RunnerError, match="f32 only"):
        open_runner(graph, ["scaled"], "onnxruntime", "bf16")
    with pytest.raises(RunnerError, match="unknown CPU runtime"):
        open_runner(graph, ["scaled"], "tvm")


def test_execution_slots_let_only_permits_run_at_once(tmp_path):
    """Two processes' worth of holders: with one permit the second waits until the first lets go."""
    import multiprocessing as mp
    import time

    from pipelines.cpu_runner import ExecutionSlots

    def hold(folder, seconds, q):
        with ExecutionSlots(folder, 1):
            q.put(("in", time.monotonic()))
            time.sleep(seconds)
            q.put(("out", time.monotonic()))

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=hold, args=(tmp_path, 0.3, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    events = sorted((q.get(timeout=5) for _ in range(4)), key=lambda e: e[1])
    assert [e[0] for e in events] == ["in", "out", "in", "out"]      # never two inside at once
    with ExecutionSlots(tmp_path, 2) as a, ExecutionSlots(tmp_path, 2) as b:   # two permits: both enter
        assert a._held != b._held
