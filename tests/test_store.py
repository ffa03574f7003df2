"""The SQLite store on a real file: WAL, migrations, idempotency, the change log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hashdb.errors import Conflict
from hashdb.models import MediaStatus, NewEvent, NewSignal, Role
from hashdb.signals import HashValue, Signal
from hashdb.store.sqlite import SqliteStore, migrations


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "db.sqlite3")
    s.migrate()
    yield s
    s.close()


def pdq(n: int) -> HashValue:
    return HashValue("pdq", n.to_bytes(32, "big"))


def test_wal_mode_and_migrations_are_recorded_once(store: SqliteStore) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.migrate()  # a second run applies nothing
    versions = [v for (v,) in store._db.execute("SELECT version FROM schema_migrations")]
    assert versions == [v for v, _ in migrations("sqlite")] == [1]


def test_contribution_is_committed_when_acknowledged(store: SqliteStore) -> None:
    member = store.create_member("alice", False)
    [done] = store.contribute(member, [NewSignal(Signal(pdq(1)), ("terrorism",))])
    # A separate connection (another process, a crash-restart) sees it at once.
    other = sqlite3.connect(store.path)
    try:
        rows = other.execute("SELECT media_id, type FROM signal").fetchall()
    finally:
        other.close()
    assert rows == [(done.media_id, "pdq")]


def test_contribute_is_idempotent_per_member_and_value(store: SqliteStore) -> None:
    alice = store.create_member("alice", False)
    bob = store.create_member("bob", False)
    item = NewSignal(Signal(pdq(7)), ("csam",))
    a1 = store.contribute(alice, [item, item])
    assert a1[0].created and not a1[1].created and a1[0].media_id == a1[1].media_id
    [b1] = store.contribute(bob, [item])
    assert b1.created and b1.media_id != a1[0].media_id  # another member's own media


def test_media_key_groups_signals_into_one_media(store: SqliteStore) -> None:
    alice = store.create_member("alice", False)
    frames = [NewSignal(Signal(pdq(i), 90, float(i)), ("terrorism",), media_key="clip-1",
                        media_type="video") for i in range(3)]
    out = store.contribute(alice, frames)
    assert len({o.media_id for o in out}) == 1 and [o.created for o in out] == [True, True, True]
    again = store.contribute(alice, frames)
    assert [o.created for o in again] == [False, False, False]
    record = store.get_media(out[0].media_id)
    assert record is not None and [s.timestamp for s in record.signals] == [0.0, 1.0, 2.0]


def test_status_changes_append_to_the_change_log(store: SqliteStore) -> None:
    alice = store.create_member("alice", False)
    [done] = store.contribute(alice, [NewSignal(Signal(pdq(3)), ("x",))])
    store.set_status(done.media_id, MediaStatus.DELETED,
                     NewEvent("media_withdrawn", alice.id, done.media_id, alice.id))
    ops = [(c.op, c.value) for c in store.changes(0, 100)]
    assert ops == [("add", pdq(3)), ("remove", pdq(3))]
    assert store.last_change() == 2
    kinds = [e.kind for e in store.events(0, 100, None)]
    assert kinds == ["member_created", "media_contributed", "media_withdrawn"]


def test_members_and_keys(store: SqliteStore) -> None:
    alice = store.create_member("alice", True)
    with pytest.raises(Conflict):
        store.create_member("alice", False)
    key = store.create_key(alice, "k1", b"\x01" * 32, frozenset({Role.MATCHER}))
    found = store.key_by_secret_hash(b"\x01" * 32)
    assert found == key and found.member.trusted_flagger
    assert store.revoke_key("k1") and not store.revoke_key("k1")
    assert store.key_by_secret_hash(b"\x01" * 32).revoked_at is not None
