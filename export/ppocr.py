"""PP-OCRv4 text detection (DB) and recognition (CTC), real weights from a PyPI wheel.

The networks are PaddlePaddle models already converted to ONNX (by paddle2onnx) and
shipped inside `rapidocr-onnxruntime==1.4.4` (Apache-2.0). We do not rebuild them in
torch: we wrap the original graph with ONNX nodes instead, so the weights are bit-exact.

    uint8 NHWC RGB -> Cast, NCHW, RGB->BGR, x * (scale/std) - mean/std -> original graph
      ppocr_det: sigmoid map [B,1,H,W] -> prob_map uint8 [B,H,W] = round(p * 255)
      ppocr_rec: softmax [B,T,C] -> char_ids int32 [B,T] (argmax), char_scores fp32 [B,T] (max)

The recogniser keeps the original graph's variable width: crops [B,48,W,3] give T = W/8 steps
(the config's variable_dim_range and variable_dim_output_divisor); the export is checked at
the range's min, opt, max and a width between (check_widths).

Preprocessing follows the wheel (rapidocr_onnxruntime/config.yaml and its python code):
images are read with OpenCV, so the networks see BGR; det: (x/255 - 0.5)/0.5 (the
wheel's mean/std 0.5, not ImageNet's); rec: height 48, (x/255 - 0.5)/0.5, padded on the
right with normalised 0 (pixel 127.5; the pipeline pads crops with 128).

The recognition alphabet lives in the rec ONNX metadata "character" (one char a line);
PaddleOCR's decoder prepends the CTC blank (id 0) and appends a space. export() writes
it to model_repository/ocr/1/charset.txt (line i = id i+1), a build artefact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .base import OPSET, ExportError, ExportJob


# (x * SCALE - MEAN) / STD per channel, in the network's (BGR) order; from config.yaml.
SCALE = 1.0 / 255.0
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
BGR = True

CHARSET_MODEL_DIR = ("ocr", "1")      # where the ocr BLS model reads the alphabet
CHARSET_FILE = "charset.txt"
CHARSET_METADATA_KEY = "character"


# ---------------------------------------------------------------- charset

def charset_from_model(model) -> list[str]:
    """The alphabet as PaddleOCR decodes it: [chars..., " "] (the blank is id 0, not listed)."""
    meta = {p.key: p.value for p in model.metadata_props}
    if CHARSET_METADATA_KEY not in meta:
        raise ExportError(
            "the recognition ONNX has no 'character' metadata (the alphabet); PaddleOCR exports "
            "from rapidocr carry it - use one of those or the default wheel weights")
    # split("\n"), not splitlines(): the alphabet contains characters that splitlines()
    # treats as line breaks in other alphabets (e.g. \x1c, \u2028); rapidocr's list has none.
    chars = meta[CHARSET_METADATA_KEY].split("\n")
    if chars and chars[-1] == "":
        chars = chars[:-1]
    return [*chars, " "]


def write_charset(chars: list[str], path: Path) -> None:
    if any("\n" in c for c in chars):
        raise ExportError("a character of the alphabet contains a newline; cannot write charset.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(chars) + "\n", encoding="utf-8")
    tmp.replace(path)


def charset_path(repository: Path) -> Path:
    return Path(repository).joinpath(*CHARSET_MODEL_DIR, CHARSET_FILE)


# ---------------------------------------------------------------- graph wrapping

def _wrap(model, job: ExportJob):
    """Prepend uint8 NHWC RGB preprocessing and append the contract's outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper, version_converter

    c = job.contract
    if len(c.inputs) != 1:
        raise ExportError(f"{c.name}: expected one input in the config, got {len(c.inputs)}")
    spec_in = c.inputs[0]
    h, w, ch = spec_in.dims
    if ch != 3 or h < 1:
        raise ExportError(f"{c.name}: config input must be [H, W, 3] (W may be -1), got {spec_in.dims}")
    g0 = model.graph
    if len(g0.input) != 1 or len(g0.output) != 1:
        raise ExportError(f"{c.name}: expected a PaddleOCR graph with one input and one output, "
                          f"got {len(g0.input)} inputs / {len(g0.output)} outputs")

    model = version_converter.convert_version(model, OPSET)
    g = model.graph
    net_in, net_out = g.input[0].name, g.output[0].name
    dims_in = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    if len(dims_in) != 4 or dims_in[1] != 3:
        raise ExportError(f"{c.name}: expected an NCHW 3-channel input, got dims {dims_in}")
    del g.input[:]
    del g.output[:]
    del g.value_info[:]   # paddle2onnx's symbolic dims; re-inferred below with fixed H, W

    std = np.asarray(STD, np.float32)
    mul = (SCALE / std).reshape(1, 3, 1, 1).astype(np.float32)
    add = (-np.asarray(MEAN, np.float32) / std).reshape(1, 3, 1, 1).astype(np.float32)
    consts = {
        "pre_channel_order": np.asarray([2, 1, 0] if BGR else [0, 1, 2], np.int64),
        "pre_mul": mul, "pre_add": add,
    }
    pre = [
        helper.make_node("Cast", [spec_in.name], ["pre_float"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pre_float"], ["pre_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Gather", ["pre_nchw", "pre_channel_order"], ["pre_bgr"], axis=1),
        helper.make_node("Mul", ["pre_bgr", "pre_mul"], ["pre_scaled"]),
        helper.make_node("Add", ["pre_scaled", "pre_add"], [net_in]),
    ]
    if c.name == "ppocr_det":
        post, outputs = _det_post(c, net_out, consts, helper, TensorProto)
    else:
        post, outputs = _rec_post(c, net_out, consts, helper, TensorProto)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    nodes = [*pre, *g.node, *post]
    del g.node[:]
    g.node.extend(nodes)
    g.input.append(helper.make_tensor_value_info(spec_in.name, TensorProto.UINT8,
                                                 ["batch", *(d if d > 0 else "width" for d in (h, w)), 3]))
    g.output.extend(outputs)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def _det_post(c, net_out, consts, helper, TensorProto):
    (spec,) = c.outputs
    consts["post_axis1"] = np.asarray([1], np.int64)
    consts["post_255"] = np.asarray(255.0, np.float32)
    consts["post_0"] = np.asarray(0.0, np.float32)
    # Round before the cast: Cast truncates, and 0.5-steps matter at the 0.3/0.6 thresholds.
    post = [
        helper.make_node("Squeeze", [net_out, "post_axis1"], ["post_prob"]),
        helper.make_node("Mul", ["post_prob", "post_255"], ["post_prob255"]),
        helper.make_node("Round", ["post_prob255"], ["post_round"]),
        helper.make_node("Clip", ["post_round", "post_0", "post_255"], ["post_clip"]),
        helper.make_node("Cast", ["post_clip"], [spec.name], to=TensorProto.UINT8),
    ]
    return post, [helper.make_tensor_value_info(spec.name, TensorProto.UINT8, ["batch", *spec.dims])]


def _rec_post(c, net_out, consts, helper, TensorProto):
    ids, scores = c.output("char_ids"), c.output("char_scores")
    post = [
        helper.make_node("ArgMax", [net_out], ["post_argmax"], axis=2, keepdims=0),
        helper.make_node("Cast", ["post_argmax"], [ids.name], to=TensorProto.INT32),
        helper.make_node("ReduceMax", [net_out], [scores.name], axes=[2], keepdims=0),
    ]
    def dims(spec):   # a variable step count (a variable-width input) stays symbolic
        return ["batch", *(d if d > 0 else "steps" for d in spec.dims)]

    return post, [
        helper.make_tensor_value_info(ids.name, TensorProto.INT32, dims(ids)),
        helper.make_tensor_value_info(scores.name, TensorProto.FLOAT, dims(scores)),
    ]


def check_widths(contract) -> tuple[int, ...]:
    """Input widths the export is checked at: the fixed one, or the variable range's min, opt
    and max plus a width between two of them."""
    rng = contract.variable_dim_range
    if rng is None:
        return (contract.inputs[0].dims[1],)
    lo, opt, hi = rng
    between = (opt + hi) // 2 // contract.variable_dim_output_divisor * contract.variable_dim_output_divisor
    return tuple(sorted({lo, opt, between, hi}))


def _check_shapes(path: Path, job: ExportJob) -> None:
    """Run the wrapped graph at batch 2 (at each width of check_widths for a variable-width
    recogniser) and hold every output to the config's dims."""
    import onnxruntime as ort

    c = job.contract
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for width in check_widths(c):
        at = c.with_variable_dims(width)
        spec_in = at.inputs[0]
        x = np.zeros((2, *spec_in.dims), np.uint8)
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {spec_in.name: x})))
        for spec in at.outputs:
            got = outs.get(spec.name)
            if got is None:
                raise ExportError(f"{c.name}: the wrapped graph has no output {spec.name!r}")
            if got.shape != (2, *spec.dims) or got.dtype != spec.dtype:
                hint = ""
                if spec.name == "char_ids":
                    hint = (f" (the recogniser emits {got.shape[1]} time steps for width {spec_in.dims[1]};"
                            " the config's dims and variable_dim_output_divisor must say the same)")
                raise ExportError(f"{c.name}: output {spec.name} is {got.dtype}{list(got.shape)}, "
                                  f"the config says {spec.dtype}{[2, *spec.dims]}{hint}")


