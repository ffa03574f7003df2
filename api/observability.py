"""What an operator sees of each request: an id (`X-Request-ID`), and one log line.

The line says who asked what and how it went: the route's path template (never
the path itself, nor the query string: a path or a query can hold a hash, and a
query hash that matched nothing is a member's secret), the status, the error
code, the duration, the member and key id once the key is checked (never the
key), the bytes each way and the client's address. The log is the standard
`logging` module with a JSON formatter of ours: a few lines, where a library
would add a dependency and a second way to log.

The middleware wraps the whole app, FastAPI's 500 handler included, so that every
answer the app gives (refusals from the body caps, the rate limits, the body
deadline, crashes) is logged and carries the id. Answers uvicorn gives before
the app runs (a malformed request, headers too large or too slow: see
api/abuse.py) have no id and no line of ours; uvicorn logs what it logs of them.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import IO, Any

from fastapi import FastAPI
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hashdb.models import Caller
from hashdb.ratelimit import Admission

request_log = logging.getLogger("hashdb.request")

REQUEST_ID_HEADER = "X-Request-ID"
# The id of the request being handled, for every log line written while it is
# (threads the request's work runs on inherit it).
current_request_id: ContextVar[str | None] = ContextVar("hashdb_request_id", default=None)

# A caller's own id is kept when it is plausibly an id (what proxies and tracers
# send: uuids, hex, dotted or colon-separated), never an arbitrary string in our logs.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The one error shape begins with its code (api/errors.py writes it first).
_ERROR_CODE = re.compile(rb'\s*\{\s*"error"\s*:\s*\{\s*"code"\s*:\s*"([A-Za-z0-9_.-]{1,64})"')
# Any other method is the client's free text: logged as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                      "CONNECT"})


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID when it is a sane one, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if _SANE_ID.fullmatch(given):
                return given
            break
    return secrets.token_hex(16)


def note_caller(scope: Scope, caller: Caller) -> None:
    """Record who the request's key belongs to, once checked, for its log line."""
    scope.setdefault("state", {})["caller"] = caller


@dataclass(slots=True)
class _Exchange:
    status: int | None = None
    error: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0


class RequestLog:
    """Gives each HTTP request an id (echoed in X-Request-ID) and logs one line for
    it on `hashdb.request` once it is answered."""

    def __init__(self, app: ASGIApp, owner: FastAPI) -> None:
        self.app = app
        self.owner = owner  # its routes name unrouted requests; its admission, clients
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id_of(scope["headers"])
        scope.setdefault("state", {})["request_id"] = rid
        echoed = (b"x-request-id", rid.encode("ascii"))
        seen = _Exchange()

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen.bytes_in += len(message.get("body", b""))
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), echoed]}
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if seen.bytes_out == 0 and seen.status is not None and seen.status >= 400:
                    found = _ERROR_CODE.match(body)
                    seen.error = found.group(1).decode() if found else None
                seen.bytes_out += len(body)
            await send(message)

        token = current_request_id.set(rid)
        try:
            await self.app(scope, receiving, sending)
        finally:
            self._log(scope, rid, seen, time.perf_counter() - start)
            current_request_id.reset(token)

    def _log(self, scope: Scope, rid: str, seen: _Exchange, seconds: float) -> None:
        status = seen.status
        # A crash is an error; a 503 (store down, loading) or a client gone before
        # its answer (no status), a warning.
        level = (logging.INFO if status is not None and status < 500
                 else logging.ERROR if status == 500 else logging.WARNING)
        if not request_log.isEnabledFor(level):
            return
        method = scope["method"] if scope["method"] in _METHODS else "other"
        route = getattr(scope.get("route"), "path", None) or self._route_of(scope)
        caller: Caller | None = scope.get("state", {}).get("caller")
        fields = {
            "request_id": rid, "method": method, "route": route, "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "member": caller.member.name if caller else None,
            "key_id": caller.key_id if caller else None,
            "error": seen.error, "bytes_in": seen.bytes_in, "bytes_out": seen.bytes_out,
            "client": self._client_of(scope)}
        # makeRecord and handle: `log()` would also look up the caller's frame, a fifth
        # of the line's cost, for a file and line number no line of ours shows.
        request_log.handle(request_log.makeRecord(
            request_log.name, level, "", 0, "%s %s %s", (method, route or "-", status), None,
            extra=fields))

    def _route_of(self, scope: Scope) -> str | None:
        """The template of a request answered before routing (a body cap); None for
        a path no route serves."""
        if self._templates is None:
            self._templates = route_templates(self.owner)
        path = scope["path"]
        return next((t for regex, t in self._templates if regex.match(path)), None)

    def _client_of(self, scope: Scope) -> str | None:
        admission: Admission | None = getattr(self.owner.state, "admission", None)
        if admission is None:
            return scope["client"][0] if scope.get("client") else None
        return client_of(scope, admission)


