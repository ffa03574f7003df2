"""Abuse limits over real HTTP: per-key rate limits (429 with Retry-After), the
lockout after wrong keys, and deadlines for clients that send their requests too
slowly (headers and body). The server runs with uvicorn's options from
`api.abuse.server_options`, as `hashdb serve` does, and with small limits so that
each wait is a second or two. The rules themselves are also checked on a clock the
test moves (hashdb/ratelimit.py), where a real wait would be long or flaky."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Iterator
from contextlib import closing

import httpx
import pytest

from api.abuse import MAX_HEADER_BYTES
from conftest import RunningServer, start_server
from hashdb.errors import TooManyRequests
from hashdb.models import Caller, Member, Role
from hashdb.ratelimit import KeyBudgets, RoleLimit, WrongKeys, client_address, client_group
from hashdb.settings import Settings

MATCHER = RoleLimit(per_second=2, burst=3)
LOCKOUT_FAILURES = 3
LOCKOUT_SECONDS = 1.5
HEADER_SECONDS = 1.0
BODY_SECONDS = 1.0
# Bounds on waits, so that a broken deadline fails the test instead of hanging it.
WAIT = 10.0
MATCH = {"signals": [{"type": "pdq", "value": "0" * 64}]}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with small limits; it trusts X-Forwarded-For from loopback, so that a
    test can speak as several client addresses."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("abuse"), index_poll_seconds=0.2,
        rate_limits={Role.MATCHER: MATCHER},
        key_lockout_failures=LOCKOUT_FAILURES, key_lockout_seconds=LOCKOUT_SECONDS,
        trusted_proxies=["127.0.0.1"],
        header_read_seconds=HEADER_SECONDS, body_read_seconds=BODY_SECONDS)
    yield from start_server(settings, production=True)


def _error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    return dict(body["error"])


def _retry_after(response: httpx.Response) -> int:
    header = response.headers.get("retry-after")
    assert header is not None and header.isdigit(), response.headers
    seconds = int(header)
    assert seconds >= 1
    assert response.json()["error"]["details"]["retry_after"] == seconds
    return seconds


def _rejections(srv: RunningServer, reason: str) -> float:
    text = srv.client(srv.admin_key).get("/metrics").text
    for line in text.splitlines():
        if line.startswith(f'hashdb_abuse_rejections_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


# rate limits ---------------------------------------------------------------------------
def test_over_its_burst_a_key_gets_429_then_recovers(srv: RunningServer) -> None:
    fast = srv.client(srv.new_key("busy", "matcher"))
    other = srv.client(srv.new_key("calm", "matcher"))
    before = _rejections(srv, "rate_limit")

    codes = [fast.post("/v1/match", json=MATCH).status_code for _ in range(MATCHER.burst + 2)]
    assert codes[0] == 200
    assert 429 in codes, codes  # refill at 2/s cannot keep up with back-to-back calls
    refused = fast.post("/v1/match", json=MATCH)
    error = _error(refused, 429, "too_many_requests")
    assert error["details"]["reason"] == "rate_limit"
    wait = _retry_after(refused)

    # Only that key: another matcher, the admin and the probes are served meanwhile.
    assert other.post("/v1/match", json=MATCH).status_code == 200
    assert srv.client(srv.admin_key).get("/v1/labels").status_code == 200
    for _ in range(50):
        assert srv.client().get("/healthz").status_code == 200
        assert srv.client().get("/readyz").status_code == 200
    assert _rejections(srv, "rate_limit") >= before + 2

    time.sleep(wait)
    assert fast.post("/v1/match", json=MATCH).status_code == 200


# wrong keys ----------------------------------------------------------------------------
def _as(srv: RunningServer, address: str, key: str | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": address}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def test_wrong_keys_lock_the_client_out_then_expire(srv: RunningServer) -> None:
    good = srv.new_key("locked", "matcher,contributor")
    http = srv.client()
    guesser, neighbour = "203.0.113.7", "203.0.113.8"
    before = _rejections(srv, "key_lockout")

    # Missing keys are not wrong ones (a browser opening /reports has none yet).
    for _ in range(LOCKOUT_FAILURES * 3):
        assert http.get("/v1/labels", headers=_as(srv, guesser)).status_code == 401
    assert http.get("/v1/labels", headers=_as(srv, guesser, good)).status_code == 200

    for i in range(LOCKOUT_FAILURES):
        wrong = http.get("/v1/labels", headers=_as(srv, guesser, f"hdb_guess_{i}"))
        _error(wrong, 401, "unauthorized")
    # Locked out: the right key is refused too, and so is the report login form.
    locked = http.get("/v1/labels", headers=_as(srv, guesser, good))
    assert _error(locked, 429, "too_many_requests")["details"]["reason"] == "key_lockout"
    wait = _retry_after(locked)
    assert wait <= LOCKOUT_SECONDS + 1
    login = http.post("/reports/login", data={"key": good}, headers=_as(srv, guesser),
                      follow_redirects=False)
    assert login.status_code == 429
    assert _rejections(srv, "key_lockout") >= before + 2
    # Another address, and the proxy's own, are not.
    assert http.get("/v1/labels", headers=_as(srv, neighbour, good)).status_code == 200
    assert srv.client(good).get("/v1/labels").status_code == 200
    assert http.get("/healthz", headers=_as(srv, guesser)).status_code == 200

    time.sleep(wait)
    assert http.get("/v1/labels", headers=_as(srv, guesser, good)).status_code == 200


def test_an_ipv6_client_is_locked_out_by_its_64(srv: RunningServer) -> None:
    good = srv.new_key("six", "matcher")
    http = srv.client()
    for i in range(LOCKOUT_FAILURES):
        address = f"2001:db8:1:2::{i + 1:x}"
        assert http.get("/v1/labels", headers=_as(srv, address, "hdb_x")).status_code == 401
    same_64 = http.get("/v1/labels", headers=_as(srv, "2001:db8:1:2::ffff", good))
    assert same_64.status_code == 429
    other_64 = http.get("/v1/labels", headers=_as(srv, "2001:db8:1:3::1", good))
    assert other_64.status_code == 200


def test_x_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    proxies = [ipaddress.ip_network("10.0.0.0/8")]
    # Not a proxy of ours: what it says about its client is ignored.
    assert client_address("198.51.100.1", "203.0.113.9", proxies) == "198.51.100.1"
    assert client_address("198.51.100.1", "203.0.113.9", []) == "198.51.100.1"
    assert client_address("10.0.0.9", None, []) == "10.0.0.9"
    # Through our proxies: the last hop they did not add; a client's own entries on
    # the left are not believed.
    assert client_address("10.0.0.9", "203.0.113.9", proxies) == "203.0.113.9"
    assert client_address("10.0.0.9", "6.6.6.6, 203.0.113.9, 10.1.2.3", proxies) == "203.0.113.9"
    assert client_address("10.0.0.9", "10.1.1.1, 10.2.2.2", proxies) == "10.1.1.1"
    assert client_address("10.0.0.9", "junk", proxies) == "junk"
    assert client_group("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_group("2001:db8::1") == "2001:db8::/64"
    assert client_group(None) == "unknown"


# slow clients --------------------------------------------------------------------------
def _connect(srv: RunningServer) -> socket.socket:
    host, port = srv.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (monotonic)."""
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got, time.monotonic()


