"""The audit trail and the transparency report over real HTTP, on SQLite and
PostgreSQL: every decision is recorded with its actor, key and reason; the trail
filters and pages, survives a restart, and can be neither edited nor deleted, by
the API or in the store; the report's figures follow from a seeded history."""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import RunningServer
from hashdb.settings import Settings
from safeguards_support import (
    BACKENDS,
    Who,
    add_key,
    admin,
    backend_server,
    contribute,
    events,
    feedback,
    matched_ids,
    member,
    now_iso,
    pdq,
    resolve,
    serve,
)


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[RunningServer]:
    yield from backend_server(request.param, tmp_path_factory)


def tick() -> str:
    """The time now, a few milliseconds clear of any event before or after it."""
    time.sleep(0.005)
    at = now_iso()
    time.sleep(0.005)
    return at


@dataclass
class History:
    tf: Who  # a trusted flagger
    plain: Who  # a member whose contributions wait for review
    m1: Who
    m2: Who
    x1: int  # terrorism/glorification, matched twice, disputed, reinstated
    x2: int  # counterfeit-goods, matched once, withdrawn
    x3: int  # illegal-hate-speech, matched twice, disputed and left so
    y1: int  # counterfeit-goods, pending, approved
    y2: int  # wildlife-trafficking, pending, rejected
    y3: int  # dangerous-products, left pending
    start: str
    end: str


def seed(srv: RunningServer) -> History:
    """A small history of everything a consortium does, between `start` and `end`."""
    root = admin(srv)
    start = tick()
    tf = member(srv, "tf", trusted=True)
    plain = member(srv, "plain")
    m1, m2 = member(srv, "m1"), member(srv, "m2")
    values = {k: pdq() for k in ("x1", "x2", "x3")}
    x1 = contribute(tf, values["x1"], ["terrorism/glorification"])
    x2 = contribute(tf, values["x2"], ["counterfeit-goods"])
    x3 = contribute(tf, values["x3"], ["illegal-hate-speech"])
    y1 = contribute(plain, pdq(), ["counterfeit-goods"])
    y2 = contribute(plain, pdq(), ["wildlife-trafficking"])
    y3 = contribute(plain, pdq(), ["dangerous-products"])
    assert feedback(tf, y1, "agree", reason=None).json()["effect"] == "approved"
    assert feedback(tf, y2, "disagree", reason="not wildlife").json()["effect"] == "rejected"
    for who, key in ((m1, "x1"), (m2, "x1"), (m1, "x2"), (m1, "x3"), (m2, "x3")):
        assert len(matched_ids(who, values[key])) == 1
    for media_id in (x1, x3):
        assert feedback(m1, media_id, "disagree", reason="lawful").json()["effect"] == "recorded"
        assert feedback(m2, media_id, "disagree", reason="lawful").json()["effect"] == "disputed"
    assert resolve(root, x1, "reinstate", reason="lawful in context").status_code == 200
    assert tf.http.request("DELETE", f"/v1/media/{x2}", json={"reason": "sent in error"}
                           ).status_code == 200
    return History(tf, plain, m1, m2, x1, x2, x3, y1, y2, y3, start, tick())


