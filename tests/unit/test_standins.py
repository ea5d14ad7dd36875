"""Fixed-time stand-ins keep the contract of the model they replace."""
from tritonclient.grpc import model_config_pb2 as mc

import contract
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
