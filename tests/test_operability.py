"""Operability: the JSON request log, X-Request-ID, and the follower's lag and the
store's errors in /metrics.

- `hashdb serve` runs in its own process and its stderr is read as JSON lines:
  one line per request with the route's template, the member and key id, the
  status and error code; never a key, a query string or a hash that matched
  nothing. Its refusals (401, 404, 408, 413, 429) carry X-Request-ID too.
- In this process, with the log configured as `hashdb serve` configures it: a
  crash (500) is answered with its id and logged with it, and so is every line
  written while the request was handled.
- The follower's metrics on SQLite and PostgreSQL: a replica following a writer,
  a backlog replayed in batches, and a PostgreSQL server of the test's own
  stopped and started under a `hashdb serve` replica.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from api import create_app
from api.observability import configure_logging
from conftest import ROOT, free_port, start_server, wait_for
from hashdb.errors import StoreUnavailable
from hashdb.importing import HashItem
from hashdb.index.follower import IndexFollower
from hashdb.service import Service
from hashdb.settings import Settings
from hashdb.store.postgres_pool import Connections
from hashdb.store.sqlite import SqliteStore
from pg_private import PrivatePostgres, private_postgres
from postgres_schemas import postgres_schema

WAIT = 60.0
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
HEX32 = re.compile(r"[0-9a-f]{32}")
LINE_FIELDS = {"time", "level", "logger", "message", "request_id", "method", "route", "status",
               "duration_ms", "member", "key_id", "error", "bytes_in", "bytes_out", "client"}


def random_pdq() -> str:
    return secrets.token_bytes(32).hex()


def key_id(key: str) -> str:
    return key.split("_")[1]  # hdb_<id>_<secret>


running = contextmanager(start_server)


def metric(text: str, name: str, labels: str = "") -> float | None:
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


# --- `hashdb serve`, its stderr read as JSON lines ------------------------------------
@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    admin_key: str

    def lines(self) -> list[dict[str, Any]]:
        """Every complete line of stderr, each of which must be a JSON object."""
        text = self.err.read_text()
        complete = text[:text.rfind("\n") + 1]
        parsed = []
        for line in complete.splitlines():
            assert line.strip(), "an empty log line"
            obj = json.loads(line)  # fails the test on a line that is not JSON
            assert isinstance(obj, dict), line
            parsed.append(obj)
        return parsed

    def request_line(self, rid: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((x for x in self.lines() if x.get("request_id") == rid
                         and x["logger"] == "hashdb.request"), None)
        line: dict[str, Any] = wait_for(f"the log line of request {rid}", found)
        return line

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=WAIT)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def serve(folder: Path, env: dict[str, str], *flags: str) -> Iterator[Served]:
    """`hashdb serve` with stdout (what it prints for people) and stderr (its log)
    in files of their own: a file, not a pipe, which would stall the server once full."""
    port = free_port()
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("HASHDB_") and k != "PYTHONWARNINGS"}
    environ.update(env)
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hashdb.cli", "serve", "--data-dir", str(folder / "data"),
             "--port", str(port), *flags], stdout=o, stderr=e, env=environ, cwd=ROOT)
    served = Served(f"http://127.0.0.1:{port}", proc, out, err, "")
    try:
        wait_for("hashdb serve to start",
                 lambda: "is ready on" in out.read_text() or proc.poll() is not None, 120)
        assert proc.poll() is None, err.read_text()[-3000:]
        key = re.search(r"HASHDB_KEY=(hdb_\S+)", out.read_text())
        assert key, out.read_text()
        served.admin_key = key.group(1)
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # The default log format (json) and level; the loopback is a trusted proxy so that
    # a test can speak for another client (X-Forwarded-For); three wrong keys lock a
    # client out; a body has 1 s to arrive; /v1/match takes 4 KB of JSON.
    env = {"HASHDB_TRUSTED_PROXIES": "127.0.0.1", "HASHDB_KEY_LOCKOUT_FAILURES": "3",
           "HASHDB_BODY_READ_SECONDS": "1", "HASHDB_MAX_MATCH_JSON_BYTES": "4096",
           "HASHDB_REVIEW_POLICY": "live", "HASHDB_INDEX_SNAPSHOTS": "false"}
    with serve(tmp_path_factory.mktemp("ops-serve"), env) as served:
        yield served


@pytest.fixture(scope="module")
def member_key(served: Served) -> str:
    """A contributor and matcher key of the member `alice`, made over the API."""
    with served.client(served.admin_key) as admin:
        assert admin.post("/v1/members", json={"name": "alice"}).status_code == 201
        made = admin.post("/v1/members/alice/keys", json={"roles": ["matcher", "contributor"]})
        assert made.status_code == 201, made.text
        key: str = made.json()["key"]
    return key


def test_the_log_is_json_lines_from_startup_on(served: Served) -> None:
    lines = served.lines()
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert ISO_UTC.fullmatch(line["time"]), line
        assert line["level"] in {"debug", "info", "warning", "error", "critical"}
    said = {(x["logger"], x["message"]) for x in lines}
    assert ("hashdb.serve", "hashdb starting") in said
    assert ("hashdb.serve", "hashdb ready") in said
    assert ("uvicorn.error", "Application startup complete.") in said
    # What the server printed for the person who started it stays on stdout.
    assert "is ready on" in served.out.read_text()
    assert "is ready on" not in served.err.read_text()


def test_a_request_line_says_who_asked_what_and_how_it_went(
    served: Served, member_key: str
) -> None:
    body = json.dumps({"signals": [{"type": "pdq", "value": random_pdq()}]}).encode()
    with served.client(member_key) as alice:
        answer = alice.post("/v1/match", content=body, headers={
            "content-type": "application/json", "X-Request-ID": "ops-test-1"})
        assert answer.status_code == 200, answer.text
        missing = alice.get("/v1/media/987654321", headers={"X-Request-ID": "ops-test-2"})
        assert missing.status_code == 404
        wrong_method = alice.get("/v1/match", headers={"X-Request-ID": "ops-test-3"})
        assert wrong_method.status_code == 405
        nowhere = alice.get("/v1/no-such-route", headers={"X-Request-ID": "ops-test-4"})
        assert nowhere.status_code == 404
    line = served.request_line("ops-test-1")
    assert set(line) >= LINE_FIELDS
    assert (line["level"], line["method"], line["route"], line["status"]) == (
        "info", "POST", "/v1/match", 200)
    assert (line["member"], line["key_id"], line["error"]) == ("alice", key_id(member_key), None)
    assert (line["bytes_in"], line["bytes_out"]) == (len(body), len(answer.content))
    assert line["client"] == "127.0.0.1"
    assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
    # The route's template, never the path.
    line = served.request_line("ops-test-2")
    assert (line["route"], line["status"], line["error"]) == (
        "/v1/media/{media_id}", 404, "not_found")
    assert "987654321" not in served.err.read_text()
    line = served.request_line("ops-test-3")
    assert (line["route"], line["status"], line["error"]) == (
        "/v1/match", 405, "method_not_allowed")
    line = served.request_line("ops-test-4")
    assert (line["route"], line["status"], line["member"]) == (None, 404, None)
    assert "no-such-route" not in served.err.read_text()


def test_no_hash_that_matched_nothing_no_query_string_and_no_key_is_logged(
    served: Served, member_key: str
) -> None:
    hexes = {name: random_pdq() for name in
             ("match", "batch", "raw_lookup", "events", "path", "invalid", "header")}
    wrong_key = f"hdb_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    rids = []

    def rid() -> dict[str, str]:
        rids.append(f"ops-hash-{len(rids)}")
        return {"X-Request-ID": rids[-1]}

    with served.client(member_key) as alice, served.client(served.admin_key) as admin:
        single = alice.post("/v1/match", headers=rid(), json={
            "signals": [{"type": "pdq", "value": hexes["match"]}]})
        assert single.status_code == 200 and single.json()["matches"] == [], single.text
        batch = alice.post("/v1/match/batch", headers=rid(), json={
            "queries": [{"id": "q1", "type": "pdq", "value": hexes["batch"]}]})
        assert batch.status_code == 200 and batch.json()["results"][0]["matches"] == []
        hma = alice.get("/m/raw_lookup", headers=rid(),
                        params={"signal_type": "pdq", "signal": hexes["raw_lookup"]})
        assert hma.status_code in (200, 404), hma.text  # 404: the HMA routes not in yet
        if hma.status_code == 200:
            assert hma.json()["matches"] == []
        events = admin.get(f"/v1/events?after={hexes['events']}&limit=5", headers=rid())
        assert events.status_code in (200, 400), events.text
        assert alice.get(f"/v1/media/{hexes['path']}", headers=rid()).status_code in (400, 404)
        # Not a hash: the error echoes it to its sender, and the log does not.
        bad = alice.post("/v1/match", headers=rid(), json={
            "signals": [{"type": "pdq", "value": hexes["invalid"] + "zz"}]})
        assert bad.status_code == 400
        alice.get("/healthz", headers={**rid(), "X-Something": hexes["header"]})
    with served.client(wrong_key) as stranger:
        assert stranger.get("/v1/labels", headers=rid()).status_code == 401
    lines = [served.request_line(r) for r in rids]
    assert [x["status"] for x in lines][:2] == [200, 200]
    assert lines[0]["route"] == "/v1/match" and lines[1]["route"] == "/v1/match/batch"
    assert lines[4]["route"] == "/v1/media/{media_id}"
    assert lines[5]["status"] == 400 and lines[5]["error"]
    assert lines[-1]["error"] == "unauthorized" and lines[-1]["key_id"] is None
    log = served.err.read_text()
    for name, value in hexes.items():
        assert value not in log.lower(), f"the {name} hash is in the log"
    for key in (member_key, served.admin_key, wrong_key):
        assert key not in log
        assert key.split("_", 2)[2] not in log  # not even the secret part (it may hold "_")
    assert "after=" not in log and "signal_type=" not in log and "limit=5" not in log


def test_every_answer_carries_a_request_id(served: Served, member_key: str) -> None:
    with served.client(member_key) as alice, served.client() as anonymous:
        kept = alice.get("/v1/labels", headers={"X-Request-ID": "trace:01.ab-CD_9"})
        assert kept.headers["X-Request-ID"] == "trace:01.ab-CD_9"
        made = [alice.get("/v1/labels").headers["X-Request-ID"] for _ in range(2)]
        assert all(HEX32.fullmatch(m) for m in made) and made[0] != made[1]
        # An id that is not a sane one is replaced, never logged.
        for insane in ("a" * 129, "has space", "semi;colon", "<script>"):
            got = alice.get("/v1/labels", headers={"X-Request-ID": insane})
            assert HEX32.fullmatch(got.headers["X-Request-ID"]), insane
        unauthorized = anonymous.get("/v1/labels", headers={"X-Request-ID": "ops-401"})
        assert unauthorized.status_code == 401
        assert unauthorized.headers["X-Request-ID"] == "ops-401"
        assert unauthorized.json()["error"]["code"] == "unauthorized"
        # Refused by the body cap before any route runs: the route is still named.
        too_big = alice.post("/v1/match", headers={"X-Request-ID": "ops-413",
                                                   "content-type": "application/json"},
                             content=b"{" + b" " * 5000 + b"}")
        assert too_big.status_code == 413 and too_big.headers["X-Request-ID"] == "ops-413"
    assert set(too_big.json()) == {"error"}
    assert set(too_big.json()["error"]) == {"code", "message", "details"}
    assert "request_id" not in too_big.json()["error"]["details"]
    line = served.request_line("ops-413")
    assert (line["route"], line["status"], line["error"], line["member"]) == (
        "/v1/match", 413, "media_too_large", None)
    assert "has space" not in served.err.read_text()


def test_a_locked_out_client_is_logged_by_its_forwarded_address(
    served: Served, member_key: str
) -> None:
    """The loopback is a trusted proxy here: the client is X-Forwarded-For's."""
    elsewhere = {"X-Forwarded-For": "203.0.113.77"}
    with served.client("hdb_000000000000_wrong") as guesser:
        for _ in range(3):
            assert guesser.get("/v1/labels", headers=elsewhere).status_code == 401
        locked = guesser.get("/v1/labels", headers={**elsewhere, "X-Request-ID": "ops-429"})
    assert locked.status_code == 429 and locked.headers["X-Request-ID"] == "ops-429"
    line = served.request_line("ops-429")
    assert (line["status"], line["error"], line["client"]) == (429, "too_many_requests",
                                                               "203.0.113.77")
    assert "hdb_000000000000_wrong" not in served.err.read_text()
    with served.client(member_key) as alice:  # the loopback itself is not locked out
        assert alice.get("/v1/labels").status_code == 200


