"""The one error shape: {"error": {"code", "message", "details"}} on every failure."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hashdb.errors import HashdbError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "media_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


# How much of a request an error may echo: a message of at most 200 characters
# (ours are shorter), strings in details of at most 100, lists of at most 50 items
# (a batch of 10,000 bad items does not come back as 10,000 errors).
_MAX_MESSAGE = 200
_MAX_TEXT = 100
_MAX_ITEMS = 50


def _text(value: str, limit: int) -> str:
    if len(value) > limit:
        value = value[:limit] + "..."
    # A lone surrogate cannot be encoded in the response: replace it, never fail.
    return value.encode("utf-8", "replace").decode("utf-8")


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value, _MAX_TEXT)
    if isinstance(value, dict):
        return {key: _bounded(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_bounded(v) for v in value[:_MAX_ITEMS]]
    return value


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    """The one shape, every echo of the request in it bounded (see _MAX_MESSAGE)."""
    return JSONResponse(
        {"error": {"code": code, "message": _text(message, _MAX_MESSAGE),
                   "details": _bounded(details or {})}},
        status_code=status,
    )


def domain_error_response(exc: HashdbError) -> JSONResponse:
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    # 429 and 503 say when to come back (RFC 9110 10.2.3): whole seconds.
    retry_after = exc.details.get("retry_after")
    if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if exc.status == 408:
        # The rest of a body too slow to arrive is not worth waiting for.
        response.headers["Connection"] = "close"
    return response


def _domain(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HashdbError)
    return domain_error_response(exc)


def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"location": list(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type")}
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return error_response(400, "invalid_json", "the request body is not valid JSON",
                              {"errors": errors})
    first = errors[0] if errors else {"location": [], "message": "invalid request"}
    # A location names the caller's own keys (an unexpected field): echo 64 characters.
    where = ".".join(str(p)[:64] for p in first["location"] if p != "body")
    return error_response(
        400, "invalid_request", f"{where or 'request'}: {first['message']}", {"errors": errors}
    )


def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # FastAPI wraps errors raised while reading a body; surface ours (e.g. size limit).
    if isinstance(exc.__cause__, HashdbError):
        return _domain(_, exc.__cause__)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    return error_response(exc.status_code, code, message)


def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "the server failed to handle this request")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HashdbError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
