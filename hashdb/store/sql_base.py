"""The base of the SQL stores: the hooks each dialect provides, and how rows
become models. Statements use `?` placeholders; `_sql` adapts them."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from importlib import resources
from typing import Any

from hashdb.models import (
    ApiKey,
    MediaRecord,
    MediaStatus,
    Member,
    NewEvent,
    Role,
    SignalHit,
)
from hashdb.signals import HashValue


def migrations(dialect: str) -> list[tuple[int, str]]:
    """(version, sql) of every migration shipped for a dialect, in order."""
    folder = resources.files("hashdb.store") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)



class SqlBase:
    """What every SQL query mixin relies on. Subclasses provide the hooks."""

    # hooks -------------------------------------------------------------------
    def _read(self) -> AbstractContextManager[Any]:
        """A connection for reads, outside any write transaction."""
        raise NotImplementedError

    def _write(self, change_lock: bool = False) -> AbstractContextManager[Any]:
        """One write transaction, committed on leaving. `change_lock`: the writer
        appends to the change log and must be serialized with the others."""
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        """The statement in this database's placeholder style."""
        return statement

    def _now(self) -> Any:
        """The current time, as this database stores it."""
        raise NotImplementedError

    def _time(self, value: Any) -> str:
        """A stored time, in the models' format (ISO-8601, milliseconds, 'Z')."""
        raise NotImplementedError

    def _json(self, value: Any) -> Any:
        """A stored JSON column, decoded."""
        raise NotImplementedError

    def _bulk(self, db: Any) -> Any:
        """What runs a query returning many rows (a faster cursor, where there is one)."""
        return db

    def _insert_events(self, db: Any, events: Sequence[NewEvent], at: Any = None) -> None:
        raise NotImplementedError

    # rows ----------------------------------------------------------------------
    def _member(self, row: Sequence[Any]) -> Member:
        return Member(int(row[0]), str(row[1]), bool(row[2]), self._time(row[3]), bool(row[4]))

    def _key(self, row: Sequence[Any]) -> ApiKey:
        roles = frozenset(Role(r) for r in str(row[1]).split(",") if r)
        return ApiKey(str(row[0]), self._member(row[4:9]), roles, self._time(row[2]),
                      None if row[3] is None else self._time(row[3]))

    def _signal_hit(self, row: Sequence[Any]) -> SignalHit:
        """(id, media_id, type, value, timestamp, labels, status, member name, member id,
        variant)."""
        sid, mid, t, v, ts, labels, status, name, member_id, variant = row
        return SignalHit(int(sid), int(mid), HashValue(t, bytes(v)), ts,
                         tuple(self._json(labels)), MediaStatus(status), name, int(member_id),
                         variant)

    def get_media(self, media_id: int) -> MediaRecord | None:
        raise NotImplementedError