# Every route that reads a body, each with the start of a body of its kind.
SLOW_BODIES = {
    "/v1/match": (b"application/json", b'{"signals": ['),
    "/v1/match/batch": (b"application/json", b'{"queries": ['),
    "/v1/hashes": (b"application/json", b'{"items": ['),
    "/v1/hash": (b"multipart/form-data; boundary=xx",
                 b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
                 b"\r\n\xff\xd8"),
    "/v1/media": (b"multipart/form-data; boundary=xx",
                  b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
                  b"\r\n\xff\xd8"),
}


def test_a_slow_body_gets_408_and_others_are_served(srv: RunningServer) -> None:
    key = srv.new_key("slow-body", "matcher,contributor")
    socks = {path: _connect(srv) for path in SLOW_BODIES}
    try:
        started = time.monotonic()
        for path, (content_type, start) in SLOW_BODIES.items():
            socks[path].sendall(
                b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: " + content_type + b"\r\n"
                b"Authorization: Bearer " + key.encode() + b"\r\n"
                b"Content-Length: 5000\r\n\r\n" + start)
        # Meanwhile the server serves others.
        assert srv.client(key).post("/v1/match", json=MATCH).status_code == 200
        answers = {path: _read_until_closed(sock) for path, sock in socks.items()}
    finally:
        for sock in socks.values():
            sock.close()
    for path, (got, closed) in answers.items():
        head, _, payload = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), (path, got[:200])
        assert json.loads(payload)["error"]["code"] == "request_timeout", (path, payload)
        assert b"connection: close" in head.lower(), path
        assert BODY_SECONDS <= closed - started < WAIT, path
    assert _rejections(srv, "slow_body") >= len(SLOW_BODIES)


