"""Hostile requests over real HTTP (issue 9, findings 2-4): big bodies are capped
per route and refused before they are read, the key is checked before any body,
big bodies are parsed off the event loop; ids past 2^63, deep nesting, lone
surrogates and NUL are 4xx; max_distance and matches per query are capped, and
errors echo little. The hostile JSON corpus is tests/test_hostile_json.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import RunningServer, start_server
from hashdb.settings import Settings
from hostile_support import (
    JSON,
    JSON_ROUTES,
    ORIGINAL,
    alive,
    assert_refused,
    chunked,
    flipped,
    raw_exchange,
)

BATCH_CAP, MATCH_CAP, SMALL_CAP = 200_000, 20_000, 64 * 1024


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with small body caps and three matches per query signal."""
    yield from start_server(Settings(
        data_dir=tmp_path_factory.mktemp("hostile"), review_policy="live",
        max_json_bytes=BATCH_CAP, max_match_json_bytes=MATCH_CAP, max_matches_per_signal=3))


# --- finding 2: big bodies ------------------------------------------------------------

@pytest.mark.parametrize(("path", "cap", "content_type"), [
    ("/v1/hashes", BATCH_CAP, "application/json"),
    ("/v1/match/batch", BATCH_CAP, "application/json"),
    ("/v1/match", MATCH_CAP, "application/json"),
    ("/v1/members", SMALL_CAP, "application/json"),
    ("/v1/media/1/feedback", SMALL_CAP, "application/json"),
    ("/v1/match", 64 * 2**20 + 64 * 1024, "multipart/form-data; boundary=b"),
])
def test_each_route_refuses_a_body_over_its_cap_however_it_is_sent(
    tight: RunningServer, path: str, cap: int, content_type: str
) -> None:
    client = tight.client(tight.admin_key)
    over = b"[" + b"0," * (cap // 2) + b"0]"
    headers = {"content-type": content_type}
    if cap < 2**20:  # the media cap is 64 MB: its declared length is enough to show
        error = assert_refused(client.post(path, content=over, headers=headers), 413,
                               "media_too_large")
        assert error["details"]["max_bytes"] == cap
        streamed = client.post(path, content=iter([over[:cap // 2], over[cap // 2:]]),
                               headers=headers)  # no Content-Length: counted as it comes
        assert_refused(streamed, 413, "media_too_large")
        # Chunks past the cap, the body never finished: refused without the rest.
        head = (f"POST {path} HTTP/1.1\nHost: t\nAuthorization: Bearer {tight.admin_key}\n"
                f"Content-Type: {content_type}\nTransfer-Encoding: chunked\n")
        status, body = raw_exchange(tight.url, head, chunked(over[: cap + 20_000]))
        assert (status, body["error"]["code"]) == (413, "media_too_large")
    head = (f"POST {path} HTTP/1.1\nHost: t\nAuthorization: Bearer {tight.admin_key}\n"
            f"Content-Type: {content_type}\nContent-Length: {cap + 1}\n")
    status, body = raw_exchange(tight.url, head, b"[0")  # refused on the declared length
    assert (status, body["error"]["code"]) == (413, "media_too_large")
    alive(tight)


def test_a_47_mb_match_body_is_refused_unread_at_default_settings(server: RunningServer) -> None:
    key = server.new_key("big-bodies", "matcher")
    cap = Settings().max_match_json_bytes
    head = (f"POST /v1/match HTTP/1.1\nHost: t\nAuthorization: Bearer {key}\n"
            f"Content-Type: application/json\nContent-Length: {47 * 2**20}\n")
    status, body = raw_exchange(server.url, head, b'{"signals": [')
    assert (status, body["error"]["details"]["max_bytes"]) == (413, cap)
    alive(server)


@pytest.mark.parametrize(("path", "length", "content_type"), [
    ("/v1/hashes", 150_000, "application/json"),
    ("/v1/match/batch", 150_000, "application/json"),
    ("/v1/match", 15_000, "application/json"),
    ("/v1/members", 60_000, "application/json"),
    ("/v1/media", 1_000_000, "multipart/form-data; boundary=b"),
    ("/v1/hash", 1_000_000, "multipart/form-data; boundary=b"),
    ("/v1/match", 1_000_000, "multipart/form-data; boundary=b"),
])
@pytest.mark.parametrize("key", [None, "not-a-key"])
def test_the_key_is_checked_before_a_byte_of_the_body_is_read(
    tight: RunningServer, path: str, length: int, content_type: str, key: str | None
) -> None:
    """The server answers 401 while most of the body (under the cap) is unsent."""
    auth = f"Authorization: Bearer {key}\n" if key else ""
    head = (f"POST {path} HTTP/1.1\nHost: t\n{auth}Content-Type: {content_type}\n"
            f"Content-Length: {length}\n")
    status, body = raw_exchange(tight.url, head, b'{"items": [' + b"0" * 100)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    # And through httpx: a whole junk body without a key is a 401, not invalid_json.
    junk = b"{" * 1000 + b"\xff"
    assert_refused(tight.client().post(path, content=junk, headers={
        "content-type": content_type}), 401, "unauthorized")


def test_healthz_answers_while_a_10_mb_batch_is_read_and_parsed(server: RunningServer) -> None:
    rng = np.random.default_rng(9)
    vectors = rng.integers(-127, 128, size=(10_000, 512), dtype=np.int8)
    vectors[:, 0] = 1  # never all zeros
    body = json.dumps({"queries": [{"id": i, "type": "sscd", "value": v.tobytes().hex()}
                                   for i, v in enumerate(vectors)]}).encode()
    assert 10 * 2**20 < len(body) < Settings().max_json_bytes
    matcher = server.client(server.new_key("big-batch", "matcher"))
    done = threading.Event()
    answers: dict[str, Any] = {}

    def send() -> None:
        try:
            answers["batch"] = matcher.post("/v1/match/batch", content=body, headers={
                "content-type": "application/json"}, timeout=120)
        finally:
            done.set()

    sender = threading.Thread(target=send)
    sender.start()
    latencies = []
    probe = server.client()
    while not done.is_set():
        start = time.monotonic()
        assert probe.get("/healthz", timeout=2.0).status_code == 200  # never stalls 2 s
        latencies.append(time.monotonic() - start)
        time.sleep(0.005)
    sender.join()
    assert answers["batch"].status_code == 200, answers["batch"].text[:300]
    assert [r["id"] for r in answers["batch"].json()["results"]] == list(range(10_000))
    assert latencies, "the batch finished before /healthz was asked once"


# --- finding 3: no 500s ---------------------------------------------------------------

def _int_params(server: RunningServer) -> list[tuple[str, str, str, str]]:
    """(method, path template, parameter, in) of every integer path or query parameter."""
    spec = server.client().get("/openapi.json").json()
    found = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for p in operation.get("parameters", []):
                schema = p.get("schema", {})
                kinds = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
                if "integer" in kinds:
                    found.append((method.upper(), path, p["name"], p["in"]))
    return found


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**64, 10**40])
def test_integers_past_64_bits_in_any_path_or_query_are_400(
    tight: RunningServer, value: int
) -> None:
    params = _int_params(tight)
    assert {("GET", "/v1/events", "after"), ("GET", "/v1/changes", "after"),
            ("GET", "/v1/audit", "after"), ("GET", "/v1/media/{media_id}", "media_id"),
            ("DELETE", "/v1/media/{media_id}", "media_id")} <= {p[:3] for p in params}
    client = tight.client(tight.admin_key)
    for method, template, name, where in params:
        path = template.replace("{" + name + "}", str(value)) if where == "path" else template
        path = path.replace("{name}", "nobody").replace("{media_id}", "1")
        query = {name: str(value)} if where == "query" else {}
        assert_refused(client.request(method, path, params=query), 400, "invalid_request")
    alive(tight)


def test_the_largest_64_bit_ids_and_cursors_are_answered(tight: RunningServer) -> None:
    client = tight.client(tight.admin_key)
    top = 2**63 - 1
    for path in ("/v1/events", "/v1/changes", "/v1/audit", "/v1/review"):
        page = client.get(path, params={"after": top})
        assert page.status_code == 200 and page.json()["next"] == top, page.text
    assert_refused(client.get(f"/v1/media/{top}"), 404, "not_found")
    assert_refused(client.delete(f"/v1/media/{top}"), 404, "not_found")
    assert client.get("/v1/events", params={"media_id": top}).json()["events"] == []


@pytest.mark.parametrize(("path", "depth"), [("/v1/match/batch", 100_000),
                                             ("/v1/match", 100_000), ("/v1/hashes", 100_000)])
def test_deeply_nested_json_is_400(server: RunningServer, path: str, depth: int) -> None:
    client = server.client(server.admin_key)
    for body in (b"[" * depth, b'{"queries": ' + b"[" * depth + b"]" * depth + b"}"):
        assert_refused(client.post(path, content=body, headers=JSON), 400, "invalid_json")
    alive(server)


SURROGATES = [("/v1/match/batch", "queries", "type"), ("/v1/match/batch", "queries", "value"),
              ("/v1/match/batch", "queries", "id"), ("/v1/hashes", "items", "type"),
              ("/v1/hashes", "items", "value"), ("/v1/hashes", "items", "note"),
              ("/v1/hashes", "items", "media_key"), ("/v1/match", "signals", "variant")]


@pytest.mark.parametrize(("path", "list_name", "field"), SURROGATES)
@pytest.mark.parametrize("text", ['"\\ud800"', '"a\\udc00b"', '"\\ud800\\ud800"',
                                  '"a\\u0000b"'])
def test_lone_surrogates_and_nul_in_json_strings_are_400(
    tight: RunningServer, path: str, list_name: str, field: str, text: str
) -> None:
    template = dict(next(body for _, p, body in JSON_ROUTES if p == path))
    item = {**template[list_name][0], field: "@"}
    raw = json.dumps({list_name: [item]}).replace('"@"', text).encode()
    client = tight.client(tight.admin_key)
    assert_refused(client.post(path, content=raw, headers=JSON), 400, "invalid_json")
    # The same text as raw UTF-8 bytes (a surrogate's encoding is invalid UTF-8).
    if "ud8" in text:
        assert_refused(client.post(path, content=raw.replace(b"\\ud800", b"\xed\xa0\x80"),
                                   headers=JSON), 400, "invalid_json")


@pytest.mark.parametrize("charset", ["utf-7", "unicode_escape"])
def test_form_fields_cannot_smuggle_surrogates_or_nul(tight: RunningServer, charset: str,
                                                      shared_data: Path) -> None:
    image = (shared_data / "pdq-reference" / "bridge-mods" / "square-256x256.jpg").read_bytes()
    smuggled = {"utf-7": b"+2AA-", "unicode_escape": b"\\ud800"}[charset]
    client = tight.client(tight.admin_key)
    for note in (smuggled, b"a\x00b"):
        body = (b"--b\r\nContent-Disposition: form-data; name=\"labels\"\r\n\r\nother-illegal"
                b"\r\n--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n" + note +
                b"\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n"
                b"\r\n" + image + b"\r\n--b--\r\n")
        response = client.post("/v1/media", content=body, headers={
            "content-type": f"multipart/form-data; boundary=b; charset={charset}"})
        assert_refused(response, 400, "invalid_request")
    alive(tight)


def test_nul_in_the_url_is_400(tight: RunningServer) -> None:
    client = tight.client(tight.admin_key)
    for path in ("/v1/members/a%00b", "/v1/audit?member=a%00b", "/v1/events?kind=%00",
                 "/v1/reports/transparency?from=2026-01-01%00"):
        assert_refused(client.get(path), 400, "invalid_request")


# --- finding 4: enumeration and amplification -----------------------------------------

def test_max_distance_is_capped_at_64_for_pdq(tight: RunningServer) -> None:
    base = flipped(ORIGINAL, range(40, 100))
    contributor = tight.client(tight.admin_key)
    stored = contributor.post("/v1/hashes", json={"items": [
        {"type": "pdq", "value": base, "labels": ["other-illegal"]}]})
    assert stored.status_code == 200, stored.text
    matcher = tight.client(tight.new_key("wide", "matcher"))

    def distances(value: str, **query: Any) -> list[int]:
        response = matcher.post("/v1/match", params=query,
                                json={"signals": [{"type": "pdq", "value": value}]})
        assert response.status_code == 200, response.text
        return [m["distance"] for m in response.json()["matches"]]

    assert distances(flipped(base, range(64)), max_distance=64) == [64]
    assert distances(flipped(base, range(65)), max_distance=64) == []
    for wide in (65, 128, 256):
        assert_refused(matcher.post("/v1/match", params={"max_distance": wide},
                                    json={"signals": [{"type": "pdq", "value": base}]}), 400)
        assert_refused(matcher.post("/v1/match", json={"max_distance": wide, "signals": [
            {"type": "pdq", "value": base}]}), 400)
        assert_refused(matcher.post("/v1/match/batch", params={"max_distance": wide}, json={
            "queries": [{"id": 1, "type": "pdq", "value": base}]}), 400)
    spec = tight.client().get("/openapi.json").json()
    [declared] = [p for p in spec["paths"]["/v1/match/batch"]["post"]["parameters"]
                  if p["name"] == "max_distance"]
    assert 64 in [s.get("maximum") for s in [declared["schema"],
                                            *declared["schema"].get("anyOf", [])]]


def test_matches_per_query_signal_are_capped_on_every_path(
    tight: RunningServer, shared_data: Path
) -> None:
    """Three per query signal (this server's setting), the nearest: by hash, in a
    batch, and for an uploaded image."""
    image = (shared_data / "pdq-reference" / "bridge-mods" / "aaa-orig.jpg").read_bytes()
    client = tight.client(tight.admin_key)
    hashed = client.post("/v1/hash", files={"file": image}, params={"types": "pdq"}).json()
    [pdq] = [s["value"] for s in hashed["signals"] if s["type"] == "pdq" and "variant" not in s]
    for base in (pdq, flipped(ORIGINAL, range(100, 140))):
        items = [{"type": "pdq", "value": flipped(base, range(k)), "labels": ["other-illegal"]}
                 for k in range(6)]
        assert client.post("/v1/hashes", json={"items": items}).status_code == 200
        one = client.post("/v1/match", json={"signals": [{"type": "pdq", "value": base}]})
        assert [m["distance"] for m in one.json()["matches"]] == [0, 1, 2]
        batch = client.post("/v1/match/batch", json={"queries": [
            {"id": i, "type": "pdq", "value": base} for i in range(4)]}).json()["results"]
        assert [[m["distance"] for m in r["matches"]] for r in batch] == [[0, 1, 2]] * 4
    uploaded = client.post("/v1/match", files={"file": image}).json()["matches"]
    assert sorted(m["distance"] for m in uploaded if m["signal_type"] == "pdq") == [0, 1, 2]


def test_errors_echo_at_most_a_bounded_part_of_the_request(tight: RunningServer) -> None:
    client = tight.client(tight.admin_key)
    long = "T" * 100_000
    cases = [
        ("/v1/match/batch", {"queries": [{"id": 1, "type": long, "value": "00"}]}),
        ("/v1/match/batch", {"queries": [{"id": 1, "type": "pdq", "value": "0" * 64,
                                          "k" * 50_000: 1}]}),
        ("/v1/hashes", {"items": [{"type": "pdq", "value": long, "labels": ["x"]}]}),
        ("/v1/hashes", {"items": [{"type": "pdq", "value": ORIGINAL, "labels": [long]}]}),
        ("/v1/hashes", {"items": [{"type": "pdq", "value": ORIGINAL, "labels": ["other-illegal"],
                                   "media_key": long}]}),
        ("/v1/hashes", {"items": [{"type": "pdq", "value": ORIGINAL, "labels": "x",
                                   "quality": "bad"}] * 1000}),
        ("/v1/hashes", {"items": [{"type": "pdq", "value": ORIGINAL, "labels": "x",
                                   "u" * 50_000: 1}]}),
    ]
    for path, body in cases:
        error = assert_refused(client.post(path, json=body), 400)
        assert long[:200] not in error["message"]
    assert_refused(client.post("/v1/match", content=b"{}", headers={
        "content-type": "text/" + "z" * 5000}), 400)
    assert_refused(client.get("/v1/members/" + "m" * 5000), 404)
    assert_refused(client.delete("/v1/keys/" + "k" * 5000), 404)
