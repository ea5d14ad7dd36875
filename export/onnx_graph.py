"""ONNX plumbing shared by the family exporters: torch -> ONNX with a dynamic batch axis,
joining pre -> third-party core -> post graphs, stamping the contract's dims on a graph."""
from __future__ import annotations

import warnings
from pathlib import Path

from .base import OPSET, ExportError


def torch_to_onnx(module, args: tuple, path: Path, input_names, output_names,
                  extra_axes: dict[str, dict[int, str]] | None = None) -> None:
    """Export a torch module with a dynamic leading "batch" axis on every input and output
    (plus `extra_axes`: tensor -> {axis: name} for variable per-item dims)."""
    import torch

    module.eval()
    axes = {n: {0: "batch", **(extra_axes or {}).get(n, {})} for n in (*input_names, *output_names)}
    # TracerWarnings flag Python ints taken from static shapes (candidate counts): intended here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def join(pre, core, post, pre_io: list[tuple[str, str]], post_io: list[tuple[str, str]], prefix: str = "core/"):
    """pre -> core -> post as one ModelProto. Internal names get "pre/", `prefix`, "post/" so the
    parts cannot collide; pre's inputs and post's outputs keep their (contract) names. io maps
    use each part's own names."""
    import onnx
    from onnx import compose, version_converter

    if core.opset_import[0].version != OPSET:
        try:
            core = version_converter.convert_version(core, OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors
            raise ExportError(f"cannot convert the core graph to opset {OPSET}: {exc}") from exc
    core = compose.add_prefix(core, prefix)
    pre = compose.add_prefix(pre, "pre/", rename_inputs=False)
    post = compose.add_prefix(post, "post/", rename_outputs=False)
    ir = max(m.ir_version for m in (pre, core, post))
    for m in (pre, core, post):
        m.ir_version = ir
    front = compose.merge_models(pre, core, io_map=[("pre/" + a, prefix + b) for a, b in pre_io])
    whole = compose.merge_models(front, post, io_map=[(prefix + a, "post/" + b) for a, b in post_io])
    onnx.checker.check_model(whole)
    return whole


def wrap_third_party(job, core, core_input: str, pre, decode, heads: list[tuple[str, str, tuple[int, ...]]]):
    """A third-party graph between the project's parts, as ONE graph with the contract's I/O:
    `pre` (a torch module: the contract's uint8 images [B,H,W,3] -> "pixels", the file's input)
    -> `core` (the file, batch-patched; `core_input` its input) -> `decode` (a torch module:
    the file's heads -> the contract's outputs, batched and fixed-size). `heads`: per head,
    (the core's output name, decode's input name, its per-image dummy shape). The file's
    weights are used byte for byte; only the parts around it are exported from torch."""
    import torch

    c = job.contract
    h, w, _ = c.input("images").dims
    pre_path, post_path = job.work_dir / "pre.onnx", job.work_dir / "post.onnx"
    torch_to_onnx(pre, (torch.zeros(1, h, w, 3, dtype=torch.uint8),), pre_path, ["images"], ["pixels"])
    torch_to_onnx(decode, tuple(torch.rand(1, *shape) for _, _, shape in heads), post_path,
                  [name for _, name, _ in heads], [o.name for o in c.outputs])
    job.progress("joining preprocessing + the third-party graph + decode")
    return join(load_onnx(pre_path), core, load_onnx(post_path), [("pixels", core_input)],
                [(out, name) for out, name, _ in heads])


def set_io_dims(model, contract) -> None:
    """Stamp the contract's dims (with a leading "batch") on the graph's inputs and outputs, so
    exported shapes read exactly like config.pbtxt instead of exporter-invented symbols."""
    specs = {t.name: t for t in (*contract.inputs, *contract.outputs)}
    for vi in (*model.graph.input, *model.graph.output):
        spec = specs.get(vi.name)
        if spec is None:
            raise ExportError(f"{contract.name}: graph tensor {vi.name!r} is not in the contract")
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        shape.dim.add().dim_param = "batch"
        for i, d in enumerate(spec.dims):
            if d < 0:   # variable per-item dim (config -1): the same symbol at the same position
                shape.dim.add().dim_param = f"variable{i + 1}"
            else:
                shape.dim.add().dim_value = d


def load_onnx(path: Path):
    import onnx

    return onnx.load(str(path))
