"""The encoded entry points' rule (contract/encoded.py) and their generated models
(serving/encoded.py) for the python-decode profiles and the DALI (gpu) repository."""
from __future__ import annotations

from pathlib import Path

import pytest

import contract
from contract import ContractError, defaults, encoded, mc
from contract.facts import GEOMETRY_OUTPUTS, facts
from contract.routes import from_contracts
from serving import encoded as gen
from serving import profiles

CONTRACTS = contract.load_all()
ENTRIES = gen.entries(CONTRACTS)


def _contract(text: str) -> contract.ModelContract:
    cfg = contract.parse_config(text)
    return contract.ModelContract(cfg.name, Path(cfg.name), cfg)


FRAME_IN = 'input [{ name: "images" data_type: TYPE_UINT8 dims: [ 320, 480, 3 ] }]'
BOXES_OUT = 'output [{ name: "boxes" data_type: TYPE_FP32 dims: [ 10, 4 ] }]'
ROUTE = 'parameters { key: "route" value { string_value: "detect" } }'


@pytest.mark.parametrize("text, has", [
    (f'name: "a" max_batch_size: 4 {FRAME_IN} {BOXES_OUT} {ROUTE}', True),
    (f'name: "a" max_batch_size: 4 {FRAME_IN} {BOXES_OUT}', False),                    # not served to clients
    (f'name: "a" max_batch_size: 4 input [{{ name: "tokens" data_type: TYPE_INT32 dims: [ 77 ] }}] '
     f'{BOXES_OUT} {ROUTE}', False),                                                     # no frame input
    (f'name: "a" max_batch_size: 4 input [{{ name: "images" data_type: TYPE_UINT8 dims: [ 320, 480, 3 ] }},'
     f'{{ name: "landmarks" data_type: TYPE_FP32 dims: [ -1, 5, 2 ] }}] {BOXES_OUT} {ROUTE}', False),
    (f'name: "a" max_batch_size: 4 input [{{ name: "images" data_type: TYPE_FP32 dims: [ 320, 480, 3 ] }}] '
     f'{BOXES_OUT} {ROUTE}', False),                                                     # not uint8
    (f'name: "a" max_batch_size: 4 input [{{ name: "images" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }}] '
     f'{BOXES_OUT} {ROUTE}', False),                                                     # not a fixed frame
    (f'name: "a" backend: "python" max_batch_size: 4 {FRAME_IN} {BOXES_OUT} '
     'parameters { key: "steps" value { string_value: "x,y" } }', True),                # a pipeline
])
def test_rule(text, has):
    c = _contract(text)
    assert encoded.has_entry(c) is has
    if has:
        assert encoded.frame(c) == (320, 480)


def test_committed_repository_entries():
    """Every routed model on a frame gets one, the text route's does not, nor do steps only
    pipelines call; the pipelines clients call directly (detect_embed) do."""
    names = {e.model for e in ENTRIES}
    table = from_contracts(CONTRACTS)
    routed = set(table.models)
    assert {m for m in routed if encoded.frame(CONTRACTS[m])} <= names
    assert "text_embed" in routed and "text_embed" not in names
    assert {"yolo", "centernet", "faces", "faces_scrfd_500m", "ocr", "analyze", "mobileclip_image",
            "detect_embed"} <= names
    assert not names & {"scrfd", "clip_resize", "ppocr_det", "face_align", "arcface", "ppocr_rec"}
    assert [e.name for e in ENTRIES] == [m + "_encoded" for m in sorted(names)]


@pytest.mark.parametrize("e", ENTRIES, ids=lambda e: e.name)
def test_every_coordinate_output_is_declared(e):
    """A detector's boxes left out of geometry_outputs would come back in frame pixels."""
    spatial = {o.name for o in CONTRACTS[e.model].outputs
               if o.name.endswith(("boxes", "landmarks", "polygons"))}
    assert set(e.geometry) == spatial


