"""Triton's response cache: which models carry it (contract/cache.py, the generator, every
profile), and the size setting from `python -m serving` / the containers' environment to
tritonserver's command line. The server's side (hits, identical answers, misses, off): the
integration test tests/integration/test_response_cache_live.py."""
from __future__ import annotations

from pathlib import Path

import pytest

import contract
from contract import cache, encoded
from serving import encoded as gen
from serving import profiles, run
from serving.tritonserver import (DEFAULT_RESPONSE_CACHE_BYTES, TritonInstall, TritonServer, TritonServerError,
                                  response_cache_bytes)

CONTRACTS = contract.load_all()
INSTALL = TritonInstall(binary=Path("/t/bin/tritonserver"), libs=Path("/t/lib"), python_backend=Path("/t/py"),
                        stub=Path("/t/stub"), caches=Path("/t/caches"))


def _contract(text: str) -> contract.ModelContract:
    cfg = contract.parse_config(text)
    return contract.ModelContract(cfg.name, Path(cfg.name), cfg)


ONE_OUT = '''name: "m" backend: "python" max_batch_size: 4
input [ { name: "x" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 8 ] } ]
response_cache { enable: true }
'''


# -- which models --------------------------------------------------------------------------
def test_the_committed_contract_caches_text_embed_only():
    """The caption route's ensemble (one output); every multi-output model is left to its
    encoded entry point's inner ensemble."""
    assert cache.check(CONTRACTS) == ("text_embed",)
    assert len(CONTRACTS["text_embed"].outputs) == 1 and CONTRACTS["text_embed"].kind == "ensemble"


@pytest.mark.parametrize("extra, why", [
    ("", None),
    ("model_transaction_policy { decoupled: true }", "decoupled"),
    ("sequence_batching { }", "sequence batching"),
    ('output [ { name: "z" data_type: TYPE_FP32 dims: [ 2 ] } ]', "2 outputs"),
    ('output [ { name: "z" data_type: TYPE_FP32 dims: [ 2 ] } ] '
     'parameters { key: "cache_called_by" value { string_value: "m_outer" } }', None),
])
def test_what_triton_cannot_cache_is_refused(extra, why):
    c = _contract(ONE_OUT + extra)
    reason = cache.unsafe_reason(c)
    assert (reason is None) if why is None else (why in reason)
    if why:
        with pytest.raises(cache.CacheError, match=why):
            cache.check({"m": c})


def test_a_derivation_refuses_an_unsafe_cache(tmp_path):
    src = tmp_path / "src"
    (src / "m" / "1").mkdir(parents=True)
    (src / "m" / "1" / "model.py").write_text("")
    (src / "m" / "config.pbtxt").write_text(ONE_OUT + 'output [ { name: "z" data_type: TYPE_FP32 dims: [ 2 ] } ]')
    with pytest.raises(profiles.ProfileError, match="partial answer"):
        profiles.derive("cpu", dest=tmp_path / "out", source=src)


@pytest.mark.parametrize("profile", ["cpu", "openvino", "onnx-gpu", "gpu"])
def test_every_profile_keeps_the_contract_and_caches_each_entry_inside(profile):
    if profile == "gpu":
        pytest.importorskip("pipelines.dali_letterbox", reason="pipelines/dali_letterbox.py (the dali branch)")
    made = {n: cfg for n, (cfg, _) in gen.configs(CONTRACTS, profile).items()}
    if profile != "gpu":
        assert profiles.transform(CONTRACTS["text_embed"].config, profile).response_cache.enable
    on = {n for n, cfg in made.items() if cfg.response_cache.enable}
    entries = encoded.entry_models(CONTRACTS)
    assert entries and on == {m + gen.CACHED_SUFFIX for m in entries}
    for m in entries:
        inner = made[m + gen.CACHED_SUFFIX]
        assert inner.parameters[cache.CALLED_BY].string_value == m + "_encoded"
        c = contract.ModelContract(inner.name, Path(inner.name), inner)
        assert cache.unsafe_reason(c) is None
        outer = made[m + "_encoded"]
        assert not outer.response_cache.enable
        # the only caller asks for every output: the cached answer is always whole
        assert set(outer.ensemble_scheduling.step[0].output_map) == {o.name for o in inner.output}


def test_the_derived_cpu_repository_caches_exactly_those(tmp_path):
    d = profiles.derive("cpu", dest=tmp_path / "repo", skip_missing=True)
    served = contract.load_all(d.path)
    on = {n for n, c in served.items() if cache.enabled(c)}
    want = {m + gen.CACHED_SUFFIX for m in encoded.entry_models({m: served[m] for m in d.models})}
    assert on == want | ({"text_embed"} & set(d.models))
    # inner ensembles are no committed model: their exemption is their own parameter
    assert cache.check(served) == tuple(sorted(on))


