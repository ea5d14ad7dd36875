"""One router per task; the app factory mounts `PROBES` as they are and `ROUTERS` with
the dependencies it is given (e.g. an API key)."""
from . import analyze, detect, embed, faces, ocr, system

PROBES = system.probes
ROUTERS = (faces.router, detect.router, embed.router, ocr.router, analyze.router, system.router)
