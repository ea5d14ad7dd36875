"""JSON responses rendered by orjson (numpy-aware), bypassing FastAPI's encoder."""
from __future__ import annotations

import orjson
from starlette.responses import Response


class JSON(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
