"""The Store protocol. SQLite is the embedded default; PostgreSQL follows the same protocol."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from hashdb.models import (
    ApiKey,
    Change,
    Contributed,
    Event,
    ImportGroup,
    MediaRecord,
    MediaStatus,
    Member,
    NewEvent,
    NewSignal,
    Role,
    SignalHit,
)


class Store(Protocol):
    """Durable state. What a caller may rely on:

    - A method that writes returns only after its transaction is committed.
    - Every change to what is matchable appends to the change log in the same
      transaction, so an index that follows `changes()` never misses one.
    - `contribute` is idempotent per member and signal value (and per media key).
    - Methods are safe to call from several threads.
    """

    def migrate(self) -> None: ...

    def close(self) -> None: ...

    # members and keys
    def create_member(self, name: str, trusted_flagger: bool) -> Member: ...

    def get_member(self, name: str) -> Member | None: ...

    def create_key(
        self, member: Member, key_id: str, secret_hash: bytes, roles: frozenset[Role]
    ) -> ApiKey: ...

    def key_by_secret_hash(self, secret_hash: bytes) -> ApiKey | None: ...

    def get_key(self, key_id: str) -> ApiKey | None: ...

    def revoke_key(self, key_id: str) -> bool: ...

    def count_keys(self) -> int: ...

    # media and signals
    def contribute(
        self, member: Member, items: Sequence[NewSignal], event: NewEvent | None = None
    ) -> list[Contributed]: ...

    def import_signals(
        self, member: Member, groups: Sequence[ImportGroup], check_existing: bool = True
    ) -> int:
        """Bulk contribution, each value its own media. `check_existing=False` is the
        caller's promise that the values are distinct and new for the member (see
        `ImportSession`); the store then skips de-duplication."""
        ...

    def member_has_signals(self, member: Member) -> bool: ...

    def get_media(self, media_id: int) -> MediaRecord | None: ...

    def set_status(self, media_id: int, status: MediaStatus, event: NewEvent) -> MediaRecord: ...

    def signal_hits(self, signal_ids: Sequence[int]) -> dict[int, SignalHit]: ...

    def keyframe_seconds(self, media_ids: Sequence[int]) -> dict[int, int]: ...

    def export_signals(self, after: int, limit: int) -> list[tuple[SignalHit, int | None]]: ...

    # logs
    def changes(self, after: int, limit: int) -> list[Change]: ...

    def change_rows(self, after: int, limit: int) -> list[tuple[int, str, int, str, bytes]]: ...

    def last_change(self) -> int: ...

    def store_id(self) -> str: ...

    def log_events(self, events: Sequence[NewEvent]) -> None: ...

    def events(self, after: int, limit: int, member_id: int | None) -> list[Event]: ...


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
