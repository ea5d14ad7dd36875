"""LeanRoute: the image endpoints' route class validates query parameters like FastAPI
(same 422 body, same OpenAPI) and refuses, at build time, endpoints it cannot serve."""
from __future__ import annotations

from typing import Annotated, Literal

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.responses import JSON
from gateway.routes.common import ServiceDep
from gateway.routes.lean import LeanRoute
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend


class CountingLean(LeanRoute):
    """LeanRoute counting the requests its own handler takes (FastAPI's takes the rest)."""
    lean_requests = 0

    def lean_handler(self, full, plan):
        lean = super().lean_handler(full, plan)

        async def counted(request):
            CountingLean.lean_requests += 1
            return await lean(request)
        return counted


def _app(endpoint, include: bool = False, route_class=LeanRoute) -> FastAPI:
    """An app serving `endpoint` at /x: its routes mounted as built (as gateway/app.py does),
    or through include_router."""
    app = FastAPI()
    router = APIRouter(route_class=route_class, dependency_overrides_provider=app)
    router.post("/x")(endpoint)
    if include:
        app.include_router(router)
    else:
        app.router.routes.extend(router.routes)
    return app


@pytest.mark.parametrize("include,lean", [(False, 1), (True, 0)])
def test_lean_only_where_mounted_as_built(include, lean):
    """An included route may carry dependencies no public FastAPI attribute shows (0.16x):
    there FastAPI's handler serves. Mounted as built, the lean handler does."""
    CountingLean.lean_requests = 0
    with TestClient(_app(echo, include, CountingLean)) as c:
        assert c.post("/x", params={"mode": "b"}).json()["mode"] == "b"
    assert CountingLean.lean_requests == lean


def test_the_gateway_serves_its_routes_lean(monkeypatch):
    from gateway import routes

    CountingLean.lean_requests = 0
    for module in (routes.detect, routes.faces):
        monkeypatch.setattr(module, "LeanRoute", CountingLean)
    app = create_app(GatewaySettings(startup_wait_s=0, metrics_port=0), backend=FakeBackend())
    with TestClient(app) as c:
        assert c.post("/v1/detect", content=b"x", headers={"content-type": "image/jpeg"}).status_code == 415
        assert CountingLean.lean_requests == 1


async def echo(request: Request,
               mode: Annotated[Literal["a", "b"], Query()] = "a",
               level: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
               limit: Annotated[int, Query(ge=1, le=10)] = 3,
               flag: bool = True) -> JSON:
    return JSON({"mode": mode, "level": level, "limit": limit, "flag": flag,
                 "method": request.method})


@pytest.mark.parametrize("include", [False, True], ids=["lean", "fastapi"])
def test_query_parameters_are_parsed_with_defaults_and_lax_strings(include):
    """The same answers from the lean handler and from FastAPI's."""
    with TestClient(_app(echo, include)) as c:
        assert c.post("/x").json() == {"mode": "a", "level": 0.5, "limit": 3, "flag": True,
                                       "method": "POST"}
        r = c.post("/x", params={"mode": "b", "level": "0.25", "limit": "7", "flag": "false",
                                 "unknown": "ignored"})
        assert r.json() == {"mode": "b", "level": 0.25, "limit": 7, "flag": False,
                            "method": "POST"}


@pytest.mark.parametrize("params,field", [({"level": 2}, "level"), ({"limit": 0}, "limit"),
                                          ({"mode": "c"}, "mode"), ({"flag": "maybe"}, "flag"),
                                          ({"level": "x"}, "level")])
@pytest.mark.parametrize("include", [False, True], ids=["lean", "fastapi"])
def test_invalid_query_parameters_are_fastapis_422(params, field, include):
    with TestClient(_app(echo, include)) as c:
        r = c.post("/x", params=params)
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["query", field]]


def test_openapi_documents_the_declared_constraints():
    spec = _app(echo).openapi()["paths"]["/x"]["post"]["parameters"]
    by = {p["name"]: p for p in spec}
    assert set(by) == {"mode", "level", "limit", "flag"}
    assert by["level"]["schema"]["maximum"] == 1.0 and by["limit"]["schema"]["minimum"] == 1


def test_gateway_422_names_the_parameter():
    s = GatewaySettings()
    with TestClient(create_app(s, backend=FakeBackend())) as c:
        r = c.post("/v1/faces", content=b"x", headers={"content-type": "image/jpeg"},
                   params={"max_results": 0})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_parameter" and "query.max_results" in err["message"]


