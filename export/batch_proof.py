"""The proof behind export.patch_batch: walk a graph and show the batch stays on axis 0
and batch items never mix, or refuse (UnprovableGraphError) naming the node that breaks it.

Tracks which tensors carry the batch on axis 0 and which small integer vectors hold the
batch size (shape arithmetic), so a Reshape/Expand/Resize whose target shape keeps the
batch is accepted and one with the old batch folded into a constant is refused.
"""
from __future__ import annotations

import numpy as np

from .base import ExportError

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


def attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return list(v) if isinstance(v, (list, tuple)) else v
    return default


# ---------------------------------------------------------------------------------------------
# the proof: batch stays on axis 0 and items never mix

_B, _X, _N = "B", "X", "N"   # vector elements: the batch size, batch-derived other value, batch-free unknown


class BatchProof:
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
            perm = attr(n, "perm")
            if not perm or perm[0] != 0:
                self.fail(n, f"perm {perm} moves the batch off axis 0 (not a recognised SCRFD head)")
            return self.mark(n)
        if op == "Flatten":
            if attr(n, "axis", 1) != 1:
                self.fail(n, "Flatten axis != 1 folds the batch into other dims")
            return self.mark(n)
        if op in _AXIS_OPS:
            axis = attr(n, "axis", _AXIS_OPS[op])
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
            pads = attr(n, "pads") if len(n.input) < 2 else self.consts.get(n.input[1])
            r = self.rank(n.input[0])
            if pads is None or r is None or int(pads[0]) != 0 or int(pads[r]) != 0:
                self.fail(n, "cannot show the padding leaves the batch axis alone")
            return self.mark(n)
        if op in ("MatMul", "Gemm"):
            if n.input[1] in self.batched or attr(n, "transA", 0):
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
        axes = attr(n, "axes")
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
                self.check_shape_vec(n, vec, allow_zero=(op == "Reshape" and not attr(n, "allowzero", 0)))
            return self.mark(n)
        # Resize / Upsample: scales[0] == 1 or sizes[0] == batch
        if n.input[0] not in self.batched:
            self.fail(n, "the sizes, not the data, carry the batch")
        scales = sizes = None
        if op == "Upsample":
            scales = self.vecs.get(n.input[1]) if len(n.input) > 1 else attr(n, "scales")
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
        start, end = attr(n, "start", 0), attr(n, "end", None)
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
