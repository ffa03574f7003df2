"""The HTTP side of abuse limits: who the client is, the caller's admission, and
deadlines for clients that send their requests too slowly.

The rules (budgets per key, the lockout for wrong keys) are `hashdb.ratelimit`;
this module only finds the client's address and bounds the time a request may take
to arrive, which uvicorn does not: it times out idle keep-alive connections, but
not a request whose headers or body trickle in.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.observability import client_of, note_caller
from hashdb.errors import RequestTimeout
from hashdb.models import Caller
from hashdb.ratelimit import Admission
from hashdb.service import Service
from hashdb.settings import Settings

# Request line and headers, at most. Browsers and proxies send a few KB; nginx's
# default tops out at 32 KB.
MAX_HEADER_BYTES = 64 * 1024


def admitted_caller(request: Request, service: Service, key: str | None) -> Caller:
    """The caller a request's key belongs to, through the wrong-key lockout and the
    key's rate limit (once per request: every route that needs a key comes here)."""
    admission: Admission = request.app.state.admission
    caller = admission.authenticate(service.members, key, client_of(request.scope, admission))
    note_caller(request.scope, caller)  # for the request's log line
    return caller


def charge(request: Request, caller: Caller, cost: int) -> None:
    """Charge an admitted request's extra units to its key: a batch costs one per
    query or item, and `admitted_caller` took the first."""
    admission: Admission = request.app.state.admission
    admission.charge(caller, cost)


class BodyReadDeadline:
    """Refuses (408 request_timeout) a request whose body has not all arrived within
    `seconds` of the app's first read of it. The deadline is for the whole body, not
    per read: a client sending a byte now and then would pass any idle timeout."""

    def __init__(self, app: ASGIApp, seconds: float, admission: Admission) -> None:
        self.app, self.seconds, self.admission = app, seconds, admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline: float | None = None
        done = False

        async def timed() -> Message:
            nonlocal deadline, done
            if done:  # the body is in: what is left to receive is the disconnect
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.seconds
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                self.admission.rejected("slow_body")
                raise RequestTimeout(
                    f"the request body did not arrive within {self.seconds:g} s",
                    seconds=self.seconds) from None
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed, send)


class HeadersTooLarge(Exception):
    pass


class _SlowClientProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the deadlines it lacks: a request's headers
    must arrive within `header_seconds` of its first byte (or of the connection), and
    be at most MAX_HEADER_BYTES; after a response sent before the request's body was
    all in (a refusal), the rest has `body_seconds` to arrive, or the connection
    closes (uvicorn would keep discarding a trickle for ever)."""

    header_seconds = 10.0
    body_seconds = 30.0
    _deadline: asyncio.TimerHandle | None = None
    _header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._deadline is None:
            self._arm(self.header_seconds)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.cycle is not None and self.cycle.more_body:
            self._arm(self.body_seconds)
        super().on_response_complete()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            # Raised inside the parser's callback, it surfaces as a parser error:
            # uvicorn answers 400 and closes the connection.
            raise HeadersTooLarge(f"request headers over {MAX_HEADER_BYTES} bytes")

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for serving hashdb (the CLI's `serve`, and tests)."""
    protocol = type("SlowClientProtocol", (_SlowClientProtocol,), {
        "header_seconds": settings.header_read_seconds,
        "body_seconds": settings.body_read_seconds})
    # uvicorn's own timeout_keep_alive (5 s) closes idle connections between requests.
    return {"http": protocol}
