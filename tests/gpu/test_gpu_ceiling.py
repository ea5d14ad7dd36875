"""perf.gpu_ceiling on a real GPU: FP16 autocast captured in CUDA graphs, nvJPEG decode."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available())")]


def test_cuda_graph_fp16_points_and_gpu_jpeg(tmp_path):
    from perf import gpu_ceiling

    out = tmp_path / "c.json"
    assert gpu_ceiling.main(["--families", "face_align,clip_resize", "--batches", "1,8", "--iters", "5",
                             "--jpeg", "1280x720", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert all(p["cuda_graph"] and p["precision"].startswith("fp16") for p in data["points"]), data["points"]
    assert data["jpeg_decode"][0]["images_per_s"] > 0
