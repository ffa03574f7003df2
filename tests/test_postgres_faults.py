"""PostgreSQL taken away under load, and replicas woken by its NOTIFY.

- The outage runs on a PostgreSQL server of this module's own (tests/pg_private.py),
  so stopping it disturbs no other test: a real hashdb server on it takes matching,
  contributions and withdrawals over HTTP from several threads while PostgreSQL is
  stopped and started again.
- Two real servers on one schema of the shared server, polling only every 5 s: a
  write through one is matchable through the other well before a poll could have
  brought it, so the notification did.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from api import create_app
from conftest import RunningServer, free_port, start_server, wait_for
from hashdb.errors import StoreUnavailable
from hashdb.match_memory import HitCache, PendingEvents
from hashdb.models import EventQuery, MediaStatus, NewEvent, SignalHit
from hashdb.service import Service
from hashdb.settings import Settings
from hashdb.signals import HashValue
from pg_private import PrivatePostgres, private_postgres
from postgres_schemas import postgres_schema

LABELS = ["terrorism"]
# Bounded waits (never asserted as speeds): long enough for a loaded machine.
WAIT = 30.0


def pdq_values(rng: random.Random, n: int) -> list[str]:
    # Random 256-bit values are ~128 bits apart: none is near another.
    return [rng.randbytes(32).hex() for _ in range(n)]


# the outage -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pg: PrivatePostgres
           ) -> Iterator[RunningServer]:
    # Keys are trusted for 0.5 s only, so the outage outlasts every cached check.
    yield from start_server(Settings(
        data_dir=tmp_path_factory.mktemp("hashdb-faults"), database_url=pg.url,
        index_poll_seconds=0.2, review_policy="live", key_cache_seconds=0.5,
        index_snapshots=False))


@dataclass
class Load:
    """Client threads over HTTP, recording exactly what the server answered."""

    url: str
    key: str
    seeds: dict[str, int]  # value -> media id, stored before the load starts
    rng: random.Random
    phase: str = "before"
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)
    acknowledged: dict[str, int] = field(default_factory=dict)  # value -> media id
    acknowledged_at: dict[str, str] = field(default_factory=dict)  # value -> phase
    refused: list[list[str]] = field(default_factory=list)  # contributions answered 503
    withdrawn: set[int] = field(default_factory=set)
    withdrawal_refused: set[int] = field(default_factory=set)
    wrong: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, matchers: int = 3, contributors: int = 2) -> None:
        work = [self.match] * matchers + [self.contribute] * contributors + [self.withdraw]
        for n, target in enumerate(work):
            t = threading.Thread(target=self._run, args=(target, n), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=WAIT)
            assert not t.is_alive(), "a load thread hung"

    def _run(self, target: Callable[[httpx.Client, random.Random], None], n: int) -> None:
        rng = random.Random(f"{self.rng.random()}-{n}")
        with httpx.Client(base_url=self.url, timeout=WAIT,
                          headers={"Authorization": f"Bearer {self.key}"}) as client:
            while not self.stop.is_set():
                try:
                    target(client, rng)
                except Exception as e:  # recorded, and fails the test
                    with self.lock:
                        self.wrong.append(f"{target.__name__}: {e!r}")
                time.sleep(0.01)

    def _record(self, route: str, response: httpx.Response) -> str:
        code = response.json()["error"]["code"] if response.status_code >= 400 else ""
        with self.lock:
            self.answers[(self.phase, route, response.status_code, code)] += 1
        return code

    def match(self, client: httpx.Client, rng: random.Random) -> None:
        sample = rng.sample(sorted(self.seeds), 8)
        queries = [{"id": v, "type": "pdq", "value": v} for v in sample]
        response = client.post("/v1/match/batch", json={"queries": queries})
        self._record("match", response)
        if response.status_code == 200:
            got = {r["id"]: [m["media_id"] for m in r["matches"]]
                   for r in response.json()["results"]}
            if got != {v: [self.seeds[v]] for v in sample}:
                with self.lock:
                    self.wrong.append(f"wrong matches in phase {self.phase}: {got}")

    def contribute(self, client: httpx.Client, rng: random.Random) -> None:
        values = pdq_values(rng, 2)
        items = [{"type": "pdq", "value": v, "labels": LABELS} for v in values]
        phase = self.phase
        response = client.post("/v1/hashes", json={"items": items})
        code = self._record("contribute", response)
        with self.lock:
            if response.status_code == 200:
                for v, item in zip(values, response.json()["items"], strict=True):
                    self.acknowledged[v] = item["media_id"]
                    self.acknowledged_at[v] = phase
            elif code == "store_unavailable":
                self.refused.append(values)

    def withdraw(self, client: httpx.Client, rng: random.Random) -> None:
        with self.lock:
            candidates = sorted(set(self.acknowledged.values()) - self.withdrawn
                                - self.withdrawal_refused)
        if not candidates:
            return
        media_id = rng.choice(candidates)
        response = client.delete(f"/v1/media/{media_id}")
        code = self._record("withdraw", response)
        with self.lock:
            if response.status_code == 200:
                self.withdrawn.add(media_id)
            elif code == "store_unavailable":
                self.withdrawal_refused.add(media_id)
        time.sleep(0.04)

    def count(self, phase: str | None = None, route: str | None = None,
              status: int | None = None) -> int:
        with self.lock:
            return sum(n for (p, r, s, _), n in self.answers.items()
                       if phase in (None, p) and route in (None, r) and status in (None, s))


def match_all(client: httpx.Client, values: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for lo in range(0, len(values), 500):
        chunk = values[lo : lo + 500]
        response = client.post("/v1/match/batch", json={
            "queries": [{"id": v, "type": "pdq", "value": v} for v in chunk]})
        assert response.status_code == 200, response.text
        out.update({r["id"]: [m["media_id"] for m in r["matches"]]
                    for r in response.json()["results"]})
    return out


def readyz(server: RunningServer) -> dict[str, Any]:
    response = server.client().get("/readyz")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_postgres_stopped_under_load(server: RunningServer, pg: PrivatePostgres) -> None:
    rng = random.Random(9)
    key = server.new_key("steady", "contributor,matcher")
    client = server.client(key)
    seed_values = pdq_values(rng, 40)
    stored = client.post("/v1/hashes", json={"items": [
        {"type": "pdq", "value": v, "labels": LABELS} for v in seed_values]})
    assert stored.status_code == 200, stored.text
    seeds = {v: item["media_id"] for v, item in zip(seed_values, stored.json()["items"],
                                                    strict=True)}
    # Matched once: what the hits are is in memory from now on.
    assert match_all(client, seed_values) == {v: [m] for v, m in seeds.items()}
    assert readyz(server)["store"] == "ok"

    load = Load(server.url, key, seeds, rng)
    load.start()
    try:
        wait_for("acknowledged writes before the outage",
                 lambda: load.count("before", "contribute", 200) >= 5)
        load.phase = "during"
        pg.stop()
        ready = wait_for("/readyz to report the outage",
                         lambda: (r := readyz(server))["store"] == "unavailable" and r)
        assert ready["status"] == "degraded" and ready["store_error"]
        wait_for("refused writes", lambda: load.count("during", "contribute", 503) >= 5)
        wait_for("matches answered during the outage",
                 lambda: load.count("during", "match", 200) >= 20)
        time.sleep(1.0)  # well past the keys' 0.5 s cache: matching still answers
        during_matches = load.count("during", "match", 200)
        wait_for("more matches", lambda: load.count("during", "match", 200) > during_matches)

        load.phase = "after"
        pg.start()
        started = time.monotonic()
        wait_for("a write acknowledged after PostgreSQL returned",
                 lambda: load.count("after", "contribute", 200) >= 1)
        recovered = time.monotonic() - started
        wait_for("/readyz to recover", lambda: readyz(server)["store"] == "ok")
        wait_for("more writes after the outage",
                 lambda: load.count("after", "contribute", 200) >= 10)
    finally:
        load.finish()
    print(f"\nanswers: {dict(load.answers)}\nfirst write acknowledged "
          f"{recovered:.2f} s after PostgreSQL started")

    # No 500 anywhere; a refusal is a 503 store_unavailable, and only for a write.
    assert not load.wrong, load.wrong[:5]
    for (phase, route, status, code), n in load.answers.items():
        assert status == 200 or (status == 503 and code == "store_unavailable"
                                 and route != "match"), (phase, route, status, code, n)
    assert load.count("during", "match") == load.count("during", "match", 200) > 0
    assert load.count("during", "contribute", 503) > 0

    # The follower catches up; the matches it logged during the outage reach the trail.
    service = server.service
    wait_for("the follower to catch up",
             lambda: service.follower.cursor == service.store.last_change())
    wait_for("held audit events to be written", lambda: not len(service.matcher.pending_events))
    events = service.store.events(EventQuery(limit=100_000, kinds=frozenset({"match"})))
    assert any("matched_at" in e.details for e in events)

    # Every acknowledged write is there: contributions matchable under their media
    # id, acknowledged withdrawals not matchable (a refused withdrawal may have been
    # applied: checked below).
    found = match_all(client, sorted(load.acknowledged))
    for value, media_id in load.acknowledged.items():
        if media_id in load.withdrawal_refused - load.withdrawn:
            continue
        expected = [] if media_id in load.withdrawn else [media_id]
        assert found[value] == expected, (value, media_id, load.acknowledged_at[value],
                                          client.get(f"/v1/media/{media_id}").json())
    assert {"before", "after"} <= set(load.acknowledged_at.values())
    # A refused contribution was applied whole or not at all: contributed again (as a
    # client retrying would), its items are all new or all known.
    for values in load.refused:
        again = client.post("/v1/hashes", json={"items": [
            {"type": "pdq", "value": v, "labels": LABELS} for v in values]})
        assert again.status_code == 200, again.text
        assert len({item["created"] for item in again.json()["items"]}) == 1, values
    # A refused withdrawal: either done or not, and the index agrees with the store.
    for media_id in sorted(load.withdrawal_refused - load.withdrawn):
        record = client.get(f"/v1/media/{media_id}").json()
        value = record["signals"][0]["value"]
        matchable = match_all(client, [value])[value] == [media_id]
        assert matchable == (record["status"] == "active"), record


def test_store_calls_fail_as_store_unavailable_and_recover(server: RunningServer,
                                                           pg: PrivatePostgres) -> None:
    """Every kind of store call maps a lost server to StoreUnavailable (never a driver
    error), and works again, with no help, once the server is back."""
    store = server.service.store
    calls: list[Callable[[], object]] = [
        store.last_change, store.store_id, store.list_members, lambda: store.get_member("x"),
        lambda: store.get_media(1), lambda: store.signal_hits([1, 2]),
        lambda: store.change_rows(0, 10), lambda: store.events(EventQuery(limit=5)),
    ]
    before = [call() for call in calls]
    pg.stop()
    try:
        for call in calls:
            with pytest.raises(StoreUnavailable):
                call()
        assert server.client().get("/healthz").status_code == 200
    finally:
        pg.start()
    wait_for("the store to answer again", lambda: _answers(store.last_change))
    assert [call() for call in calls] == before


def test_status_and_label_changes_are_updates_in_the_change_log(server: RunningServer) -> None:
    """A dispute and a relabelling keep the media indexed: each is an 'update' in the
    change log (what other replicas forget their cached hits by), and matching here
    answers the new status and labels at once, although the hit was cached before."""
    owner, b, c = (server.client(server.new_key(n, "contributor,matcher"))
                   for n in ("upd-owner", "upd-b", "upd-c"))
    value = pdq_values(random.Random(3), 1)[0]
    media_id = owner.post("/v1/hashes", json={"items": [
        {"type": "pdq", "value": value, "labels": LABELS}]}).json()["items"][0]["media_id"]
    query = {"signals": [{"type": "pdq", "value": value}]}
    for who in (b, c):  # cached from here on, and now they know the media
        assert [m["media_id"] for m in who.post("/v1/match", json=query).json()["matches"]
                ] == [media_id]
    root = server.client(server.admin_key)
    cursor = root.get("/v1/changes?limit=10000").json()["next"]
    for who in (b, c):
        given = who.post(f"/v1/media/{media_id}/feedback",
                         json={"verdict": "disagree", "reason": "lawful"})
        assert given.status_code == 200, given.text
    assert given.json()["effect"] == "disputed"
    assert b.post("/v1/match", json=query).json()["matches"] == []
    resolved = root.post(f"/v1/media/{media_id}/resolution", json={
        "action": "reinstate", "reason": "relabelled", "labels": ["other-illegal"]})
    assert resolved.status_code == 200, resolved.text
    [hit] = b.post("/v1/match", json=query).json()["matches"]
    assert (hit["media_id"], hit["status"], hit["labels"]) == (media_id, "active",
                                                               ["other-illegal"])
    changes = root.get(f"/v1/changes?after={cursor}").json()["changes"]
    assert [(ch["op"], ch["value"]) for ch in changes] == [("update", value)] * 2


def _answers(call: Callable[[], object]) -> bool:
    try:
        call()
    except StoreUnavailable:
        return False
    return True


# what matching keeps in memory ------------------------------------------------------------
def _hit(signal_id: int, status: MediaStatus = MediaStatus.ACTIVE) -> SignalHit:
    return SignalHit(signal_id, signal_id, HashValue("pdq", bytes(32)), None, ("terrorism",),
                     status, "alice", 1)


def test_a_fill_never_brings_back_what_an_invalidation_removed() -> None:
    cache = HitCache(capacity=3)
    store = {1: _hit(1), 2: _hit(2)}
    fetched: list[list[int]] = []

    def fetch(ids: Sequence[int]) -> dict[int, SignalHit]:
        fetched.append(list(ids))
        return {i: store[i] for i in fetched[-1] if i in store}

    assert cache.lookup([1, 2, 3], fetch) == {1: store[1], 2: store[2]}
    assert cache.lookup([1, 2], fetch) == {1: store[1], 2: store[2]}
    assert fetched == [[1, 2, 3]]  # the second came from memory; 3 is unknown
    # A change made while a lookup read the store: what it read is not kept.
    def racing_fetch(ids: Sequence[int]) -> dict[int, SignalHit]:
        old = fetch(ids)
        store[1] = _hit(1, MediaStatus.DISPUTED)
        cache.invalidate(np.array([1], np.int64))
        return old

    cache.invalidate(np.array([1], np.int64))
    assert cache.lookup([1], racing_fetch)[1].status == MediaStatus.ACTIVE  # read before
    assert cache.lookup([1], fetch)[1].status == MediaStatus.DISPUTED  # not the stale one
    assert fetched[-1] == [1]
    # Bounded: the least recently used goes first.
    store.update({i: _hit(i) for i in (4, 5)})
    cache.lookup([2, 4, 5], fetch)
    assert len(cache) == 3 and cache.lookup([1], fetch) and fetched[-1] == [1]


def test_events_wait_for_the_store_in_order() -> None:
    written: list[NewEvent] = []
    down = True

    def log_events(events: Sequence[NewEvent]) -> None:
        if down:
            raise StoreUnavailable("down")
        written.extend(events)

    pending = PendingEvents(log_events, limit=3)
    first, second = NewEvent("match", 1, 10), NewEvent("match", 1, 11)
    pending.log([first])
    pending.log([second])
    assert len(pending) == 2 and not written
    with pytest.raises(StoreUnavailable):  # no room: matching answers 503
        pending.log([first, second])
    down = False
    pending.log([NewEvent("match", 1, 12)])  # behind the two that waited
    assert [e.media_id for e in written] == [10, 11, 12] and not len(pending)
    assert "matched_at" in written[0].details and "matched_at" in written[2].details


# replicas woken by NOTIFY ------------------------------------------------------------------
POLL = 5.0


@contextmanager
def replica(settings: Settings, admin_key: str) -> Iterator[RunningServer]:
    """One more server on a database another one set up (and made the admin key of)."""
    service = Service(settings)
    app = create_app(settings, service)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for("the replica to start", lambda: server.started and service.ready)
        running = RunningServer(f"http://127.0.0.1:{port}", service, admin_key,
                                settings.data_dir)
        yield running
        running.close_clients()
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT)
        service.close()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two real servers on one schema, polling only every 5 s."""
    def settings(name: str, url: str) -> Settings:
        return Settings(data_dir=tmp_path / name, database_url=url, index_poll_seconds=POLL,
                        review_policy="live", index_snapshots=False)

    with postgres_schema() as url:
        first = start_server(settings("one", url))
        try:
            one = next(first)
            with replica(settings("two", url), one.admin_key) as two:
                yield one, two
        finally:
            first.close()