def test_image_embedding_has_no_geometry():
    assert next(e for e in ENTRIES if e.model == "mobileclip_image").geometry == ()


@pytest.mark.parametrize("value, ok", [("boxes", True), ("boxes, boxes", False), ("nope", False),
                                       ("num_detections", False), ("", True)])
def test_geometry_outputs_checked(value, ok):
    c = _contract(f'name: "a" max_batch_size: 4 {FRAME_IN} output [{{ name: "boxes" data_type: TYPE_FP32 '
                  f'dims: [ 10, 4 ] }}, {{ name: "num_detections" data_type: TYPE_INT32 dims: [ 1 ] }}] '
                  f'parameters {{ key: "{GEOMETRY_OUTPUTS}" value {{ string_value: "{value}" }} }}')
    if ok:
        assert facts(c).geometry_outputs == tuple(v for v in [value] if v)
    else:
        with pytest.raises(ContractError, match=GEOMETRY_OUTPUTS):
            facts(c)


def _io(cfg: mc.ModelConfig):
    spec = lambda t: (t.data_type, tuple(t.dims))  # noqa: E731
    return {t.name: spec(t) for t in cfg.input}, {t.name: spec(t) for t in cfg.output}


def _check_wiring(ens: mc.ModelConfig, models: dict[str, mc.ModelConfig]) -> list[str]:
    """Triton's ensemble rules, checked here: each step's maps name its own tensors, every
    tensor is produced once before it is used with one dtype, every output is produced."""
    ins, outs = _io(ens)
    produced = {name: dt for name, (dt, _) in ins.items()}
    order = []
    for step in ens.ensemble_scheduling.step:
        s_in, s_out = _io(models[step.model_name])
        assert set(step.input_map) == set(s_in), step.model_name
        for inner, outer in step.input_map.items():
            assert produced[outer] == s_in[inner][0], (step.model_name, inner)
        for inner, outer in step.output_map.items():
            assert outer not in produced, outer
            produced[outer] = s_out[inner][0]
        assert ens.max_batch_size <= models[step.model_name].max_batch_size
        order.append(step.model_name)
    for name, (dt, _) in outs.items():
        assert produced.get(name) == dt, name
    return order


@pytest.mark.parametrize("profile", ["cpu", "openvino", "onnx-gpu", "gpu"])
def test_generated_models(profile):
    if profile == "gpu":
        pytest.importorskip("pipelines.dali_letterbox", reason="the dali branch's pipelines/dali_letterbox.py")
    made = gen.configs(CONTRACTS, profile, threads=3)
    models = {n: cfg for n, (cfg, _) in made.items()}
    models.update({n: c.config for n, c in CONTRACTS.items()})
    for e in ENTRIES:
        c = CONTRACTS[e.model]
        for ens in (models[e.name], models[e.cached]):
            assert ens.platform == "ensemble"
            ins, outs = _io(ens)
            assert ins == {"image": (mc.TYPE_STRING, (1,))}
            assert outs == {**_io(c.config)[1], "original_size": (mc.TYPE_INT32, (2,))}
            assert list(outs)[:-1] == [o.name for o in c.outputs]
            assert ens.max_batch_size == c.max_batch_size
        # what clients call: the cached chain, asked for every output (Triton caches only those asked)
        assert _check_wiring(models[e.name], models) == [e.cached]
        (only,) = models[e.name].ensemble_scheduling.step
        assert dict(only.output_map) == {o: o for o in outs}
        assert not models[e.name].response_cache.enable and models[e.cached].response_cache.enable
        # every step names version 1 (perf_analyzer 2.50 fails on a nested ensemble's -1)
        for ens in (models[e.name], models[e.cached]):
            assert {st.model_version for st in ens.ensemble_scheduling.step} == {gen.STEP_VERSION} == {1}
        order = _check_wiring(models[e.cached], models)
        w, h = e.frame[1], e.frame[0]
        front = [gen.CHECK, f"letterbox_{w}x{h}"] if profile == "gpu" else [f"encoded_decode_{w}x{h}"]
        assert order == front + [e.model, e.model + "_encoded_remap"]
        remap_in, remap_out = _io(models[e.model + "_encoded_remap"])
        assert set(remap_out) == set(e.geometry) | {"original_size"}
        assert set(remap_in) == set(e.geometry) | {"size", "scale"}
    frames = {e.frame for e in ENTRIES}
    decoders = {n for n in made if n.startswith(("encoded_decode_", "letterbox_"))}
    assert len(decoders) == len(frames) == 3          # 640x640, 512x512 (centernet), 256x256 (clip)
    for n in decoders:
        cfg = models[n]
        users = [e for e in ENTRIES if (e.decoder if profile != "gpu" else e.dali) == n]
        assert cfg.max_batch_size == max(CONTRACTS[e.model].max_batch_size for e in users)
        if profile == "gpu":
            assert cfg.backend == "dali" and cfg.input[0].data_type == mc.TYPE_UINT8
            assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        else:
            p = {k: v.string_value for k, v in cfg.parameters.items()}
            assert p == {"max_image_pixels": str(defaults.MAX_IMAGE_PIXELS),
                         "max_image_side": str(defaults.MAX_IMAGE_SIDE),
                         "pad_value": str(defaults.PAD_VALUE), "decode_threads": "3"}
    modules = {n: m for n, (_, m) in made.items() if m}
    assert set(modules.values()) == {"encoded_decode", "encoded_remap"}


