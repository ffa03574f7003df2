"""JSON responses written directly: the hot routes skip FastAPI's response-model
pass (validating our own output, key by key, at 10,000 results a batch)."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response


def json_response(content: Any, status_code: int = 200) -> Response:
    body = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status_code, media_type="application/json")
