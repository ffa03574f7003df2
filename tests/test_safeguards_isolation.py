"""What one member may see and do of another's work, over real HTTP on SQLite and
PostgreSQL; anonymous contributor names; and disputes and disables seen by a second
replica on one PostgreSQL schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RunningServer
from hashdb.importing import HashItem
from hashdb.matching import MatchOptions
from hashdb.service import Service
from hashdb.settings import Settings
from hashdb.signals import HashValue, Signal
from postgres_schemas import postgres_schema
from safeguards_support import (
    BACKENDS,
    admin,
    backend_server,
    contribute,
    events,
    feedback,
    match,
    matched_ids,
    member,
    pdq,
    resolve,
    serve,
    status_of,
)

PRIVATE = ("note", "source", "media_key")


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[RunningServer]:
    yield from backend_server(request.param, tmp_path_factory)


# 6. isolation ---------------------------------------------------------------------------
def test_members_cannot_reach_each_others_work(srv: RunningServer) -> None:
    root = admin(srv)
    a = member(srv, "alpha", trusted=True)
    b = member(srv, "bravo")
    c = member(srv, "charlie")
    value = pdq()
    media_id = contribute(a, value, ["counterfeit-goods"], note="case 17",
                          source="takedown desk", media_key="batch-9")
    own = a.http.get(f"/v1/media/{media_id}").json()
    assert (own["note"], own["source"], own["media_key"]) == (
        "case 17", "takedown desk", "batch-9")

    # Before B has met the media, it does not exist for B.
    assert b.http.get(f"/v1/media/{media_id}").status_code == 404
    assert b.http.get(f"/v1/media/{media_id}/feedback").status_code == 404
    assert feedback(b, media_id, "agree").status_code == 404
    assert b.http.delete(f"/v1/media/{media_id}").status_code == 404
    assert b.http.get(f"/v1/media/{media_id + 10_000}").status_code == 404  # same answer

    # Once B has matched it, B reads it, without A's private fields, and still may not
    # withdraw it.
    assert matched_ids(b, value) == [media_id]
    seen = b.http.get(f"/v1/media/{media_id}")
    assert seen.status_code == 200, seen.text
    assert seen.json()["contributor"] == a.name
    assert not set(PRIVATE) & set(seen.json())
    for word in ("case 17", "takedown desk", "batch-9"):
        assert word not in seen.text
    refused = b.http.delete(f"/v1/media/{media_id}")
    assert refused.status_code == 403, refused.text
    assert status_of(srv, media_id) == "active"

    # Feedback: B sees its own, the owner (and the admin) all of it.
    assert matched_ids(c, value) == [media_id]
    assert feedback(b, media_id, "agree", reason="correct").status_code == 200
    assert feedback(c, media_id, "disagree", reason="c's private doubt").status_code == 200
    mine = b.http.get(f"/v1/media/{media_id}/feedback").json()["feedback"]
    assert [(f["member"], f["verdict"]) for f in mine] == [(b.name, "agree")]
    assert "c's private doubt" not in b.http.get(f"/v1/media/{media_id}/feedback").text
    for who in (a.http, root):
        everything = who.get(f"/v1/media/{media_id}/feedback").json()["feedback"]
        assert {(f["member"], f["verdict"]) for f in everything} == {
            (b.name, "agree"), (c.name, "disagree")}

    # B's events are B's own doing: none of A's (or C's) actions.
    b_events = events(b.http)
    assert not {a.name, c.name} & {e["member"] for e in b_events}
    by_b = [e for e in b_events if e["member"] == b.name]
    assert {e["kind"] for e in by_b} == {"match", "feedback"}
    assert all(e["key_id"] == b.key_id for e in by_b)
    # The rest is the admin setting B up: about B, with the admin's key id hidden.
    assert {(e["kind"], e["member"], e["owner"], e["key_id"])
            for e in b_events if e["member"] != b.name} == {
        ("member_created", "admin", b.name, None), ("key_created", "admin", b.name, None)}
    a_events = events(a.http)
    assert "media_contributed" in {e["kind"] for e in a_events if e["media_id"] == media_id}
    # The owner hears of feedback on its media, but not of who matched it.
    assert "match" not in {e["kind"] for e in a_events if e["member"] != a.name}

    # Operators' routes are closed to a member.
    assert b.http.get("/v1/audit").status_code == 403
    assert b.http.get("/v1/review").status_code == 403
    assert member(srv, "trusted", trusted=True).http.get("/v1/review").status_code == 200
    assert b.http.get("/v1/members").status_code == 403
    assert b.http.get("/v1/changes").status_code == 403
    assert resolve(b.http, media_id, "disable", reason="mine now").status_code == 403
    assert b.http.post(f"/v1/members/{b.name}/keys", json={"roles": ["admin"]}
                       ).status_code == 403
    assert b.http.patch(f"/v1/members/{b.name}", json={"trusted_flagger": True}
                        ).status_code == 403
    assert status_of(srv, media_id) == "active"

    # An auditor reads everything and changes nothing.
    auditor = member(srv, "auditor", roles=("auditor",))
    trail = events(auditor.http, "/v1/audit", media_id=media_id)
    assert {(e["kind"], e["member"]) for e in trail} >= {
        ("media_contributed", a.name), ("match", b.name), ("feedback", c.name)}
    everyone = {e["member"] for e in events(auditor.http)}
    assert {a.name, b.name, c.name} <= everyone
    assert auditor.http.get(f"/v1/media/{media_id}").json()["note"] == "case 17"
    writes = [
        ("POST", "/v1/hashes", {"items": [{"type": "pdq", "value": pdq(),
                                           "labels": ["other-illegal"]}]}),
        ("DELETE", f"/v1/media/{media_id}", None),
        ("POST", f"/v1/media/{media_id}/feedback", {"verdict": "disagree", "reason": "x"}),
        ("POST", f"/v1/media/{media_id}/resolution", {"action": "disable", "reason": "x"}),
        ("POST", "/v1/members", {"name": "auditor-made"}),
        ("PATCH", f"/v1/members/{b.name}", {"active": False}),
        ("POST", f"/v1/members/{b.name}/keys", {"roles": ["matcher"]}),
        ("DELETE", f"/v1/keys/{b.key_id}", None),
    ]
    before = len(events(root, "/v1/audit"))
    for method, path, body in writes:
        r = auditor.http.request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
    assert len(events(root, "/v1/audit")) == before  # nothing happened
    assert status_of(srv, media_id) == "active"
    assert b.http.get("/v1/labels").status_code == 200


def test_anonymous_contributor_names(tmp_path: Path) -> None:
    # SQLite only: the rule does not depend on the store.
    with serve(Settings(data_dir=tmp_path, index_poll_seconds=0.2,
                        contributor_names="anonymous")) as other:
        root = admin(other)
        a = member(other, "alice", trusted=True)
        b = member(other, "bob")
        c = member(other, "carol")
        value = pdq()
        media_id = contribute(a, value, ["terrorism"], note="private")
        [first] = match(b, value)
        [second] = match(b, value)
        alias = first["contributor"]
        assert re.fullmatch(r"member-[0-9a-f]{12}", alias), alias
        assert second["contributor"] == alias and a.name not in alias
        shown = b.http.get(f"/v1/media/{media_id}")
        assert shown.status_code == 200, shown.text
        assert shown.json()["contributor"] == alias
        assert a.name not in shown.text and "private" not in shown.text
        assert [m["contributor"] for m in match(c, value)] == [alias]  # one id for all
        batch = b.http.post("/v1/match/batch",
                            json={"queries": [{"id": "q", "type": "pdq", "value": value}]})
        assert batch.status_code == 200, batch.text
        assert [m["contributor"] for m in batch.json()["results"][0]["matches"]] == [alias]
        [b_match] = [e for e in events(b.http) if e["kind"] == "match"][:1]
        assert (b_match["member"], b_match["owner"]) == (b.name, alias)
        # The operators and the contributor itself see the name.
        assert [m["contributor"] for m in match(root, value)] == [a.name]
        assert root.get(f"/v1/media/{media_id}").json()["contributor"] == a.name
        assert a.http.get(f"/v1/media/{media_id}").json()["contributor"] == a.name
        # A different member is a different id.
        other_value = pdq()
        c_media = contribute(c, other_value, ["terrorism"])  # pending: C is not trusted
        assert resolve(root, c_media, "reinstate").status_code == 200
        [c_hit] = match(b, other_value)
        assert c_hit["contributor"] != alias and c_hit["contributor"].startswith("member-")


# 5. replicas ----------------------------------------------------------------------------
@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Service, Service]]:
    """Two services on one PostgreSQL schema, DEFAULT settings, followers driven by hand."""
    with postgres_schema() as url:
        services: list[Service] = []
        try:
            for name in ("one", "two"):
                service = Service(Settings(data_dir=tmp_path / name, database_url=url,
                                           index_snapshots=False))
                services.append(service)
                service.start(poll=False)
            yield services[0], services[1]
        finally:
            for service in services:
                service.close()


def test_replicas_see_disputes_and_disables(replicas: tuple[Service, Service]) -> None:
    one, two = replicas

    def key(name: str, roles: list[str], trusted: bool = False) -> str:
        return one.members.create_key(None, name, roles, create_member=True,
                                      trusted_flagger=trusted)[1]

    keys = {"owner": key("owner", ["contributor", "matcher"], trusted=True),
            "b": key("b", ["matcher"]), "c": key("c", ["matcher"]), "d": key("d", ["matcher"]),
            "boss": key("boss", ["admin"])}
    at_one = {n: one.members.authenticate(k) for n, k in keys.items()}
    at_two = {n: two.members.authenticate(k) for n, k in keys.items()}
    value = pdq()
    query = [Signal(HashValue.from_hex("pdq", value))]
    disputed = MatchOptions(include_disputed=True)

    [done] = one.contributions.contribute_hashes(
        at_one["owner"], [HashItem("pdq", value, ["terrorism"])])
    media_id = done.media_id
    assert media_id is not None
    assert two.follower.sync() >= 1
    assert [m.media_id for m in two.matcher.match(at_two["d"], query).matches] == [media_id]

    # A dispute made on one: an 'update' in the change log (the signal stays indexed),
    # which makes the other forget what it cached of the hit: it stops matching it
    # once it has followed the log, which PostgreSQL's NOTIFY makes immediate.
    for n in ("b", "c"):
        assert [m.media_id for m in one.matcher.match(at_one[n], query).matches] == [media_id]
    cursor = one.store.last_change()
    one.moderation.give_feedback(at_one["b"], media_id, "disagree", "lawful")
    outcome = one.moderation.give_feedback(at_one["c"], media_id, "disagree", "lawful")
    assert outcome.effect == "disputed"
    assert [(c.op, c.value.hex) for c in one.store.changes(cursor, 100)] == [("update", value)]
    assert one.matcher.match(at_one["d"], query).matches == []
    assert two.follower.sync() == 1
    assert two.matcher.match(at_two["d"], query).matches == []
    [hit] = two.matcher.match(at_two["d"], query, disputed).matches
    assert (hit.media_id, hit.status.value) == (media_id, "disputed")

    # A disable made on one: out of its matching at once, out of the other's index
    # once it has followed the `remove` change.
    cursor = one.store.last_change()
    one.moderation.resolve(at_one["boss"], media_id, "disable", "confirmed")
    assert one.matcher.match(at_one["d"], query, disputed).matches == []
    assert two.matcher.search(at_two["d"], query, disputed).any  # not followed yet
    removed = one.store.changes(cursor, 100)
    assert [(c.op, c.value.hex) for c in removed] == [("remove", value)]
    assert two.follower.sync() == 1
    assert not two.matcher.search(at_two["d"], query, disputed).any
    assert two.matcher.match(at_two["d"], query, disputed).matches == []
    assert two.follower.cursor == one.store.last_change()