def export(job: ExportJob) -> None:
    import onnx

    if job.weights.path is None:
        raise ExportError(f"{job.name}: PP-OCR needs real weights (no synthetic variant)")
    job.progress(f"loading {job.weights.path.name} ({job.weights.path.stat().st_size / 1e6:.1f} MB)")
    original = onnx.load(str(job.weights.path))
    chars = None
    if job.name == "ppocr_rec":
        chars = charset_from_model(original)
        n_cls = original.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
        if n_cls and n_cls != len(chars) + 1:
            raise ExportError(f"ppocr_rec: the network has {n_cls} classes but its alphabet "
                              f"gives {len(chars) + 1} (blank + {len(chars) - 1} chars + space)")
    job.progress(f"wrapping: uint8 NHWC RGB in, BGR (x/255-{MEAN[0]})/{STD[0]} inside, opset {OPSET}")
    wrapped = _wrap(original, job)
    onnx.save(wrapped, str(job.out_path))
    job.progress(f"checking output shapes against the config at batch 2, widths {check_widths(job.contract)}")
    _check_shapes(job.out_path, job)
    if chars is not None:
        dest = charset_path(job.contract.path.parent.parent)
        write_charset(chars, dest)
        job.progress(f"wrote {len(chars)} characters (+ blank) to {dest}")


