"""What a request may be before any route sees it: a body no larger than its
route's cap, refused as soon as more arrives (with or without Content-Length),
and a URL without NUL characters (PostgreSQL text cannot hold them, and no id,
name, label or date has one)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import domain_error_response
from hashdb.errors import InvalidRequest, MediaTooLarge
from hashdb.settings import Settings

# Members, keys, withdrawals, feedback, resolutions, the report login: a few KB
# at most (reasons are capped at 2,000 characters, labels at 16).
SMALL_BODY_BYTES = 64 * 1024
# Multipart framing (boundaries, part headers, the text fields) around the media.
MULTIPART_FRAMING = 64 * 1024

_UPLOADS = frozenset({"/v1/hash", "/v1/media", "/h/hash", "/m/lookup"})  # /h, /m: HMA's
_BATCHES = frozenset({"/v1/hashes", "/v1/match/batch"})


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """The largest body each route takes. A route not named here gets `other`:
    a new route is small until it says otherwise."""

    upload: int
    batch_json: int
    match_json: int
    other: int = SMALL_BODY_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        return cls(settings.max_upload_bytes + MULTIPART_FRAMING, settings.max_json_bytes,
                   settings.max_match_json_bytes)

    def of(self, method: str, path: str, content_type: str) -> int:
        if method != "POST":
            return self.other
        if path in _UPLOADS:
            return self.upload
        if path in _BATCHES:
            return self.batch_json
        if path == "/v1/match":
            # The one route that takes either: media as multipart, or signals as JSON.
            multipart = content_type.lower().startswith("multipart/")
            return self.upload if multipart else self.match_json
        return self.other


class RequestLimits:
    """Answers 413 when Content-Length is over the route's cap, and stops a body
    sent without one (chunked) as soon as the bytes received pass it; 400 for a
    NUL in the path or the query."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            refused = InvalidRequest("the URL must not contain NUL characters (%00)")
            await domain_error_response(refused)(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        cap = self.limits.of(scope["method"], scope["path"], content_type)
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0  # the HTTP server refuses a malformed length itself
        if declared > cap:
            await domain_error_response(_too_large(cap))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise _too_large(cap)
            return message

        await self.app(scope, counted, send)


def _too_large(cap: int) -> MediaTooLarge:
    return MediaTooLarge(f"the request body is larger than {cap} bytes", max_bytes=cap)
