"""Fixed-time stand-ins: a model's interface served by pipelines/fixed_time.py.

Tests and benchmarks of balancing, failover, overload and deadlines need a model whose
capacity is known and does not depend on this machine's cores (a GPU-bound model is
like that: its time per batch is set by the GPU, not by the CPU). A stand-in keeps the
committed contract of the model it replaces (name, tensors, max_batch_size, dynamic
batching and queue policy), so the gateway's contract check passes and its routes work,
and sleeps a fixed time per batch instead of computing.

    add_fixed_time(repo, "yolo", batch_ms=20)          # into a derived/scratch repository
    write_fixed_time_repository(dest, {"yolo": 20})    # a repository of stand-ins only
"""
from __future__ import annotations

import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

import contract
from contract import MODEL_REPOSITORY
from pipelines import ENTRY_FILE, entry_source

FIXED_TIME_MODEL = entry_source("fixed_time")   # pipelines/fixed_time.py


def fixed_time_config(source: contract.ModelContract, batch_ms: float, image_ms: float = 0.0,
                      instances: int = 1, queue_timeout_us: int | None = None,
                      max_batch_size: int | None = None,
                      batch_ms_file: str | None = None,
                      outputs_file: str | None = None) -> mc.ModelConfig:
    """The stand-in's config: `source`'s interface and batching on the python backend.
    `queue_timeout_us` replaces the queue policy's default timeout (0: none) and
    `max_batch_size` the batch limit (preferred sizes above it dropped), for tests that
    need a queue that does not shed, or one request per execution. `batch_ms_file`: a
    file (relative to the model's folder) whose number replaces batch_ms while present,
    read during executions (pipelines/fixed_time.py): a replica made to hang and recover.
    `outputs_file`: an .npz of one item's outputs answered instead of zeros (a detector
    stand-in that finds something, so a pipeline's later steps run)."""
    if source.max_batch_size < 1:
        raise contract.ContractError(f"{source.name}: a stand-in needs a batching model")
    if max_batch_size is not None and not 1 <= max_batch_size <= source.max_batch_size:
        raise contract.ContractError(f"{source.name}: max_batch_size {max_batch_size} is not "
                                     f"in 1..{source.max_batch_size}")
    cfg = mc.ModelConfig()
    cfg.CopyFrom(source.config)
    cfg.platform = ""
    cfg.backend = "python"
    cfg.ClearField("ensemble_scheduling")
    cfg.ClearField("optimization")
    cfg.ClearField("model_warmup")
    del cfg.instance_group[:]
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances)
    if queue_timeout_us is not None:
        cfg.dynamic_batching.default_queue_policy.default_timeout_microseconds = queue_timeout_us
    if max_batch_size is not None:
        cfg.max_batch_size = max_batch_size
        keep = [b for b in cfg.dynamic_batching.preferred_batch_size if b <= max_batch_size]
        del cfg.dynamic_batching.preferred_batch_size[:]
        cfg.dynamic_batching.preferred_batch_size.extend(keep)
    cfg.parameters["batch_ms"].string_value = f"{batch_ms:g}"
    cfg.parameters["image_ms"].string_value = f"{image_ms:g}"
    if batch_ms_file:
        cfg.parameters["batch_ms_file"].string_value = batch_ms_file
    if outputs_file:
        cfg.parameters["outputs_file"].string_value = outputs_file
    cfg.parameters["weights_provenance"].string_value = (
        f"FIXED-TIME STAND-IN ({batch_ms:g} ms per batch + {image_ms:g} ms per image, zeros out)")
    return cfg


def add_fixed_time(repository: Path, model: str, batch_ms: float, image_ms: float = 0.0,
                   instances: int = 1, source: Path = MODEL_REPOSITORY, **config) -> Path:
    """Put a stand-in for `model` into `repository` (replacing what was there);
    `config`: fixed_time_config's queue_timeout_us / max_batch_size / batch_ms_file /
    outputs_file."""
    cfg = fixed_time_config(contract.load(model, source), batch_ms, image_ms, instances, **config)
    folder = Path(repository) / model
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    (folder / "1" / ENTRY_FILE).write_text(FIXED_TIME_MODEL)
    (folder / "config.pbtxt").write_text(
        f"# DERIVED by serving/standins.py from {model}'s contract: a fixed-time stand-in.\n"
        + contract.to_text(cfg))
    return folder


def write_fixed_time_repository(dest: Path, models: dict[str, float], image_ms: float = 0.0,
                                instances: int = 1, source: Path = MODEL_REPOSITORY,
                                **config) -> Path:
    """A fresh repository holding only stand-ins: {model: batch_ms}; `config` as for
    add_fixed_time."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for model, batch_ms in models.items():
        add_fixed_time(dest, model, batch_ms, image_ms, instances, source, **config)
    return dest
