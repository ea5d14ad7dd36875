"""Make a fixed-batch third-party ONNX graph batch-dynamic, or refuse when that cannot be proved.

`python -m export.patch_batch IN OUT [--check] [--input-size HxW | --dynamic-hw]`

Third-party exports (InsightFace SCRFD, CenterFace) fix the batch in the input and sometimes
fold it into constants: SCRFD heads go Conv -> Transpose(perm [2,3,0,1]) -> Reshape([-1,K])
so a batch of B frames comes out interleaved. Editing only the input dimension gives wrong
results silently, so this tool:

1. drops initializers listed as graph inputs, makes every input's batch dim symbolic
   ("batch") and optionally sets or frees the spatial dims (NCHW);
2. rewrites the recognised SCRFD head (perm [0,2,3,1], shape [0,-1,K]), and turns into
   Identity every Reshape whose constant target is its input's own static shape (tf2onnx
   writes them around squeeze-excite blocks: [1,C,1,1] -> [1,C,1,1]; they only fold the old
   batch into a constant);
3. walks the whole graph tracking which tensors carry the batch on axis 0 and which
   integer vectors hold the batch size, and REFUSES (UnprovableGraphError) anything it
   cannot show keeps images independent: a Reshape or Resize whose shape does not start
   with the batch, a constant shape still holding the old batch, an op it does not know;
4. `--check` then proves it numerically: the patched model on a batch of 8 random inputs
   equals 8 single-image runs of the ORIGINAL file (max abs diff <= 1e-5).
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import ExportError
from .batch_proof import BatchMismatchError, BatchProof, UnprovableGraphError, attr

log = logging.getLogger("export.patch_batch")

BATCH_DIM = "batch"
CHECK_ATOL = 1e-5


@dataclass
class PatchReport:
    old_batch: int | None
    inputs: dict[str, list] = field(default_factory=dict)
    rewritten_heads: list[str] = field(default_factory=list)
    removed_initializer_inputs: int = 0
    identity_reshapes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        ins = ", ".join(f"{k} {v}" for k, v in self.inputs.items())
        return (f"old batch {self.old_batch}; inputs {ins}; {len(self.rewritten_heads)} SCRFD heads rewritten; "
                f"{len(self.identity_reshapes)} identity reshapes dropped; "
                f"{self.removed_initializer_inputs} initializers removed from graph inputs")


# ---------------------------------------------------------------------------------------------
# patching

def patch_model(model, *, input_hw: tuple[int, int] | None = None, dynamic_hw: bool = False):
    """Return (patched ModelProto, PatchReport); raises UnprovableGraphError."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    report = PatchReport(old_batch=None)
    report.identity_reshapes = _drop_identity_reshapes(m, _constants(g, numpy_helper))

    init_names = {i.name for i in g.initializer}
    real_inputs = [i for i in g.input if i.name not in init_names]
    report.removed_initializer_inputs = len(g.input) - len(real_inputs)
    if report.removed_initializer_inputs:
        del g.input[:]
        g.input.extend(real_inputs)
        real_inputs = list(g.input)  # extend() copied them; edit the copies inside the graph
        if m.ir_version < 4:  # initializers outside graph.input need IR >= 4
            m.ir_version = 4
    if not real_inputs:
        raise UnprovableGraphError("the graph has no real (non-initializer) input")

    batches = set()
    for inp in real_inputs:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) == 0:
            raise UnprovableGraphError(f"input {inp.name!r} has no shape; cannot tell where its batch is")
        if dims[0].HasField("dim_value"):
            batches.add(dims[0].dim_value)
        dims[0].Clear()
        dims[0].dim_param = BATCH_DIM
        if input_hw is not None or dynamic_hw:
            if len(dims) != 4:
                raise UnprovableGraphError(f"input {inp.name!r} is not NCHW (rank {len(dims)}); cannot set H/W")
            for d, v, name in ((dims[2], input_hw and input_hw[0], "height"), (dims[3], input_hw and input_hw[1], "width")):
                d.Clear()
                if v:
                    d.dim_value = int(v)
                else:
                    d.dim_param = name
        report.inputs[inp.name] = [d.dim_value or d.dim_param for d in dims]
    if len(batches) > 1:
        raise UnprovableGraphError(f"inputs disagree on the batch size: {sorted(batches)}")
    report.old_batch = batches.pop() if batches else None

    consts = _constants(g, numpy_helper)
    report.rewritten_heads = _rewrite_scrfd_heads(g, consts, numpy_helper)
    consts = _constants(g, numpy_helper)

    _drop_unused_initializers(g)
    # Stale intermediate/output shapes hold the old batch: drop them and re-infer.
    old_out = {o.name: [d.dim_value or None for d in o.type.tensor_type.shape.dim] for o in g.output}
    del g.value_info[:]
    for out in g.output:
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception as exc:  # onnx raises several types; the graph is broken either way
        raise UnprovableGraphError(f"shape inference failed on the patched graph: {exc}") from exc
    shapes = _shape_map(inferred.graph)

    BatchProof(g, consts, shapes, report.old_batch).run()

    spatial_kept = input_hw is None and not dynamic_hw
    for out in g.output:
        dims = _output_dims(old_out[out.name], shapes.get(out.name), out.name in report.rewritten_heads, spatial_kept)
        shape = out.type.tensor_type.shape
        for i, d in enumerate(dims):
            dim = shape.dim.add()
            if i == 0:
                dim.dim_param = BATCH_DIM
            elif d:
                dim.dim_value = d
    onnx.checker.check_model(m)
    return m, report