# 7. the audit trail ---------------------------------------------------------------------
def test_audit_trail_records_every_decision(srv: RunningServer) -> None:
    root = admin(srv)
    [admin_key] = root.get("/v1/members/admin").json()["keys"]
    h = seed(srv)
    spare, _, spare_id = add_key(srv, h.plain.name, ("matcher",))
    assert root.delete(f"/v1/keys/{spare_id}").status_code == 200
    assert root.patch(f"/v1/members/{h.m2.name}",
                      json={"trusted_flagger": True, "reason": "vetted"}).status_code == 200
    withdrawn = root.request("DELETE", f"/v1/media/{h.y3}", json={"reason": "duplicate"})
    assert withdrawn.status_code == 200, withdrawn.text
    everything = events(root, "/v1/audit", **{"from": h.start})

    def one(kind: str, media_id: int | None = None, actor: str | None = None
            ) -> dict[str, Any]:
        found = [e for e in everything if e["kind"] == kind
                 and (media_id is None or e["media_id"] == media_id)
                 and (actor is None or e["member"] == actor)]
        assert len(found) == 1, (kind, media_id, found)
        return found[0]

    def who(e: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
        return e["member"], e["owner"], e["key_id"]

    tf, plain = h.tf, h.plain
    e = one("media_contributed", h.y1)
    assert who(e) == (plain.name, plain.name, plain.key_id)
    assert e["details"] == {"labels": ["counterfeit-goods"], "status": "pending",
                            "contributor_kind": "member", "media_type": "hashes"}
    e = one("media_contributed", h.x1)
    assert (e["details"]["status"], e["details"]["contributor_kind"]) == (
        "active", "trusted_flagger")
    e = one("media_approved", h.y1)
    assert who(e) == (tf.name, plain.name, tf.key_id)
    assert (e["details"]["from"], e["details"]["to"]) == ("pending", "active")
    e = one("media_rejected", h.y2)
    assert who(e) == (tf.name, plain.name, tf.key_id)
    assert e["details"]["reason"] == "not wildlife" and e["details"]["to"] == "disabled"
    e = one("feedback", h.y2)
    assert who(e) == (tf.name, plain.name, tf.key_id)
    assert e["details"] == {"verdict": "disagree", "reason": "not wildlife"}
    e = one("match", h.x1, h.m1.name)
    assert who(e) == (h.m1.name, tf.name, h.m1.key_id)
    assert e["details"]["labels"] == ["terrorism/glorification"]
    e = one("media_disputed", h.x1)
    assert who(e) == (h.m2.name, tf.name, h.m2.key_id)
    assert {k: e["details"][k] for k in ("from", "to", "agree", "disagree")} == {
        "from": "active", "to": "disputed", "agree": 0, "disagree": 2}
    e = one("media_reinstated", h.x1)
    assert who(e) == ("admin", tf.name, admin_key["key_id"])
    assert e["details"]["reason"] == "lawful in context"
    assert e["details"]["from"] == "disputed"
    e = one("media_withdrawn", h.x2)
    assert who(e) == (tf.name, tf.name, tf.key_id)
    assert e["details"]["reason"] == "sent in error"
    e = one("media_withdrawn", h.y3)
    assert who(e) == ("admin", plain.name, admin_key["key_id"])
    assert (e["details"]["from"], e["details"]["reason"]) == ("pending", "duplicate")
    made = [x for x in everything if x["kind"] == "member_created"]
    assert {(x["member"], x["owner"]) for x in made} >= {
        ("admin", w.name) for w in (tf, plain, h.m1, h.m2)}
    e = [x for x in everything if x["kind"] == "key_created" and x["owner"] == plain.name]
    assert {x["details"]["key_id"] for x in e} == {plain.key_id, spare_id}
    e = one("key_revoked")
    assert (e["owner"], e["details"]["key_id"], e["key_id"]) == (
        plain.name, spare_id, admin_key["key_id"])
    e = one("member_updated")
    assert (e["member"], e["owner"]) == ("admin", h.m2.name)
    assert (e["details"]["trusted_flagger"], e["details"]["reason"]) == (True, "vetted")

    # Filters.
    disputes = events(root, "/v1/audit", kind="media_disputed,media_reinstated",
                      **{"from": h.start})
    assert [(x["kind"], x["media_id"]) for x in disputes] == [
        ("media_disputed", h.x1), ("media_disputed", h.x3), ("media_reinstated", h.x1)]
    assert {x["kind"] for x in events(root, "/v1/audit", media_id=h.x3)} == {
        "media_contributed", "match", "feedback", "media_disputed"}
    by_m1 = events(root, "/v1/audit", member=h.m1.name)
    assert by_m1 and {x["member"] for x in by_m1} == {h.m1.name}
    assert {x["kind"] for x in by_m1} == {"match", "feedback"}
    assert events(root, "/v1/audit", to="2000-01-01") == []
    assert events(root, "/v1/audit", **{"from": h.end, "to": h.end}) == []
    window = events(root, "/v1/audit", **{"from": h.start, "to": h.end})
    assert window and all(h.start <= x["at"] < h.end for x in window)
    assert len(window) < len(everything)  # the key, member and withdrawal came later
    assert root.get("/v1/audit", params={"from": "yesterday"}).status_code == 400

    # Paging: after=next walks the same trail.
    paged: list[dict[str, Any]] = []
    after = 0
    while True:
        page = root.get("/v1/audit", params={"from": h.start, "limit": 7, "after": after})
        assert page.status_code == 200
        paged += page.json()["events"]
        if not page.json()["events"]:
            break
        assert page.json()["next"] == page.json()["events"][-1]["id"]
        after = page.json()["next"]
    assert paged == everything and len(everything) > 7

    auditor = member(srv, "aud", roles=("auditor",))
    assert events(auditor.http, "/v1/audit", **{"from": h.start})[:len(everything)] == everything
    assert spare.get("/v1/audit").status_code == 401  # revoked


def test_nothing_can_edit_or_delete_the_trail(srv: RunningServer) -> None:
    root = admin(srv)
    contribute(root, pdq(), ["other-illegal"])
    before = events(root, "/v1/audit")
    assert before
    spec = root.get("/openapi.json").json()
    log_paths = [p for p in spec["paths"] if p.startswith(("/v1/audit", "/v1/events"))]
    assert set(log_paths) >= {"/v1/audit", "/v1/events"}
    for path in log_paths:
        assert set(spec["paths"][path]) == {"get"}, path
        for method in ("DELETE", "PUT", "PATCH", "POST"):
            r = root.request(method, path, json={})
            assert r.status_code == 405, (method, path, r.status_code)
    for method in ("DELETE", "PUT", "PATCH"):
        r = root.request(method, f"/v1/audit/{before[0]['id']}", json={})
        assert r.status_code in (404, 405), (method, r.status_code)

    first = before[0]["id"]
    url = srv.service.settings.database_url
    if url is None:
        path = srv.data_dir / "hashdb.sqlite3"
        for statement in ("DELETE FROM event",
                          f"UPDATE event SET kind = 'nothing' WHERE id = {first}"):
            db = sqlite3.connect(path)
            try:
                with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                    db.execute(statement)
                    db.commit()
            finally:
                db.close()
    else:
        for statement in ("DELETE FROM event",
                          f"UPDATE event SET kind = 'nothing' WHERE id = {first}",
                          "TRUNCATE event"):
            with psycopg.connect(url) as db, pytest.raises(psycopg.Error, match="append-only"):
                db.execute(statement)
    assert events(root, "/v1/audit")[:len(before)] == before


def test_audit_trail_survives_a_restart(tmp_path: Path) -> None:
    # SQLite only: a restart on the same data folder.
    settings = Settings(data_dir=tmp_path, index_poll_seconds=0.2)
    with serve(settings) as first:
        key = first.admin_key
        m = member(first, "m", trusted=True)
        value = pdq()
        media_id = contribute(m, value, ["terrorism"])
        assert matched_ids(first.client(key), value) == [media_id]
        assert resolve(first.client(key), media_id, "disable", reason="gone").status_code == 200
        before = events(first.client(key), "/v1/audit")
    assert {"media_contributed", "match", "media_disabled", "key_created"} <= {
        e["kind"] for e in before}
    with serve(settings, admin_key=key) as second:
        after = events(second.client(key), "/v1/audit")
        assert after == before
        assert [e["id"] for e in events(second.client(m.key), media_id=media_id)] == [
            e["id"] for e in before if e["media_id"] == media_id and e["kind"] != "match"]


# 8. the transparency report --------------------------------------------------------------
# Written against the report shape in the issue-8 contract (/tmp/issue8/contract.md):
# GET /v1/reports/transparency?from=&to=[&format=csv].
def report(http: Any, start: str, end: str, **params: Any) -> dict[str, Any]:
    r = http.get("/v1/reports/transparency", params={"from": start, "to": end, **params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return dict(r.json())


def test_transparency_report(srv: RunningServer) -> None:
    root = admin(srv)
    now = tick()
    earlier = (datetime.fromisoformat(now) - timedelta(days=1)).isoformat()
    base = report(root, earlier, now)  # what other tests left pending or disputed
    h = seed(srv)
    doc = report(root, h.start, h.end)
    assert doc["scope"] == "all"
    assert (doc["period"]["from"], doc["period"]["to"]) == (h.start, h.end)
    assert doc["period"]["bucket"] == "minute"
    c = doc["contributions"]
    assert c["total"] == 6 and c["entered_review"] == 3
    assert c["by_source"] == {"trusted_flagger": 3, "member": 3}
    assert list(c["by_label"].items()) == [
        ("counterfeit-goods", 2), ("dangerous-products", 1), ("illegal-hate-speech", 1),
        ("terrorism/glorification", 1), ("wildlife-trafficking", 1)]
    r = doc["review"]
    assert (r["approved"], r["rejected"]) == (1, 1)
    assert r["pending_at_end"] == base["review"]["pending_at_end"] + 1  # y3
    assert r["median_seconds_to_review"] is not None and r["median_seconds_to_review"] >= 0
    m = doc["matches"]
    assert m["total"] == 5 and m["media_matched"] == 3
    assert m["by_label"] == {"terrorism/glorification": 2, "illegal-hate-speech": 2,
                             "counterfeit-goods": 1}
    assert list(m["by_member"].items()) == [(h.m1.name, 3), (h.m2.name, 2)]
    assert m["media_later_disputed_or_disabled"] == 2  # x1 and x3
    assert m["share_later_disputed_or_disabled"] == pytest.approx(2 / 3)
    assert doc["candidates"] == {"total": 0}
    d = doc["disputes"]
    assert (d["opened"], d["resolved"], d["outcomes"]) == (
        2, 1, {"reinstated": 1, "disabled": 0})
    assert d["median_seconds_to_resolution"] is not None
    assert d["open_at_end"] == base["disputes"]["open_at_end"] + 1  # x3
    assert doc["feedback"] == {"agree": 1, "disagree": 5}
    assert doc["withdrawals"] == {"total": 1, "by_label": {"counterfeit-goods": 1}}
    for key, total in (("contributions", 6), ("matches", 5), ("disputes_opened", 2),
                       ("withdrawals", 1)):
        assert sum(p[key] for p in doc["series"]) == total, key

    # A member's report: its own figures, and only its own matches.
    mine = report(h.m1.http, h.start, h.end)
    assert mine["scope"] == f"member:{h.m1.name}"
    assert mine["matches"]["total"] == 3
    assert mine["matches"]["by_member"] == {h.m1.name: 3}
    assert mine["contributions"]["total"] == 0
    assert mine["feedback"] == {"agree": 0, "disagree": 2}
    theirs = report(h.tf.http, h.start, h.end)
    assert theirs["scope"] == f"member:{h.tf.name}"
    assert theirs["contributions"]["total"] == 3
    assert theirs["contributions"]["by_source"] == {"trusted_flagger": 3, "member": 0}
    assert theirs["matches"]["total"] == 0  # who matched its media is not its business
    plain = report(h.plain.http, h.start, h.end)
    assert (plain["contributions"]["entered_review"], plain["review"]["pending_at_end"],
            plain["review"]["approved"], plain["review"]["rejected"]) == (3, 1, 1, 1)

    # The same figures as CSV.
    got = root.get("/v1/reports/transparency",
                   params={"from": h.start, "to": h.end, "format": "csv"})
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(got.text)))
    assert rows[0] == ["section", "key", "value"]
    for row in (["scope", "", "all"], ["contributions", "total", "6"],
                ["contributions", "by_label/counterfeit-goods", "2"],
                ["contributions", "by_source/member", "3"],
                ["matches", "by_member/" + h.m1.name, "3"],
                ["disputes", "outcomes/reinstated", "1"], ["withdrawals", "total", "1"]):
        assert row in rows, row
    series = [x for x in rows if x[0].startswith("series/")]
    assert sum(int(v) for _, k, v in series if k == "matches") == 5

    assert root.get("/v1/reports/transparency",
                    params={"from": h.end, "to": h.start}).status_code == 400
    assert srv.client().get("/v1/reports/transparency").status_code == 401
