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


def _app(endpoint) -> FastAPI:
    router = APIRouter(route_class=LeanRoute)
    router.post("/x")(endpoint)
    app = FastAPI()
    app.include_router(router)
    return app


async def echo(request: Request,
               mode: Annotated[Literal["a", "b"], Query()] = "a",
               level: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
               limit: Annotated[int, Query(ge=1, le=10)] = 3,
               flag: bool = True) -> JSON:
    return JSON({"mode": mode, "level": level, "limit": limit, "flag": flag,
                 "method": request.method})


def test_query_parameters_are_parsed_with_defaults_and_lax_strings():
    with TestClient(_app(echo)) as c:
        assert c.post("/x").json() == {"mode": "a", "level": 0.5, "limit": 3, "flag": True,
                                       "method": "POST"}
        r = c.post("/x", params={"mode": "b", "level": "0.25", "limit": "7", "flag": "false",
                                 "unknown": "ignored"})
        assert r.json() == {"mode": "b", "level": 0.25, "limit": 7, "flag": False,
                            "method": "POST"}


@pytest.mark.parametrize("params,field", [({"level": 2}, "level"), ({"limit": 0}, "limit"),
                                          ({"mode": "c"}, "mode"), ({"flag": "maybe"}, "flag"),
                                          ({"level": "x"}, "level")])
def test_invalid_query_parameters_are_fastapis_422(params, field):
    with TestClient(_app(echo)) as c:
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
                   params={"max_results": 65})
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
