"""Requests to a hashdb server: the key, timeouts, retries, and one error type.

Retries are for what a server or a network says will pass later: `429` (over the
key's rate limit, or no decode memory free now; `Retry-After` is honoured), `503`
(indexes loading, database unreachable), and a connection refused, reset or timed
out. They wait `backoff * 2**attempt` seconds (at most `max_backoff`), drawn
between half and all of it so that many clients turned away together do not come
back together. Only requests the caller marks idempotent are retried.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hashdb import __version__

if TYPE_CHECKING:
    import httpx

RETRY_STATUSES = frozenset({429, 503})


class ClientError(Exception):
    """A request that failed: what the server answered (`code`, `message` and
    `details` of its error shape, the HTTP `status`, and the request's
    `X-Request-ID`, which the server logs: give it to its operators), or why it
    could not be sent (`status` None, `code` "unreachable" or "timeout"). Media
    that cannot be hashed locally raise it too, with the code the server would
    have given (`invalid_media`, `media_too_large`; `unreadable` for a file).

    Not `hashdb.errors.HashdbError`: that is the server's own (domain) exception;
    this is what a caller of a remote server sees."""

    def __init__(self, code: str, message: str, *, status: int | None = None,
                 details: dict[str, Any] | None = None, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        """Whether the same request may pass later (see the module's docstring)."""
        return self.code in ("unreachable", "timeout") or self.status in RETRY_STATUSES

    @classmethod
    def from_response(cls, response: httpx.Response) -> ClientError:
        # The server echoes the id sent (and makes one when it finds it unfit).
        request_id = (response.headers.get("x-request-id")
                      or response.request.headers.get("x-request-id"))
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
            details = error.get("details") if isinstance(error.get("details"), dict) else {}
        except (ValueError, KeyError, TypeError):
            # Not our error shape: a proxy in between, or not a hashdb server.
            code, message, details = f"http_{response.status_code}", response.text[:200], {}
        return cls(code, message, status=response.status_code, details=details,
                   request_id=request_id)


class Transport:
    """One keep-alive connection pool to one server, sending the key on every request."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        import httpx  # here: `hashdb hash` uses the hashing half of this package only

        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout,
            headers={"Authorization": f"Bearer {key}",
                     "User-Agent": f"hashdb-client/{__version__}"},
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, idempotent: bool,
                **kwargs: Any) -> Any:
        """The JSON body of a 2xx answer; ClientError otherwise, after the retries an
        idempotent request is allowed."""
        import httpx

        # One id per call, shared by its retries: the server echoes it and logs it,
        # so its operators find every attempt of a call a caller reports.
        request_id = uuid.uuid4().hex
        headers = {**kwargs.pop("headers", {}), "X-Request-ID": request_id}
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TimeoutException as exc:
                error = ClientError("timeout", f"{method} {path}: {type(exc).__name__}",
                                    request_id=request_id)
                wait = None
            except httpx.UnsupportedProtocol as exc:
                raise ClientError("invalid_url", str(exc)) from exc
            except httpx.TransportError as exc:
                error = ClientError("unreachable", f"{method} {path}: {exc}",
                                    request_id=request_id)
                wait = None
            else:
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise ClientError(
                            "invalid_response", f"{method} {path}: not JSON (is {self.url} "
                            "a hashdb server?)", status=response.status_code,
                            request_id=request_id) from exc
                error = ClientError.from_response(response)
                wait = _retry_after(response)
            if not (idempotent and error.retryable and attempt < self.retries):
                raise error
            self._sleep(self.delay(attempt, wait))
            attempt += 1

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number `attempt` (0-based): the jittered
        exponential backoff, and never less than the server's `Retry-After`."""
        step = min(self.max_backoff, self.backoff * 2**attempt)
        jittered = random.uniform(step / 2, step)
        return max(jittered, retry_after or 0.0)


def _retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (hashdb sends seconds; an HTTP date is not honoured)."""
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