def test_a_tool_reads_an_entry_from_the_committed_repository():
    """`<model>_encoded` is derived only; encoded.load_any gives its interface from the
    model's contract (what perf.analyzer estimates and feeds), and refuses a model the rule
    gives no entry."""
    got = encoded.load_any("yolo_encoded")
    assert got.name == "yolo_encoded" and _io(got.config) == _io(encoded.entry_contract(CONTRACTS["yolo"]).config)
    assert encoded.load_any("yolo").config == CONTRACTS["yolo"].config
    with pytest.raises(ContractError, match="no encoded entry point"):
        encoded.load_any("scrfd_encoded")
    with pytest.raises(ContractError, match="no config"):
        encoded.load_any("nothing_encoded")


def test_no_entries_without_frame_models():
    only_text = {n: c for n, c in CONTRACTS.items() if n in ("text_embed", "clip_tokenizer", "mobileclip_text")}
    assert gen.configs(only_text, "cpu") == {}


def test_derived_cpu_repository_has_them(tmp_path):
    d = profiles.derive("cpu", dest=tmp_path / "repo", skip_missing=True)
    derived = contract.load_all(d.path)
    expected = gen.entries({m: derived[m] for m in d.models})
    assert expected and set(d.encoded) >= {e.name for e in expected}
    for e in expected:
        assert derived[e.name].steps == (e.cached,)
        assert derived[e.cached].steps == (e.decoder, e.model, e.remap)
        assert (d.path / e.remap / "1" / "model.py").read_text() == gen.entry_source("encoded_remap")
    # the gateway's route table is unchanged by them (they state no route)
    assert from_contracts(derived).models == from_contracts({m: derived[m] for m in d.models}).models


def test_cli_writes_gpu_configs(tmp_path):
    pytest.importorskip("pipelines.dali_letterbox", reason="the dali branch's pipelines/dali_letterbox.py")
    assert gen.main(["--profile", "gpu", "--out", str(tmp_path)]) == 0
    written = contract.load_all(tmp_path)
    assert {e.name for e in ENTRIES} <= set(written)
    assert (tmp_path / gen.CHECK / "1" / "model.py").is_file()
    assert not list(tmp_path.glob("letterbox_*/1/model.dali"))    # a build artifact: --serialize
