"""One router per task, built for the route table (contract/routes.py: which models each
route calls, the default first) and with the dependencies the app factory is given (e.g.
an API key); `probes()` never get them."""
from __future__ import annotations

from fastapi import APIRouter

from contract import ContractError
from contract.routes import RouteTable

from . import analyze, compare, detect, embed, faces, ocr, system

# the route (a config's `route` parameter) -> the module that answers it
BUILDERS = {"faces": faces.router, "faces/compare": compare.router, "detect": detect.router, "embed/image": embed.image_router,
            "embed/text": embed.text_router, "ocr": ocr.router, "analyze": analyze.router}


def probes(**mount) -> APIRouter:
    return system.probe_router(mount)


def routers(table: RouteTable, **mount) -> tuple[APIRouter, ...]:
    """A router for every route some model states, and the model listing; `mount`: APIRouter
    arguments for each (the app's dependencies and its dependency_overrides_provider)."""
    unknown = [r.name for r in table.routes if r.name not in BUILDERS]
    if unknown:
        raise ContractError(f"the contract names routes the gateway does not have: {', '.join(unknown)} "
                            f"(routes: {', '.join(BUILDERS)})")
    return (*(BUILDERS[r.name](r, table, mount) for r in table.routes), system.router(table, mount))