async def with_header(request: Request, token: Annotated[str, Header()] = "") -> JSON:
    return JSON({})


async def no_default(svc: ServiceDep, n: int) -> JSON:
    return JSON({})


def not_async(request: Request) -> JSON:
    return JSON({})


async def needs_more(request: Request, n: int = 1) -> int:
    return n


async def with_wider_dependency(x: Annotated[int, Depends(needs_more)]) -> JSON:
    return JSON({})


async def client_host(request: Request) -> str:
    return request.client.host if request.client else "?"


async def with_request_dependency(host: Annotated[str, Depends(client_host)]) -> JSON:
    return JSON({"host": host})


def test_request_only_dependencies_are_called_with_the_request():
    with TestClient(_app(with_request_dependency)) as c:
        assert c.post("/x").json() == {"host": "testclient"}


@pytest.mark.parametrize("endpoint,why", [(with_header, "not supported"),
                                          (no_default, "needs a default"),
                                          (not_async, "must be async"),
                                          (with_wider_dependency, "not supported")])
def test_unsupported_endpoints_are_refused_when_built(endpoint, why):
    with pytest.raises(TypeError, match=why):
        _app(endpoint)


# -- dependencies and overrides, exactly as FastAPI --------------------------------------
API_KEY = "s3cret"


async def require_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
    from fastapi import HTTPException

    if x_api_key != API_KEY:
        raise HTTPException(401, "missing or wrong API key")


JPEG_BODY = {"content": b"\xff\xd8\xff" + b"0" * 100, "headers": {"content-type": "image/jpeg"}}


def test_an_api_key_dependency_protects_every_route():
    """create_app(dependencies=[...]) puts them on every route but the probes: each image,
    text and listing route answers 401 without the key."""
    app = create_app(GatewaySettings(startup_wait_s=0, metrics_port=0), backend=FakeBackend(),
                     dependencies=[Depends(require_key)])
    with TestClient(app) as c:
        for path in ("/v1/faces", "/v1/detect", "/v1/ocr", "/v1/analyze", "/v1/embed/image",
                     "/v1/embed/text", "/v1/models"):
            method = c.get if path == "/v1/models" else c.post
            r = method(path, **({} if path == "/v1/models" else JPEG_BODY))
            assert r.status_code == 401, (path, r.status_code, r.text)
        ok = c.post("/v1/detect", content=JPEG_BODY["content"],
                    headers={**JPEG_BODY["headers"], "x-api-key": API_KEY})
        assert ok.status_code == 400, ok.text      # past the key: the body is judged
        assert c.get("/healthz").status_code == 200   # probes stay open


def test_app_and_router_level_dependencies_of_lean_routes():
    """FastAPI(dependencies=...) and APIRouter(dependencies=...) reach lean routes."""
    router = APIRouter(route_class=LeanRoute, dependencies=[Depends(require_key)])
    router.post("/x")(echo)
    for app in (FastAPI(dependencies=[Depends(require_key)]), FastAPI()):
        plain = APIRouter(route_class=LeanRoute)
        plain.post("/y")(echo)
        app.include_router(router)
        app.include_router(plain)
        with TestClient(app) as c:
            assert c.post("/x").status_code == 401
            assert c.post("/x", headers={"x-api-key": API_KEY}).status_code == 200
            assert c.post("/y").status_code == (401 if app.router.dependencies else 200)


def test_route_level_dependency_of_a_lean_route_runs():
    calls = []

    async def audit(request: Request) -> None:
        calls.append(request.url.path)

    router = APIRouter(route_class=LeanRoute)
    router.post("/x", dependencies=[Depends(audit)])(echo)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as c:
        assert c.post("/x").status_code == 200
    assert calls == ["/x"]


def test_dependency_overrides_are_honoured():
    """app.dependency_overrides replaces the Service dependency of a lean route."""
    from gateway.routes.common import get_service

    app = create_app(GatewaySettings(startup_wait_s=0, metrics_port=0), backend=FakeBackend())
    seen = []

    async def other_service(request: Request):
        seen.append(True)
        return request.app.state.service

    app.dependency_overrides[get_service] = other_service
    with TestClient(app) as c:
        r = c.post("/v1/detect", content=b"x", headers={"content-type": "image/jpeg"})
    assert r.status_code == 415 and seen == [True]
