"""Helpers for the consortium-safeguard tests (tests/test_safeguards*.py): a real
server on SQLite or PostgreSQL with the default settings, members and keys made
through the admin routes, and short calls for contributing and matching."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from conftest import RunningServer, start_server
from hashdb.settings import Settings
from postgres_schemas import postgres_schema

BACKENDS = ["sqlite", "postgres"]


def backend_server(backend: str, tmp: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with the DEFAULT settings (review_policy "review", dispute_threshold
    2, names shown) but for where it keeps its data and a short poll."""
    data_dir = tmp.mktemp(f"safeguards-{backend}")
    if backend == "sqlite":
        yield from start_server(Settings(data_dir=data_dir, index_poll_seconds=0.2))
        return
    with postgres_schema() as url:
        yield from start_server(Settings(data_dir=data_dir, database_url=url,
                                         index_poll_seconds=0.2))


@contextmanager
def serve(settings: Settings, admin_key: str | None = None) -> Iterator[RunningServer]:
    """conftest.start_server as a context manager, for a store that may already have
    keys (a restart, or keys made by the CLI): `admin_key` is then the one to use."""
    yield from start_server(settings, admin_key)


def pdq() -> str:
    """A random PDQ hash: ~128 bits from any other, so tests never match each other's."""
    return secrets.token_hex(32)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Who:
    name: str
    http: httpx.Client
    key: str
    key_id: str


def admin(srv: RunningServer) -> httpx.Client:
    return srv.client(srv.admin_key)


def member(srv: RunningServer, prefix: str, *, trusted: bool = False,
           roles: tuple[str, ...] = ("contributor", "matcher")) -> Who:
    """A new member (unique name) and one key, made through the admin routes."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    made = admin(srv).post("/v1/members", json={"name": name, "trusted_flagger": trusted})
    assert made.status_code == 201, made.text
    return Who(name, *add_key(srv, name, roles))


def add_key(srv: RunningServer, name: str, roles: tuple[str, ...]
            ) -> tuple[httpx.Client, str, str]:
    r = admin(srv).post(f"/v1/members/{name}/keys", json={"roles": list(roles)})
    assert r.status_code == 201, r.text
    body = r.json()
    return srv.client(body["key"]), body["key"], body["key_id"]


def contribute(who: Who | httpx.Client, value: str, labels: list[str] | str,
               **extra: Any) -> int:
    http = who.http if isinstance(who, Who) else who
    item = {"type": "pdq", "value": value, "labels": labels, **extra}
    r = http.post("/v1/hashes", json={"items": [item]})
    assert r.status_code == 200, r.text
    [out] = r.json()["items"]
    assert out["created"] is True, out
    return int(out["media_id"])


def match(who: Who | httpx.Client, value: str, **params: Any) -> list[dict[str, Any]]:
    http = who.http if isinstance(who, Who) else who
    query = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items()}
    r = http.post("/v1/match", params=query,
                  json={"signals": [{"type": "pdq", "value": value}]})
    assert r.status_code == 200, r.text
    return list(r.json()["matches"])


def matched_ids(who: Who | httpx.Client, value: str, **params: Any) -> list[int]:
    return [m["media_id"] for m in match(who, value, **params)]


def feedback(who: Who, media_id: int, verdict: str, reason: str | None = "checked",
             labels: list[str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"verdict": verdict}
    if reason is not None:
        body["reason"] = reason
    if labels is not None:
        body["labels"] = labels
    return who.http.post(f"/v1/media/{media_id}/feedback", json=body)


def resolve(http: httpx.Client, media_id: int, action: str, reason: str | None = "decided",
            labels: list[str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"action": action}
    if reason is not None:
        body["reason"] = reason
    if labels is not None:
        body["labels"] = labels
    return http.post(f"/v1/media/{media_id}/resolution", json=body)


def status_of(srv: RunningServer, media_id: int) -> str:
    r = admin(srv).get(f"/v1/media/{media_id}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def events(http: httpx.Client, path: str = "/v1/events", **params: Any
           ) -> list[dict[str, Any]]:
    """Every event of a log route, paging with after=next."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        r = http.get(path, params={**params, "after": after, "limit": 1000})
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["events"]
        if len(page["events"]) < 1000:
            return out
        after = page["next"]


def kinds_for(evs: list[dict[str, Any]], media_id: int) -> set[str]:
    return {e["kind"] for e in evs if e["media_id"] == media_id}
