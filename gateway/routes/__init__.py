"""One router per task; `ROUTERS` is what the app factory mounts."""
from . import analyze, detect, embed, faces, ocr, system

ROUTERS = (faces.router, detect.router, embed.router, ocr.router, analyze.router, system.router)
