"""Consortium safeguards over real HTTP, on SQLite and PostgreSQL: members and keys,
the label taxonomy, review before a contribution goes live, feedback and disputes.
(Isolation and replicas: test_safeguards_isolation.py; the audit trail and the
transparency report: test_safeguards_audit.py.)"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RunningServer
from hashdb.settings import Settings
from safeguards_support import (
    BACKENDS,
    add_key,
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

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[RunningServer]:
    yield from backend_server(request.param, tmp_path_factory)


# 1. members and keys -------------------------------------------------------------------
def test_members_and_keys(srv: RunningServer) -> None:
    root = admin(srv)
    a = member(srv, "keys")
    second, second_key, second_id = add_key(srv, a.name, ("matcher",))
    assert a.key_id != second_id

    listed = root.get("/v1/members")
    assert listed.status_code == 200, listed.text
    [row] = [m for m in listed.json()["members"] if m["name"] == a.name]
    assert row["trusted_flagger"] is False and row["active"] is True
    shown = root.get(f"/v1/members/{a.name}")
    assert shown.status_code == 200, shown.text
    keys = {k["key_id"]: k for k in shown.json()["keys"]}
    assert set(keys) == {a.key_id, second_id}
    assert sorted(keys[a.key_id]["roles"]) == ["contributor", "matcher"]
    assert keys[second_id]["roles"] == ["matcher"]
    for text in (shown.text, listed.text, root.get(f"/v1/members/{a.name}/keys").text):
        assert a.key not in text and second_key not in text
        assert '"key":' not in text and "secret" not in text

    value = pdq()
    assert a.http.post("/v1/match", json={"signals": [{"type": "pdq", "value": value}]}
                       ).status_code == 200
    # Revoking one key stops that key at once; the member's other key still works.
    gone = root.delete(f"/v1/keys/{a.key_id}")
    assert gone.status_code == 200, gone.text
    assert gone.json()["revoked_at"]
    assert a.http.get("/v1/labels").status_code == 401
    assert second.get("/v1/labels").status_code == 200
    assert root.delete(f"/v1/keys/{a.key_id}").status_code == 404  # already revoked
    third, _, _ = add_key(srv, a.name, ("contributor", "matcher"))

    # Deactivating the member stops all its keys at once; reactivating restores them.
    off = root.patch(f"/v1/members/{a.name}", json={"active": False, "reason": "left"})
    assert off.status_code == 200 and off.json()["active"] is False, off.text
    assert second.get("/v1/labels").status_code == 401
    assert third.get("/v1/labels").status_code == 401
    on = root.patch(f"/v1/members/{a.name}", json={"active": True})
    assert on.status_code == 200 and on.json()["active"] is True, on.text
    assert second.get("/v1/labels").status_code == 200
    assert third.get("/v1/labels").status_code == 200
    assert a.http.get("/v1/labels").status_code == 401  # revoked stays revoked

    assert root.patch("/v1/members/nobody-here", json={"active": False}).status_code == 404
    assert root.get("/v1/members/nobody-here").status_code == 404
    assert root.post("/v1/members", json={"name": a.name}).status_code == 409

    # An admin cannot lock itself out.
    me = root.patch("/v1/members/admin", json={"active": False})
    assert me.status_code == 409, me.text
    assert root.get("/v1/members").status_code == 200

    # No member or key route is open to a non-admin key.
    for client in (third, member(srv, "auditor", roles=("auditor",)).http):
        for method, path, body in [
            ("GET", "/v1/members", None),
            ("POST", "/v1/members", {"name": "intruder"}),
            ("GET", f"/v1/members/{a.name}", None),
            ("PATCH", f"/v1/members/{a.name}", {"trusted_flagger": True}),
            ("GET", f"/v1/members/{a.name}/keys", None),
            ("POST", f"/v1/members/{a.name}/keys", {"roles": ["admin"]}),
            ("DELETE", f"/v1/keys/{second_id}", None),
        ]:
            r = client.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
    assert second.get("/v1/labels").status_code == 200  # the refused revoke did nothing
    assert "intruder" not in root.get("/v1/members").text

    # trusted_flagger, toggled by PATCH, decides whether a contribution waits for review.
    before = contribute(third, pdq(), ["other-illegal"])
    assert status_of(srv, before) == "pending"
    up = root.patch(f"/v1/members/{a.name}", json={"trusted_flagger": True})
    assert up.status_code == 200 and up.json()["trusted_flagger"] is True, up.text
    value = pdq()
    live = contribute(third, value, ["other-illegal"])
    assert status_of(srv, live) == "active"
    assert matched_ids(second, value) == [live]
    down = root.patch(f"/v1/members/{a.name}", json={"trusted_flagger": False})
    assert down.status_code == 200 and down.json()["trusted_flagger"] is False
    assert status_of(srv, contribute(third, pdq(), ["other-illegal"])) == "pending"


def test_cli_keys_create_offline(tmp_path: Path) -> None:
    # SQLite only: the rule does not depend on the store.
    data_dir = tmp_path / "fresh"
    made = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hashdb"), "keys", "create", "--member", "x",
         "--roles", "matcher", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("hdb_") and "\n" not in key
    with serve(Settings(data_dir=data_dir, index_poll_seconds=0.2)) as other:
        assert other.admin_key == ""  # the store had a key: no admin key was made
        client = other.client(key)
        r = client.post("/v1/match", json={"signals": [{"type": "pdq", "value": pdq()}]})
        assert r.status_code == 200, r.text
        assert client.get("/v1/members").status_code == 403  # matcher only
        assert other.client(key + "x").get("/v1/labels").status_code == 401


# 2. labels ------------------------------------------------------------------------------
def test_labels(srv: RunningServer) -> None:
    tf = member(srv, "labeller", trusted=True)
    listed = tf.http.get("/v1/labels")
    assert listed.status_code == 200, listed.text
    labels = {x["id"]: x for x in listed.json()["labels"]}
    assert set(labels) == {
        "terrorism", "terrorism/imminent-threat", "terrorism/graphic-violence",
        "terrorism/glorification", "terrorism/recruitment-instruction", "child-sexual-abuse",
        "illegal-hate-speech", "wildlife-trafficking", "counterfeit-goods",
        "dangerous-products", "other-illegal",
    }
    assert {k for k, v in labels.items() if v["parent"] == "terrorism"} == {
        "terrorism/imminent-threat", "terrorism/graphic-violence", "terrorism/glorification",
        "terrorism/recruitment-instruction"}
    assert labels["child-sexual-abuse"]["aliases"] == ["csam"]

    bad = tf.http.post("/v1/hashes", json={"items": [
        {"type": "pdq", "value": pdq(), "labels": ["terrorism", "kittens"]}]})
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["code"] == "unknown_label"
    assert set(bad.json()["error"]["details"]["valid"]) == set(labels)

    alias_value = pdq()
    alias = contribute(tf, alias_value, ["csam"])
    assert tf.http.get(f"/v1/media/{alias}").json()["labels"] == ["child-sexual-abuse"]
    assert [m["labels"] for m in match(tf, alias_value)] == [["child-sexual-abuse"]]

    value = pdq()
    glorifying = contribute(tf, value, ["terrorism/glorification"])
    [hit] = match(tf, value)
    assert (hit["media_id"], hit["labels"]) == (glorifying, ["terrorism/glorification"])
    assert matched_ids(tf, value, labels="terrorism") == [glorifying]
    assert matched_ids(tf, value, labels="terrorism/glorification") == [glorifying]
    assert matched_ids(tf, value, labels="counterfeit-goods") == []
    assert matched_ids(tf, value, labels="counterfeit-goods,terrorism") == [glorifying]
    assert matched_ids(tf, alias_value, labels="csam") == [alias]
    nonsense = tf.http.post("/v1/match", params={"labels": "nonsense"},
                            json={"signals": [{"type": "pdq", "value": value}]})
    assert nonsense.status_code == 400, nonsense.text
    assert nonsense.json()["error"]["code"] == "unknown_label"


def test_custom_taxonomy_file(tmp_path: Path) -> None:
    # SQLite only: the rule does not depend on the store.
    path = tmp_path / "taxonomy.json"
    path.write_text(json.dumps({"labels": [
        {"id": "fraud", "title": "Fraud", "children": [{"id": "fraud/phishing"}]},
        {"id": "spam", "aliases": ["junk"]},
    ]}))
    with serve(Settings(data_dir=tmp_path / "data", index_poll_seconds=0.2,
                        taxonomy_file=path)) as other:
        root = other.client(other.admin_key)
        assert [x["id"] for x in root.get("/v1/labels").json()["labels"]] == [
            "fraud", "fraud/phishing", "spam"]
        value = pdq()
        media_id = contribute(root, value, ["fraud/phishing", "junk"])
        assert root.get(f"/v1/media/{media_id}").json()["labels"] == ["fraud/phishing", "spam"]
        assert matched_ids(root, value, labels="fraud") == [media_id]
        refused = root.post("/v1/hashes", json={"items": [
            {"type": "pdq", "value": pdq(), "labels": ["terrorism"]}]})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["details"]["valid"] == ["fraud", "fraud/phishing", "spam"]


# 3. review ------------------------------------------------------------------------------
def test_review(srv: RunningServer) -> None:
    root = admin(srv)
    plain = member(srv, "plain")
    other = member(srv, "other")
    tf = member(srv, "flagger", trusted=True)
    auditor = member(srv, "aud", roles=("auditor",))

    value = pdq()
    pending = contribute(plain, value, ["counterfeit-goods"], note="plain's own note")
    assert status_of(srv, pending) == "pending"
    for who in (plain.http, other.http, tf.http, root):
        assert matched_ids(who, value) == []
        assert matched_ids(who, value, include_disputed=True) == []
    # Outsiders cannot see it, let alone review it.
    assert other.http.get(f"/v1/media/{pending}").status_code == 404
    assert feedback(other, pending, "agree").status_code == 404

    for who in (tf.http, root):
        queue = who.get("/v1/review", params={"after": pending - 1})
        assert queue.status_code == 200, queue.text
        body = queue.json()
        assert body["status"] == "pending" and body["total"] >= 1
        assert body["media"][0]["media_id"] == pending
        assert body["media"][0]["status"] == "pending"
        assert body["media"][0]["contributor"] == plain.name
    assert "plain's own note" not in tf.http.get("/v1/review").text  # the owner's, not tf's
    assert plain.http.get("/v1/review").status_code == 403
    assert auditor.http.get("/v1/review").status_code == 403

    approved = feedback(tf, pending, "agree", reason=None)
    assert approved.status_code == 200, approved.text
    assert approved.json()["effect"] == "approved"
    assert approved.json()["media"]["status"] == "active"
    assert matched_ids(other, value) == [pending]  # the very next request
    assert pending not in [m["media_id"] for m in tf.http.get(
        "/v1/review", params={"after": pending - 1}).json()["media"]]

    value2 = pdq()
    rejected = contribute(plain, value2, ["counterfeit-goods"])
    no_reason = feedback(tf, rejected, "disagree", reason=None)
    assert no_reason.status_code == 400, no_reason.text
    assert status_of(srv, rejected) == "pending"
    done = feedback(tf, rejected, "disagree", reason="not counterfeit")
    assert done.status_code == 200, done.text
    assert (done.json()["effect"], done.json()["media"]["status"]) == ("rejected", "disabled")
    assert status_of(srv, rejected) == "disabled"
    assert matched_ids(root, value2, include_disputed=True) == []

    own = pdq()
    live = contribute(tf, own, ["counterfeit-goods"])
    assert status_of(srv, live) == "active"
    assert matched_ids(other, own) == [live]

    # An admin's agreement approves too.
    value4 = pdq()
    fourth = contribute(plain, value4, ["dangerous-products"])
    by_admin = root.post(f"/v1/media/{fourth}/feedback", json={"verdict": "agree"})
    assert by_admin.status_code == 200 and by_admin.json()["effect"] == "approved"
    assert matched_ids(other, value4) == [fourth]

    value3 = pdq()
    third = contribute(plain, value3, ["dangerous-products"])
    back = resolve(root, third, "reinstate", reason="reviewed by the secretariat")
    assert back.status_code == 200, back.text
    assert back.json()["status"] == "active"
    assert matched_ids(other, value3) == [third]


def test_review_policy_live(tmp_path: Path) -> None:
    # SQLite only: the rule does not depend on the store.
    with serve(Settings(data_dir=tmp_path, index_poll_seconds=0.2,
                        review_policy="live")) as other:
        plain = member(other, "plain")
        value = pdq()
        media_id = contribute(plain, value, ["other-illegal"])
        assert status_of(other, media_id) == "active"
        assert matched_ids(member(other, "m").http, value) == [media_id]
        [event] = events(other.client(other.admin_key), "/v1/audit",
                         kind="media_contributed", media_id=media_id)
        assert event["details"]["status"] == "active"
        assert event["details"]["contributor_kind"] == "member"


# 4. feedback and disputes ---------------------------------------------------------------
def test_feedback_disputes_and_resolution(srv: RunningServer) -> None:
    root = admin(srv)
    owner = member(srv, "owner", trusted=True)
    b, c, d = (member(srv, n) for n in ("b", "c", "d"))
    bystander = member(srv, "bystander")

    value = pdq()
    media_id = contribute(owner, value, ["illegal-hate-speech"], note="n", source="s")
    for who in (b, c, d, bystander):
        assert matched_ids(who, value) == [media_id]  # now they know it

    assert feedback(owner, media_id, "agree").status_code == 403  # not on its own media
    unknown = feedback(b, media_id, "disagree", labels=["kittens"])
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_label"
    assert feedback(b, media_id, "disagree", reason=None).status_code == 400

    first = feedback(b, media_id, "disagree", reason="satire", labels=["other-illegal"])
    assert first.status_code == 200, first.text
    assert first.json()["effect"] == "recorded"
    assert first.json()["tally"] == {"agree": 0, "disagree": 1}
    assert status_of(srv, media_id) == "active"
    again = feedback(b, media_id, "disagree", reason="still satire")  # counts once
    assert (again.json()["effect"], again.json()["tally"]) == (
        "recorded", {"agree": 0, "disagree": 1})
    assert matched_ids(d, value) == [media_id]

    second = feedback(c, media_id, "disagree", reason="lawful speech")
    assert second.status_code == 200, second.text
    assert second.json()["effect"] == "disputed"
    assert second.json()["media"]["status"] == "disputed"
    assert status_of(srv, media_id) == "disputed"
    assert matched_ids(d, value) == []
    [flagged] = match(d, value, include_disputed=True)
    assert (flagged["media_id"], flagged["status"]) == (media_id, "disputed")

    listed = owner.http.get(f"/v1/media/{media_id}/feedback").json()["feedback"]
    assert {(f["member"], f["verdict"]) for f in listed} == {
        (b.name, "disagree"), (c.name, "disagree")}
    assert ["other-illegal"] in [f["labels"] for f in listed]

    # Resolution: admin only, with a reason.
    assert resolve(b.http, media_id, "reinstate").status_code == 403
    assert resolve(root, media_id, "reinstate", reason=None).status_code == 400
    back = resolve(root, media_id, "reinstate", reason="lawful in context",
                   labels=["other-illegal"])
    assert back.status_code == 200, back.text
    assert (back.json()["status"], back.json()["labels"]) == ("active", ["other-illegal"])
    [hit] = match(d, value)
    assert (hit["media_id"], hit["labels"], hit["status"]) == (
        media_id, ["other-illegal"], "active")
    # The feedback was settled: one new disagreement does not dispute it again.
    late = feedback(d, media_id, "disagree", reason="I disagree too")
    assert (late.json()["effect"], late.json()["tally"]) == (
        "recorded", {"agree": 0, "disagree": 1})
    assert status_of(srv, media_id) == "active"

    off = resolve(root, media_id, "disable", reason="confirmed unlawful")
    assert off.status_code == 200 and off.json()["status"] == "disabled", off.text
    assert matched_ids(d, value) == []
    assert matched_ids(d, value, include_disputed=True) == []

    for who in (owner, b, c):
        seen = {e["kind"] for e in events(who.http, media_id=media_id)}
        assert {"media_disputed", "media_reinstated", "media_disabled"} <= seen, who.name
    assert "media_disabled" in {e["kind"] for e in events(d.http, media_id=media_id)}
    assert not {"media_disputed", "media_reinstated", "media_disabled"} & {
        e["kind"] for e in events(bystander.http)}

    withdrawn_value = pdq()
    withdrawn = contribute(owner, withdrawn_value, ["illegal-hate-speech"])
    assert owner.http.delete(f"/v1/media/{withdrawn}").status_code == 200
    late_resolution = resolve(root, withdrawn, "reinstate", reason="oops")
    assert late_resolution.status_code == 409, late_resolution.text
    assert status_of(srv, withdrawn) == "deleted"


def test_agreements_outweigh_disagreements(srv: RunningServer) -> None:
    owner = member(srv, "owner", trusted=True)
    voters = [member(srv, f"v{i}") for i in range(5)]
    value = pdq()
    media_id = contribute(owner, value, ["wildlife-trafficking"])
    for v in voters:
        assert matched_ids(v, value) == [media_id]
    for v in voters[:2]:
        r = feedback(v, media_id, "agree")
        assert r.status_code == 200 and r.json()["effect"] == "recorded", r.text
    for v in voters[2:4]:
        r = feedback(v, media_id, "disagree", reason="no")
        assert r.json()["effect"] == "recorded", r.text
    assert r.json()["tally"] == {"agree": 2, "disagree": 2}
    assert status_of(srv, media_id) == "active"
    assert matched_ids(owner, value) == [media_id]
    third = feedback(voters[4], media_id, "disagree", reason="no")
    assert (third.json()["effect"], third.json()["tally"]) == (
        "disputed", {"agree": 2, "disagree": 3})
    assert status_of(srv, media_id) == "disputed"
