"""One router per task, built for the route table (contract/routes.py: which models each
route calls, the default first). The app factory mounts `probes()` as they are and
`routers(table)` with the dependencies it is given (e.g. an API key)."""
from __future__ import annotations

from fastapi import APIRouter

from contract import ContractError
from contract.routes import RouteTable

from . import analyze, detect, embed, faces, ocr, system

# the route (a config's `route` parameter) -> the module that answers it
BUILDERS = {"faces": faces.router, "detect": detect.router, "embed/image": embed.image_router,
            "embed/text": embed.text_router, "ocr": ocr.router, "analyze": analyze.router}


def probes() -> APIRouter:
    return system.probes


def routers(table: RouteTable) -> tuple[APIRouter, ...]:
    """A router for every route some model states, and the model listing."""
    unknown = [r.name for r in table.routes if r.name not in BUILDERS]
    if unknown:
        raise ContractError(f"the contract names routes the gateway does not have: {', '.join(unknown)} "
                            f"(routes: {', '.join(BUILDERS)})")
    return (*(BUILDERS[r.name](r, table) for r in table.routes), system.router(table))
