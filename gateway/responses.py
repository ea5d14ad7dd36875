"""JSON responses rendered by orjson (numpy-aware), bypassing FastAPI's encoder."""
from __future__ import annotations

import orjson
from starlette.responses import Response


def dumps(content) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class JSON(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return dumps(content)


def rendered(body: bytes, status_code: int = 200) -> Response:
    """An answer already serialised (in the pool, for big ones)."""
    return Response(body, status_code=status_code, media_type="application/json")
