"""Domain exceptions. The API maps every one of them to the single error shape.

Service and ingest code raise these; nothing below `api/` knows about HTTP, but
each error carries the status an HTTP caller should see so that one handler can
translate them all.
"""

from __future__ import annotations

from typing import Any


class HashdbError(Exception):
    """Base of every error a caller may see. `code` is stable and snake_case."""

    code = "error"
    status = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(HashdbError):
    code = "invalid_request"
    status = 400


class InvalidJson(HashdbError):
    code = "invalid_json"
    status = 400


class InvalidSignal(HashdbError):
    code = "invalid_signal"
    status = 400


class UnknownSignalType(HashdbError):
    code = "unknown_signal_type"
    status = 400


class InvalidMedia(HashdbError):
    code = "invalid_media"
    status = 415


class MediaTooLarge(HashdbError):
    code = "media_too_large"
    status = 413


class Unauthorized(HashdbError):
    code = "unauthorized"
    status = 401


class Forbidden(HashdbError):
    code = "forbidden"
    status = 403


class NotFound(HashdbError):
    code = "not_found"
    status = 404


class Conflict(HashdbError):
    code = "conflict"
    status = 409


class NotReady(HashdbError):
    code = "not_ready"
    status = 503


class UnknownLabel(HashdbError):
    code = "unknown_label"
    status = 400


class TooManyRequests(HashdbError):
    """A caller over its rate limit, or a decode that cannot be admitted now; the
    API adds `Retry-After` from details["retry_after"] (seconds) when present."""

    code = "too_many_requests"
    status = 429


class StoreUnavailable(HashdbError):
    """The database cannot be reached: writes are refused, nothing acknowledged is lost."""

    code = "store_unavailable"
    status = 503


class RequestTimeout(HashdbError):
    """A client too slow to send its request (its body within `body_read_seconds`)."""

    code = "request_timeout"
    status = 408
