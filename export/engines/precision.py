"""Which layers stay FP32 in an otherwise FP16 plan, decided on the ONNX graph.

The rule (docs/engines.md repeats it):

1. The *body* of a network - the nodes between its first and last compute layer
   (Conv, ConvTranspose, Gemm, MatMul, Einsum, RNNs) - runs in FP16.
2. The *head* - nodes with no compute layer upstream: the uint8 -> float cast, channel
   flip, layout change and (x - mean) / std normalisation - stays FP32. It is cheap,
   elementwise, and FP16 would round 0..255 pixel arithmetic.
3. The *tail* - nodes with no compute layer downstream: score decode (sigmoid/exp),
   anchor and box arithmetic in input pixels (FP16 steps 0.25-0.5 px at 640), NMS,
   TopK/gather, the final L2 normalisation, argmax, uint8 quantisation - stays FP32.
4. Anywhere in the graph, ops whose FP16 form is known to drift or flip results stay
   FP32: TopK, NonMaxSuppression, ArgMax/ArgMin, ReduceL2/ReduceSumSquare,
   LpNormalization, LayerNormalization, CumSum.
5. Models whose whole graph is coordinate arithmetic are built without FP16 at all
   (their family record's `fp32_only` says why: export/registry.py).

Only nodes on the data path (downstream of a graph input) that touch floating-point
tensors are marked; shape/constant plumbing and weight-only subgraphs are left to TensorRT.
Marking is done by renaming the nodes with MARK as a prefix: TensorRT's
ONNX parser names layers after their nodes, so the Python builder matches
`layer.name.startswith(MARK)` and trtexec gets one wildcard spec `MARK*:fp32`.
Renaming changes no computation (tested by running both graphs in ONNX Runtime).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

MARK = "KEEPFP32__"
RULE_VERSION = 1   # bump when the rule changes: it is part of the build flags, so plans go stale

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN"})
ALWAYS_FP32_OPS = frozenset({"TopK", "NonMaxSuppression", "ArgMax", "ArgMin", "ReduceL2", "ReduceSumSquare",
                             "LpNormalization", "LayerNormalization", "CumSum"})
PLUMBING_OPS = frozenset({"Constant", "Shape", "Size", "ConstantOfShape"})

_FLOAT_TYPES = {1, 10, 11, 16}   # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass(frozen=True)
class PrecisionPlan:
    fp16: bool
    fp32_nodes: tuple[str, ...]     # original node names kept FP32 (empty when not fp16)
    reasons: dict                   # reason -> count ("head", "tail", "op:TopK", "name", "fp32-only")

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.fp32_nodes).encode()).hexdigest()[:16]

    def flags(self) -> dict:
        return {"fp16": self.fp16, "fp32_rule": RULE_VERSION, "fp32_layers": len(self.fp32_nodes),
                "fp32_layers_digest": self.digest()}


def _node_names(graph) -> list[str]:
    """Stable, unique names (TensorRT names unnamed nodes itself; we need ours)."""
    names, seen = [], set()
    for i, n in enumerate(graph.node):
        name = n.name or f"{n.op_type}_{i}"
        if name in seen:
            name = f"{name}__{i}"
        seen.add(name)
        names.append(name)
    return names


def _float_tensors(model) -> set[str] | None:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:   # inference is an aid here; without it every non-plumbing node counts
        return None
    g = inferred.graph
    out = set()
    for vi in (*g.value_info, *g.input, *g.output):
        if vi.type.tensor_type.elem_type in _FLOAT_TYPES:
            out.add(vi.name)
    out.update(i.name for i in g.initializer if i.data_type in _FLOAT_TYPES)
    return out


def fp32_only(model_name: str) -> str | None:
    """Why `model_name` is built without FP16 at all (its family record), None when it is not."""
    from .. import registry

    return registry.record(model_name).fp32_only if model_name in registry.MODELS else None


def fp32_nodes(model, model_name: str = "", name_patterns: tuple[str, ...] = ()) -> PrecisionPlan:
    """Apply the rule to an onnx.ModelProto (not modified)."""
    g = model.graph
    names = _node_names(g)
    if fp32_only(model_name):
        return PrecisionPlan(False, (), {"fp32-only": len(names)})
    producers = {}
    for i, n in enumerate(g.node):
        for o in n.output:
            producers[o] = i
    consumers: dict[int, list[int]] = {i: [] for i in range(len(g.node))}
    parents: dict[int, list[int]] = {i: [] for i in range(len(g.node))}
    for i, n in enumerate(g.node):
        for t in n.input:
            p = producers.get(t)
            if p is not None:
                consumers[p].append(i)
                parents[i].append(p)
    compute = {i for i, n in enumerate(g.node) if n.op_type in COMPUTE_OPS}
    inits = {t.name for t in g.initializer}
    graph_inputs = {t.name for t in g.input} - inits
    # ONNX nodes are topologically sorted: one forward and one backward pass suffice.
    # `data[i]`: on the data path from a graph input. Nodes computed from weights alone
    # (Identity on shared initializers, folded constants) are TensorRT's to fold: not marked.
    has_up = [False] * len(g.node)
    data = [False] * len(g.node)
    for i, n in enumerate(g.node):
        has_up[i] = any(has_up[p] or p in compute for p in parents[i])
        data[i] = any(t in graph_inputs for t in n.input) or any(data[p] for p in parents[i])
    has_down = [False] * len(g.node)
    for i in reversed(range(len(g.node))):
        has_down[i] = any(has_down[c] or c in compute for c in consumers[i])
    floats = _float_tensors(model)
    keep, reasons = [], {}
    for i, n in enumerate(g.node):
        if n.op_type in PLUMBING_OPS or i in compute or not data[i]:
            continue
        if floats is not None and not any(t in floats for t in (*n.input, *n.output)):
            continue
        if n.op_type in ALWAYS_FP32_OPS:
            why = f"op:{n.op_type}"
        elif not has_up[i]:
            why = "head"
        elif not has_down[i]:
            why = "tail"
        elif any(p in names[i] for p in name_patterns):
            why = "name"
        else:
            continue
        keep.append(names[i])
        reasons[why] = reasons.get(why, 0) + 1
    return PrecisionPlan(True, tuple(keep), reasons)


def marked_copy(src: Path, dst: Path, plan: PrecisionPlan) -> Path:
    """Write `src` to `dst` with the FP32 nodes renamed MARK + name (external data kept)."""
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    names = _node_names(model.graph)
    keep = set(plan.fp32_nodes)
    for n, name in zip(model.graph.node, names):
        n.name = MARK + name if name in keep else name
    large = model.ByteSize() > 1_900_000_000
    onnx.save(model, str(dst), save_as_external_data=large,
              location=dst.name + ".data" if large else None)
    return dst