def _output_dims(old, inferred, rewritten, spatial_kept):
    """Output dims after patching: inferred ones where known, else the old per-item dims."""
    if inferred is not None and len(inferred) >= 2 and all(inferred[1:]):
        return inferred
    if rewritten:                      # [N,K] (or [1,N,K]) -> [batch, N, K]
        per_item = old[-2:]
    else:
        per_item = old[1:]
    if not spatial_kept:               # H/W changed: only the rank is certain
        per_item = [None] * len(per_item)
    return [None, *per_item]


def _drop_unused_initializers(g):
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)


def _constants(g, numpy_helper) -> dict[str, np.ndarray]:
    import onnx

    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type != "Constant":
            continue
        for a in n.attribute:
            v = onnx.helper.get_attribute_value(a)
            if a.name == "value":
                consts[n.output[0]] = numpy_helper.to_array(v)
            elif a.name in ("value_float", "value_int"):
                consts[n.output[0]] = np.array(v)
            elif a.name in ("value_floats", "value_ints"):
                consts[n.output[0]] = np.array(list(v))
    return consts


def _drop_identity_reshapes(m, consts) -> list[str]:
    """Reshape -> Identity where the constant target equals the input's static shape in the
    ORIGINAL graph (so it changes nothing at the old batch, and nothing at any batch)."""
    import onnx

    try:
        shapes = _shape_map(onnx.shape_inference.infer_shapes(m).graph)
    except Exception:  # noqa: BLE001 - no shapes, no rewrite; the proof decides later
        return []
    dropped = []
    for n in m.graph.node:
        if n.op_type != "Reshape" or n.input[1] not in consts:
            continue
        src = shapes.get(n.input[0])
        target = [int(v) for v in np.asarray(consts[n.input[1]]).reshape(-1)]
        if src and all(src) and target == list(src):
            n.op_type = "Identity"
            del n.input[1:]
            del n.attribute[:]
            dropped.append(n.name or n.output[0])
    return dropped


def _rewrite_scrfd_heads(g, consts, numpy_helper) -> list[str]:
    """Conv -> Transpose [2,3,0,1] -> Reshape [-1,K] | [1,-1,K]  =>  perm [0,2,3,1], shape [0,-1,K]."""
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    rewritten = []
    for n in g.node:
        if n.op_type != "Transpose":
            continue
        perm = attr(n, "perm")
        if perm != [2, 3, 0, 1]:
            continue
        users = consumers.get(n.output[0], [])
        where = f"Transpose {n.name or n.output[0]!r}"
        if n.output[0] in graph_outputs or len(users) != 1 or users[0].op_type != "Reshape":
            raise UnprovableGraphError(f"{where} moves the batch to axis 2 and does not feed exactly one Reshape; "
                                       "refusing to patch")
        rs = users[0]
        shape = consts.get(rs.input[1])
        if shape is None:
            raise UnprovableGraphError(f"{where} feeds a Reshape whose shape is not a constant; refusing to patch")
        shape = [int(v) for v in np.asarray(shape).reshape(-1)]
        if len(shape) == 2 and shape[0] == -1:
            k = shape[1]
        elif len(shape) == 3 and shape[:2] == [1, -1]:
            k = shape[2]
        else:
            raise UnprovableGraphError(f"{where} feeds Reshape to {shape}; only [-1,K] and [1,-1,K] are "
                                       "recognised, refusing to patch")
        for a in n.attribute:
            if a.name == "perm":
                del a.ints[:]
                a.ints.extend([0, 2, 3, 1])
        new_name = f"{rs.output[0]}__batch_shape"
        g.initializer.append(numpy_helper.from_array(np.array([0, -1, k], dtype=np.int64), new_name))
        rs.input[1] = new_name
        rewritten.append(rs.output[0])
    return rewritten


