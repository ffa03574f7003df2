"""The service on PostgreSQL, end to end: real HTTP on one process, and two
"replicas" (two Service objects on one schema) kept in step by the change log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RunningServer, start_server
from hashdb.importing import HashItem
from hashdb.service import Service
from hashdb.settings import Settings
from hashdb.signals import HashValue, Signal
from postgres_schemas import postgres_schema

ORIGINAL = "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"
OTHER = "0f" * 32


def flipped(hex_value: str, bits: list[int]) -> str:
    raw = bytearray(bytes.fromhex(hex_value))
    for b in bits:
        raw[b // 8] ^= 0x80 >> (b % 8)
    return raw.hex()


NEAR = flipped(ORIGINAL, [0, 9, 18, 27])  # 4 bits away


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory, database_url: str
              ) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("hashdb-pg")
    yield from start_server(
        Settings(data_dir=data_dir, database_url=database_url, index_poll_seconds=0.2,
                 review_policy="live")
    )


def test_contribute_match_withdraw_over_http(pg_server: RunningServer) -> None:
    assert type(pg_server.service.store).__name__ == "PostgresStore"
    key = pg_server.new_key("alice", "contributor,matcher")
    alice = pg_server.client(key)
    item = {"type": "pdq", "value": ORIGINAL, "labels": ["terrorism"], "source": "ops"}
    first = alice.post("/v1/hashes", json={"items": [item, item]})
    assert first.status_code == 200, first.text
    [a, b] = first.json()["items"]
    assert a["created"] is True and b == {"media_id": a["media_id"], "created": False}

    query = {"signals": [{"type": "pdq", "value": NEAR}]}
    matches = alice.post("/v1/match", json=query).json()["matches"]
    assert [(m["media_id"], m["distance"], m["contributor"], m["labels"]) for m in matches] == [
        (a["media_id"], 4, "alice", ["terrorism"])
    ]
    media = alice.get(f"/v1/media/{a['media_id']}")
    assert media.status_code == 200, media.text
    assert media.json()["created_at"].endswith("Z")

    gone = alice.delete(f"/v1/media/{a['media_id']}")
    assert gone.status_code == 200, gone.text
    assert alice.post("/v1/match", json=query).json()["matches"] == []
    kinds = [e["kind"] for e in alice.get("/v1/events").json()["events"]]
    assert "media_contributed" in kinds and "media_withdrawn" in kinds


def test_a_write_elsewhere_reaches_the_polling_server(
    pg_server: RunningServer, database_url: str, tmp_path: Path
) -> None:
    writer = Service(Settings(data_dir=tmp_path, database_url=database_url,
                              index_snapshots=False, review_policy="live"))
    try:
        _, key = writer.members.create_key(None, "carol", ["contributor", "matcher"],
                                   create_member=True)
        caller = writer.members.authenticate(key)
        [done] = writer.contributions.contribute_hashes(caller, [HashItem("pdq", OTHER, ["csam"])])
        matcher = pg_server.client(key)
        query = {"signals": [{"type": "pdq", "value": OTHER}]}
        deadline = time.monotonic() + 10
        while not (found := matcher.post("/v1/match", json=query).json()["matches"]):
            assert time.monotonic() < deadline, "the server never followed the change log"
            time.sleep(0.1)
        assert [m["media_id"] for m in found] == [done.media_id]
    finally:
        writer.close()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Service, Service]]:
    """Two services on one schema of their own, each with its own data folder."""
    with postgres_schema() as url:
        services = []
        try:
            for name in ("one", "two"):
                service = Service(Settings(data_dir=tmp_path / name, database_url=url,
                                           review_policy="live"))
                services.append(service)
                service.start(poll=False)  # the test drives the followers by hand
            yield services[0], services[1]
        finally:
            for service in services:
                service.close()


def test_two_replicas_follow_one_change_log(replicas: tuple[Service, Service]) -> None:
    one, two = replicas
    assert one.store.store_id() == two.store.store_id()
    _, key = one.members.create_key(None, "dave", ["contributor", "matcher"], create_member=True)
    at_one, at_two = one.members.authenticate(key), two.members.authenticate(key)
    query = [Signal(HashValue.from_hex("pdq", NEAR))]
    [done] = one.contributions.contribute_hashes(at_one, [HashItem("pdq", ORIGINAL, ["terrorism"])])
    assert done.created and done.media_id is not None
    assert [m.media_id for m in one.matcher.match(at_one, query).matches] == [done.media_id]
    # The other replica sees it once it has followed the change log, not before.
    assert two.matcher.match(at_two, query).matches == []
    assert two.follower.sync() >= 1
    [hit] = two.matcher.match(at_two, query).matches
    assert (hit.media_id, hit.contributor, hit.labels) == (done.media_id, "dave",
                                                           ("terrorism",))
    # A withdrawal travels the same way.
    one.contributions.withdraw(at_one, done.media_id)
    assert one.matcher.match(at_one, query).matches == []
    assert two.follower.sync() == 1
    assert two.matcher.match(at_two, query).matches == []
    assert one.follower.cursor == two.follower.cursor == one.store.last_change()