# ---------------------------------------------------------------- reference

def reference(job: ExportJob) -> Callable[[np.ndarray], dict[str, np.ndarray]] | None:
    """The ORIGINAL graph run image by image with numpy preprocessing, as rapidocr does."""
    import onnxruntime as ort

    if job.weights.path is None:
        return None
    sess = ort.InferenceSession(str(job.weights.path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def prep(img: np.ndarray) -> np.ndarray:
        bgr = img[..., ::-1] if BGR else img
        x = (bgr.astype(np.float32) * SCALE - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
        return x.transpose(2, 0, 1)[None].astype(np.float32)

    input_name = job.contract.inputs[0].name

    def batch_of(images) -> np.ndarray:  # a bare array, or verify's {input name: array}
        return np.asarray(images[input_name] if isinstance(images, dict) else images)

    if job.name == "ppocr_det":
        def run(images) -> dict[str, np.ndarray]:
            images = batch_of(images)
            maps = [sess.run(None, {name: prep(im)})[0][0, 0] for im in images]
            return {"prob_map": np.clip(np.round(np.stack(maps) * 255.0), 0, 255).astype(np.uint8)}
    else:
        def run(images) -> dict[str, np.ndarray]:
            images = batch_of(images)
            probs = np.concatenate([sess.run(None, {name: prep(im)})[0] for im in images])
            return {"char_ids": probs.argmax(-1).astype(np.int32),
                    "char_scores": probs.max(-1).astype(np.float32)}
    return run


def sample_inputs(contract, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Recogniser checks on printed words (export/samples.py's text strips), at the range's opt
    width unless the contract is already concrete (verify passes each width it checks)."""
    from .samples import real_frames

    (spec,) = contract.with_variable_dims("opt").inputs
    return {spec.name: real_frames(batch, spec.dims[0], spec.dims[1], rng)}


def side_artifacts(contract) -> list[Path]:
    """The recogniser's export also writes the OCR pipeline's charset."""
    return [charset_path(contract.path.parent.parent)] if contract.name == "ppocr_rec" else []
