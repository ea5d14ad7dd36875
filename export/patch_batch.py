"""Make a fixed-batch third-party ONNX graph batch-dynamic, or refuse when that cannot be proved.

`python -m export.patch_batch IN OUT [--check] [--input-size HxW | --dynamic-hw]`

Third-party exports (InsightFace SCRFD, CenterFace) fix the batch in the input and sometimes
fold it into constants: SCRFD heads go Conv -> Transpose(perm [2,3,0,1]) -> Reshape([-1,K])
so a batch of B frames comes out interleaved. Editing only the input dimension gives wrong
results silently, so this tool:

1. drops initializers listed as graph inputs, makes every input's batch dim symbolic
   ("batch") and optionally sets or frees the spatial dims (NCHW);
2. rewrites the recognised SCRFD head (perm [0,2,3,1], shape [0,-1,K]);
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

log = logging.getLogger("export.patch_batch")

BATCH_DIM = "batch"
CHECK_ATOL = 1e-5

# Ops that treat every batch item independently whatever their attributes (batch stays axis 0).
_PER_ITEM = frozenset("""
    Conv ConvTranspose BatchNormalization InstanceNormalization MaxPool AveragePool LpPool
    GlobalAveragePool GlobalMaxPool LRN DepthToSpace SpaceToDepth
    Relu Sigmoid Tanh Exp Log Sqrt Abs Neg Clip LeakyRelu PRelu HardSigmoid HardSwish Elu Selu
    Softplus Softsign Erf Identity Dropout Cast Floor Ceil Round Reciprocal Not Sign Sin Cos
