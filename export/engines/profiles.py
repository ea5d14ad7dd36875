"""The optimisation profile of a plan, derived from the model's config.pbtxt.

One profile per model, per input: min batch 1, opt = the batch the dynamic batcher
usually forms, max = the config's max_batch_size; the other dims are the config's
per-item dims (a variable one, -1, spans the config's variable_dim_range min:opt:max).
Nothing here is restated from the config, so editing
`max_batch_size` or `preferred_batch_size` changes the plan's profile (and, through the
build flags in the sidecar, makes the existing plan stale).

Why opt = the LARGEST preferred batch size: Triton's dynamic batcher builds the largest
preferred size it can fill within the queue delay, so under load (when kernel choice
matters) that is the shape it hands the plan; the committed warmups use the same size.
Without preferred sizes the batcher fills up to max_batch_size, so opt = max.
"""
from __future__ import annotations

from dataclasses import dataclass

from contract import ContractError, ModelContract

from .errors import ProfileError


@dataclass(frozen=True)
class InputShape:
    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    model: str
    min_batch: int
    opt_batch: int
    max_batch: int
    inputs: tuple[InputShape, ...]
    config_max_batch: int          # the config's max_batch_size (Triton refuses plans below it)

    def as_dict(self) -> dict:
        """Canonical, JSON-able form (goes into the sidecar's build flags)."""
        return {"min_batch": self.min_batch, "opt_batch": self.opt_batch, "max_batch": self.max_batch,
                "inputs": {s.name: {"min": list(s.min), "opt": list(s.opt), "max": list(s.max)}
                           for s in self.inputs}}

    @property
    def serves_config(self) -> bool:
        """True when Triton will accept this plan for the config as committed."""
        return self.max_batch >= self.config_max_batch


def opt_batch_size(contract: ModelContract, max_batch: int) -> int:
    preferred = [b for b in contract.preferred_batch_sizes if b <= max_batch]
    return max(preferred) if preferred else max_batch


def derive_profile(contract: ModelContract, max_batch: int | None = None) -> Profile:
    """The profile for `contract`; `max_batch` (MAX_BATCH=) overrides the config's limit."""
    cfg_max = contract.max_batch_size
    if cfg_max < 1:
        raise ProfileError(f"{contract.name}: max_batch_size is {cfg_max}; plans here need a batch "
                           "dimension (max_batch_size >= 1 in config.pbtxt)")
    mx = cfg_max if max_batch is None else int(max_batch)
    if mx < 1:
        raise ProfileError(f"{contract.name}: MAX_BATCH must be >= 1, got {mx}")
    opt = opt_batch_size(contract, mx)
    try:
        # variable per-item dims (-1, face_align's faces per image) span the config's
        # variable_dim_range: min/opt/max of the profile take its min/opt/max
        at = {w: contract.with_variable_dims(w) for w in ("min", "opt", "max")}
    except ContractError as exc:
        raise ProfileError(f"{contract.name}: input has variable dims but {exc}; a plan profile needs "
                           "their range") from exc
    shapes = []
    for i, spec in enumerate(contract.inputs):
        dims = {w: c.inputs[i].dims for w, c in at.items()}
        shapes.append(InputShape(spec.name, (1, *dims["min"]), (opt, *dims["opt"]), (mx, *dims["max"])))
    if not shapes:
        raise ProfileError(f"{contract.name}: config.pbtxt declares no inputs")
    return Profile(contract.name, 1, opt, mx, tuple(shapes), cfg_max)


def check_onnx_inputs(profile: Profile, onnx_inputs: dict[str, tuple]) -> None:
    """The ONNX must take exactly the config's inputs, batch-dynamic, with the config's dims.

    `onnx_inputs` maps input name -> dims as ONNX states them (str for a symbolic dim).
    """
    want = {s.name: s for s in profile.inputs}
    missing = sorted(set(want) - set(onnx_inputs))
    extra = sorted(set(onnx_inputs) - set(want))
    if missing or extra:
        raise ProfileError(f"{profile.model}: ONNX inputs {sorted(onnx_inputs)} do not match config inputs "
                           f"{sorted(want)} (missing {missing}, unexpected {extra}); re-run make export-onnx")
    for name, dims in onnx_inputs.items():
        per_item = tuple(-1 if lo != hi else hi for lo, hi in zip(want[name].min[1:], want[name].max[1:]))
        if len(dims) != len(per_item) + 1:
            raise ProfileError(f"{profile.model}: ONNX input {name!r} has rank {len(dims)}, config says "
                               f"{len(per_item) + 1} (batch + {list(per_item)})")
        if isinstance(dims[0], int) and dims[0] > 0:
            raise ProfileError(f"{profile.model}: ONNX input {name!r} has a fixed batch of {dims[0]}; the "
                               "plan needs a dynamic batch axis (re-export with make export-onnx)")
        fixed = tuple(dims[1:])
        if any(isinstance(d, int) and d > 0 and d != w and w > 0 for d, w in zip(fixed, per_item)):
            raise ProfileError(f"{profile.model}: ONNX input {name!r} dims {list(dims)} disagree with config "
                               f"dims [batch, {', '.join(map(str, per_item))}]")


def trtexec_shapes(profile: Profile, which: str) -> str:
    """`images:1x640x640x3,landmarks:1x64x5x2` for --minShapes/--optShapes/--maxShapes."""
    return ",".join(f"{s.name}:{'x'.join(map(str, getattr(s, which)))}" for s in profile.inputs)
