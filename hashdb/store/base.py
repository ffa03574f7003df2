"""The Store protocol. SQLite is the embedded default; PostgreSQL follows the same protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from hashdb.audit import AuditStore
from hashdb.contributions import ContributionStore
from hashdb.matcher import MatchStore
from hashdb.members import MemberStore
from hashdb.models import Change
from hashdb.moderation import ModerationStore


class Store(MemberStore, ContributionStore, MatchStore, ModerationStore, AuditStore, Protocol):
    """Durable state: what members and keys, contributions and matching each need
    (their narrow protocols), plus the logs. What a caller may rely on:

    - A method that writes returns only after its transaction is committed.
    - Every change to what is matchable appends to the change log in the same
      transaction, so an index that follows `changes()` never misses one.
    - `contribute` is idempotent per member and signal value (and per media key).
    - Methods are safe to call from several threads.
    """

    def migrate(self) -> None: ...

    def close(self) -> None: ...

    # logs
    def changes(self, after: int, limit: int) -> list[Change]: ...

    def change_rows(self, after: int, limit: int) -> list[tuple[int, str, int, str, bytes]]: ...

    def last_change(self) -> int: ...

    def store_id(self) -> str: ...



def open_store(database_url: str | None, data_dir: Path) -> Store:
    """The store a URL names; with no URL, SQLite in the data directory."""
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        from hashdb.store.postgres import PostgresStore

        return PostgresStore(database_url)
    from hashdb.store.sqlite import SqliteStore

    if database_url:
        if not database_url.startswith("sqlite:///"):
            raise ValueError(f"unsupported database URL {database_url!r}")
        return SqliteStore(Path(database_url.removeprefix("sqlite:///")))
    data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteStore(data_dir / "hashdb.sqlite3")