""".split())
# Elementwise ops with broadcasting: operands must line up on the batch axis.
_BROADCAST = frozenset("Add Sub Mul Div Pow Max Min Sum Mean Equal Greater Less GreaterOrEqual "
                       "LessOrEqual Where And Or Xor Mod".split())
# Ops with an `axis` attribute that only mix data along that axis.
_AXIS_OPS = {"Concat": None, "Softmax": 1, "LogSoftmax": 1, "Hardmax": 1, "Split": 0,
             "Gather": 0, "ArgMax": 0, "ArgMin": 0, "LpNormalization": -1, "CumSum": None}
_SHAPE_INPUTS = {"Reshape": 1, "Expand": 1, "Tile": 1, "ConstantOfShape": 0}


class UnprovableGraphError(ExportError):
    """The patcher cannot prove the batch-dynamic graph correct, so it refuses to write it."""


class BatchMismatchError(UnprovableGraphError):
    """The numerical check found batched results that differ from single-image runs."""


@dataclass
class PatchReport:
    old_batch: int | None
    inputs: dict[str, list] = field(default_factory=dict)
    rewritten_heads: list[str] = field(default_factory=list)
    removed_initializer_inputs: int = 0

    def summary(self) -> str:
        ins = ", ".join(f"{k} {v}" for k, v in self.inputs.items())
        return (f"old batch {self.old_batch}; inputs {ins}; {len(self.rewritten_heads)} SCRFD heads rewritten; "
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

    _BatchProof(g, consts, shapes, report.old_batch).run()

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
        perm = _attr(n, "perm")
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


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return list(v) if isinstance(v, (list, tuple)) else v
    return default


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
# the proof: batch stays on axis 0 and items never mix

_B, _X, _N = "B", "X", "N"   # vector elements: the batch size, batch-derived other value, batch-free unknown


class _BatchProof:
    def __init__(self, g, consts, shapes, old_batch):
        self.g, self.consts, self.shapes, self.old_batch = g, consts, shapes, old_batch
        self.batched: set[str] = {i.name for i in g.input}
        self.vecs: dict[str, list] = {}
        for name, arr in consts.items():
            if arr.ndim <= 1 and arr.size <= 64:
                self.vecs[name] = [v.item() for v in np.asarray(arr).reshape(-1)]

    def fail(self, node, why):
        raise UnprovableGraphError(f"{node.op_type} node {node.name or node.output[0]!r}: {why}; refusing to patch")

    def rank(self, name):
        s = self.shapes.get(name)
        if s is None and name in self.consts:
            return self.consts[name].ndim
        return None if s is None else len(s)

    def run(self):
        for node in self.g.node:
            self.visit(node)
        for out in self.g.output:
            if out.name not in self.batched:
                raise UnprovableGraphError(f"graph output {out.name!r} does not carry the batch on axis 0")

    def visit(self, n):
        op = n.op_type
        ins = [i for i in n.input if i]
        batched_in = [i for i in ins if i in self.batched]
        if op == "Constant":
            return
        if not batched_in:
            self.vector_op(n)
            return
        if op in _SHAPE_INPUTS or op in ("Resize", "Upsample"):
            return self.reshape_like(n)
        if op == "Shape":
            return self.shape_of(n)
        if op in _PER_ITEM:
            if op == "BatchNormalization" and len([o for o in n.output if o]) > 1:
                self.fail(n, "training-mode BatchNormalization mixes the batch")
            return self.mark(n)
        if op in _BROADCAST:
            return self.broadcast(n, batched_in)
        if op == "Transpose":
            perm = _attr(n, "perm")
            if not perm or perm[0] != 0:
                self.fail(n, f"perm {perm} moves the batch off axis 0 (not a recognised SCRFD head)")
            return self.mark(n)
        if op == "Flatten":
            if _attr(n, "axis", 1) != 1:
                self.fail(n, "Flatten axis != 1 folds the batch into other dims")
            return self.mark(n)
        if op in _AXIS_OPS:
            axis = _attr(n, "axis", _AXIS_OPS[op])
            r = self.rank(n.input[0])
            if axis is None or (axis < 0 and r is None) or (axis % r if axis < 0 else axis) == 0:
                self.fail(n, f"works along axis {axis}, which is (or may be) the batch")
            if op == "Gather" and n.input[1] in self.batched:
                self.fail(n, "indices carry the batch")
            return self.mark(n)
        if op in ("Slice", "Squeeze", "Unsqueeze", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
                  "ReduceProd", "ReduceL2", "ReduceL1", "ReduceLogSumExp", "ReduceSumSquare"):
            return self.axes_op(n)
        if op == "Pad":
            pads = _attr(n, "pads") if len(n.input) < 2 else self.consts.get(n.input[1])
            r = self.rank(n.input[0])
            if pads is None or r is None or int(pads[0]) != 0 or int(pads[r]) != 0:
                self.fail(n, "cannot show the padding leaves the batch axis alone")
            return self.mark(n)
        if op in ("MatMul", "Gemm"):
            if n.input[1] in self.batched or _attr(n, "transA", 0):
                self.fail(n, "matrix product across the batch")
            return self.mark(n)
        self.fail(n, f"unknown op {op} consumes a batched tensor")

    def mark(self, n):
        for o in n.output:
            if o:
                self.batched.add(o)

    # -- batched ops --------------------------------------------------------------------------

    def broadcast(self, n, batched_in):
        out_rank = max((self.rank(i) or 0) for i in n.input if i)
        for i in n.input:
            if not i:
                continue
            r = self.rank(i)
            if i in self.batched:
                if r != out_rank:
                    self.fail(n, f"batched operand {i!r} has rank {r}, output rank {out_rank}: axes misalign")
            elif r is None or r > out_rank:
                self.fail(n, f"cannot show operand {i!r} broadcasts without touching the batch axis")
            elif r == out_rank:
                s = list(self.consts[i].shape) if i in self.consts else self.shapes.get(i)
                if not s or s[0] != 1:
                    self.fail(n, f"operand {i!r} has its own leading dim {s[0] if s else '?'} (a batch-folded constant?)")
        self.mark(n)

    def axes_op(self, n):
        op = n.op_type
        axes = _attr(n, "axes")
        if axes is None:
            idx = 3 if op == "Slice" else 1
            if len(n.input) > idx and n.input[idx]:
                a = self.consts.get(n.input[idx])
                axes = None if a is None else [int(v) for v in np.asarray(a).reshape(-1)]
            elif op == "Slice":
                starts = self.consts.get(n.input[1])
                axes = None if starts is None else list(range(np.asarray(starts).size))
        r = self.rank(n.input[0]) if op != "Unsqueeze" else None
        if axes is None or any(a == 0 or (a < 0 and (r is None or a % r == 0)) for a in axes):
            self.fail(n, f"axes {axes} include (or may include) the batch axis")
        self.mark(n)

    def reshape_like(self, n):
        op = n.op_type
        if op in _SHAPE_INPUTS:
            if n.input[0] not in self.batched and op != "ConstantOfShape":
                self.fail(n, "the shape, not the data, carries the batch")
            vec = self.vecs.get(n.input[_SHAPE_INPUTS[op]])
            if op == "Tile":
                if vec is None or vec[0] != 1 or any(v in (_B, _X) for v in vec):
                    self.fail(n, f"repeats {vec} may tile the batch")
            else:
                self.check_shape_vec(n, vec, allow_zero=(op == "Reshape" and not _attr(n, "allowzero", 0)))
            return self.mark(n)
        # Resize / Upsample: scales[0] == 1 or sizes[0] == batch
        if n.input[0] not in self.batched:
            self.fail(n, "the sizes, not the data, carry the batch")
        scales = sizes = None
        if op == "Upsample":
            scales = self.vecs.get(n.input[1]) if len(n.input) > 1 else _attr(n, "scales")
        else:
            if len(n.input) > 2 and n.input[2]:
                scales = self.vecs.get(n.input[2])
            if len(n.input) > 3 and n.input[3]:
                sizes = self.vecs.get(n.input[3])
        if scales:  # non-empty
            if scales[0] != 1:
                self.fail(n, f"scales {scales} resample the batch axis")
        elif sizes is not None:
            self.check_shape_vec(n, sizes, allow_zero=False)
        else:
            self.fail(n, "cannot read its scales/sizes")
        self.mark(n)

    def check_shape_vec(self, n, vec, allow_zero):
        if vec is None:
            self.fail(n, "its target shape is neither a constant nor built from Shape() of a batched tensor")
        first = vec[0]
        if first == _B or (allow_zero and first == 0):
            rest = vec[1:]
            if any(v in (_B, _X) for v in rest):
                self.fail(n, f"target shape {vec} uses the batch size beyond axis 0")
            return
        if isinstance(first, (int, float)) and self.old_batch is not None and first == self.old_batch:
            self.fail(n, f"constant shape {vec} still holds the old batch size {self.old_batch}")
        self.fail(n, f"target shape {vec} does not keep the batch on axis 0 (the batch is folded in)")

    def shape_of(self, n):
        s = self.shapes.get(n.input[0])
        if s is None:
            self.fail(n, "cannot tell the rank of its input")
        elems = [_B] + [d if d else _N for d in s[1:]]
        start, end = _attr(n, "start", 0), _attr(n, "end", None)
        self.vecs[n.output[0]] = elems[start:end]

    # -- integer-vector arithmetic (shape computations) ------------------------------------------

    def vector_op(self, n):
        op, ins = n.op_type, [i for i in n.input]
        vecs = [self.vecs.get(i) for i in ins if i]
        known = all(v is not None for v in vecs)
        batchy = any(v is not None and any(e in (_B, _X) for e in v) for v in vecs)
        out = None
        if known:
            if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Floor", "Ceil", "Round"):
                out = vecs[0]
            elif op == "Concat":
                out = [e for v in vecs for e in v]
            elif op == "Gather":
                idx = np.asarray(self.consts[ins[1]]).reshape(-1) if ins[1] in self.consts else None
                out = None if idx is None else [vecs[0][int(i)] for i in idx]
            elif op == "Slice":
                c = [np.asarray(self.consts[i]).reshape(-1) if i in self.consts else None for i in ins[1:]]
                if all(x is not None for x in c):
                    step = int(c[3][0]) if len(c) > 3 else 1
                    out = vecs[0][int(c[0][0]):int(c[1][0]):step]
            elif op in ("Add", "Sub", "Mul", "Div", "Max", "Min") and len(vecs) == 2:
                out = _elementwise(op, vecs[0], vecs[1])
        if out is not None:
            self.vecs[n.output[0]] = out
        elif batchy:
            self.fail(n, "computes with the batch size in a way the patcher does not follow")


def _elementwise(op, a, b):
    if len(a) == 1:
        a = a * len(b)
    if len(b) == 1:
        b = b * len(a)
    if len(a) != len(b):
        return None
    neutral = {"Add": 0, "Sub": 0, "Mul": 1, "Div": 1}.get(op)
    out = []
    for x, y in zip(a, b):
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            f = {"Add": lambda: x + y, "Sub": lambda: x - y, "Mul": lambda: x * y,
                 "Div": lambda: x // y if isinstance(x, int) and isinstance(y, int) else x / y,
                 "Max": lambda: max(x, y), "Min": lambda: min(x, y)}[op]
            out.append(f())
        elif x == _B and y == neutral:
            out.append(_B)
        elif _B in (x, y) or _X in (x, y):
            out.append(_X)
        else:
            out.append(_N)
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