def test_a_body_too_slow_to_arrive_is_answered_and_logged_with_its_id(served: Served) -> None:
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(b"POST /v1/match HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + served.admin_key.encode() +
                     b"\r\nX-Request-ID: ops-408\r\nContent-Length: 100\r\n\r\n{\"sig")
        answer = b""
        while b"\r\n\r\n" not in answer:  # the deadline (1 s) passes meanwhile
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 408"), head
    assert "x-request-id: ops-408" in head
    line = served.request_line("ops-408")
    assert (line["status"], line["error"], line["route"]) == (408, "request_timeout", "/v1/match")


def test_what_uvicorn_refuses_before_the_app_breaks_nothing(served: Served) -> None:
    """Headers over 64 KB are refused by the HTTP protocol itself (api/abuse.py),
    before the app: no request id, no line of ours; the log stays JSON and holds
    nothing of the request."""
    secret = random_pdq()
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(f"GET /m/raw_lookup?signal={secret} HTTP/1.1\r\nHost: x\r\n".encode()
                     + b"X-Padding: " + b"a" * 70_000 + b"\r\n\r\n")
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:100]
    with served.client() as anyone:
        assert anyone.get("/healthz").status_code == 200
    served.lines()  # still JSON, every line
    assert secret not in served.err.read_text()


