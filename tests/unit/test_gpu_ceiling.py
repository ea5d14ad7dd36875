"""perf.gpu_ceiling on the CPU with tiny sizes: the same code path as on a GPU minus CUDA
graphs and autocast (those run in tests/gpu/test_gpu_ceiling.py where CUDA exists)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch", reason="the ceiling tool needs PyTorch (the export extra)")
pytest.importorskip("torchvision", reason="JPEG decode needs torchvision")

from perf import gpu_ceiling  # noqa: E402


def test_cpu_smoke_run_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert gpu_ceiling.main(["--device", "cpu", "--families", "face_align,clip_resize,scrfd", "--batches", "1,2",
                             "--iters", "1", "--warmup", "0", "--jpeg", "64x48", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    got = {(p["family"], p["batch"]) for p in data["points"] if p["items_per_s"]}
    assert got == {("face_align", 1), ("face_align", 2), ("clip_resize", 1), ("clip_resize", 2)}
    assert all(p["precision"] == "fp32" and not p["cuda_graph"] for p in data["points"])
    # a third-party ONNX graph without a GPU ONNX runtime here: said exactly, not silently dropped
    assert "no GPU ONNX runtime" in data["unmeasured"]["scrfd"] or "not here" in data["unmeasured"]["scrfd"]
    assert [j["batch"] for j in data["jpeg_decode"]] == [1, 2] and data["jpeg_decode"][0]["images_per_s"] > 0
    table = capsys.readouterr().out
    assert "| face_align | 2 |" in table and "Not measured:" in table and "64x48 q90 on cpu" in table


def test_time_budget_and_refusals(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert gpu_ceiling.main(["--device", "cpu", "--families", "clip_resize", "--batches", "1", "--budget-s", "0",
                             "--jpeg", "none", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["unmeasured"] == {"clip_resize": "time budget spent before this family"}
    assert gpu_ceiling.main(["--device", "cpu", "--families", "tpu_net", "--out", str(out)]) == 2
    assert "unknown families" in capsys.readouterr().err
    import torch
    if not torch.cuda.is_available():
        assert gpu_ceiling.main(["--out", str(out)]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_imports_on_a_gpu_host_without_grpcio_or_rapidjson():
    """The lent GPU hosts have torch, numpy, protobuf and (carried) tritonclient, but neither
    grpcio nor python-rapidjson: the tool and the contract it reads must import there."""
    import subprocess
    import sys

    from contract import REPO_ROOT

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('grpc', 'rapidjson'):\n"
            "            raise ModuleNotFoundError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import perf.gpu_ceiling, perf.ceiling_models\n"
            "import contract\n"
            "print(contract.load('face_align').variable_dim_range)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 4, 64)"
