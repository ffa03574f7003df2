"""How the PostgreSQL store reaches its server, and what it does when it cannot.

- Every failure to reach the server becomes `StoreUnavailable` (503
  `store_unavailable`), never a 500. A write that fails is not acknowledged: its
  transaction did not commit. One case is ambiguous, as with any database: if the
  server commits and the connection dies before COMMIT's reply arrives, the caller
  gets a 503 for a write that was applied. Retrying is safe for what the service
  writes: a contribution is idempotent per member and value (and media key), a
  withdrawal of a withdrawn media does nothing, a member created twice is a 409,
  feedback counts each member's latest verdict; a retried key creation leaves an
  unused key (its secret was never shown) that an admin can revoke.
- Failing fast. Once a connection fails, the next call probes the server with a
  connection of its own while the others fail at once, rather than each waiting
  for the pool's timeout; while the probe fails, the server is tried again every
  `RETRY_SECONDS`. So a request never waits more than about `POOL_TIMEOUT` for an
  unreachable server, and matching, which answers from memory meanwhile, is not
  held up by the audit events it defers (see hashdb/match_memory.py).
- A fresh pool after an outage. The connections of the old pool died with the
  server, and psycopg_pool reconnects them in the background with a backoff that
  reaches minutes: when a probe succeeds the pool is replaced by a new one, so
  writes succeed again within about `RETRY_SECONDS` of the server's return.
- Change notifications. Writers of the change log NOTIFY a channel of their
  schema when they commit; `listen` wakes a follower at once, so a write through
  one replica is matchable through the others in milliseconds, not at the next
  poll (which stays as the fallback: a notification sent while a listener was
  reconnecting is lost).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from hashdb.errors import StoreUnavailable

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]

# How long a call waits for a pooled connection, and a connection attempt for the
# server (libpq's connect_timeout, unless the URL sets one), before a 503.
POOL_TIMEOUT = 5.0
# While the server is unreachable, how often one call probes it again.
RETRY_SECONDS = 1.0
# The change listener reconnects after this long, doubling up to the maximum.
LISTEN_RETRY_MAX = 5.0
# How often the listener looks up from waiting to see whether it should stop.
LISTEN_TICK = 1.0
# Server errors that mean the connection, or the server, is gone: admin shutdown,
# crash shutdown, starting up / shutting down, too many connections; and class 08.
_LOST_STATES = {"57P01", "57P02", "57P03", "53300"}


def connection_lost(error: BaseException) -> bool:
    """Whether an error says the server (or the way to it) is gone, rather than one
    statement failing (a deadlock, a serialization failure, a cancelled query)."""
    if isinstance(error, (PoolTimeout, PoolClosed, psycopg.InterfaceError)):
        return True
    if isinstance(error, psycopg.OperationalError):
        state = error.sqlstate
        return state is None or state.startswith("08") or state in _LOST_STATES
    return False


def error_kind(error: BaseException) -> str:
    """How /metrics counts a failed call: `timeout` (no pooled connection in time, a
    connection attempt or a statement that timed out), `unavailable` (the server, or
    the way to it, is gone), or `other` (a deadlock, a serialization failure...)."""
    if isinstance(error, (PoolTimeout, psycopg.errors.ConnectionTimeout,
                          psycopg.errors.QueryCanceled)):
        return "timeout"
    if isinstance(error, ConnectionError) or connection_lost(error):
        return "unavailable"
    return "other"


class StoreErrors:
    """Calls that failed, by `error_kind`; a call refused at once while the server
    is known to be down counts as `unavailable`. Counted on the error path only."""

    KINDS = ("unavailable", "timeout", "other")

    def __init__(self) -> None:
        self._counts = dict.fromkeys(self.KINDS, 0)
        self._lock = threading.Lock()

    def count(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def notify_channel(schema: str) -> str:
    """The NOTIFY channel of a schema's change log: stores in different schemas of
    one database (tests, tenants) do not wake each other's followers. A channel is
    an identifier (at most 63 bytes): a long schema name is replaced by its hash."""
    name = "hashdb_changes" if schema == "public" else f"hashdb_changes_{schema}"
    if len(name.encode()) > 63:
        name = "hashdb_changes_" + hashlib.sha256(schema.encode()).hexdigest()[:32]
    return name


class Connections:
    """The store's connections: a pool while the server answers, failing fast while
    it does not (see the module docstring)."""

    def __init__(self, url: str, max_size: int, open_timeout: float) -> None:
        self.url = url
        self._max_size = max_size
        # Every connection, pooled or not, gives up on an unreachable server after
        # POOL_TIMEOUT (libpq's minimum is 2 s), unless the URL says otherwise.
        self._connect_args: dict[str, Any] = {}
        if "connect_timeout" not in conninfo_to_dict(url):
            self._connect_args["connect_timeout"] = max(2, round(POOL_TIMEOUT))
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic; None while reachable
        self._retry_at = 0.0
        self._probing = False
        self._closed = False
        self.errors = StoreErrors()
        self._pool = self._new_pool(open_timeout)
        self._retired = False  # the pool is being closed (the server is down)
        with self._pool.connection() as conn:
            row = conn.execute("SELECT coalesce(current_schema(), 'public')").fetchone()
        self.channel = notify_channel(str(row[0]) if row else "public")

    def _new_pool(self, timeout: float) -> ConnectionPool[Conn]:
        """A pool with one connection open, or ConnectionError after `timeout`."""
        pool: ConnectionPool[Conn] = ConnectionPool(
            self.url,
            min_size=1,
            max_size=self._max_size,
            kwargs={"autocommit": True, **self._connect_args},
            timeout=POOL_TIMEOUT,
            open=False,
            name="hashdb-store",
        )
        try:
            pool.open(wait=True, timeout=timeout)
        except PoolTimeout as e:
            pool.close()
            host = conninfo_to_dict(self.url).get("host", "?")
            raise ConnectionError(f"cannot connect to PostgreSQL at {host}: {e}") from e
        return pool

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """A pooled connection (autocommit). Any failure to reach the server, here or
        in the caller's statements, comes out as StoreUnavailable, and so does any
        other operational failure (a deadlock, a cancelled statement): retrying may
        succeed. A statement the server refuses (a constraint, a bug) is not
        disguised: it stays the driver's error."""
        if self._admit():
            self._probe()
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            self.errors.count(error_kind(e))
            if connection_lost(e):
                self._lost(e)
            raise _unavailable("the database is unreachable or failed this request") from e

    # the breaker -----------------------------------------------------------------
    def _admit(self) -> bool:
        """Whether this call may go ahead, and whether it is the one to probe the
        server; a call that may not fails at once."""
        with self._lock:
            if self._down_since is None:
                return False
            if self._probing or time.monotonic() < self._retry_at:
                self.errors.count("unavailable")
                raise _unavailable("the database is unreachable")
            self._probing = True
            return True

    def _probe(self) -> None:
        """Reach the server on a connection of our own; then replace the pool, whose
        connections may all have died with the old server process."""
        try:
            with psycopg.connect(self.url, autocommit=True, **self._connect_args) as conn:
                conn.execute("SELECT 1")
            fresh = self._new_pool(POOL_TIMEOUT)
        except (psycopg.Error, ConnectionError) as e:
            self.errors.count(error_kind(e))
            self._lost(e, probe=True)
            raise _unavailable("the database is unreachable") from e
        except BaseException as e:  # interrupted: let the next call probe
            self._lost(e, probe=True)
            raise
        with self._lock:
            old, self._pool = self._pool, fresh
            closed, retired, self._retired = self._closed, self._retired, False
        if closed:
            fresh.close()
        if not retired:
            _close_later(old)
        self._reached()

    def _lost(self, error: BaseException, probe: bool = False) -> None:
        """A call failed to reach the server; `probe`: the call that probed it."""
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
                self._retry_at = 0.0  # the next call probes at once: maybe one bad connection
            stale = None
            if probe:
                self._retry_at = time.monotonic() + RETRY_SECONDS
                self._probing = False
                # Confirmed down: stop the old pool reconnecting in the background
                # (a successful probe brings a new one).
                if not self._retired:
                    stale, self._retired = self._pool, True
        if stale is not None:
            _close_later(stale)
        if first:
            log.warning("PostgreSQL unreachable (%s); failing fast and retrying every %.0f s",
                        _short(error), RETRY_SECONDS)

    def _reached(self) -> None:
        with self._lock:
            since, self._down_since, self._probing = self._down_since, None, False
        if since is not None:
            log.warning("PostgreSQL reachable again after %.1f s", time.monotonic() - since)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, retired = self._pool, self._retired
        if not retired:
            pool.close()

    # change notifications ---------------------------------------------------------
    def notify(self, conn: Conn) -> None:
        """Announce, at commit, that the change log grew (inside the writer's
        transaction: a rolled-back write announces nothing)."""
        conn.execute("SELECT pg_notify(%s, '')", (self.channel,))

    def listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Call `wake` once listening (what was committed before is then caught up)
        and on every notification, until `stop` is set. Blocks: run it on a thread.
        Survives the server going away: it reconnects with backoff."""
        delay = RETRY_SECONDS
        while not stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **self._connect_args) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    delay = RETRY_SECONDS
                    wake()
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=LISTEN_TICK, stop_after=1):
                            wake()
            except psycopg.Error as e:
                if stop.is_set():
                    break
                log.info("change listener disconnected (%s); retrying in %.0f s", _short(e),
                         delay)
                stop.wait(delay)
                delay = min(delay * 2, LISTEN_RETRY_MAX)


def _unavailable(what: str) -> StoreUnavailable:
    # What the server said stays in the log: an API client (and the public /readyz)
    # has no use for the database's address.
    return StoreUnavailable(f"{what}; retry shortly", retry_after=RETRY_SECONDS)


def _short(error: BaseException) -> str:
    """An error's first line: what an operator needs in /readyz or a log line."""
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _close_later(pool: ConnectionPool[Conn]) -> None:
    """Close a replaced pool off the caller's thread: it waits for its workers, and
    its connections still in use close when their callers return them."""
    threading.Thread(target=pool.close, name="hashdb-old-pool-close", daemon=True).start()
