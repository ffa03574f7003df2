"""Reject over-size request bodies before they are read into memory."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hashdb.errors import MediaTooLarge


def _too_large(limit: int) -> tuple[dict[str, object], bytes]:
    body = json.dumps(
        {
            "error": {
                "code": "media_too_large",
                "message": f"the request body is larger than {limit} bytes",
                "details": {"max_bytes": limit},
            }
        }
    ).encode()
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }
    return start, body


class BodySizeLimit:
    """Answers 413 when Content-Length is over the limit; counts chunked bodies as they come."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    start, body = _too_large(self.max_bytes)
                    await send(start)
                    await send({"type": "http.response.body", "body": body})
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise MediaTooLarge(
                        f"the request body is larger than {self.max_bytes} bytes",
                        max_bytes=self.max_bytes,
                    )
            return message

        await self.app(scope, counted, send)
