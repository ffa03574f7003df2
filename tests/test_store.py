"""Both stores, SQLite on a real file and PostgreSQL in a schema of its own, through
the same tests: migrations, durability, idempotency (also under concurrency), the
bulk path, the change log, export and identity."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hashdb.errors import Conflict
from hashdb.models import EventQuery, ImportGroup, MediaStatus, NewEvent, NewSignal, Role
from hashdb.signals import HashValue, Signal
from hashdb.store import Store
from hashdb.store.sqlite import SqliteStore, migrations
from postgres_schemas import postgres_schema


@dataclass
class Backend:
    name: str
    open: Callable[[], Store]
    # Runs SQL on a connection of its own: what another process would see.
    query: Callable[[str], list[tuple[Any, ...]]]


def _sqlite_query(path: Path) -> Callable[[str], list[tuple[Any, ...]]]:
    def query(text: str) -> list[tuple[Any, ...]]:
        other = sqlite3.connect(path)
        try:
            return other.execute(text).fetchall()
        finally:
            other.close()

    return query


def _postgres_query(url: str) -> Callable[[str], list[tuple[Any, ...]]]:
    def query(text: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as other:
            return other.execute(text).fetchall()

    return query


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "db.sqlite3"
        yield Backend("sqlite", lambda: SqliteStore(path), _sqlite_query(path))
    else:
        from hashdb.store.postgres import PostgresStore

        with postgres_schema() as url:
            yield Backend("postgres", lambda: PostgresStore(url), _postgres_query(url))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    s = backend.open()
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "db.sqlite3")
    s.migrate()
    yield s
    s.close()


def pdq(n: int) -> HashValue:
    return HashValue("pdq", n.to_bytes(32, "big"))


def test_sqlite_runs_in_wal_mode(sqlite_store: SqliteStore) -> None:
    assert sqlite_store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrations_are_recorded_once(store: Store, backend: Backend) -> None:
    store.migrate()  # a second run applies nothing
    versions = [v for (v,) in backend.query("SELECT version FROM schema_migrations")]
    assert versions == [v for v, _ in migrations(backend.name)] == [1, 2, 3, 4]


def test_contribution_is_committed_when_acknowledged(store: Store, backend: Backend) -> None:
    member = store.create_member("alice", False)
    [done] = store.contribute(member, [NewSignal(Signal(pdq(1)), ("terrorism",))])
    # A separate connection (another process, a crash-restart) sees it at once.
    rows = backend.query("SELECT media_id, type FROM signal")
    assert rows == [(done.media_id, "pdq")]


def test_contribute_is_idempotent_per_member_and_value(store: Store) -> None:
    alice = store.create_member("alice", False)
    bob = store.create_member("bob", False)
    item = NewSignal(Signal(pdq(7)), ("csam",))
    a1 = store.contribute(alice, [item, item])
    assert a1[0].created and not a1[1].created and a1[0].media_id == a1[1].media_id
    [b1] = store.contribute(bob, [item])
    assert b1.created and b1.media_id != a1[0].media_id  # another member's own media


def test_a_batch_keeps_order_and_fields(store: Store) -> None:
    alice = store.create_member("alice", False)
    [old] = store.contribute(alice, [NewSignal(Signal(pdq(1)), ("x",))])
    batch = [
        NewSignal(Signal(pdq(2), 77, 1.5), ("a", "b"), note="n", source="s"),
        NewSignal(Signal(pdq(1)), ("x",)),
        NewSignal(Signal(HashValue("md5", b"\x01" * 16)), ("c",)),
        NewSignal(Signal(pdq(2)), ("other",)),
    ]
    out = store.contribute(alice, batch)
    assert [o.created for o in out] == [True, False, True, False]
    assert out[1].media_id == old.media_id and out[3].media_id == out[0].media_id
    assert len({old.media_id, out[0].media_id, out[2].media_id}) == 3
    record = store.get_media(out[0].media_id)
    assert record is not None
    assert (record.labels, record.note, record.source, record.status) == (
        ("a", "b"), "n", "s", MediaStatus.ACTIVE)
    [sig] = record.signals
    assert (sig.value, sig.quality, sig.timestamp) == (pdq(2), 77, 1.5)
    # Mixed with a media key, the same batch gives the same answers.
    mixed = batch + [NewSignal(Signal(pdq(9)), ("k",), media_key="clip")]
    again = store.contribute(alice, mixed)
    assert [(o.media_id, o.created) for o in again[:4]] == [(o.media_id, False) for o in out]
    assert again[4].created
    adds = [c.value for c in store.changes(0, 100) if c.op == "add"]
    assert adds == [pdq(1), pdq(2), HashValue("md5", b"\x01" * 16), pdq(9)]


def test_concurrent_contributions_of_one_value_make_one_media(store: Store) -> None:
    alice = store.create_member("alice", False)
    threads, rounds = 6, 15
    start = threading.Barrier(threads)
    results: list[list[tuple[int, bool]]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for r in range(rounds):
                start.wait(timeout=30)  # every thread sends round r at the same moment
                [out] = store.contribute(alice, [NewSignal(Signal(pdq(1000 + r)), ("x",))])
                results[k].append((out.media_id, out.created))
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            start.abort()

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors
    for r in range(rounds):
        outcomes = [results[k][r] for k in range(threads)]
        assert len({mid for mid, _ in outcomes}) == 1, outcomes
        assert sum(created for _, created in outcomes) == 1, outcomes
    assert len(store.changes(0, 1000)) == rounds


def test_media_key_groups_signals_into_one_media(store: Store) -> None:
    alice = store.create_member("alice", False)
    frames = [NewSignal(Signal(pdq(i), 90, float(i)), ("terrorism",), media_key="clip-1",
                        media_type="video") for i in range(3)]
    out = store.contribute(alice, frames)
    assert len({o.media_id for o in out}) == 1 and [o.created for o in out] == [True, True, True]
    again = store.contribute(alice, frames)
    assert [o.created for o in again] == [False, False, False]
    record = store.get_media(out[0].media_id)
    assert record is not None and [s.timestamp for s in record.signals] == [0.0, 1.0, 2.0]
    assert record.media_type == "video" and record.labels == ("terrorism",)
    assert record.created_at.endswith("Z") and len(record.created_at) == 24
    assert record.owner == alice


def test_status_changes_append_to_the_change_log(store: Store) -> None:
    alice = store.create_member("alice", False)
    [done] = store.contribute(alice, [NewSignal(Signal(pdq(3)), ("x",))])
    store.set_status(done.media_id, MediaStatus.DELETED,
                     NewEvent("media_withdrawn", alice.id, done.media_id, alice.id))
    ops = [(c.op, c.value) for c in store.changes(0, 100)]
    assert ops == [("add", pdq(3)), ("remove", pdq(3))]
    assert store.last_change() == 2
    events = store.events(EventQuery(0, 100))
    assert [e.kind for e in events] == ["member_created", "media_contributed", "media_withdrawn"]
    assert events[2].details == {"from": "active", "to": "deleted", "labels": ["x"]}
    assert events[2].media_id == done.media_id and events[2].member == "alice"
    # A withdrawn value may be contributed again, as a new media.
    [again] = store.contribute(alice, [NewSignal(Signal(pdq(3)), ("x",))])
    assert again.created and again.media_id != done.media_id


def test_members_and_keys(store: Store) -> None:
    alice = store.create_member("alice", True)
    with pytest.raises(Conflict):
        store.create_member("alice", False)
    assert store.get_member("alice") == alice and store.get_member("nobody") is None
    key = store.create_key(alice, "k1", b"\x01" * 32, frozenset({Role.MATCHER}))
    found = store.key_by_secret_hash(b"\x01" * 32)
    assert found == key and found.member.trusted_flagger
    assert store.get_key("k1") == key and store.count_keys() == 1
    assert store.revoke_key("k1") and not store.revoke_key("k1")
    revoked = store.key_by_secret_hash(b"\x01" * 32)
    assert revoked is not None and revoked.revoked_at is not None


def _rows(values: list[int], labels: str = '["csam"]') -> list[ImportGroup]:
    """One packed group of pdq values (duplicates allowed)."""
    return [ImportGroup("pdq", 32, 90, labels, "bulk", b"".join(pdq(v).raw for v in values))]


def test_import_signals_is_bulk_and_idempotent(store: Store) -> None:
    alice = store.create_member("alice", False)
    bob = store.create_member("bob", False)
    [old] = store.contribute(alice, [NewSignal(Signal(pdq(5)), ("x",))])
    batch = _rows([1, 2, 3, 2, 1, 4, 5])  # duplicates inside, and 5 already contributed
    assert store.import_signals(alice, batch) == 4
    assert store.import_signals(alice, batch) == 0  # a re-run creates nothing
    assert store.import_signals(bob, _rows([1, 2])) == 2  # another member's own media
    assert store.import_signals(alice, _rows([4, 6])) == 1

    changes = store.changes(0, 100)
    added = [c.value for c in changes if c.op == "add"]
    assert sorted(v.raw for v in added) == sorted(
        pdq(v).raw for v in [5, 1, 2, 3, 4, 1, 2, 6])
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    # Each imported value is a media of its own; contribute then sees it as existing.
    again = store.contribute(alice, [NewSignal(Signal(pdq(v)), ("x",)) for v in [1, 2, 3, 4, 6]])
    assert not any(o.created for o in again) and len({o.media_id for o in again}) == 5
    assert old.media_id not in {o.media_id for o in again}
    record = store.get_media(again[0].media_id)
    assert record is not None and record.labels == ("csam",) and record.source == "bulk"
    assert [s.quality for s in record.signals] == [90] and record.media_type == "hashes"
    imports = [e for e in store.events(EventQuery(0, 100)) if e.kind == "bulk_import"]
    assert [e.details["created"] for e in imports] == [4, 2, 1]
    first = imports[0].details
    assert first["last_media_id"] - first["first_media_id"] == 3


def test_import_signals_at_scale_then_signal_hits(store: Store) -> None:
    alice = store.create_member("alice", False)
    labels = json.dumps(["terrorism"])
    rows = _rows(list(range(20_000)), labels) + _rows(list(range(0, 20_000, 7)), labels)
    assert store.import_signals(alice, rows) == 20_000
    assert store.import_signals(alice, _rows(list(range(500)), labels)) == 0
    change_rows = store.change_rows(0, 50_000)
    assert len(change_rows) == 20_000
    ids = [r[2] for r in change_rows[:3]] + [10**12]
    hits = store.signal_hits(ids + ids)
    assert sorted(hits) == sorted(ids[:3])
    assert all(h.labels == ("terrorism",) and h.contributor == "alice" for h in hits.values())


def test_change_rows_are_in_commit_order(store: Store) -> None:
    alice = store.create_member("alice", False)
    [a] = store.contribute(alice, [NewSignal(Signal(pdq(1)), ("x",))])
    store.import_signals(alice, _rows([2, 3]))
    store.set_status(a.media_id, MediaStatus.DELETED,
                     NewEvent("media_withdrawn", alice.id, a.media_id, alice.id))
    store.contribute(alice, [NewSignal(Signal(HashValue("md5", b"\x07" * 16)), ("x",))])
    rows = store.change_rows(0, 100)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert len({r[0] for r in rows}) == len(rows)
    assert [(op, t, v) for _, op, _, t, v in rows] == [
        ("add", "pdq", pdq(1).raw), ("add", "pdq", pdq(2).raw), ("add", "pdq", pdq(3).raw),
        ("remove", "pdq", pdq(1).raw), ("add", "md5", b"\x07" * 16),
    ]
    assert all(isinstance(v, bytes) for *_, v in rows)
    # Paging by cursor gives the same rows, and a cursor at the end gives none.
    paged = store.change_rows(0, 2) + store.change_rows(rows[1][0], 2)
    paged += store.change_rows(paged[-1][0], 100)
    assert [tuple(r) for r in paged] == [tuple(r) for r in rows]
    assert store.change_rows(store.last_change(), 100) == []
    assert [c.seq for c in store.changes(rows[2][0], 100)] == [r[0] for r in rows[3:]]


def test_export_signals_pages_through_active_media(store: Store) -> None:
    alice = store.create_member("alice", False)
    out = store.contribute(alice, [NewSignal(Signal(pdq(i), 80 + i), ("x", "y")) for i in range(5)])
    store.set_status(out[1].media_id, MediaStatus.DELETED,
                     NewEvent("media_withdrawn", alice.id, out[1].media_id, alice.id))
    first = store.export_signals(0, 2)
    rest = store.export_signals(first[-1][0].signal_id, 100)
    exported = first + rest
    assert [hit.value for hit, _ in exported] == [pdq(i) for i in (0, 2, 3, 4)]
    assert [q for _, q in exported] == [80, 82, 83, 84]
    hit = exported[0][0]
    assert hit.labels == ("x", "y") and hit.contributor == "alice"
    assert hit.status is MediaStatus.ACTIVE and hit.contributor_id == alice.id
    assert store.export_signals(exported[-1][0].signal_id, 100) == []


def test_store_id_is_stable_across_reopen(store: Store, backend: Backend) -> None:
    first = store.store_id()
    assert len(first) == 32 and int(first, 16) >= 0
    other = backend.open()
    try:
        other.migrate()
        assert other.store_id() == first
    finally:
        other.close()


def test_events_are_filtered_per_member(store: Store) -> None:
    alice = store.create_member("alice", False)
    bob = store.create_member("bob", False)
    [a] = store.contribute(alice, [NewSignal(Signal(pdq(1)), ("x",))])
    store.log_events([NewEvent("match", bob.id, a.media_id, alice.id, {"distance": 3})])
    store.log_events([])
    # Bob's match is his own history: Alice sees her media's events, not who matched it.
    alice_sees = [(e.kind, e.member, e.owner) for e in store.events(EventQuery(0, 100, alice.id))]
    assert alice_sees == [("member_created", None, "alice"),
                          ("media_contributed", "alice", "alice")]
    bob_sees = store.events(EventQuery(0, 100, bob.id))
    assert [e.kind for e in bob_sees] == ["member_created", "match"]
    assert bob_sees[1].details == {"distance": 3} and bob_sees[1].owner == "alice"
    assert store.events(EventQuery(bob_sees[-1].id, 100)) == []


def test_a_big_batch_writes_what_items_one_at_a_time_write(tmp_path: Path) -> None:
    """On SQLite a batch of items that are each their own media is written
    set-based: its answers, media, change log and events equal those of the same
    items contributed one call at a time (the row-by-row path)."""
    batch = [NewSignal(Signal(pdq(i % 40), i % 3 or None), (f"l{i % 2}",),
                       note=f"n{i}" if i % 5 == 0 else None) for i in range(60)]
    batch.append(NewSignal(Signal(HashValue("md5", b"\x02" * 16)), ("c",)))
    batch.append(NewSignal(Signal(pdq(1000), None, 2.5), ("v",), media_type="video"))

    def run(store: Store, one_at_a_time: bool) -> tuple[Any, ...]:
        alice, bob = store.create_member("alice", False), store.create_member("bob", False)
        store.contribute(alice, [NewSignal(Signal(pdq(3)), ("old",))])
        store.contribute(bob, [NewSignal(Signal(pdq(4)), ("bob",))])  # not alice's
        [gone] = store.contribute(alice, [NewSignal(Signal(pdq(5)), ("gone",))])
        store.set_status(gone.media_id, MediaStatus.DELETED, NewEvent("media_withdrawn", alice.id))
        answers = ([store.contribute(alice, [i])[0] for i in batch] if one_at_a_time
                   else store.contribute(alice, batch))
        media = [(r.id, r.labels, r.note, r.status, r.media_type,
                  [(g.value, g.quality, g.timestamp) for g in r.signals])
                 for r in (store.get_media(a.media_id) for a in answers) if r is not None]
        changes = [(c.op, c.value) for c in store.changes(0, 1000)]
        events = store.events(EventQuery(limit=1000, kinds=frozenset({"media_contributed"})))
        return ([(a.media_id, a.created) for a in answers], media, changes,
                [(e.media_id, e.details) for e in events])

    stores = [SqliteStore(tmp_path / "one.sqlite3"), SqliteStore(tmp_path / "batch.sqlite3")]
    try:
        for s in stores:
            s.migrate()
        want, got = run(stores[0], True), run(stores[1], False)
    finally:
        for s in stores:
            s.close()
    # 40 distinct values, of which alice had one already (3); bob's (4) and a
    # withdrawn one (5) are new media for her; plus the md5 and the video frame.
    assert sum(created for _, created in got[0]) == 41
    assert got == want
