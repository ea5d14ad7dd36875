"""The shapes a TensorRT engine is built for, one rule for every builder: the plan builder
(export/engines) and ONNX Runtime's TensorRT provider in the onnx-gpu profile (serving/profiles.py).

Per input: min batch 1, opt = the batch the dynamic batcher usually forms, max = the config's
max_batch_size (or a MAX_BATCH given at build); the other dims are the config's per-item dims,
a variable one (-1) spanning its variable_dim_range min:opt:max. Nothing is restated from the
config, so editing max_batch_size or preferred_batch_size changes the shapes (and, through a
plan's build flags, makes an existing plan stale).

Why opt = the LARGEST preferred batch size: Triton's dynamic batcher builds the largest
preferred size it can fill within the queue delay, so under load (when kernel choice
matters) that is the shape it hands the engine; the committed warmups use the same size.
Without preferred sizes the batcher fills up to max_batch_size, so opt = max.
(TensorRT calls such a set an "optimization profile"; here "profile" means a serving profile.)
"""
from __future__ import annotations

from dataclasses import dataclass

from . import ContractError, ModelContract


@dataclass(frozen=True)
class InputShape:
    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class ShapeRanges:
    model: str
    min_batch: int
    opt_batch: int
    max_batch: int
    inputs: tuple[InputShape, ...]
    config_max_batch: int          # the config's max_batch_size (Triton refuses plans below it)

    def as_dict(self) -> dict:
        """Canonical, JSON-able form (goes into a plan's build flags)."""
        return {"min_batch": self.min_batch, "opt_batch": self.opt_batch, "max_batch": self.max_batch,
                "inputs": {s.name: {"min": list(s.min), "opt": list(s.opt), "max": list(s.max)}
                           for s in self.inputs}}

    @property
    def serves_config(self) -> bool:
        """True when Triton will accept an engine of these shapes for the config as committed."""
        return self.max_batch >= self.config_max_batch

    def shapes(self, which: str) -> str:
        """`images:1x640x640x3,landmarks:1x64x5x2` for min/opt/max (trtexec's and ONNX Runtime's form)."""
        return ",".join(f"{s.name}:{'x'.join(map(str, getattr(s, which)))}" for s in self.inputs)


def opt_batch_size(contract: ModelContract, max_batch: int) -> int:
    preferred = [b for b in contract.preferred_batch_sizes if b <= max_batch]
    return max(preferred) if preferred else max_batch


def shape_ranges(contract: ModelContract, max_batch: int | None = None) -> ShapeRanges:
    """The engine shapes for `contract`; `max_batch` overrides the config's limit.
    ContractError when the config cannot give them."""
    cfg_max = contract.max_batch_size
    if cfg_max < 1:
        raise ContractError(f"{contract.name}: max_batch_size is {cfg_max}; an engine here needs a batch "
                            "dimension (max_batch_size >= 1 in config.pbtxt)")
    mx = cfg_max if max_batch is None else int(max_batch)
    if mx < 1:
        raise ContractError(f"{contract.name}: MAX_BATCH must be >= 1, got {mx}")
    opt = opt_batch_size(contract, mx)
    try:
        at = {w: contract.with_variable_dims(w) for w in ("min", "opt", "max")}
    except ContractError as exc:
        raise ContractError(f"{contract.name}: input has variable dims but {exc}; engine shapes need "
                            "their range") from exc
    shapes = []
    for i, spec in enumerate(contract.inputs):
        dims = {w: c.inputs[i].dims for w, c in at.items()}
        shapes.append(InputShape(spec.name, (1, *dims["min"]), (opt, *dims["opt"]), (mx, *dims["max"])))
    if not shapes:
        raise ContractError(f"{contract.name}: config.pbtxt declares no inputs")
    return ShapeRanges(contract.name, 1, opt, mx, tuple(shapes), cfg_max)
