"""Profiles derive from the committed configs (min 1, opt = largest preferred, max = max_batch_size)."""
from __future__ import annotations

import pytest

import contract
from contract import ModelContract, parse_config
from export.engines.build import engine_models
from export.engines.errors import ProfileError
from export.engines.profiles import check_onnx_inputs, derive_profile, trtexec_shapes


def test_every_tensorrt_model_gets_a_profile_from_its_config():
    models = engine_models()
    assert "arcface" in models and "faces" not in models and "analyze" not in models
    for name in models:
        c = contract.load(name)
        p = derive_profile(c)
        pref = c.preferred_batch_sizes
        assert (p.min_batch, p.max_batch) == (1, c.max_batch_size)
        assert p.opt_batch == (max(pref) if pref else c.max_batch_size)
        assert [s.name for s in p.inputs] == [t.name for t in c.inputs]
        at = {w: c.with_variable_dims(w).inputs for w in ("min", "opt", "max")}
        for i, s in enumerate(p.inputs):
            assert s.min == (1, *at["min"][i].dims) and s.opt == (p.opt_batch, *at["opt"][i].dims)
            assert s.max == (c.max_batch_size, *at["max"][i].dims)
        assert p.serves_config


def test_arcface_profile_numbers():
    p = derive_profile(contract.load("arcface"))
    assert (p.min_batch, p.opt_batch, p.max_batch) == (1, 32, 64)
    assert p.inputs[0].opt == (32, 112, 112, 3)


def test_max_batch_override_clamps_opt_and_flags_config_mismatch():
    c = contract.load("arcface")                        # preferred 16, 32; max 64
    p = derive_profile(c, max_batch=20)
    assert (p.opt_batch, p.max_batch) == (16, 20) and not p.serves_config
    assert derive_profile(c, max_batch=8).opt_batch == 8   # no preferred size fits: opt = max
    assert derive_profile(c, max_batch=128).serves_config
    with pytest.raises(ProfileError, match="MAX_BATCH"):
        derive_profile(c, max_batch=0)


def _contract(text, tmp_path):
    cfg = parse_config(text)
    return ModelContract(cfg.name, tmp_path / "config.pbtxt", cfg)


def test_variable_dims_and_no_batching_are_user_errors(tmp_path):
    var = _contract('name: "v" platform: "tensorrt_plan" max_batch_size: 4 '
                    'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]', tmp_path)
    with pytest.raises(ProfileError, match="variable dims"):
        derive_profile(var)
    nob = _contract('name: "n" platform: "tensorrt_plan" max_batch_size: 0 '
                    'input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]', tmp_path)
    with pytest.raises(ProfileError, match="max_batch_size"):
        derive_profile(nob)


def test_onnx_inputs_are_held_to_the_config():
    p = derive_profile(contract.load("face_align"))
    ok = {"images": ("batch", 640, 640, 3), "landmarks": ("batch", "variable1", 5, 2)}
    check_onnx_inputs(p, ok)
    with pytest.raises(ProfileError, match="missing"):
        check_onnx_inputs(p, {"images": ok["images"]})
    with pytest.raises(ProfileError, match="fixed batch of 1"):
        check_onnx_inputs(p, {**ok, "images": (1, 640, 640, 3)})
    with pytest.raises(ProfileError, match="disagree"):
        check_onnx_inputs(p, {**ok, "landmarks": ("batch", "variable1", 5, 3)})
    check_onnx_inputs(p, {**ok, "landmarks": ("batch", 64, 5, 2)})   # a fixed size inside the range is fine
    with pytest.raises(ProfileError, match="rank"):
        check_onnx_inputs(p, {**ok, "images": ("batch", 640, 640)})


def test_trtexec_shape_specs():
    p = derive_profile(contract.load("face_align"))
    # faces per image (variable) span the config's variable_dim_range 1:4:64
    assert trtexec_shapes(p, "min") == "images:1x640x640x3,landmarks:1x1x5x2"
    assert trtexec_shapes(p, "opt") == "images:8x640x640x3,landmarks:8x4x5x2"
    assert trtexec_shapes(p, "max") == "images:16x640x640x3,landmarks:16x64x5x2"


def test_ppocr_rec_width_is_variable_and_its_steps_follow():
    """The recogniser's crop width spans variable_dim_range; its CTC steps (outputs) are the
    width / variable_dim_output_divisor, so estimates and expected shapes come out right."""
    c = contract.load("ppocr_rec")
    lo, opt, hi = c.variable_dim_range
    assert c.variable_dim_output_divisor == 8 and lo <= opt <= hi
    at = c.with_variable_dims("max")
    assert at.input("crops").dims == (48, hi, 3) and at.output("char_ids").dims == (hi // 8,)
    assert c.with_variable_dims(1000).output("char_scores").dims == (125,)
    p = derive_profile(c)
    assert trtexec_shapes(p, "min") == f"crops:1x48x{lo}x3"
    assert trtexec_shapes(p, "opt") == f"crops:{p.opt_batch}x48x{opt}x3"
    assert trtexec_shapes(p, "max") == f"crops:{c.max_batch_size}x48x{hi}x3"
    check_onnx_inputs(p, {"crops": ("batch", 48, "variable2", 3)})
    # the committed warmup and the CUDA graphs (no input shapes: Triton captures them at the
    # profile's opt dims) run at a width inside the range
    (warm,) = c.config.model_warmup
    assert lo <= warm.inputs["crops"].dims[1] <= hi


def test_a_variable_range_must_give_whole_output_steps(tmp_path):
    text = ('name: "r" platform: "tensorrt_plan" max_batch_size: 4 '
            'input [ { name: "x" data_type: TYPE_UINT8 dims: [ 48, -1, 3 ] } ] '
            'output [ { name: "y" data_type: TYPE_INT32 dims: [ -1 ] } ] '
            'parameters { key: "variable_dim_range" value { string_value: "%s" } } '
            'parameters { key: "variable_dim_output_divisor" value { string_value: "%s" } }')
    assert _contract(text % ("80:320:2048", "8"), tmp_path).with_variable_dims("min").output("y").dims == (10,)
    with pytest.raises(contract.ContractError, match="multiples"):
        _contract(text % ("80:320:2050", "8"), tmp_path).variable_dim_range
    with pytest.raises(contract.ContractError, match=">= 1"):
        _contract(text % ("80:320:2048", "0"), tmp_path).variable_dim_range
    # without a divisor an output's variable dim is the input's (face_align's faces)
    same = _contract((text % ("1:4:64", "1")).replace("dims: [ 48, -1, 3 ]", "dims: [ -1, 5, 2 ]"), tmp_path)
    assert same.with_variable_dims("opt").output("y").dims == (4,)
