"""Contribute and match by hash over real HTTP, against a real SQLite file."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import RunningServer

ORIGINAL = "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"


def flipped(hex_value: str, bits: list[int]) -> str:
    raw = bytearray(bytes.fromhex(hex_value))
    for b in bits:
        raw[b // 8] ^= 0x80 >> (b % 8)
    return raw.hex()


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture(scope="module")
def keys(server: RunningServer) -> dict[str, str]:
    return {
        "alice": server.new_key("alice", "contributor,matcher"),
        "bob": server.new_key("bob", "contributor,matcher"),
        "matcher": server.new_key("platform-m", "matcher"),
        "auditor": server.new_key("regulator", "auditor"),
    }


def test_contribute_by_hash_is_idempotent_and_matchable_at_once(
    server: RunningServer, keys: dict[str, str]
) -> None:
    alice = server.client(keys["alice"])
    item = {"type": "pdq", "value": ORIGINAL.upper(), "labels": ["terrorism"], "source": "ops"}
    first = alice.post("/v1/hashes", json={"items": [item]})
    assert first.status_code == 200, first.text
    [created] = first.json()["items"]
    assert created["created"] is True
    again = alice.post("/v1/hashes", json={"items": [item]}).json()["items"][0]
    assert again == {"media_id": created["media_id"], "created": False}

    matcher = server.client(keys["matcher"])
    near = flipped(ORIGINAL, list(range(0, 31 * 8, 8)))  # exactly 31 bits away
    far = flipped(ORIGINAL, list(range(0, 32 * 8, 8)))  # exactly 32 bits away
    body = {"signals": [{"type": "pdq", "value": near}, {"type": "pdq", "value": far}]}
    matches = matcher.post("/v1/match", json=body).json()["matches"]
    assert [(m["query_index"], m["distance"]) for m in matches] == [(0, 31)]
    m = matches[0]
    assert m["media_id"] == created["media_id"]
    assert m["labels"] == ["terrorism"] and m["contributor"] == "alice"
    assert m["status"] == "active" and m["signal_type"] == "pdq" and m["value"] == ORIGINAL

    # A stricter threshold per request, as a query parameter.
    strict = matcher.post("/v1/match?max_distance=30", json=body).json()["matches"]
    assert strict == []
    # A label filter that the media does not carry.
    assert matcher.post("/v1/match?labels=csam", json=body).json()["matches"] == []


def test_exact_types_match_only_exactly(server: RunningServer, keys: dict[str, str]) -> None:
    alice = server.client(keys["alice"])
    md5 = "d41d8cd98f00b204e9800998ecf8427e"
    alice.post("/v1/hashes", json={"items": [{"type": "md5", "value": md5, "labels": ["csam"]}]})
    matcher = server.client(keys["matcher"])
    hit = matcher.post("/v1/match", json={"signals": [{"type": "md5", "value": md5}]}).json()
    assert [m["distance"] for m in hit["matches"]] == [0]
    miss = matcher.post(
        "/v1/match", json={"signals": [{"type": "md5", "value": md5[:-1] + "f"}]}
    ).json()
    assert miss["matches"] == []


def test_batch_of_1000_queries(server: RunningServer, keys: dict[str, str]) -> None:
    rng = np.random.default_rng(7)
    stored = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in range(200)]
    bob = server.client(keys["bob"])
    items = [{"type": "pdq", "value": v, "labels": ["other-illegal"]} for v in stored]
    outcome = bob.post("/v1/hashes", json={"items": items}).json()["items"]
    assert len(outcome) == 200 and all(o["created"] for o in outcome)
    ids_by_value = {v: o["media_id"] for v, o in zip(stored, outcome, strict=True)}

    queries = []
    for i in range(1000):
        if i % 5 == 0:  # every fifth query is a near-duplicate of a stored hash
            target = stored[(i // 5) % 200]
            queries.append({"id": f"q{i}", "type": "pdq", "value": flipped(target, [3, 77, 200]),
                            "_expect": ids_by_value[target]})
        else:
            queries.append({"id": f"q{i}", "type": "pdq",
                            "value": rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex()})
    expect = {q["id"]: q.pop("_expect", None) for q in queries}
    response = server.client(keys["matcher"]).post("/v1/match/batch", json={"queries": queries})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == [q["id"] for q in queries]
    for r in results:
        want = expect[r["id"]]
        got = [(m["media_id"], m["distance"]) for m in r["matches"]]
        assert got == ([] if want is None else [(want, 3)])


def test_withdrawn_media_is_never_matched_again(
    server: RunningServer, keys: dict[str, str]
) -> None:
    value = flipped(ORIGINAL, list(range(100, 140)))
    alice = server.client(keys["alice"])
    media_id = alice.post(
        "/v1/hashes", json={"items": [{"type": "pdq", "value": value, "labels": ["terrorism"]}]}
    ).json()["items"][0]["media_id"]
    matcher = server.client(keys["matcher"])
    query = {"signals": [{"type": "pdq", "value": value}]}
    assert [m["media_id"] for m in matcher.post("/v1/match", json=query).json()["matches"]] == [
        media_id
    ]
    # Another member may not withdraw it: a member that never met it does not even
    # learn that it exists; one that matched it is refused.
    bob = server.client(keys["bob"])
    assert_error(bob.delete(f"/v1/media/{media_id}"), 404, "not_found")
    assert_error(matcher.delete(f"/v1/media/{media_id}"), 403, "forbidden")
    gone = alice.delete(f"/v1/media/{media_id}")
    assert gone.status_code == 200 and gone.json()["status"] == "deleted"
    assert matcher.post("/v1/match", json=query).json()["matches"] == []
    batch = {"queries": [{"id": 1, "type": "pdq", "value": value}]}
    assert matcher.post("/v1/match/batch", json=batch).json()["results"][0]["matches"] == []
    # Kept for the audit trail.
    record = alice.get(f"/v1/media/{media_id}").json()
    assert record["status"] == "deleted" and record["signals"][0]["value"] == value
    # Contributing it again afterwards is a new media, matchable again.
    again = alice.post(
        "/v1/hashes", json={"items": [{"type": "pdq", "value": value, "labels": ["terrorism"]}]}
    ).json()["items"][0]
    assert again["created"] and again["media_id"] != media_id


def test_auth_and_roles(server: RunningServer, keys: dict[str, str]) -> None:
    body = {"signals": [{"type": "pdq", "value": ORIGINAL}]}
    assert_error(server.client().post("/v1/match", json=body), 401, "unauthorized")
    assert_error(server.client("hdb_nope_nope").post("/v1/match", json=body), 401, "unauthorized")
    item = {"items": [{"type": "pdq", "value": ORIGINAL, "labels": ["other-illegal"]}]}
    assert_error(server.client(keys["matcher"]).post("/v1/hashes", json=item), 403, "forbidden")
    assert_error(server.client(keys["auditor"]).post("/v1/match", json=body), 403, "forbidden")
    assert_error(
        server.client(keys["alice"]).post("/v1/members", json={"name": "evil"}), 403, "forbidden"
    )
    # Health needs no key.
    assert server.client().get("/healthz").json() == {"status": "ok"}
    assert server.client().get("/readyz").status_code == 200


def test_keys_are_created_shown_once_and_revocable(server: RunningServer) -> None:
    admin = server.client(server.admin_key)
    assert admin.post("/v1/members", json={"name": "carol"}).status_code == 201
    assert_error(admin.post("/v1/members", json={"name": "carol"}), 409, "conflict")
    made = admin.post("/v1/members/carol/keys", json={"roles": ["matcher"]}).json()
    assert made["key"].startswith("hdb_") and made["roles"] == ["matcher"]
    body = {"signals": [{"type": "pdq", "value": ORIGINAL}]}
    assert server.client(made["key"]).post("/v1/match", json=body).status_code == 200
    assert admin.delete(f"/v1/keys/{made['key_id']}").status_code == 200
    assert_error(server.client(made["key"]).post("/v1/match", json=body), 401, "unauthorized")
    # Only a hash of the key is stored.
    raw = server.service.store._db.execute("SELECT secret_hash FROM api_key").fetchall()
    assert all(made["key"].encode() not in bytes(r[0]) for r in raw)


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "code"),
    [
        ("/v1/match", {"json": {"signals": [{"type": "pdq", "value": "xyz"}]}}, 400,
         "invalid_signal"),
        ("/v1/match", {"json": {"signals": [{"type": "pdq", "value": "0" * 63}]}}, 400,
         "invalid_signal"),
        ("/v1/match", {"json": {"signals": [{"type": "pdq", "value": "g" * 64}]}}, 400,
         "invalid_signal"),
        ("/v1/match", {"json": {"signals": [{"type": "tmk", "value": "00"}]}}, 400,
         "unknown_signal_type"),
        ("/v1/match", {"json": {"signals": []}}, 400, "invalid_request"),
        ("/v1/match", {"json": {"signals": "pdq"}}, 400, "invalid_request"),
        ("/v1/match", {"content": b"{not json", "headers": {"content-type": "application/json"}},
         400, "invalid_json"),
        ("/v1/match/batch", {"content": b"[1,2", "headers": {"content-type": "application/json"}},
         400, "invalid_json"),
        ("/v1/match/batch", {"json": {"queries": [{"id": 1, "type": "pdq"}]}}, 400,
         "invalid_request"),
        ("/v1/match/batch", {"json": {"queries": [{"id": 1, "type": "md5", "value": "0" * 64}]}},
         400, "invalid_signal"),
        ("/v1/match/batch", {"json": {"queries": [{"id": 1, "type": "pdq", "value": 7}]}},
         400, "invalid_signal"),
        ("/v1/match/batch", {"json": {"queries": [{"id": True, "type": "pdq",
                                                   "value": "0" * 64}]}}, 400, "invalid_request"),
        ("/v1/match/batch", {"json": {"queries": [{"id": 1, "type": "pdq", "value": "0" * 64,
                                                   "extra": 1}]}}, 400, "invalid_request"),
        ("/v1/match/batch", {"json": {"queries": {"id": 1}}}, 400, "invalid_request"),
        ("/v1/match/batch", {"json": {"queries": [], "more": 1}}, 400, "invalid_request"),
        ("/v1/match/batch", {"json": {"queries": ["pdq"]}}, 400, "invalid_request"),
        ("/v1/match/batch", {"json": {"queries": []}}, 400, "invalid_request"),
        ("/v1/match/batch", {"json": {"queries": [{"id": 1, "type": "tmk", "value": "00"}]}},
         400, "unknown_signal_type"),
        ("/v1/hashes", {"json": {"items": [{"type": "pdq", "value": "0" * 64, "labels": []}]}},
         400, "invalid_request"),
        ("/v1/hashes", {"json": {"items": [{"type": "pdq", "value": "0" * 64,
                                            "labels": ["BAD LABEL!"]}]}}, 400, "unknown_label"),
        ("/v1/hashes", {"json": {"items": [{"type": "sha1", "value": "0" * 40,
                                            "labels": ["other-illegal"]}]}},
         400, "unknown_signal_type"),
        ("/v1/match?max_distance=-1", {"json": {"signals": [{"type": "pdq",
                                                             "value": "0" * 64}]}}, 400,
         "invalid_request"),
        ("/v1/media/999999", {"method": "GET"}, 404, "not_found"),
        ("/v1/media/abc", {"method": "GET"}, 400, "invalid_request"),
        ("/v1/nothing-here", {"method": "GET"}, 404, "not_found"),
    ],
)
def test_bad_input_gets_a_4xx_in_the_error_shape(
    server: RunningServer, keys: dict[str, str], path: str, kwargs: dict, status: int, code: str
) -> None:
    client = server.client(server.admin_key)
    method = kwargs.pop("method", "POST")
    assert_error(client.request(method, path, **kwargs), status, code)
    assert client.get("/healthz").status_code == 200


def test_too_many_queries_is_refused(server: RunningServer, keys: dict[str, str]) -> None:
    queries = [{"id": i, "type": "pdq", "value": ORIGINAL} for i in range(10_001)]
    response = server.client(keys["matcher"]).post("/v1/match/batch", json={"queries": queries})
    assert_error(response, 400, "invalid_request")


def test_low_quality_hashes_are_not_contributed_or_matched(
    server: RunningServer, keys: dict[str, str]
) -> None:
    value = flipped(ORIGINAL, list(range(200, 256)))
    alice = server.client(keys["alice"])
    items = [{"type": "pdq", "value": value, "labels": ["terrorism"], "quality": 20}]
    [outcome] = alice.post("/v1/hashes", json={"items": items}).json()["items"]
    assert outcome["media_id"] is None and outcome["created"] is False
    assert outcome["error"]["code"] == "low_quality" and "below 50" in outcome["error"]["message"]
    body = {"signals": [{"type": "pdq", "value": ORIGINAL, "quality": 10}]}
    result = server.client(keys["matcher"]).post("/v1/match", json=body).json()
    assert result["matches"] == []
    assert result["skipped"][0]["type"] == "pdq" and "below 50" in result["skipped"][0]["reason"]


def test_events_are_isolated_per_member(server: RunningServer, keys: dict[str, str]) -> None:
    mine = server.client(keys["matcher"]).get("/v1/events?limit=1000").json()["events"]
    assert mine and {e["kind"] for e in mine} <= {"match", "key_created", "member_created"}
    assert all(e["member"] == "platform-m" for e in mine if e["kind"] == "match")
    everything = server.client(keys["auditor"]).get("/v1/events?limit=1000").json()["events"]
    assert {"alice", "bob", "platform-m"} <= {e["member"] for e in everything}


def test_change_log_is_for_operators(server: RunningServer, keys: dict[str, str]) -> None:
    assert_error(server.client(keys["alice"]).get("/v1/changes"), 403, "forbidden")
    page = server.client(server.admin_key).get("/v1/changes?limit=5").json()
    assert len(page["changes"]) == 5 and page["next"] == page["changes"][-1]["seq"]
    assert {c["op"] for c in page["changes"]} <= {"add", "remove"}
    rest = server.client(server.admin_key).get(f"/v1/changes?after={page['next']}").json()
    assert rest["changes"][0]["seq"] == page["next"] + 1


def test_metrics_for_admins(server: RunningServer, keys: dict[str, str]) -> None:
    assert_error(server.client().get("/metrics"), 401, "unauthorized")
    assert_error(server.client(keys["matcher"]).get("/metrics"), 403, "forbidden")
    text = server.client(server.admin_key).get("/metrics").text
    assert 'hashdb_http_requests_total{method="POST",route="/v1/match",status="200"}' in text
    lookups = re.search(r'hashdb_lookups_total\{type="pdq"\} (\d+)', text)
    assert lookups and int(lookups.group(1)) >= 1000  # the batch test's queries
    assert re.search(r'hashdb_index_signals\{type="pdq"\} [1-9]', text)


def test_a_batch_larger_than_one_search_chunk_keeps_every_match(
    server: RunningServer, keys: dict[str, str]
) -> None:
    rng = np.random.default_rng(99)
    stored = rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex()
    bob = server.client(keys["bob"])
    [made] = bob.post("/v1/hashes", json={"items": [{"type": "pdq", "value": stored,
                                                     "labels": ["csam"]}]}).json()["items"]
    planted = {0, 4095, 4096, 8191, 8192, 8999}  # both sides of every chunk boundary
    queries = [
        {"id": i, "type": "pdq",
         "value": flipped(stored, [i % 256]) if i in planted
         else rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex()}
        for i in range(9000)
    ]
    results = server.client(keys["matcher"]).post(
        "/v1/match/batch", json={"queries": queries}).json()["results"]
    hit = {r["id"]: [(m["media_id"], m["distance"]) for m in r["matches"]]
           for r in results if r["matches"]}
    assert hit == {i: [(made["media_id"], 1)] for i in planted}