def _shape_map(g) -> dict[str, list | None]:
    out = {}
    for vi in (*g.input, *g.value_info, *g.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            out[vi.name] = None
            continue
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


# ---------------------------------------------------------------------------------------------
# numerical proof

def check_batch_equivalence(original, patched, *, batch: int = 8, input_hw: tuple[int, int] | None = None,
                            seed: int = 0, atol: float = CHECK_ATOL) -> float:
    """Max abs diff between the patched model on `batch` random inputs and single-image runs
    of the ORIGINAL file. The original is run with each image repeated to its own fixed batch
    (its inputs untouched, except the spatial dims when `input_hw` asks for another size).
    Raises BatchMismatchError above `atol`."""
    import onnx
    import onnxruntime as ort

    orig = onnx.load(str(original))
    patched = patched if isinstance(patched, onnx.ModelProto) else onnx.load(str(patched))
    init_names = {i.name for i in orig.graph.initializer}
    if input_hw is not None:
        for inp in orig.graph.input:
            if inp.name not in init_names:
                d = inp.type.tensor_type.shape.dim
                d[2].dim_value, d[3].dim_value = input_hw
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Without this ORT fuses Conv+BN only in the patched copy (initializers listed as inputs
    # are overridable, so it keeps them unfused in the original): ~3e-5 of pure rounding noise.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(orig.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    new = ort.InferenceSession(patched.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds, ref_batch = {}, {}
    for inp in ref.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        ref_batch[inp.name] = shape[0]
        feeds[inp.name] = rng.uniform(-1.0, 1.0, size=[batch, *shape[1:]]).astype(np.float32)
    names = [o.name for o in new.get_outputs()]
    got = new.run(names, feeds)
    worst = 0.0
    for b in range(batch):
        single = {k: np.repeat(v[b:b + 1], ref_batch[k], axis=0) for k, v in feeds.items()}
        want = ref.run(names, single)
        for name, g_out, w_out in zip(names, got, want):
            w_row = w_out[0] if w_out.ndim == g_out.ndim else w_out   # [-1,K] heads lose the batch axis
            if w_row.shape != g_out[b].shape:
                raise BatchMismatchError(f"output {name}: batched row shape {g_out[b].shape} != single-run {w_row.shape}")
            worst = max(worst, float(np.max(np.abs(g_out[b].astype(np.float64) - w_row))))
    if worst > atol:
        raise BatchMismatchError(f"batched results differ from single-image runs of the original: "
                                 f"max abs diff {worst:.3g} > {atol}")
    return worst


def patch_file(src: Path, dst: Path, **kw) -> PatchReport:
    import onnx

    model, report = patch_model(onnx.load(str(src)), **kw)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return report


def _hw(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}")
    return int(h), int(w)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    p = argparse.ArgumentParser(prog="python -m export.patch_batch", description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--check", action="store_true", help="prove batch 8 == 8 single runs of the original")
    hw = p.add_mutually_exclusive_group()
    hw.add_argument("--input-size", type=_hw, metavar="HxW", help="set the NCHW input's spatial dims")
    hw.add_argument("--dynamic-hw", action="store_true", help="make the NCHW input's spatial dims dynamic")
    p.add_argument("--check-size", type=_hw, metavar="HxW", help="spatial size used by --check (default: the input's)")
    args = p.parse_args(argv)
    try:
        report = patch_file(args.src, args.dst, input_hw=args.input_size, dynamic_hw=args.dynamic_hw)
        log.info("patched %s -> %s: %s", args.src, args.dst, report.summary())
        if args.check:
            check_hw = args.check_size or args.input_size
            diff = check_batch_equivalence(args.src, args.dst, input_hw=check_hw)
            log.info("check: batch 8 == 8 single runs of the original, max abs diff %.3g (<= %g)", diff, CHECK_ATOL)
    except ExportError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