def client_of(scope: Scope, admission: Admission) -> str | None:
    """Who is calling, as the abuse limits and the log see it: the connection's peer,
    or behind a trusted proxy the address it heard from (X-Forwarded-For)."""
    peer = scope["client"][0] if scope.get("client") else None
    if not admission.trusted_proxies:
        return peer
    forwarded = ",".join(v.decode("latin-1") for k, v in scope["headers"]
                         if k == b"x-forwarded-for")
    return admission.client(peer, forwarded or None)


def route_templates(app: FastAPI) -> list[tuple[re.Pattern[str], str]]:
    """Every route's path template and the pattern of the paths it serves."""
    try:  # FastAPI >= 0.165 keeps included routers nested: this lists their routes
        from fastapi.routing import iter_route_contexts
        paths = [c.path for c in iter_route_contexts(app.routes)]
    except ImportError:
        paths = [getattr(r, "path", None) for r in app.routes]
    unique = dict.fromkeys(p for p in paths if p)
    return [(compile_path(p)[0], p) for p in unique]


class LoggedApp(FastAPI):
    """FastAPI with the request log around everything, its 500 handler included
    (middleware added with `add_middleware` runs inside that handler, and would see
    a crash as an exception rather than as the answer the client got)."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestLog(super().build_middleware_stack(), self)


# log formats ---------------------------------------------------------------------
# What every LogRecord has; anything else on a record was passed in `extra` and is
# written as a field of its own (uvicorn's color_message is the message again).
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message", "taskName"}


@lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _utc(created: float) -> str:
    """ISO 8601 in UTC, to the millisecond: 2026-11-05T14:03:07.412Z (the lines of one
    second share its formatting)."""
    whole = int(created)
    return f"{_second(whole)}.{int((created - whole) * 1000):03d}Z"


_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the
    record's own fields, and the traceback of an exception as one string."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": _utc(record.created), "level": record.levelname.lower(),
                                "logger": record.name, "message": record.getMessage()}
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _encode(line)


class TextFormatter(logging.Formatter):
    """For a terminal: `time level logger: message key=value...`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        text = f"{_utc(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        if fields:
            text += " " + fields
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _RequestIdFilter(logging.Filter):
    """Puts the id of the request being handled on every line written meanwhile."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            rid = current_request_id.get()
            if rid is not None:
                record.request_id = rid
        return True


def configure_logging(format: str = "json", level: str = "info",
                      stream: IO[str] | None = None) -> None:
    """Send every logger (ours, uvicorn's, the libraries') to one stream, in one
    format. uvicorn must then be run with `log_config=None` (it would install its
    own handlers) and `access_log=False` (its access line has the raw path and query
    string, and ours says more)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    logging.captureWarnings(True)
    # No line shows the thread, process or task: not looking them up makes every
    # record cheaper (the logging HOWTO's "Optimization").
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # 3.12, not in typeshed
