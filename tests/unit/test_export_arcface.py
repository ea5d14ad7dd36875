"""arcface: IResNet-50 export vs the torch network, the w600k_r50.onnx wrapping path, weights loading."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export import registry, runner
from tests.support.exports import exported_model

MODEL = "arcface"
torch = pytest.importorskip("torch", reason="arcface export needs torch (the export extra)")
ort = pytest.importorskip("onnxruntime", reason="parity checks need onnxruntime")
# ORT vs torch on L2-normalised embeddings (float32 through 50 layers; measured ~4e-7).
TOL = 1e-5


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    return exported_model(MODEL, tmp_path_factory)


@pytest.fixture(scope="session")
def faces(astronaut):
    """8 face-sized uint8 crops: the astronaut's face, flips/shifts of it, and noise."""
    import cv2

    face = cv2.resize(astronaut[40:200, 170:290], (112, 112), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(11)
    batch = [face, face[:, ::-1], np.roll(face, 9, 0), (face * 0.7).astype(np.uint8), face[::-1]]
    batch += [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    return np.ascontiguousarray(np.stack(batch))


def embed(path, faces):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["embeddings"], {"faces": faces})[0]




def test_iresnet50_is_the_w600k_r50_layout():
    from export.arcface import build_iresnet

    net = build_iresnet()
    assert sum(p.numel() for p in net.parameters()) == 43_590_848   # insightface iresnet50, 512-d
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 14, 3]
    names = set(net.state_dict())
    assert {"conv1.weight", "prelu.weight", "layer3.13.bn3.running_var", "fc.weight", "features.weight"} <= names






def _tiny_iresnet_onnx(path: Path, opset: int = 11):
    """A w600k_r50.onnx look-alike (float NCHW input, FIXED batch 1, one 512-d output, opset 11,
    weights also listed as inputs) from a 1-block-per-stage IResNet: the wrapping path does not
    depend on depth."""
    from export.arcface import build_iresnet

    torch.manual_seed(0)
    net = build_iresnet(layers=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), str(path), input_names=["input.1"],
                          output_names=["embedding"], opset_version=opset, dynamo=False,
                          keep_initializers_as_inputs=True)   # as old insightface files do
    return net


def test_wraps_a_fixed_batch_insightface_onnx(tmp_path, exported, faces):
    from export import arcface
    from export.base import ExportJob, WeightsSearch

    user = tmp_path / "w600k_r50.onnx"
    net = _tiny_iresnet_onnx(user)
    weights = registry.resolve_weights(MODEL, WeightsSearch(dirs=(tmp_path,)))
    assert weights.path == user and not weights.synthetic
    job = ExportJob(exported[1].contract, tmp_path / "model.onnx", weights, tmp_path)
    runner.build(job)
    import onnx

    from export.base import OPSET

    wrapped = onnx.load(str(job.out_path))
    assert [o.version for o in wrapped.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]  # was 11
    got = embed(job.out_path, faces)                          # batch 8 through a batch-1 file
    ref = arcface.reference(job)({"faces": faces})["embeddings"]   # the user's ONNX, per image
    assert np.abs(got - ref).max() <= TOL
    with torch.no_grad():
        x = (torch.from_numpy(faces).permute(0, 3, 1, 2).float() - 127.5) / 127.5
        want = torch.nn.functional.normalize(net(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(embed(job.out_path, faces[3:4]) - got[3:4]).max() <= TOL


def test_refuses_onnx_with_batch_folded_into_a_reshape(tmp_path, exported):
    from export.base import ExportError, ExportJob, WeightsSource

    class Folded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = torch.nn.AvgPool2d(16)
            self.fc = torch.nn.Linear(3 * 7 * 7, 512)

        def forward(self, x):
            return self.fc(self.pool(x).reshape(1, -1))      # batch 1 baked into the graph

    user = tmp_path / "arcface_folded.onnx"
    torch.onnx.export(Folded().eval(), (torch.zeros(1, 3, 112, 112),), str(user), input_names=["data"],
                      output_names=["fc1"], opset_version=13, dynamo=False)
    job = ExportJob(exported[1].contract, tmp_path / "model.onnx", WeightsSource("file", "folded", user), tmp_path)
    with pytest.raises(ExportError, match="batch"):
        runner.build(job)


def test_loads_a_torch_state_dict_strictly(tmp_path):
    from export import arcface
    from export.base import DEFAULT_SEED, ExportError, WeightsSource

    synthetic = arcface.synthetic_iresnet(DEFAULT_SEED)
    pth = tmp_path / "backbone.pth"
    torch.save({"module." + k: v for k, v in synthetic.state_dict().items()}, pth)   # DataParallel keys
    loaded = arcface.load_torch_backbone(WeightsSource("file", "pth", pth))
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(x), synthetic(x))
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ExportError, match="not an iresnet50"):
        arcface.load_torch_backbone(WeightsSource("file", "pth", bad))
