"""Every model and pipeline of the CPU repository answers over gRPC and HTTP per its contract."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

import contract

from tests.support.triton import sample_inputs

pytestmark = pytest.mark.integration
MODELS = sorted(contract.load_all())


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", MODELS)
def test_infer_matches_the_contract(served, model, protocol):
    served.need(model)
    c = served.contracts[model]
    batch = min(2, c.max_batch_size)
    out = served.infer(protocol, model, sample_inputs(c, batch))
    for spec in c.with_variable_dims("opt").outputs:     # sample_inputs sends the range's opt
        arr = out[spec.name]
        assert arr.shape == (batch, *spec.dims), spec.name
        if spec.dtype == np.object_:
            assert arr.dtype == np.object_
        else:
            assert arr.dtype == spec.dtype, spec.name
            assert np.isfinite(arr).all() if arr.dtype.kind == "f" else True
    if "num_detections" in out or "num_faces" in out or "num_lines" in out:
        n = next(out[k] for k in ("num_detections", "num_faces", "num_lines") if k in out)
        k = c.outputs[0].dims[0]
        assert ((n >= 0) & (n <= k)).all()
    for name in ("embeddings", "image_embedding"):                # one unit-norm embedding per row
        if name in out and out[name].ndim == 2:
            np.testing.assert_allclose(np.linalg.norm(out[name], axis=-1), 1.0, atol=1e-3)


@pytest.mark.parametrize("model", MODELS)
def test_grpc_and_http_give_the_same_answer(served, model):
    served.need(model)
    c = served.contracts[model]
    x = sample_inputs(c, 1, seed=7)
    a, b = served.infer("grpc", model, x), served.infer("http", model, x)
    for name in a:
        if a[name].dtype == np.object_:
            assert (a[name] == b[name]).all(), name
        else:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_model_config_api_shows_weights_provenance(served):
    nets = [m for m in served.derived.models if contract.load(m).kind == "network"]
    if not nets:
        pytest.skip("no network model is exported (make export-onnx)")
    client = served.grpc()
    for m in nets:
        params = client.get_model_config(m, as_json=True)["config"]["parameters"]
        record = served.derived.path / m / "1" / "export.json"
        assert params["weights_provenance"]["string_value"] == json.loads(record.read_text())["provenance"]


def test_model_metadata_matches_the_committed_contract(served):
    client = served.grpc()
    for m in served.derived.models:
        meta = client.get_model_metadata(m, as_json=True)
        c = contract.load(m)
        got = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"] + meta["outputs"]}
        want = {s.name: (s.triton_dtype, [-1, *s.dims]) for s in (*c.inputs, *c.outputs)}
        assert got == want, m


def test_repository_api_is_restricted_behind_the_admin_key(served):
    url = f"http://{served.server.http_url}/v2/repository/index"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=10)
    assert err.value.code in (401, 403)
    req = urllib.request.Request(url, data=b"{}", method="POST", headers=served.server.admin_headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    # Model control is off: even with the key, nothing can be loaded or unloaded.
    load = urllib.request.Request(f"http://{served.server.http_url}/v2/repository/models/x/load", data=b"{}",
                                  method="POST", headers=served.server.admin_headers)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(load, timeout=10)
    assert served.server.is_ready()