def test_shutdown_is_logged_as_json(served: Served) -> None:
    """Last: stops the server."""
    assert served.stop() is not None
    said = [(x["logger"], x["message"]) for x in served.lines()]
    assert ("uvicorn.error", "Application shutdown complete.") in said
    assert any(m.startswith("Finished server process") for _, m in said)
    assert not any(logger == "uvicorn.access" for logger, _ in said)


# --- in this process, the log configured as `hashdb serve` configures it ---------------
@contextmanager
def configured(format: str) -> Iterator[io.StringIO]:
    """The root logger configured by `configure_logging` into a buffer; pytest's own
    handlers and logging's flags are put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    flags = {f: getattr(logging, f) for f in ("logThreads", "logProcesses",
                                              "logMultiprocessing", "logAsyncioTasks")}
    stream = io.StringIO()
    configure_logging(format, "info", stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.captureWarnings(False)
        for flag, value in flags.items():
            setattr(logging, flag, value)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    with configured("json") as stream:
        yield stream


@pytest.fixture
def crashing_server(tmp_path: Path) -> Iterator[str]:
    """A real server with one more route, which fails as a bug would."""
    settings = Settings(data_dir=tmp_path, index_snapshots=False)
    service = Service(settings)
    service.store.migrate()
    app = create_app(settings, service)

    def crash() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/crash", crash)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for("the server", lambda: server.started and service.ready)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        service.close()


def logged(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_crash_is_answered_and_logged_with_its_id(
    log_stream: io.StringIO, crashing_server: str
) -> None:
    answer = httpx.get(f"{crashing_server}/crash", headers={"X-Request-ID": "ops-500"})
    assert answer.status_code == 500 and answer.headers["X-Request-ID"] == "ops-500"
    assert answer.json()["error"]["code"] == "internal_error"

    def line() -> dict[str, Any] | None:
        return next((x for x in logged(log_stream) if x["logger"] == "hashdb.request"
                     and x.get("request_id") == "ops-500"), None)
    request = wait_for("the request line", line)
    assert (request["status"], request["error"], request["level"], request["route"]) == (
        500, "internal_error", "error", "/crash")
    # The handler's own line about the crash carries the request's id and traceback.
    [crash] = [x for x in logged(log_stream) if x["message"] == "unhandled error"]
    assert crash["request_id"] == "ops-500"
    assert "RuntimeError: a bug" in crash["exception"]


def test_the_text_format_is_one_line_with_fields() -> None:
    with configured("text") as stream:
        logging.getLogger("hashdb.request").info(
            "GET /v1/labels 200", extra={"route": "/v1/labels", "status": 200})
    text = stream.getvalue()
    assert re.fullmatch(r"\S+Z INFO hashdb.request: GET /v1/labels 200 route=/v1/labels "
                        r"status=200\n", text), text
    assert Settings(log_format="TEXT", log_level="Warning").log_level == "warning"  # type: ignore[arg-type]


# --- the follower's lag and the store's errors in /metrics ----------------------------
def test_follower_metrics_on_sqlite(tmp_path: Path) -> None:
    with running(Settings(data_dir=tmp_path, index_poll_seconds=0.2, review_policy="live",
                          index_snapshots=False)) as server:
        admin = server.client(server.admin_key)
        before = time.time()
        added = admin.post("/v1/hashes", json={"items": [
            {"type": "pdq", "value": random_pdq(), "labels": ["terrorism"]}]})
        assert added.status_code == 200, added.text
        text = admin.get("/metrics").text
        synced = metric(text, "hashdb_index_last_sync_timestamp_seconds")
        assert synced is not None and synced >= before  # our own write was followed
        lag = metric(text, "hashdb_index_lag_seconds")
        assert lag is not None and lag >= 0
        assert metric(text, "hashdb_index_changes_behind") == 0
        assert metric(text, "hashdb_index_cursor") == server.service.store.last_change() > 0
        for kind in ("unavailable", "other"):
            assert metric(text, "hashdb_index_follower_errors_total", f'{{kind="{kind}"}}') == 0
        assert "hashdb_store_errors" not in text  # SQLite: no server to lose


def test_changes_behind_is_known_while_a_backlog_is_replayed(tmp_path: Path) -> None:
    """Read in batches of two, six changes leave four behind after the first batch."""
    writer = Service(Settings(data_dir=tmp_path, review_policy="live", index_snapshots=False))
    writer.store.migrate()
    caller = writer.members.authenticate(writer.members.ensure_admin_key())
    for _ in range(6):
        writer.contributions.contribute_hashes(caller, [HashItem("pdq", random_pdq(),
                                                                 ["terrorism"])])
    writer.close()
    store = SqliteStore(tmp_path / "hashdb.sqlite3")
    follower = IndexFollower(store)
    seen: list[int] = []
    follower.on_change.append(lambda ids: seen.append(follower.head - follower.cursor))
    assert follower.sync(batch=2) == 6
    assert seen[0] == 0 and seen[1] == 4  # head unknown until a full batch came back
    assert follower.head == follower.cursor == 6
    assert follower.caught_up_at is not None and follower.synced_at is not None
    store.close()


def test_a_replica_reports_following_a_writer_on_postgres(tmp_path: Path) -> None:
    with postgres_schema() as url, running(Settings(data_dir=tmp_path / "w", database_url=url,
                          review_policy="live", index_snapshots=False)) as writer, \
                running(Settings(data_dir=tmp_path / "r", database_url=url,
                             index_poll_seconds=0.2, index_snapshots=False),
                    admin_key=writer.admin_key) as replica:
        before = time.time()
        added = writer.client(writer.admin_key).post("/v1/hashes", json={"items": [
            {"type": "pdq", "value": random_pdq(), "labels": ["terrorism"]}
            for _ in range(3)]})
        assert added.status_code == 200, added.text
        head = writer.service.store.last_change()
        scrape = replica.client(replica.admin_key)

        def followed() -> str | None:
            text = scrape.get("/metrics").text
            return text if metric(text, "hashdb_index_cursor") == head else None
        text = wait_for("the replica to follow", followed)
        synced = metric(text, "hashdb_index_last_sync_timestamp_seconds")
        assert synced is not None and synced >= before
        lag = metric(text, "hashdb_index_lag_seconds")
        assert lag is not None and lag >= 0
        assert metric(text, "hashdb_index_changes_behind") == 0
        for kind in ("unavailable", "timeout", "other"):
            assert metric(text, "hashdb_store_errors_total", f'{{kind="{kind}"}}') == 0


def test_store_errors_are_counted_by_kind(tmp_path: Path) -> None:
    """Real failures on the shared PostgreSQL: a statement cancelled by its timeout, a
    deadlock the server reports, no pooled connection in time."""
    with postgres_schema() as url:
        connections = Connections(url, max_size=1, open_timeout=30)
        try:
            with pytest.raises(StoreUnavailable), connections.connection() as conn, \
                    conn.transaction():
                conn.execute("SET LOCAL statement_timeout = 50")
                conn.execute("SELECT pg_sleep(10)")
            assert connections.errors.counts() == {"unavailable": 0, "timeout": 1, "other": 0}
            with pytest.raises(StoreUnavailable), connections.connection() as conn:
                conn.execute("DO $$ BEGIN RAISE EXCEPTION 'a deadlock' "
                             "USING ERRCODE = '40P01'; END $$")
            assert connections.errors.counts() == {"unavailable": 0, "timeout": 1, "other": 1}
            # A statement the server refuses is a bug, not a store error: not counted.
            with pytest.raises(psycopg.errors.DivisionByZero), \
                    connections.connection() as conn:
                conn.execute("SELECT 1 / 0")
            with connections.connection(), pytest.raises(StoreUnavailable), \
                    connections.connection():
                pass  # the one connection is held: the pool times out (5 s)
            assert connections.errors.counts() == {"unavailable": 0, "timeout": 2, "other": 1}
        finally:
            connections.close()


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


def test_a_replica_cut_off_from_postgres_reports_lag_and_errors(
    tmp_path: Path, pg: PrivatePostgres
) -> None:
    """`hashdb serve` on a PostgreSQL of the test's own, stopped and started: its keys
    stay trusted (a long key cache) so that /metrics answers throughout."""
    env = {"HASHDB_DATABASE_URL": pg.url, "HASHDB_INDEX_POLL_SECONDS": "0.2",
           "HASHDB_KEY_CACHE_SECONDS": "3600", "HASHDB_INDEX_SNAPSHOTS": "false",
           "HASHDB_REVIEW_POLICY": "live"}
    with serve(tmp_path, env) as served:
        with served.client(served.admin_key) as admin:
            def scrape() -> str:
                answer = admin.get("/metrics")
                assert answer.status_code == 200, answer.text
                return answer.text

            def errors(name: str, kind: str) -> float:
                return metric(scrape(), name, f'{{kind="{kind}"}}') or 0.0

            assert errors("hashdb_store_errors_total", "unavailable") == 0
            assert errors("hashdb_index_follower_errors_total", "unavailable") == 0
            pg.stop()
            try:
                wait_for("the follower to fail", lambda: errors(
                    "hashdb_index_follower_errors_total", "unavailable") >= 1)
                assert errors("hashdb_store_errors_total", "unavailable") >= 1
                refused = admin.post("/v1/hashes", headers={"X-Request-ID": "ops-503"},
                                     json={"items": [{"type": "pdq", "value": random_pdq(),
                                                      "labels": ["terrorism"]}]})
                assert refused.status_code == 503, refused.text
                line = served.request_line("ops-503")
                assert (line["status"], line["error"], line["level"]) == (
                    503, "store_unavailable", "warning")
                first = scrape()
                stuck = metric(first, "hashdb_index_last_sync_timestamp_seconds")
                lag = metric(first, "hashdb_index_lag_seconds")
                assert stuck is not None and lag is not None
                later = wait_for("the lag to grow", lambda: (
                    text if (metric(text := scrape(), "hashdb_index_lag_seconds") or 0) > lag
                    else None))
                assert metric(later, "hashdb_index_last_sync_timestamp_seconds") == stuck
            finally:
                pg.start()
            wait_for("the follower to catch up", lambda: (
                metric(scrape(), "hashdb_index_last_sync_timestamp_seconds") or 0) > stuck)
        said = [(x["logger"], x["level"], x["message"]) for x in served.lines()]
        assert any(logger == "hashdb.index.follower" and level == "warning"
                   and "cannot reach the store" in message for logger, level, message in said)
        wait_for("the follower to say it is back", lambda: any(
            "reached the store again" in x["message"] for x in served.lines()))