def test_a_refused_request_may_not_trickle_its_body_for_ever(srv: RunningServer) -> None:
    # Refused before its body is read (no key): the rest has body_read_seconds to
    # arrive, then the connection closes, however it trickles.
    with closing(_connect(srv)) as sock:
        sock.sendall(b"POST /v1/match HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{")
        sock.settimeout(0.3)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 401"), head
        refused = time.monotonic()
        closed = _trickle_until_closed(sock)
    assert BODY_SECONDS * 0.9 <= closed - refused < WAIT


def _trickle_until_closed(sock: socket.socket) -> float:
    """Send a byte every 0.2 s until the server closes the connection; when it did."""
    deadline = time.monotonic() + WAIT
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            sock.sendall(b" ")
            if sock.recv(65536) == b"":
                return time.monotonic()
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic()
    raise AssertionError("the server kept the connection open")


def test_slow_headers_are_cut_off_without_blocking_others(srv: RunningServer) -> None:
    # Twenty clients sending their headers a byte at a time, and one sending nothing.
    trickling = [_connect(srv) for _ in range(20)]
    silent = _connect(srv)
    try:
        started = time.monotonic()
        for sock in trickling:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        # Others are served meanwhile.
        assert srv.client().get("/healthz").status_code == 200
        assert srv.client(srv.admin_key).get("/v1/labels").status_code == 200
        closed = [_trickle_until_closed(sock) for sock in trickling]
        silent.settimeout(WAIT)
        assert silent.recv(1) == b""
        silent_closed = time.monotonic()
    finally:
        for sock in [*trickling, silent]:
            sock.close()
    assert all(HEADER_SECONDS * 0.9 <= t - started < WAIT for t in closed)
    assert HEADER_SECONDS * 0.9 <= silent_closed - started < WAIT
    # A client keeping its connection (keep-alive) is not cut off by it.
    client = srv.client()
    assert client.get("/healthz").status_code == 200
    time.sleep(HEADER_SECONDS * 1.5)
    assert client.get("/healthz").status_code == 200


