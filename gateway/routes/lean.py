"""`LeanRoute`: the image and text endpoints' APIRoute, without FastAPI's general
dependency solver on the hot path when the route has nothing for it to solve.

FastAPI still declares and documents these routes (OpenAPI, parameter constraints,
error handlers), but its per-request machinery (dependency graph, telemetry hooks, body
sniffing) costs CPU on every request (measured side by side: `make bench-lean`). These
endpoints need only the request, the Service and a few query parameters, so one
pydantic model built from the endpoint's signature at start-up validates the query
string, with FastAPI's 422 on failure.

Only public FastAPI surfaces decide, and FastAPI's own handler serves whenever they cannot
prove that no dependency would be skipped:
- the lean handler is built only for the route as constructed (APIRoute.__init__'s call of
  get_route_handler), and only when `self.dependencies` (the route's own and its router's,
  merged by APIRouter.add_api_route) is empty;
- every later call is the route being included into another router (include_router,
  which from FastAPI 0.16x keeps the route and passes the including router's and the
  app's dependencies in a way no public attribute shows): FastAPI's handler, always. So a
  lean route is lean only where it is mounted as built: gateway/app.py puts its routes
  straight into the app's router, with the dependencies it is given on the routers;
- for a request while `app.dependency_overrides` is not empty: FastAPI's handler.
Tested against fastapi 0.165 (constraints.txt) and the route-copying include of older
releases (tests/unit/test_gateway_lean.py runs both mountings).

Supported endpoint parameters: `Request`, dependencies computed from the request alone
(`Depends(f)` with `async def f(request: Request)`, e.g. ServiceDep) and query
parameters (`Annotated[T, Query(...)] = default` or plain `T = default`). Anything else
is refused when the route is built, never silently ignored at request time.
"""
from __future__ import annotations

import inspect
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from fastapi import params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError, create_model
from starlette.requests import Request


class LeanRoute(APIRoute):
    def get_route_handler(self):
        full = super().get_route_handler()   # FastAPI's, for this route as built or included
        if getattr(self, "_lean_built", False):
            return full                      # an inclusion: dependencies no public attribute shows
        self._lean_built = True
        plan = _plan(self.endpoint)          # unsupported parameters: refused here, at build time
        return full if self.dependencies else self.lean_handler(full, plan)

    def lean_handler(self, full, plan):
        """The handler that validates the query itself; FastAPI's `full` while overrides exist."""
        call = self.endpoint
        request_arg, depends, query = plan
        model = create_model(f"{call.__name__}_query", **query) if query else None
        overrides = self.dependency_overrides_provider

        async def handler(request: Request):
            if overrides is not None and getattr(overrides, "dependency_overrides", None):
                return await full(request)
            kwargs: dict[str, Any] = {}
            if model is not None:
                try:
                    kwargs = dict(model.model_validate(dict(request.query_params)))
                except ValidationError as exc:
                    raise RequestValidationError(
                        [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from None
            if request_arg:
                kwargs[request_arg] = request
            for name, dependency in depends:
                kwargs[name] = await dependency(request)
            return await call(**kwargs)

        return handler


def _plan(call) -> tuple[str | None, list[tuple[str, Any]], dict[str, tuple]]:
    """(request parameter, [(parameter, request-only dependency)],
    {query parameter: (annotation, default)})."""
    if not inspect.iscoroutinefunction(call):
        raise TypeError(f"LeanRoute endpoint {call.__name__} must be async")
    hints = get_type_hints(call, include_extras=True)
    request_arg = None
    depends: list[tuple[str, Any]] = []
    query: dict[str, tuple] = {}
    for name, p in inspect.signature(call).parameters.items():
        ann = hints.get(name, p.annotation)
        base, meta = (get_args(ann)[0], get_args(ann)[1:]) if get_origin(ann) is Annotated \
            else (ann, ())
        markers = [m for m in meta if isinstance(m, (params.Depends, params.Param,
                                                     params.Body))]
        if base is Request and not markers:
            request_arg = name
        elif len(markers) == 1 and isinstance(markers[0], params.Depends) \
                and _request_only(markers[0].dependency):
            depends.append((name, markers[0].dependency))
        elif all(isinstance(m, params.Query) for m in markers):
            if p.default is inspect.Parameter.empty:
                raise TypeError(f"{call.__name__}: query parameter {name!r} needs a default")
            query[name] = (ann, p.default)
        else:
            raise TypeError(f"{call.__name__}: parameter {name!r} ({ann}) is not supported "
                            "by LeanRoute (only Request, request-only dependencies and "
                            "query parameters)")
    return request_arg, depends, query


def _request_only(dependency) -> bool:
    """An async function of the request alone (what LeanRoute can call itself)."""
    if not inspect.iscoroutinefunction(dependency):
        return False
    sig = list(inspect.signature(dependency).parameters.values())
    return len(sig) == 1 and get_type_hints(dependency).get(sig[0].name) is Request
