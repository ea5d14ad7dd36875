"""The export gates can say no: `python -m export.verify` fails (exit 1) on a wrong export,
and the export runner re-exports exactly when something that shapes the file changed.
On clip_resize (a resize graph, no weights: exported in a fraction of a second)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from export import runner  # noqa: E402
from export import verify  # noqa: E402
from export.base import WeightsSearch  # noqa: E402
from contract import MODEL_REPOSITORY  # noqa: E402

MODEL = "clip_resize"


@pytest.fixture
def repo(tmp_path):
    """A repository holding only clip_resize's committed config, exported once."""
    (tmp_path / MODEL).mkdir()
    shutil.copy(MODEL_REPOSITORY / MODEL / "config.pbtxt", tmp_path / MODEL / "config.pbtxt")
    assert runner.export_one(MODEL, WeightsSearch(), tmp_path).status == "exported"
    return tmp_path


def _verify(repo) -> int:
    return verify.main(["--models", MODEL, "--repository", str(repo)])


def _failed(repo) -> list[str]:
    return [c.name for c in verify.check_model(MODEL, repo, WeightsSearch()) if c.status == verify.FAIL]


def test_a_good_export_passes(repo, capsys):
    assert _verify(repo) == 0, capsys.readouterr().out


def test_verify_fails_on_a_graph_that_computes_something_else(repo, capsys):
    """The right interface, the wrong numbers: +1 on every output pixel."""
    from onnx import TensorProto, helper, numpy_helper

    path = runner.onnx_path(MODEL, repo)
    m = onnx.load(str(path))
    out = m.graph.output[0].name
    inner = out + "_before"
    for node in m.graph.node:
        node.output[:] = [inner if o == out else o for o in node.output]
    m.graph.initializer.append(numpy_helper.from_array(np.array(1, np.uint8), "one"))
    m.graph.node.append(helper.make_node("Add", [inner, "one"], [out]))
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.UINT8
    onnx.save(m, str(path))
    assert _verify(repo) == 1
    assert any(name.startswith("ORT vs reference") for name in _failed(repo)), capsys.readouterr().out


def test_verify_fails_on_a_graph_that_breaks_the_contract(repo):
    """An output dim that is not the config's: the interface check fails."""
    path = runner.onnx_path(MODEL, repo)
    m = onnx.load(str(path))
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 224
    onnx.save(m, str(path))
    assert _verify(repo) == 1
    assert f"output {m.graph.output[0].name}" in _failed(repo)


def test_verify_fails_on_a_missing_export(tmp_path):
    (tmp_path / MODEL).mkdir()
    shutil.copy(MODEL_REPOSITORY / MODEL / "config.pbtxt", tmp_path / MODEL / "config.pbtxt")
    assert _verify(tmp_path) == 1
    assert _failed(tmp_path) == ["exported"]


def test_the_runner_re_exports_when_an_input_changes(repo):
    search = WeightsSearch()
    assert runner.export_one(MODEL, search, repo).status == "up-to-date"
    cfg = repo / MODEL / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "\n# a changed config is a changed input\n")
    assert runner.export_one(MODEL, search, repo).status == "exported"
    assert runner.export_one(MODEL, search, repo).status == "up-to-date"
    runner.onnx_path(MODEL, repo).unlink()                    # the file itself gone
    assert runner.export_one(MODEL, search, repo).status == "exported"
    record = runner.read_record(MODEL, repo)
    record["fingerprint"] = "stale"                           # exported by other code or weights
    runner.onnx_path(MODEL, repo).with_name(runner.EXPORT_RECORD).write_text(__import__("json").dumps(record))
    assert runner.export_one(MODEL, search, repo).status == "exported"
    assert runner.export_one(MODEL, search, repo, force=True).status == "exported"
