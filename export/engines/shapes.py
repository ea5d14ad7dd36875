"""A plan's input shapes (contract/shapes.py: the rule), checked against the ONNX it is built from.

`derive_shapes` is contract.shapes.shape_ranges with the engine tools' error type.
"""
from __future__ import annotations

from contract import ContractError, ModelContract
from contract.shapes import InputShape, ShapeRanges, shape_ranges  # noqa: F401 (InputShape: build's API)

from .errors import ShapeError


def derive_shapes(contract: ModelContract, max_batch: int | None = None) -> ShapeRanges:
    """The shapes for `contract`; `max_batch` (MAX_BATCH=) overrides the config's limit."""
    try:
        return shape_ranges(contract, max_batch)
    except ContractError as exc:
        raise ShapeError(str(exc)) from exc


def check_onnx_inputs(shapes: ShapeRanges, onnx_inputs: dict[str, tuple]) -> None:
    """The ONNX must take exactly the config's inputs, batch-dynamic, with the config's dims.

    `onnx_inputs` maps input name -> dims as ONNX states them (str for a symbolic dim).
    """
    want = {s.name: s for s in shapes.inputs}
    missing = sorted(set(want) - set(onnx_inputs))
    extra = sorted(set(onnx_inputs) - set(want))
    if missing or extra:
        raise ShapeError(f"{shapes.model}: ONNX inputs {sorted(onnx_inputs)} do not match config inputs "
                           f"{sorted(want)} (missing {missing}, unexpected {extra}); re-run make export-onnx")
    for name, dims in onnx_inputs.items():
        per_item = tuple(-1 if lo != hi else hi for lo, hi in zip(want[name].min[1:], want[name].max[1:]))
        if len(dims) != len(per_item) + 1:
            raise ShapeError(f"{shapes.model}: ONNX input {name!r} has rank {len(dims)}, config says "
                               f"{len(per_item) + 1} (batch + {list(per_item)})")
        if isinstance(dims[0], int) and dims[0] > 0:
            raise ShapeError(f"{shapes.model}: ONNX input {name!r} has a fixed batch of {dims[0]}; the "
                               "plan needs a dynamic batch axis (re-export with make export-onnx)")
        fixed = tuple(dims[1:])
        if any(isinstance(d, int) and d > 0 and d != w and w > 0 for d, w in zip(fixed, per_item)):
            raise ShapeError(f"{shapes.model}: ONNX input {name!r} dims {list(dims)} disagree with config "
                               f"dims [batch, {', '.join(map(str, per_item))}]")


def trtexec_shapes(shapes: ShapeRanges, which: str) -> str:
    """`images:1x640x640x3,landmarks:1x64x5x2` for --minShapes/--optShapes/--maxShapes."""
    return shapes.shapes(which)
