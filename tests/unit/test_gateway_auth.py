"""API keys (gateway/auth.py, the `api_keys_file` setting) through the app on a fake Triton."""
from __future__ import annotations

import re

import pytest

from gateway import auth
from gateway.__main__ import main
from gateway.app import create_app
from gateway.auth import ApiKeys, ApiKeysError
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend, metrics_text
from tests.support.fakes import JPEG, app_client

KEYS = {"alice": "k-alice-7f3a9c", "bob": "k-bob-0d1e2f"}


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# clients of the gateway\n\n"
                    + "".join(f"{label}:{key}\n" for label, key in KEYS.items()))
    return path


def post(c, headers=None):
    return c.post("/v1/detect", content=JPEG, headers={"content-type": "image/jpeg", **(headers or {})})


def test_no_key_or_a_wrong_one_is_401_every_valid_key_is_served(keys_file):
    with app_client(api_keys_file=keys_file) as c:
        for headers in ({}, {"x-api-key": "nope"}, {"authorization": "Bearer nope"},
                        {"authorization": f"Basic {KEYS['alice']}"},
                        {"x-api-key": KEYS["alice"][:-1]}):
            r = post(c, headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert KEYS["alice"] not in r.text
        for label, key in KEYS.items():
            assert post(c, {"authorization": f"Bearer {key}"}).status_code == 200, label
            assert post(c, {"x-api-key": key}).status_code == 200, label
        # the probes stay open (an orchestrator's probe carries no key)
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        text = metrics_text(c)
    # per key, its label: never the key
    for label in KEYS:
        assert re.search(rf'api_key_requests_total\{{key="{label}",status="200"\}} 2\.0', text), text
    assert re.search(r'api_key_requests_total\{key="",status="401"\} 5\.0', text)
    assert 'requests_total{route="/v1/detect",status="401"} 5.0' in text
    for key in KEYS.values():
        assert key not in text


def test_without_the_setting_no_key_is_required():
    with app_client() as c:
        assert post(c).status_code == 200


def test_a_request_without_a_key_holds_nothing(keys_file):
    """401 before admission: nothing charged to the memory budget, nothing sent to Triton."""
    fake = FakeBackend()
    with app_client(fake, api_keys_file=keys_file) as c:
        assert post(c).status_code == 401 and fake.calls == []
        assert "visionserve_gateway_memory_in_use_bytes 0.0" in metrics_text(c)


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "alice\n", ":key\n", "alice:\n",
                                  "a:1\na:2\n"])
def test_a_bad_file_fails_start_up(tmp_path, text):
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ApiKeysError) as err:
        create_app(GatewaySettings(api_keys_file=path), backend=FakeBackend())
    for secret in ("1", "2"):
        assert f":{secret}" not in str(err.value)


def test_python_m_gateway_refuses_to_start_on_a_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VISIONSERVE_GATEWAY_API_KEYS_FILE", str(tmp_path / "absent"))
    assert main(["--metrics-port", "0"]) == 2
    assert "api_keys_file" in capsys.readouterr().err


def test_the_comparison_touches_every_configured_key(keys_file, monkeypatch):
    """No early exit: every key is compared, whichever one (or none) matches, each over
    fixed-length digests (a key's length does not show in the timing either)."""
    keys = ApiKeys(keys_file)
    compared = []
    real = auth.secrets.compare_digest

    def spy(a, b):
        compared.append((len(a), len(b), b))
        return real(a, b)

    monkeypatch.setattr(auth.secrets, "compare_digest", spy)
    stored = [digest for _, digest in keys.keys]
    for presented, want in ((KEYS["alice"], "alice"), (KEYS["bob"], "bob"), ("wrong", None),
                            ("x" * 5000, None)):
        compared.clear()
        assert keys.match(presented.encode()) == want
        assert [b for _, _, b in compared] == stored
        assert all(la == lb == 32 for la, lb, _ in compared)


def test_the_file_is_read_again_when_it_changes(keys_file):
    now = [0.0]
    keys = ApiKeys(keys_file, clock=lambda: now[0])
    assert keys.match(b"k-carol") is None
    keys_file.write_text("carol:k-carol\n")
    now[0] += 2
    keys.refresh()
    assert keys.match(b"k-carol") == "carol" and keys.match(KEYS["alice"].encode()) is None
    keys_file.write_text("")          # broken: the keys in force stay
    now[0] += 2
    keys.refresh()
    assert keys.match(b"k-carol") == "carol"


def test_openapi_declares_the_schemes_and_leaves_the_probes_open(keys_file):
    with app_client(api_keys_file=keys_file, docs=True) as c:
        assert c.get("/openapi.json").status_code == 200     # the docs are the operator's choice
        spec = c.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert spec["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
    assert {"bearer": []} in spec["security"]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert "401" in spec["paths"]["/v1/detect"]["post"]["responses"]