def test_oversized_headers_are_refused(srv: RunningServer) -> None:
    with closing(_connect(srv)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(MAX_HEADER_BYTES // 1000 + 2):
                sock.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us mid-send: refused
        got, _ = _read_until_closed(sock)
    assert got == b"" or got.startswith(b"HTTP/1.1 400"), got[:200]
    # Headers just under the cap pass.
    assert srv.client().get("/healthz", headers={"X-Pad": "a" * 60_000}).status_code == 200


# the rules, on a clock the test moves ---------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _caller(key_id: str, *roles: Role) -> Caller:
    return Caller(Member(1, "m", False, "2026-01-01"), key_id, frozenset(roles))


def test_a_batch_costs_one_unit_per_query() -> None:
    clock = Clock()
    budgets = KeyBudgets({Role.MATCHER: RoleLimit(per_second=100, burst=1000)}, clock)
    matcher = _caller("k1", Role.MATCHER)
    budgets.admit(matcher)
    budgets.charge(matcher, 9_999)  # a 10,000-query batch: served, then in debt
    with pytest.raises(TooManyRequests) as refused:
        budgets.admit(matcher)
    # 9,000 units of debt plus the next request's one, at 100 a second.
    assert refused.value.details["retry_after"] == 91
    clock.now += 90
    with pytest.raises(TooManyRequests):
        budgets.admit(matcher)
    clock.now += 1
    budgets.admit(matcher)


def test_a_key_gets_its_most_generous_role_and_zero_is_unlimited() -> None:
    clock = Clock()
    budgets = KeyBudgets({Role.MATCHER: RoleLimit(per_second=0, burst=1),
                          Role.CONTRIBUTOR: RoleLimit(per_second=1, burst=2)}, clock)
    both = _caller("both", Role.CONTRIBUTOR, Role.MATCHER)
    contributor = _caller("c", Role.CONTRIBUTOR)
    for _ in range(10_000):
        budgets.admit(both)
    budgets.admit(contributor)
    budgets.admit(contributor)
    with pytest.raises(TooManyRequests) as refused:
        budgets.admit(contributor)
    assert refused.value.details["retry_after"] == 1
    assert len(budgets) == 1  # no bucket is kept for an unlimited key


def test_idle_buckets_and_clients_are_forgotten() -> None:
    clock = Clock()
    budgets = KeyBudgets({Role.MATCHER: RoleLimit(per_second=10, burst=10)}, clock,
                         max_buckets=100)
    for i in range(50):
        budgets.admit(_caller(f"k{i}", Role.MATCHER))
    assert len(budgets) == 50
    clock.now += 1  # refilled: the same as no bucket
    budgets.admit(_caller("late", Role.MATCHER))
    assert len(budgets) == 1
    for i in range(500):  # never more than the cap, even while all are busy
        budgets.admit(_caller(f"busy{i}", Role.MATCHER))
    assert len(budgets) <= 101

    wrong = WrongKeys(failures=3, seconds=60, clock=clock, max_clients=100)
    for i in range(500):
        wrong.failed(f"192.0.2.{i % 250}" if i < 250 else f"198.51.100.{i % 250}")
    assert len(wrong) <= 101
    clock.now += 61
    wrong.failed("203.0.113.1")
    assert len(wrong) == 1


def test_failures_count_within_the_window_only() -> None:
    clock = Clock()
    wrong = WrongKeys(failures=3, seconds=60, clock=clock)
    for _ in range(2):
        wrong.failed("192.0.2.1")
        clock.now += 40  # the first has left the window when the third comes
    wrong.failed("192.0.2.1")
    wrong.check("192.0.2.1")
    wrong.failed("192.0.2.1")
    with pytest.raises(TooManyRequests) as refused:
        wrong.check("192.0.2.1")
    assert refused.value.details["retry_after"] == 60
    wrong.check("192.0.2.2")
    clock.now += 60
    wrong.check("192.0.2.1")


def test_a_batch_is_charged_one_unit_per_query(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A 50-query batch from a key allowed 10/s with bursts of 20 is served, then the
    key waits for the debt (the next request is refused with the wait)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("batch-charge"),
                        index_poll_seconds=0.2,
                        rate_limits={"matcher": {"per_second": 10, "burst": 20}})
    for server in start_server(settings):
        client = server.client(server.new_key("batcher", "matcher"))
        queries = [{"id": i, "type": "pdq", "value": f"{i:064x}"} for i in range(50)]
        assert client.post("/v1/match/batch", json={"queries": queries}).status_code == 200
        refused = client.post("/v1/match", json={"signals": [{"type": "pdq",
                                                              "value": "0" * 64}]})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 2