# -- the size setting -------------------------------------------------------------------------
def _command(**kw) -> list[str]:
    return TritonServer(Path("/nonexistent"), **kw).command(INSTALL)


def test_the_command_carries_the_cache_and_its_library_folder():
    cmd = _command(response_cache_bytes=64 << 20)
    assert "--cache-config=local,size=67108864" in cmd
    assert "--cache-directory=/t/caches" in cmd
    off = _command()
    assert not [a for a in off if a.startswith("--cache")]


def test_an_install_without_a_caches_folder_leaves_tritons_default():
    inst = TritonInstall(binary=Path("/t/b"), libs=Path("/t/l"), python_backend=Path("/t/p"), stub=Path("/t/s"))
    cmd = TritonServer(Path("/x"), response_cache_bytes=2 << 20).command(inst)
    assert "--cache-config=local,size=2097152" in cmd and not [a for a in cmd if a.startswith("--cache-dir")]


@pytest.mark.parametrize("size", [-1, 1, 1023, (1 << 20) - 1])
def test_sizes_triton_cannot_use_are_refused(size):
    with pytest.raises(TritonServerError, match="0"):
        TritonServer(Path("/x"), response_cache_bytes=size)


def test_the_wheel_ships_the_local_cache():
    try:
        inst = TritonInstall.locate()
    except TritonServerError as exc:
        pytest.skip(str(exc))
    assert (inst.caches / "local" / "libtritoncache_local.so").is_file()


def test_the_environment_sets_the_default():
    assert response_cache_bytes({}) == DEFAULT_RESPONSE_CACHE_BYTES == 256 << 20
    assert response_cache_bytes({"VISIONSERVE_RESPONSE_CACHE_BYTES": "0"}) == 0
    assert response_cache_bytes({"VISIONSERVE_RESPONSE_CACHE_BYTES": " 1048576 "}) == 1 << 20
    with pytest.raises(TritonServerError, match="VISIONSERVE_RESPONSE_CACHE_BYTES"):
        response_cache_bytes({"VISIONSERVE_RESPONSE_CACHE_BYTES": "256Mi"})


def test_python_m_serving_takes_the_flag(monkeypatch, capsys):
    args = run._parser().parse_args(["serve", "--response-cache-bytes", "0"])
    assert args.response_cache_bytes == 0
    assert run._parser().parse_args(["run"]).response_cache_bytes is None      # -> the environment / default
    # a size Triton cannot use stops `serve` with a message, before anything starts
    monkeypatch.setattr(run, "_derive", lambda a: profiles.Derived("cpu", Path("/nonexistent"), ()))
    assert run.main(["serve", "--response-cache-bytes", "100"]) == 2
    assert "too small" in capsys.readouterr().err


def test_deploy_passes_the_environment_to_the_ngc_server(monkeypatch):
    from deploy import entrypoint

    monkeypatch.setenv("VISIONSERVE_RESPONSE_CACHE_BYTES", str(32 << 20))
    cmd = entrypoint.triton_command(Path("/r"), "k", [])
    assert f"--cache-config=local,size={32 << 20}" in cmd
    assert f"--cache-directory={entrypoint.TRITON_HOME / 'caches'}" in cmd
    monkeypatch.setenv("VISIONSERVE_RESPONSE_CACHE_BYTES", "0")
    assert not [a for a in entrypoint.triton_command(Path("/r"), "k", []) if a.startswith("--cache")]


# -- make bench-cache's pieces (its live run starts two Tritons: docs/testing.md) ---------------
def test_the_replay_repeats_the_asked_share_of_inputs_already_sent():
    from perf.bench_cache import replay_sequence

    seq = replay_sequence(2000, 0.3, first=100)
    repeats = sum(1 for k, i in enumerate(seq) if i in seq[:k])
    assert abs(repeats / len(seq) - 0.3) < 0.03
    assert seq[0] == 100 and set(seq) == set(range(100, 100 + len(set(seq))))   # new inputs numbered in order
    assert replay_sequence(50, 0.3, first=1) == replay_sequence(50, 0.3, first=1)  # both servers get the same


def test_the_report_refuses_a_cache_off_server_that_looked_up():
    from perf.bench_cache import BenchError, report

    r = {"m": {"miss": [0.1, 0.2], "hit": [0.001, 0.002],
               "on": {"lat": [0.1, 0.001], "hits": 1, "misses": 1, "rate": 0.5},
               "off": {"lat": [0.1, 0.1], "hits": 0, "misses": 0, "rate": float("nan")}}}
    text = report(r, 2, 2, 0.3)
    assert "| m | 50% (1 of 2) |" in text and "| m | 150.0 |" in text
    r["m"]["off"]["hits"] = 1
    with pytest.raises(BenchError, match="cache-off server"):
        report(r, 2, 2, 0.3)