def test_a_write_through_one_replica_is_matchable_through_the_other(
    replicas: tuple[RunningServer, RunningServer]
) -> None:
    one, two = replicas
    key = one.new_key("writer", "contributor,matcher")
    writer, reader = one.client(key), two.client(key)
    rng = random.Random(20)

    def visible_after(value: str, bound: float = POLL) -> float:
        response = writer.post("/v1/hashes", json={"items": [
            {"type": "pdq", "value": value, "labels": LABELS}]})
        assert response.status_code == 200, response.text
        acknowledged = time.monotonic()
        media_id = response.json()["items"][0]["media_id"]
        query = {"signals": [{"type": "pdq", "value": value}]}
        while True:
            matches = reader.post("/v1/match", json=query).json()["matches"]
            waited = time.monotonic() - acknowledged
            if matches:
                assert [m["media_id"] for m in matches] == [media_id]
                return waited
            # Before the next poll: only the notification can have brought it.
            assert waited < bound, f"not visible through the other replica after {waited:.1f} s"
            time.sleep(0.002)

    visible_after(pdq_values(rng, 1)[0], WAIT)  # the other replica is listening by now
    delays = [visible_after(v) for v in pdq_values(rng, 20)]
    print(f"\nwrite on one -> matchable on two: p50 {statistics.median(delays) * 1000:.1f} ms, "
          f"max {max(delays) * 1000:.1f} ms over {len(delays)} writes (poll every {POLL} s)")
