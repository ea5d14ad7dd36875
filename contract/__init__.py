"""The model repository contract: read `config.pbtxt` files with Triton's own schema.

Everything else (export shapes, profiles, gateway checks, TRT profiles) derives tensor
names, dtypes, dims, batch limits and baked parameters from here instead of restating them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format


def _model_config_schema():
    """Triton's ModelConfig proto from tritonclient. Its grpc package needs grpcio and
    rapidjson to import; the schema alone needs protobuf, so a host with tritonclient
    installed without those (a GPU box running perf.gpu_ceiling) loads the file directly."""
    try:
        from tritonclient.grpc import model_config_pb2
        return model_config_pb2
    except (ImportError, RuntimeError):   # tritonclient.grpc turns a missing grpc into RuntimeError
        import importlib.util

        spec = importlib.util.find_spec("tritonclient")
        if spec is None or not spec.submodule_search_locations:
            raise
        path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
        schema = importlib.util.spec_from_file_location("tritonclient_model_config_pb2", path)
        module = importlib.util.module_from_spec(schema)
        schema.loader.exec_module(module)
        return module


mc = _model_config_schema()

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
# Config parameter "min:opt:max": the range of every variable (-1) per-item dim of a model's
# inputs (face_align's faces per image, ppocr_rec's crop width). TensorRT profiles, parity
# inputs, memory estimates and load generators take their sizes from it; Triton itself
# accepts any size. An output's variable dim is the same size (face_align's crops), or that
# size divided by the config parameter VARIABLE_DIM_OUTPUT_DIVISOR when the network
# downsamples it (ppocr_rec: one CTC step per 8 pixels of width).
VARIABLE_DIM_RANGE = "variable_dim_range"
VARIABLE_DIM_OUTPUT_DIVISOR = "variable_dim_output_divisor"

# Triton TYPE_* -> numpy dtype (TYPE_STRING is object/bytes).
_NP_DTYPES = {
    mc.TYPE_UINT8: np.uint8, mc.TYPE_INT8: np.int8, mc.TYPE_INT32: np.int32,
    mc.TYPE_INT64: np.int64, mc.TYPE_FP16: np.float16, mc.TYPE_FP32: np.float32, mc.TYPE_FP64: np.float64,
    mc.TYPE_BOOL: np.bool_, mc.TYPE_STRING: np.object_,
}


class ContractError(ValueError):
    """A config.pbtxt is missing, unparsable or inconsistent."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype          # numpy dtype (object for TYPE_STRING)
    triton_dtype: str        # "UINT8", "FP32", "STRING", ... (Triton client spelling)
    dims: tuple[int, ...]    # per-item dims, without the batch dimension

    @property
    def nbytes_per_item(self) -> int:
        """Bytes of one batch item (strings counted as 0: variable length)."""
        if self.dtype == np.object_:
            return 0
        return int(np.prod(self.dims, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class ModelContract:
    name: str
    path: Path
    config: mc.ModelConfig

    @property
    def max_batch_size(self) -> int:
        return int(self.config.max_batch_size)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(_spec(t) for t in self.config.input)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(_spec(t) for t in self.config.output)

    @property
    def kind(self) -> str:
        """"ensemble", "python" (BLS / tokenizer) or "network" (an exported graph)."""
        if self.config.platform == "ensemble":
            return "ensemble"
        if self.config.backend == "python":
            return "python"
        return "network"

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)

    def parameter(self, key: str, default: str | None = None) -> str:
        if key in self.config.parameters:
            return self.config.parameters[key].string_value
        if default is None:
            raise ContractError(f"{self.path}: parameter {key!r} is missing")
        return default

    def float_parameter(self, key: str, default: float | None = None) -> float:
        return float(self.parameter(key, None if default is None else str(default)))

    @property
    def steps(self) -> tuple[str, ...]:
        """The models this pipeline calls, in order: an ensemble's from its ensemble_scheduling,
        a BLS pipeline's from its config parameter "steps" ("scrfd,face_align,arcface": the
        one place they are written); () for a model that calls none."""
        if self.kind == "ensemble":
            return tuple(dict.fromkeys(s.model_name for s in self.config.ensemble_scheduling.step))
        return tuple(s.strip() for s in self.parameter("steps", "").split(",") if s.strip())

    @property
    def preferred_batch_sizes(self) -> tuple[int, ...]:
        return tuple(self.config.dynamic_batching.preferred_batch_size)

    def version_dir(self, version: int = 1) -> Path:
        return self.path.parent / str(version)

    @property
    def variable_dim_range(self) -> tuple[int, int, int] | None:
        """(min, opt, max) of the variable per-item dims, None when every dim is fixed."""
        variable = any(d < 0 for t in (*self.config.input, *self.config.output) for d in t.dims)
        text = self.parameter(VARIABLE_DIM_RANGE, "")
        if not variable:
            return None
        try:
            lo, opt, hi = (int(x) for x in text.split(":"))
        except ValueError:
            raise ContractError(f"{self.path}: variable dims need parameter {VARIABLE_DIM_RANGE!r} = "
                                f"'min:opt:max' (got {text!r})") from None
        if not 1 <= lo <= opt <= hi:
            raise ContractError(f"{self.path}: {VARIABLE_DIM_RANGE} {text!r} must satisfy 1 <= min <= opt <= max")
        div = self.variable_dim_output_divisor
        if any(v % div for v in (lo, opt, hi)):
            raise ContractError(f"{self.path}: {VARIABLE_DIM_RANGE} {text!r} must be multiples of "
                                f"{VARIABLE_DIM_OUTPUT_DIVISOR} {div} (each size must give whole output steps)")
        return lo, opt, hi

    @property
    def variable_dim_output_divisor(self) -> int:
        """Input size per output step of a variable dim (1: outputs' variable dims equal the input's)."""
        text = self.parameter(VARIABLE_DIM_OUTPUT_DIVISOR, "1")
        try:
            div = int(text)
        except ValueError:
            div = 0
        if div < 1:
            raise ContractError(f"{self.path}: {VARIABLE_DIM_OUTPUT_DIVISOR} must be a whole number >= 1, got {text!r}")
        return div

    def output_steps(self, size: int) -> int:
        """An output's variable dim for an input's variable dim of `size`."""
        return size // self.variable_dim_output_divisor

    def with_variable_dims(self, which: str | int = "max") -> "ModelContract":
        """This contract with every -1 per-item dim set to the range's min, opt or max, or to a
        given size (itself when nothing is variable): concrete shapes for tests, profiles,
        estimates. Outputs' variable dims follow (divided by the output divisor)."""
        rng = self.variable_dim_range
        if rng is None:
            return self
        size = which if isinstance(which, int) else dict(zip(("min", "opt", "max"), rng))[which]
        cfg = mc.ModelConfig()
        cfg.CopyFrom(self.config)
        for t in cfg.input:
            t.dims[:] = [size if d < 0 else d for d in t.dims]
        for t in cfg.output:
            t.dims[:] = [self.output_steps(size) if d < 0 else d for d in t.dims]
        return ModelContract(self.name, self.path, cfg)


def _spec(t) -> TensorSpec:
    dt = _NP_DTYPES.get(t.data_type)
    if dt is None:
        raise ContractError(f"tensor {t.name}: unsupported data type {t.data_type}")
    tname = mc.DataType.Name(t.data_type).removeprefix("TYPE_")
    if tname == "STRING":
        tname = "BYTES"
    return TensorSpec(t.name, np.dtype(dt), tname, tuple(int(d) for d in t.dims))


def _by_name(specs, name, model):
    for s in specs:
        if s.name == name:
            return s
    raise ContractError(f"model {model!r} has no tensor {name!r}")


def parse_config(text: str, path: Path | str = "<text>") -> mc.ModelConfig:
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ContractError(f"{path}: {exc}") from exc


def from_json(config: dict | str, path: Path | str = "<triton>") -> ModelContract:
    """A contract from Triton's JSON model config (the python backend's args["model_config"],
    the gRPC/HTTP config endpoints); fields this proto version does not know are ignored."""
    try:
        cfg = json_format.ParseDict(json.loads(config) if isinstance(config, str) else config,
                                    mc.ModelConfig(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError) as exc:
        raise ContractError(f"{path}: unreadable model config: {exc}") from exc
    return ModelContract(cfg.name, Path(path), cfg)


def load(name: str, repository: Path = MODEL_REPOSITORY) -> ModelContract:
    path = Path(repository) / name / "config.pbtxt"
    if not path.is_file():
        raise ContractError(f"no config for model {name!r} at {path}")
    cfg = parse_config(path.read_text(), path)
    if cfg.name != name:
        raise ContractError(f"{path}: name {cfg.name!r} does not match its folder {name!r}")
    return ModelContract(name, path, cfg)


def load_all(repository: Path = MODEL_REPOSITORY) -> dict[str, ModelContract]:
    repo = Path(repository)
    return {p.parent.name: load(p.parent.name, repo) for p in sorted(repo.glob("*/config.pbtxt"))}


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)
