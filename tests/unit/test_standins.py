"""Fixed-time stand-ins keep the contract of the model they replace."""
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

import contract
from contract import REPO_ROOT
from serving import profiles, standins


def test_stand_in_keeps_the_interface_and_batching(tmp_path):
    yolo = contract.load("yolo")
    folder = standins.add_fixed_time(tmp_path, "yolo", batch_ms=25, image_ms=1.5, instances=2)
    got = contract.load("yolo", tmp_path)
    # what a client and the gateway see is the contract's
    assert profiles.summary(got.config) == profiles.summary(yolo.config)
    assert got.config.dynamic_batching.default_queue_policy.default_timeout_microseconds == \
        yolo.config.dynamic_batching.default_queue_policy.default_timeout_microseconds
    # how it runs is the stand-in's
    assert got.config.backend == "python" and got.config.platform == ""
    assert [(g.kind, g.count) for g in got.config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    assert not got.config.HasField("optimization") and not got.config.model_warmup
    assert got.parameter("batch_ms") == "25" and got.parameter("image_ms") == "1.5"
    assert "STAND-IN" in got.parameter("weights_provenance")
    assert (folder / "1" / "model.py").read_text() == standins.FIXED_TIME_MODEL


def test_stand_in_replaces_a_linked_model(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "yolo").symlink_to(target, target_is_directory=True)
    standins.add_fixed_time(tmp_path / "repo", "yolo", batch_ms=0)
    assert not (tmp_path / "repo" / "yolo").is_symlink()
    assert list(target.iterdir()) == []    # the link's target is untouched


def test_repository_of_stand_ins_only(tmp_path):
    repo = standins.write_fixed_time_repository(tmp_path / "r", {"yolo": 10, "scrfd": 5})
    assert sorted(contract.load_all(repo)) == ["scrfd", "yolo"]


def test_a_smaller_max_batch_keeps_the_config_loadable(tmp_path):
    import pytest

    standins.add_fixed_time(tmp_path, "yolo", batch_ms=100, max_batch_size=4)
    got = contract.load("yolo", tmp_path).config
    assert got.max_batch_size == 4
    # Triton refuses preferred sizes over the max batch
    assert list(got.dynamic_batching.preferred_batch_size) == [4]
    with pytest.raises(contract.ContractError, match="max_batch_size"):
        standins.add_fixed_time(tmp_path, "yolo", batch_ms=1, max_batch_size=17)


def test_a_batch_time_file_is_a_parameter_only_when_asked_for(tmp_path):
    """`batch_ms_file` (a running replica made to hang and recover, tests/integration/
    test_fleet_outlier_live.py): named in the config, relative to the model's folder."""
    standins.add_fixed_time(tmp_path, "yolo", batch_ms=20, batch_ms_file="batch_ms")
    assert contract.load("yolo", tmp_path).parameter("batch_ms_file") == "batch_ms"
    standins.add_fixed_time(tmp_path, "yolo", batch_ms=20)
    assert "batch_ms_file" not in contract.load("yolo", tmp_path).config.parameters


def _stand_in(tmp_path, model: str, **kw):
    """pipelines/fixed_time.py initialised on `model`'s stand-in config, outside Triton."""
    import importlib.util
    import sys

    from google.protobuf import json_format

    from tests.unit.bls_harness import make_module

    cfg = standins.fixed_time_config(contract.load(model), batch_ms=0, **kw)
    pb = make_module(None)
    pb.triton_string_to_numpy = lambda t: {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32,
                                           "TYPE_INT32": np.int32, "TYPE_STRING": np.object_}[t]
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = pb
    try:
        spec = importlib.util.spec_from_file_location("_fixed_time_under_test", REPO_ROOT / "pipelines" / "fixed_time.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if saved is None:
            sys.modules.pop("triton_python_backend_utils")
        else:
            sys.modules["triton_python_backend_utils"] = saved
    m = mod.TritonPythonModel()
    m.initialize({"model_config": json_format.MessageToJson(cfg, preserving_proto_field_name=True),
                  "model_repository": str(tmp_path)})

    def run(**arrays):
        (response,) = m.execute([{k: pb.Tensor(k, v) for k, v in arrays.items()}])
        return {t.name(): t.as_numpy() for t in response.output_tensors}
    return run


def test_variable_output_dims_follow_the_inputs_variable_dims(tmp_path):
    """face_align's crops [-1,112,112,3] take the landmarks' face count; ppocr_rec's steps
    are the crop width over its variable_dim_output_divisor (8)."""
    align = _stand_in(tmp_path, "face_align")
    out = align(images=np.zeros((2, 640, 640, 3), np.uint8), landmarks=np.zeros((2, 3, 5, 2), np.float32))
    assert out["crops"].shape == (2, 3, 112, 112, 3)
    rec = _stand_in(tmp_path, "ppocr_rec")
    out = rec(crops=np.zeros((5, 48, 320, 3), np.uint8))
    assert out["char_ids"].shape == (5, 40) and out["char_scores"].shape == (5, 40)


def test_canned_outputs_answer_every_item(tmp_path):
    boxes = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)
    np.savez(tmp_path / "det.npz", boxes=boxes, num_detections=np.array([3], np.int32))
    det = _stand_in(tmp_path, "scrfd", outputs_file="det.npz")
    out = det(images=np.zeros((3, 640, 640, 3), np.uint8))
    assert out["boxes"].shape == (3, 64, 4) and (out["boxes"] == boxes).all()
    assert out["num_detections"].tolist() == [[3]] * 3
    assert not out["scores"].any() and out["landmarks"].shape == (3, 64, 5, 2)   # not canned: zeros
